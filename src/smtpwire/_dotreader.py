"""The DATA phase as a stream: dot-unstuffing and the one true end of data.

Only CRLF "." CRLF ends a message (RFC 5321 4.1.1.4); lookalikes such as
LF "." LF or CR "." CR are message content, and a bare CR or LF anywhere is
recorded so the connection can refuse the message (the SMTP smuggling family).
A few bytes that might start the end sequence are held back between feeds,
so the end may be split across any number of ``feed`` calls.
"""

from __future__ import annotations

_LINE_DOT = b"\r\n."


class DotReader:
    def __init__(self, check_line_endings: bool) -> None:
        self._check = check_line_endings
        # The CRLF that ended the DATA command starts the first line; it is
        # never part of the message, so it is held but not emitted.
        self._held = b"\r\n"
        self._held_not_content = 2  # octets at the start of ``_held`` already dealt with: never emitted
        self.bare_line_ending = False

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Return (message bytes, rest); ``rest`` is ``None`` until the end of data."""
        buf = self._held + data
        pieces: list[bytes] = []
        start = self._held_not_content
        position = 0
        while True:
            found = buf.find(_LINE_DOT, position)
            if found < 0:
                cut = len(buf) - (2 if buf.endswith(b"\r\n") else 1 if buf.endswith(b"\r") else 0)
                break
            if len(buf) < found + 5:
                cut = found
                break
            pieces.append(buf[start : found + 2])
            if buf[found + 3 : found + 5] == b"\r\n":
                self._check_line_endings(buf[: found + 5])
                return b"".join(pieces), buf[found + 5 :]
            start = position = found + 3  # a leading dot is removed (RFC 5321 4.5.2)
        pieces.append(buf[start:cut])
        self._check_line_endings(buf[:cut])
        self._held = buf[cut:]
        self._held_not_content = max(0, start - cut)
        return b"".join(pieces), None

    def _check_line_endings(self, region: bytes) -> None:
        if self._check and not self.bare_line_ending:
            pairs = region.count(b"\r\n")
            self.bare_line_ending = region.count(b"\r") != pairs or region.count(b"\n") != pairs
