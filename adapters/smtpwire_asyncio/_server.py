"""Listeners, the session limit and graceful shutdown around ``SMTPProtocol``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Sequence

from smtpwire_handler import (
    ACCEPT_RETRY,
    AcceptErrors,
    AsyncHandler,
    ClientCounter,
    Handler,
    HostPort,
    ServerBase,
    ServerOptions,
    UnixListener,
)

from ._protocol import SMTPProtocol, log

_ABORT_AFTER = 5.0  # seconds after the grace: connections still open are dropped
#: Implicit-TLS handshakes beyond the session limit, for the 421 of those over it.
_REFUSING_HANDSHAKES = 16
_BACKLOG = 1024
_RECEIVE_SIZE = 64 * 1024


class Server(ServerBase[SMTPProtocol]):
    """An SMTP server on asyncio's Protocol API: plain listeners (STARTTLS) and implicit TLS.

    ``await server.start()`` binds (``addresses`` then holds the real ports),
    ``await server.shutdown()`` stops gracefully; ``await server.serve()``
    does both around waiting until cancelled.  A ``listen`` entry that is a
    ``str`` is the path of a Unix socket (made with ``unix_mode``, a stale one
    replaced, removed at shutdown; see ``smtpwire_handler._unix``).
    """

    def _prepare(self) -> None:
        self._listeners: list[asyncio.Server] = []
        self._unix: list[UnixListener] = []
        self._tls_sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()  # implicit-TLS accept loops and handshakes
        self._handshakes = 0  # implicit-TLS handshakes under way
        self._handshaking = ClientCounter(self.options.max_sessions_per_client)
        self._accept_errors = AcceptErrors(log)
        self._all_closed: asyncio.Event | None = None
        #: What every session reads into before its bytes are copied out (see SMTPProtocol).
        self.receive_buffer = memoryview(bytearray(_RECEIVE_SIZE))

    async def start(self) -> None:
        """Bind every listener; an address in use raises ``OSError`` naming it."""
        try:
            for host, port in self.listen:
                self.addresses += await self._bind(host, port, implicit_tls=False)
            for host, port in self.tls_listen:
                self.tls_addresses += await self._bind(host, port, implicit_tls=True)
            for path in self.unix_listen:
                await self._bind_unix(path)
        except BaseException:
            self._stop_listening()
            raise
        log.info(
            "serving SMTP on %s, implicit TLS on %s, Unix sockets %s",
            self.addresses,
            self.tls_addresses,
            self.unix_addresses,
        )

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
        remaining session is told 421 4.3.2 and closed; a few seconds later
        any connection still open is dropped.
        """
        self._stopping = True
        self._stop_listening()
        for protocol in list(self._sessions):
            protocol.stop()
        await self._wait_closed(self.options.shutdown_grace if grace is None else grace)
        for protocol in list(self._sessions):
            protocol.stop(force=True)
        await self._wait_closed(_ABORT_AFTER)
        self.abort()

    def abort(self) -> None:
        """Stop accepting and drop every connection now, without a word."""
        self._stopping = True
        self._stop_listening()
        for protocol in list(self._sessions):
            protocol.abort()
            self._release(protocol)

    # -- what the protocols call ---------------------------------------------------

    def admit(self, protocol: SMTPProtocol, peer: object) -> str | None:
        """Count a new session in; ``None`` when admitted, else why not (a limit is reached)."""
        return self._admit(protocol, peer)

    def release(self, protocol: SMTPProtocol) -> None:
        self._release(protocol)
        if not self._sessions and self._all_closed is not None:
            self._all_closed.set()

    # -- internals ---------------------------------------------------------------------

    def _stop_listening(self) -> None:
        for listener in self._listeners:
            listener.close()
        for task in self._tasks:
            task.cancel()
        for sock in self._tls_sockets:
            sock.close()
        for unix in self._unix:
            unix.close()

    async def _bind(self, host: str, port: int, *, implicit_tls: bool) -> list[HostPort]:
        try:
            socks = listening_sockets(host, port, reuse_port=self.reuse_port)
        except OSError as error:
            raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from error
        loop = asyncio.get_running_loop()
        for sock in socks:
            if implicit_tls:
                self._tasks.add(loop.create_task(self._accept_tls(sock)))
                self._tls_sockets.append(sock)
            else:
                self._listeners.append(await loop.create_server(lambda: SMTPProtocol(self), sock=sock))
        return [_host_port(sock) for sock in socks]

    async def _bind_unix(self, path: str) -> None:
        unix = UnixListener(path, self.unix_mode)
        self._unix.append(unix)
        loop = asyncio.get_running_loop()
        self._listeners.append(await loop.create_unix_server(lambda: SMTPProtocol(self), sock=unix.socket))
        self.unix_addresses.append(path)

    async def _accept_tls(self, sock: socket.socket) -> None:
        """Accept on an implicit-TLS listener; each handshake runs in its own task, then becomes a session.

        ``connect_accepted_socket`` does the handshake before the protocol sees
        a byte, so no ClientHello can ever reach the SMTP session.  Handshakes
        under way are bounded like sessions (in all, and per client), so a
        flood of silent clients cannot make tasks without bound; beyond that
        a connection is closed at once.  A failing accept() (out of
        descriptors, say) is retried after a pause, never ends the listener.
        """
        loop = asyncio.get_running_loop()
        where = _host_port(sock)
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as error:
                self._accept_errors.failed(where, error)
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            self._accept_errors.accepted()
            key = self.options.counted_client(peer)
            if self._handshakes >= self.options.max_sessions + _REFUSING_HANDSHAKES or not self._handshaking.add(key):
                log.warning("closing a connection from %s: too many TLS handshakes under way", peer)
                conn.close()
                continue
            self._handshakes += 1
            task = loop.create_task(self._handshake(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(self._handshake_done, key))

    def _handshake_done(self, key: str | None, task: asyncio.Task[None]) -> None:
        self._handshakes -= 1
        self._handshaking.remove(key)

    async def _handshake(self, conn: socket.socket, peer: object) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: SMTPProtocol(self, implicit_tls=True),
                conn,
                ssl=self.options.tls_context,
                ssl_handshake_timeout=self.options.tls_handshake_timeout,
            )
        except OSError as error:  # ssl.SSLError and TimeoutError included
            log.warning("TLS handshake with %s failed: %r", peer, error)
            conn.close()

    async def _wait_closed(self, timeout: float) -> None:
        if not self._sessions:
            return
        self._all_closed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), timeout)


def listening_sockets(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address of ``host`` (as asyncio would make them)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _host_port(sock: socket.socket) -> HostPort:
    address = sock.getsockname()
    return (address[0], address[1])


async def serve(
    handler: AsyncHandler | Handler | None = None,
    options: ServerOptions | None = None,
    *,
    listen: Sequence[HostPort | str] = (("127.0.0.1", 8025),),
    tls_listen: Sequence[HostPort] = (),
) -> None:
    """Serve until cancelled: ``smtpwire_asyncio.run(serve(MyHandler(), options))``; a ``str`` is a Unix socket."""
    await Server(handler, options, listen=listen, tls_listen=tls_listen).serve()
