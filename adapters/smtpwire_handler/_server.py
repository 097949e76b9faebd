"""What the servers share: handler, options, listeners, the open sessions and the limits on them."""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from typing import Generic, TypeVar

from ._checks import check_handler
from ._handler import AsyncHandler, Handler
from ._options import ServerOptions
from ._unix import DEFAULT_MODE, split_listen

HostPort = tuple[str, int]
S = TypeVar("S")

#: The most received bytes given to the core at once outside message data.  The replies
#: to them (pipelined HELP or EHLO answer about 13 times their size) are sent before
#: more is fed, so a client that never reads holds one slice's replies in our memory.
FEED_SIZE = 4 * 1024
#: accept() errors that mean "out of descriptors or memory for now": wait, then accept again.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds to wait after such an error before accepting again.
ACCEPT_RETRY = 0.1


class ClientCounter:
    """Concurrent sessions per client, against ``limit`` (``None``: no limit, nothing counted).

    Not thread-safe: a threaded server calls it under its own lock.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def add(self, key: str | None) -> bool:
        """Count one more session of ``key``; False (and nothing counted) when it has ``limit`` already."""
        if self.limit is None or key is None:
            return True
        count = self._open.get(key, 0)
        if count >= self.limit:
            return False
        self._open[key] = count + 1
        return True

    def remove(self, key: str | None) -> None:
        """One session of ``key`` ended."""
        if self.limit is None or key is None:
            return
        count = self._open.pop(key, 0) - 1
        if count > 0:
            self._open[key] = count


class AcceptErrors:
    """Logs failing accept() calls once per burst, not once per retry, and when accepting works again."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._failures = 0

    def failed(self, where: object, error: OSError) -> None:
        if not self._failures:
            self.log.error("cannot accept connections on %s (%r): retrying every %s s", where, error, ACCEPT_RETRY)
        self._failures += 1

    def accepted(self) -> None:
        if self._failures:
            self.log.warning("accepting connections again after %d failed attempts", self._failures)
            self._failures = 0


class PendingInput:
    """Received bytes not yet given to the core, handed out ``FEED_SIZE`` at a time (see ``FEED_SIZE``)."""

    __slots__ = ("_at", "_data")

    def __init__(self) -> None:
        self._data = b""
        self._at = 0

    def __bool__(self) -> bool:
        return self._at < len(self._data)

    def put(self, data: bytes) -> None:
        """Add received bytes behind those still pending."""
        self._data = self._data[self._at :] + data if self else data
        self._at = 0

    def take(self, in_message: bool = False) -> bytes:
        """The next slice to feed (``b""`` when nothing is pending).

        ``in_message``: the core reads message data, which has no replies
        until its end (``CRLF . CRLF``), and the end can come no earlier than
        the first dot: the slice reaches that far (a fast ``memchr``; base64
        has no dots), or to the end of what is pending.  A slice that starts
        with a line end may finish an end begun in the last one: it gets the
        usual size.
        """
        data, at = self._data, self._at
        if at == 0 and len(data) <= FEED_SIZE:
            self._data = b""
            return data
        end = at + FEED_SIZE
        if in_message and not data.startswith((b"\n", b"\r\n"), at):
            dot = data.find(b".", at)
            end = len(data) if dot < 0 else max(dot + 3, end)
        self._at = end
        return data[at:end]

    def take_rest(self) -> bytes:
        """Everything still pending, at once (the peer closed: nothing more will come)."""
        rest = self._data[self._at :]
        self.clear()
        return rest

    def clear(self) -> None:
        """Forget what is pending (plaintext behind STARTTLS, or a closed session's bytes)."""
        self._data = b""
        self._at = 0


class ServerBase(Generic[S]):
    """Checked once at construction; ``addresses`` and ``tls_addresses`` hold the real ports once bound.

    A ``listen`` entry that is a ``str`` is the path of a Unix socket, made
    with ``unix_mode``, a stale one replaced, removed at shutdown (see
    ``_unix``); ``unix_addresses`` holds the paths once bound.
    """

    def __init__(
        self,
        handler: AsyncHandler | Handler | None = None,
        options: ServerOptions | None = None,
        *,
        listen: Sequence[HostPort | str] = (("127.0.0.1", 8025),),
        tls_listen: Sequence[HostPort] = (),
        reuse_port: bool = False,
        unix_mode: int = DEFAULT_MODE,
    ) -> None:
        self.handler: AsyncHandler | Handler = handler or AsyncHandler()
        check_handler(self.handler, can_await=True)
        self.options = options or ServerOptions()
        self.options.check_listeners(listen, tls_listen)
        self.listen, self.unix_listen = split_listen(listen)  # TCP addresses; Unix sockets' paths
        self.unix_mode = unix_mode
        self.unix_addresses: list[str] = []
        self.tls_listen = list(tls_listen)
        self.reuse_port = reuse_port
        self.addresses: list[HostPort] = []
        self.tls_addresses: list[HostPort] = []
        self._sessions: dict[S, str | None] = {}  # each open session and the client it counts for
        self._clients = ClientCounter(self.options.max_sessions_per_client)
        self._stopping = False
        self._prepare()

    def _prepare(self) -> None:
        """The adapter's own state, set up at the end of construction."""

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def _admit(self, session: S, peer: object) -> str | None:
        """Count ``session`` in; ``None`` when admitted, else why it is refused (for the log)."""
        if len(self._sessions) >= self.options.max_sessions:
            return f"{len(self._sessions)} sessions already"
        key = self.options.counted_client(peer)
        if not self._clients.add(key):
            return f"{self.options.max_sessions_per_client} sessions from {key} already"
        self._sessions[session] = key
        return None

    def _release(self, session: S) -> None:
        """``session`` ended: it no longer counts."""
        if session in self._sessions:
            self._clients.remove(self._sessions.pop(session))
