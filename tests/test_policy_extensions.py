"""REQUIRETLS (RFC 8689) and LIMITS (RFC 9422) over the core."""

import pytest

import smtpwire
from tests.driver import Driver

CONFIG = smtpwire.ServerConfig(
    hostname="mx.test",
    extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.StartTLS(), smtpwire.RequireTls(), smtpwire.Limits()),
    max_recipients=2,
)
MAIL = "MAIL FROM:<a@example.org>"


def test_requiretls_is_offered_only_once_tls_is_active() -> None:
    d = Driver(CONFIG)
    plain = d.say("EHLO client.test")
    assert "REQUIRETLS" not in plain and "250-STARTTLS\r\n" in plain
    d.say("STARTTLS")
    d.conn.tls_established()
    assert d.say("EHLO client.test").endswith("250-REQUIRETLS\r\n250 LIMITS RCPTMAX=2\r\n")


def test_requiretls_before_tls_is_an_unsupported_parameter() -> None:
    d = Driver(CONFIG)
    d.say("EHLO client.test")
    assert d.say(f"{MAIL} REQUIRETLS") == "555 5.5.4 Unsupported parameter\r\n"
    assert d.conn.transaction is None


def test_requiretls_over_tls_is_recorded_in_the_transaction() -> None:
    d = Driver(CONFIG, tls_active=True)
    d.say("EHLO client.test")
    assert d.say(f"{MAIL} requiretls") == "250 2.1.0 OK\r\n"
    assert d.conn.transaction is not None and d.conn.transaction.mail_params == {"REQUIRETLS": None}


def test_requiretls_takes_no_value() -> None:
    d = Driver(CONFIG, tls_active=True)
    d.say("EHLO client.test")
    assert d.say(f"{MAIL} REQUIRETLS=YES") == "501 5.5.4 REQUIRETLS takes no value\r\n"


def test_requiretls_on_rcpt_is_unsupported() -> None:
    d = Driver(CONFIG, tls_active=True)
    d.say("EHLO client.test", MAIL)
    assert d.say("RCPT TO:<b@example.net> REQUIRETLS") == "555 5.5.4 Unsupported parameter\r\n"


def test_requiretls_refuses_a_plaintext_session_even_if_asked() -> None:
    """Whatever makes the core ask, the parameter is never taken without TLS (RFC 8689 4)."""
    conn = smtpwire.ServerConnection(CONFIG)
    reply = smtpwire.RequireTls().check_parameter(conn, "REQUIRETLS", None)
    assert reply == smtpwire.Reply(530, "Must issue a STARTTLS command first", (5, 7, 0))


@pytest.mark.parametrize("limit", [1, 100, 5000])
def test_limits_advertises_rcptmax_from_the_config(limit: int) -> None:
    config = smtpwire.ServerConfig(extensions=(smtpwire.Limits(),), max_recipients=limit)
    assert Driver(config).say("EHLO client.test").endswith(f"250 LIMITS RCPTMAX={limit}\r\n")


def test_rcptmax_is_kept() -> None:
    d = Driver(CONFIG)
    d.say("EHLO client.test", MAIL)
    replies = d.say("RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>", "RCPT TO:<d@example.net>")
    assert replies == "250 2.1.5 OK\r\n250 2.1.5 OK\r\n452 4.5.3 Too many recipients\r\n"


def test_limits_has_no_parameters() -> None:
    d = Driver(CONFIG)
    d.say("EHLO client.test")
    assert d.say(f"{MAIL} RCPTMAX=5") == "555 5.5.4 Unsupported parameter\r\n"
