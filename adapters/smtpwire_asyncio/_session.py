"""One SMTP session as an asyncio Protocol: callbacks in, the shared driver, writes out.

Nothing here runs per command but the driver itself: no coroutine, task or
timer is made for a command.  A hook that returns an awaitable becomes one
task, and reading from that client pauses until it answers; STARTTLS goes
through ``loop.start_tls`` and implicit TLS through
``loop.connect_accepted_socket`` (public APIs; uvloop's own TLS when uvloop
runs the loop).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from typing import TYPE_CHECKING, cast

from smtpwire_handler.kit import (
    CLOSED,
    FLUSH,
    NEED_DATA,
    START_TLS,
    HookWait,
    SessionDriver,
    tls_info,
    too_many_connections,
)

if TYPE_CHECKING:
    from ._server import Server

log = logging.getLogger("smtpwire.asyncio")


class AsyncioSession(asyncio.BufferedProtocol):
    """The transport's bytes go to the driver; what it queues goes back out.

    Bytes are received into one buffer the server's sessions share (the
    loop runs one callback at a time), not a fresh 256 KiB allocation per
    read: on CPython that allocation is an mmap, mremap and munmap per read
    once malloc's threshold sits below it.

    Reading pauses while a hook or the TLS upgrade runs and while the client
    does not take its replies (``pause_writing``), so neither input nor
    output grows without bound: the driver paces a large read itself, and
    at its ``FLUSH`` the session goes on only once the transport can take
    more.  One timer per session, re-armed by moving its deadline, covers
    the read, handshake and closing timeouts.
    """

    __slots__ = (
        "_deadline",
        "_ended",
        "_hook",
        "_implicit_tls",
        "_loop",
        "_reading",
        "_server",
        "_suspended",
        "_timer",
        "_timer_at",
        "_writing",
        "driver",
        "transport",
    )

    def __init__(self, server: Server, *, implicit_tls: bool = False) -> None:
        self._server = server
        self._implicit_tls = implicit_tls
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.driver: SessionDriver | None = None
        self._suspended = False  # a hook or the TLS upgrade runs: the driver waits for it
        self._reading = True  # the transport delivers bytes
        self._writing = True  # the client takes what we write (no pause_writing in force)
        self._ended = False  # the transport is closed or closing: nothing more goes out
        self._hook: asyncio.Future[object] | None = None
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when the timer fires

    # -- asyncio's callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses, only alike
        self.transport = transport
        server = self._server
        peer = transport.get_extra_info("peername")
        refusal = server.admit(self, peer)  # counted already if it came through an implicit-TLS handshake
        if refusal is not None:
            self._refuse(transport, peer, refusal)
            return
        self.driver = SessionDriver(
            server.handler,
            server.options,
            log=log,
            peer=peer,
            local=transport.get_extra_info("sockname"),
            implicit_tls=self._implicit_tls,
        )
        if self._implicit_tls:  # the server handed over a transport whose handshake is done
            assert self.driver.next_step() is START_TLS
            self.driver.tls_started(tls_info(transport.get_extra_info("ssl_object")))
        self._advance()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server.receive_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._server.receive_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        driver = self.driver
        if driver is None or driver.closed:
            return
        driver.receive(data)  # during the STARTTLS upgrade: what the TLS layer decrypted, kept for after it
        if not self._suspended:
            self._advance()

    def eof_received(self) -> bool | None:
        self.data_received(b"")
        if self.driver is not None and self.driver.session.tls is not None:
            return None  # TLS transports close on EOF whatever we answer
        return True  # half-open until the driver has said its last reply

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        driver = self.driver
        if driver is None:
            return
        if not driver.closed:
            driver.connection_lost(exc)
            if not self._suspended:
                self._advance()
        else:
            self._server.release(self)

    def pause_writing(self) -> None:
        self._writing = False
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing = True
        if self.driver is not None and not self._suspended and not self._ended:
            self._advance()  # after a FLUSH: the driver feeds on, or reading resumes

    # -- what the server asks ---------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        """Say 421 4.3.2 and close when no transaction is open (with ``force``: now)."""
        driver = self.driver
        if driver is not None and not driver.closed and driver.request_stop(force=force) and not self._suspended:
            self._advance()

    def abort(self) -> None:
        """Drop the connection now (the end of a shutdown's grace)."""
        if self._hook is not None:
            self._hook.cancel()
        if self.transport is not None:
            self.transport.abort()

    # -- the conversation -------------------------------------------------------------

    def _advance(self) -> None:
        """Run the driver until it waits for the client, a hook, the handshake, or the end."""
        driver = self.driver
        transport = self.transport
        assert driver is not None and transport is not None
        try:
            while True:
                step = driver.next_step()
                data = driver.data_to_send()
                if data and not self._ended:
                    transport.write(data)
                if step is FLUSH:
                    if self._writing:
                        continue
                    return  # reading is paused; resume_writing() goes on
                if step is NEED_DATA:
                    self._arm(driver.timeout)
                    if not self._reading and self._writing:
                        self._resume_reading()
                    return
                if step is CLOSED:
                    self._close()
                    return
                self._suspended = True
                self._deadline = math.inf
                self._pause_reading()
                if step is START_TLS:
                    self._loop.create_task(self._start_tls())
                    return
                assert isinstance(step, HookWait)
                self._hook = asyncio.ensure_future(step.awaitable)
                self._hook.add_done_callback(functools.partial(self._hook_done, step))
                return
        except Exception as error:
            self._ended = True
            self._suspended = False
            transport.abort()
            if driver.fail(error):  # the closing hooks still run
                self._advance()
            else:
                self._close()

    def _hook_done(self, step: HookWait, future: asyncio.Future[object]) -> None:
        driver = self.driver
        assert driver is not None
        self._hook = None
        self._suspended = False
        if future.cancelled():
            driver.reject(step, RuntimeError(f"the hook {step.hook} was cancelled"))
        elif (error := future.exception()) is not None:
            driver.reject(step, error if isinstance(error, Exception) else RuntimeError(repr(error)))
        else:
            driver.resolve(step, future.result())
        self._advance()

    async def _start_tls(self) -> None:
        driver, transport, context = self.driver, self.transport, self._server.options.tls_context
        assert driver is not None and transport is not None and context is not None
        try:
            upgraded = await self._loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=driver.timeout
            )
        except (OSError, RuntimeError) as error:  # ssl.SSLError, TimeoutError, ConnectionError are OSErrors
            driver.tls_failed(repr(error))
            self._ended = True
            transport.abort()
        else:
            if upgraded is None or self._ended:  # the peer left during the handshake
                driver.connection_lost()
            else:
                self.transport = upgraded
                driver.tls_started(tls_info(upgraded.get_extra_info("ssl_object")))
        self._suspended = False
        self._advance()

    def _close(self) -> None:
        """The driver is done (closing hooks ran): close after the last reply, bounded in time."""
        self._server.release(self)
        if self._ended:
            return
        self._ended = True
        assert self.transport is not None
        unsent = self.transport.get_write_buffer_size()
        self.transport.close()
        if unsent:  # a client that does not read cannot hold us
            self._arm(self._server.options.command_timeout)

    # -- flow control and the timer ------------------------------------------------------

    def _pause_reading(self) -> None:
        if self._reading and self.transport is not None and not self._ended:
            self._reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self._reading and self.transport is not None and not self._ended:
            self._reading = True
            self.transport.resume_reading()

    def _arm(self, timeout: float) -> None:
        self._deadline = self._loop.time() + timeout
        if self._timer is not None and self._timer_at > self._deadline:  # moved earlier (DATA's end): re-arm
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        if self._deadline == math.inf:  # a hook or handshake runs: the next read re-arms
            return
        if self._loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._timer_fired)
            return
        driver, transport = self.driver, self.transport
        assert driver is not None and transport is not None
        if self._ended or not self._writing:  # closing, or the client does not read: just drop it
            log.info("session %s: the client does not take its replies, dropping it", driver.session.id)
            self._ended = True
            transport.abort()
            return
        driver.timed_out()
        self._advance()

    def _refuse(self, transport: asyncio.Transport, peer: object, reason: str) -> None:
        """Over a session limit (or shutting down): 421 4.7.0, then close."""
        log.warning("refusing a connection from %s: %s", peer or "a Unix socket", reason)
        self._ended = True
        self._server.release(self)  # admitted before an implicit-TLS handshake, then shut down during it
        transport.write(too_many_connections(self._server.options))
        transport.close()
