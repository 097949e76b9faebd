"""Who may open a session, and how the others are refused: the same limits and the same 421 on every server.

A connection is admitted while fewer than ``options.max_sessions`` sessions
are open and its client (``options.counted_client``) has fewer than
``options.max_sessions_per_client``; the others get ``421 4.7.0 Too many
connections`` (after the TLS handshake on an implicit-TLS listener) and are
closed.  A refusal that takes a task or a thread of its own (a handshake, a
send) counts against ``REFUSALS_AT_ONCE``; beyond it a connection over a
limit is closed without a word, so a flood cannot make refusals without bound.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from smtpwire import Reply

from ._options import ServerOptions

S = TypeVar("S")

#: Refusals under way at once (each a TLS handshake and a 421); beyond them, over a limit means closed at once.
REFUSALS_AT_ONCE = 16


def too_many_connections(options: ServerOptions) -> bytes:
    """The ``421 4.7.0`` greeting for a connection over a session limit: write it, then close."""
    conn = options.new_connection()
    conn.next_event()  # a new connection's first event is always ConnectionOpened
    conn.send(Reply(421, f"{conn.config.hostname} Too many connections, try again later", (4, 7, 0)))
    return conn.data_to_send()


class ClientCounter:
    """Concurrent sessions per client, against ``limit`` (``None``: no limit, nothing counted).

    Not thread-safe: a threaded server calls it under its own lock.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def full(self, key: str | None) -> bool:
        """Whether ``key`` has ``limit`` sessions already."""
        return self.limit is not None and key is not None and self._open.get(key, 0) >= self.limit

    def add(self, key: str | None) -> bool:
        """Count one more session of ``key``; False (and nothing counted) when it has ``limit`` already."""
        if self.limit is None or key is None:
            return True
        if self.full(key):
            return False
        self._open[key] = self._open.get(key, 0) + 1
        return True

    def remove(self, key: str | None) -> None:
        """One session of ``key`` ended."""
        if self.limit is None or key is None:
            return
        count = self._open.pop(key, 0) - 1
        if count > 0:
            self._open[key] = count


class Refusals:
    """The refusals under way, against ``REFUSALS_AT_ONCE``.

    Not thread-safe: a threaded server calls it under its own lock.
    """

    def __init__(self) -> None:
        self.under_way = 0

    def start(self) -> bool:
        """Count one more; False (nothing counted) when ``REFUSALS_AT_ONCE`` are under way already."""
        if self.under_way >= REFUSALS_AT_ONCE:
            return False
        self.under_way += 1
        return True

    def done(self) -> None:
        self.under_way -= 1


class Admission(Generic[S]):
    """The open sessions of one server against its limits, and its ``refusals`` under way.

    Not thread-safe: a threaded server calls it under its own lock.
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self._sessions: dict[S, str | None] = {}  # each open session and the client it counts for
        self._clients = ClientCounter(options.max_sessions_per_client)
        self.refusals = Refusals()
        self.closed = False

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[S]:
        """The open sessions, copied: the caller may release them as it goes through them."""
        return list(self._sessions)

    def close(self) -> None:
        """Admit no one any more (the server is shutting down)."""
        self.closed = True

    def refusal(self, peer: object) -> str | None:
        """Why a new session from ``peer`` is refused now (for the log), or ``None``; counts no session.

        A refusal is counted in the server's metrics, when it has them, by its kind.
        """
        kind, why = self._refusal(peer)
        if kind is not None and self.options.metrics is not None:
            self.options.metrics.session_refused(kind)
        return why

    def _refusal(self, peer: object) -> tuple[str | None, str | None]:
        if self.closed:
            return "shutting_down", "shutting down"
        if len(self._sessions) >= self.options.max_sessions:
            return "too_many", f"{len(self._sessions)} sessions already"
        key = self.options.counted_client(peer)
        if self._clients.full(key):
            return "per_client", f"{self.options.max_sessions_per_client} sessions from {key} already"
        return None, None

    def admit(self, session: S, peer: object) -> str | None:
        """Count ``session`` in; ``None`` when admitted, else why not (see ``refusal``).

        A session admitted already (counted before its TLS handshake) is
        admitted again, or told "shutting down" and still counted (release it).
        """
        refusal = "shutting down" if self.closed else None
        if session not in self._sessions:
            refusal = self.refusal(peer)
            if refusal is None:
                key = self.options.counted_client(peer)
                self._clients.add(key)
                self._sessions[session] = key
        return refusal

    def release(self, session: S) -> None:
        """``session`` ended: it no longer counts (a session never admitted: nothing happens)."""
        if session in self._sessions:
            self._clients.remove(self._sessions.pop(session))
