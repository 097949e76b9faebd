"""A flag other threads can raise that also wakes a ``poll`` waiting in this one."""

from __future__ import annotations

import contextlib
import socket


class Wakeup:
    """A socket pair: ``set()`` from any thread makes ``readable`` readable until ``clear()``.

    Waiting on it next to a client socket gives a wait that another thread
    can interrupt without a polling loop, on every platform.
    """

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    @property
    def readable(self) -> socket.socket:
        """What to wait on next to the sockets you wait for."""
        return self._read

    def set(self) -> None:
        """Wake the waiter; harmless when already set or closed."""
        with contextlib.suppress(OSError):  # the buffer is full (already set) or the pair is closed
            self._write.send(b"!")

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            while self._read.recv(4096):
                pass

    def close(self) -> None:
        self._read.close()
        self._write.close()
