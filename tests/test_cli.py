"""``smtpwire serve`` as a user runs it: a subprocess, real clients, files in the Maildir."""

from __future__ import annotations

import pathlib
import queue
import re
import resource
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests import certs
from tests.test_interop import MESSAGE, TIMEOUT, need

SERVING = re.compile(r"smtpwire serving on (\S+?):(\d+)")


class Serve:
    """A running ``python -m smtpwire_anyio serve``, its log and its address."""

    def __init__(self, args: list[str], preexec: Callable[[], None] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtpwire_anyio", "serve", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.address = self._address()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no log line matching {pattern!r} in:\n{''.join(self.log)}") from None
            self.log.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def _address(self) -> tuple[str, int]:
        match = self.wait_for(SERVING.pattern)
        return match[1], int(match[2])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(TIMEOUT)


@contextmanager
def serve(*args: str, preexec: Callable[[], None] | None = None) -> Iterator[Serve]:
    server = Serve(["--listen", "127.0.0.1:0", "--hostname", "mx.test", *args], preexec)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(TIMEOUT)


@pytest.fixture
def tls_files(tmp_path: pathlib.Path) -> list[str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf = certs.server_certificate()
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def stored(maildir: pathlib.Path) -> list[bytes]:
    assert not list((maildir / "tmp").iterdir()), "a temporary file was left behind"
    return [path.read_bytes() for path in sorted((maildir / "new").iterdir())]


def split_trace(message: bytes) -> tuple[str, bytes]:
    """The Return-Path and Received headers the server prepended, and the message as sent."""
    match = re.match(rb"(Return-Path: [^\r\n]*\r\nReceived: [^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*)", message)
    assert match, message[:300]
    return match[1].decode(), message[match.end() :]


def test_starttls_message_lands_byte_exact_with_trace_headers(tmp_path: pathlib.Path, tls_files: list[str]) -> None:
    maildir = tmp_path / "maildir"
    with serve(*tls_files, "--maildir", str(maildir)) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.starttls(context=certs.client_context())
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> to=<bob@example.net> .* tls=TLSv1\.[23]/")
        assert server.stop() == 0
    (message,) = stored(maildir)
    trace, body = split_trace(message)
    assert body == MESSAGE
    assert trace.startswith("Return-Path: <alice@example.org>\r\nReceived: from [127.0.0.1] ([127.0.0.1])\r\n")
    assert re.search(r"\tby mx\.test \(smtpwire\) with ESMTPS id \w+\r\n", trace)
    assert re.search(r"\t\(using TLSv1\.[23] with cipher \S+ \(\d+ bits\)\)\r\n\tfor <bob@example\.net>; ", trace)


def test_plain_session_says_esmtp_and_swaks_over_starttls_says_esmtps(
    tmp_path: pathlib.Path, tls_files: list[str]
) -> None:
    maildir = tmp_path / "maildir"
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE.removesuffix(b"\r\n"))
    with serve(*tls_files, "--maildir", str(maildir)) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"], MESSAGE)
        subprocess.run(
            [
                *(need("swaks"), "--server", server.address[0], "--port", str(server.address[1])),
                *("--from", "swaks@example.org", "--to", "bob@example.net", "--ehlo", "swaks.example"),
                *("--tls", "--tls-verify", "--tls-ca-path", certs.write_ca(str(tmp_path)), "--tls-sni", "localhost"),
                *("--data", str(data)),
            ],
            check=True,
            capture_output=True,
            timeout=TIMEOUT * 2,
        )
        server.wait_for(r"accepted id=\w+ from=<swaks@example.org>")
    traces = dict(split_trace(message) for message in stored(maildir))
    assert list(traces.values()) == [MESSAGE, MESSAGE]
    plain, swaks = sorted(traces, key=lambda trace: "swaks" in trace)
    assert " with ESMTP id " in plain and "\tfor <" not in plain  # two recipients: no "for" clause
    assert "Received: from swaks.example " in swaks and " with ESMTPS id " in swaks


def test_sink_accepts_and_stores_nothing(tmp_path: pathlib.Path) -> None:
    with serve("--sink", "--maildir", str(tmp_path / "unused")) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            assert client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE) == {}
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> .* discarded")
    assert not (tmp_path / "unused").exists()


def test_sigkill_never_loses_an_acknowledged_message(tmp_path: pathlib.Path) -> None:
    """Every message that got its 250 is whole in new/, however abruptly the server dies."""
    maildir = tmp_path / "maildir"
    acknowledged: list[bytes] = []
    with serve("--maildir", str(maildir)) as server:
        killer = threading.Timer(0.0, lambda: None)
        try:
            with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
                for number in range(100_000):
                    body = MESSAGE + b"message %d\r\n" % number + b"x" * (number % 5000) + b"\r\n"
                    client.sendmail("alice@example.org", ["bob@example.net"], body)
                    acknowledged.append(body)
                    if number == 40:
                        killer = threading.Timer(0.05, server.process.kill)
                        killer.start()
        except (smtplib.SMTPException, OSError):
            pass  # the server died under the client
        finally:
            killer.join()
    assert server.process.returncode == -signal.SIGKILL
    assert len(acknowledged) > 40
    bodies = {split_trace(path.read_bytes())[1] for path in (maildir / "new").iterdir()}
    missing = [body[-40:] for body in acknowledged if body not in bodies]
    assert missing == []
    assert bodies <= {*acknowledged, *_maybe_unacknowledged(acknowledged)}


def _maybe_unacknowledged(acknowledged: list[bytes]) -> set[bytes]:
    """The one message in flight when the server died may be stored without its 250 having arrived."""
    number = len(acknowledged)
    return {MESSAGE + b"message %d\r\n" % number + b"x" * (number % 5000) + b"\r\n"}


def limit_file_size() -> None:
    """A disk that fills up: files over 64 KiB cannot be written (EFBIG)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_full_disk_is_never_acknowledged(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 300
    with (
        serve("--maildir", str(maildir), preexec=limit_file_size) as server,
        smtplib.SMTP(*server.address, timeout=TIMEOUT) as client,
    ):
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@example.org", ["bob@example.net"], big)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (452, b"4.3.1 Insufficient system storage")
        assert client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE) == {}  # small still fits
    assert [split_trace(m)[1] for m in stored(maildir)] == [MESSAGE]


def test_an_unwritable_maildir_is_never_acknowledged(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    with serve("--maildir", str(maildir)) as server:
        (maildir / "tmp").rmdir()
        (maildir / "tmp").write_text("not a directory any more")  # fails even for root
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.ehlo()
            client.mail("alice@example.org")
            client.rcpt("bob@example.net")
            assert client.docmd("DATA") == (451, b"4.3.0 Requested action aborted: error in storing the message")
            assert client.noop()[0] == 250
    assert list((maildir / "new").iterdir()) == []


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpwire_anyio", *args], capture_output=True, text=True, timeout=TIMEOUT
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "expected HOST:PORT (IPv6 as [::1]:PORT), not 'nonsense'"),
        (["--listen", "127.0.0.1:99999"], "expected HOST:PORT"),
        (["--tls-cert", "/nonexistent/cert.pem"], "cannot load the TLS certificate /nonexistent/cert.pem"),
        (["--tls-listen", "127.0.0.1:0"], "--tls-listen and --require-starttls need --tls-cert"),
        (["--require-starttls"], "--tls-listen and --require-starttls need --tls-cert"),
        (["--hostname", "bad name"], "hostname must be 1-255 printable ASCII characters"),
        (["--max-recipients", "0"], "Invalid value for '--max-recipients'"),
        (["--backend", "twisted"], "Invalid value for '--backend'"),
    ],
)
def test_bad_options_give_one_clear_line(args: list[str], message: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_gives_one_clear_line(tmp_path: pathlib.Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--maildir", str(tmp_path / "m"))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_self_signed_is_loudly_for_development(tmp_path: pathlib.Path) -> None:
    with serve("--self-signed", "--maildir", str(tmp_path / "m")) as server:
        assert any("for development only" in line for line in server.log)
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.starttls(context=ssl._create_unverified_context())  # self-signed: nothing to verify against
            assert client.noop()[0] == 250


def test_sigterm_lets_the_open_transaction_finish(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    with serve("--maildir", str(maildir)) as server:
        client = smtplib.SMTP(*server.address, timeout=TIMEOUT)
        client.ehlo()
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        server.process.send_signal(signal.SIGTERM)
        server.wait_for("SIGTERM: shutting down")
        assert client.data(MESSAGE)[0] == 250
        assert client.noop()[0] == 421
        assert server.process.wait(TIMEOUT) == 0
    assert [split_trace(m)[1] for m in stored(maildir)] == [MESSAGE]


def test_help_reads_well() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in ("--listen HOST:PORT", "--tls-listen", "--tls-cert", "--maildir", "--sink", "--self-signed"):
        assert option in result.stdout


def test_workers_share_one_port(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    server = Serve(["--listen", f"127.0.0.1:{port}", "--maildir", str(maildir), "--workers", "2"])
    try:
        server.wait_for(SERVING.pattern)  # the second worker is up too
        for _ in range(20):
            with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
                client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    names = [path.name for path in (maildir / "new").iterdir()]
    assert len(names) == 20
    # SO_REUSEPORT spreads connections by their addresses: 20 all on one worker has odds of 2 in a million.
    assert len({re.search(r"P(\d+)Q", name)[1] for name in names}) == 2  # type: ignore[index]
