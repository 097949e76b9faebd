"""``serve --metrics``: Prometheus counters that say exactly what happened, /livez and /readyz; a driver
without metrics pays nothing."""

from __future__ import annotations

import http.client
import pathlib
import signal
import smtplib
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from smtpwire_handler import Handler, ServerOptions
from smtpwire_handler._metrics import HOOKS, MECHANISMS, REPLY_CLASSES, VERBS, Metrics, SessionMetrics
from tests.test_cli import PASSWORD, SERVING, USER, Serve, auth_file, killed_after, plain_blob, starttls
from tests.test_driver import new_driver, run
from tests.test_interop import MESSAGE, TIMEOUT

__all__ = ["auth_file"]  # the fixture, used by name

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def scrape(port: int) -> Samples:
    status, text = get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def total(samples: Samples, name: str) -> float:
    return sum(v for (sample, _), v in samples.items() if sample == name)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (sample, labels), _ in samples.items() if sample == name}


def until(check: Any, what: str, seconds: float = 10.0) -> None:
    """Poll ``check()`` until true, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"still not {what} after {seconds} s"
        time.sleep(0.1)


@contextmanager
def metrics_server(tmp_path: pathlib.Path, *args: str, workers: int = 1) -> Iterator[tuple[Serve, int]]:
    """serve with --metrics on a free port, every worker up; the server and the metrics port."""
    port, metrics_port = free_port(), free_port()
    options = ["--listen", f"127.0.0.1:{port}", "--hostname", "mx.test", "--maildir", str(tmp_path / "maildir")]
    with killed_after(
        Serve([*options, "--metrics", f"127.0.0.1:{metrics_port}", "--workers", str(workers), *args])
    ) as s:
        for _ in range(workers - 1):
            s.wait_for(SERVING.pattern)
        yield s, metrics_port


@pytest.mark.parametrize("workers", [1, 2])
def test_the_counters_say_exactly_what_happened(
    tmp_path: pathlib.Path, tls_files: list[str], auth_file: str, workers: int
) -> None:
    options = (*tls_files, "--auth-file", auth_file, "--accept-domain", "example.org")
    with metrics_server(tmp_path, *options, workers=workers) as (server, port):
        for _ in range(3):  # several sessions: with two workers SO_REUSEPORT spreads them
            with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
                assert client.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.ehlo()
            assert client.docmd("XYZZY", "plugh")[0] == 500  # a client's verb never becomes a label
            assert client.docmd("MAIL", "FROM:<alice@example.org>")[0] == 250
            assert client.docmd("RCPT", "TO:<carol@example.net>")[0] == 550
        with starttls(server) as client:
            assert client.docmd("AUTH", f"PLAIN {plain_blob(USER, 'not ' + PASSWORD)}")[0] == 535
        until(lambda: value(scrape(port), "smtpwire_sessions_open") == 0, "every session closed")
        samples = scrape(port)
        assert server.stop() == 0

    assert value(samples, "smtpwire_sessions_total") == 5
    assert value(samples, "smtpwire_messages_accepted_total") == 3
    assert total(samples, "smtpwire_messages_refused_total") == 0
    assert value(samples, "smtpwire_message_octets_received_total") == 3 * len(MESSAGE)
    assert value(samples, "smtpwire_commands_total", verb="RCPT", **{"class": "2xx"}) == 3
    assert value(samples, "smtpwire_commands_total", verb="RCPT", **{"class": "5xx"}) == 1
    assert value(samples, "smtpwire_commands_total", verb="MAIL", **{"class": "2xx"}) == 4
    assert value(samples, "smtpwire_commands_total", verb="DATA", **{"class": "3xx"}) == 3
    assert value(samples, "smtpwire_commands_total", verb="OTHER", **{"class": "5xx"}) == 1
    assert value(samples, "smtpwire_commands_total", verb="AUTH", **{"class": "5xx"}) == 1
    assert value(samples, "smtpwire_auth_total", mechanism="PLAIN", result="failure") == 1
    assert total(samples, "smtpwire_auth_total") == 1
    assert value(samples, "smtpwire_tls_handshakes_total", result="ok") == 1
    assert value(samples, "smtpwire_tls_handshakes_total", result="failed") == 0
    assert total(samples, "smtpwire_sessions_refused_total") == 0
    assert value(samples, "smtpwire_hook_duration_seconds_count", hook="message") == 3
    assert label_values(samples, "smtpwire_commands_total", "verb") == set(VERBS)
    assert label_values(samples, "smtpwire_commands_total", "class") == set(REPLY_CLASSES)
    assert label_values(samples, "smtpwire_auth_total", "mechanism") == set(MECHANISMS)
    assert label_values(samples, "smtpwire_hook_duration_seconds_count", "hook") == set(HOOKS)


def test_connections_refused_at_admission_are_counted_by_kind(tmp_path: pathlib.Path) -> None:
    with metrics_server(tmp_path, "--max-sessions", "1") as (server, port):
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as first:
            assert first.noop()[0] == 250
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP(*server.address, timeout=TIMEOUT)
            assert refused.value.smtp_code == 421
        until(lambda: value(scrape(port), "smtpwire_sessions_refused_total", reason="too_many") == 1, "the count")
        assert total(scrape(port), "smtpwire_sessions_refused_total") == 1
        assert server.stop() == 0


def test_ready_until_the_maildir_is_unwritable_or_shutting_down(tmp_path: pathlib.Path) -> None:
    with metrics_server(tmp_path) as (server, port):
        assert get(port, "/livez") == (200, "ok\n")
        assert get(port, "/readyz") == (200, "ready\n")
        assert get(port, "/nothing")[0] == 404
        tmp = tmp_path / "maildir" / "tmp"
        tmp.rename(tmp_path / "tmp.away")
        tmp.write_bytes(b"")  # a file where the directory was: unwritable, even for root
        until(lambda: get(port, "/readyz")[0] == 503, "unready")
        assert "the Maildir is not writable" in get(port, "/readyz")[1]
        assert get(port, "/livez")[0] == 200
        tmp.unlink()
        (tmp_path / "tmp.away").rename(tmp)
        until(lambda: get(port, "/readyz")[0] == 200, "ready again")

        client = smtplib.SMTP(*server.address, timeout=TIMEOUT)
        client.ehlo()
        assert client.docmd("MAIL", "FROM:<alice@example.org>")[0] == 250  # holds the shutdown
        server.process.send_signal(signal.SIGTERM)
        server.wait_for("SIGTERM: shutting down")
        assert get(port, "/readyz") == (503, "shutting down\n")
        assert get(port, "/livez")[0] == 200
        assert client.docmd("RCPT", "TO:<bob@example.org>")[0] == 250
        assert client.data(b"body\r\n")[0] == 250
        assert client.noop()[0] == 421  # then the server closes
        client.close()
        assert server.process.wait(TIMEOUT) == 0


# -- the driver -----------------------------------------------------------------------------------

SESSION = (
    b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nhi\r\n.\r\n"
    b"BOGUS\r\nNOOP\r\nQUIT\r\n"
)


class Recorder:
    """Stands in for every SessionMetrics method: what was called, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        names = ("saw", "answered", "tls", "hook_started", "hook_ended", "closed")
        for name in names:
            monkeypatch.setattr(SessionMetrics, name, self._recording(name))
        monkeypatch.setattr(Metrics, "session", self._recording("session", SessionMetrics.__new__(SessionMetrics)))

    def _recording(self, name: str, result: object = 0.0) -> Any:
        def record(*args: object, **kwargs: object) -> object:
            self.calls.append(name)
            return result

        return record


class Hooked(Handler):
    def message(self, session: object, envelope: object) -> None:
        return None


def test_a_driver_without_metrics_calls_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    sent, _ = run(new_driver(Hooked()), SESSION)
    assert sent.count(b"\r\n250 ") >= 3 and recorder.calls == []
    run(new_driver(Hooked(), ServerOptions(metrics=Metrics())), SESSION)
    assert {"session", "saw", "answered", "hook_started", "hook_ended", "closed"} <= set(recorder.calls)


def test_a_driver_counts_into_the_fixed_series() -> None:
    metrics = Metrics()
    run(new_driver(Hooked(), ServerOptions(metrics=metrics)), SESSION)
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
    }
    assert value(samples, "smtpwire_commands_total", verb="OTHER", **{"class": "5xx"}) == 1
    assert value(samples, "smtpwire_commands_total", verb="NOOP", **{"class": "2xx"}) == 1
    assert value(samples, "smtpwire_commands_total", verb="QUIT", **{"class": "2xx"}) == 1
    assert value(samples, "smtpwire_messages_accepted_total") == 1
    assert value(samples, "smtpwire_message_octets_received_total") == len(b"hi\r\n")
    assert value(samples, "smtpwire_hook_duration_seconds_count", hook="message") == 1
    assert value(samples, "smtpwire_sessions_open") == 0
    assert label_values(samples, "smtpwire_commands_total", "verb") == set(VERBS)


def test_readiness_counts_the_spool_against_its_limit(tmp_path: pathlib.Path) -> None:
    from smtpwire_serve._observe import SpoolWithin

    queue = tmp_path / "spool" / "queue"
    queue.mkdir(parents=True)
    for name in ("msg_1", "msg_1.json", "msg_2", "msg_3"):  # three messages, one with its retry state
        (queue / name).write_bytes(b"x")
    clock = [0.0]
    check = SpoolWithin(str(tmp_path / "spool"), 2, clock=lambda: clock[0])
    assert check() == "the spool holds 3 messages, over 2"
    (queue / "msg_3").unlink()
    assert check() is not None  # counted again only after a while
    clock[0] += 10
    assert check() is None
    assert SpoolWithin(str(tmp_path / "nowhere"), 2)() is not None  # a spool that cannot be read is not ready
