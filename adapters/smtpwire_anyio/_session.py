"""One SMTP session over an anyio byte stream: the core, the hooks, the TLS upgrade."""

from __future__ import annotations

import logging
import ssl

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

import smtpwire
from smtpwire_handler import AsyncHandler, ServerOptions, Session, SessionDriver, run_async_hook, tls_info

log = logging.getLogger("smtpwire.anyio")
transcript = logging.getLogger("smtpwire.transcript")

#: Peers that vanish or break the stream end the session like an orderly close.
GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_CLOSE_TIMEOUT = 5.0


class SessionRunner:
    """Runs one connection until it closes; ``stop()`` asks it to say 421 4.3.2 and close.

    The runner reads only when the core needs data, so after STARTTLS no byte
    of the client's handshake is ever read as plaintext.
    """

    def __init__(
        self, stream: ByteStream, handler: AsyncHandler, options: ServerOptions, *, implicit_tls: bool = False
    ) -> None:
        self.stream: ByteStream = stream
        self.handler = handler
        self.options = options
        self.implicit_tls = implicit_tls
        self.conn = options.new_connection(implicit_tls=implicit_tls)
        self.session = Session(
            self.conn,
            peer=stream.extra(SocketAttribute.remote_address, None),
            local=stream.extra(SocketAttribute.local_address, None),
        )
        self.driver = SessionDriver(self.session, log)
        self._read_scope: anyio.CancelScope | None = None

    def stop(self, *, force: bool = False) -> None:
        """Close at the next moment the session is idle (or at once with ``force``)."""
        if self.driver.request_stop(force=force) and self._read_scope is not None:
            self._read_scope.cancel()

    async def run(self) -> None:
        log.info("session %s: connection from %s", self.session.id, self.session.peer)
        try:
            if not self.implicit_tls or await self._start_tls():
                await self._converse()
        finally:
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                for call in self.driver.closing_calls():
                    await run_async_hook(self.driver, self.handler, call)
                await self.stream.aclose()
            log.info("session %s: closed", self.session.id)

    async def _converse(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is smtpwire.NEED_DATA:
                if not await self._flush() or not await self._receive():
                    return
            elif isinstance(event, smtpwire.StartTLSRequested):
                if not await self._flush() or not await self._start_tls():
                    return
            elif isinstance(event, smtpwire.ConnectionClosed):
                await self._flush()
                return
            elif isinstance(event, smtpwire.Sentinel):  # PAUSED: the driver answers every decision
                raise RuntimeError("the connection waits for a decision nobody will make")
            else:
                await run_async_hook(self.driver, self.handler, self.driver.hook_for(event))

    async def _receive(self) -> bool:
        """Feed the core the next bytes; False when the stream is gone."""
        if self.driver.should_stop:
            self.conn.shutdown()
            return True
        timeout = self.options.read_timeout(self.conn)
        data: bytes | None = None
        with anyio.CancelScope() as self._read_scope:
            try:
                with anyio.fail_after(timeout):
                    data = await self.stream.receive()
            except TimeoutError:
                log.info("session %s: timed out after %s s", self.session.id, timeout)
                self.conn.timed_out()
                return True
            except anyio.EndOfStream:
                data = b""
            except GONE as error:
                log.info("session %s: connection lost: %r", self.session.id, error)
                return False
            finally:
                self._read_scope = None
        if data is None:  # stop() cancelled the wait: the next call says 421
            return True
        if data:
            transcript.debug("session %s <<< %s", self.session.id, self.driver.shown(data))
        self.conn.receive_data(data)
        return True

    async def _flush(self) -> bool:
        """Write what the core queued; False when the peer does not take it in time."""
        data = self.conn.data_to_send()
        if not data:
            return True
        transcript.debug("session %s >>> %r", self.session.id, data[:1024])
        try:
            with anyio.fail_after(self.options.command_timeout):
                await self.stream.send(data)
        except (TimeoutError, *GONE) as error:
            log.info("session %s: cannot send: %r", self.session.id, error)
            return False
        return True

    async def _start_tls(self) -> bool:
        """Upgrade the live stream; on failure tell the core and end only this session."""
        try:
            stream = await wrap_tls(self.stream, self.options)
        except (TimeoutError, ssl.SSLError, *GONE) as error:
            log.warning("session %s: TLS handshake with %s failed: %r", self.session.id, self.session.peer, error)
            if not self.implicit_tls:
                self.conn.tls_failed()
            return False
        self.stream = stream
        info = tls_info(stream.extra(TLSAttribute.ssl_object))
        log.info("session %s: TLS established: %s %s", self.session.id, info.version, info.cipher)
        await run_async_hook(self.driver, self.handler, self.driver.tls_started(info))
        return True


async def wrap_tls(stream: ByteStream, options: ServerOptions) -> TLSStream:
    """The server side of a TLS handshake on ``stream``, bounded by the handshake timeout."""
    assert options.tls_context is not None
    with anyio.fail_after(options.tls_handshake_timeout):
        return await TLSStream.wrap(
            stream, server_side=True, ssl_context=options.tls_context, standard_compatible=False
        )


async def handle_stream(
    stream: ByteStream,
    handler: AsyncHandler | None = None,
    options: ServerOptions | None = None,
    *,
    implicit_tls: bool = False,
) -> None:
    """Serve one SMTP session on a connected stream you own (it is closed at the end)."""
    options = options or ServerOptions()
    if implicit_tls and options.tls_context is None:
        raise ValueError("implicit TLS needs options.tls_context")
    await SessionRunner(stream, handler or AsyncHandler(), options, implicit_tls=implicit_tls).run()
