"""One SMTP session over an anyio byte stream: the core, the hooks, the TLS upgrade."""

from __future__ import annotations

import logging
import math
import ssl

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from smtpwire_handler import AsyncHandler, Handler, ServerOptions
from smtpwire_handler.kit import CLOSED, NEED_DATA, START_TLS, HookWait, SessionDriver, tls_info

log = logging.getLogger("smtpwire.anyio")

#: Peers that vanish or break the stream end the session like an orderly close.
GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_CLOSE_TIMEOUT = 5.0
#: The deadline is moved only when it would fire early or more than a tenth late, so an
#: active session moves it once every twentieth of the timeout, not at every read.
_SLACK, _SLACK_SET = 1.1, 1.05


class AnyioSession:
    """Runs one connection until it closes; ``stop()`` asks it to say 421 4.3.2 and close.

    The runner reads only when the core needs data, so after STARTTLS no byte
    of the client's handshake is ever read as plaintext.  One cancel scope
    covers the session.  Its deadline bounds every read and write, is lifted
    while an async hook runs (a read timeout never cuts a hook short), and is
    moved only when it would fire early or more than a tenth late.  Every
    write is awaited before the driver goes on, so its ``FLUSH`` needs
    nothing more: a client that pipelines without reading holds one slice's
    replies in our memory, not a read's.  An unexpected error ends the
    conversation; the driver still runs the closing hooks.
    """

    def __init__(
        self,
        stream: ByteStream,
        handler: AsyncHandler | Handler,
        options: ServerOptions,
        *,
        implicit_tls: bool = False,
    ) -> None:
        self.stream: ByteStream = stream
        self.options = options
        self.driver = SessionDriver(
            handler,
            options,
            log=log,
            peer=stream.extra(SocketAttribute.remote_address, None),
            local=stream.extra(SocketAttribute.local_address, None),
            implicit_tls=implicit_tls,
        )
        self.session = self.driver.session
        self._scope: anyio.CancelScope | None = None
        self._waiting_for: str | None = None  # "read" or "send" while the deadline is armed
        self._closed = False  # the driver said CLOSED: the closing hooks ran

    def stop(self, *, force: bool = False) -> None:
        """Close at the next moment the session is idle (or at once with ``force``)."""
        if self.driver.request_stop(force=force) and self._waiting_for == "read" and self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        try:
            await self._run_until_closed()
        finally:
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                if not self._closed:  # cancelled from outside: the closing hooks still run
                    self.driver.connection_lost()
                    await self._run_until_closed()
                await self.stream.aclose()

    async def _run_until_closed(self) -> None:
        while not self._closed:
            try:
                with anyio.CancelScope() as self._scope:
                    await self._converse()
            except Exception as error:  # a bug: the driver ends the session; the closing hooks still run
                self._closed = not self.driver.fail(error)
            else:
                if self._scope.cancelled_caught:
                    self._interrupted()

    async def _converse(self) -> None:
        """Do what the driver says until the session is closed."""
        driver = self.driver
        while True:
            step = driver.next_step()
            if isinstance(step, HookWait):
                assert self._scope is not None
                self._scope.deadline = math.inf  # a read timeout never cuts a hook short
                try:
                    result = await step.awaitable
                except Exception as error:
                    driver.reject(step, error)
                else:
                    driver.resolve(step, result)
                continue
            await self._exchange(step is NEED_DATA)  # the write is awaited: a FLUSH is done with it
            if step is CLOSED:
                self._closed = True
                return
            if step is START_TLS:
                await self._start_tls()

    async def _exchange(self, read: bool) -> None:
        """Write what is queued, then (``read``) give the driver the client's next bytes, within the deadline."""
        driver, scope = self.driver, self._scope
        assert scope is not None
        data = driver.data_to_send()
        timeout = driver.timeout if read else self.options.command_timeout
        now = anyio.current_time()
        if not now + timeout <= scope.deadline <= now + timeout * _SLACK:  # moved only when it drifts
            scope.deadline = now + timeout * _SLACK_SET
        try:
            if data:
                self._waiting_for = "send"
                await self.stream.send(data)
            if read and not driver.should_stop:
                self._waiting_for = "read"
                driver.receive(await self.stream.receive())
        except anyio.EndOfStream:
            driver.receive(b"")
        except GONE as error:
            driver.connection_lost(error)
        self._waiting_for = None  # not reached when the deadline or stop() cancelled the wait

    def _interrupted(self) -> None:
        """The session's scope was cancelled: by ``stop()`` while reading, or by the deadline."""
        if self._waiting_for == "send":
            self.driver.connection_lost(TimeoutError("the client does not read its replies"))
        elif not self.driver.should_stop:  # stop(): the driver says 421 4.3.2 at the next step
            self.driver.timed_out()
        self._waiting_for = None

    async def _start_tls(self) -> None:
        """Upgrade the live stream; a failure ends only this session."""
        try:
            stream = await wrap_tls(self.stream, self.options)
        except (TimeoutError, ssl.SSLError, *GONE) as error:
            self.driver.tls_failed(repr(error))
            return
        self.stream = stream
        self.driver.tls_started(tls_info(stream.extra(TLSAttribute.ssl_object)))


async def wrap_tls(stream: ByteStream, options: ServerOptions) -> TLSStream:
    """The server side of a TLS handshake on ``stream``, bounded by the handshake timeout."""
    assert options.tls_context is not None
    with anyio.fail_after(options.tls_handshake_timeout):
        return await TLSStream.wrap(
            stream, server_side=True, ssl_context=options.tls_context, standard_compatible=False
        )


async def handle_stream(
    stream: ByteStream,
    handler: AsyncHandler | Handler | None = None,
    options: ServerOptions | None = None,
    *,
    implicit_tls: bool = False,
) -> None:
    """Serve one SMTP session on a connected stream you own (it is closed at the end)."""
    options = options or ServerOptions()
    if implicit_tls and options.tls_context is None:
        raise ValueError("implicit TLS needs options.tls_context")
    await AnyioSession(stream, handler or AsyncHandler(), options, implicit_tls=implicit_tls).run()
