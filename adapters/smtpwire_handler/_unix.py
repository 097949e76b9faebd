"""Unix stream socket listeners, for LMTP from a local MTA: bound with a mode, a stale socket replaced.

A listener address is a ``(host, port)`` pair or, as a ``str``, the path of
a Unix socket.  Binding never removes anything but a dead socket: a path
that is a regular file, a directory or a symbolic link is an error, and so is
a socket another server still listens on.  The mode is set before
``listen()``, so no client can connect while the file has the umask's mode;
``UnixListener.close`` deletes the file at shutdown only if it is still the
one this listener made.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Sequence

from ._listen import BACKLOG

#: The socket file's mode: the server's user and group may connect (the usual for LMTP: add the MTA to the group).
DEFAULT_MODE = 0o660


def split_listen(listen: Sequence[tuple[str, int] | str]) -> tuple[list[tuple[str, int]], list[str]]:
    """The TCP addresses and the Unix socket paths of a listener list, each in the order given."""
    return [a for a in listen if not isinstance(a, str)], [a for a in listen if isinstance(a, str)]


class UnixListener:
    """A bound, listening, non-blocking Unix stream socket at ``path`` with the file mode ``mode``."""

    def __init__(self, path: str, mode: int = DEFAULT_MODE) -> None:
        """Bind and listen; an ``OSError`` names the path (``cannot listen on unix:PATH: why``)."""
        self.path = path
        try:
            _clear_stale(path)
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as error:
            raise _naming(path, error) from error
        try:
            self.socket.bind(path)
            os.chmod(path, mode)  # before listen(): until then every connect() is refused
            made = os.lstat(path)
            self._identity = (made.st_dev, made.st_ino)
            self.socket.listen(BACKLOG)
            self.socket.setblocking(False)
        except BaseException as error:
            self.socket.close()
            if isinstance(error, OSError):
                raise _naming(path, error) from error
            raise

    def close(self) -> None:
        """Close the socket and delete its file, if the file is still ours (not another server's since)."""
        self.socket.close()  # the event loop may have closed it already: a second close does nothing
        with contextlib.suppress(OSError):
            found = os.lstat(self.path)
            if (found.st_dev, found.st_ino) == self._identity:
                os.unlink(self.path)


def _naming(path: str, error: OSError) -> OSError:
    return OSError(error.errno, f"cannot listen on unix:{path}: {error.strerror or error}")


def _clear_stale(path: str) -> None:
    """Remove a socket nobody listens on (a crashed server's); refuse anything else at ``path``."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise OSError(errno.EEXIST, "the path exists and is not a socket (not removed)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:  # a dead socket: nobody listens
            os.unlink(path)
            return
        except OSError:  # a full backlog or the like: somebody is there
            pass
    raise OSError(errno.EADDRINUSE, "another server is listening on this socket")
