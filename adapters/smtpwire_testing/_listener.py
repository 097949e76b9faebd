"""The asyncio server as the test server needs it: it can find a session's connection to drop it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import smtpwire
import smtpwire_asyncio
from smtpwire_asyncio import Session
from smtpwire_handler.kit import SessionDriver

from ._faults import Disconnect, Fail, Faults

#: A paced session reads at most this many seconds' worth of bytes at a time.
_PACING_STEP = 0.05
_IN_TRANSACTION = frozenset(
    {smtpwire.State.MAIL, smtpwire.State.RCPT, smtpwire.State.DATA, smtpwire.State.CHUNK, smtpwire.State.BDAT}
)


class PacedSession(smtpwire_asyncio.AsyncioSession):
    """A session whose reads a throttle paces: at most a twentieth of a second's bytes a read, then reading pauses
    for as long as those bytes take at the rate (the client's writes back up, as over a slow link)."""

    __slots__ = ("_faults",)

    def __init__(self, server: smtpwire_asyncio.Server, faults: Faults, *, implicit_tls: bool = False) -> None:
        super().__init__(server, implicit_tls=implicit_tls)
        self._faults = faults

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = super().get_buffer(sizehint)
        rate = self._faults.read_rate()
        return buffer if rate is None else buffer[: max(1, int(rate * _PACING_STEP))]

    def buffer_updated(self, nbytes: int) -> None:
        rate = self._faults.read_rate()
        super().buffer_updated(nbytes)
        transport = self.transport
        if rate is not None and transport is not None and not transport.is_closing() and transport.is_reading():
            transport.pause_reading()
            self._loop.call_later(nbytes / rate, self._read_on, transport)

    def _read_on(self, transport: asyncio.Transport) -> None:
        """Resume after a pacing pause, unless the session paused reading itself meanwhile (or it ended)."""
        if self.transport is transport and not transport.is_closing() and self._reading:
            transport.resume_reading()


class DroppingServer(smtpwire_asyncio.Server):
    """``smtpwire_asyncio.Server`` that keeps its connections, so that an injected disconnect can drop one, and
    whose sessions a throttle can pace."""

    def __init__(self, *args: Any, faults: Faults, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[smtpwire_asyncio.AsyncioSession] = set()
        self._faults = faults

    def _new_session(self, implicit_tls: bool = False) -> smtpwire_asyncio.AsyncioSession:
        return PacedSession(self, self._faults, implicit_tls=implicit_tls)

    def admit(self, protocol: smtpwire_asyncio.AsyncioSession, peer: object) -> str | None:
        refusal = super().admit(protocol, peer)
        if refusal is None:
            self.connections.add(protocol)
        return refusal

    def release(self, protocol: smtpwire_asyncio.AsyncioSession) -> None:
        self.connections.discard(protocol)
        super().release(protocol)

    def in_transaction(self) -> bool:
        """Whether a session has a transaction open (MAIL accepted, its message not yet answered) or a decision
        pending (its MAIL, or its message, may be about to be accepted).

        Read from the test's thread: each is one attribute read, and the set is copied first."""
        drivers = [protocol.driver for protocol in list(self.connections)]
        return any(
            driver is not None and (driver.conn.state in _IN_TRANSACTION or driver.conn.pending is not None)
            for driver in drivers
        )

    def drop(self, session: Session) -> None:
        """Drop ``session``'s connection without a word (the client sees it close)."""
        self._drop_where(lambda driver: driver.session is session)

    def drop_connection(self, conn: smtpwire.ServerConnection) -> Session | None:
        """Drop the connection the core's ``conn`` serves; its session, if found."""
        return self._drop_where(lambda driver: driver.conn is conn)

    def _drop_where(self, chosen: Callable[[SessionDriver], bool]) -> Session | None:
        for protocol in list(self.connections):
            if protocol.driver is not None and chosen(protocol.driver) and protocol.transport is not None:
                protocol.transport.abort()
                return protocol.driver.session
        return None


class FaultyStartTLS(smtpwire.StartTLS):
    """STARTTLS that an injected fault can refuse (the core's 454 4.7.0) or answer by dropping the connection.

    The core asks ``offered()`` while it builds the EHLO reply (an ``Ehlo``
    decision is pending: STARTTLS is still advertised, as a server whose TLS
    breaks later would) and when the command comes (nothing pending: the
    faults are asked then).
    """

    def __init__(self, faults: Faults, drop: Callable[[smtpwire.ServerConnection], None]) -> None:
        self._faults = faults
        self._drop = drop

    def offered(self, conn: smtpwire.ServerConnection) -> bool:
        if conn.tls_active:
            return False
        if conn.pending is not None:
            return True
        _, outcome = self._faults.due("starttls")
        if isinstance(outcome, Disconnect):
            self._drop(conn)
        return not isinstance(outcome, Fail | Disconnect)
