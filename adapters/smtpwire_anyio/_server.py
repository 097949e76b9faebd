"""Listeners, the session limit and graceful shutdown around ``SessionRunner``."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import cast

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus

from smtpwire_handler import (
    ACCEPT_RETRY,
    AcceptErrors,
    AsyncHandler,
    Handler,
    HostPort,
    ServerBase,
    ServerOptions,
    UnixListener,
    too_many_sessions,
)

from ._session import GONE, SessionRunner, log, wrap_tls

#: Connections over a limit being told 421 at once; beyond that they are closed without a word.
_REFUSALS = 16


class Server(ServerBase[SessionRunner]):
    """An SMTP server on one or more TCP listeners, plain (STARTTLS) and implicit TLS.

    ``await server.serve()`` runs until ``await server.shutdown()``; start it
    with ``await task_group.start(server.serve)`` to know the bound addresses.
    A failing accept() (out of descriptors, say) is retried after a pause and
    never ends the server; refusals over the session limits run in at most
    a few tasks at a time.  A ``listen`` entry that is a ``str`` is the path
    of a Unix socket (made with ``unix_mode``, a stale one replaced, removed
    at the end; see ``smtpwire_handler._unix``).
    """

    def _prepare(self) -> None:
        self._accepting: anyio.CancelScope | None = None
        self._all_closed = anyio.Event()
        self._stopped = anyio.Event()
        self._refusing = 0  # refusals under way
        self._accept_errors = AcceptErrors(log)

    async def serve(self, *, task_status: TaskStatus[Server] = anyio.TASK_STATUS_IGNORED) -> None:
        unix: list[UnixListener] = []
        listeners: list[tuple[SocketListener, bool]] = []
        try:
            await self._listen_all(listeners, unix)
            log.info(
                "serving SMTP on %s, implicit TLS on %s, Unix sockets %s",
                self.addresses,
                self.tls_addresses,
                self.unix_addresses,
            )
            async with anyio.create_task_group() as sessions:
                with anyio.CancelScope() as self._accepting:
                    async with anyio.create_task_group() as accepting:
                        for listener, implicit_tls in listeners:
                            accepting.start_soon(self._accept, listener, implicit_tls, sessions)
                        task_status.started(self)
                await self._close(listeners, unix)
                await self._stopped.wait()
                sessions.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close(listeners, unix)

    async def _listen_all(self, listeners: list[tuple[SocketListener, bool]], unix: list[UnixListener]) -> None:
        """Bind every listener, into ``listeners`` (with whether it is implicit TLS) and ``unix``."""
        for host, port in self.listen:
            for sub in await self._listen(host, port):
                listeners.append((sub, False))
                self.addresses.append(_host_port(sub))
        for host, port in self.tls_listen:
            for sub in await self._listen(host, port):
                listeners.append((sub, True))
                self.tls_addresses.append(_host_port(sub))
        for path in self.unix_listen:
            unix.append(UnixListener(path, self.unix_mode))
            listeners.append((await SocketListener.from_socket(unix[-1].socket), False))
            self.unix_addresses.append(path)

    @staticmethod
    async def _close(listeners: list[tuple[SocketListener, bool]], unix: list[UnixListener]) -> None:
        """Stop listening, and remove the Unix sockets' files; again is harmless."""
        for listener, _ in listeners:
            await listener.aclose()
        for socket_file in unix:
            socket_file.close()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; idle sessions get 421 4.3.2 now, the others when their transaction ends.

        After ``grace`` seconds (default ``options.shutdown_grace``) every
        remaining session is told 421 4.3.2 and closed.
        """
        self._stopping = True
        if self._accepting is not None:
            self._accepting.cancel()
        for runner in list(self._sessions):
            runner.stop()
        if self._sessions:
            with anyio.move_on_after(self.options.shutdown_grace if grace is None else grace):
                await self._all_closed.wait()
        for runner in list(self._sessions):
            runner.stop(force=True)
        if self._sessions:
            with anyio.move_on_after(5):
                await self._all_closed.wait()
        self._stopped.set()

    async def _listen(self, host: str, port: int) -> list[SocketListener]:
        try:
            multi = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=self.reuse_port)
        except OSError as error:
            raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from error
        return [cast(SocketListener, sub) for sub in multi.listeners]  # TCP listeners, one per address

    async def _accept(self, listener: SocketListener, implicit_tls: bool, group: TaskGroup) -> None:
        """Accept until cancelled; a session, or a refusal, starts for each connection."""
        where = listener.extra(SocketAttribute.local_address)
        while True:
            try:
                stream = await listener.accept()
            except (OSError, anyio.BrokenResourceError) as error:  # EMFILE and the like: the sessions go on
                cause = error if isinstance(error, OSError) else error.__cause__
                if not isinstance(cause, OSError):
                    raise
                self._accept_errors.failed(where, cause)
                await anyio.sleep(ACCEPT_RETRY)
                continue
            self._accept_errors.accepted()
            await self._start(stream, implicit_tls, group)

    async def _start(self, stream: SocketStream, implicit_tls: bool, group: TaskGroup) -> None:
        runner = SessionRunner(stream, self.handler, self.options, implicit_tls=implicit_tls)
        peer = runner.session.peer
        refusal = "shutting down" if self._stopping else self._admit(runner, peer)
        if refusal is None:
            self._all_closed = anyio.Event() if len(self._sessions) == 1 else self._all_closed
            group.start_soon(self._session, runner)
        elif self._refusing < _REFUSALS:
            log.warning("refusing a connection from %s: %s", peer, refusal)
            self._refusing += 1
            group.start_soon(self._refuse, stream, implicit_tls)
        else:
            log.warning("closing a connection from %s: %s, and too many refusals under way", peer, refusal)
            await stream.aclose()

    async def _session(self, runner: SessionRunner) -> None:
        try:
            await runner.run()
        except Exception:
            log.exception("session %s: unexpected error", runner.session.id)
        finally:
            self._release(runner)
            if not self._sessions:
                self._all_closed.set()

    async def _refuse(self, stream: SocketStream, implicit_tls: bool) -> None:
        """Over a session limit: 421 4.7.0 (after the handshake on a TLS listener), then close."""
        try:
            with anyio.move_on_after(self.options.tls_handshake_timeout):
                try:
                    channel = await wrap_tls(stream, self.options) if implicit_tls else stream
                    await channel.send(too_many_sessions(self.options))
                except (ssl.SSLError, *GONE):
                    pass
            with anyio.move_on_after(1, shield=True):
                await stream.aclose()
        finally:
            self._refusing -= 1


def _host_port(listener: SocketListener) -> HostPort:
    address = listener.extra(SocketAttribute.local_address)
    assert isinstance(address, tuple)  # a TCP listener
    return (address[0], address[1])


async def serve(
    handler: AsyncHandler | Handler | None = None,
    options: ServerOptions | None = None,
    *,
    listen: Sequence[HostPort | str] = (("127.0.0.1", 8025),),
    tls_listen: Sequence[HostPort] = (),
    task_status: TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled: ``anyio.run(serve, MyHandler(), options)``."""
    await Server(handler, options, listen=listen, tls_listen=tls_listen).serve(task_status=task_status)
