"""Received bytes the driver has not yet given to the core, handed out a slice at a time.

The core answers pipelined commands at once, and some answers are many
times the size of their command (a pipelined HELP or EHLO: about 13 times).
So the driver feeds the core at most ``SLICE`` octets of commands, then has
the adapter write the replies and wait until the client takes them
(``FLUSH``) before it feeds the next slice: a client that never reads holds
one slice's replies in our memory, not a whole read's.
"""

from __future__ import annotations

from collections import deque

#: The most received bytes given to the core at once outside message data.
SLICE = 4 * 1024


class InputQueue:
    """Bytes received and not yet fed, in order, with the end of the stream behind them.

    Each read is kept as it came, never joined to the next: a slice comes
    from one read, so taking costs a copy of the slice only, whatever is
    queued behind it.
    """

    __slots__ = ("_at", "_reads", "ended")

    def __init__(self) -> None:
        self._reads: deque[bytes] = deque()
        self._at = 0  # where the first read's untaken bytes start
        #: The client closed its side: after the bytes still queued, the core hears ``b""``.
        self.ended = False

    def __bool__(self) -> bool:
        return bool(self._reads)

    def put(self, data: bytes) -> None:
        """Add received bytes behind those still queued."""
        if data:
            self._reads.append(data)

    def take(self, in_message: bool) -> bytes:
        """The next slice to feed, from the first read queued (``b""`` when nothing is queued).

        ``in_message``: the core reads DATA's message data, which has no
        replies until its end (``CRLF . CRLF``), and the end can come no
        earlier than the first dot: the slice reaches that far (a fast
        ``memchr``; base64 has no dots), or to the end of the read.  A slice
        that starts with a line end may finish an end begun in the last
        one: it gets the usual size.
        """
        if not self._reads:
            return b""
        data, at = self._reads[0], self._at
        if at == 0 and len(data) <= SLICE:
            self._reads.popleft()
            return data
        end = at + SLICE
        if in_message and not data.startswith((b"\n", b"\r\n"), at):
            dot = data.find(b".", at)
            end = len(data) if dot < 0 else max(dot + 3, end)
        if end >= len(data):
            self._reads.popleft()
            self._at = 0
        else:
            self._at = end
        return data[at:end]

    def clear(self) -> None:
        """Forget the queued bytes (plaintext behind STARTTLS, RFC 3207 4.2)."""
        self._reads.clear()
        self._at = 0
