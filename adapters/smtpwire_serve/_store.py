"""What ``smtpwire serve`` does with mail: a durable Maildir, a sink for testing clients, or standard output."""

from __future__ import annotations

import logging

import anyio.to_thread

from smtpwire import Reply
from smtpwire_handler import (
    Delivery,
    Envelope,
    Maildir,
    MaybeAwaitable,
    PrintHandler,
    Reject,
    Session,
    storage_reply,
    trace_headers,
)

from ._authfile import Accounts, AuthFileHandler

log = logging.getLogger("smtpwire.serve")
_FLUSH_AT = 256 * 1024  # batch small chunks into one write per worker-thread trip


def log_accepted(
    session: Session, envelope: Envelope, size: int, where: str, recipients: list[str] | None = None
) -> None:
    """One line per accepted message (or, in LMTP, per ``recipients`` given: the one just answered)."""
    tls = f"{session.tls.version}/{session.tls.cipher}" if session.tls else "none"
    auth = f" auth={session.authenticated.username}" if session.authenticated else ""
    log.info(
        "accepted id=%s from=<%s> to=%s size=%d tls=%s%s peer=%s %s",
        session.id,
        envelope.mail_from,
        ",".join(f"<{r}>" for r in (envelope.rcpt_tos if recipients is None else recipients)),
        size,
        tls,
        auth,
        session.peer_host,
        where,
    )


class MaildirHandler(AuthFileHandler):
    """Streams each message into tmp/ and answers 250 only once it is durably in new/.

    With ``accounts``, AUTH is checked against them (see ``AuthFileHandler``).

    No hook touches the disk on the event loop: every file operation runs in
    a worker thread (``anyio.to_thread``, so asyncio and trio alike), and the
    trips there are few, as each costs more than the work it carries.  Chunks
    are gathered into writes of 256 KiB; a message smaller than that (most
    are) costs one trip, at the end of data, which creates the file in tmp/,
    writes it, fsyncs it, renames it into new/ and waits for an fsync of new/
    that it shares with the deliveries renamed meanwhile (``DirectorySync``).

    Whether DATA is refused at once (451/452 before the client sends the
    message) when the Maildir cannot take a file: that check is a trip of its
    own, one more per message.  Measured with 20 concurrent deliveries of
    1 KB, it costs a fifth of the throughput, so it is made only while the
    store is in doubt: until a delivery has succeeded, and again after a
    storage error, until the next success.  While deliveries succeed, the file
    is created lazily and a Maildir that breaks is first noticed at the end of
    the data (still 451/452, never 250).
    """

    lmtp = False  #: the Received header says LMTP (``with LMTP``, RFC 3848)

    def __init__(self, maildir: Maildir, hostname: str, accounts: Accounts | None = None) -> None:
        self.maildir = maildir
        self.hostname = hostname
        self.accounts = accounts
        self._proven = False  # the last delivery attempt stored its message
        for folder in maildir.open_to_others():  # an operator's choice, said out loud rather than undone
            log.warning("%s is open to other users: they can list the messages (each new one is 0600)", folder)

    def data_start(self, session: Session) -> MaybeAwaitable[Reply | None]:
        """A plain call while deliveries succeed; while the store is in doubt, a check in a worker thread."""
        assert session.envelope is not None
        delivery = self.maildir.begin()
        session.state["delivery"] = delivery
        session.state["pending"] = [trace_headers(session, session.envelope, self.hostname, self.lmtp)]
        session.state["pending_size"] = 0
        return None if self._proven else self._create(session, delivery)

    async def _create(self, session: Session, delivery: Delivery) -> Reply | None:
        try:
            await anyio.to_thread.run_sync(delivery.create)
        except OSError as error:
            log.error("session %s: cannot create a file in %s: %s", session.id, self.maildir.path, error)
            del session.state["delivery"], session.state["pending"]
            return storage_reply(error)
        return None

    def data_chunk(self, session: Session, data: bytes) -> MaybeAwaitable[None]:
        """Gathered in memory (a plain call); every 256 KiB, written in a worker thread."""
        session.state["pending"].append(data)
        session.state["pending_size"] += len(data)
        return self._write(session) if session.state["pending_size"] >= _FLUSH_AT else None

    async def _write(self, session: Session) -> None:
        delivery: Delivery = session.state["delivery"]
        try:
            await anyio.to_thread.run_sync(delivery.write, self._take(session))
        except OSError as error:
            self._proven = False
            log.error("session %s: writing the message failed: %s", session.id, error)
            raise Reject(storage_reply(error)) from error

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        delivery: Delivery = session.state.pop("delivery")
        try:
            path = await anyio.to_thread.run_sync(delivery.commit, self._take(session))
        except OSError as error:  # commit() removed the file from tmp/
            self._proven = False
            log.error("session %s: storing the message failed: %s", session.id, error)
            return storage_reply(error)
        self._proven = True
        log_accepted(session, envelope, delivery.size, f"stored={path.name}")
        return None

    def message_aborted(self, session: Session, reply: Reply | None) -> MaybeAwaitable[None]:
        delivery: Delivery | None = session.state.pop("delivery", None)
        session.state.pop("pending", None)
        if delivery is not None and delivery.created:  # else there is nothing on disk
            return anyio.to_thread.run_sync(delivery.abort)
        return None

    @staticmethod
    def _take(session: Session) -> bytes:
        """What arrived since the last write, as one buffer."""
        data = b"".join(session.state["pending"])
        session.state["pending"], session.state["pending_size"] = [], 0
        return data


class SinkHandler(AuthFileHandler):
    """Accepts and discards every message, like Postfix's smtp-sink; its hooks never wait, so they run inline."""

    def __init__(self, accounts: Accounts | None = None) -> None:
        self.accounts = accounts

    def data_chunk(self, session: Session, data: bytes) -> None:
        """Drop it (``envelope.size`` counts it)."""

    def message(self, session: Session, envelope: Envelope) -> None:
        log_accepted(session, envelope, envelope.size, "discarded")


class PrintingHandler(AuthFileHandler):
    """``--print``: each message on standard output, as ``python -m aiosmtpd``'s debugging handler shows it.

    It holds a ``PrintHandler`` rather than inheriting one: either order of
    the two bases would hide the other's hooks.
    """

    def __init__(self, accounts: Accounts | None = None) -> None:
        self.accounts = accounts
        self.printer = PrintHandler()

    def message(self, session: Session, envelope: Envelope) -> None:
        self.printer.message(session, envelope)
        log_accepted(session, envelope, envelope.size, "printed")
