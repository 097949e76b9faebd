"""Replay the fuzz corpus through the fuzz target's ``TestOneInput`` (no atheris needed).

Seeds named ``regress-*`` reproduce bugs the fuzzer found (a long EHLO name
made ``accept()`` raise; a non-ASCII verb upper-cased into STARTTLS).
"""

from __future__ import annotations

import pathlib

import pytest

import smtpwire
from tests.fuzzing import load_target

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus"


target = load_target("fuzz_connection")
SEEDS = sorted(path for path in CORPUS.iterdir() if path.is_file())


def test_the_corpus_is_there() -> None:
    assert len(SEEDS) >= 15


def test_named_seeds_match_the_target() -> None:
    """The corpus holds the seeds the target writes (rewrite them with --write-seeds)."""
    assert set(target.SEEDS) <= {path.name for path in SEEDS}
    for name, data in target.SEEDS.items():
        assert (CORPUS / name).read_bytes() == data, name


@pytest.mark.parametrize("path", SEEDS, ids=[p.name for p in SEEDS])
def test_seed_replays_cleanly(path: pathlib.Path) -> None:
    target.TestOneInput(path.read_bytes())


def test_seeds_reach_deep_states() -> None:
    """The harness is not vacuous: the seeds reach the events the invariants are about."""
    seen: set[str] = set()
    for path in SEEDS:
        seen.update(target.Harness(path.read_bytes()).run().seen)
    assert {
        "EndOfMessage",
        "MessageRejected",
        "StartTLSRequested",
        "CommandRejected",
        "Vrfy",
        "Help",
        "Quit",
        "AuthCredentials",
        "CredentialsLookup",
        "Authenticated",
    } <= seen


def test_empty_and_garbage_inputs() -> None:
    for data in (b"", b"\x00", b"\xff" * 64, bytes(range(256)) * 4):
        target.TestOneInput(data)


# -- the oracles bite: each breaks the core on purpose and expects the seed to fail --


def test_smuggling_oracle_catches_a_missed_bare_lf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("smtpwire._dotreader.DotReader._check_line_endings", lambda self, region: None)
    with pytest.raises(AssertionError, match="EndOfMessage"):
        target.TestOneInput((CORPUS / "smuggle-lf-dot-lf").read_bytes())


def test_starttls_oracle_catches_executed_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("smtpwire._receivebuffer.ReceiveBuffer.clear", lambda self: None)
    with pytest.raises(AssertionError):
        target.TestOneInput((CORPUS / "starttls-injected-noop").read_bytes())


def test_output_oracle_catches_a_malformed_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtpwire.Reply, "to_bytes", lambda self, enhanced_codes=True: b"250 OK\n")
    with pytest.raises(AssertionError, match="malformed output"):
        target.TestOneInput((CORPUS / "session-basic").read_bytes())


def test_dot_unstuffing_oracle_catches_a_kept_dot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("smtpwire._dotreader._LINE_DOT", b"\r\n.\r\n")
    with pytest.raises(AssertionError):
        target.TestOneInput((CORPUS / "data-dot-stuffed-split").read_bytes())


def test_auth_oracle_catches_a_missing_421_at_the_failure_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    def count_without_closing(self: smtpwire.ServerConnection) -> None:
        self._auth_over()
        self._auth_failures += 1

    monkeypatch.setattr(smtpwire.ServerConnection, "_count_auth_failure", count_without_closing)
    with pytest.raises(AssertionError):
        target.TestOneInput((CORPUS / "auth-failure-limit-421").read_bytes())


def test_auth_oracle_catches_authentication_kept_over_starttls(monkeypatch: pytest.MonkeyPatch) -> None:
    established = smtpwire.ServerConnection.tls_established

    def keep_authentication(self: smtpwire.ServerConnection) -> None:
        authenticated = self._authenticated
        established(self)
        self._authenticated = authenticated

    monkeypatch.setattr(smtpwire.ServerConnection, "tls_established", keep_authentication)
    with pytest.raises(AssertionError):
        target.TestOneInput((CORPUS / "auth-forgotten-after-starttls").read_bytes())
