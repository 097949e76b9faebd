"""TLS with no socket: the server side of one SSLObject over a pair of MemoryBIOs."""

from __future__ import annotations

import contextlib
import ssl

_READ_SIZE = 64 * 1024


class TLSChannel:
    """Records in with ``feed``, records out with ``records``, plaintext in between.

    Nothing here blocks: a method that needs more records from the peer stops
    and waits for the next ``feed``.  TLS errors (``ssl.SSLError``) from a
    broken peer surface from ``handshake`` and ``read``.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.established = False
        #: The peer sent close_notify: nothing more will come from it.
        self.peer_closed = False

    def feed(self, records: bytes) -> None:
        """Bytes received from the peer (TLS records, possibly partial)."""
        self._incoming.write(records)

    def records(self) -> bytes:
        """Everything TLS produced for the peer since the last call."""
        return self._outgoing.read()

    def handshake(self) -> bool:
        """Advance the handshake with what was fed; True once it is complete."""
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.established = True
        return True

    def read(self) -> bytes:
        """The plaintext of every whole record fed so far (sets ``peer_closed`` at close_notify)."""
        chunks: list[bytes] = []
        while not self.peer_closed:
            try:
                chunk = self.ssl_object.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:  # close_notify: CPython answers b"" or raises SSLZeroReturnError
                self.peer_closed = True
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, plaintext: bytes) -> None:
        """Encrypt ``plaintext`` into records (collect them with ``records``)."""
        view = memoryview(plaintext)
        while view:
            view = view[self.ssl_object.write(view) :]

    def close(self) -> None:
        """Queue our close_notify; the peer's answer is not awaited."""
        with contextlib.suppress(ssl.SSLError):  # SSLWantReadError (awaiting the peer's), or already broken
            self.ssl_object.unwrap()
