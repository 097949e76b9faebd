"""A durable Maildir: tmp/, fsync, rename into new/, fsync the directory, then 250.

Names follow the Maildir convention (time, microseconds, pid, a counter and
random bits, the host name), so concurrent deliveries never collide.

Mail is private to the server's user, whatever the umask: message files are
created 0600 and the folders it creates 0700, by the call that creates them
(``os.open``/``mkdir`` with the mode), so there is no moment when another
local user could open them.  An existing Maildir keeps the permissions its
operator gave it (a group-shared Maildir is a deliberate set-up);
``Maildir.open_to_others`` names what other users may read, for a warning.

Everything here that touches the disk blocks: an event loop calls it from a
worker thread (as ``smtpwire serve`` does); ``MaildirStore`` calls it inline.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import secrets
import socket
import stat
import threading
import time
from pathlib import Path

from smtpwire import Reply

STORAGE_FULL = Reply(452, "Insufficient system storage", (4, 3, 1))
STORAGE_FAILED = Reply(451, "Requested action aborted: error in storing the message", (4, 3, 0))
_FULL_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
FILE_MODE = 0o600  #: message files: the server's user only
FOLDER_MODE = 0o700  #: the folders the server creates
SUBFOLDERS = ("tmp", "new", "cur")
_counter = itertools.count()
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def storage_reply(error: OSError) -> Reply:
    """What to tell the client when the disk said no."""
    return STORAGE_FULL if error.errno in _FULL_ERRORS else STORAGE_FAILED


def write_all(fd: int, data: bytes | bytearray, path: Path) -> None:
    """All of ``data``, or the error that stopped it."""
    with memoryview(data) as view:
        written = 0
        while written < len(view):  # a short write, then the error (ENOSPC, EFBIG) on the next
            count = os.write(fd, view[written:])
            if count == 0:
                raise OSError(errno.ENOSPC, "the file system took no more data", str(path))
            written += count


def make_folder(path: Path) -> None:
    """``path`` and its missing parents, each made 0700; existing ones untouched.

    Not ``mkdir -p``'s parents: under umask 000 they would be 0777, and
    another local user could swap the folder below for a symlink of theirs.
    """
    try:
        path.mkdir(mode=FOLDER_MODE, exist_ok=True)
    except FileNotFoundError:
        if path.parent == path:  # "." in a removed working directory: nothing above to make
            raise
        make_folder(path.parent)
        path.mkdir(mode=FOLDER_MODE, exist_ok=True)


def make_folders(path: Path) -> None:
    """``path`` (missing parents too) and its tmp/, new/ and cur/, each made 0700."""
    make_folder(path)
    for sub in SUBFOLDERS:
        (path / sub).mkdir(mode=FOLDER_MODE, exist_ok=True)


def fsync_directory(path: Path) -> None:
    """Make the names in the directory ``path`` durable (the file data is each file's own fsync)."""
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Maildir:
    """A Maildir directory, created (with tmp/, new/, cur/, each 0700) if missing.

    Missing parents of the Maildir are made 0700 too, whatever the umask;
    existing ones keep their modes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        make_folders(self.path)
        #: The group commit of new/: deliveries renamed at about the same time share one fsync.
        self.new_sync = DirectorySync(self.path / "new")
        self._folders: dict[str, Maildir] = {}
        self._folders_lock = threading.Lock()

    def folder(self, name: str) -> Maildir:
        """The Maildir++ folder ``name`` (``Junk`` is ``.Junk/``), made with its ``maildirfolder`` mark if missing.

        ``name`` is configuration, never a client's: letters, digits, ``_``
        and ``-``, with ``.`` between levels (``Lists.python``), else ``ValueError``.
        """
        if not _FOLDER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a Maildir++ folder name (letters, digits, _ and -, dots between levels)")
        with self._folders_lock:
            folder = self._folders.get(name)
            if folder is None:
                folder = Maildir(self.path / f".{name}")
                mark = folder.path / "maildirfolder"
                if not mark.exists():
                    os.close(os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
                self._folders[name] = folder
        return folder

    def unique_name(self) -> str:
        now = time.time()
        seconds, micro = int(now), int(now % 1 * 1_000_000)
        return f"{seconds}.M{micro}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(8)}.{self._host}"

    def open_to_others(self) -> list[str]:
        """The Maildir's folders that other users may enter or read, with their modes (an operator-made Maildir)."""
        loose = []
        for folder in (self.path, *(self.path / sub for sub in SUBFOLDERS)):
            mode = stat.S_IMODE(folder.stat().st_mode)
            if mode & 0o007:
                loose.append(f"{folder} (mode {mode:04o})")
        return loose

    def begin(self) -> Delivery:
        """A new delivery; it touches no disk until its first ``write``, ``create`` or ``commit``."""
        return Delivery(self)


class DirectorySync:
    """Group commit: an fsync of a directory that every caller shares with those who came meanwhile.

    ``sync()`` returns only after an fsync of the directory that *started
    after* ``sync()`` was called has succeeded, so whatever the caller did to
    the directory before (a rename into it) is durable.  Callers arriving
    while an fsync runs cannot use that one (it may have started before their
    rename); they form the next group, and the first of them to see the disk
    idle becomes its leader and runs one fsync for the whole group while the
    others wait.  A lone caller on an idle disk fsyncs at once: no timer, no
    added latency, and under load one fsync serves everyone who arrived
    during the previous one.  If the group's fsync fails, every member gets
    the error.

    Why a leader among the callers rather than a committer thread of its own:
    the callers are already worker threads (``anyio.to_thread``) that block
    in the fsync of their own file just before, so waiting a little longer
    there costs nothing on the event loop, works the same under asyncio and
    trio, and needs no thread to start, stop, or re-create after fork in
    ``--workers``.  The price is one parked worker thread per waiting
    delivery, which anyio's thread limiter (40 by default) bounds.

    The directory is opened for each fsync, not kept open, so a replaced
    directory is never synced in place of the one renamed into.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fsyncs = 0  #: fsyncs started so far (to measure how well the groups form)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._running = False  # an fsync is under way (by some group's leader)
        self._next = _Group()  # the group whose fsync has not started yet

    def sync(self) -> None:
        """Block until an fsync of the directory that started after this call has succeeded; raise if it failed."""
        with self._lock:
            group = self._next
            while not group.done:
                if not self._running:  # the disk is idle: lead this group
                    self._running = True
                    self._next = _Group()  # anyone arriving from now on needs a later fsync
                    self.fsyncs += 1
                    break
                self._changed.wait()
            else:
                group.check()
                return
        group.error = OSError(errno.EIO, "the fsync did not finish", str(self.path))  # until it does
        try:
            fsync_directory(self.path)
            group.error = None
        except OSError as error:
            group.error = OSError(error.errno, error.strerror, str(self.path))
        finally:
            with self._lock:
                group.done = True
                self._running = False
                self._changed.notify_all()
        group.check()


class _Group:
    """The callers that one fsync serves, and how it went."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: OSError | None = None

    def check(self) -> None:
        """Raise the group's error, a copy for each member (they raise it in parallel threads)."""
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror, self.error.filename) from self.error


class Delivery:
    """One message on its way into new/; ``commit`` returns only once it is on disk.

    Making one touches no disk: the file in tmp/ (and its name) comes with
    ``create``, or with the first ``write`` or ``commit``, all of which block
    and belong in a worker thread.  So a small message costs one trip to a
    worker thread: ``commit(data)`` creates, writes, fsyncs, renames, and
    waits for the (shared) fsync of new/.
    """

    def __init__(self, maildir: Maildir) -> None:
        self.maildir = maildir
        self.size = 0
        self.name = ""  # the file's name, once created
        self._fd: int | None = None

    @property
    def created(self) -> bool:
        """Whether there is a file in tmp/ (``abort`` then has something to remove)."""
        return self._fd is not None

    @property
    def tmp(self) -> Path:
        return self.maildir.path / "tmp" / self.name

    @property
    def new(self) -> Path:
        return self.maildir.path / "new" / self.name

    def create(self) -> None:
        """Create the (empty) file in tmp/, if not yet done; raises OSError when the Maildir cannot take it."""
        if self._fd is None:
            self.name = self.maildir.unique_name()
            self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)

    def write(self, data: bytes | bytearray) -> None:
        self.create()
        assert self._fd is not None
        write_all(self._fd, data, self.tmp)
        self.size += len(data)

    def commit(self, data: bytes | bytearray = b"", folder: str | None = None) -> Path:
        """Write ``data`` (the rest of the message), fsync the file, rename it into new/, fsync new/.

        With ``folder``, the new/ is that Maildir++ folder's (``Maildir.folder``).

        On an error the file is removed from tmp/ and the error raised.  If
        the fsync of new/ is what failed, the message is already in new/ and
        stays there, though it may not survive a crash: the client, told to
        retry, may then deliver it twice, which is the safe side.
        """
        try:
            self.seal(data)
            target, new = self.publish(folder)
            target.new_sync.sync()
        except BaseException:
            self.abort()
            raise
        return new

    def publish(self, folder: str | None = None) -> tuple[Maildir, Path]:
        """Rename the sealed file into new/ (``folder``'s, if given): the Maildir it went to, and its path.

        Durable only once that new/ is fsynced (``commit`` does it; a group commit does it once for many).
        """
        target = self.maildir if folder is None else self.maildir.folder(folder)
        new = target.path / "new" / self.name
        os.rename(self.tmp, new)
        return target, new

    def seal(self, data: bytes | bytearray = b"", *, fsync: bool = True) -> None:
        """Write ``data`` (the rest of the message), fsync the file and close it; it stays in tmp/.

        What LMTP links into each recipient's Maildir; ``abort`` removes it.
        ``fsync=False`` leaves the fsync to the caller's sync of the whole
        file system (``GroupCommit``'s ``syncfs``).
        """
        self.write(data)
        assert self._fd is not None
        if fsync:
            os.fsync(self._fd)
        fd, self._fd = self._fd, -1  # closed from here on, even if close() fails
        os.close(fd)

    def abort(self) -> None:
        """Forget the message: close and remove the temporary file (if it is still there)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):  # it is closed all the same
                os.close(fd)
        self.tmp.unlink(missing_ok=True)
