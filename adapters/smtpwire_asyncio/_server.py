"""``AsyncioSession`` served on the server kit: its listeners, admission and shutdown steps, on asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Coroutine, Sequence
from typing import cast

from smtpwire_handler import AsyncHandler, Handler, ServerOptions
from smtpwire_handler.kit import (
    ACCEPT_RETRY,
    BACKLOG,
    AcceptErrors,
    HostPort,
    Listening,
    ServerBase,
    shutdown_plan,
    too_many_connections,
)

from ._session import AsyncioSession, log

_RECEIVE_SIZE = 64 * 1024


class Server(ServerBase[AsyncioSession]):
    """An SMTP server on asyncio's Protocol API: plain listeners (STARTTLS) and implicit TLS.

    ``await server.start()`` binds (``addresses`` then holds the real ports),
    ``await server.shutdown()`` stops gracefully; ``await server.serve()``
    does both around waiting until cancelled.  A ``listen`` entry that is a
    ``str`` is the path of a Unix socket (made with ``unix_mode``, a stale one
    replaced, removed at shutdown; see ``smtpwire_handler._unix``).
    """

    log = log

    def _prepare(self) -> None:
        self._listening: list[Listening] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()  # implicit-TLS accept loops and handshakes
        self._accept_errors = AcceptErrors(log)
        self._all_closed: asyncio.Event | None = None
        #: What every session reads into before its bytes are copied out (see AsyncioSession).
        self.receive_buffer = memoryview(bytearray(_RECEIVE_SIZE))

    async def start(self) -> None:
        """Bind every listener; an address in use raises ``OSError`` naming it."""
        self._listening = self._listen_all()
        loop = asyncio.get_running_loop()
        try:
            for listening in self._listening:
                if listening.implicit_tls:
                    self._start_task(self._accept_tls(listening))
                elif listening.unix is not None:  # backlog: asyncio listens again, with its own default else
                    unix = await loop.create_unix_server(self._new_session, sock=listening.sock, backlog=BACKLOG)
                    self._servers.append(unix)
                else:
                    self._servers.append(
                        await loop.create_server(self._new_session, sock=listening.sock, backlog=BACKLOG)
                    )
        except BaseException:
            self._stop_listening()
            raise

    async def serve(self) -> None:
        """Serve until cancelled, then shut down gracefully."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.shutdown())

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; idle sessions get 421 4.3.2 now, the others when their transaction ends.

        After ``grace`` seconds (default ``options.shutdown_grace``) every
        remaining session is told 421 4.3.2 and closed; ``ABORT_AFTER``
        seconds later any connection still open is dropped (see
        ``smtpwire_handler.shutdown_plan``).
        """
        self._admission.close()
        self._stop_listening()
        for step, wait in shutdown_plan(self.options, grace):
            self._take(step)
            await self._wait_closed(wait)

    def abort(self) -> None:
        """Stop accepting and drop every connection now, without a word."""
        self._admission.close()
        self._stop_listening()
        self._drop_connections()

    # -- what the protocols call ---------------------------------------------------

    def admit(self, protocol: AsyncioSession, peer: object) -> str | None:
        """Count a new session in; ``None`` when admitted, else why not (a limit is reached)."""
        return self._admit(protocol, peer)

    def release(self, protocol: AsyncioSession) -> None:
        self._release(protocol)
        if not self.sessions and self._all_closed is not None:
            self._all_closed.set()

    # -- internals ---------------------------------------------------------------------

    def _new_session(self, implicit_tls: bool = False) -> AsyncioSession:
        """The protocol of one connection (a subclass may serve its own kind)."""
        return AsyncioSession(self, implicit_tls=implicit_tls)

    def _drop_connections(self) -> None:
        for protocol in self._open_sessions():
            protocol.abort()
            self.release(protocol)

    def _stop_listening(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for listening in self._listening:
            listening.close()

    def _start_task(self, coroutine: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept_tls(self, listening: Listening) -> None:
        """Accept on an implicit-TLS listener; each handshake runs in its own task, then becomes a session.

        ``connect_accepted_socket`` does the handshake before the protocol sees
        a byte, so no ClientHello can ever reach the SMTP session.  A
        connection is admitted (or refused) before its handshake, so
        handshakes under way are bounded like sessions, in all and per
        client, plus the refusals under way.  A failing accept() (out of
        descriptors, say) is retried after a pause, never ends the listener.
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listening.sock)
            except OSError as error:
                self._accept_errors.failed(listening.name, error)
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            self._accept_errors.accepted()
            protocol = self._new_session(implicit_tls=True)
            refusal = self.admit(protocol, peer)
            if refusal is None:
                task = self._start_task(self._handshake(conn, peer, protocol))
                task.add_done_callback(functools.partial(self._handshake_done, protocol))
            elif self._admission.refusals.start():
                log.warning("refusing a connection from %s: %s", peer, refusal)
                task = self._start_task(self._handshake(conn, peer, _Refusal(self.options)))
                task.add_done_callback(lambda _: self._admission.refusals.done())
            else:
                log.warning("closing a connection from %s: %s, and too many refusals under way", peer, refusal)
                conn.close()

    def _handshake_done(self, protocol: AsyncioSession, task: asyncio.Task[None]) -> None:
        if protocol.transport is None:  # the handshake failed or was cancelled: no session came of it
            self.release(protocol)

    async def _handshake(self, conn: socket.socket, peer: object, protocol: asyncio.BaseProtocol) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self.options.tls_context,
                ssl_handshake_timeout=self.options.tls_handshake_timeout,
            )
        except OSError as error:  # ssl.SSLError and TimeoutError included
            log.warning("TLS handshake with %s failed: %r", peer, error)
            conn.close()

    async def _wait_closed(self, timeout: float) -> None:
        if not self.sessions:
            return
        self._all_closed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), timeout)


class _Refusal(asyncio.Protocol):
    """An implicit-TLS connection over a limit, its handshake done: 421 4.7.0, then close."""

    def __init__(self, options: ServerOptions) -> None:
        self._greeting = too_many_connections(options)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses, only alike
        transport.write(self._greeting)
        transport.close()


async def serve(
    handler: AsyncHandler | Handler | None = None,
    options: ServerOptions | None = None,
    *,
    listen: Sequence[HostPort | str] = (("127.0.0.1", 8025),),
    tls_listen: Sequence[HostPort] = (),
) -> None:
    """Serve until cancelled: ``smtpwire_asyncio.run(serve(MyHandler(), options))``; a ``str`` is a Unix socket."""
    await Server(handler, options, listen=listen, tls_listen=tls_listen).serve()
