"""``MaildirStore``'s durability without making an event loop wait for the disk (asyncio or trio).

The disk work runs in anyio's worker threads (``anyio.to_thread``), imported
when a store is made, so the handler package itself never needs anyio.  Not
the running loop's executor: anyio's threads serve asyncio and trio alike,
and its limiter (40 threads) is what bounds the deliveries parked in the
group commit of new/ (``DirectorySync``), where asyncio's default executor
would allow ``cpu_count() + 4`` and trio has none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from smtpwire import Reply

from ._handler import AsyncHandler, MaybeAwaitable, Reject
from ._maildir import Delivery, Maildir, storage_reply
from ._session import Envelope, Session, TransactionSlot
from ._trace import trace_headers

log = logging.getLogger("smtpwire.store")
#: Data gathered before a write in a worker thread: a trip there costs more than the work a small one carries.
FLUSH_AT = 256 * 1024
R = TypeVar("R")


@dataclass(eq=False)
class _Arriving:
    """A message on its way: its file, and the data not yet written, in one buffer however it was cut."""

    delivery: Delivery
    unwritten: bytearray = field(default_factory=bytearray)

    def take(self) -> bytearray:
        """The unwritten data, handed over (a worker thread writes it while the next chunks gather anew)."""
        data, self.unwritten = self.unwritten, bytearray()
        return data


class AsyncMaildirStore(AsyncHandler):
    """Streams each message into a Maildir's tmp/ and answers 250 only once it is durably in new/.

    What ``MaildirStore`` does, for the asyncio and anyio adapters (needs the
    ``anyio`` extra, on asyncio or trio): no hook touches the disk on the
    event loop.  Every file operation runs in a worker thread, and the trips
    there are few, as each costs more than the work it carries.  Chunks are
    gathered into one buffer and written 256 KiB at a time, so a message sent
    in a hundred thousand tiny BDAT chunks costs no more memory than one sent
    whole; a message smaller than that (most are) costs one trip, at the end
    of data, which creates the file in tmp/, writes it, fsyncs it, renames it
    into new/ and waits for an fsync of new/ that it shares with the
    deliveries renamed meanwhile (``DirectorySync``).

    Whether DATA is refused at once (451/452 before the client sends the
    message) when the Maildir cannot take a file: that check is a trip of its
    own, one more per message.  Measured with 20 concurrent deliveries of
    1 KB, it costs a fifth of the throughput, so it is made only while the
    store is in doubt: until a delivery has succeeded, and again after a
    storage error, until the next success.  While deliveries succeed, the file
    is created lazily and a Maildir that breaks is first noticed at the end of
    the data (still 451/452, never 250).  ``hostname`` is as for ``MaildirStore``.
    """

    def __init__(self, maildir: Maildir | str | os.PathLike[str], hostname: str | None = None) -> None:
        try:
            import anyio.to_thread  # noqa: F401  (said now, not at the first message)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "AsyncMaildirStore writes in anyio's worker threads: install smtpwire[anyio]"
            ) from error
        self.maildir = maildir if isinstance(maildir, Maildir) else Maildir(maildir)
        self.hostname = hostname
        self.proven = False  # the last delivery attempt stored its message
        self._arriving = TransactionSlot[_Arriving]("the AsyncMaildirStore delivery")

    def data_start(self, session: Session) -> MaybeAwaitable[Reply | None]:
        """A plain call while deliveries succeed; while the store is in doubt, a check in a worker thread."""
        assert session.envelope is not None
        arriving = _Arriving(self.maildir.begin(), bytearray(trace_headers(session, session.envelope, self.hostname)))
        self._arriving.set(session, arriving)
        return None if self.proven else self._create(session, arriving.delivery)

    async def _create(self, session: Session, delivery: Delivery) -> Reply | None:
        try:
            await in_thread(delivery.create)
        except OSError as error:
            log.error("session %s: cannot create a file in %s: %s", session.id, self.maildir.path, error)
            self._arriving.pop(session)
            return storage_reply(error)
        return None

    def data_chunk(self, session: Session, data: bytes) -> MaybeAwaitable[None]:
        """Gathered in memory (a plain call); every 256 KiB, written in a worker thread."""
        arriving = self._arriving.get(session)
        arriving.unwritten += data
        return self._write(session, arriving) if len(arriving.unwritten) >= FLUSH_AT else None

    async def _write(self, session: Session, arriving: _Arriving) -> None:
        try:
            await in_thread(arriving.delivery.write, arriving.take())
        except OSError as error:
            self.proven = False
            log.error("session %s: writing the message failed: %s", session.id, error)
            raise Reject(storage_reply(error)) from error

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        delivery, rest = self.unwritten(session)
        try:
            path = await in_thread(delivery.commit, rest, envelope.folder)
        except OSError as error:  # commit() removed the file from tmp/
            self.proven = False
            log.error("session %s: storing the message failed: %s", session.id, error)
            return storage_reply(error)
        self.proven = True
        self.stored(session, envelope, delivery.size, path)
        return None

    def stored(self, session: Session, envelope: Envelope, size: int, path: Path) -> None:
        """The message is durably at ``path`` (``size`` octets with the trace headers): say so."""
        log.info("session %s: stored %s (%d octets)", session.id, path.name, size)

    def message_aborted(self, session: Session, reply: Reply | None) -> MaybeAwaitable[None]:
        arriving = self._arriving.pop(session)
        if arriving is not None and arriving.delivery.created:  # else there is nothing on disk
            return in_thread(arriving.delivery.abort)
        return None

    def unwritten(self, session: Session) -> tuple[Delivery, bytearray]:
        """The transaction's delivery and the data not yet written, which the end of data finishes it with."""
        arriving = self._arriving.get(session)
        return arriving.delivery, arriving.take()


async def in_thread(function: Callable[..., R], *args: object) -> R:
    """``function(*args)`` in one of anyio's worker threads, on asyncio or trio."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(function, *args)
