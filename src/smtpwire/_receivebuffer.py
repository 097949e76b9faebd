"""A byte buffer that finds line ends without rescanning (as in h11).

A peer dripping one byte at a time costs O(n) in total, not O(n^2): the
search for LF resumes where the last one stopped.
"""

from __future__ import annotations


class ReceiveBuffer:
    def __init__(self) -> None:
        self._data = bytearray()
        self._scanned = 0

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._data += data

    def extract_line(self) -> bytes | None:
        """The next line including its LF, or ``None`` while it is incomplete."""
        end = self._data.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._data)
            return None
        line = bytes(self._data[: end + 1])
        del self._data[: end + 1]
        self._scanned = 0
        return line

    def peek(self, size: int) -> bytes:
        """The first ``size`` bytes, left in place."""
        return bytes(self._data[:size])

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes from the front (a BDAT chunk's octets: no line ends looked for)."""
        data = bytes(self._data[:limit])
        del self._data[:limit]
        self._scanned = 0
        return data

    def take_all(self) -> bytes:
        data = bytes(self._data)
        self.clear()
        return data

    def clear(self) -> None:
        self._data.clear()
        self._scanned = 0
