"""``serve --workers``: a worker that dies is replaced (later each time it dies young), signals reach every worker,
and a worker that cannot start stops the server rather than being restarted forever."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pathlib
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from typing import cast

import pytest

from smtpwire_serve import _workers
from tests.test_cli import SERVING, Serve
from tests.test_interop import MESSAGE, TIMEOUT
from tests.test_serve_ops import tls_session, write_leaf

#: Connections made while a worker is being replaced, and after.
CONNECTIONS = 12


def children_of(parent: int) -> set[int]:
    """The worker processes of ``parent``: its children that run multiprocessing's spawn entry point."""
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # ended while we looked
            continue
        parent_pid = int(stat.rpartition(")")[2].split()[1])
        if parent_pid == parent and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


def workers_of(server: Serve, count: int) -> set[int]:
    """The pids of ``count`` workers of ``server``, once there are that many (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        pids = children_of(server.process.pid)
        if len(pids) == count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"serve never had {count} workers: {children_of(server.process.pid)}")


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def two_workers(tmp_path: pathlib.Path) -> Iterator[tuple[Serve, int]]:
    """``serve --workers 2`` into a Maildir, with a certificate to reload, both workers serving; and its port."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_leaf(cert, key)
    port = free_port()
    maildir = ["--maildir", str(tmp_path / "maildir")]
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    server = Serve(["--listen", f"127.0.0.1:{port}", *maildir, "--workers", "2", *tls])
    try:
        server.wait_for(SERVING.pattern)  # the second worker is up too
        yield server, port
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(TIMEOUT)


def send_messages(port: int, count: int) -> None:
    for _ in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)


def delivered_by(tmp_path: pathlib.Path) -> list[int]:
    """The pid of the worker that stored each message (Maildir names carry it)."""
    names = [path.name for path in (tmp_path / "maildir" / "new").iterdir()]
    return [int(re.search(r"P(\d+)Q", name)[1]) for name in names]  # type: ignore[index]


def test_a_killed_worker_is_replaced_and_every_connection_is_served(tmp_path: pathlib.Path) -> None:
    with two_workers(tmp_path) as (server, port):
        first = workers_of(server, 2)
        victim, survivor = sorted(first)
        os.kill(victim, signal.SIGKILL)
        died = server.wait_for(r"WARNING smtpwire\.serve: worker (\d) of 2 died \(signal 9 SIGKILL\).*")
        number = died[1]
        assert died[0].endswith("; starting a new one in 1 s")  # it ran less than 10 s: the first pause
        send_messages(port, CONNECTIONS)  # while it is replaced: the other worker serves every one
        server.wait_for(rf"smtpwire serving on .*; worker {number} of 2")
        now = workers_of(server, 2)
        assert survivor in now and victim not in now
        (replacement,) = now - {survivor}
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        renewed = write_leaf(cert, key)
        server.process.send_signal(signal.SIGHUP)
        for _ in range(2):  # the survivor and the replacement
            server.wait_for(rf"SIGHUP: reloaded the TLS certificate {cert} \(SHA-256 fingerprint {renewed}\)")
        for _ in range(8):
            client, shown = tls_session(("127.0.0.1", port))
            client.close()
            assert shown == renewed
        assert len(delivered_by(tmp_path)) == CONNECTIONS  # every connection while the worker was replaced
        for _ in range(4 * CONNECTIONS):  # SO_REUSEPORT spreads them: some reach the replacement (bounded)
            send_messages(port, 1)
            if replacement in delivered_by(tmp_path):
                break
        assert replacement in delivered_by(tmp_path)
        assert server.stop() == 0
        assert not any(pathlib.Path(f"/proc/{pid}").exists() for pid in now)  # the parent waited for both
    output = server.output()
    assert output.count("starting a new one") == 1
    assert "SIGTERM: shutting down" in output


def test_a_worker_that_keeps_dying_young_waits_longer_each_time(tmp_path: pathlib.Path) -> None:
    with two_workers(tmp_path) as (server, port):
        survivor, victim = sorted(workers_of(server, 2))
        pauses, numbers = [], []
        for _ in range(2):  # the worker, then its replacement: the same number dies twice
            os.kill(victim, signal.SIGKILL)
            died = server.wait_for(r"worker (\d) of 2 died \(signal 9 SIGKILL\) [\d.]+ s after it started; .*")
            pauses.append(died[0].rpartition("starting a new one in ")[2])
            numbers.append(died[1])
            server.wait_for(rf"smtpwire serving on .*; worker {died[1]} of 2")
            (victim,) = workers_of(server, 2) - {survivor}
        assert pauses == ["1 s", "2 s"]
        assert numbers[0] == numbers[1]
        send_messages(port, 2)
        assert server.stop() == 0


def test_a_worker_that_cannot_start_stops_the_server() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:  # no SO_REUSEPORT: the workers cannot share it
        port = taken.getsockname()[1]
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpwire_serve",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--sink",
                "--workers",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, output = process.communicate(timeout=TIMEOUT)
        finally:
            process.kill()
            process.wait(TIMEOUT)
    assert process.returncode == 1
    assert re.search(r"ERROR smtpwire\.serve: worker \d of 2 could not start \(exit status 1\); stopping every", output)
    assert "address already in use" in output.lower()
    assert "starting a new one" not in output


class FakeProcess:
    pid = None


@pytest.mark.parametrize(
    ("ages", "expected"),
    [
        ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 4.0, 8.0]),  # dying young: 1 s, doubled each time
        ([1.0] * 8, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]),  # up to 60 s
        ([1.0, 1.0, 11.0, 1.0], [1.0, 2.0, 0.0, 1.0]),  # a run of 10 s and more: at once, and the pause reset
    ],
)
def test_the_pause_before_a_restart(ages: list[float], expected: list[float]) -> None:
    supervisor = _workers.Supervisor(lambda: None, (), 1)
    pauses = []
    for age in ages:
        process = cast(BaseProcess, FakeProcess())
        worker = _workers.Worker(1, process, None, started=time.monotonic() - age)
        pauses.append(supervisor.restart_delay(worker))
    assert pauses == expected


def test_cause_names_the_signal_or_the_status() -> None:
    assert _workers.cause(-9) == "signal 9 SIGKILL"
    assert _workers.cause(1) == "exit status 1"
    assert _workers.cause(-200) == "signal 200"


def test_a_worker_reports_serving_once_from_its_log() -> None:
    ready, told = multiprocessing.Pipe(duplex=False)
    report = _workers.ServingReport(told)
    logger = logging.getLogger("smtpwire.serve.test-report")
    logger.addFilter(report)
    logger.setLevel(logging.INFO)  # as serve's logging is configured
    try:
        logger.info("something else")
        assert not ready.poll(0)
        logger.info("smtpwire serving on %s; %s; %s", "127.0.0.1:25", "SMTP", "asyncio")
        assert ready.poll(TIMEOUT)
        assert ready.recv_bytes() == b"serving"
        logger.info("smtpwire serving on %s; %s; %s", "127.0.0.1:25", "SMTP", "asyncio")
        assert ready.poll(TIMEOUT)
        with pytest.raises(EOFError):  # said once, then the pipe is closed
            ready.recv_bytes()
    finally:
        logger.removeFilter(report)
        logger.setLevel(logging.NOTSET)
        ready.close()


class UnstartableProcess:
    """A process the system cannot start (out of processes, say)."""

    def __init__(self, **kwargs: object) -> None:
        pass

    def start(self) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")


def test_a_worker_the_system_cannot_start_is_tried_again_later(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = _workers.Supervisor(lambda: None, (), 2)
    monkeypatch.setattr(supervisor.context, "Process", UnstartableProcess)
    before = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="smtpwire.serve"):
        supervisor.start(2)
        supervisor.start(2)
    assert supervisor.workers == {}
    assert 2.0 <= supervisor.restarts[2] - before <= 2.0 + TIMEOUT  # the second try: 1 s doubled
    assert caplog.messages == [
        f"cannot start worker 2 of 2: [Errno 11] Resource temporarily unavailable; trying again in {pause} s"
        for pause in (1, 2)
    ]
