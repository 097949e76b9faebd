"""The asyncio Protocol adapter over real sockets, on the stdlib loop and on uvloop.

The server runs in the test's own loop (``asyncio.Runner`` with the adapter's
``loop_factory``), its clients are asyncio streams on 127.0.0.1, and every
test is bounded by ``TIMEOUT`` as a whole and per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import smtpwire_asyncio
from smtpwire import Reply
from smtpwire_asyncio import AsyncHandler, AsyncioSession, Envelope, Server, ServerOptions, Session
from smtpwire_handler import Params
from tests import certs
from tests.test_interop import MESSAGE, ON_THE_WIRE

TIMEOUT = 10
LOCALHOST = "127.0.0.1"
LOOPS = ["asyncio", "uvloop"]
TIMED_OUT = b"421 4.4.2 localhost Timeout, closing connection\r\n"
SHUTTING_DOWN = b"421 4.3.2 localhost Service shutting down\r\n"
TOO_MANY = b"421 4.7.0 localhost Too many connections, try again later\r\n"

pytestmark = pytest.mark.parametrize("loop", LOOPS)


def run(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main()`` on a fresh loop of the kind asked for, bounded by ``TIMEOUT``."""

    async def bounded() -> None:
        assert smtpwire_asyncio.loop_name(asyncio.get_running_loop()) == loop
        try:
            await asyncio.wait_for(main(), TIMEOUT)
        finally:
            await Client.close_all()

    with asyncio.Runner(loop_factory=smtpwire_asyncio.loop_factory(loop)) as runner:
        runner.run(bounded())


@contextlib.asynccontextmanager
async def serving(
    handler: AsyncHandler, options: ServerOptions | None = None, *, implicit_tls: bool = False
) -> AsyncIterator[Server]:
    """A started server on free ports of 127.0.0.1; dropped (``abort()``) at the end of the block."""
    server = Server(
        handler,
        options,
        listen=[(LOCALHOST, 0)],
        tls_listen=[(LOCALHOST, 0)] if implicit_tls else [],
    )
    await server.start()
    try:
        yield server
    finally:
        server.abort()


def the_session(server: Server) -> AsyncioSession:
    """The server's one session (the tests look at its transport and driver)."""
    (protocol,) = server._open_sessions()
    return protocol


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(TIMEOUT * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


class Client:
    """A bare SMTP client on asyncio streams: lines out, whole replies in."""

    opened: list[Client] = []  # closed at the end of each test's loop

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        Client.opened.append(self)

    @classmethod
    async def close_all(cls) -> None:
        clients, cls.opened = cls.opened, []
        for client in clients:
            client.close()
        for client in clients:
            with contextlib.suppress(OSError, ssl.SSLError):
                await asyncio.wait_for(client.writer.wait_closed(), TIMEOUT)

    @classmethod
    async def connect(
        cls, address: tuple[str, int], *, tls: ssl.SSLContext | None = None, greeting: bool = True
    ) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*address, ssl=tls, server_hostname="localhost" if tls else None), TIMEOUT
        )
        client = cls(reader, writer)
        if greeting:
            assert (await client.reply()).startswith(b"220 ")
        return client

    async def reply(self) -> bytes:
        """One whole reply, multi-line or not."""
        data = b""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
            assert line.endswith(b"\r\n"), f"closed after {data + line!r}"
            data += line
            if line[3:4] == b" ":
                return data

    async def command(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def start_message(self, mail_from: bytes = b"alice@example.org") -> None:
        """MAIL, RCPT and DATA, each accepted: the server now waits for the message."""
        for line in (b"MAIL FROM:<" + mail_from + b">", b"RCPT TO:<bob@example.net>"):
            assert (await self.command(line)).startswith(b"250 ")
        assert (await self.command(b"DATA")).startswith(b"354 ")

    async def send_message(self, mail_from: bytes = b"alice@example.org") -> bytes:
        await self.start_message(mail_from)
        self.writer.write(ON_THE_WIRE)
        return await self.reply()

    async def assert_closed(self) -> None:
        """The server closes the connection: EOF (or a reset) after nothing more than what it said."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        except (ConnectionResetError, ssl.SSLError):
            return
        assert rest == b""

    async def nothing_yet(self) -> None:
        """Nothing arrives for a moment (the server is not answering)."""
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.reader.read(1), 0.2)

    def close(self) -> None:
        self.writer.transport.abort()


class Gate(AsyncHandler):
    """``mail_from`` for slow@ waits until the test opens the gate; everything is recorded."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls: list[str] = []
        self.messages: list[tuple[str, bytes]] = []

    async def mail_from(self, session: Session, address: str, params: Params) -> Reply | None:
        if address == "slow@example.org":
            self.entered.set()
            await self.gate.wait()
        self.calls.append(f"mail_from {address}")
        return None

    def rcpt_to(self, session: Session, address: str, params: Params) -> None:
        self.calls.append(f"rcpt_to {address}")

    def message(self, session: Session, envelope: Envelope) -> None:
        self.messages.append((envelope.mail_from, bytes(envelope.content)))

    def message_aborted(self, session: Session, reply: Reply | None) -> None:
        self.calls.append("message_aborted")

    def disconnect(self, session: Session) -> None:
        self.calls.append("disconnect")


# -- hooks ------------------------------------------------------------------------------------


def test_a_waiting_hook_holds_only_its_own_session(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler) as server:
            slow = await Client.connect(server.addresses[0])
            assert (await slow.command(b"EHLO slow.example")).startswith(b"250-")
            slow.writer.write(b"MAIL FROM:<slow@example.org>\r\nRCPT TO:<bob@example.net>\r\nNOOP\r\n")
            await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
            (protocol,) = server._open_sessions()
            assert protocol.transport is not None and not protocol.transport.is_reading()  # paused for the hook

            fast = await Client.connect(server.addresses[0])
            assert (await fast.command(b"EHLO fast.example")).startswith(b"250-")
            assert await fast.send_message() == b"250 2.0.0 OK\r\n"
            assert (await fast.command(b"QUIT")).startswith(b"221 ")
            assert handler.messages == [("alice@example.org", MESSAGE)]

            await slow.nothing_yet()  # the pipelined commands wait for the hook
            assert handler.calls == ["mail_from alice@example.org", "rcpt_to bob@example.net", "disconnect"]
            handler.gate.set()
            replies = b""
            while replies.count(b"\r\n") < 3:
                replies += await slow.reply()
            assert replies == b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.0.0 OK\r\n"
            assert handler.calls[-2:] == ["mail_from slow@example.org", "rcpt_to bob@example.net"]
            assert (await slow.command(b"QUIT")).startswith(b"221 ")
            await slow.assert_closed()

    run(loop, main)


def test_abort_drops_connections_and_cancels_a_waiting_hook(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler) as server:
            idle = await Client.connect(server.addresses[0])
            waiting = await Client.connect(server.addresses[0])
            await waiting.command(b"EHLO c.example")
            waiting.writer.write(b"MAIL FROM:<slow@example.org>\r\n")
            await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
            server.abort()
            await idle.assert_closed()
            await waiting.assert_closed()
            await eventually(lambda: handler.calls.count("disconnect") == 2, "both sessions ended")
            assert "mail_from slow@example.org" not in handler.calls  # the hook was cancelled, not finished
            with pytest.raises(OSError):
                await Client.connect(server.addresses[0], greeting=False)

    run(loop, main)


# -- flow control and the timer -------------------------------------------------------------


def test_a_client_that_never_reads_holds_bounded_memory_and_is_dropped(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpwire.asyncio")
    handler = Gate()
    burst = b"NOOP\r\n" * (16 * 1024 * 1024 // 6)

    async def main() -> None:
        async with serving(handler, ServerOptions(command_timeout=0.5)) as server:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
            sock.setblocking(False)
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, server.addresses[0]), TIMEOUT)
            reader, writer = await asyncio.open_connection(sock=sock)
            Client(reader, writer)  # closed with the others
            transport = the_session(server).transport
            assert transport is not None
            # the kernel need not hold megabytes of replies before the adapter's own buffer shows
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            writer.write(burst)  # never drained, never read
            largest = 0
            paused = False
            unsent = len(burst)
            while server.sessions:  # until the server drops it
                largest = max(largest, transport.get_write_buffer_size())
                paused = paused or not transport.is_reading()
                if not writer.transport.is_closing():
                    unsent = writer.transport.get_write_buffer_size()
                await asyncio.sleep(0.005)
            assert paused
            assert 0 < largest < 1024 * 1024  # the replies the client would not take, at most
            assert unsent > len(burst) // 2  # the server stopped reading
            assert handler.calls == ["disconnect"]
            logged = [r.getMessage() for r in caplog.records if r.name == "smtpwire.asyncio"]
            assert any("does not take its replies, dropping it" in m for m in logged)
            assert not any("timed out" in m for m in logged)  # dropped, no 421 queued behind the unread replies
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                while True:  # what reached our small window, then the reset
                    assert await asyncio.wait_for(reader.read(65536), TIMEOUT)

    run(loop, main)


def test_an_idle_client_is_timed_out(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler, ServerOptions(command_timeout=0.5)) as server:
            client = await Client.connect(server.addresses[0])
            started = asyncio.get_running_loop().time()
            assert await client.reply() == TIMED_OUT
            assert asyncio.get_running_loop().time() - started > 0.3
            await client.assert_closed()
            await eventually(lambda: server.sessions == 0, "the session is released")
            assert handler.calls == ["disconnect"]

    run(loop, main)


class CountingLoop:
    """Stands in for a protocol's loop: counts the timers it asks for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timers = 0

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        self.timers += 1
        return self.loop.call_at(when, callback, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


def test_activity_re_arms_the_one_timer(loop: str) -> None:
    async def main() -> None:
        async with serving(Gate(), ServerOptions(command_timeout=0.4)) as server:
            client = await Client.connect(server.addresses[0])
            protocol = the_session(server)
            counting = CountingLoop(asyncio.get_running_loop())
            protocol._loop = counting  # type: ignore[assignment]
            clock = asyncio.get_running_loop().time
            end = clock() + 1.2
            noops = 0
            while clock() < end:  # three timeouts long, a command every 0.05 s
                assert await client.command(b"NOOP") == b"250 2.0.0 OK\r\n"
                noops += 1
                await asyncio.sleep(0.05)
            assert noops >= 10
            assert counting.timers <= noops / 3  # re-armed by moving its deadline, not a timer per command
            assert await client.reply() == TIMED_OUT  # idle at last
            await client.assert_closed()

    run(loop, main)


# -- TLS -------------------------------------------------------------------------------------


def tls_options(**kwargs: Any) -> ServerOptions:
    return ServerOptions(tls_context=certs.server_context(), **kwargs)


class MemoryBIOClient:
    """A TLS client over ssl.MemoryBIO on a plain stream, to put bytes on the wire exactly when we choose."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = certs.client_context().wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.plaintext = b""

    async def _receive(self) -> None:
        data = await asyncio.wait_for(self.client.reader.read(65536), TIMEOUT)
        assert data, "the server closed the connection"
        self.incoming.write(data)

    async def handshake_then(self, first: bytes) -> None:
        """Handshake; the moment it completes, write ``first`` and flush it with the client's last flight."""
        for _ in range(100):
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.client.writer.write(self.outgoing.read())
                await self._receive()
            else:
                self.tls.write(first)
                self.client.writer.write(self.outgoing.read())  # Finished and the command in one write
                return
        raise AssertionError("the handshake never completed")

    async def reply(self) -> bytes:
        for _ in range(100):
            while True:
                try:
                    self.plaintext += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
            lines = self.plaintext.split(b"\r\n")
            for index, line in enumerate(lines[:-1]):
                if line[3:4] == b" ":
                    reply = b"\r\n".join(lines[: index + 1]) + b"\r\n"
                    self.plaintext = self.plaintext[len(reply) :]
                    return reply
            await self._receive()
        raise AssertionError("no whole reply")


def test_a_command_in_the_same_flight_as_the_handshake_s_end_is_answered(loop: str) -> None:
    async def main() -> None:
        async with serving(Gate(), tls_options()) as server:
            client = await Client.connect(server.addresses[0])
            assert b"STARTTLS" in await client.command(b"EHLO c.example")
            assert await client.command(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
            tls = MemoryBIOClient(client)
            await tls.handshake_then(b"EHLO c.example\r\n")
            ehlo = await tls.reply()
            assert ehlo.startswith(b"250-localhost\r\n") and b"STARTTLS" not in ehlo
            assert the_session(server).driver.session.tls is not None  # type: ignore[union-attr]
            tls.tls.write(b"NOOP\r\n")
            client.writer.write(tls.outgoing.read())
            assert await tls.reply() == b"250 2.0.0 OK\r\n"
            client.close()

    run(loop, main)


def test_implicit_tls_with_a_command_in_the_handshake_s_last_flight(loop: str) -> None:
    async def main() -> None:
        async with serving(Gate(), tls_options(), implicit_tls=True) as server:
            tls = MemoryBIOClient(await Client.connect(server.tls_addresses[0], greeting=False))
            await tls.handshake_then(b"EHLO c.example\r\n")
            assert (await tls.reply()).startswith(b"220 localhost ")
            ehlo = await tls.reply()
            assert ehlo.startswith(b"250-localhost\r\n") and b"STARTTLS" not in ehlo
            tls.client.close()

    run(loop, main)


def test_a_failed_starttls_handshake_ends_only_that_session(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler, tls_options()) as server:
            client = await Client.connect(server.addresses[0])
            await client.command(b"EHLO c.example")
            assert await client.command(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
            client.writer.write(b"EHLO this is no ClientHello\r\n" * 10)
            await client.assert_closed()
            await eventually(lambda: server.sessions == 0, "the session is released")
            assert handler.calls == ["disconnect"]
            assert any("TLS handshake" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
            again = await Client.connect(server.addresses[0])
            assert (await again.command(b"QUIT")).startswith(b"221 ")

    run(loop, main)


def test_a_failed_implicit_tls_handshake_leaves_the_listener_serving(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler, tls_options(), implicit_tls=True) as server:
            garbage = await Client.connect(server.tls_addresses[0], greeting=False)
            garbage.writer.write(b"EHLO this is no ClientHello\r\n" * 10)
            await garbage.assert_closed()
            client = await Client.connect(server.tls_addresses[0], tls=certs.client_context())
            assert b"STARTTLS" not in await client.command(b"EHLO c.example")
            assert await client.send_message() == b"250 2.0.0 OK\r\n"
            assert handler.messages == [("alice@example.org", MESSAGE)]
            assert handler.calls.count("disconnect") == 0  # the failed handshake never became a session

    run(loop, main)


def test_starttls_with_a_stream_client(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler, tls_options()) as server:
            client = await Client.connect(server.addresses[0])
            await client.command(b"EHLO c.example")
            assert await client.command(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
            await asyncio.wait_for(
                client.writer.start_tls(certs.client_context(), server_hostname="localhost"), TIMEOUT
            )
            assert (await client.command(b"MAIL FROM:<alice@example.org>")).startswith(b"503 ")  # reset: EHLO again
            assert b"STARTTLS" not in await client.command(b"EHLO c.example")
            assert await client.send_message() == b"250 2.0.0 OK\r\n"
            assert handler.messages == [("alice@example.org", MESSAGE)]

    run(loop, main)


# -- the session limit -----------------------------------------------------------------------


def test_one_over_max_sessions_gets_421_and_the_listeners_go_on(loop: str) -> None:
    async def main() -> None:
        async with serving(Gate(), tls_options(max_sessions=1), implicit_tls=True) as server:
            first = await Client.connect(server.addresses[0])
            plain = await Client.connect(server.addresses[0], greeting=False)
            assert await plain.reply() == TOO_MANY
            await plain.assert_closed()
            implicit = await Client.connect(server.tls_addresses[0], tls=certs.client_context(), greeting=False)
            assert implicit.writer.get_extra_info("ssl_object") is not None  # the handshake came first
            assert await implicit.reply() == TOO_MANY
            await implicit.assert_closed()
            assert server.sessions == 1
            assert (await first.command(b"QUIT")).startswith(b"221 ")
            await first.assert_closed()
            await eventually(lambda: server.sessions == 0, "the place is freed")
            for address, tls in ((server.addresses[0], None), (server.tls_addresses[0], certs.client_context())):
                again = await Client.connect(address, tls=tls)  # served again: 220
                assert (await again.command(b"QUIT")).startswith(b"221 ")
                await again.assert_closed()
                await eventually(lambda: server.sessions == 0, "the place is freed")

    run(loop, main)


# -- shutdown --------------------------------------------------------------------------------


def test_graceful_shutdown_lets_a_transaction_finish(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler) as server:
            idle = await Client.connect(server.addresses[0])
            await idle.command(b"EHLO idle.example")
            busy = await Client.connect(server.addresses[0])
            await busy.command(b"EHLO busy.example")
            await busy.start_message()
            busy.writer.write(ON_THE_WIRE[:20])
            address = server.addresses[0]
            shutdown = asyncio.create_task(server.shutdown(TIMEOUT))
            assert await idle.reply() == SHUTTING_DOWN
            await idle.assert_closed()
            with pytest.raises(OSError):
                await Client.connect(address, greeting=False)  # no longer listening
            await busy.nothing_yet()
            assert not shutdown.done()
            busy.writer.write(ON_THE_WIRE[20:])
            assert await busy.reply() == b"250 2.0.0 OK\r\n"
            assert await busy.reply() == SHUTTING_DOWN
            await busy.assert_closed()
            await asyncio.wait_for(shutdown, TIMEOUT)  # long before the grace ends
            assert handler.messages == [("alice@example.org", MESSAGE)]
            assert handler.calls.count("disconnect") == 2

    run(loop, main)


def test_after_the_grace_an_open_transaction_is_told_421(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler) as server:
            busy = await Client.connect(server.addresses[0])
            await busy.command(b"EHLO busy.example")
            await busy.start_message()
            busy.writer.write(ON_THE_WIRE[:20])
            await server.shutdown(0.3)
            assert await busy.reply() == SHUTTING_DOWN
            await busy.assert_closed()
            assert handler.messages == []
            assert handler.calls[-2:] == ["message_aborted", "disconnect"]

    run(loop, main)


def test_shutdown_during_a_waiting_hook_waits_for_the_transaction_it_opens(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler) as server:
            client = await Client.connect(server.addresses[0])
            await client.command(b"EHLO c.example")
            client.writer.write(b"MAIL FROM:<slow@example.org>\r\n")
            await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
            shutdown = asyncio.create_task(server.shutdown(TIMEOUT))
            await client.nothing_yet()
            handler.gate.set()
            assert await client.reply() == b"250 2.1.0 OK\r\n"
            await client.nothing_yet()  # a transaction is open: it may finish
            assert await client.command(b"RSET") == b"250 2.0.0 OK\r\n"
            assert await client.reply() == SHUTTING_DOWN
            await client.assert_closed()
            await asyncio.wait_for(shutdown, TIMEOUT)

    run(loop, main)


# -- choosing the loop -----------------------------------------------------------------------


def test_loop_factory_and_loop_name(loop: str) -> None:
    with pytest.raises(ValueError, match="loop must be one of auto, asyncio, uvloop, not 'bogus'"):
        smtpwire_asyncio.loop_factory("bogus")
    made = smtpwire_asyncio.loop_factory(loop)()
    try:
        assert smtpwire_asyncio.loop_name(made) == loop
    finally:
        made.close()
    auto = smtpwire_asyncio.loop_factory("auto")()
    try:
        assert smtpwire_asyncio.loop_name(auto) == ("uvloop" if smtpwire_asyncio.uvloop_available() else "asyncio")
    finally:
        auto.close()
    assert smtpwire_asyncio.run(asyncio.sleep(0, "done"), loop=loop) == "done"


def test_the_command_timeout_applies_again_after_a_message(loop: str) -> None:
    async def main() -> None:
        async with serving(Gate(), ServerOptions(command_timeout=0.3, data_timeout=5)) as server:
            client = await Client.connect(server.addresses[0])
            await client.command(b"EHLO c.example")
            await client.start_message()
            client.writer.write(ON_THE_WIRE[:20])
            await asyncio.sleep(0.5)  # longer than a command may take: the timer now waits for the data timeout
            client.writer.write(ON_THE_WIRE[20:])
            assert await client.reply() == b"250 2.0.0 OK\r\n"
            clock = asyncio.get_running_loop().time
            started = clock()
            assert await client.reply() == TIMED_OUT
            assert clock() - started < 2.5  # the command timeout, not what was left of the data timeout
            await client.assert_closed()

    run(loop, main)


def test_a_hook_slower_than_the_command_timeout_is_not_the_client_s_fault(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler, ServerOptions(command_timeout=0.3)) as server:
            client = await Client.connect(server.addresses[0])
            await client.command(b"EHLO c.example")
            client.writer.write(b"MAIL FROM:<slow@example.org>\r\n")
            await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
            await asyncio.sleep(0.6)  # twice the command timeout, all of it in the hook
            handler.gate.set()
            assert await client.reply() == b"250 2.1.0 OK\r\n"
            assert await client.command(b"RCPT TO:<bob@example.net>") == b"250 2.1.5 OK\r\n"
            assert await client.reply() == TIMED_OUT  # the timer runs again once the hook answered
            await client.assert_closed()

    run(loop, main)


def test_a_half_closed_client_gets_its_replies_after_a_waiting_hook(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler) as server:
            client = await Client.connect(server.addresses[0])
            await client.command(b"EHLO c.example")
            client.writer.write(b"MAIL FROM:<slow@example.org>\r\nRCPT TO:<bob@example.net>\r\n")
            client.writer.write_eof()
            await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
            await client.nothing_yet()
            handler.gate.set()
            assert await client.reply() == b"250 2.1.0 OK\r\n"
            assert await client.reply() == b"250 2.1.5 OK\r\n"
            await client.assert_closed()
            await eventually(lambda: server.sessions == 0, "the session is released")
            assert handler.calls[-1] == "disconnect"

    run(loop, main)


def test_a_client_that_leaves_while_a_hook_waits(loop: str) -> None:
    handler = Gate()

    async def main() -> None:
        async with serving(handler) as server:
            client = await Client.connect(server.addresses[0])
            await client.command(b"EHLO c.example")
            client.writer.write(b"MAIL FROM:<slow@example.org>\r\n")
            await asyncio.wait_for(handler.entered.wait(), TIMEOUT)
            client.close()
            await asyncio.sleep(0.1)
            assert server.sessions == 1 and "disconnect" not in handler.calls  # the hook still runs
            handler.gate.set()
            await eventually(lambda: server.sessions == 0, "the session is released")
            assert handler.calls == ["mail_from slow@example.org", "disconnect"]
            again = await Client.connect(server.addresses[0])
            assert (await again.command(b"QUIT")).startswith(b"221 ")

    run(loop, main)
