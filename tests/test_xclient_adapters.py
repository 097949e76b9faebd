"""XCLIENT and XFORWARD through the driver, over real sockets with smtplib, and serve's flags.

Every client here is 127.0.0.1, so trust is varied by the networks given:
``127.0.0.0/8`` trusts the test's client, ``192.0.2.0/24`` does not.
"""

from __future__ import annotations

import dataclasses
import logging
import smtplib
import socket
import threading
from typing import BinaryIO

import pytest

import smtpwire
from smtpwire import ForwardedClient, XclientAttributes
from smtpwire_handler import Envelope, Handler, ServerOptions, Session, trace_headers
from smtpwire_handler._driver import _forwarded_address
from smtpwire_serve._settings import build_options
from tests.servers import KINDS, running
from tests.test_cli import settings_of

TIMEOUT = 10
TRUSTED = ("127.0.0.0/8",)
ELSEWHERE = ("192.0.2.0/24",)
MESSAGE = b"Subject: forwarded\r\n\r\nHello.\r\n"


@dataclasses.dataclass(frozen=True)
class Seen:
    """Who the session said the client was, when its message arrived."""

    trace: str
    peer: object
    local: object
    proxy: object
    helo_name: str | None
    client_name: str | None
    xclient_login: str | None
    authenticated: object
    forwarded: ForwardedClient | None


class Watching(Handler):
    """Stores nothing; records what each message's session reports."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.arrived = threading.Event()

    def message(self, session: Session, envelope: Envelope) -> None:
        trace = trace_headers(session, envelope).decode()
        self.seen.append(
            Seen(
                trace,
                session.peer,
                session.local,
                session.proxy,
                session.helo_name,
                session.client_name,
                session.xclient_login,
                session.authenticated,
                session.forwarded,
            )
        )
        self.arrived.set()


def options(xclient_from: tuple[str, ...] = (), xforward_from: tuple[str, ...] = ()) -> ServerOptions:
    return ServerOptions(xclient_from=xclient_from, xforward_from=xforward_from)


def send(client: smtplib.SMTP) -> None:
    client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)


@pytest.mark.parametrize("kind", KINDS)
def test_after_xclient_the_session_is_the_named_clients(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    handler = Watching()
    caplog.set_level(logging.INFO)
    with (
        running(kind, handler, options(xclient_from=TRUSTED)) as server,
        smtplib.SMTP(*server.address, "client.example", timeout=TIMEOUT) as client,
    ):
        client.ehlo("proxy.test")
        line = "XCLIENT ADDR NAME PORT PROTO HELO LOGIN DESTADDR DESTPORT"
        assert client.esmtp_features["xclient"] == line.removeprefix("XCLIENT ")
        argument = "ADDR=192.0.2.9 NAME=client.example PORT=4321 HELO=helo.example LOGIN=alice+40example.org"
        code, text = client.docmd("XCLIENT", argument + " DESTADDR=IPV6:2001:db8::25 DESTPORT=25")
        assert (code, text) == (220, b"localhost ESMTP smtpwire")
        client.ehlo_resp = None  # smtplib's own record: the server forgot the EHLO
        send(client)  # smtplib says EHLO again first
    seen = handler.seen[0]
    assert "Received: from client.example (client.example [192.0.2.9])" in seen.trace, seen.trace
    assert (seen.peer, seen.local) == (("192.0.2.9", 4321), ("2001:db8::25", 25))
    assert isinstance(seen.proxy, tuple) and seen.proxy[0] == "127.0.0.1"
    assert seen.helo_name == "client.example"  # the client's EHLO after XCLIENT, as in Postfix
    assert (seen.client_name, seen.xclient_login, seen.authenticated) == ("client.example", "alice@example.org", None)
    logged = caplog.text
    assert "client 192.0.2.9 (client.example) via XCLIENT from ('127.0.0.1'" in logged, logged
    assert "closed (1 message(s), peer 192.0.2.9)" in logged, logged


def test_a_second_xclient_adds_to_the_first_and_the_proxy_stays_the_connections_peer() -> None:
    handler = Watching()
    with (
        running("memorybio", handler, options(xclient_from=TRUSTED)) as server,
        smtplib.SMTP(*server.address, "client.example", timeout=TIMEOUT) as client,
    ):
        client.ehlo("proxy.test")
        assert client.docmd("XCLIENT", "ADDR=192.0.2.9 PORT=1")[0] == 220
        assert client.docmd("XCLIENT", "LOGIN=bob NAME=client.example")[0] == 220
        client.ehlo_resp = None
        send(client)
    seen = handler.seen[0]
    assert (seen.peer, seen.client_name, seen.xclient_login) == (("192.0.2.9", 1), "client.example", "bob")
    assert isinstance(seen.proxy, tuple) and seen.proxy[0] == "127.0.0.1"


def test_behind_a_proxy_header_trust_is_decided_for_the_client_it_names() -> None:
    handler = Watching()
    trusting = ServerOptions(proxy_protocol_from=TRUSTED, xclient_from=["192.0.2.0/24"])
    with running("blocking", handler, trusting) as server, socket.create_connection(server.address, TIMEOUT) as raw:
        local = raw.getsockname()
        raw.sendall(b"PROXY TCP4 192.0.2.50 198.51.100.1 5555 25\r\nEHLO proxy.test\r\n")
        replies = raw.makefile("rb")
        assert replies.readline() == b"220 localhost ESMTP smtpwire\r\n"
        assert b"XCLIENT ADDR NAME PORT PROTO HELO LOGIN DESTADDR DESTPORT" in reply(replies)
        raw.sendall(b"XCLIENT ADDR=192.0.2.9\r\nEHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
        raw.sendall(b"RCPT TO:<b@example.net>\r\nDATA\r\n")
        assert reply(replies) == b"220 localhost ESMTP smtpwire\r\n"
        assert [reply(replies)[:4] for _ in range(4)] == [b"250-", b"250 ", b"250 ", b"354 "]
        raw.sendall(MESSAGE + b".\r\nQUIT\r\n")
        assert reply(replies).startswith(b"250 ")
    seen = handler.seen[0]
    assert seen.peer == ("192.0.2.9", 5555) and seen.local == ("198.51.100.1", 25)
    assert seen.proxy == local  # the connection's own peer, as the PROXY header left it


def reply(replies: BinaryIO) -> bytes:
    """One whole reply (its lines up to the one without a hyphen), at most 20 lines."""
    lines = b""
    for _ in range(20):
        line = replies.readline()
        lines += line
        if line[3:4] != b"-":
            break
    return lines


def test_unknown_values_leave_the_client_unknown() -> None:
    handler = Watching()
    with (
        running("blocking", handler, options(xclient_from=TRUSTED)) as server,
        smtplib.SMTP(*server.address, timeout=TIMEOUT) as client,
    ):
        client.ehlo("proxy.test")
        assert client.docmd("XCLIENT", "HELO=helo.example NAME=[TEMPUNAVAIL] ADDR=[UNAVAILABLE]")[0] == 220
        assert client.docmd("MAIL", "FROM:<alice@example.org>")[0] == 503  # started over: no HELO yet
        client.ehlo("helo.example")
        send(client)
    seen = handler.seen[0]
    assert seen.peer is None and seen.client_name is None and seen.helo_name == "helo.example"
    assert "Received: from helo.example (unknown)" in seen.trace, seen.trace


def test_until_the_client_greets_again_its_helo_name_is_the_one_xclient_named() -> None:
    session = Session(smtpwire.ServerConnection())
    before = session.helo_name
    assert before is None
    session.xclient = XclientAttributes(helo="helo.example", name="[TEMPUNAVAIL]", login="[UNAVAILABLE]")
    assert (session.helo_name, session.client_name, session.xclient_login) == ("helo.example", None, None)


def test_an_untrusted_client_gets_550_and_stays_itself() -> None:
    handler = Watching()
    with (
        running("asyncio", handler, options(xclient_from=ELSEWHERE, xforward_from=ELSEWHERE)) as server,
        smtplib.SMTP(*server.address, timeout=TIMEOUT) as client,
    ):
        client.ehlo("sneaky.test")
        assert "xclient" not in client.esmtp_features and "xforward" not in client.esmtp_features
        refusal = (550, b"5.7.0 Error: insufficient authorization")
        assert client.docmd("XCLIENT", "ADDR=192.0.2.9 NAME=client.example") == refusal
        assert client.docmd("XFORWARD", "ADDR=192.0.2.9") == refusal
        send(client)
    seen = handler.seen[0]
    assert "Received: from sneaky.test ([127.0.0.1])" in seen.trace, seen.trace
    assert seen.peer[0] == "127.0.0.1" and seen.proxy is None and seen.forwarded is None  # type: ignore[index]


def test_not_configured_the_verbs_are_unknown() -> None:
    with running("blocking", Watching(), options()) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("c.test")
        assert client.docmd("XCLIENT", "ADDR=192.0.2.9")[0] == 500


def test_xforward_names_the_next_transactions_client_until_the_next_ehlo(caplog: pytest.LogCaptureFixture) -> None:
    handler = Watching()
    caplog.set_level(logging.INFO)
    with (
        running("anyio-asyncio", handler, options(xforward_from=TRUSTED)) as server,
        smtplib.SMTP(*server.address, timeout=TIMEOUT) as client,
    ):
        client.ehlo("filter.test")
        assert client.esmtp_features["xforward"] == "NAME ADDR PORT PROTO HELO IDENT SOURCE"
        assert client.docmd("XFORWARD", "NAME=client.example ADDR=192.0.2.9 PROTO=ESMTP") == (250, b"2.0.0 OK")
        assert client.docmd("XFORWARD", "HELO=client.example IDENT=Q1 SOURCE=REMOTE")[0] == 250
        assert client.docmd("XFORWARD", "PORT=99999")[0] == 501
        send(client)
        client.ehlo("filter.test")
        send(client)
    first, second = handler.seen
    assert first.forwarded == ForwardedClient(
        "client.example", "192.0.2.9", None, "ESMTP", "client.example", "Q1", "REMOTE"
    )
    assert "Received: from filter.test ([127.0.0.1])" in first.trace  # XFORWARD is for logs, not the header
    assert second.forwarded is None
    assert "XFORWARD HELO=client.example IDENT=Q1 SOURCE=REMOTE" in caplog.text


def test_the_forwarded_address_over_the_one_it_replaces() -> None:
    here = ("127.0.0.1", 40000)
    assert _forwarded_address(None, None, here) == here
    assert _forwarded_address("192.0.2.9", None, here) == ("192.0.2.9", 40000)
    assert _forwarded_address(None, "25", here) == ("127.0.0.1", 25)
    assert _forwarded_address("192.0.2.9", "[UNAVAILABLE]", "") == ("192.0.2.9", 0)
    assert _forwarded_address("[UNAVAILABLE]", "25", here) is None
    assert _forwarded_address(None, "25", None) is None


def test_serve_flags_reach_the_options_and_bad_networks_are_refused() -> None:
    options = build_options(
        settings_of("--xclient-from", "10.0.0.0/8", "--xclient-from", "::1", "--xforward-from", "127.0.0.1")
    )
    assert [str(n) for n in options.xclient_from] == ["10.0.0.0/8", "::1/128"]
    assert [str(n) for n in options.xforward_from] == ["127.0.0.1/32"]
    assert build_options(settings_of()).xclient_from == ()
    with pytest.raises(Exception, match="not an IP network"):
        settings_of("--xclient-from", "nowhere")
    with pytest.raises(ValueError, match="xforward_from: 'x' is not a network"):
        ServerOptions(xforward_from=["x"])
