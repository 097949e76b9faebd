"""A byte buffer that finds line ends without rescanning (as in h11).

A peer dripping one byte at a time costs O(n) in total, not O(n^2): the
search for LF resumes where the last one stopped.
"""

from __future__ import annotations


class ReceiveBuffer(bytearray):
    """The received bytes not yet read, with where the search for the next LF resumes.

    A bytearray itself, so that feeding it (``extend``) and asking whether
    anything is buffered (or how much) cost no Python call: the connection
    does both for every read.
    """

    __slots__ = ("_scanned",)

    def __init__(self) -> None:
        super().__init__()
        self._scanned = 0

    def extract_line(self) -> bytes | None:
        """The next line including its LF, or ``None`` while it is incomplete."""
        end = self.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self)
            return None
        line = bytes(self[: end + 1])
        del self[: end + 1]
        self._scanned = 0
        return line

    def peek(self, size: int) -> bytes:
        """The first ``size`` bytes, left in place."""
        return bytes(self[:size])

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes from the front (a BDAT chunk's octets: no line ends looked for)."""
        data = bytes(self[:limit])
        del self[:limit]
        self._scanned = 0
        return data

    def take_all(self) -> bytes:
        data = bytes(self)
        self.clear()
        return data

    def clear(self) -> None:
        super().clear()
        self._scanned = 0
