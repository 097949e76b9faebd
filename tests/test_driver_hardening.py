"""The driver against a hostile client: record deadlines (slow drips) and what the transcript withholds."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from typing import Any

import pytest

import smtpwire
from smtpwire import Reply
from smtpwire_handler import AsyncHandler, Envelope, Handler, Params, ServerOptions, Session
from smtpwire_handler._checks import check_handler
from smtpwire_handler.kit import NEED_DATA
from tests.test_driver import TIMED_OUT, TRANSACTION, Clock, greeted, new_driver, replies, run
from tests.test_interop import MESSAGE, ON_THE_WIRE

PASSWORD = "correct horse battery staple"
AUTH_CONFIG = smtpwire.ServerConfig(extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.Auth(require_tls=False)))
SCRAM = smtpwire.scram_credentials(PASSWORD, salt=b"pepper and salt!", iterations=4096)


class Accounts(Handler):
    """alice with PASSWORD, for PLAIN/LOGIN and SCRAM."""

    def authenticate(self, session: Session, credentials: smtpwire.AuthCredentials) -> bool:
        return credentials.username == "alice" and credentials.password == PASSWORD

    def credentials(self, session: Session, lookup: smtpwire.CredentialsLookup) -> smtpwire.ScramCredentials | None:
        return SCRAM if lookup.username == "alice" else None


# -- deadlines per record -----------------------------------------------------------------


def test_a_command_dripped_a_byte_at_a_time_times_out_on_the_command_timeout() -> None:
    clock = Clock()
    driver = greeted(Handler(), ServerOptions(command_timeout=10), clock=clock)
    assert driver.timeout == 10
    for byte in b"NOOP NOOP NOOP":  # one byte every 4 s: each read alone is well within 10 s
        clock.now += 4
        assert run(driver, bytes([byte])) == (b"", NEED_DATA)
        if driver.timeout == 0:
            break
    assert clock.now == 1012 and driver.timeout == 0  # the line was due at 1010, whatever came since
    driver.timed_out()
    assert run(driver)[0] == TIMED_OUT


def test_each_finished_command_starts_a_new_deadline() -> None:
    clock = Clock()
    driver = greeted(Handler(), ServerOptions(command_timeout=10), clock=clock)
    for _ in range(5):
        clock.now += 8
        sent, _ = run(driver, b"NOOP\r\n")
        assert sent == b"250 2.0.0 OK\r\n" and driver.timeout == 10


def test_message_data_buys_time_at_the_minimum_rate_up_to_the_data_timeout() -> None:
    clock = Clock()
    options = ServerOptions(command_timeout=10, data_timeout=60, min_data_rate=100)
    driver = greeted(Handler(), options, clock=clock)
    run(driver, TRANSACTION)
    assert driver.timeout == 60  # DATA accepted: a fresh data deadline
    clock.now += 50
    run(driver, b"x" * 498 + b"\r\n")  # 500 octets in 50 s: 5 s more
    assert driver.timeout == pytest.approx(15, abs=0.05)  # the last CRLF waits: it may start the end
    clock.now += 1
    run(driver, b"y" * 100_000 + b"\r\n")  # a burst: never more than data_timeout ahead
    assert driver.timeout == 60
    for _ in range(30):  # a drip: 2 octets (one line) every 10 s buys 0.02 s each time
        clock.now += 10
        run(driver, b"\r\n")
        if driver.timeout == 0:
            break
    assert 1110 < clock.now < 1125 and driver.timeout == 0
    driver.timed_out()
    assert run(driver)[0] == TIMED_OUT


def test_a_bdat_message_is_held_to_the_data_deadline_whatever_its_chunks() -> None:
    """One ``BDAT 1`` every 1.5 s must not keep a message open: a chunk is not a new command."""
    clock = Clock()
    options = ServerOptions(command_timeout=10, data_timeout=60, min_data_rate=100)
    driver = greeted(Handler(), options, clock=clock)
    run(driver, b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    assert driver.timeout == 10
    sent, _ = run(driver, b"BDAT 1\r\nx")
    assert sent == b"250 2.0.0 1 octets received\r\n" and driver.timeout == 60
    for _ in range(60):  # each chunk buys 1 / 100 s, and its BDAT line nothing
        clock.now += 1.5
        sent, _ = run(driver, b"BDAT 1\r\nx")
        assert sent == b"250 2.0.0 1 octets received\r\n"
        if driver.timeout == 0:
            break
    assert 1059 < clock.now < 1062 and driver.timeout == 0
    driver.timed_out()
    assert run(driver)[0] == TIMED_OUT


def test_after_a_bdat_message_commands_have_the_command_timeout_again() -> None:
    clock = Clock()
    driver = greeted(Handler(), ServerOptions(command_timeout=10, data_timeout=60), clock=clock)
    run(driver, b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nBDAT 3\r\nabc")
    assert driver.timeout == 60
    clock.now += 30
    sent, _ = run(driver, b"BDAT 2 LAST\r\nde")
    assert sent == b"250 2.0.0 OK\r\n" and driver.timeout == 10


def test_a_handshake_keeps_its_own_timeout_and_the_clock_starts_again_after_it() -> None:
    from tests.test_driver import TLS, tls_options

    clock = Clock()
    driver = greeted(Handler(), tls_options(), clock=clock)  # handshake 3 s, commands 9 s
    run(driver, b"EHLO c.example\r\nSTARTTLS\r\n")
    assert driver.timeout == 3
    clock.now += 2
    driver.tls_started(TLS)
    run(driver)
    assert driver.timeout == 9


# -- the transcript -----------------------------------------------------------------------


def transcript_of(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage().split(" ", 2)[2] for r in records if r.name == "smtpwire.transcript"]


@pytest.fixture
def transcript(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="smtpwire.transcript")
    return caplog


def test_auth_plain_split_over_short_records_is_never_shown(transcript: pytest.LogCaptureFixture) -> None:
    driver = greeted(Accounts(), ServerOptions(config=AUTH_CONFIG))
    run(driver, b"EHLO c.example\r\n")
    blob = base64.b64encode(b"\0alice\0" + PASSWORD.encode())
    line = b"AUTH PLAIN " + blob + b"\r\n"
    for piece in (line[:2], line[2:14], line[14:30], line[30:]):  # as short TLS records would bring it
        sent, _ = run(driver, piece)
    assert sent == b"235 2.7.0 Authentication successful\r\n"
    run(driver, b"NOOP\r\n")
    shown = transcript_of(transcript.records)
    withheld = f"<<< b'AUTH PLAIN' [{len(line) - 10} bytes of an AUTH exchange withheld]"  # the verb, the mechanism
    assert withheld in shown and ">>> b'235 2.7.0 Authentication successful\\r\\n'" in shown  # and the outcome
    assert "<<< b'NOOP\\r\\n'" in shown and ">>> b'250 2.0.0 OK\\r\\n'" in shown
    received = [line for line in shown if line.startswith("<<<")]
    assert received == ["<<< b'EHLO c.example\\r\\n'", withheld, "<<< b'NOOP\\r\\n'"]
    assert blob.decode()[:8] not in "\n".join(shown)


def test_auth_login_responses_and_the_server_challenges_are_withheld(transcript: pytest.LogCaptureFixture) -> None:
    driver = greeted(Accounts(), ServerOptions(config=AUTH_CONFIG))
    run(driver, b"EHLO c.example\r\n")
    run(driver, b"AUTH LOGIN\r\n")
    run(driver, base64.b64encode(b"alice") + b"\r\n")
    sent, _ = run(driver, base64.b64encode(PASSWORD.encode()) + b"\r\n")
    assert sent.startswith(b"235 ")
    text = "\n".join(transcript_of(transcript.records))
    assert base64.b64encode(PASSWORD.encode()).decode() not in text and "VXNlcm5hbWU6" not in text
    assert text.count("of an AUTH exchange withheld") == 5  # 3 lines in and 2 challenges out; the 235 is shown
    assert "<<< b'AUTH LOGIN' [2 bytes of an AUTH exchange withheld]" in text
    assert ">>> b'235 2.7.0 Authentication successful\\r\\n'" in text


def test_a_scram_exchange_logs_nothing_an_offline_attack_could_use(transcript: pytest.LogCaptureFixture) -> None:
    """The server-first (salt, nonce) and server-final (signature) let a log reader test passwords."""
    driver = greeted(Accounts(), ServerOptions(config=AUTH_CONFIG))
    client_first_bare = "n=alice,r=clientnonce0123456789"
    run(driver, b"EHLO c.example\r\n")
    sent, _ = run(driver, b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,," + client_first_bare.encode()) + b"\r\n")
    server_first = base64.b64decode(sent[4:].strip()).decode()
    nonce = dict(item.split("=", 1) for item in server_first.split(","))["r"]
    without_proof = f"c=biws,r={nonce}"
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), SCRAM.salt, SCRAM.iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    final = base64.b64encode(f"{without_proof},p={proof}".encode())
    sent, _ = run(driver, final + b"\r\n")
    assert sent.startswith(b"334 ")  # server-final: v=<ServerSignature>
    sent, _ = run(driver, b"\r\n")
    assert sent.startswith(b"235 ")
    text = "\n".join(transcript_of(transcript.records))
    salt = base64.b64encode(SCRAM.salt).decode()
    for secret in (salt, base64.b64encode(server_first.encode()).decode()[:20], final.decode()[:20], proof):
        assert secret not in text
    assert "334" not in text and "<<< b'AUTH SCRAM-SHA-256' [" in text and ">>> b'235 2.7.0" in text


def test_a_word_after_auth_that_is_no_mechanism_is_withheld_with_the_rest(
    transcript: pytest.LogCaptureFixture,
) -> None:
    """A password typed where the mechanism goes must not reach the log."""
    driver = greeted(Accounts(), ServerOptions(config=AUTH_CONFIG))
    run(driver, b"EHLO c.example\r\n")
    sent, _ = run(driver, b"AUTH hunter2secret\r\n")
    assert sent.startswith(b"504 ")
    text = "\n".join(transcript_of(transcript.records))
    assert "hunter2" not in text and "<<< b'AUTH' [16 bytes of an AUTH exchange withheld]" in text


def test_lines_are_shown_whole_once_read_and_an_unfinished_one_never(transcript: pytest.LogCaptureFixture) -> None:
    driver = greeted(Handler())
    run(driver, b"NO")
    run(driver, b"OP\r\nHE")
    run(driver, b"LP\r\nAUTH PLAIN c2VjcmV0")  # the end of this line never comes
    driver.connection_lost()
    run(driver)
    assert transcript_of(transcript.records)[1:] == [
        "<<< b'NOOP\\r\\n'",
        ">>> b'250 2.0.0 OK\\r\\n'",
        "<<< b'HELP\\r\\n'",
        transcript_of(transcript.records)[4],  # the HELP reply
        "<<< [19 bytes of an unfinished line withheld]",
    ]


def test_a_long_exchange_shows_the_first_kilobyte_and_counts_the_rest(
    transcript: pytest.LogCaptureFixture,
) -> None:
    driver = greeted(Handler())
    run(driver, TRANSACTION)
    run(driver, b"Subject: big\r\n" + b"x" * 5000 + b"\r\n")
    shown = transcript_of(transcript.records)[-1]
    assert shown.startswith("<<< b'Subject: big\\r\\nxxx") and shown.endswith("' (+3992 bytes)")


def test_an_async_handler_session_keeps_the_same_rules(transcript: pytest.LogCaptureFixture) -> None:
    class AsyncAccounts(AsyncHandler):
        async def authenticate(self, session: Session, credentials: smtpwire.AuthCredentials) -> bool:
            return credentials.password == PASSWORD

    driver = new_driver(AsyncAccounts(), ServerOptions(config=AUTH_CONFIG))
    run(driver)
    blob = base64.b64encode(b"\0alice\0" + PASSWORD.encode())
    sent, _ = run(driver, b"EHLO c.example\r\nAUTH PLAIN " + blob + b"\r\nNOOP\r\n")
    assert replies(sent)[-2:] == [b"235 2.7.0 Authentication successful", b"250 2.0.0 OK"]
    assert blob.decode() not in transcript.text


# -- handler mistakes ------------------------------------------------------------------


class Stored(AsyncHandler):
    """Stores each message, then answers the way an aiosmtpd handler would."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.stored: list[bytes] = []

    def message(self, session: Session, envelope: Envelope) -> Any:  # a plain def on an AsyncHandler
        self.stored.append(envelope.content)
        return self.answer


@pytest.mark.parametrize(
    ("answer", "reply"),
    [
        ("250 OK", b"250 2.0.0 OK"),  # the enhanced code the client was promised is added
        ("250 2.0.0 Message accepted for delivery", b"250 2.0.0 Message accepted for delivery"),
        ("550 5.7.1 Refused by policy", b"550 5.7.1 Refused by policy"),
    ],
)
def test_an_aiosmtpd_style_string_answer_is_sent_as_meant_and_the_message_stored_once(
    answer: str, reply: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="test")

    class Port(Stored):
        """A class of its own: the warning comes once per class and hook."""

    handler = Port(answer)
    driver = greeted(handler)
    run(driver, b"EHLO c.example\r\n")
    for _ in range(2):
        sent, _ = run(driver, TRANSACTION.removeprefix(b"EHLO c.example\r\n") + ON_THE_WIRE)
        assert replies(sent)[-1] == reply
    assert handler.stored == [MESSAGE, MESSAGE]  # once per message sent, never again for a 451
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"Port.message returned {answer!r}, a str: answered as such; return smtpwire.Reply"]


def test_an_answer_that_is_no_reply_at_all_is_451_with_the_hook_named(caplog: pytest.LogCaptureFixture) -> None:
    handler = Stored({"status": "ok"})
    driver = greeted(handler)
    sent, _ = run(driver, TRANSACTION + ON_THE_WIRE)
    assert replies(sent)[-1] == b"451 4.3.0 Requested action aborted: local error in processing"
    assert any("hook message returned {'status': 'ok'}, not a Reply" in r.getMessage() for r in caplog.records)


class AiosmtpdPort(AsyncHandler):
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


class WrongArity(Handler):
    def message(self, envelope: Envelope) -> None:  # type: ignore[override]
        pass


class SaysStr(AsyncHandler):
    async def rcpt_to(self, session: Session, address: str, params: Params) -> str:  # type: ignore[override]
        return "250 OK"


class AsyncOnPlain(Handler):
    async def message(self, session: Session, envelope: Envelope) -> None:  # type: ignore[override]
        pass


@pytest.mark.parametrize(
    ("handler", "can_await", "error"),
    [
        (
            AiosmtpdPort(),
            True,
            "AiosmtpdPort.handle_DATA is an aiosmtpd hook, which smtpwire never calls: define message()",
        ),
        (WrongArity(), True, "WrongArity.message must take 2 arguments like Handler.message"),
        (SaysStr(), True, "SaysStr.rcpt_to is declared to return str: answers are smtpwire.Reply values"),
        (AsyncOnPlain(), False, "AsyncOnPlain.message is async def: this adapter calls plain hooks"),
        (object(), True, "handler must be a Handler or AsyncHandler subclass, not object"),
    ],
)
def test_handler_mistakes_are_refused_when_the_server_is_built(handler: object, can_await: bool, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        check_handler(handler, can_await=can_await)


def test_correct_handlers_pass_the_checks() -> None:
    class Fine(AsyncHandler):
        def message(self, session: Session, envelope: Envelope) -> Reply | None:
            return None

        async def rcpt_to(self, session: Session, address: str, params: Params) -> Reply | None:
            return None

        def credentials(self, session: Session, lookup: smtpwire.CredentialsLookup) -> str | None:
            return None  # CRAM-MD5's password is a str: no answer to the client

    check_handler(Fine(), can_await=True)
    check_handler(Accounts(), can_await=False)
    check_handler(AsyncOnPlain(), can_await=True)  # the async adapters await an async def on a Handler


def test_a_broken_extension_gets_451_even_when_no_hook_answers_ehlo(caplog: pytest.LogCaptureFixture) -> None:
    """The driver's own standard answer falls back like a hook's: the core raised and changed nothing."""
    from tests.test_hardening_core import BrokenEhloLine

    config = smtpwire.ServerConfig(extensions=(*smtpwire.STANDARD_EXTENSIONS, BrokenEhloLine("X-BROKEN\r\n250 X")))
    driver = greeted(Handler(), ServerOptions(config=config))
    sent, step = run(driver, b"EHLO c.example\r\nHELO c.example\r\n")
    assert step is NEED_DATA
    assert sent == b"451 Requested action aborted: local error in processing\r\n250 localhost\r\n"
    assert "hook ehlo answered Ehlo" in caplog.text
