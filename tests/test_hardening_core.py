"""Issue 11, core: what reaches header fields and logs, atomic answers, clear errors for misuse.

- RFC 5321 4.5.3.1.1-3 limits on MAIL/RCPT paths; no controls, line
  separators or bidi controls in any command; HELO/EHLO take a domain or an
  address literal (RFC 5321 4.1.1.1), nothing else.
- ``send()``/``accept()`` that raise (a broken extension's EHLO line) leave
  the decision pending, so the adapter's fallback answer still works.
- Wrong types given to the core raise ``LocalProtocolError`` saying what was
  expected, like ``send()`` always did.
"""

from __future__ import annotations

import logging
import smtplib

import pytest

import smtpwire
from smtpwire import LocalProtocolError, Reply, ServerConfig, State
from smtpwire_handler import Handler, ServerOptions, Session
from smtpwire_handler.kit import NEED_DATA, SessionDriver
from tests.driver import Driver

EHLO_SYNTAX = "501 5.5.4 Syntax: EHLO domain or [address literal]\r\n"
HELO_SYNTAX = "501 5.5.4 Syntax: HELO domain or [address literal]\r\n"
BAD_CHARACTERS = "500 5.5.2 Invalid characters in command\r\n"
LONG_NAME = ".".join(["h" * 63] * 4)  # 255 octets, RFC 5321 4.5.3.1.2's longest domain

# -- HELO/EHLO: a domain or an address literal ------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "[1.2.3.4])(by.trusted.example",  # issue 11: a forged "by" clause in Received:
        "host.example (forged comment)",
        "a_b.example",
        "host.example.",
        ".example",
        "a..b",
        "-a.example",
        "a-.example",
        "[300.1.1.1]",
        "[1.2.3]",
        "[IPv6:zz::1]",
        "[IPv6:fe80::1%eth0]",
        "[1.2.3.4]x",
        "[192.0.2.12",  # found by the fuzzer: the literal check looked only between the brackets
        "[IPv6:::1",
        "[x:y",
        "[tag:a]b",
        "[tag:a\\b]",
        "[:x]",
        "[]",
        "a;b",
        'a"b',
        LONG_NAME + "h",
    ],
)
def test_hello_names_other_than_a_domain_or_address_literal_get_501(name: str) -> None:
    d = Driver()
    assert d.say(f"EHLO {name}") == EHLO_SYNTAX
    assert d.say(f"HELO {name}") == HELO_SYNTAX
    assert [type(e) for e in d.events] == [smtpwire.CommandRejected] * 2
    assert d.conn.helo_name is None and d.conn.state is State.GREETED


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        "myhost",  # socket.getfqdn() may give a bare host name
        "client.example",
        "MX-1.Example.ORG",
        "xn--bcher-kva.example",
        "123.example",
        "4",
        "[127.0.0.1]",  # smtplib's fallback when it has no FQDN
        "[IPv6:::1]",
        "[ipv6:2001:db8::ffff:192.0.2.1]",
        "[x-tag:any.printable(content)]",  # a General-address-literal stays one RFC 5322 domain-literal
        LONG_NAME,
    ],
)
def test_domains_and_address_literals_are_taken(name: str) -> None:
    d = Driver()
    assert d.say(f"EHLO {name}").startswith("250-mx.test\r\n")
    assert d.say(f"HELO {name}") == "250 mx.test\r\n"
    assert d.events == [smtpwire.Ehlo(name), smtpwire.Helo(name)]


def test_smtplib_greets_with_a_name_the_core_takes() -> None:
    """smtplib sends socket.getfqdn() when it holds a dot, else ``[its IPv4 address]``."""
    client = smtplib.SMTP()  # no host: nothing is connected, only the name is worked out
    name = client.local_hostname
    assert Driver().say(f"EHLO {name}").startswith("250-mx.test\r\n"), name
    assert Driver().say(f"HELO {name}") == "250 mx.test\r\n", name


# -- MAIL/RCPT: RFC 5321 4.5.3.1.1-3 ------------------------------------------------

LOCAL_PART_TOO_LONG = "501 {} Local part too long (at most 64 octets, RFC 5321 4.5.3.1.1)\r\n"
DOMAIN_TOO_LONG = "501 {} Domain too long (at most 255 octets, RFC 5321 4.5.3.1.2)\r\n"
PATH_TOO_LONG = "501 {} Path too long (at most 256 octets, RFC 5321 4.5.3.1.3)\r\n"


def test_the_issue_11_sender_of_1030_octets_is_refused() -> None:
    """It was accepted and became a Return-Path: line of 1052 octets (RFC 5322 allows 998)."""
    d = Driver(ServerConfig(hostname="mx.test", max_command_line=2048))
    d.say("EHLO c.example")
    assert d.say("MAIL FROM:<" + "a" * 1030 + "@example.org>") == LOCAL_PART_TOO_LONG.format("5.1.7")
    assert d.conn.state is State.READY and isinstance(d.events[-1], smtpwire.CommandRejected)


@pytest.mark.parametrize(
    ("path", "reply"),
    [
        ("<" + "l" * 64 + "@b.example>", None),
        ("<" + "l" * 65 + "@b.example>", LOCAL_PART_TOO_LONG),
        ('<"' + "l" * 62 + '"@b.example>', None),  # quotes count: the local part as sent
        ('<"' + "l" * 63 + '"@b.example>', LOCAL_PART_TOO_LONG),
        ("<a@" + "d" * 252 + ">", None),  # the longest path: 256 octets
        ("<ab@" + "d" * 252 + ">", PATH_TOO_LONG),
        ("<a@" + "d" * 256 + ">", DOMAIN_TOO_LONG),
        ("<a@" + "d.d" * 80 + ">", None),
        ("<@" + "r" * 250 + ":a@b.example>", PATH_TOO_LONG),  # a source route counts
        ("<@r.example:" + "l" * 65 + "@b.example>", LOCAL_PART_TOO_LONG),
    ],
)
def test_mail_and_rcpt_paths_are_bounded(path: str, reply: str | None) -> None:
    d = Driver()
    d.say("EHLO c.example")
    assert d.say(f"MAIL FROM:{path}") == (reply.format("5.1.7") if reply else "250 2.1.0 OK\r\n")
    d.say("RSET", "MAIL FROM:<>")
    assert d.say(f"RCPT TO:{path}") == (reply.format("5.1.3") if reply else "250 2.1.5 OK\r\n")
    accepted = [e for e in d.events if isinstance(e, (smtpwire.MailFrom, smtpwire.RcptTo)) and e.address]
    assert len(accepted) == (0 if reply else 2)


def test_utf8_addresses_are_measured_in_octets() -> None:
    d = Driver()
    d.say("EHLO c.example")
    assert d.say("MAIL FROM:<" + "ü" * 33 + "@b.example> SMTPUTF8") == LOCAL_PART_TOO_LONG.format("5.1.7")
    assert d.say("MAIL FROM:<" + "ü" * 32 + "@b.example> SMTPUTF8") == "250 2.1.0 OK\r\n"
    assert d.say("RCPT TO:<a@" + "ü" * 128 + ">") == DOMAIN_TOO_LONG.format("5.1.3")
    assert d.say("RCPT TO:<a@" + "ü" * 126 + ">") == "250 2.1.5 OK\r\n"  # 252 octets


# -- no controls, separators or bidi controls in any command ---------------------

UNSAFE = [
    "\x80",
    "\x85",  # NEL: str.splitlines() ends a log line here
    "\x9b",  # CSI: a terminal escape on its own
    "\x9f",
    "\u2028",
    "\u2029",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",  # RLO: "<\u202egpj.exe@x>" shows as "<exe.jpg@x>"
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200e",
    "\u200f",
    "\u061c",
]


@pytest.mark.parametrize("char", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
def test_smtputf8_addresses_with_controls_or_bidi_controls_are_refused(char: str) -> None:
    d = Driver()
    d.say("EHLO c.example")
    assert d.say(f"MAIL FROM:<j{char}rg@example.org> SMTPUTF8") == BAD_CHARACTERS
    assert d.say("MAIL FROM:<jörg@example.org> SMTPUTF8") == "250 2.1.0 OK\r\n"
    assert d.say(f"RCPT TO:<a{char}b@example.org>", f"RCPT TO:<ab@ex{char}ample.org>") == BAD_CHARACTERS * 2
    assert d.say(f'RCPT TO:<"a{char}"@example.org>', f"VRFY a{char}", f"HELP {char}") == BAD_CHARACTERS * 3
    assert d.say(f"MAIL FROM:<a@b> X-P=a{char}") == BAD_CHARACTERS
    assert [e.command for e in d.events if isinstance(e, smtpwire.CommandRejected)] == [
        "MAIL",
        "RCPT",
        "RCPT",
        "RCPT",
        "VRFY",
        "HELP",
        "MAIL",
    ]


def test_other_utf8_still_passes() -> None:
    """Joiners (U+200C, U+200D) and right-to-left letters are part of real addresses."""
    d = Driver()
    d.say("EHLO c.example", "MAIL FROM:<jörg@bücher.example> SMTPUTF8")
    for address in (
        "محمد@example.org",
        "אבי@דוגמה.ישראל",
        "\u0915\u094d\u200d\u0937@example.org",
        "δοκιμή@παράδειγμα.δοκιμή",
    ):
        assert d.say(f"RCPT TO:<{address}>") == "250 2.1.5 OK\r\n", address


# -- a call that raised changed nothing ---------------------------------------------


class BrokenEhloLine(smtpwire.Extension):
    keyword = "X-BROKEN"

    def __init__(self, line: object) -> None:
        self.line = line

    def ehlo_line(self, conn: smtpwire.ServerConnection) -> str:
        return self.line  # type: ignore[return-value]


@pytest.mark.parametrize(
    "line",
    ["X-BROKEN\r\n250 INJECTED", "", " X-BROKEN", "X-BROKEN  two spaces", "X-BRÖKEN", "X" * 497, b"X-BROKEN", ["X"]],
)
def test_an_invalid_ehlo_line_raises_and_leaves_ehlo_pending(line: object) -> None:
    conn = smtpwire.ServerConnection(ServerConfig(hostname="mx.test", extensions=(BrokenEhloLine(line),)))
    conn.next_event()
    conn.accept()
    conn.data_to_send()
    conn.receive_data(b"EHLO c.example\r\n")
    event = conn.next_event()
    for answer in (conn.accept, lambda: conn.send(Reply(250, "mx.test"))):
        with pytest.raises(LocalProtocolError, match=r"<BrokenEhloLine X-BROKEN>\.ehlo_line\(\) must give"):
            answer()
        assert conn.pending is event and conn.state is State.GREETED and conn.helo_name is None
        assert conn.data_to_send() == b""
        assert conn.next_event() is smtpwire.PAUSED
    conn.send(Reply(451, "local error", (4, 3, 0)))  # the adapter's fallback
    assert conn.data_to_send() == b"451 local error\r\n"
    conn.extensions.remove("X-BROKEN")
    conn.receive_data(b"EHLO c.example\r\n")
    assert conn.next_event() == smtpwire.Ehlo("c.example")
    conn.accept()
    assert conn.data_to_send() == b"250 mx.test\r\n"


def test_an_ehlo_line_that_raises_leaves_ehlo_pending() -> None:
    class Failing(smtpwire.Extension):
        keyword = "X-FAILING"

        def ehlo_line(self, conn: smtpwire.ServerConnection) -> str:
            raise RuntimeError("the extension's own bug")

    d = Driver(ServerConfig(hostname="mx.test", extensions=(Failing(),)))
    d.conn.receive_data(b"EHLO c.example\r\n")
    event = d.conn.next_event()
    with pytest.raises(RuntimeError):
        d.conn.accept()
    assert d.conn.pending is event and d.conn.data_to_send() == b""


class Greeted(Handler):
    def ehlo(self, session: Session, name: str) -> Reply | None:
        return None  # accept: the driver answers with accept() and falls back to 451 if that raises


def test_the_adapter_answers_451_when_an_extension_breaks_ehlo(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11: the driver's fallback send() raised too, and EHLO was never answered."""
    config = ServerConfig(extensions=(*smtpwire.STANDARD_EXTENSIONS, BrokenEhloLine("X-BROKEN\r\n250 INJECTED")))
    driver = SessionDriver(Greeted(), ServerOptions(config=config), log=logging.getLogger("test"), peer=("::1", 1))
    sent = b""
    for data in (None, b"EHLO c.example\r\n", b"HELO c.example\r\n"):
        if data is not None:
            driver.receive(data)
        assert driver.next_step() is NEED_DATA
        sent += driver.data_to_send()
    assert sent == (
        b"220 localhost ESMTP smtpwire\r\n451 Requested action aborted: local error in processing\r\n250 localhost\r\n"
    )
    assert "ehlo_line() must give" in caplog.text


# -- the application's mistakes get clear errors --------------------------------------


@pytest.mark.parametrize("data", [None, "", "EHLO x\r\n", 0, [b"x"], 3.5])
def test_receive_data_takes_only_bytes(data: object) -> None:
    d = Driver()
    with pytest.raises(LocalProtocolError, match=rf"receive_data\(\) takes bytes .*, not {type(data).__name__}$"):
        d.conn.receive_data(data)  # type: ignore[arg-type]
    assert d.conn.next_event() is smtpwire.NEED_DATA  # None and "" were never the end of the stream
    assert d.say("NOOP") == "250 2.0.0 OK\r\n"


@pytest.mark.parametrize("data", [bytearray(b"NOOP\r\n"), memoryview(b"NOOP\r\n")])
def test_receive_data_takes_bytearray_and_memoryview(data: bytearray | memoryview) -> None:
    d = Driver()
    d.conn.receive_data(data)
    assert d.pump() == [smtpwire.Noop()] and d.conn.data_to_send() == b"250 2.0.0 OK\r\n"
    d.conn.receive_data(bytearray())
    assert d.pump() == [smtpwire.ConnectionClosed()]


@pytest.mark.parametrize("config", ["x", {}, ServerOptions()])
def test_server_connection_takes_a_server_config(config: object) -> None:
    with pytest.raises(
        LocalProtocolError, match=f"ServerConnection\\(\\) takes a ServerConfig or None, not {type(config).__name__}"
    ):
        smtpwire.ServerConnection(config)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"ok", "reply text must be a str or a sequence of str, not bytes"),
        (bytearray(b"ok"), "reply text must be a str or a sequence of str, not bytearray"),
        (7, "reply text must be a str or a sequence of str, not int"),
        (None, "reply text must be a str or a sequence of str, not NoneType"),
        (["ok", b"no"], "reply lines must be str, not bytes"),
    ],
)
def test_reply_text_must_be_str(text: object, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=f"^{message}$"):
        Reply(250, text)  # type: ignore[arg-type]


@pytest.mark.parametrize("enhanced", [(2, 0), (2, 0, 0, 0), [2, 0, 0], ("2", "0", "0"), (2, True, 0), 200, "2.0.0"])
def test_enhanced_code_must_be_three_ints(enhanced: object) -> None:
    with pytest.raises(LocalProtocolError, match=r"^enhanced status code must be a tuple of three ints, not "):
        Reply(250, "x", enhanced)  # type: ignore[arg-type]


def test_replies_that_were_valid_stay_valid() -> None:
    assert Reply(250, ("a", "b"), (2, 0, 0)).to_bytes() == b"250-2.0.0 a\r\n250 2.0.0 b\r\n"
    assert Reply(250, ["x"]).lines == ("x",)
