"""``MaildirStore``'s durability without making an event loop wait for the disk (asyncio or trio).

The end of each message goes to the Maildir's group commit (``GroupCommit``:
one thread committing the deliveries that arrive together as one batch).
The rarer disk work (the file made early while the store is in doubt, the
writes of a message past 256 KiB, removing an aborted one) runs in anyio's
worker threads (``anyio.to_thread``), whose limiter (40 threads) bounds it,
on asyncio and trio alike; anyio is imported when a store is made, so the
handler package itself never needs it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from smtpwire import Reply

from ._group_commit import Commit, GroupCommit
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
    into new/ and waits for an fsync of new/ that it shares with the other
    deliveries renamed meanwhile: the store's ``GroupCommit`` does it for
    every message that ends while the previous batch is on disk, in one
    thread (why: ``_group_commit``).

    Whether DATA is refused at once (451/452 before the client sends the
    message) when the Maildir cannot take a file: that check is a trip of its
    own, one more per message.  Measured with 20 concurrent deliveries of
    1 KB, it costs a fifth of the throughput, so it is made only while the
    store is in doubt: until a delivery has succeeded, and again after a
    storage error, until the next success.  While deliveries succeed, the file
    is created lazily and a Maildir that breaks is first noticed at the end of
    the data (still 451/452, never 250).  ``hostname`` is as for ``MaildirStore``;
    ``sync_filesystem`` as for ``GroupCommit`` (a syncfs per batch, by
    default where it reports errors; ``False``: an fsync per file).
    """

    def __init__(
        self,
        maildir: Maildir | str | os.PathLike[str],
        hostname: str | None = None,
        *,
        sync_filesystem: bool | None = None,
    ) -> None:
        try:
            import anyio.to_thread  # noqa: F401  (said now, not at the first message)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "AsyncMaildirStore writes in anyio's worker threads: install smtpwire[anyio]"
            ) from error
        self.maildir = maildir if isinstance(maildir, Maildir) else Maildir(maildir)
        self.hostname = hostname
        self.proven = False  # the last delivery attempt stored its message
        self.group_commit = GroupCommit(sync_filesystem=sync_filesystem)
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
        arriving = self._arriving.pop(session)  # the commit thread's from here: message_aborted must not touch it
        assert arriving is not None
        delivery = arriving.delivery
        try:
            path = await committed(self.group_commit, delivery, arriving.take(), envelope.folder)
        except OSError as error:  # the file was removed from tmp/
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


async def committed(group: GroupCommit, delivery: Delivery, data: bytearray, folder: str | None) -> Path:
    """Where ``group`` put the delivery once it is durable in new/; its OSError if it failed.

    Cancelling the wait does not stop the commit (a file may then reach new/
    with no 250 sent: the client retries, a duplicate, the safe side).
    """
    import sniffio  # anyio's: there whenever a store could be made

    if sniffio.current_async_library() == "trio":
        return await _committed_on_trio(group, delivery, data, folder)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Path] = loop.create_future()
    group.submit(Commit(delivery, data, folder, loop.call_soon_threadsafe, functools.partial(_settle, future)))
    return await future


def _settle(future: asyncio.Future[Path], result: Path | OSError) -> None:
    if future.cancelled():
        return
    if isinstance(result, OSError):
        future.set_exception(result)
    else:
        future.set_result(result)


async def _committed_on_trio(group: GroupCommit, delivery: Delivery, data: bytearray, folder: str | None) -> Path:
    import trio

    done = trio.Event()
    outcome: list[Path | OSError] = []

    def settle(result: Path | OSError) -> None:
        outcome.append(result)
        done.set()

    group.submit(Commit(delivery, data, folder, trio.lowlevel.current_trio_token().run_sync_soon, settle))
    await done.wait()
    if isinstance(outcome[0], OSError):
        raise outcome[0]
    return outcome[0]


async def in_thread(function: Callable[..., R], *args: object) -> R:
    """``function(*args)`` in one of anyio's worker threads, on asyncio or trio."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(function, *args)
