"""require_tls (RFC 3207 4): before TLS only NOOP, EHLO (LHLO in LMTP), STARTTLS and QUIT are served."""

from __future__ import annotations

import pytest

import smtpwire
from smtpwire import ServerConfig, State, Verb
from tests.driver import Driver

HOST = "mx.test"
TLS_REQUIRED = "530 5.7.0 Must issue a STARTTLS command first\r\n"


class XStats(smtpwire.Extension):
    keyword = "XSTATS"
    verbs = (Verb("XSTATS", Verb.ANY_TIME, argument="none"),)


EXTENSIONS = (
    *smtpwire.STANDARD_EXTENSIONS,
    smtpwire.StartTLS(),
    smtpwire.Auth(smtpwire.KNOWN_MECHANISMS, require_tls=False),
    XStats(),
)


def config(**options: object) -> ServerConfig:
    return ServerConfig(hostname=HOST, extensions=EXTENSIONS, require_tls=True, **options)  # type: ignore[arg-type]


def greeted(*, tls_active: bool = False, **options: object) -> Driver:
    d = Driver(config(**options), tls_active=tls_active)
    d.say("LHLO client.test" if options.get("lmtp") else "EHLO client.test")
    d.events.clear()
    return d


@pytest.mark.parametrize(
    "command",
    [
        "VRFY bob",
        "HELP",
        "HELP MAIL",
        "AUTH PLAIN",
        "MAIL FROM:<a@example.org>",
        "XSTATS",
        "xstats",
        "DATA",
        "HELO client.test",
        "helo client.test",
        "RSET",
    ],
)
def test_commands_before_tls_get_530(command: str) -> None:
    d = greeted()
    assert d.say(command) == TLS_REQUIRED
    assert [type(e) for e in d.events] == [smtpwire.CommandRejected]
    assert d.conn.state is State.READY


def test_rcpt_before_tls_gets_530() -> None:
    d = greeted()
    assert d.say("RCPT TO:<b@example.net>") == TLS_REQUIRED


def test_bdat_before_tls_gets_530_and_its_chunk_is_discarded() -> None:
    d = greeted()
    assert d.feed(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n") == TLS_REQUIRED.encode() + b"250 2.0.0 OK\r\n"
    assert d.conn.state is State.READY


def test_unknown_verbs_stay_unknown() -> None:
    assert greeted().say("XNOTHING") == "500 5.5.2 Command unrecognized\r\n"


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("NOOP", "250 2.0.0 OK"),
        ("STARTTLS", "220 2.0.0 Ready to start TLS"),
        ("QUIT", "221 2.0.0 mx.test Service closing transmission channel"),
    ],
)
def test_what_may_be_said_before_tls(command: str, reply: str) -> None:
    assert greeted().say(command) == reply + "\r\n"


def test_helo_first_before_tls_gets_530_and_greets_nobody() -> None:
    d = Driver(config())
    assert d.say("HELO client.test") == TLS_REQUIRED
    assert d.say("EHLO client.test").startswith("250-mx.test\r\n")
    assert d.say("STARTTLS") == "220 2.0.0 Ready to start TLS\r\n"


def test_helo_and_rset_work_after_the_handshake() -> None:
    d = greeted()
    d.say("STARTTLS")
    d.conn.tls_established()
    assert d.codes("HELO client.test", "RSET") == [250, 250]


def test_ehlo_before_tls_offers_starttls() -> None:
    d = Driver(config())
    assert "250-STARTTLS\r\n" in d.say("EHLO client.test")


def test_lhlo_before_tls_in_lmtp() -> None:
    d = Driver(config(lmtp=True))
    assert d.say("LHLO client.test").startswith("250-mx.test\r\n")
    assert d.say("MAIL FROM:<a@example.org>") == TLS_REQUIRED


def test_after_the_handshake_everything_works() -> None:
    d = greeted()
    assert d.say("STARTTLS") == "220 2.0.0 Ready to start TLS\r\n"
    d.conn.tls_established()
    assert d.codes("EHLO client.test", "VRFY bob", "HELP", "XSTATS", "MAIL FROM:<a@example.org>") == [
        250,
        252,
        214,
        250,
        250,
    ]
    assert d.codes("RCPT TO:<b@example.net>") == [250]
    assert d.feed(b"BDAT 2 LAST\r\nhi") == b"250 2.0.0 OK\r\n"
    assert d.message_bytes() == b"hi"
    assert d.say("AUTH PLAIN AHRpbQB0YW5zdGFhZg==") == "235 2.7.0 Authentication successful\r\n"


def test_a_session_that_started_in_tls_needs_no_starttls() -> None:
    d = greeted(tls_active=True)
    assert d.codes("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA") == [250, 250, 354]


def test_without_require_tls_nothing_waits_for_tls() -> None:
    d = Driver(ServerConfig(hostname=HOST, extensions=EXTENSIONS))
    assert d.codes("EHLO client.test", "VRFY bob", "HELP", "XSTATS", "MAIL FROM:<a@example.org>") == [
        250,
        252,
        214,
        250,
        250,
    ]
