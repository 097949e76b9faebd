"""The stock sender-authentication handlers around a Maildir store, on every adapter and hook by hook.

Answers come from a local DNS server on 127.0.0.1; the serve-level
behaviour (the CLI, its log line) is test_serve_verify's.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import pathlib
import smtplib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import smtpwire
from smtpwire import AuthCredentials, Reply
from smtpwire_handler import (
    Address,
    AsyncHandler,
    AsyncMaildirStore,
    Envelope,
    Handler,
    Maildir,
    MaildirStore,
    Params,
    ServerOptions,
    Session,
)
from smtpwire_handler.authentication import (
    SENDER_VERDICT,
    AsyncResolver,
    AsyncSenderAuthentication,
    DNSCache,
    Resolver,
    SenderAuthentication,
    Verdict,
    Verification,
)
from smtpwire_handler.kit import CLOSED, NEED_DATA, SessionDriver
from tests import certs
from tests.dnsserver import LocalDNS, local_dns
from tests.dnszone import Zone
from tests.driver import Driver
from tests.servers import KINDS, running
from tests.test_driver import run
from tests.test_interop import MESSAGE, TIMEOUT
from tests.test_maildir import bodies, data_session, stored
from tests.test_serve_verify import ZONE, message

log = logging.getLogger("test")
SYNC_KINDS = ("blocking", "memorybio")
#: One adapter of each sort for the policies, whose refusals the driver turns into replies the same way.
POLICY_KINDS = ("blocking", "asyncio")
USER, PASSWORD = "tim", "tanstaaf"
PLAIN_TIM = "AUTH PLAIN AHRpbQB0YW5zdGFhZg=="  # \0tim\0tanstaaf
LOCAL_CLIENT = ("127.0.0.1", 40000)  # what example.org's SPF record authorises
CONFIG = smtpwire.ServerConfig(hostname="mx.test")
AUTH_CONFIG = smtpwire.ServerConfig(
    hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.Auth(["PLAIN"], require_tls=False))
)
TLS_AUTH_CONFIG = smtpwire.ServerConfig(
    hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.StartTLS(), smtpwire.Auth(["PLAIN"]))
)
#: A DNS server that says nothing is given up on after this long (the budget, below the resolver's timeout).
DNS_BUDGET = 0.5
SLACK = 0.5
TEST_ZONE: dict[str, Any] = {
    **ZONE,
    "half.example": [("TXT", "v=spf1 -all")],
    "_dmarc.half.example": [("TXT", "v=DMARC1; p=reject; pct=50")],
    "_dmarc.lagging.example": ["TIMEOUT"],
    "stalled.example": ["TIMEOUT"],
    "_dmarc.stalled.example": [("TXT", "v=DMARC1; p=reject")],
    "keyless.example": [("TXT", "v=spf1 -all")],
    "_dmarc.keyless.example": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.keyless.example": ["TIMEOUT"],
}
PASS_ALL = "spf=pass dkim=pass dmarc=pass arc=none"


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    with local_dns(Zone(TEST_ZONE)) as server:
        yield server


class KeepingStore(MaildirStore):
    """A MaildirStore that keeps the verdict each message reached it with, and lets tim in."""

    def __init__(self, maildir: pathlib.Path) -> None:
        super().__init__(maildir)
        self.verdicts: list[Verdict | None] = []

    def authenticate(self, session: Session, credentials: AuthCredentials) -> bool:
        return (credentials.username, credentials.password) == (USER, PASSWORD)

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        self.verdicts.append(envelope.authentication)
        return super().message(session, envelope)


class AsyncKeepingStore(AsyncMaildirStore):
    """``KeepingStore`` for the async adapters."""

    def __init__(self, maildir: pathlib.Path) -> None:
        super().__init__(maildir)
        self.verdicts: list[Verdict | None] = []

    def authenticate(self, session: Session, credentials: AuthCredentials) -> bool:
        return (credentials.username, credentials.password) == (USER, PASSWORD)

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        self.verdicts.append(envelope.authentication)
        return await super().message(session, envelope)


def checking(
    kind: str, maildir: pathlib.Path, dns: LocalDNS, verification: Verification
) -> tuple[Handler | AsyncHandler, KeepingStore | AsyncKeepingStore]:
    """The sender-authentication handler for ``kind`` around a keeping Maildir store, asking ``dns``."""
    if kind in SYNC_KINDS:
        store = KeepingStore(maildir)
        return SenderAuthentication(store, Resolver([dns.address], timeout=2.0), verification), store
    async_store = AsyncKeepingStore(maildir)
    resolver = AsyncResolver([dns.address], timeout=2.0)
    return AsyncSenderAuthentication(async_store, resolver, verification), async_store


@contextlib.contextmanager
def served(
    kind: str,
    maildir: pathlib.Path,
    dns: LocalDNS,
    verification: Verification | None = None,
    config: smtpwire.ServerConfig = CONFIG,
) -> Iterator[tuple[smtplib.SMTP, KeepingStore | AsyncKeepingStore]]:
    """A client connected to ``kind``'s server, which checks senders into ``maildir``."""
    handler, store = checking(kind, maildir, dns, verification or Verification())
    tls = certs.server_context() if config is TLS_AUTH_CONFIG else None
    options = ServerOptions(config=config, tls_context=tls)
    with running(kind, handler, options) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        yield client, store


def transaction(client: smtplib.SMTP, sender: str, content: bytes) -> tuple[int, bytes]:
    """MAIL, RCPT and DATA for ``content``; the reply to the end of data (or to MAIL, if that was refused)."""
    code, text = client.mail(sender)
    if code != 250:
        return code, text
    assert client.rcpt("bob@example.net")[0] == 250
    return client.data(content)


def in_folder(maildir: pathlib.Path, folder: str = "") -> list[bytes]:
    """The messages in ``folder``'s new/ (none left in its tmp/)."""
    return stored(Maildir(maildir).folder(folder) if folder else Maildir(maildir))


# --- over real sockets, on every adapter --------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_signed_message_from_an_authorised_host_passes_on_every_adapter(
    kind: str, tmp_path: pathlib.Path, dns: LocalDNS
) -> None:
    maildir = tmp_path / "maildir"
    forged = b"Authentication-Results: MX.test; dkim=pass header.d=bank.example\r\n"
    sent = message("alice@example.org", signed=True)
    with served(kind, maildir, dns) as (client, store):
        assert transaction(client, "alice@example.org", forged + sent)[0] == 250
    (kept,) = in_folder(maildir)
    (verdict,) = store.verdicts
    assert verdict is not None and verdict.summary() == PASS_ALL
    assert verdict.spf is not None and verdict.spf.domain == "example.org"
    assert kept.startswith(b"Return-Path: <alice@example.org>\r\nReceived: from client.example")
    assert kept.endswith(verdict.header("mx.test") + sent)  # after the trace headers; the forged claim is gone
    assert forged not in kept and kept.count(b"Authentication-Results:") == 1


# --- the policies, on one sync and one async adapter ----------------------------------


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_enforced_dmarc_refuses_a_reject_failure_and_stores_nothing(
    kind: str, tmp_path: pathlib.Path, dns: LocalDNS
) -> None:
    maildir = tmp_path / "maildir"
    with served(kind, maildir, dns, Verification(enforce_dmarc=True)) as (client, store):
        code, text = transaction(client, "mallory@forged.example", message("ceo@forged.example"))
    assert (code, text) == (550, b"5.7.1 Rejected by the DMARC policy of forged.example")
    assert in_folder(maildir) == [] and store.verdicts == []
    assert not (maildir / ".Junk").exists()


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_enforced_dmarc_files_a_quarantine_failure_into_junk(kind: str, tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    maildir = tmp_path / "maildir"
    with served(kind, maildir, dns, Verification(enforce_dmarc=True)) as (client, store):
        assert transaction(client, "eve@quarantined.example", message("eve@quarantined.example"))[0] == 250
    (junk,) = in_folder(maildir, "Junk")
    (verdict,) = store.verdicts
    assert in_folder(maildir) == [] and verdict is not None and verdict.header("mx.test") in junk
    assert verdict.dmarc is not None and (verdict.dmarc.result, verdict.disposition) == ("fail", "quarantine")


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_an_spf_fail_is_refused_at_mail_and_the_session_goes_on(
    kind: str, tmp_path: pathlib.Path, dns: LocalDNS
) -> None:
    maildir = tmp_path / "maildir"
    with served(kind, maildir, dns, Verification(reject_spf_fail=True)) as (client, _):
        code, text = client.mail("mallory@forged.example")
        assert (code, text) == (
            550,
            b"5.7.23 SPF check failed: forged.example does not designate 127.0.0.1 as a permitted sender",
        )
        assert transaction(client, "alice@example.org", message("alice@example.org", signed=True))[0] == 250
    assert len(in_folder(maildir)) == 1


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_a_silent_dns_server_defers_mail_within_the_budget(kind: str, tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    verification = Verification(reject_spf_fail=True, dns_budget=DNS_BUDGET)
    with served(kind, tmp_path / "maildir", dns, verification) as (client, _):
        started = time.monotonic()
        code, text = client.mail("someone@slow.example")
        elapsed = time.monotonic() - started
    assert (code, text) == (451, b"4.7.24 SPF check of slow.example could not be completed; try again later")
    assert DNS_BUDGET - 0.05 < elapsed < DNS_BUDGET + SLACK


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_a_dmarc_temperror_under_enforcement_is_451_and_stores_nothing(
    kind: str, tmp_path: pathlib.Path, dns: LocalDNS
) -> None:
    maildir = tmp_path / "maildir"
    verification = Verification(enforce_dmarc=True, dns_budget=DNS_BUDGET)
    with served(kind, maildir, dns, verification) as (client, store):
        started = time.monotonic()
        code, text = transaction(client, "alice@example.org", message("ceo@lagging.example"))
        elapsed = time.monotonic() - started
    assert (code, text) == (451, b"4.7.1 The DMARC policy could not be checked; try again later")
    assert in_folder(maildir) == [] and store.verdicts == []
    assert elapsed < DNS_BUDGET + SLACK


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_a_client_that_authenticated_is_checked_but_never_refused(
    kind: str, tmp_path: pathlib.Path, dns: LocalDNS
) -> None:
    maildir = tmp_path / "maildir"
    verification = Verification(reject_spf_fail=True, enforce_dmarc=True)
    with served(kind, maildir, dns, verification, TLS_AUTH_CONFIG) as (client, store):
        client.starttls(context=certs.client_context())
        client.ehlo("client.example")
        assert client.login(USER, PASSWORD)[0] == 235  # the store's authenticate, forwarded
        assert transaction(client, "mallory@forged.example", message("ceo@forged.example"))[0] == 250
    (kept,) = in_folder(maildir)
    (verdict,) = store.verdicts
    assert verdict is not None and verdict.summary() == "spf=fail dkim=none dmarc=fail arc=none"
    assert verdict.disposition == "reject" and verdict.header("mx.test") in kept


# --- hook by hook -----------------------------------------------------------------


def conversation(handler: Handler | AsyncHandler, peer: Address = LOCAL_CLIENT) -> SessionDriver:
    """A session past its greeting, whose async hooks the test plays (``run`` awaits them)."""
    driver = SessionDriver(handler, ServerOptions(config=AUTH_CONFIG), log=log, peer=peer)
    sent, step = run(driver)
    assert sent.startswith(b"220 ") and step is NEED_DATA
    return driver


def say(driver: SessionDriver, *lines: str | bytes) -> list[bytes]:
    """Each line (CRLF added) in turn; the replies' last lines."""
    replies = []
    for line in lines:
        data = line if isinstance(line, bytes) else line.encode() + b"\r\n"
        sent, _ = run(driver, data)
        replies.append(sent.splitlines()[-1])
    return replies


def send(driver: SessionDriver, sender: str, content: bytes) -> list[bytes]:
    return say(
        driver, "EHLO client.example", f"MAIL FROM:<{sender}>", "RCPT TO:<bob@example.net>", "DATA", content + b".\r\n"
    )


def test_the_stores_other_hooks_are_its_own(tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    class Picky(KeepingStore):
        def rcpt_to(self, session: Session, address: str, params: Params) -> Reply | None:
            return Reply(550, "No such user", (5, 1, 1)) if address.startswith("nobody@") else None

    store = Picky(tmp_path / "maildir")
    driver = conversation(SenderAuthentication(store, Resolver([dns.address])))
    replies = say(driver, "EHLO client.example", PLAIN_TIM, "MAIL FROM:<alice@example.org>", "RCPT TO:<nobody@x.test>")
    assert replies[1:] == [b"235 2.7.0 Authentication successful", b"250 2.1.0 OK", b"550 5.1.1 No such user"]


class Gatekeeper(MaildirStore):
    """Refuses every MAIL itself, noting the verdict it saw by then."""

    def __init__(self, maildir: pathlib.Path) -> None:
        super().__init__(maildir)
        self.seen: list[Verdict | None] = []

    def mail_from(self, session: Session, address: str, params: Params) -> Reply | None:
        self.seen.append(session.state.get(SENDER_VERDICT))
        return Reply(550, "Not from you", (5, 7, 1))


def test_the_stores_mail_from_runs_after_the_check_and_its_refusal_stands(
    tmp_path: pathlib.Path, dns: LocalDNS
) -> None:
    store = Gatekeeper(tmp_path / "maildir")
    driver = conversation(SenderAuthentication(store, Resolver([dns.address]), Verification(reject_spf_fail=True)))
    replies = say(driver, "EHLO client.example", "MAIL FROM:<alice@example.org>", "MAIL FROM:<mallory@forged.example>")
    assert replies[1:] == [
        b"550 5.7.1 Not from you",
        b"550 5.7.23 SPF check failed: forged.example does not designate 127.0.0.1 as a permitted sender",
    ]
    (seen,) = store.seen  # our refusal at the second MAIL spared the store's hook
    assert seen is not None and seen.spf is not None and seen.spf.result == "pass"


def test_the_async_handler_runs_the_stores_mail_from_after_the_check(tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    store = Gatekeeper(tmp_path / "maildir")
    driver = conversation(AsyncSenderAuthentication(store, AsyncResolver([dns.address])))
    assert say(driver, "EHLO client.example", "MAIL FROM:<alice@example.org>")[1] == b"550 5.7.1 Not from you"
    (seen,) = store.seen
    assert seen is not None and seen.spf is not None and seen.spf.result == "pass"


class Aborts(MaildirStore):
    """Notes each abandoned message."""

    def __init__(self, maildir: pathlib.Path) -> None:
        super().__init__(maildir)
        self.aborted: list[Reply | None] = []

    def message_aborted(self, session: Session, reply: Reply | None) -> None:
        self.aborted.append(reply)
        super().message_aborted(session, reply)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_abandoned_message_reaches_the_store_and_is_no_longer_held(
    kind: str, tmp_path: pathlib.Path, dns: LocalDNS
) -> None:
    store = Aborts(tmp_path / "maildir")
    handler: SenderAuthentication | AsyncSenderAuthentication = (
        SenderAuthentication(store, Resolver([dns.address]))
        if kind == "sync"
        else AsyncSenderAuthentication(store, AsyncResolver([dns.address]))
    )
    driver = conversation(handler)
    say(driver, "EHLO client.example", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>", "DATA")
    run(driver, b"Subject: unfinished\r\n\r\nHello")
    envelope = driver.session.envelope
    assert envelope is not None and envelope.content == b"Subject: unfinished\r\n\r\nHello"  # held there
    assert run(driver, b"") == (b"", CLOSED)  # the client went away mid-message
    assert store.aborted == [None]
    assert list((tmp_path / "maildir" / "tmp").iterdir()) == []  # the store's own file went too


def test_a_store_that_delivers_per_recipient_is_refused(tmp_path: pathlib.Path) -> None:
    class Lmtp(MaildirStore):
        def deliver(self, session: Session, envelope: Envelope, recipient: str) -> Reply | None:
            return None

    for wrapper in (SenderAuthentication, AsyncSenderAuthentication):
        with pytest.raises(ValueError, match="LMTP delivery per recipient is not wrapped"):
            wrapper(Lmtp(tmp_path / "maildir"))


def test_a_unix_socket_client_gets_no_spf_check_and_no_dns_query(tmp_path: pathlib.Path) -> None:
    with local_dns(Zone(TEST_ZONE)) as fresh:
        verification = Verification(reject_spf_fail=True)
        sync = SenderAuthentication(MaildirStore(tmp_path / "maildir"), Resolver([fresh.address]), verification)
        store = AsyncMaildirStore(tmp_path / "maildir")
        asynchronous = AsyncSenderAuthentication(store, AsyncResolver([fresh.address]), verification)
        for handler in (sync, asynchronous):
            session = mail_session(peer="")
            assert handler.mail_from(session, "mallory@forged.example", {}) is None  # inline: nothing to wait for
            assert session.state[SENDER_VERDICT] == Verdict()
        assert fresh.queries == []
        refused = sync.mail_from(mail_session(), "mallory@forged.example", {})  # the same MAIL over TCP/IP
        assert refused is not None and refused.code == 550 and fresh.queries == [("forged.example", "TXT")]


def mail_session(peer: Address = LOCAL_CLIENT) -> Session:
    """A session that said EHLO, about to have its MAIL checked."""
    driver = Driver(CONFIG)
    driver.say("EHLO client.example")
    return Session(driver.conn, peer=peer)


async def settled(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


@pytest.mark.anyio
async def test_the_async_mail_check_answers_inline_once_the_cache_is_warm(dns: LocalDNS) -> None:
    resolver = AsyncResolver([dns.address], cache=DNSCache())
    handler = AsyncSenderAuthentication(Handler(), resolver, Verification(reject_spf_fail=True))
    cold = handler.mail_from(mail_session(), "mallory@forged.example", {})
    assert inspect.isawaitable(cold)
    refusal = await cold
    asked = len(dns.queries)
    warm = handler.mail_from(mail_session(), "mallory@forged.example", {})
    assert isinstance(warm, Reply) and warm == refusal and warm.code == 550
    session = mail_session()
    assert await settled(handler.mail_from(session, "alice@example.org", {})) is None  # a name not yet asked
    assert handler.mail_from(mail_session(), "alice@example.org", {}) is None
    assert session.state[SENDER_VERDICT].spf.result == "pass"
    assert len(dns.queries) == asked + 1  # example.org's TXT, once


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def quarantined_or_refused(tmp_path: pathlib.Path, dns: LocalDNS, verification: Verification) -> bytes:
    """The reply to a half.example message (p=reject, pct=50) under ``verification``, which enforces DMARC."""
    handler = SenderAuthentication(MaildirStore(tmp_path / "maildir"), Resolver([dns.address]), verification)
    return send(conversation(handler), "ceo@half.example", message("ceo@half.example"))[-1]


def test_the_pct_sample_is_the_verifications(tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    sampled = quarantined_or_refused(tmp_path / "a", dns, Verification(enforce_dmarc=True, sample=lambda: 0.2))
    assert sampled == b"550 5.7.1 Rejected by the DMARC policy of half.example"
    stepped_down = quarantined_or_refused(tmp_path / "b", dns, Verification(enforce_dmarc=True, sample=lambda: 0.7))
    assert stepped_down == b"250 2.0.0 OK"
    assert len(in_folder(tmp_path / "b" / "maildir", "Junk")) == 1  # p=reject stepped down to quarantine


def signed_summary(tmp_path: pathlib.Path, dns: LocalDNS, clock: Callable[[], float]) -> str:
    """The verdict on a message signed now, at the time ``clock`` says."""
    store = KeepingStore(tmp_path / "maildir")
    handler = SenderAuthentication(store, Resolver([dns.address]), Verification(clock=clock))
    assert send(conversation(handler), "alice@example.org", message("alice@example.org", signed=True))[-1] == (
        b"250 2.0.0 OK"
    )
    (verdict,) = store.verdicts
    assert verdict is not None
    return verdict.summary()


def test_the_time_is_the_verifications(tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    assert signed_summary(tmp_path / "now", dns, time.time) == PASS_ALL
    in_1970 = signed_summary(tmp_path / "then", dns, lambda: 0.0)
    assert in_1970 == "spf=pass dkim=permerror dmarc=pass arc=none"  # signed (t=) in that clock's future


def test_a_store_keeping_the_default_data_chunk_gets_the_checked_message(dns: LocalDNS) -> None:
    class Keeper(Handler):
        def __init__(self) -> None:
            self.contents: list[bytes] = []

        def message(self, session: Session, envelope: Envelope) -> None:
            self.contents.append(bytes(envelope.content))

    store = Keeper()
    sent = message("alice@example.org", signed=True)
    assert send(conversation(SenderAuthentication(store, Resolver([dns.address]))), "alice@example.org", sent)[-1] == (
        b"250 2.0.0 OK"
    )
    (content,) = store.contents
    assert content.startswith(b"Authentication-Results: mx.test;") and content.endswith(sent)


@pytest.mark.parametrize(
    ("sender", "author"),
    [("someone@stalled.example", "ceo@stalled.example"), ("someone@keyless.example", "ceo@keyless.example")],
    ids=["spf-temperror", "dkim-temperror"],
)
def test_an_aligned_check_that_failed_for_now_defers_under_enforcement(
    tmp_path: pathlib.Path, dns: LocalDNS, sender: str, author: str
) -> None:
    verification = Verification(enforce_dmarc=True, dns_budget=1.0)  # time left for DMARC after the timeout
    resolver = Resolver([dns.address], timeout=0.3)
    handler = SenderAuthentication(MaildirStore(tmp_path / "maildir"), resolver, verification)
    reply = send(conversation(handler), sender, message(author, signed=True))[-1]
    assert reply == b"451 4.7.1 The DMARC policy could not be checked; try again later"


class RecipientCheck(Handler):
    """Notes what the envelope says of the sender when each RCPT comes."""

    def __init__(self) -> None:
        self.seen: list[Verdict | None] = []

    def rcpt_to(self, session: Session, address: str, params: Params) -> None:
        assert session.envelope is not None
        self.seen.append(session.envelope.authentication)


def test_the_spf_verdict_is_in_the_session_state_from_mail_on(dns: LocalDNS) -> None:
    store = RecipientCheck()
    driver = conversation(SenderAuthentication(store, Resolver([dns.address])))
    say(driver, "EHLO client.example", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>")
    assert store.seen == [None]  # envelope.authentication comes at the end of data
    verdict = driver.session.state[SENDER_VERDICT]
    assert verdict.spf is not None and verdict.spf.result == "pass" and verdict.dkim == ()


# --- MaildirStore and Maildir++ folders --------------------------------------------------


def test_the_sync_maildir_store_files_a_message_into_its_envelopes_folder(tmp_path: pathlib.Path) -> None:
    maildir = Maildir(tmp_path / "maildir")
    store = MaildirStore(maildir, "mx.test")
    session = data_session()
    assert store.data_start(session) is None
    store.data_chunk(session, MESSAGE)
    assert session.envelope is not None
    session.envelope.folder = "Junk"
    assert store.message(session, session.envelope) is None
    junk = maildir.folder("Junk")
    assert stored(maildir) == [] and bodies(junk) == [MESSAGE]
