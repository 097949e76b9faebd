"""The PROXY phase end to end: options, the shared driver, and every adapter over 127.0.0.1."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

import pytest

from smtpwire_handler import Envelope, Handler, ServerOptions, Session
from smtpwire_handler.kit import CLOSED, NEED_DATA
from tests import certs
from tests.servers import KINDS, Recorder, running
from tests.test_driver import GREETING, Clock, log, replies, run
from tests.test_interop import MESSAGE, ON_THE_WIRE, TIMEOUT, assert_closed, read_reply
from tests.test_proxy import v2

PROXY = ("127.0.0.1", 40000)  # the proxy's own address, as the driver is told it
V1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"
CLIENT, REACHED = ("192.0.2.1", 56324), ("198.51.100.2", 25)
TRUSTED = ServerOptions(proxy_protocol_from=["127.0.0.0/8"], proxy_timeout=5)


class Peers(Handler):
    """Records where each session says it comes from, and what it delivered."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.messages: list[tuple[Any, bytes]] = []
        self.disconnected = threading.Event()

    def connect(self, session: Session) -> None:
        header = session.proxy_header
        self.seen.append((session.peer, session.local, session.proxy, header and header.version))

    def message(self, session: Session, envelope: Envelope) -> None:
        self.messages.append((session.peer, bytes(envelope.content)))

    def disconnect(self, session: Session) -> None:
        self.disconnected.set()


def driver_for(handler: Handler, options: ServerOptions = TRUSTED, peer: Any = PROXY, **kwargs: Any) -> Any:
    from smtpwire_handler.kit import SessionDriver

    kwargs.setdefault("clock", Clock())
    return SessionDriver(handler, options, log=log, peer=peer, local=("127.0.0.1", 25), **kwargs)


# -- options -------------------------------------------------------------------------------


def test_trusted_networks_are_checked_and_matched() -> None:
    options = ServerOptions(proxy_protocol_from=["10.0.0.0/8", ipaddress.ip_network("2001:db8::/32"), "192.0.2.7"])
    assert [str(n) for n in options.proxy_protocol_from] == ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]
    assert options.trusts_proxy(("10.1.2.3", 5)) and options.trusts_proxy(("::ffff:10.1.2.3", 5, 0, 0))
    assert options.trusts_proxy(("2001:db8::1", 5, 0, 0)) and options.trusts_proxy(("192.0.2.7", 1))
    for peer in [("192.0.2.8", 1), ("11.0.0.1", 1), "/run/smtp.sock", None, ("not-an-address", 1), ()]:
        assert not options.trusts_proxy(peer)
    assert not ServerOptions().trusts_proxy(("10.1.2.3", 5))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("10.0.0.0/8", "must be a sequence of networks"),
        ([10], "10 is not a network such as"),
        (["10.0.0.1/8"], "'10.0.0.1/8' is not a network: 10.0.0.1/8 has host bits set"),
        (["proxy.example"], "'proxy.example' is not a network"),
    ],
)
def test_bad_trusted_networks_are_refused_clearly(value: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ServerOptions(proxy_protocol_from=value)


def test_proxy_timeout_is_checked() -> None:
    with pytest.raises(ValueError, match="proxy_timeout must be a number of seconds"):
        ServerOptions(proxy_timeout=0)


def test_implicit_tls_listeners_cannot_take_a_proxy_header() -> None:
    options = ServerOptions(tls_context=certs.server_context(), proxy_protocol_from=["127.0.0.1"])
    with pytest.raises(ValueError, match="proxy_protocol_from works on plain listeners only"):
        options.check_listeners([("127.0.0.1", 25)], [("127.0.0.1", 465)])
    options.check_listeners([("127.0.0.1", 25)], [])
    with pytest.raises(ValueError, match="cannot come through an implicit TLS listener"):
        driver_for(Handler(), options, implicit_tls=True)


# -- the driver ----------------------------------------------------------------------------


def test_the_header_comes_first_then_the_client_is_the_session_s_peer() -> None:
    handler = Peers()
    driver = driver_for(handler)
    assert run(driver) == (b"", NEED_DATA)  # no greeting before the header
    assert run(driver, V1[:10]) == (b"", NEED_DATA)
    sent, step = run(driver, V1[10:] + b"EHLO c.example\r\n")  # an early talker's bytes are kept, once
    assert sent.startswith(GREETING + b"250-localhost") and len(replies(sent)) == 2 and step is NEED_DATA
    assert handler.seen == [(CLIENT, REACHED, PROXY, 1)]
    assert driver.session.proxy_header.source == CLIENT
    assert "proxy=('127.0.0.1', 40000)" in repr(driver.session)


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", v2(command=0)])
def test_unknown_and_local_keep_the_connection_s_addresses(header: bytes) -> None:
    handler = Peers()
    driver = driver_for(handler)
    assert run(driver, header) == (GREETING, NEED_DATA)
    assert handler.seen == [(PROXY, ("127.0.0.1", 25), PROXY, (header[:5] == b"PROXY" and 1) or 2)]


def test_a_bad_header_closes_without_a_word_and_logs_the_proxy(caplog: pytest.LogCaptureFixture) -> None:
    handler = Peers()
    driver = driver_for(handler)
    with caplog.at_level(logging.INFO):
        assert run(driver, b"EHLO c.example\r\n") == (b"", CLOSED)
    assert handler.seen == [] and handler.disconnected.is_set()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"session {driver.session.id}: closing the connection from the proxy ('127.0.0.1', 40000):"
        " not a PROXY protocol header"
    ]


def test_the_phase_is_bounded_by_proxy_timeout() -> None:
    clock = Clock()
    driver = driver_for(Peers(), clock=clock)
    assert run(driver, V1[:20]) == (b"", NEED_DATA)
    clock.now += 4
    assert driver.timeout == pytest.approx(1)  # one deadline for the whole header, not per read
    clock.now += 1
    driver.timed_out()
    assert run(driver) == (b"", CLOSED)


def test_a_lost_connection_or_a_shutdown_ends_the_phase_silently() -> None:
    lost = driver_for(Peers())
    assert run(lost) == (b"", NEED_DATA)
    lost.connection_lost(ConnectionResetError())
    assert run(lost) == (b"", CLOSED)
    stopped = driver_for(Peers())
    assert run(stopped) == (b"", NEED_DATA)
    assert stopped.request_stop()
    assert run(stopped) == (b"", CLOSED)
    closed = driver_for(Peers())
    assert run(closed, b"PROXY TCP4") == (b"", NEED_DATA)
    assert run(closed, b"") == (b"", CLOSED)


def test_an_untrusted_peer_is_never_parsed_for_proxy() -> None:
    handler = Peers()
    driver = driver_for(handler, peer=("192.0.2.99", 1234))
    assert run(driver) == (GREETING, NEED_DATA)
    sent, _ = run(driver, V1)
    assert sent.startswith(b"500 5.5.1") or sent.startswith(b"500 5.5.2")
    assert handler.seen == [(("192.0.2.99", 1234), ("127.0.0.1", 25), None, None)]


# -- every adapter, over 127.0.0.1 -----------------------------------------------------------


def deliver(sock: socket.socket) -> None:
    """Greeted already: one message, then QUIT."""
    for line in (b"EHLO c.example", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>", b"DATA"):
        sock.sendall(line + b"\r\n")
        assert read_reply(sock)[:1] in (b"2", b"3")
    sock.sendall(ON_THE_WIRE)
    assert read_reply(sock).startswith(b"250 ")
    sock.sendall(b"QUIT\r\n")
    assert read_reply(sock).startswith(b"221 ")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("version", [1, 2])
def test_a_proxied_client_is_reported_as_itself(kind: str, version: int) -> None:
    handler = Peers()
    header = V1 if version == 1 else v2(("2001:db8::1", 56324), ("2001:db8::25", 25), tlvs=b"\x05\x00\x02id")
    with running(kind, handler, TRUSTED) as server, socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(header)
        assert read_reply(sock).startswith(b"220 ")
        deliver(sock)
    expected = CLIENT if version == 1 else ("2001:db8::1", 56324)
    assert [(peer, local, proxy[0], v) for peer, local, proxy, v in handler.seen] == [
        (expected, REACHED if version == 1 else ("2001:db8::25", 25), "127.0.0.1", version)
    ]
    assert handler.messages == [(expected, MESSAGE)]


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_behind_the_header_in_one_segment_are_kept(kind: str) -> None:
    handler = Peers()
    with running(kind, handler, TRUSTED) as server, socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(v2() + b"EHLO c.example\r\n")
        data = b""
        while data.count(b"\r\n250 ") + data.startswith(b"250 ") < 1:  # the greeting, then one EHLO reply
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"220 ") and data.count(b"250-") + data.count(b"250 ") >= 2
        sock.sendall(b"QUIT\r\n")
        assert read_reply(sock).startswith(b"221 ")
    assert [peer for peer, *_ in handler.seen] == [CLIENT]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("start", [b"EHLO c.example\r\n", b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 x\r\n", b""])
def test_no_valid_header_closes_without_a_greeting(kind: str, start: bytes) -> None:
    handler = Peers()
    options = ServerOptions(proxy_protocol_from=["127.0.0.1"], proxy_timeout=0.5)
    with running(kind, handler, options) as server, socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(start)  # nothing at all: the phase times out
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert time.monotonic() - started < TIMEOUT
        assert handler.disconnected.wait(TIMEOUT)
    assert handler.seen == []


@pytest.mark.parametrize("kind", KINDS)
def test_an_untrusted_client_s_proxy_line_is_just_an_unknown_command(kind: str) -> None:
    handler = Recorder()
    options = ServerOptions(proxy_protocol_from=["192.0.2.0/24"])
    with running(kind, handler, options) as server, socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        assert read_reply(sock).startswith(b"220 ")
        sock.sendall(V1)
        assert read_reply(sock).startswith(b"500 ")
        sock.sendall(b"QUIT\r\n")
        assert read_reply(sock).startswith(b"221 ")
        assert_closed(sock)


@pytest.mark.parametrize("kind", KINDS)
def test_the_per_client_limit_does_not_count_a_trusted_proxy(kind: str) -> None:
    """Sessions are counted when accepted, before any header: a proxy carries many clients, so it is not counted."""
    options = ServerOptions(proxy_protocol_from=["127.0.0.1"], max_sessions_per_client=1, client_limit_exceptions=())
    with running(kind, Peers(), options) as server, socket.create_connection(server.address, timeout=TIMEOUT) as first:
        first.sendall(V1)
        assert read_reply(first).startswith(b"220 ")
        with socket.create_connection(server.address, timeout=TIMEOUT) as second:
            second.sendall(b"PROXY TCP4 192.0.2.2 198.51.100.2 1 25\r\n")
            assert read_reply(second).startswith(b"220 ")
            second.sendall(b"QUIT\r\n")
            assert read_reply(second).startswith(b"221 ")
        first.sendall(b"QUIT\r\n")
        assert read_reply(first).startswith(b"221 ")
