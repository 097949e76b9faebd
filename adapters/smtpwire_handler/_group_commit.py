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
this holds on any file system.  A lone delivery on an idle server is a
batch of one: no timer, no added latency.

On Linux 5.8 and later a batch's files are made durable by one ``syncfs``
of their file system instead (``sync_filesystem``, the default there):
one journal commit and one disk cache flush for the batch, where an fsync
per file costs a flush each even once the first has committed them all.
Measured with 20 clients it took 1.9x the messages per second of the
fsyncs at 0.55x their CPU.  It is trusted only from 5.8 on, where
``syncfs`` reports a write-back error of any file of the file system (it
said nothing before); an error fails the whole batch (which file it hit is
not said), each file removed from tmp/ and every client told 451.  It also
writes back whatever else is dirty on that file system: on a Maildir that
shares one with a busy database, choose the fsyncs (``sync_filesystem=False``,
``serve --maildir-sync file``).

A delivery is answered (settled) only once all of that is done for its
batch, on the event loop that asked: ``hop`` is how the thread reaches it
(``loop.call_soon_threadsafe`` or a trio token's ``run_sync_soon``), one
hop per loop per batch.  An error touches only the deliveries it hit (its
file is removed from tmp/; a failed fsync of new/ leaves the files there,
as ``Delivery.commit`` documents), and a bug in here fails the batch rather
than leave anyone waiting.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import platform
import sys
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
    """The batches of one store, and the thread that commits them (started at the first, again after a fork).

    ``sync_filesystem``: each batch's files made durable by one ``syncfs``
    (``None``: where it reports errors, Linux 5.8 and later), else by an
    fsync each.
    """

    def __init__(self, *, sync_filesystem: bool | None = None) -> None:
        if sync_filesystem and not filesystem_sync_available():
            raise ValueError("syncing the whole file system needs Linux 5.8 or later (syncfs that reports errors)")
        #: A syncfs per batch, rather than an fsync per file.
        self.sync_filesystem = filesystem_sync_available() if sync_filesystem is None else sync_filesystem
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
                commit_batch(batch, sync_filesystem=self.sync_filesystem)
            except BaseException as error:  # a bug, not the disk: fail the batch, never leave it waiting
                log.error("committing %d message(s) failed unexpectedly", len(batch), exc_info=error)
                for commit in batch:  # a renamed one too: told 451, its sender retries (a duplicate, the safe side)
                    if not isinstance(commit.result, OSError):
                        _fail(commit, OSError(errno.EIO, f"the commit failed: {error!r}"))
            settle_all(batch)


def commit_batch(batch: list[Commit], *, sync_filesystem: bool = False) -> None:
    """Every file written, then made durable (a syncfs, or an fsync each), renamed into its new/, each new/ once."""
    if sync_filesystem:
        live = _written_and_synced(batch)
    else:
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
                commit.result = _copied(error)


def _written_and_synced(batch: list[Commit]) -> list[Commit]:
    """Every file written and closed, then one syncfs of the file system; those still alive after it.

    The directory is opened before any file is written: ``syncfs`` reports
    the write-back errors since that open, so none of the batch's can slip by.
    """
    by_root: dict[Path, list[Commit]] = {}
    for commit in batch:
        by_root.setdefault(commit.delivery.maildir.path, []).append(commit)
    live: list[Commit] = []
    for root, commits in by_root.items():
        try:
            directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            for commit in commits:
                _fail(commit, _copied(error))
            continue
        try:
            written = [c for c in commits if _step(c, functools.partial(c.delivery.seal, c.data, fsync=False))]
            try:
                sync_file_system(directory)
            except OSError as error:  # which file it hit is not said: none of them is durable
                for commit in written:
                    _fail(commit, _copied(error, str(root)))
            else:
                live += written
        finally:
            os.close(directory)
    return live


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


def _copied(error: OSError, filename: str | None = None) -> OSError:
    """An error of its own for each delivery it fails: each is raised in its own waiting session."""
    return OSError(error.errno, error.strerror, error.filename if filename is None else filename)


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


@functools.cache
def filesystem_sync_available() -> bool:
    """Whether ``syncfs`` is there and reports write-back errors: Linux 5.8 and later."""
    if sys.platform != "linux" or _libc_syncfs() is None:
        return False
    major, minor, *_ = (int(part) if part.isdigit() else 0 for part in platform.release().split("-")[0].split("."))
    return (major, minor) >= (5, 8)


def sync_file_system(directory: int) -> None:
    """syncfs(2) on the file system holding the open ``directory``; OSError if it reports an error."""
    syncfs = _libc_syncfs()
    assert syncfs is not None
    if syncfs(directory) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


@functools.cache
def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:  # no C library to load
        return None
