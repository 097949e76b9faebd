"""postgrey, the greylisting policy server Postfix users run, asked by the async policy handler.

postgrey (the Debian package) is started by the test on 127.0.0.1 with a
throwaway database, a 2-second delay and empty whitelists, in its own
process group, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

import smtpwire
from smtpwire_handler import AsyncMaildirStore, Maildir, ServerOptions
from smtpwire_handler._policy import AsyncPolicyHandler, PolicyService
from tests.servers import running
from tests.test_maildir import stored

POSTGREY = shutil.which("postgrey") or shutil.which("postgrey", path="/usr/sbin")
pytestmark = pytest.mark.skipif(POSTGREY is None, reason="postgrey is not installed (apt-get install postgrey)")

DELAY = 2
START_TIMEOUT = 15.0
TIMEOUT = 10
CONFIG = smtpwire.ServerConfig(hostname="mx.test")
MESSAGE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: greylisted\r\n\r\nHello again.\r\n"
#: What postgrey 1.37 answers a new triplet, with the 4.2.0 it adds for a client that sends etrn_domain (Postfix).
GREYLISTED = b"450 4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/example.net.html"
TRACE = re.compile(rb"Return-Path: <[^>]*>\r\nReceived: [^\r\n]+\r\n(?:[ \t][^\r\n]*\r\n)*")
X_GREYLIST = re.compile(rb"X-Greylist: delayed (\d+) seconds by postgrey-[\d.]+ at \S+; [^\r\n]+\r\n")


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port: int = listener.getsockname()[1]
        return port


def wait_until_listening(process: subprocess.Popen[bytes], port: int, log: pathlib.Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"postgrey exited: {log.read_text(errors='replace')}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise AssertionError(f"postgrey did not listen within {START_TIMEOUT} s: {log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to postgrey's process group, then SIGKILL if it is still there after 5 seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextlib.contextmanager
def postgrey(directory: pathlib.Path) -> Iterator[str]:
    """postgrey on a free port of 127.0.0.1, its database in ``directory``; yields its policy service address."""
    assert POSTGREY is not None
    directory.mkdir()
    clients, recipients = directory / "whitelist_clients", directory / "whitelist_recipients"
    clients.write_text("")
    recipients.write_text("")
    port = free_port()
    log = directory / "postgrey.log"
    command = [
        POSTGREY,
        f"--inet=127.0.0.1:{port}",
        f"--dbdir={directory}",
        f"--delay={DELAY}",
        "--user=root",
        "--group=root",
        "--auto-whitelist-clients=0",
        f"--whitelist-clients={clients}",
        f"--whitelist-recipients={recipients}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_listening(process, port, log)
        yield f"inet:127.0.0.1:{port}"
    finally:
        stop(process)


def attempt(address: tuple[str, int]) -> tuple[bytes, bytes | None]:
    """One session's MAIL, RCPT and (if RCPT passed) DATA: the RCPT reply and the end-of-data reply."""
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        assert client.mail("alice@example.org")[0] == 250
        code, text = client.rcpt("bob@example.net")
        if code != 250:
            return b"%d %s" % (code, text), None
        data_code, data_text = client.data(MESSAGE)
        return b"%d %s" % (code, text), b"%d %s" % (data_code, data_text)


@pytest.mark.parametrize("kind", ["asyncio", "anyio-trio"])
def test_postgrey_defers_the_first_attempt_and_its_header_tops_the_retry(kind: str, tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    with postgrey(tmp_path / "postgrey") as address:
        handler = AsyncPolicyHandler(AsyncMaildirStore(maildir), PolicyService(address, timeout=5))
        with running(kind, handler, ServerOptions(config=CONFIG)) as server:
            first = time.monotonic()
            assert attempt(server.address) == (GREYLISTED, None)
            assert attempt(server.address) == (GREYLISTED, None)  # too early
            time.sleep(max(0.0, first + DELAY + 0.5 - time.monotonic()))
            rcpt, data = attempt(server.address)
    assert rcpt.startswith(b"250 ") and data == b"250 2.0.0 OK"
    [message] = stored(Maildir(maildir))
    trace = TRACE.match(message)
    assert trace is not None, message[:300]
    header = X_GREYLIST.match(message, trace.end())
    assert header is not None, message[:500]
    assert DELAY <= int(header[1]) <= DELAY + 3
    assert message[header.end() :] == MESSAGE
