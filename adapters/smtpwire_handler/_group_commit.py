"""Group commit of a Maildir's deliveries: one thread writes, fsyncs and renames them in batches.

Why one thread and batches, rather than a worker-thread trip per message
(what ``AsyncMaildirStore`` did before): with 20 clients delivering at once,
20 worker threads each blocked in their own fsync, then fought the event
loop for the GIL after each of the eight system calls a delivery makes; the
server spent twice the CPU per message of this design, and took 0.6x its
messages per second (``tests/benchmarks/bench_servers.py``, the ``maildir``
load, in docs/performance.md).  Here the deliveries that arrive while a
batch is on disk form the next batch, and the thread takes them all at once:
it writes every file, then fsyncs every file, renames each into its new/,
and fsyncs each new/ once for the batch (``DirectorySync``, shared with any
other user of the Maildir).  Each file still has an fsync of its own, so
this holds on any file system; on ext4 the fsyncs of one batch share a
journal commit, as the renames do.  A lone delivery on an idle server is a
batch of one: no timer, no added latency.

A delivery is answered (settled) only once all of that is done for its
batch, on the event loop that asked: ``hop`` is how the thread reaches it
(``loop.call_soon_threadsafe`` or a trio token's ``run_sync_soon``), one
hop per loop per batch.  An error touches only the deliveries it hit (its
file is removed from tmp/; a failed fsync of new/ leaves the files there,
as ``Delivery.commit`` documents), and a bug in here fails the batch rather
than leave anyone waiting.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._maildir import Delivery, Maildir

log = logging.getLogger("smtpwire.store")

#: How the commit thread runs a function on the event loop that waits: ``hop(function, *args)``.
Hop = Callable[..., object]


@dataclass(eq=False)
class Commit:
    """One delivery to finish: the rest of its data, the Maildir++ folder (``None``: the inbox), who waits."""

    delivery: Delivery
    data: bytes | bytearray
    folder: str | None
    hop: Hop
    settle: Callable[[Path | OSError], None]
    result: Path | OSError | None = None
    target: Maildir | None = None


class GroupCommit:
    """The batches of one store, and the thread that commits them (started at the first, again after a fork)."""

    def __init__(self) -> None:
        self.batches = 0  #: batches committed so far (to measure how well they form)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._waiting: list[Commit] = []
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Deliveries waiting for the next batch (the one on disk not counted)."""
        with self._lock:
            return len(self._waiting)

    def submit(self, commit: Commit) -> None:
        """Queue ``commit``; its ``settle`` is called through its ``hop`` once it is durable in new/ (or failed)."""
        with self._lock:
            self._waiting.append(commit)
            if self._thread is None or not self._thread.is_alive():  # the first, or in a child after a fork
                self._thread = threading.Thread(target=self._run, name="smtpwire-maildir-commit", daemon=True)
                self._thread.start()
            else:
                self._arrived.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    self._arrived.wait()
                batch, self._waiting = self._waiting, []
            self.batches += 1
            try:
                commit_batch(batch)
            except BaseException as error:  # a bug, not the disk: fail the batch, never leave it waiting
                log.error("committing %d message(s) failed unexpectedly", len(batch), exc_info=error)
                for commit in batch:  # a renamed one too: told 451, its sender retries (a duplicate, the safe side)
                    if not isinstance(commit.result, OSError):
                        _fail(commit, OSError(errno.EIO, f"the commit failed: {error!r}"))
            settle_all(batch)


def commit_batch(batch: list[Commit]) -> None:
    """Every file written, then every file fsynced and closed, renamed into its new/, each new/ fsynced once."""
    live = [commit for commit in batch if _step(commit, functools.partial(commit.delivery.write, commit.data))]
    live = [commit for commit in live if _step(commit, commit.delivery.seal)]
    live = [commit for commit in live if _step(commit, functools.partial(_publish, commit))]
    for target in {id(commit.target): commit.target for commit in live}.values():
        assert target is not None
        renamed = [commit for commit in live if commit.target is target]
        try:
            target.new_sync.sync()
        except OSError as error:  # the files are in new/ and stay there (see Delivery.commit)
            for commit in renamed:
                commit.result = OSError(error.errno, error.strerror, error.filename)


def _publish(commit: Commit) -> None:
    commit.target, commit.result = commit.delivery.publish(commit.folder)


def _step(commit: Commit, step: Callable[[], object]) -> bool:
    """Run one step of a delivery; on an error, fail it (its file removed from tmp/) and say False."""
    try:
        step()
    except OSError as error:
        _fail(commit, error)
        return False
    return True


def _fail(commit: Commit, error: OSError) -> None:
    commit.delivery.abort()
    commit.result = error


def settle_all(batch: list[Commit]) -> None:
    """Tell each waiter its result: one hop to each event loop, settling all of its deliveries there."""
    by_loop: dict[Hop, list[Callable[[], None]]] = {}
    for commit in batch:
        assert commit.result is not None
        by_loop.setdefault(commit.hop, []).append(functools.partial(commit.settle, commit.result))
    for hop, settles in by_loop.items():
        try:
            hop(_call_each, settles)
        except Exception:  # that loop has ended (its waiters are gone with it)
            log.debug("a commit finished after its event loop had ended")


def _call_each(functions: list[Callable[[], None]]) -> None:
    for function in functions:
        function()
