"""``AnyioSession`` served on the server kit: its listeners, admission and shutdown steps, on anyio."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import anyio
from anyio.abc import SocketListener, SocketStream, TaskGroup, TaskStatus

from smtpwire_handler import AsyncHandler, Handler, ServerOptions
from smtpwire_handler.kit import (
    ACCEPT_RETRY,
    AcceptErrors,
    HostPort,
    Listening,
    ServerBase,
    shutdown_plan,
    too_many_connections,
)

from ._session import GONE, AnyioSession, log, wrap_tls


class Server(ServerBase[AnyioSession]):
    """An SMTP server on one or more TCP listeners, plain (STARTTLS) and implicit TLS.

    ``await server.serve()`` runs until ``await server.shutdown()``; start it
    with ``await task_group.start(server.serve)`` to know the bound addresses.
    A failing accept() (out of descriptors, say) is retried after a pause and
    never ends the server; refusals over the session limits run in at most
    ``REFUSALS_AT_ONCE`` tasks at a time.  A ``listen`` entry that is a
    ``str`` is the path of a Unix socket (made with ``unix_mode``, a stale
    one replaced, removed at the end; see ``smtpwire_handler._unix``).
    """

    log = log

    def _prepare(self) -> None:
        self._accepting: anyio.CancelScope | None = None
        self._all_closed = anyio.Event()
        self._dropping = anyio.Event()  # the last step of the shutdown: the sessions' task group is cancelled
        self._accept_errors = AcceptErrors(log)

    async def serve(self, *, task_status: TaskStatus[Server] = anyio.TASK_STATUS_IGNORED) -> None:
        listening = self._listen_all()
        listeners: list[SocketListener] = []
        try:
            for each in listening:  # anyio's own listener, on our socket (its backlog is ours)
                listeners.append(await SocketListener.from_socket(each.sock))
            async with anyio.create_task_group() as sessions:
                with anyio.CancelScope() as self._accepting:
                    async with anyio.create_task_group() as accepting:
                        for listener, each in zip(listeners, listening, strict=True):
                            accepting.start_soon(self._accept, listener, each, sessions)
                        task_status.started(self)
                await self._close(listeners, listening)
                await self._dropping.wait()
                sessions.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close(listeners, listening)

    @staticmethod
    async def _close(listeners: list[SocketListener], listening: list[Listening]) -> None:
        """Stop listening, and remove the Unix sockets' files; again is harmless."""
        for listener in listeners:
            await listener.aclose()
        for each in listening:
            each.close()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; idle sessions get 421 4.3.2 now, the others when their transaction ends.

        After ``grace`` seconds (default ``options.shutdown_grace``) every
        remaining session is told 421 4.3.2 and closed; ``ABORT_AFTER``
        seconds later the sessions still open are cancelled (see
        ``smtpwire_handler.shutdown_plan``).
        """
        self._admission.close()
        if self._accepting is not None:
            self._accepting.cancel()
        for step, wait in shutdown_plan(self.options, grace):
            self._take(step)
            if self.sessions:
                with anyio.move_on_after(wait):
                    await self._all_closed.wait()

    def _drop_connections(self) -> None:
        self._dropping.set()

    async def _accept(self, listener: SocketListener, listening: Listening, group: TaskGroup) -> None:
        """Accept until cancelled; a session, or a refusal, starts for each connection."""
        while True:
            try:
                stream = await listener.accept()
            except (OSError, anyio.BrokenResourceError) as error:  # EMFILE and the like: the sessions go on
                cause = error if isinstance(error, OSError) else error.__cause__
                if not isinstance(cause, OSError):
                    raise
                self._accept_errors.failed(listening.name, cause)
                await anyio.sleep(ACCEPT_RETRY)
                continue
            self._accept_errors.accepted()
            await self._start(stream, listening.implicit_tls, group)

    async def _start(self, stream: SocketStream, implicit_tls: bool, group: TaskGroup) -> None:
        runner = AnyioSession(stream, self.handler, self.options, implicit_tls=implicit_tls)
        peer = runner.session.peer
        refusal = self._admit(runner, peer)
        if refusal is None:
            self._all_closed = anyio.Event() if self.sessions == 1 else self._all_closed
            group.start_soon(self._session, runner)
        elif self._admission.refusals.start():
            log.warning("refusing a connection from %s: %s", peer, refusal)
            group.start_soon(self._refuse, stream, implicit_tls)
        else:
            log.warning("closing a connection from %s: %s, and too many refusals under way", peer, refusal)
            await stream.aclose()

    async def _session(self, runner: AnyioSession) -> None:
        try:
            await runner.run()
        except Exception:
            log.exception("session %s: unexpected error", runner.session.id)
        finally:
            self._release(runner)
            if not self.sessions:
                self._all_closed.set()

    async def _refuse(self, stream: SocketStream, implicit_tls: bool) -> None:
        """Over a session limit: 421 4.7.0 (after the handshake on a TLS listener), then close."""
        try:
            with anyio.move_on_after(self.options.tls_handshake_timeout):
                try:
                    channel = await wrap_tls(stream, self.options) if implicit_tls else stream
                    await channel.send(too_many_connections(self.options))
                except (ssl.SSLError, *GONE):
                    pass
            with anyio.move_on_after(1, shield=True):
                await stream.aclose()
        finally:
            self._admission.refusals.done()


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
