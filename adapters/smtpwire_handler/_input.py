"""Received bytes the driver has not yet given to the core, handed out a slice at a time.

The core answers pipelined commands at once, and some answers are many
times the size of their command (a pipelined HELP or EHLO: about 13 times).
So the driver feeds the core at most ``SLICE`` octets of commands, then has
the adapter write the replies and wait until the client takes them
(``FLUSH``) before it feeds the next slice: a client that never reads holds
one slice's replies in our memory, not a whole read's.
"""

from __future__ import annotations

#: The most received bytes given to the core at once outside message data.
SLICE = 4 * 1024


class InputQueue(list[bytes]):
    """Bytes received and not yet fed, in order, with the end of the stream behind them.

    Each read is kept as it came (an item of the list), never joined to the
    next: a slice comes from one read, so taking costs a copy of the slice
    only, whatever is queued behind it.  A list, so that asking whether
    anything is queued costs no Python call.
    """

    __slots__ = ("at", "ended")

    def __init__(self) -> None:
        super().__init__()
        self.at = 0  # where the first read's untaken bytes start
        #: The client closed its side: after the bytes still queued, the core hears ``b""``.
        self.ended = False

    def put(self, data: bytes) -> None:
        """Add received bytes behind those still queued."""
        if data:
            self.append(data)

    def take(self, in_message: bool) -> bytes:
        """The next slice to feed, from the first read queued (``b""`` when nothing is queued).

        ``in_message``: the core reads DATA's message data, which has no
        replies until its end (``CRLF . CRLF``), and the end can come no
        earlier than the first dot: the slice reaches that far (a fast
        ``memchr``; base64 has no dots), or to the end of the read.  A slice
        that starts with a line end may finish an end begun in the last
        one: it gets the usual size.
        """
        if not self:
            return b""
        data, at = self[0], self.at
        end = at + SLICE
        if in_message and not data.startswith((b"\n", b"\r\n"), at):
            dot = data.find(b".", at)
            end = len(data) if dot < 0 else max(dot + 3, end)
        if end >= len(data):
            del self[0]
            self.at = 0
            return data[at:] if at else data
        self.at = end
        return data[at:end]

    def clear(self) -> None:
        """Forget the queued bytes (plaintext behind STARTTLS, RFC 3207 4.2)."""
        super().clear()
        self.at = 0
