"""Issue 11: unknown users look like real ones, and password guessing has a budget across sessions.

(2) SCRAM-SHA-256 answered a real user with an authzid with a decoy salt and
without one with the real salt, and an unknown user's decoy salt changed from
process to process (workers, restarts): both told real users from unknown ones.
(4) Nothing limited failed attempts across sessions: 636 wrong passwords in
10 seconds from one address, each costing a PBKDF2 run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import pathlib
import re
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import scramp

import smtpwire
from smtpwire_handler import AsyncHandler, Maildir, ServerOptions
from smtpwire_serve import _authfile
from smtpwire_serve._authlimit import Attempt, FailureBudget, client_network
from smtpwire_serve._store import MaildirHandler, SinkHandler
from tests.servers import running
from tests.test_cli import Serve, serve, starttls
from tests.test_interop import MESSAGE, TIMEOUT

USER, PASSWORD = "alice", "correct horse battery staple"
REFUSED = (454, b"4.7.0 Too many failed authentication attempts, try again later")
INVALID = (535, b"5.7.8 Authentication credentials invalid")


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the budget itself --------------------------------------------------------------


def fail(budget: FailureBudget, host: str = "192.0.2.1") -> Attempt:
    attempt = budget.begin(host)
    if not attempt.refused:
        budget.end(attempt, failed=True)
    return attempt


def test_delays_grow_and_the_budget_runs_out(caplog: pytest.LogCaptureFixture) -> None:
    budget = FailureBudget(limit=6, window=600, delay=2, clock=Clock())
    attempts = [fail(budget) for _ in range(8)]
    assert [a.delay for a in attempts] == [0, 2, 4, 8, 15, 15, 15, 15]  # Dovecot: doubling up to 15 s
    assert [a.refused for a in attempts] == [False] * 6 + [True] * 2
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == [  # one line per client, naming it
        "AUTH from 192.0.2.1 refused: 6 failed or running attempts from 192.0.2.1 within 600 s"
        " (until 600 s pass without one)"
    ]
    assert not budget.begin("192.0.2.2").refused  # another client has its own budget


def test_a_success_neither_counts_nor_resets() -> None:
    budget = FailureBudget(limit=3, delay=1, clock=Clock())
    fail(budget)
    attempt = budget.begin("192.0.2.1")
    assert attempt.delay == 1
    budget.end(attempt, failed=False)  # a client with one good account cannot wipe its failures
    assert budget.begin("192.0.2.1").delay == 1


def test_failures_age_out_but_a_client_that_keeps_trying_stays_refused() -> None:
    clock = Clock()
    budget = FailureBudget(limit=2, window=60, delay=0, clock=clock)
    fail(budget), fail(budget)
    clock.now += 59
    assert budget.begin("192.0.2.1").refused  # and that attempt keeps it refused
    clock.now += 59
    assert budget.begin("192.0.2.1").refused
    clock.now += 60
    attempt = budget.begin("192.0.2.1")
    assert not attempt.refused and attempt.delay == 0


def test_attempts_still_running_count() -> None:
    """Parallel sessions cannot check more guesses at once than the budget holds."""
    budget = FailureBudget(limit=3, delay=1, clock=Clock())
    running = [budget.begin("192.0.2.1") for _ in range(3)]
    assert [a.delay for a in running] == [0, 1, 2] and not any(a.refused for a in running)
    assert budget.begin("192.0.2.1").refused
    for attempt in running:
        budget.end(attempt, failed=False)
    assert budget.begin("192.0.2.1") == Attempt("192.0.2.1", 0, refused=False)


@pytest.mark.parametrize(
    ("host", "network"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
    ],
)
def test_clients_are_addresses_or_ipv6_64s(host: str, network: str) -> None:
    assert client_network(host) == network


def test_an_ipv6_host_cannot_escape_by_changing_its_interface_id() -> None:
    budget = FailureBudget(limit=2, delay=0, clock=Clock())
    fail(budget, "2001:db8::1"), fail(budget, "2001:db8::2")
    assert budget.begin("2001:db8::ffff").refused


def test_the_table_is_bounded_and_forgets() -> None:
    clock = Clock()
    budget = FailureBudget(limit=2, window=60, delay=0, max_clients=100, clock=clock)
    for n in range(1000):  # one failure each from a thousand addresses
        fail(budget, f"10.0.{n // 256}.{n % 256}")
    assert len(budget) == 100
    fail(budget, "10.0.3.231")
    assert budget.begin("10.0.3.231").refused  # the most recent are the ones kept
    clock.now += 61
    fail(budget, "192.0.2.1")
    assert len(budget) == 1
    succeeded = budget.begin("192.0.2.2")
    budget.end(succeeded, failed=False)
    assert len(budget) == 1  # a client with nothing against it is not kept


def test_an_attempt_ending_after_its_client_was_forgotten_still_counts() -> None:
    clock = Clock()
    budget = FailureBudget(limit=1, window=60, delay=0, clock=clock)
    attempt = budget.begin("192.0.2.1")
    clock.now += 61
    budget.begin("192.0.2.9")  # forgets 192.0.2.1
    budget.end(attempt, failed=True)
    assert budget.begin("192.0.2.1").refused


def test_bad_budgets_are_refused() -> None:
    for bad in ({"limit": 0}, {"window": 0}, {"delay": -1}):
        with pytest.raises(ValueError, match="must be positive"):
            FailureBudget(**bad)  # type: ignore[arg-type]


# -- AUTH over 127.0.0.1, the serve handlers in this process -------------------------


@contextlib.contextmanager
def running_server(handler: AsyncHandler, **config: Any) -> Iterator[tuple[str, int]]:
    """The asyncio adapter serving ``handler`` on 127.0.0.1, AUTH allowed without TLS (the keys are what matter)."""
    auth = smtpwire.Auth(require_tls=False)
    options = ServerOptions(
        config=smtpwire.ServerConfig(hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, auth), **config)
    )
    with running("asyncio", handler, options) as server:
        yield server.address


def accounts(budget: FailureBudget, **options: Any) -> _authfile.Accounts:
    return _authfile.Accounts({USER: smtpwire.scram_credentials(PASSWORD)}, budget=budget, **options)


def plain(client: smtplib.SMTP, user: str, password: str, authzid: str = "") -> tuple[int, bytes]:
    blob = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
    return client.docmd("AUTH", f"PLAIN {blob}")


def client(address: tuple[str, int]) -> smtplib.SMTP:
    smtp = smtplib.SMTP(*address, timeout=TIMEOUT)
    smtp.ehlo("client.example")
    return smtp


def scram_attempt(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    first = base64.b64encode(scram.get_client_first().encode()).decode()
    code, server_first = smtp.docmd("AUTH", f"SCRAM-SHA-256 {first}")
    if code != 334:
        return code, server_first
    scram.set_server_first(base64.b64decode(server_first).decode())
    code, server_final = smtp.docmd(base64.b64encode(scram.get_client_final().encode()).decode())
    if code != 334:
        return code, server_final
    return smtp.docmd("")


def test_guessing_across_sessions_runs_out_of_budget(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11 (4): failures were counted per session only; a new session started afresh."""
    caplog.set_level(logging.INFO, logger="smtpwire.serve")
    handler = SinkHandler(accounts(FailureBudget(limit=4, delay=0)))
    with running_server(handler) as address:
        for _ in range(2):  # two sessions of two wrong passwords each
            with client(address) as smtp:
                assert plain(smtp, USER, "guess") == INVALID
                assert plain(smtp, "nobody", "guess") == INVALID
        with client(address) as smtp:
            assert plain(smtp, USER, PASSWORD) == REFUSED  # even the right one: it is not checked
            assert scram_attempt(smtp, USER, PASSWORD) == REFUSED  # nor is SCRAM's salt given out
            assert smtp.noop()[0] == 250
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].startswith("AUTH from 127.0.0.1 refused: 4 failed")


def test_scram_guesses_count_and_a_right_proof_does_not() -> None:
    budget = FailureBudget(limit=3, delay=0)
    with running_server(SinkHandler(accounts(budget))) as address:
        with client(address) as smtp:
            assert scram_attempt(smtp, USER, PASSWORD) == (235, b"2.7.0 Authentication successful")
        with client(address) as smtp:
            assert scram_attempt(smtp, USER, "guess") == INVALID
            assert scram_attempt(smtp, "nobody", "guess") == INVALID
        first = base64.b64encode(b"n,,n=alice,r=abc").decode()
        with contextlib.closing(client(address)) as smtp:  # a client that takes the salt and leaves made no guess
            assert smtp.docmd("AUTH", f"SCRAM-SHA-256 {first}")[0] == 334
        with client(address) as smtp:
            assert smtp.docmd("AUTH", f"SCRAM-SHA-256 {first}")[0] == 334
            assert smtp.docmd("*") == (501, b"5.7.0 Authentication cancelled")  # nor one that cancels
            assert scram_attempt(smtp, USER, "guess") == INVALID  # the third failure
        with client(address) as smtp:
            assert scram_attempt(smtp, USER, PASSWORD) == REFUSED
    assert len(budget) == 1


def test_delays_grow_and_do_not_hold_up_other_sessions() -> None:
    delay = 0.3
    handler = SinkHandler(accounts(FailureBudget(limit=10, delay=delay)))
    with (
        running_server(handler, max_auth_failures=10) as address,
        client(address) as guesser,
        client(address) as bystander,
    ):
        took = []
        for _ in range(3):
            start = time.monotonic()
            assert plain(guesser, USER, "guess") == INVALID
            took.append(time.monotonic() - start)
        assert took[0] < delay and delay <= took[1] < 2 * delay and 2 * delay <= took[2]
        blob = base64.b64encode(f"\0{USER}\0guess".encode())
        guesser.send(b"AUTH PLAIN " + blob + b"\r\n")  # waits 4 * delay before it is checked
        start = time.monotonic()
        for _ in range(5):
            assert bystander.noop()[0] == 250
        assert time.monotonic() - start < delay  # the loop was free meanwhile
        assert guesser.getreply() == INVALID and time.monotonic() - start >= 3 * delay


def test_pbkdf2_runs_in_threads_of_its_own_so_guessing_cannot_starve_delivery(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """anyio.to_thread's 40 threads are the Maildir's; checks that held them all stopped every delivery."""
    release = threading.Event()
    lock = threading.Lock()
    active, most = 0, 0

    def slow_verify(self: smtpwire.ScramCredentials, password: str) -> bool:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        release.wait(TIMEOUT)
        with lock:
            active -= 1
        return False

    monkeypatch.setattr(smtpwire.ScramCredentials, "verify", slow_verify)
    handler = MaildirHandler(Maildir(str(tmp_path / "maildir")), "mx.test", accounts(FailureBudget(limit=100, delay=0)))
    blob = base64.b64encode(f"\0{USER}\0guess".encode())
    guessers: list[smtplib.SMTP] = []
    try:
        with running_server(handler) as address:
            for _ in range(45):
                smtp = client(address)
                smtp.send(b"AUTH PLAIN " + blob + b"\r\n")
                guessers.append(smtp)
            time.sleep(1)  # every check has begun or is queued
            with smtplib.SMTP(*address, timeout=5) as sender:  # well before the checks give up
                assert sender.sendmail("a@example.org", ["b@example.net"], MESSAGE) == {}
            assert len(list((tmp_path / "maildir" / "new").iterdir())) == 1
            assert most == _authfile.PBKDF2_THREADS  # a bounded pool
            release.set()
            assert all(smtp.getreply() == INVALID for smtp in guessers)
    finally:
        release.set()
        for smtp in guessers:
            smtp.close()


def test_plain_and_login_cost_the_same_for_unknown_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown user, or one refused the authzid, runs PBKDF2 with the usual count, and gets the same 535."""
    counts: list[int] = []
    pbkdf2 = hashlib.pbkdf2_hmac

    def counted(name: str, password: bytes, salt: bytes, iterations: int, *args: Any) -> bytes:
        counts.append(iterations)
        return pbkdf2(name, password, salt, iterations, *args)

    users = {USER: smtpwire.scram_credentials(PASSWORD, iterations=5000)}
    handler = SinkHandler(_authfile.Accounts(users, budget=FailureBudget(limit=100, delay=0)))
    with running_server(handler, max_auth_failures=10) as address, client(address) as smtp:
        monkeypatch.setattr(hashlib, "pbkdf2_hmac", counted)
        replies = [
            plain(smtp, USER, "guess"),
            plain(smtp, "nobody", "guess"),
            plain(smtp, USER, PASSWORD, authzid="bob"),
            plain(smtp, "a\u00e9\u0300b", "guess"),  # no such user, and not even SASLprep-normal
        ]
        malformed = plain(smtp, "a\x7fb", "guess")  # a control character: refused by the name alone
    assert replies == [INVALID] * 4 and counts == [5000] * 4
    assert malformed == (501, b"5.5.2 Malformed authentication response")


# -- smtpwire serve: salts of unknown users, the budget's options ---------------------


def salt_of(server: Serve, client_first: str) -> bytes:
    with starttls(server) as smtp:
        code, server_first = smtp.docmd("AUTH", "SCRAM-SHA-256 " + base64.b64encode(client_first.encode()).decode())
        assert code == 334
        smtp.docmd("*")
    attributes = dict(item.split("=", 1) for item in base64.b64decode(server_first).decode().split(","))
    return f"{attributes['s']},{attributes['i']}".encode()


@pytest.fixture
def auth_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "users"
    _authfile.set_user(path, USER, smtpwire.scram_credentials(PASSWORD))
    return str(path)


def test_serve_answers_unknown_users_like_real_ones_across_restarts(tls_files: list[str], auth_file: str) -> None:
    """Issue 11 (2): a real user's salt depended on the authzid; an unknown user's changed with every start."""
    salts = []
    for _ in range(2):  # a restart
        with serve(*tls_files, "--auth-file", auth_file, "--sink") as server:
            salts.append(
                {
                    f"{user} {authz}": salt_of(server, f"n,{authz},n={user},r=x")
                    for user in (USER, "nobody")
                    for authz in ("", "a=root")
                }
            )
    before, after = salts
    assert before == after
    assert before[f"{USER} "] == before[f"{USER} a=root"]
    assert before["nobody "] == before["nobody a=root"]
    assert before["nobody "].endswith(b",4096") and before["nobody "] != before[f"{USER} "]


def test_serve_workers_give_an_unknown_user_one_salt(tls_files: list[str], auth_file: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    options = ["--listen", f"127.0.0.1:{port}", "--hostname", "mx.test", "--sink", "--workers", "2"]
    server = Serve([*options, *tls_files, "--auth-file", auth_file])
    try:
        server.wait_for(r"smtpwire serving on")  # the second worker is up too
        salts = {salt_of(server, "n,,n=nobody,r=x") for _ in range(12)}  # both workers, all but surely
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert len(salts) == 1


def test_serve_makes_the_salt_key_of_an_auth_file_written_by_hand(
    tmp_path: pathlib.Path, tls_files: list[str], auth_file: str
) -> None:
    key_file = pathlib.Path(auth_file + ".saltkey")
    key_file.unlink()
    with serve(*tls_files, "--auth-file", auth_file, "--sink") as server:
        assert any(f"created {key_file}: the secret key of unknown users' SCRAM salts" in line for line in server.log)
        salt = salt_of(server, "n,,n=nobody,r=x")
    with serve(*tls_files, "--auth-file", auth_file, "--sink") as server:
        assert not any("created" in line for line in server.log)
        assert salt_of(server, "n,,n=nobody,r=x") == salt


def test_serve_budget_options_and_the_refusal_on_the_wire(tls_files: list[str], auth_file: str) -> None:
    options = ("--auth-failure-limit", "2", "--auth-failure-delay", "0", "--auth-failure-window", "60")
    with serve(*tls_files, "--auth-file", auth_file, "--sink", *options) as server:
        for _ in range(2):
            with starttls(server) as smtp:
                assert plain(smtp, USER, "guess") == INVALID
        with starttls(server) as smtp:
            assert plain(smtp, USER, PASSWORD) == REFUSED
        line = server.wait_for(r"AUTH from \S+ refused: .*").string
    assert re.search(r"WARNING smtpwire\.serve: AUTH from 127\.0\.0\.1 refused: 2 failed or running attempts", line)
