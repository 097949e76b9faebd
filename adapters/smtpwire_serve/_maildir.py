"""A durable Maildir: tmp/, fsync, rename into new/, fsync the directory, then 250.

Names follow the Maildir convention (time, microseconds, pid, a counter and
random bits, the host name), so concurrent deliveries never collide.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import socket
import time
from pathlib import Path

from smtpwire import Reply

STORAGE_FULL = Reply(452, "Insufficient system storage", (4, 3, 1))
STORAGE_FAILED = Reply(451, "Requested action aborted: error in storing the message", (4, 3, 0))
_FULL_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_counter = itertools.count()


def storage_reply(error: OSError) -> Reply:
    """What to tell the client when the disk said no."""
    return STORAGE_FULL if error.errno in _FULL_ERRORS else STORAGE_FAILED


class Maildir:
    """A Maildir directory, created (with tmp/, new/, cur/) if missing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def unique_name(self) -> str:
        now = time.time()
        seconds, micro = int(now), int(now % 1 * 1_000_000)
        return f"{seconds}.M{micro}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(8)}.{self._host}"

    def begin(self) -> Delivery:
        return Delivery(self)


class Delivery:
    """One message on its way into new/; ``commit`` returns only once it is on disk."""

    def __init__(self, maildir: Maildir) -> None:
        self.name = maildir.unique_name()
        self.tmp = maildir.path / "tmp" / self.name
        self.new = maildir.path / "new" / self.name
        self.size = 0
        self._file = open(self.tmp, "xb")  # noqa: SIM115 - closed by commit() or abort()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> Path:
        """fsync the file, rename it into new/, fsync new/ (the rename is then durable)."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.rename(self.tmp, self.new)
            directory = os.open(self.new.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except BaseException:
            self.abort()
            raise
        return self.new

    def abort(self) -> None:
        """Forget the message: close and remove the temporary file (if it is still there)."""
        with contextlib.suppress(OSError):  # the disk may refuse the last flush too
            self._file.close()
        self.tmp.unlink(missing_ok=True)
