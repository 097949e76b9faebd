"""AUTH (RFC 4954) through the connection: every reply, the SASL exchange on the wire, the policies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

import smtpwire
from smtpwire import Auth, Reply, State

from .driver import Driver

RFC7677_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
PENCIL = smtpwire.scram_credentials("pencil", salt=RFC7677_SALT)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def config(*extensions: smtpwire.Extension, **settings: object) -> smtpwire.ServerConfig:
    return smtpwire.ServerConfig(
        hostname="mx.test",
        extensions=(*smtpwire.STANDARD_EXTENSIONS, *(extensions or (Auth(),))),
        **settings,  # type: ignore[arg-type]
    )


def password_check(event: smtpwire.Decision) -> Reply | None:
    """Accept tim/tanstaaf, refuse anyone else with 535."""
    if isinstance(event, smtpwire.AuthCredentials) and (event.username, event.password) != ("tim", "tanstaaf"):
        return Reply(535, "Authentication credentials invalid", (5, 7, 8))
    return None


def tls_driver(*extensions: smtpwire.Extension, **settings: object) -> Driver:
    d = Driver(config(*extensions, **settings), answer=password_check, tls_active=True)
    d.say("EHLO client.test")
    return d


def keywords(ehlo_reply: str) -> list[str]:
    return [line[4:] for line in ehlo_reply.splitlines()[1:]]


def on_credentials(reply: Reply) -> Callable[[smtpwire.Decision], Reply | None]:
    return lambda event: reply if isinstance(event, smtpwire.AuthCredentials) else None


def events_of(d: Driver, kind: type) -> list[smtpwire.Event]:
    return [event for event in d.events if isinstance(event, kind)]


# --- when AUTH is offered -------------------------------------------------------


def test_not_offered_before_tls_and_refused_with_538() -> None:
    d = Driver(config(smtpwire.StartTLS(), Auth()))
    ehlo = d.say("EHLO client.test")
    assert keywords(ehlo)[-1] == "STARTTLS" and not any(k.startswith("AUTH") for k in keywords(ehlo))
    assert d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == (
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    )
    assert d.say("AUTH LOGIN") == "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    assert d.say("MAIL FROM:<a@b.test> AUTH=<>") == "555 5.5.4 Unsupported parameter\r\n"
    assert "AUTH" not in d.say("HELP")
    assert not events_of(d, smtpwire.AuthCredentials)


def test_offered_once_tls_is_active() -> None:
    d = Driver(config(smtpwire.StartTLS(), Auth()), tls_active=True)
    offered = keywords(d.say("EHLO client.test"))
    assert "AUTH SCRAM-SHA-256 PLAIN LOGIN" in offered and "STARTTLS" not in offered
    assert "AUTH" in d.say("HELP").split()


def test_offered_in_clear_only_when_asked() -> None:
    d = Driver(config(Auth(["plain"], require_tls=False)), answer=password_check)
    assert "AUTH PLAIN" in keywords(d.say("EHLO client.test"))
    assert d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == "235 2.7.0 Authentication successful\r\n"


def test_not_registered_is_not_implemented() -> None:
    d = Driver()
    d.say("EHLO client.test")
    assert d.say("AUTH PLAIN") == "502 5.5.1 Command not implemented\r\n"


def test_the_auth_extension_is_checked() -> None:
    for bad in ([], ["PLAIN", "plain"], ["DIGEST-MD5"], ["pla\u0131n"], [b"PLAIN"]):
        with pytest.raises(ValueError, match="mechanisms must be distinct names"):
            Auth(bad)  # type: ignore[arg-type]
    assert repr(Auth(["cram-md5", "PLAIN"])) == "<Auth CRAM-MD5 PLAIN require_tls=True>"
    assert Auth(name for name in ["LOGIN"]).mechanisms == ("LOGIN",)
    with pytest.raises(ValueError, match="max_auth_failures"):
        smtpwire.ServerConfig(max_auth_failures=0)


# --- PLAIN (RFC 4616) and LOGIN ------------------------------------------------


def test_plain_with_initial_response() -> None:
    d = tls_driver()
    assert d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == "235 2.7.0 Authentication successful\r\n"
    (credentials,) = events_of(d, smtpwire.AuthCredentials)
    assert credentials == smtpwire.AuthCredentials("PLAIN", "", "tim", "tanstaaf")
    assert "tanstaaf" not in repr(credentials)
    assert d.conn.authenticated == smtpwire.Authenticated("PLAIN", "", "tim")
    assert events_of(d, smtpwire.Authenticated) == [d.conn.authenticated]
    assert d.conn.state is State.READY
    assert d.say("MAIL FROM:<a@b.test>") == "250 2.1.0 OK\r\n"


def test_plain_with_an_empty_challenge_and_an_authzid() -> None:
    d = tls_driver()
    assert d.say("auth plain") == "334 \r\n"
    assert d.conn.state is State.AUTH
    assert d.say(b64("admin\0tim\0tanstaaf")) == "235 2.7.0 Authentication successful\r\n"
    assert d.conn.authenticated == smtpwire.Authenticated("PLAIN", "admin", "tim")


def test_plain_wrong_password_is_535() -> None:
    d = tls_driver()
    assert d.say("AUTH PLAIN " + b64("\0tim\0wrong")) == "535 5.7.8 Authentication credentials invalid\r\n"
    assert d.conn.authenticated is None and d.conn.state is State.READY
    assert events_of(d, smtpwire.Authenticated) == []


def test_application_reply_texts_go_out() -> None:
    d = Driver(config(), answer=on_credentials(Reply(454, "Try later", (4, 7, 0))), tls_active=True)
    d.say("EHLO client.test")
    assert d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == "454 4.7.0 Try later\r\n"
    d = Driver(config(), answer=on_credentials(Reply(235, "Welcome, tim", (2, 7, 0))), tls_active=True)
    d.say("EHLO client.test")
    assert d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == "235 2.7.0 Welcome, tim\r\n"
    assert d.conn.authenticated is not None


def test_login_asks_for_user_then_password() -> None:
    d = tls_driver()
    assert d.say("AUTH LOGIN") == "334 VXNlcm5hbWU6\r\n"
    assert d.say(b64("tim")) == "334 UGFzc3dvcmQ6\r\n"
    assert d.say(b64("tanstaaf")) == "235 2.7.0 Authentication successful\r\n"
    assert d.conn.authenticated == smtpwire.Authenticated("LOGIN", "", "tim")


def test_login_with_the_user_as_initial_response() -> None:
    d = tls_driver()
    assert d.say("AUTH LOGIN " + b64("tim")) == "334 UGFzc3dvcmQ6\r\n"
    assert d.say(b64("tanstaaf")) == "235 2.7.0 Authentication successful\r\n"


def test_a_pipelined_exchange_is_read_in_order() -> None:
    d = tls_driver()
    out = d.say("AUTH LOGIN", b64("tim"), b64("tanstaaf"), "NOOP")
    assert out == "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n250 2.0.0 OK\r\n"


# --- protocol errors -----------------------------------------------------------


def test_cancel_with_star_is_501_5_7_0() -> None:
    d = tls_driver()
    assert d.say("AUTH LOGIN") == "334 VXNlcm5hbWU6\r\n"
    assert d.say("*") == "501 5.7.0 Authentication cancelled\r\n"
    assert d.conn.state is State.READY
    assert d.say("NOOP") == "250 2.0.0 OK\r\n"


@pytest.mark.parametrize("bad", ["dGlt!", "dGl", "dGlt ZQ==", "="])
def test_invalid_base64_response_is_501_5_5_2(bad: str) -> None:
    d = tls_driver()
    d.say("AUTH LOGIN")
    assert d.say(bad) == "501 5.5.2 Malformed authentication response\r\n"
    assert d.conn.state is State.READY


@pytest.mark.parametrize("bad", ["dGlt!", "*", "dGl"])
def test_invalid_initial_response_is_501_5_5_2(bad: str) -> None:
    d = tls_driver()
    assert d.say("AUTH PLAIN " + bad) == "501 5.5.2 Malformed authentication response\r\n"


def test_empty_initial_response_is_equals_sign() -> None:
    d = tls_driver()
    assert d.say("AUTH PLAIN =") == "501 5.5.2 Malformed authentication response\r\n"  # PLAIN needs three fields
    assert d.say("AUTH SCRAM-SHA-256 =") == "501 5.5.2 Malformed authentication response\r\n"


def test_unknown_or_unoffered_mechanism_is_504() -> None:
    d = tls_driver()
    for name in ("DIGEST-MD5", "CRAM-MD5", "XOAUTH2", "\u0141OGIN"):
        assert d.say(f"AUTH {name}") == "504 5.5.4 Unrecognized authentication type\r\n"


@pytest.mark.parametrize("line", ["AUTH", "AUTH PLAIN a b", "AUTH PLAIN  abc"])
def test_syntax(line: str) -> None:
    d = tls_driver()
    assert d.say(line) == "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"


def test_sequence_errors_are_503() -> None:
    d = Driver(config(), answer=password_check, tls_active=True)
    assert d.say("AUTH PLAIN") == "503 5.5.1 Send EHLO first\r\n"
    d.say("HELO client.test")
    assert d.say("AUTH PLAIN") == "503 5.5.1 Send EHLO first\r\n"
    d.say("EHLO client.test", "MAIL FROM:<a@b.test>")
    assert d.say("AUTH PLAIN") == "503 5.5.1 AUTH is not allowed during a mail transaction\r\n"
    d.say("RCPT TO:<c@d.test>")
    assert d.say("AUTH PLAIN") == "503 5.5.1 AUTH is not allowed during a mail transaction\r\n"
    d.say("RSET")
    d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf"))
    assert d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == "503 5.5.1 Already authenticated\r\n"
    assert d.say("RSET", "EHLO again.test").startswith("250 2.0.0 OK\r\n250-mx.test")
    assert d.conn.authenticated is not None  # neither RSET nor EHLO forgets it


def test_too_long_response_line_is_500_5_5_6_and_is_skipped() -> None:
    d = tls_driver()
    d.say("AUTH LOGIN")
    assert d.feed(b"A" * 20_000) == b"500 5.5.6 Authentication exchange line is too long\r\n"
    assert d.feed(b"A" * 20_000 + b"\r\nNOOP\r\n") == b"250 2.0.0 OK\r\n"
    d.say("AUTH LOGIN")
    assert d.feed(b"A" * 12_289 + b"\r\n") == b"500 5.5.6 Authentication exchange line is too long\r\n"
    d.say("AUTH LOGIN")
    ok = b64(b"t" * 255).encode()
    assert d.feed(ok + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"


def test_long_initial_response_fits_the_extended_line() -> None:
    d = tls_driver()
    line = "AUTH PLAIN " + b64("a" * 255 + "\0" + "b" * 255 + "\0" + "c" * 255)
    assert len(line) > 1000
    assert d.say(line) == "535 5.7.8 Authentication credentials invalid\r\n"


def test_peer_closing_mid_exchange() -> None:
    d = tls_driver()
    d.say("AUTH LOGIN")
    d.conn.receive_data(b"dGlt")
    d.conn.receive_data(b"")
    assert isinstance(d.pump()[-1], smtpwire.ConnectionClosed)


def test_timeout_mid_exchange() -> None:
    d = tls_driver()
    d.say("AUTH LOGIN")
    d.conn.timed_out()
    assert d.conn.data_to_send() == b"421 4.4.2 mx.test Timeout, closing connection\r\n"
    assert d.conn.state is State.CLOSED


# --- failures are counted --------------------------------------------------------


def test_failures_end_the_session_with_421() -> None:
    d = tls_driver(max_auth_failures=3)
    assert d.codes("AUTH PLAIN " + b64("\0tim\0x"), "AUTH LOGIN", "*") == [535, 334, 501]
    out = d.say("AUTH PLAIN " + b64("\0tim\0y"), "NOOP")
    assert out == (
        "535 5.7.8 Authentication credentials invalid\r\n"
        "421 4.7.0 mx.test Too many authentication failures, closing connection\r\n"
    )
    assert d.conn.state is State.CLOSED


def test_success_does_not_reset_the_count_and_failures_are_not_errors() -> None:
    d = tls_driver(max_auth_failures=2, max_errors=1_000)
    assert d.codes("AUTH PLAIN " + b64("\0tim\0x")) == [535]
    assert d.codes("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == [235]
    assert d.conn.state is State.READY


def test_application_declines_count_too() -> None:
    d = Driver(config(max_auth_failures=1), answer=on_credentials(Reply(454, "Try later", (4, 7, 0))), tls_active=True)
    d.say("EHLO client.test")
    assert d.codes("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == [454, 421]


def test_a_421_answer_closes_at_once() -> None:
    d = Driver(config(), answer=on_credentials(Reply(421, "bye", (4, 3, 0))), tls_active=True)
    d.say("EHLO client.test")
    assert d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == "421 4.3.0 bye\r\n"
    assert d.conn.state is State.CLOSED


# --- SCRAM-SHA-256 (RFC 5802, RFC 7677) -----------------------------------------


def scram_driver(stored: dict[str, smtpwire.ScramCredentials], **settings: object) -> Driver:
    d = Driver(
        config(Auth(nonce=lambda: RFC7677_NONCE), **settings),
        lookup=lambda event: stored.get(event.username),
        tls_active=True,
    )
    d.say("EHLO client.test")
    return d


def test_scram_rfc7677_example_on_the_wire() -> None:
    d = scram_driver({"user": PENCIL})
    client_first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    out = d.say("AUTH SCRAM-SHA-256 " + b64(client_first))
    server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    assert out == f"334 {b64(server_first)}\r\n"
    assert events_of(d, smtpwire.CredentialsLookup) == [smtpwire.CredentialsLookup("SCRAM-SHA-256", "", "user")]
    client_final = (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert d.say(b64(client_final)) == f"334 {b64(b'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=')}\r\n"
    assert events_of(d, smtpwire.CredentialsLookup) == [smtpwire.CredentialsLookup("SCRAM-SHA-256", "", "user")] * 2
    assert d.say("") == "235 2.7.0 Authentication successful\r\n"
    assert d.conn.authenticated == smtpwire.Authenticated("SCRAM-SHA-256", "", "user")
    assert events_of(d, smtpwire.Authenticated) == [d.conn.authenticated]


def run_scramp(d: Driver, username: str, password: str) -> str:
    """An independent client (scramp) against the connection; returns the last reply."""
    client = scramp.ScramClient(["SCRAM-SHA-256"], username, password)
    out = d.say("AUTH SCRAM-SHA-256 " + b64(client.get_client_first()))
    if not out.startswith("334 "):
        return out
    client.set_server_first(base64.b64decode(out[4:]).decode())
    out = d.say(b64(client.get_client_final()))
    if not out.startswith("334 "):
        return out
    client.set_server_final(base64.b64decode(out[4:]).decode())  # raises unless the server proved its key
    return d.say("")


def test_scram_against_scramp() -> None:
    d = scram_driver({"tim": smtpwire.scram_credentials("tanstaaf", iterations=5000)})
    assert run_scramp(d, "tim", "tanstaaf") == "235 2.7.0 Authentication successful\r\n"
    assert d.conn.authenticated == smtpwire.Authenticated("SCRAM-SHA-256", "", "tim")


@pytest.mark.parametrize(("user", "password"), [("tim", "wrong"), ("nobody", "tanstaaf")])
def test_scram_wrong_password_and_unknown_user_look_alike(user: str, password: str) -> None:
    d = scram_driver({"tim": smtpwire.scram_credentials("tanstaaf")})
    assert run_scramp(d, user, password) == "535 5.7.8 Authentication credentials invalid\r\n"
    assert d.conn.authenticated is None and d.conn.state is State.READY


def test_scram_client_may_cancel_after_server_first() -> None:
    d = scram_driver({"user": PENCIL})
    d.say("AUTH SCRAM-SHA-256 " + b64(b"n,,n=user,r=abc"))
    assert d.say("*") == "501 5.7.0 Authentication cancelled\r\n"


def test_supply_checks_its_argument_and_the_moment() -> None:
    d = Driver(config(), tls_active=True, greet=True)
    with pytest.raises(smtpwire.LocalProtocolError, match="no CredentialsLookup"):
        d.conn.supply(None)
    d.conn.receive_data(b"EHLO c.test\r\nAUTH SCRAM-SHA-256 " + b64(b"n,,n=user,r=abc").encode() + b"\r\n")
    assert isinstance(d.conn.next_event(), smtpwire.Ehlo)
    d.conn.accept()
    lookup = d.conn.next_event()
    assert lookup == smtpwire.CredentialsLookup("SCRAM-SHA-256", "", "user")
    d.conn.data_to_send()
    with pytest.raises(smtpwire.LocalProtocolError, match="takes ScramCredentials"):
        d.conn.supply("pencil")
    with pytest.raises(smtpwire.LocalProtocolError, match="supply"):
        d.conn.accept()
    with pytest.raises(smtpwire.LocalProtocolError, match="not an answer"):
        d.conn.send(Reply(235, "yes"))
    assert d.conn.pending is lookup and d.conn.data_to_send() == b""
    d.conn.send(Reply(454, "Temporary authentication failure", (4, 7, 0)))
    assert d.conn.data_to_send() == b"454 4.7.0 Temporary authentication failure\r\n"
    assert d.conn.state is State.READY and d.conn.next_event() is smtpwire.NEED_DATA


# --- CRAM-MD5 (RFC 2195), only when named ------------------------------------------


def test_cram_md5_when_listed() -> None:
    d = Driver(
        config(Auth(["CRAM-MD5"], nonce=lambda: "1896.697170952")),
        lookup=lambda event: {"tim": "tanstaaftanstaaf"}.get(event.username),
        tls_active=True,
    )
    assert "AUTH CRAM-MD5" in keywords(d.say("EHLO client.test"))
    challenge = b"<1896.697170952@smtpwire>"
    assert d.say("AUTH CRAM-MD5") == f"334 {b64(challenge)}\r\n"
    digest = hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest()
    assert d.say(b64(f"tim {digest}")) == "235 2.7.0 Authentication successful\r\n"
    assert events_of(d, smtpwire.CredentialsLookup) == [smtpwire.CredentialsLookup("CRAM-MD5", "", "tim")]
    assert events_of(d, smtpwire.Authenticated) == [smtpwire.Authenticated("CRAM-MD5", "", "tim")]
    d2 = Driver(config(Auth(["CRAM-MD5"])), tls_active=True)
    d2.say("EHLO client.test", "AUTH CRAM-MD5")
    assert d2.say(b64(f"tim {digest}")) == "535 5.7.8 Authentication credentials invalid\r\n"
    assert [e.reply.code for e in events_of(d2, smtpwire.CommandRejected)] == [535]  # type: ignore[attr-defined]


# --- the policies around it -------------------------------------------------------


def test_require_auth_answers_mail_with_530() -> None:
    d = tls_driver(require_auth=True)
    assert d.say("MAIL FROM:<a@b.test>") == "530 5.7.0 Authentication required\r\n"
    d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf"))
    assert d.say("MAIL FROM:<a@b.test>") == "250 2.1.0 OK\r\n"


def test_require_auth_comes_after_require_tls() -> None:
    d = Driver(config(smtpwire.StartTLS(), require_auth=True, require_tls=True))
    d.say("EHLO client.test")
    assert d.say("MAIL FROM:<a@b.test>") == "530 5.7.0 Must issue a STARTTLS command first\r\n"


def test_mail_auth_parameter() -> None:
    d = tls_driver()
    d.say("MAIL FROM:<a@b.test> AUTH=tim+2Bsub@b.test", "RSET")
    d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf"))
    d.say("MAIL FROM:<a@b.test> AUTH=tim+2Bsub@b.test", "RSET", "MAIL FROM:<a@b.test> AUTH=<>", "RSET")
    mails = events_of(d, smtpwire.MailFrom)
    assert [mail.params["AUTH"] for mail in mails] == ["<>", "tim+2Bsub@b.test", "<>"]  # type: ignore[attr-defined]
    for bad in ("AUTH", "AUTH=a+2b", "AUTH=a+", "AUTH=a+G0"):
        assert d.say(f"MAIL FROM:<a@b.test> {bad}") == "501 5.5.4 Syntax: AUTH=<> or AUTH=xtext-mailbox\r\n"


def test_starttls_forgets_the_authentication() -> None:
    d = Driver(config(smtpwire.StartTLS(), Auth(require_tls=False)), answer=password_check)
    d.say("EHLO client.test", "AUTH PLAIN " + b64("\0tim\0tanstaaf"))
    assert d.conn.authenticated is not None
    assert d.say("STARTTLS") == "220 2.0.0 Ready to start TLS\r\n"
    d.conn.tls_established()
    assert d.conn.authenticated is None
    d.say("EHLO client.test")
    assert d.say("AUTH PLAIN " + b64("\0tim\0tanstaaf")) == "235 2.7.0 Authentication successful\r\n"


def test_scram_credentials_verify_a_password() -> None:
    assert PENCIL.verify("pencil") and not PENCIL.verify("pen") and not PENCIL.verify("pencil\u0000")
    assert smtpwire.scram_credentials("I\u00adX").verify("IX")  # SASLprep maps the soft hyphen away
    assert "stored_key" not in repr(PENCIL) and "server_key" not in repr(PENCIL)


# --- property: nothing a client sends inside AUTH raises or breaks the rules -------------

_REPLY_LINE = re.compile(rb"[2-5][0-9][0-9](?:[ -][\t\x20-\x7e]*)?\r\n")
responses = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.binary(max_size=300).map(base64.b64encode),
    st.sampled_from([b"*", b"", b"=", b"dGlt", b"AHRpbQB0YW5zdGFhZg==", b"n,,n=tim,r=abc"]),
    st.text(max_size=60).map(lambda t: base64.b64encode(t.encode())),
)


@settings(max_examples=300, deadline=None)
@given(
    mechanism=st.sampled_from([*smtpwire.KNOWN_MECHANISMS, "plain", "XOAUTH2"]),
    initial=st.one_of(st.none(), responses),
    lines=st.lists(responses, max_size=6),
    verdicts=st.lists(st.sampled_from(["accept", "decline", "temporary", "none", "known"]), min_size=1, max_size=8),
)
def test_random_sasl_input_never_raises(
    mechanism: str, initial: bytes | None, lines: list[bytes], verdicts: list[str]
) -> None:
    answers = iter(verdicts * 20)

    def answer(event: smtpwire.Decision) -> Reply | None:
        verdict = next(answers)
        if isinstance(event, smtpwire.AuthCredentials) and verdict in ("decline", "temporary"):
            return Reply(535, "no", (5, 7, 8)) if verdict == "decline" else Reply(454, "later", (4, 7, 0))
        return None

    def lookup(event: smtpwire.CredentialsLookup) -> smtpwire.ScramCredentials | str | None:
        known = next(answers) == "known"
        return None if not known else ("tanstaaf" if event.mechanism == "CRAM-MD5" else PENCIL)

    d = Driver(
        config(Auth(smtpwire.KNOWN_MECHANISMS), max_auth_failures=4), answer=answer, lookup=lookup, tls_active=True
    )
    d.say("EHLO client.test")
    command = f"AUTH {mechanism}" + ("" if initial is None else f" {initial.decode('latin-1')}")
    out = d.feed(command.encode("latin-1") + b"\r\n" + b"".join(line + b"\r\n" for line in lines))
    replies = _REPLY_LINE.findall(out)
    assert b"".join(replies) == out and all(len(r) <= 512 for r in replies)
    codes = [int(r[:3]) for r in replies]
    assert codes.count(421) <= 1 and (421 not in codes or d.conn.state is State.CLOSED)
    assert (235 in codes) == (d.conn.authenticated is not None) or d.conn.state is State.CLOSED
    if d.conn.authenticated is not None:
        assert events_of(d, smtpwire.Authenticated) == [d.conn.authenticated]


def test_unknown_scram_users_get_the_configured_iteration_count() -> None:
    stored = {"tim": smtpwire.scram_credentials("tanstaaf", iterations=10_000)}
    d = Driver(config(Auth(scram_iterations=10_000)), lookup=lambda e: stored.get(e.username), tls_active=True)
    d.say("EHLO client.test")
    for user in ("tim", "nobody"):
        out = d.say("AUTH SCRAM-SHA-256 " + b64(f"n,,n={user},r=abc"))
        assert base64.b64decode(out[4:]).endswith(b",i=10000")
        d.say("*")
    with pytest.raises(ValueError, match="iterations must be an integer from 4096"):
        Auth(scram_iterations=1000)


def may_act_as(stored: dict[str, smtpwire.ScramCredentials]) -> Callable[[smtpwire.CredentialsLookup], object]:
    """The documented lookup: the user's keys, None for no such user or an authzid they may not act as."""
    return lambda e: stored.get(e.username) if e.authzid in ("", e.username) else None


def server_first(d: Driver, client_first: str) -> bytes:
    out = d.say("AUTH SCRAM-SHA-256 " + b64(client_first))
    assert out.startswith("334 ")
    d.say("*")
    return base64.b64decode(out[4:])


def test_scram_salt_is_the_same_with_or_without_an_authzid() -> None:
    """Issue 11 (2): with an authzid a real user got a decoy salt, without one the real salt."""
    stored = {"tim": smtpwire.scram_credentials("tanstaaf")}
    auth = Auth(nonce=lambda: "N")
    d = Driver(config(auth, max_auth_failures=10), lookup=may_act_as(stored), tls_active=True)  # type: ignore[arg-type]
    d.say("EHLO client.test")
    for user in ("tim", "nobody"):
        assert server_first(d, f"n,,n={user},r=abc") == server_first(d, f"n,a=admin,n={user},r=abc")
    assert b",s=" + base64.b64encode(stored["tim"].salt) + b"," in server_first(d, "n,a=admin,n=tim,r=abc")


def client_final(gs2_header: str, bare: str, server_first: str, password: str) -> str:
    """A SCRAM-SHA-256 client's final message (RFC 5802 3), with any authzid in ``gs2_header``."""
    attributes = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attributes["s"]), int(attributes["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={b64(gs2_header)},r={attributes['r']}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    return f"{without_proof},p={b64(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))}"


def test_scram_a_refused_authzid_is_535_after_a_right_proof() -> None:
    stored = {"tim": smtpwire.scram_credentials("tanstaaf")}
    d = Driver(config(Auth()), lookup=may_act_as(stored), tls_active=True)  # type: ignore[arg-type]
    d.say("EHLO client.test")
    out = d.say("AUTH SCRAM-SHA-256 " + b64("n,a=admin,n=tim,r=abc"))
    final = client_final("n,a=admin,", "n=tim,r=abc", base64.b64decode(out[4:]).decode(), "tanstaaf")
    assert d.say(b64(final)) == "535 5.7.8 Authentication credentials invalid\r\n"
    lookups = events_of(d, smtpwire.CredentialsLookup)
    assert lookups == [smtpwire.CredentialsLookup("SCRAM-SHA-256", a, "tim") for a in ("", "admin")]
    assert d.conn.authenticated is None
    out = d.say("AUTH SCRAM-SHA-256 " + b64("n,a=tim,n=tim,r=abc"))  # acting as themself is fine
    final = client_final("n,a=tim,", "n=tim,r=abc", base64.b64decode(out[4:]).decode(), "tanstaaf")
    assert d.say(b64(final)).startswith("334 ") and d.say("") == "235 2.7.0 Authentication successful\r\n"
    assert d.conn.authenticated == smtpwire.Authenticated("SCRAM-SHA-256", "tim", "tim")


def test_scram_unknown_users_salt_is_stable_wherever_the_key_is_the_same() -> None:
    """Issue 11 (2): two workers (or a restart) gave an unknown user two salts; a real user has one."""

    def salt_of(auth: Auth) -> bytes:
        d = Driver(config(auth), tls_active=True)
        d.say("EHLO client.test")
        return server_first(d, "n,,n=nobody,r=abc").split(b",")[1]

    key = bytes(range(32))
    assert salt_of(Auth(scram_salt_key=key)) == salt_of(Auth(scram_salt_key=bytes(key)))
    assert salt_of(Auth(scram_salt_key=key)) != salt_of(Auth(scram_salt_key=key[::-1]))
    assert str(tuple(key)) not in repr(Auth(scram_salt_key=key)) and repr(key) not in repr(Auth(scram_salt_key=key))
    with pytest.raises(ValueError, match="scram_salt_key must be at least 16 random bytes"):
        Auth(scram_salt_key=b"too short")
