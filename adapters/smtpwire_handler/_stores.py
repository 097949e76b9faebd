"""Stock stores: a durable Maildir and an mbox, each answering 250 only once the message is on disk.

Both are plain ``Handler`` subclasses, so every adapter runs them.  Their
hooks write and fsync inline: on the blocking adapter that is the session's
own thread; on the asyncio and anyio adapters it is the event loop, which
waits for each fsync (a few milliseconds) while other sessions wait too.  For
many concurrent clients on an event loop, ``AsyncMaildirStore`` does the
same work in worker threads.  Each keeps its file in a ``TransactionSlot``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from smtpwire import Reply

from ._handler import Handler, Reject
from ._maildir import Delivery, Maildir, storage_reply
from ._mbox import Spool, append, from_line
from ._session import Envelope, Session, TransactionSlot
from ._trace import trace_headers

log = logging.getLogger("smtpwire.store")


class MaildirStore(Handler):
    """Streams each message into a Maildir's tmp/ and answers 250 only once it is durably in new/.

    ``maildir`` is a path (made a Maildir, 0700, if it is not one) or a
    ``Maildir``.  Each message gets Return-Path and Received headers on top,
    ``by hostname`` (default: the server's ``ServerConfig.hostname``).  A
    message that fails to store is answered 452 (disk full) or 451 and leaves
    no file behind; so does one the client abandons.
    """

    def __init__(self, maildir: Maildir | str | os.PathLike[str], hostname: str | None = None) -> None:
        self.maildir = maildir if isinstance(maildir, Maildir) else Maildir(maildir)
        self.hostname = hostname
        self._delivery = TransactionSlot[Delivery]("the MaildirStore delivery")

    def data_start(self, session: Session) -> Reply | None:
        """The file in tmp/ is made now, so a Maildir that cannot take it refuses DATA at once."""
        delivery = self.maildir.begin()
        try:
            assert session.envelope is not None  # data_start comes inside a transaction
            delivery.write(trace_headers(session, session.envelope, self.hostname))
        except OSError as error:
            delivery.abort()
            log.error("session %s: cannot create a file in %s: %s", session.id, self.maildir.path, error)
            return storage_reply(error)
        self._delivery.set(session, delivery)
        return None

    def data_chunk(self, session: Session, data: bytes) -> None:
        delivery = self._delivery.get(session)
        try:
            delivery.write(data)
        except OSError as error:
            delivery.abort()  # the disk space goes back now, not at the end of the data
            log.error("session %s: writing the message failed: %s", session.id, error)
            raise Reject(storage_reply(error)) from error

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        delivery = self._delivery.get(session)
        try:
            path = delivery.commit(folder=envelope.folder)
        except OSError as error:  # commit() removed the file from tmp/
            log.error("session %s: storing the message failed: %s", session.id, error)
            return storage_reply(error)
        log.info("session %s: stored %s (%d octets)", session.id, path.name, delivery.size)
        return None

    def message_aborted(self, session: Session, reply: Reply | None) -> None:
        delivery = self._delivery.pop(session)
        if delivery is not None:
            delivery.abort()


class MboxStore(Handler):
    """Appends each message to an mbox file that ``mailbox.mbox`` (and mail readers) read back.

    The message streams into an unlinked temporary file next to the mbox,
    already in mbox form (LF line ends, mboxrd ``>From`` quoting).  At the end
    of data it is appended under an ``fcntl`` lock (the one ``mailbox.mbox.lock()``
    takes) after its ``From`` line, and fsynced before the 250; if that fails the
    mbox is cut back to where it ended, and the client gets 451 or 452.  The
    file is created 0600.  ``hostname`` is as for ``MaildirStore``.
    """

    def __init__(self, path: str | os.PathLike[str], hostname: str | None = None) -> None:
        self.path = Path(path)
        self.hostname = hostname
        self._spool = TransactionSlot[Spool]("the MboxStore spool")

    def data_start(self, session: Session) -> Reply | None:
        try:
            spool = Spool(self.path.parent)
            assert session.envelope is not None
            spool.write(trace_headers(session, session.envelope, self.hostname))
        except OSError as error:
            log.error("session %s: cannot spool a message next to %s: %s", session.id, self.path, error)
            return storage_reply(error)
        self._spool.set(session, spool)
        return None

    def data_chunk(self, session: Session, data: bytes) -> None:
        spool = self._spool.get(session)
        try:
            spool.write(data)
        except OSError as error:
            spool.close()
            log.error("session %s: spooling the message failed: %s", session.id, error)
            raise Reject(storage_reply(error)) from error

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        spool = self._spool.get(session)
        try:
            size = append(self.path, from_line(envelope.mail_from), spool)
        except OSError as error:  # append() cut the mbox back
            log.error("session %s: appending to %s failed: %s", session.id, self.path, error)
            return storage_reply(error)
        finally:
            spool.close()
        log.info("session %s: appended %d octets to %s", session.id, size, self.path)
        return None

    def message_aborted(self, session: Session, reply: Reply | None) -> None:
        spool = self._spool.pop(session)
        if spool is not None:
            spool.close()
