"""The mbox format, written a piece at a time: From_ lines, mboxrd quoting, locked durable appends.

An mbox is one file of messages, each starting with a ``From sender date``
line, so a line of a message that starts with ``From `` must be quoted.
mboxrd quoting adds a ``>`` to every line that matches ``>*From ``: readers
that know mboxrd take one ``>`` off again and get the message as sent, and
the others (``mailbox.mbox`` among them) still see where messages begin.

Everything here that touches the disk blocks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

from ._maildir import FILE_MODE, write_all

#: Where a line (its ">"s included) reads "From ": a ">" goes in front.
_FROM_LINE_START = re.compile(rb"^(?=>*From )", re.MULTILINE)
#: The end of a piece that may yet become ">*From " once the next piece comes.
_MAYBE_FROM = re.compile(rb">*(?:F(?:r(?:o(?:m)?)?)?)?")
_NOT_IN_FROM_LINE = re.compile("[^\x21-\x7e]")  # the sender is one ASCII word there
_COPY_BLOCK = 64 * 1024
#: ``fcntl`` locks keep other processes out, not this process's other threads (the blocking adapter's sessions).
_APPENDING = threading.Lock()


def from_line(sender: str) -> bytes:
    """``From sender date`` (the date as ``time.asctime`` in UTC); the null sender is ``MAILER-DAEMON``."""
    shown = _NOT_IN_FROM_LINE.sub("?", sender) or "MAILER-DAEMON"
    return f"From {shown} {time.asctime(time.gmtime())}\n".encode("ascii")


class FromQuoter:
    """mboxrd quoting and CRLF to LF of a message that arrives in pieces cut anywhere.

    What the end of a piece leaves open is held back for the next: a CR that
    may begin a CRLF, and the start of a line that may yet read ``From ``
    (at most four octets: the ``>``s before it go on at once, since a ``>``
    added anywhere among them quotes the line all the same).
    """

    def __init__(self) -> None:
        self._cr = b""
        self._held = b""  # a line's start after its ">"s: a strict prefix of "From "
        self._line_start = True  # nothing but ">"s since the current line began

    def feed(self, data: bytes) -> bytes:
        """The next piece of the message, in mbox form as far as it can be decided."""
        data = self._cr + data
        self._cr = b"\r" if data.endswith(b"\r") else b""
        text = self._held + data[: len(data) - len(self._cr)].replace(b"\r\n", b"\n")
        head = b""
        if not self._line_start:  # the first line goes on as it is: it did not start here
            cut = text.find(b"\n") + 1
            if cut == 0:
                return text
            head, text = text[:cut], text[cut:]
        quoted = _FROM_LINE_START.sub(b">", text)
        last_line = quoted.rfind(b"\n") + 1
        self._line_start = _MAYBE_FROM.fullmatch(quoted, last_line) is not None
        if not self._line_start:
            self._held = b""
            return head + quoted
        held_from = len(quoted) - len(quoted[last_line:].lstrip(b">"))
        self._held = quoted[held_from:]
        return head + quoted[:held_from]

    def end(self) -> bytes:
        """What was held back, once the message is over."""
        rest, self._held, self._cr = self._held + self._cr, b"", b""
        return rest


class Spool:
    """One message in mbox form in an unlinked temporary file (0600) in ``folder``, until it is appended."""

    def __init__(self, folder: Path) -> None:
        self.file: BinaryIO = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115  # closed by close()
        self._quoter = FromQuoter()
        self._last = b"\n"  # the last octet written (an empty message needs no newline)

    def write(self, data: bytes) -> None:
        self._put(self._quoter.feed(data))

    def finish(self) -> None:
        """Write what the quoter held back, and end the last line."""
        self._put(self._quoter.end())
        if self._last != b"\n":
            self._put(b"\n")

    def _put(self, data: bytes) -> None:
        if data:
            self.file.write(data)
            self._last = data[-1:]

    def close(self) -> None:
        self.file.close()


def append(path: Path, from_: bytes, spool: Spool) -> int:
    """Append the spooled message under its ``From`` line, locked, and fsync; the octets appended.

    On any error the mbox is cut back to its size before, and the error raised.
    """
    spool.finish()
    with _APPENDING:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)  # released by the close
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                write_all(fd, _separator(fd, end) + from_, path)
                spool.file.seek(0)
                while block := spool.file.read(_COPY_BLOCK):
                    write_all(fd, block, path)
                write_all(fd, b"\n", path)  # the blank line that ends a message
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):  # the error that matters is the one being raised
                    os.ftruncate(fd, end)
                raise
            return os.lseek(fd, 0, os.SEEK_END) - end
        finally:
            os.close(fd)


def _separator(fd: int, end: int) -> bytes:
    """What puts a blank line between the mbox's last message (written by anyone) and the next ``From`` line."""
    if end == 0:
        return b""
    tail = os.pread(fd, 2, max(end - 2, 0))
    return b"" if tail in (b"\n", b"\n\n") else b"\n" if tail.endswith(b"\n") else b"\n\n"
