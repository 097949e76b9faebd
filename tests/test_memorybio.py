"""The MemoryBIO adapter: MemoryBIOSession driven in memory by a client SSLObject, then its asyncio example."""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import smtpwire
from smtpwire_handler import ServerOptions, Session
from smtpwire_handler.kit import too_many_connections
from smtpwire_memorybio import MemoryBIOSession
from tests import certs
from tests.servers import EXAMPLES, Recorder, memorybio_example
from tests.test_interop import MESSAGE, ON_THE_WIRE, TIMEOUT, assert_closed, read_reply

LOGGER = "smtpwire.memorybio"
GREETING = b"220 localhost ESMTP smtpwire\r\n"
READY = b"220 2.0.0 Ready to start TLS\r\n"
BYE = b"221 2.0.0 localhost Service closing transmission channel\r\n"
TIMED_OUT = b"421 4.4.2 localhost Timeout, closing connection\r\n"
SHUTTING_DOWN = b"421 4.3.2 localhost Service shutting down\r\n"
TOO_MANY = b"421 4.7.0 localhost Too many connections, try again later\r\n"
LOCAL_ERROR = b"451 4.3.0 Requested action aborted: local error in processing\r\n"


def tls_options(**settings: Any) -> ServerOptions:
    return ServerOptions(tls_context=certs.server_context(), **settings)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


class Peer:
    """The client side of one MemoryBIOSession, in memory: plaintext until ``handshake()``, TLS records after."""

    def __init__(self, smtp: MemoryBIOSession, tls_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> None:
        self.smtp = smtp
        self.tls_version = tls_version
        self.tls: ssl.SSLObject | None = None
        self.established = False
        self.close_notify = False  # the server's close_notify arrived
        self.wire: list[bytes] = []  # every non-empty chunk the server returned, as it was on the wire
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._received = bytearray()

    def start(self) -> bytes:
        self.deliver(self.smtp.start())
        return self.take()

    def send(self, plaintext: bytes) -> bytes:
        """``plaintext`` in one ``receive()`` (encrypted once TLS is up); the replies it produced."""
        if self.tls is None:
            wire = plaintext
        else:
            self.tls.write(plaintext)
            wire = self._outgoing.read()
        self.deliver(self.smtp.receive(wire))
        return self.take()

    def send_raw(self, wire: bytes) -> bytes:
        """Bytes as they are, whatever the state; what the server answered, decrypted if TLS is up."""
        self.deliver(self.smtp.receive(wire))
        return self.take()

    def handshake(self, then: bytes = b"") -> bytes:
        """Start TLS and run the handshake to its end; returns the plaintext that came right behind it.

        ``then`` is sent in the same ``receive()`` as the client's last handshake flight (TLS 1.3).
        """
        context = certs.client_context()
        context.maximum_version = self.tls_version
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname="localhost")
        for _ in range(10):
            try:
                self.tls.do_handshake()
                self.established = True
            except ssl.SSLWantReadError:
                pass
            if self.established and then:
                self.tls.write(then)
            records = self._outgoing.read()
            if records:
                self.deliver(self.smtp.receive(records))
            if self.established:
                self.deliver(b"")  # with TLS 1.2, the server's last flight may carry data already
                return self.take()
        raise AssertionError("the handshake did not finish")

    def close_tls(self) -> bytes:
        """Send our close_notify; what the server answered."""
        assert self.tls is not None
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.unwrap()  # waits for the server's close_notify
        self.deliver(self.smtp.receive(self._outgoing.read()))
        return self.take()

    def deliver(self, wire: bytes) -> None:
        """Bytes from the server reach the client; decrypted ones are kept for ``take()``."""
        if wire:
            self.wire.append(wire)
        if self.tls is None:
            self._received += wire
            return
        self._incoming.write(wire)
        while self.established and not self.close_notify:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                chunk = b""
            self.close_notify = not chunk
            self._received += chunk

    def take(self) -> bytes:
        """The plaintext received since the last call."""
        out = bytes(self._received)
        self._received.clear()
        return out


def upgraded(recorder: Recorder, options: ServerOptions | None = None) -> tuple[MemoryBIOSession, Peer]:
    """A session that said EHLO and STARTTLS and finished the handshake."""
    smtp = MemoryBIOSession(recorder, options or tls_options())
    client = Peer(smtp)
    assert client.start() == GREETING
    assert b"STARTTLS" in client.send(b"EHLO client.example\r\n")
    assert client.send(b"STARTTLS\r\n") == READY
    assert client.handshake() == b""
    return smtp, client


def send_message(client: Peer) -> None:
    assert client.send(b"MAIL FROM:<alice@example.org>\r\n") == b"250 2.1.0 OK\r\n"
    assert client.send(b"RCPT TO:<bob@example.net>\r\n") == b"250 2.1.5 OK\r\n"
    assert client.send(b"DATA\r\n").startswith(b"354 ")
    assert client.send(ON_THE_WIRE) == b"250 2.0.0 OK\r\n"


# -- (a) sans-IO: no network ---------------------------------------------------------------


TLS_VERSIONS = pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=str)


@TLS_VERSIONS
def test_starttls_conversation_in_memory(version: ssl.TLSVersion) -> None:
    recorder = Recorder()
    options = tls_options(command_timeout=11, data_timeout=22, tls_handshake_timeout=33)
    smtp = MemoryBIOSession(recorder, options, peer=("192.0.2.1", 40000), local=("192.0.2.2", 25))
    client = Peer(smtp, version)
    assert client.start() == GREETING
    assert smtp.session.peer_host == "192.0.2.1" and smtp.session.local == ("192.0.2.2", 25)
    assert smtp.timeout == pytest.approx(11, abs=0.5)  # a deadline per command: what is left of it
    ehlo = client.send(b"EHLO client.example\r\n")
    assert ehlo.startswith(b"250-localhost\r\n") and ehlo.endswith(b"250 STARTTLS\r\n")
    assert client.send(b"STARTTLS\r\n") == READY
    assert client.wire[-1] == READY  # in plaintext, before any TLS record
    assert smtp.timeout == 33 and smtp.idle
    wire_before = len(client.wire)
    assert client.handshake() == b""
    assert smtp.session.tls is not None and smtp.session.tls.version == version.name.replace("_", ".")
    assert not smtp.session.implicit_tls
    assert "tls_started" in recorder.calls
    assert smtp.timeout == pytest.approx(11, abs=0.5)  # a deadline per command: what is left of it
    ehlo = client.send(b"EHLO client.example\r\n")
    assert ehlo.startswith(b"250-localhost\r\n") and b"STARTTLS" not in ehlo
    assert client.send(b"MAIL FROM:<alice@example.org>\r\n") == b"250 2.1.0 OK\r\n"
    assert not smtp.idle
    assert client.send(b"RCPT TO:<bob@example.net>\r\n") == b"250 2.1.5 OK\r\n"
    assert client.send(b"DATA\r\n").startswith(b"354 ")
    assert smtp.timeout == pytest.approx(22, abs=0.5)
    assert client.send(ON_THE_WIRE[:7]) == b""  # a message in pieces
    assert client.send(ON_THE_WIRE[7:]) == b"250 2.0.0 OK\r\n"
    assert smtp.idle
    (message,) = recorder.messages
    assert message.content == MESSAGE
    assert (message.mail_from, message.rcpt_tos, message.helo_name) == (
        "alice@example.org",
        ("bob@example.net",),
        "client.example",
    )
    assert message.tls == smtp.session.tls
    assert b"alice@example.org" not in b"".join(client.wire[wire_before:])  # every reply was encrypted
    assert client.send(b"QUIT\r\n") == BYE
    assert smtp.closed and client.close_notify
    assert recorder.calls.count("disconnect") == 1 and recorder.calls[-1] == "disconnect"


def test_the_session_starts_over_after_tls() -> None:
    smtp, client = upgraded(Recorder())
    assert smtp.session.helo_name is None
    assert client.send(b"MAIL FROM:<alice@example.org>\r\n") == b"503 5.5.1 Send HELO/EHLO first\r\n"
    assert client.send(b"EHLO after.example\r\n").startswith(b"250-localhost")
    assert smtp.session.helo_name == "after.example"
    assert client.send(b"STARTTLS\r\n") == b"503 5.5.1 TLS already active\r\n"
    send_message(client)


def after_ehlo(recorder: Recorder) -> tuple[MemoryBIOSession, Peer]:
    """A session that offers STARTTLS, greeted with EHLO."""
    smtp = MemoryBIOSession(recorder, tls_options())
    client = Peer(smtp)
    client.start()
    client.send(b"EHLO c.example\r\n")
    return smtp, client


def test_plaintext_pipelined_after_starttls_is_never_executed() -> None:
    recorder = Recorder()
    _smtp, client = after_ehlo(recorder)
    assert client.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<evil@example.org>\r\n") == READY
    assert client.handshake() == b""
    assert client.send(b"EHLO c.example\r\n").startswith(b"250-localhost\r\n")
    assert client.send(b"QUIT\r\n") == BYE  # not the NOOP's 250, not MAIL's
    assert "mail_from" not in recorder.calls


def test_a_client_hello_glued_to_starttls_is_dropped_too() -> None:
    """RFC 3207: what came with STARTTLS is gone, even a ClientHello; the handshake then never starts."""
    smtp, _client = after_ehlo(Recorder())
    hello_in, hello_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = certs.client_context().wrap_bio(hello_in, hello_out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    assert smtp.receive(b"STARTTLS\r\n" + hello_out.read()) == READY
    assert smtp.timeout == smtp.options.tls_handshake_timeout
    assert smtp.timed_out() == b"" and smtp.closed


def test_commands_right_behind_the_last_handshake_flight_are_served() -> None:
    """TLS 1.3: the client's Finished and its first command can arrive in one receive()."""
    _smtp, client = after_ehlo(Recorder())
    client.send(b"STARTTLS\r\n")
    assert client.handshake(then=b"EHLO c.example\r\n").startswith(b"250-localhost\r\n")
    implicit = Peer(MemoryBIOSession(Recorder(), tls_options(), implicit_tls=True))
    assert implicit.start() == b""
    replies = implicit.handshake(then=b"EHLO c.example\r\n")
    assert replies.startswith(GREETING + b"250-localhost\r\n")


def test_garbage_instead_of_a_client_hello_closes_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    smtp, client = after_ehlo(recorder)
    assert client.send(b"STARTTLS\r\n") == READY
    with caplog.at_level(logging.INFO, LOGGER):
        smtp.receive(b"this is not a TLS ClientHello\r\n" * 4)
    assert smtp.closed
    assert len(warnings(caplog)) == 1 and "TLS handshake" in warnings(caplog)[0]
    assert recorder.calls.count("disconnect") == 1
    assert smtp.receive(b"more garbage") == b"" and smtp.timed_out() == b"" and smtp.shutdown() == b""
    assert recorder.calls.count("disconnect") == 1


@TLS_VERSIONS
def test_implicit_tls_greets_after_the_handshake(version: ssl.TLSVersion) -> None:
    recorder = Recorder()
    smtp = MemoryBIOSession(recorder, tls_options(tls_handshake_timeout=7), implicit_tls=True)
    client = Peer(smtp, version)
    assert client.start() == b""
    assert smtp.timeout == 7
    assert client.handshake() == GREETING  # out of the receive() that finished the handshake
    assert smtp.session.implicit_tls and smtp.session.tls is not None
    assert "tls_started" not in recorder.calls
    ehlo = client.send(b"EHLO client.example\r\n")
    assert ehlo.startswith(b"250-localhost") and b"STARTTLS" not in ehlo
    send_message(client)
    assert recorder.messages[0].content == MESSAGE and recorder.messages[0].tls is not None
    assert client.send(b"QUIT\r\n") == BYE and smtp.closed and client.close_notify


def test_implicit_tls_garbage_and_silence(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, LOGGER):
        smtp = MemoryBIOSession(Recorder(), tls_options(), implicit_tls=True)
        smtp.start()
        smtp.receive(b"\x16\x03\x01\x00\x05hello")
        assert smtp.closed
        stalled = MemoryBIOSession(Recorder(), tls_options(), implicit_tls=True)
        stalled.start()
        assert stalled.timed_out() == b"" and stalled.closed
        gone = MemoryBIOSession(Recorder(), tls_options(), implicit_tls=True)
        gone.start()
        assert gone.receive(b"") == b"" and gone.closed
    assert len(warnings(caplog)) == 3


def test_a_hook_exception_gives_451_and_the_session_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    _, client = upgraded(recorder)
    client.send(b"EHLO client.example\r\n")
    recorder.fail_on.add("rcpt_to")
    assert client.send(b"MAIL FROM:<alice@example.org>\r\n") == b"250 2.1.0 OK\r\n"
    assert client.send(b"RCPT TO:<bob@example.net>\r\n") == LOCAL_ERROR
    recorder.fail_on.clear()
    assert client.send(b"RCPT TO:<bob@example.net>\r\n") == b"250 2.1.5 OK\r\n"
    assert client.send(b"DATA\r\n").startswith(b"354 ")
    assert client.send(ON_THE_WIRE) == b"250 2.0.0 OK\r\n"
    assert recorder.messages[0].content == MESSAGE
    assert any(r.name == LOGGER and "rcpt_to" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_large_read_of_pipelined_commands_is_answered_a_slice_at_a_time() -> None:
    """HELP answers about 13 times its size: the session holds the rest of a read until its replies are written."""
    smtp = MemoryBIOSession(Recorder(), ServerOptions())
    smtp.start()
    read = b"HELP\r\n" * 10_000  # 60,000 octets in one read
    first = smtp.receive(read)
    assert smtp.flushing and 0 < len(first) < 64 * 1024  # one 4 KiB slice's replies
    replies, resumes = first, 0
    while smtp.flushing:
        more = smtp.resume()
        assert len(more) < 64 * 1024
        replies += more
        resumes += 1
    assert resumes > 10 and replies.count(b"\r\n214 ") + replies.startswith(b"214 ") == 10_000
    assert smtp.resume() == b""  # nothing held: nothing to do
    assert smtp.receive(b"QUIT\r\n").startswith(b"221 ") and smtp.closed


def test_timed_out_gives_421_and_closes() -> None:
    recorder = Recorder()
    smtp = MemoryBIOSession(recorder)
    assert smtp.start() == GREETING
    assert smtp.timed_out() == TIMED_OUT
    assert smtp.closed and recorder.calls.count("disconnect") == 1


def test_timed_out_in_data_over_tls_is_encrypted_and_aborts_the_message() -> None:
    recorder = Recorder()
    smtp, client = upgraded(recorder)
    client.send(b"EHLO client.example\r\n")
    client.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
    client.send(b"Subject: never finished\r\n")
    client.deliver(smtp.timed_out())
    assert client.take() == TIMED_OUT and client.close_notify and smtp.closed
    assert recorder.messages == []
    assert recorder.calls[-2:] == ["message_aborted", "disconnect"]


def test_closing_hooks_run_exactly_once() -> None:
    recorder = Recorder()
    smtp = MemoryBIOSession(recorder)
    smtp.start()
    smtp.receive(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: x\r\n")
    assert smtp.receive(b"") == b""  # the peer left in the middle of the message
    assert smtp.closed
    for late in (smtp.receive(b"QUIT\r\n"), smtp.receive(b""), smtp.timed_out(), smtp.shutdown()):
        assert late == b""
    assert recorder.calls.count("message_aborted") == 1 and recorder.calls.count("disconnect") == 1
    assert recorder.calls[-1] == "disconnect"


def test_shutdown_gives_421_4_3_2() -> None:
    recorder = Recorder()
    smtp, client = upgraded(recorder)
    client.deliver(smtp.shutdown())
    assert client.take() == SHUTTING_DOWN and client.close_notify and smtp.closed
    assert recorder.calls.count("disconnect") == 1


def test_stalled_or_shut_down_handshake_just_closes(caplog: pytest.LogCaptureFixture) -> None:
    for stop, level in ((MemoryBIOSession.timed_out, logging.WARNING), (MemoryBIOSession.shutdown, logging.INFO)):
        caplog.clear()
        recorder = Recorder()
        smtp = MemoryBIOSession(recorder, tls_options())
        client = Peer(smtp)
        client.start()
        client.send(b"EHLO c.example\r\n")
        client.send(b"STARTTLS\r\n")
        with caplog.at_level(logging.INFO, LOGGER):
            assert stop(smtp) == b""  # nothing can be said in the middle of a handshake
        assert smtp.closed and recorder.calls.count("disconnect") == 1
        assert len(warnings(caplog)) == (level == logging.WARNING)


def test_close_notify_and_tcp_close_from_the_peer() -> None:
    recorder = Recorder()
    smtp, client = upgraded(recorder)
    assert client.close_tls() == b""
    assert smtp.closed and client.close_notify  # our close_notify answered theirs
    assert recorder.calls.count("disconnect") == 1
    recorder = Recorder()
    smtp, client = upgraded(recorder)
    client.deliver(smtp.receive(b""))  # TCP closed without close_notify
    assert smtp.closed and recorder.calls.count("disconnect") == 1


def test_a_corrupt_record_after_the_handshake_closes_without_raising() -> None:
    recorder = Recorder()
    smtp, _ = upgraded(recorder)
    smtp.receive(b"\x17\x03\x03\x00\x20" + bytes(range(32)))
    assert smtp.closed and recorder.calls.count("disconnect") == 1


def test_nothing_the_peer_sends_raises() -> None:
    chaos = random.Random(3207)
    for round_ in range(60):
        smtp, client = upgraded(Recorder()) if round_ % 3 == 0 else (MemoryBIOSession(Recorder(), tls_options()), None)
        if client is None:
            smtp.start()
            if round_ % 3 == 2:
                smtp.receive(b"EHLO c.example\r\nSTARTTLS\r\n")
        for _ in range(20):
            smtp.receive(bytes(chaos.getrandbits(8) for _ in range(chaos.randrange(1, 300))))
            if smtp.closed:
                break


class OffersTLSWithoutCertificate(Recorder):
    def connect(self, session: Session) -> None:
        session.extensions.add(smtpwire.StartTLS())


def test_starttls_offered_without_a_certificate_closes(caplog: pytest.LogCaptureFixture) -> None:
    config = smtpwire.ServerConfig(extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.StartTLS()))
    with pytest.raises(ValueError, match="the StartTLS extension needs a tls_context"):
        ServerOptions(config=config)
    recorder = OffersTLSWithoutCertificate()  # a handler can still do it at run time
    smtp = MemoryBIOSession(recorder, ServerOptions())
    client = Peer(smtp)
    client.start()
    client.send(b"EHLO c.example\r\n")
    assert client.send(b"STARTTLS\r\n") == READY
    assert smtp.closed and recorder.calls.count("disconnect") == 1
    assert any("tls_context" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_too_many_and_misuse() -> None:
    assert too_many_connections(ServerOptions()) == TOO_MANY
    with pytest.raises(ValueError, match=r"implicit TLS needs options\.tls_context"):
        MemoryBIOSession(Recorder(), implicit_tls=True)
    smtp = MemoryBIOSession(Recorder())
    with pytest.raises(RuntimeError, match="start"):
        smtp.receive(b"NOOP\r\n")
    smtp.start()
    with pytest.raises(RuntimeError, match="start"):
        smtp.start()


# -- (b) the asyncio example over real sockets -------------------------------------------------

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run one test's event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), TIMEOUT * 2)

    return asyncio.run(bounded())


def address_of(server: asyncio.Server) -> tuple[str, int]:
    host, port = server.sockets[0].getsockname()[:2]
    return host, port


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=TIMEOUT)
    assert read_reply(sock) == GREETING
    return sock


def command(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return read_reply(sock)


def test_example_serves_smtplib_plain_starttls_and_implicit_tls() -> None:
    recorder = Recorder()
    options = tls_options()

    def clients(plain: tuple[str, int], implicit: tuple[str, int]) -> None:
        with smtplib.SMTP(*plain, timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        with smtplib.SMTP(*plain, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            assert client.starttls(context=certs.client_context())[0] == 220
            assert b"STARTTLS" not in client.ehlo("client.example")[1].upper()
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        with smtplib.SMTP_SSL(*implicit, timeout=TIMEOUT, context=certs.client_context()) as client:
            assert b"STARTTLS" not in client.ehlo("client.example")[1].upper()
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)

    async def main() -> None:
        plain = await memorybio_example().start_server(recorder, options, "127.0.0.1", 0)
        implicit = await memorybio_example().start_server(recorder, options, "127.0.0.1", 0, tls=True)
        try:
            await asyncio.to_thread(clients, address_of(plain), address_of(implicit))
        finally:
            await memorybio_example().shutdown(plain, 1)
            await memorybio_example().shutdown(implicit, 1)

    run(main)
    assert [m.content for m in recorder.messages] == [MESSAGE] * 3
    assert [m.tls is not None for m in recorder.messages] == [False, True, True]
    assert recorder.calls.count("disconnect") == 3


def test_example_refuses_sessions_over_the_limit() -> None:
    def clients(address: tuple[str, int]) -> None:
        first, second = connect(address), connect(address)
        with socket.create_connection(address, timeout=TIMEOUT) as third:
            assert read_reply(third) == TOO_MANY
            assert_closed(third)
        assert command(first, b"QUIT").startswith(b"221 ")
        assert_closed(first)
        first.close()
        second.close()

    async def main() -> None:
        server = await memorybio_example().start_server(Recorder(), ServerOptions(max_sessions=2), "127.0.0.1", 0)
        try:
            await asyncio.to_thread(clients, address_of(server))
        finally:
            await memorybio_example().shutdown(server, 1)

    run(main)


def test_example_times_out_idle_clients() -> None:
    async def main() -> None:
        options = ServerOptions(command_timeout=0.3)
        server = await memorybio_example().start_server(Recorder(), options, "127.0.0.1", 0)
        try:
            with await asyncio.to_thread(connect, address_of(server)) as sock:
                assert await asyncio.to_thread(read_reply, sock) == TIMED_OUT
                await asyncio.to_thread(assert_closed, sock)
        finally:
            await memorybio_example().shutdown(server, 1)

    run(main)


def test_example_graceful_shutdown() -> None:
    recorder = Recorder()

    async def main() -> None:
        server = await memorybio_example().start_server(recorder, ServerOptions(), "127.0.0.1", 0)
        address = address_of(server)
        idle = await asyncio.to_thread(connect, address)
        busy = await asyncio.to_thread(connect, address)
        stuck = await asyncio.to_thread(connect, address)
        await asyncio.to_thread(command, idle, b"EHLO idle.example")
        for sock in (busy, stuck):
            for line in (b"EHLO c.example", b"MAIL FROM:<alice@example.org>", b"RCPT TO:<bob@example.net>", b"DATA"):
                await asyncio.to_thread(command, sock, line)
            await asyncio.to_thread(sock.sendall, ON_THE_WIRE[:20])
        stopping = asyncio.create_task(memorybio_example().shutdown(server, 2.0))
        assert await asyncio.to_thread(read_reply, idle) == SHUTTING_DOWN
        await asyncio.to_thread(assert_closed, idle)
        await asyncio.to_thread(busy.sendall, ON_THE_WIRE[20:])
        replies = await asyncio.to_thread(read_reply, busy)
        if replies.count(b"\r\n") < 2:
            replies += await asyncio.to_thread(read_reply, busy)
        assert replies == b"250 2.0.0 OK\r\n" + SHUTTING_DOWN  # the transaction finished first
        stuck.setblocking(False)
        with pytest.raises(BlockingIOError):
            stuck.recv(1)  # the grace period is not over: only sessions that became idle were closed
        stuck.settimeout(TIMEOUT)
        assert await asyncio.to_thread(read_reply, stuck) == SHUTTING_DOWN  # after the grace period
        await stopping
        with pytest.raises(OSError):
            await asyncio.to_thread(socket.create_connection, address, TIMEOUT)
        for sock in (idle, busy, stuck):
            sock.close()

    run(main)
    assert [m.content for m in recorder.messages] == [MESSAGE]
    assert recorder.calls.count("message_aborted") == 1 and recorder.calls.count("disconnect") == 3


def test_example_runs_as_a_module(tmp_path: Any) -> None:
    pem = tmp_path / "server.pem"
    certs.server_certificate().private_key_and_cert_chain_pem.write_to_path(str(pem))
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "memorybio_asyncio.py"), "--port", "0", "--cert", str(pem)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    lines: queue.Queue[bytes] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None

    def read_lines() -> None:  # in a thread, so that every wait below has a timeout
        for line in iter(stdout.readline, b""):
            lines.put(line)

    reader = threading.Thread(target=read_lines)
    reader.start()
    try:
        found = re.search(rb"serving SMTP on \('127\.0\.0\.1', (\d+)\)", lines.get(timeout=TIMEOUT))
        assert found is not None
        with smtplib.SMTP("127.0.0.1", int(found.group(1)), timeout=TIMEOUT) as client:
            client.starttls(context=certs.client_context())
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        assert lines.get(timeout=TIMEOUT) == b"From alice@example.org to bob@example.net via 127.0.0.1:\n"
        assert b"Subject: interop" in lines.get(timeout=TIMEOUT) + lines.get(timeout=TIMEOUT) + lines.get(
            timeout=TIMEOUT
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        process.kill()
        process.wait(timeout=TIMEOUT)
        reader.join(timeout=TIMEOUT)
