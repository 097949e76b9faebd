"""RFC 3207 enforced by the core: injection, reset, advertising, failure."""

import pytest

import smtpwire
from smtpwire import ServerConfig, State
from tests.driver import STARTTLS_CONFIG, Driver


def tls_session() -> Driver:
    d = Driver(STARTTLS_CONFIG)
    d.say("EHLO x")
    return d


def test_advertised_only_while_available_and_inactive() -> None:
    assert "250 STARTTLS" in Driver(STARTTLS_CONFIG).say("EHLO x")
    assert "STARTTLS" not in Driver().say("EHLO x")
    assert "STARTTLS" not in Driver(STARTTLS_CONFIG, tls_active=True).say("EHLO x")


def test_starttls_queues_220_and_pauses() -> None:
    d = tls_session()
    assert d.say("STARTTLS") == "220 2.0.0 Ready to start TLS\r\n"
    assert d.events[-1] == smtpwire.StartTLSRequested()
    assert d.conn.state is State.TLS_HANDSHAKE
    assert d.conn.next_event() is smtpwire.PAUSED


@pytest.mark.parametrize("injected", [b"NOOP\r\n", b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n", b"\x16\x03\x01junk"])
def test_pipelined_plaintext_after_starttls_is_never_executed(injected: bytes) -> None:
    d = tls_session()
    assert d.feed(b"STARTTLS\r\n" + injected) == b"220 2.0.0 Ready to start TLS\r\n"
    d.conn.receive_data(b"NOOP\r\n")  # arrives before the handshake finished: dropped too
    d.conn.tls_established()
    assert d.feed(b"EHLO y\r\n").startswith(b"250-mx.test\r\n250-PIPELINING")
    assert not any(isinstance(e, (smtpwire.Noop, smtpwire.MailFrom)) for e in d.events)


def test_session_is_reset_after_the_handshake() -> None:
    d = tls_session()
    d.say("STARTTLS")
    d.conn.tls_established()
    assert d.conn.tls_active
    assert d.conn.helo_name is None and not d.conn.esmtp and d.conn.transaction is None
    assert d.conn.state is State.GREETED
    assert d.say("MAIL FROM:<a@b>") == "503 5.5.1 Send HELO/EHLO first\r\n"
    reply = d.say("EHLO y")
    assert "STARTTLS" not in reply
    assert d.say("STARTTLS") == "503 5.5.1 TLS already active\r\n"


def test_starttls_with_argument() -> None:
    assert tls_session().say("STARTTLS now") == "501 5.5.4 Syntax: STARTTLS\r\n"


def test_starttls_unavailable() -> None:
    d = Driver()
    d.say("EHLO x")
    assert d.say("STARTTLS") == "454 4.7.0 TLS not available\r\n"
    assert d.conn.state is State.READY


@pytest.mark.parametrize(
    ("commands", "reply"),
    [
        ([], "503 5.5.1 Send EHLO first"),
        (["EHLO x", "MAIL FROM:<a@b>"], "503 5.5.1 Transaction in progress"),
        (["EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>"], "503 5.5.1 Transaction in progress"),
    ],
)
def test_starttls_order(commands: list[str], reply: str) -> None:
    assert Driver(STARTTLS_CONFIG).say(*commands, "STARTTLS").splitlines()[-1] == reply


def test_handshake_failure_closes() -> None:
    d = tls_session()
    d.say("STARTTLS")
    d.conn.tls_failed()
    assert d.conn.state is State.CLOSED
    assert isinstance(d.conn.next_event(), smtpwire.ConnectionClosed)


@pytest.mark.parametrize("call", ["tls_established", "tls_failed"])
def test_tls_calls_outside_a_handshake_are_misuse(call: str) -> None:
    with pytest.raises(smtpwire.LocalProtocolError, match="no TLS handshake is due"):
        getattr(Driver(STARTTLS_CONFIG).conn, call)()


def test_require_tls_is_lifted_by_starttls() -> None:
    config = ServerConfig(require_tls=True, extensions=STARTTLS_CONFIG.extensions)
    d = Driver(config)
    assert d.codes("EHLO x", "MAIL FROM:<a@b>", "STARTTLS") == [250, 530, 220]
    d.conn.tls_established()
    assert d.codes("EHLO x", "MAIL FROM:<a@b>") == [250, 250]


def test_extensions_registered_after_tls_are_advertised() -> None:
    class Auth(smtpwire.Extension):
        keyword = "AUTH"

        def ehlo_line(self, conn: smtpwire.ServerConnection) -> str:
            return "AUTH PLAIN"

    d = tls_session()
    d.say("STARTTLS")
    d.conn.tls_established()
    d.conn.extensions.add(Auth())
    assert d.say("EHLO y").splitlines()[-1] == "250 AUTH PLAIN"
