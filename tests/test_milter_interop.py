"""Real milters and a real policy server behind ``smtpwire serve``, end to end over SMTP into the Maildir.

rspamd (its proxy worker in milter mode, in front of a scanning worker),
OpenDKIM signing and postgrey greylisting are the Debian packages, each
started here on 127.0.0.1 with a throwaway configuration in its own process
group; three scripted milters that break in the ways real ones do (silent,
gone mid-body, garbage) show each default action of ``--milter-default-action``.
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
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import dkim  # type: ignore[import-untyped]
import pytest

from tests.dnszone import Zone
from tests.test_cli import serve, stored
from tests.test_opendkim_interop import GENKEY, KEY_NAME, OPENDKIM, folder, key_record, opendkim, verify
from tests.test_policy_interop import DELAY, GREYLISTED, POSTGREY, TRACE, X_GREYLIST, attempt, free_port, postgrey
from tests.test_policy_interop import MESSAGE as GREYLISTED_MESSAGE

__all__ = ["folder"]  # OpenDKIM's key, made once for the module by the fixture of its own tests

RSPAMD = shutil.which("rspamd")
needs_rspamd = pytest.mark.skipif(RSPAMD is None, reason="rspamd is not installed (.ci/run installs rspamd)")
needs_opendkim = pytest.mark.skipif(
    OPENDKIM is None or GENKEY is None, reason="OpenDKIM is not installed (.ci/run installs opendkim, opendkim-tools)"
)
needs_postgrey = pytest.mark.skipif(POSTGREY is None, reason="postgrey is not installed (.ci/run installs postgrey)")

TIMEOUT = 20.0
#: rspamd 3.4 takes 10-15 s to load its rules on a busy machine.
RSPAMD_START_TIMEOUT = 45.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
HEADERS = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: through a milter\r\n"
    b"Date: Sun, 06 Dec 2026 17:00:00 +0000\r\nMessage-ID: <milter-1@example.org>\r\n"
)
BODY = b"Hello through the filters.\r\nA second  line, with\tspaces \t\r\n"
CLEAN = HEADERS + b"\r\n" + BODY
SERVE_TRACE = re.compile(rb"Return-Path: <[^>]*>\r\nReceived: [^\r\n]+\r\n(?:\t[^\r\n]*\r\n)*")


def split_trace(kept: bytes) -> tuple[bytes, bytes]:
    """Serve's Return-Path and Received fields, and the rest of the stored file."""
    trace = SERVE_TRACE.match(kept)
    assert trace is not None, kept[:400]
    return trace[0], kept[trace.end() :]


def send(address: tuple[str, int], message: bytes) -> tuple[int, bytes]:
    """One message in one session: the first refusal, or the end-of-data reply."""
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        for code, text in (client.mail("alice@example.org"), client.rcpt("bob@example.net")):
            if code != 250:
                return code, text
        return client.data(message)


# -- rspamd ---------------------------------------------------------------------------------------

RSPAMD_CONFIG = """
lua = "$RULESDIR/rspamd.lua"
.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/actions.conf"
.include "$CONFDIR/groups.conf"
.include "$CONFDIR/composites.conf"
modules {{ path = "$PLUGINSDIR"; }}
options {{
  pidfile = "$RUNDIR/rspamd.pid";
  dns {{ nameserver = ["127.0.0.1:{dead_port}"]; timeout = 1s; retransmits = 1; }}
  url_tld = "$SHAREDIR/effective_tld_names.dat";
  hs_cache_dir = "$DBDIR/";
  disable_hyperscan = true;
}}
logging {{ type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{scan_port}"; count = 1; mime = true; task_timeout = 8s; }}
worker "rspamd_proxy" {{
  bind_socket = "127.0.0.1:{milter_port}";
  milter = yes;
  timeout = 30s;
  count = 1;
  upstream "local" {{ default = yes; hosts = "127.0.0.1:{scan_port}"; }}
}}
milter_headers {{
  skip_local = false;
  skip_authenticated = false;
  use = ["x-spamd-result", "x-spam-status"];
}}
"""
"""No controller, no fuzzy worker, no statistics (Bayes needs Redis) and, of the modules, only milter_headers: the
others are left unconfigured, so none asks Redis or the network; DNS goes to a port nobody listens on."""


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """rspamd in the foreground in its own process group for the module; yields its milter address."""
    assert RSPAMD is not None
    home = tmp_path_factory.mktemp("rspamd")
    scan_port, milter_port, dead_port = free_port(), free_port(), free_port()
    config = home / "rspamd.conf"
    config.write_text(RSPAMD_CONFIG.format(scan_port=scan_port, milter_port=milter_port, dead_port=dead_port))
    for name in ("local", "db", "run", "log"):
        (home / name).mkdir()
    folders = {"LOCAL_CONFDIR": "local", "DBDIR": "db", "RUNDIR": "run", "LOGDIR": "log"}
    variables = [argument for name, sub in folders.items() for argument in ("--var", f"{name}={home / sub}")]
    command = [RSPAMD, "-f", "-i", "-u", "root", "-g", "root", "-c", str(config), *variables]
    with (home / "output.log").open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_ports(process, [scan_port, milter_port], home)
        yield f"inet:127.0.0.1:{milter_port}"
    finally:
        stop_group(process)


def wait_for_ports(process: subprocess.Popen[bytes], ports: list[int], home: pathlib.Path) -> None:
    """Until both workers listen (bounded); a probe that closes at once is only logged by rspamd."""
    deadline = time.monotonic() + RSPAMD_START_TIMEOUT
    waiting = list(ports)
    while waiting and time.monotonic() < deadline:
        assert process.poll() is None, f"rspamd exited: {(home / 'output.log').read_text(errors='replace')}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", waiting[0]), timeout=1):
            waiting.pop(0)
            continue
        time.sleep(POLL_INTERVAL)
    assert not waiting, f"rspamd did not listen within {RSPAMD_START_TIMEOUT} s"


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL to it if the wait runs out."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)


@needs_rspamd
def test_rspamd_refuses_gtube_with_its_own_reply_and_nothing_is_stored(rspamd: str, tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    with serve("--milter", rspamd, "--maildir", str(maildir)) as server:
        assert send(server.address, HEADERS + b"\r\n" + GTUBE + b"\r\n") == (554, b"5.7.1 Gtube pattern")
        server.wait_for(r"milter inet:127\.0\.0\.1:\d+ refused at message: Gtube pattern")
        assert server.stop() == 0
    assert stored(maildir) == []


RSPAMD_FIELDS = {
    b"X-Spamd-Result": re.compile(rb"X-Spamd-Result: default: False \[\d+\.\d\d / 15\.00\];\r\n(?:\t[^\r\n]+\r\n)+"),
    b"X-Spam-Status": re.compile(rb"X-Spam-Status: No, score=\d+\.\d\d\r\n"),
}
"""What milter_headers adds, in an order of its own."""


@needs_rspamd
def test_rspamd_passes_a_clean_message_which_is_stored_with_its_headers(rspamd: str, tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    with serve("--milter", rspamd, "--maildir", str(maildir)) as server:
        assert send(server.address, CLEAN) == (250, b"2.0.0 OK")
        server.wait_for(r"accepted id=")
    (kept,) = stored(maildir)
    _, rest = split_trace(kept)
    assert rest.startswith(HEADERS) and rest.endswith(b"\r\n" + BODY)
    added = rest[len(HEADERS) : -len(b"\r\n" + BODY)]
    fields = re.findall(rb"[^\t\r\n][^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*", added)
    assert b"".join(fields) == added
    assert sorted(field.partition(b":")[0] for field in fields) == sorted(RSPAMD_FIELDS), added
    assert all(RSPAMD_FIELDS[field.partition(b":")[0]].fullmatch(field) for field in fields), added
    assert b"\tRCVD_COUNT_ONE(0.00)[1];\r\n" in added  # it saw the Received field serve stores


# -- OpenDKIM -------------------------------------------------------------------------------------


def published(folder: pathlib.Path) -> Zone:
    return Zone({KEY_NAME: [("TXT", key_record(folder))]})


def dkim_dns(folder: pathlib.Path) -> Callable[..., bytes]:
    """dkimpy's DNS: the key record opendkim-genkey wrote, for its name only."""
    record = key_record(folder).encode()

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return record if name.decode().rstrip(".") == KEY_NAME else b""

    return lookup


@needs_opendkim
@pytest.mark.parametrize("canonicalization", ["relaxed/relaxed", "simple/simple"])
def test_opendkim_signs_what_serve_stores_and_both_verifiers_pass_it(
    canonicalization: str, folder: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    maildir = tmp_path / "maildir"
    with (
        opendkim(folder, canonicalization) as socket_path,
        serve("--milter", f"unix:{socket_path}", "--maildir", str(maildir)) as server,
    ):
        assert send(server.address, CLEAN) == (250, b"2.0.0 OK")
        server.wait_for(r"accepted id=")
    (kept,) = stored(maildir)
    trace, rest = split_trace(kept)
    signature = re.match(rb"DKIM-Signature: ([^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*)", rest)
    assert signature is not None, rest[:800]
    assert rest[signature.end() :] == CLEAN
    tags = dict(re.findall(r"\b([a-z]+)=([^;]*)", re.sub(r"\s+", "", signature[1].decode())))
    assert [tags[name] for name in "vacds"] == ["1", "rsa-sha256", canonicalization, "example.org", "mail"]
    assert "received" not in tags["h"].lower().split(":")  # OpenDKIM's default list leaves the trace fields out
    (result,) = verify(kept, published(folder))
    assert (result.result, result.property("header.d"), result.property("header.s")) == ("pass", "example.org", "mail")
    assert dkim.verify(kept, dnsfunc=dkim_dns(folder))
    assert not dkim.verify(kept.replace(b"Hello through", b"Jello through"), dnsfunc=dkim_dns(folder))
    assert trace.startswith(b"Return-Path: <alice@example.org>\r\nReceived: from client.example ([127.0.0.1])\r\n")


# -- milters that break ---------------------------------------------------------------------------

#: A milter's reply to the option negotiation: version 6, no actions, every stage sent and answered.
OPTNEG_REPLY = struct.pack(">I", 13) + b"O" + struct.pack(">III", 6, 0, 0)
CONTINUE = struct.pack(">I", 1) + b"c"
NO_REPLY = frozenset({b"D", b"A", b"Q"})  # macros, abort and quit are not answered
MAX_PACKET = 1 << 20
MILTER_SOCKET_TIMEOUT = 5.0


class FakeMilter:
    """A scripted milter on 127.0.0.1 in a thread: ``answer(command)`` gives the reply bytes, or ``None`` to hang up.

    Every socket has a timeout and every loop ends with the peer, a timeout
    or ``close``, so no thread outlives the test by more than a few seconds.
    """

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(POLL_INTERVAL)
        self.address = f"inet:127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(MILTER_SOCKET_TIMEOUT)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            while not self.stopping.is_set():
                command = read_packet(connection)
                if command is None:
                    return
                if command in NO_REPLY:
                    continue
                reply = self.answer(command)
                if reply is None:
                    return
                connection.sendall(reply)

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(MILTER_SOCKET_TIMEOUT + 1)
        self.listener.close()


def read_packet(connection: socket.socket) -> bytes | None:
    """The command letter of the next packet (its data read and dropped); ``None`` at the end of the stream."""
    header = read_exactly(connection, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    assert 1 <= length <= MAX_PACKET, length
    packet = read_exactly(connection, length)
    return None if packet is None else packet[:1]


def read_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def silent(command: bytes) -> bytes:
    """Never answers: the client's timeout must end the wait."""
    return b""


def gone_mid_body(command: bytes) -> bytes | None:
    """A well-behaved milter until the body arrives, when it hangs up (as a crashing filter does)."""
    if command == b"O":
        return OPTNEG_REPLY
    return None if command == b"B" else CONTINUE


def garbage(command: bytes) -> bytes:
    """Speaks another protocol: its length word says 1.2 GB."""
    return b"HTTP/1.0 400 Bad Request\r\n\r\n"


TEMPFAILED = (451, b"4.7.1 Service unavailable - try again later")
REJECTED = (550, b"5.7.1 Command rejected")
MESSAGES = 3
#: Each session waits at most one --milter-timeout for a milter: a second per message at most, and some slack.
SESSIONS_WITHIN = MESSAGES * 1.0 + 6.0


@pytest.mark.parametrize("milter", [silent, gone_mid_body, garbage])
@pytest.mark.parametrize(("action", "expected"), [("tempfail", TEMPFAILED), ("reject", REJECTED), ("accept", None)])
def test_a_broken_milter_gets_its_default_action_and_nothing_acknowledged_is_lost(
    milter: Callable[[bytes], bytes | None], action: str, expected: tuple[int, bytes] | None, tmp_path: pathlib.Path
) -> None:
    maildir = tmp_path / "maildir"
    fake = FakeMilter(milter)
    try:
        args = ["--milter", fake.address, "--milter-default-action", action, "--milter-timeout", "1"]
        with serve(*args, "--maildir", str(maildir)) as server:
            started = time.monotonic()
            replies = [send(server.address, CLEAN) for _ in range(MESSAGES)]
            elapsed = time.monotonic() - started
            assert server.stop() == 0
    finally:
        fake.close()
    assert elapsed < SESSIONS_WITHIN
    assert replies == [expected or (250, b"2.0.0 OK")] * MESSAGES
    kept = stored(maildir)
    assert len(kept) == sum(code == 250 for code, _ in replies)
    assert all(split_trace(message)[1] == CLEAN for message in kept)


# -- postgrey -------------------------------------------------------------------------------------


@needs_postgrey
def test_postgrey_through_serve_defers_the_first_attempt_and_tops_the_retry(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    with (
        postgrey(tmp_path / "postgrey") as address,
        serve("--policy-service", address, "--maildir", str(maildir)) as server,
    ):
        first = time.monotonic()
        assert attempt(server.address) == (GREYLISTED, None)
        time.sleep(max(0.0, first + DELAY + 0.5 - time.monotonic()))
        rcpt, data = attempt(server.address)
        assert server.stop() == 0
    assert rcpt.startswith(b"250 ") and data == b"250 2.0.0 OK"
    (kept,) = stored(maildir)
    trace = TRACE.match(kept)
    assert trace is not None, kept[:300]
    header = X_GREYLIST.match(kept, trace.end())
    assert header is not None, kept[:500]
    assert DELAY <= int(header[1]) <= DELAY + 3
    assert kept[header.end() :] == GREYLISTED_MESSAGE
