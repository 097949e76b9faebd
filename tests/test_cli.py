"""``smtpwire serve`` as a user runs it: a subprocess, real clients, files in the Maildir."""

from __future__ import annotations

import base64
import pathlib
import queue
import re
import resource
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import IO, TypeVar

import click
import pytest
import scramp

import smtpwire
from smtpwire_anyio import TLSInfo
from smtpwire_handler import ServerOptions
from smtpwire_handler._group_commit import filesystem_sync_available
from smtpwire_handler._trace import protocol_name
from smtpwire_serve import _authfile, _cli
from smtpwire_serve._settings import Settings, build_options
from tests import certs
from tests.test_interop import MESSAGE, TIMEOUT, need, starttls_client

SERVING = re.compile(r"smtpwire serving on (\S+?):(\d+)")


class Serve:
    """A running ``python -m smtpwire_serve serve``, its log and its address."""

    def __init__(
        self, args: list[str], preexec: Callable[[], None] | None = None, stdout: IO[str] | None = None
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtpwire_serve", "serve", *args],
            stdout=stdout or subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
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

    def output(self) -> str:
        """Everything the server wrote to stderr; call it once the server has stopped."""
        self.reader.join(TIMEOUT)
        while not self.lines.empty():
            self.log.append(self.lines.get_nowait())
        return "".join(self.log)


ServeT = TypeVar("ServeT", bound=Serve)


@contextmanager
def killed_after(server: ServeT) -> Iterator[ServeT]:
    """The server for the block; whatever happened in it, it is gone afterwards."""
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(TIMEOUT)


def serve(
    *args: str, preexec: Callable[[], None] | None = None, stdout: IO[str] | None = None
) -> AbstractContextManager[Serve]:
    return killed_after(Serve(["--listen", "127.0.0.1:0", "--hostname", "mx.test", *args], preexec, stdout))


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
        [sys.executable, "-m", "smtpwire_serve", *args], capture_output=True, text=True, timeout=TIMEOUT
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "expected HOST:PORT (IPv6 as [::1]:PORT), not 'nonsense'"),
        (["--listen", "127.0.0.1:99999"], "port 99999 is out of range: a TCP port is 0 to 65535"),
        (["--listen", "127.0.0.1:70000"], "Invalid value for '--listen': port 70000 is out of range"),
        (["--tls-listen", "[::1]:123456"], "Invalid value for '--tls-listen': port 123456 is out of range"),
        (["--port", "2525"], "Error: serve has no --port option: use --listen 127.0.0.1:2525 (HOST:PORT)"),
        (["--port=smtp"], "Error: serve has no --port option: use --listen 127.0.0.1:PORT (HOST:PORT)"),
        (["--tls-cert", "/nonexistent/cert.pem"], "cannot read --tls-cert /nonexistent/cert.pem: No such file"),
        (["--tls-listen", "127.0.0.1:0"], "--tls-listen and --require-starttls need --tls-cert"),
        (["--require-starttls"], "--tls-listen and --require-starttls need --tls-cert"),
        (["--hostname", "bad name"], "hostname must be 1-255 printable ASCII characters"),
        (["--max-recipients", "0"], "Invalid value for '--max-recipients'"),
        (
            ["--max-sessions", "0"],
            "Error: Invalid value for '--max-sessions': max_sessions must be an integer of at least 1",
        ),
        (["--backend", "twisted"], "Invalid value for '--backend'"),
    ],
)
def test_bad_options_give_one_clear_line(args: list[str], message: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sync", ["file", "filesystem"])
def test_maildir_sync_stores_each_message_durably_either_way(tmp_path: pathlib.Path, sync: str) -> None:
    if sync == "filesystem" and not filesystem_sync_available():
        pytest.skip("syncfs that reports errors needs Linux 5.8 or later")
    maildir = tmp_path / "maildir"
    with serve("--maildir", str(maildir), "--maildir-sync", sync) as server:
        said = ", fsync per file" if sync == "file" else ", syncfs per batch"
        assert any("smtpwire serving on" in line and said in line for line in server.log)
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            for _ in range(3):
                client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        assert server.stop() == 0
    assert [split_trace(message)[1] for message in stored(maildir)] == [MESSAGE] * 3


@pytest.mark.parametrize("store", [["--sink"], ["--lmtp"], ["--print"]])
def test_maildir_sync_is_for_the_maildir_store(store: list[str]) -> None:
    result = run_cli("serve", "--maildir-sync", "file", *store)
    assert result.returncode == 2 and "--maildir-sync is for the Maildir store" in result.stderr


def test_maildir_sync_filesystem_is_refused_where_syncfs_hides_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cli, "filesystem_sync_available", lambda: False)
    with (
        _cli.serve.make_context("serve", ["--maildir-sync", "filesystem"]) as ctx,
        pytest.raises(click.UsageError, match=r"needs Linux 5\.8 or later"),
    ):
        _cli.refuse_maildir_sync_conflicts(ctx.params)


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


# AUTH: `smtpwire passwd` and `serve --auth-file`.

USER, PASSWORD = "alice", "correct horse battery staple"
ENTRY = re.compile(r"alice:SCRAM-SHA-256\$(\d+):[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=")


EXPECTED_TWICE = "\nError: the password is expected twice, the same both times (from a pipe: two lines)\n"


def passwd(file: pathlib.Path, user: str, typed: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``smtpwire passwd`` with the password piped in (``typed`` holds both lines)."""
    return subprocess.run(
        [sys.executable, "-m", "smtpwire_serve", "passwd", *options, str(file), user],
        input=typed,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        start_new_session=True,  # no controlling terminal: nothing to read but the pipe
    )


@pytest.fixture
def auth_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "users"
    _authfile.set_user(path, USER, smtpwire.scram_credentials(PASSWORD))
    return str(path)


def starttls(server: Serve) -> smtplib.SMTP:
    return starttls_client(server.address)


def plain_blob(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_passwd_stores_keys_never_the_password(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "users"
    added = passwd(file, USER, f"{PASSWORD}\n{PASSWORD}\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"added user alice to {file}\n"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    content = file.read_text()
    assert ENTRY.fullmatch(content.removesuffix("\n")) and content.count("\n") == 1
    assert PASSWORD not in content + added.stdout + added.stderr and "Traceback" not in added.stderr
    assert _authfile.load(file)["alice"].verify(PASSWORD)

    assert passwd(file, "bob", "bobs secret\nbobs secret\n").stdout == f"added user bob to {file}\n"
    updated = passwd(file, USER, "new secret\nnew secret\n", "--iterations", "5000")
    assert updated.stdout == f"updated user alice in {file}\n"
    users = _authfile.load(file)
    assert list(users) == ["alice", "bob"] and users["bob"].verify("bobs secret")
    assert users["alice"].iterations == 5000 and users["alice"].verify("new secret")
    assert not users["alice"].verify(PASSWORD)
    assert ENTRY.match(file.read_text()) and stat.S_IMODE(file.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("first-secret\nsecond-secret\n", "Error: The two entered values do not match."),
        ("\n\n", "Error: unusable password: the password is empty after SASLprep"),
        ("\u00ad\n\u00ad\n", "Error: unusable password: the password is empty after SASLprep"),
        ("bell\x07secret\nbell\x07secret\n", "Error: unusable password: SASLprep: prohibited character"),
        ("", EXPECTED_TWICE),
        ("first-secret\n", EXPECTED_TWICE),
    ],
)
def test_passwd_refuses_unusable_passwords(tmp_path: pathlib.Path, typed: str, error: str) -> None:
    result = passwd(tmp_path / "users", USER, typed)
    assert result.returncode == 1
    assert error in result.stderr and "Traceback" not in result.stderr
    assert "secret" not in result.stderr + result.stdout
    assert not (tmp_path / "users").exists()


def test_passwd_refuses_bad_names_and_bad_files(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "users"
    result = passwd(file, "a:b", f"{PASSWORD}\n{PASSWORD}\n")
    assert result.returncode == 2 and "Error: Invalid value for USER: a user name cannot contain ':'" in result.stderr
    file.write_text("alice:hunter2\n")
    result = passwd(file, "bob", f"{PASSWORD}\n{PASSWORD}\n")
    assert result.returncode == 1 and "Password" not in result.stderr  # refused before asking
    assert f"Error: {file}, line 1: unknown scheme" in result.stderr and "hunter2" not in result.stderr
    assert file.read_text() == "alice:hunter2\n"
    result = passwd(tmp_path / "missing" / "users", "bob", f"{PASSWORD}\n{PASSWORD}\n")
    assert result.returncode == 1 and "Error: cannot write " in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["login()", "PLAIN", "LOGIN"])
def test_auth_after_starttls_and_esmtpsa(
    tmp_path: pathlib.Path, tls_files: list[str], auth_file: str, how: str
) -> None:
    maildir = tmp_path / "maildir"
    with serve(*tls_files, "--auth-file", auth_file, "--maildir", str(maildir)) as server:
        assert any(f"AUTH for 1 user(s) of {auth_file}" in line for line in server.log)  # logged before serving
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            assert not client.has_extn("auth")
            assert client.docmd("AUTH", f"PLAIN {plain_blob(USER, PASSWORD)}") == (
                538,
                b"5.7.11 Encryption required for requested authentication mechanism",
            )
        with starttls(server) as client:
            assert client.esmtp_features["auth"] == " SCRAM-SHA-256 PLAIN LOGIN"
            client.user, client.password = USER, "wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.auth("PLAIN", client.auth_plain)
            assert (refused.value.smtp_code, refused.value.smtp_error) == (
                535,
                b"5.7.8 Authentication credentials invalid",
            )
            if how == "login()":  # smtplib picks PLAIN out of what is offered
                assert client.login(USER, PASSWORD) == (235, b"2.7.0 Authentication successful")
            else:
                client.user, client.password = USER, PASSWORD
                authobject = client.auth_plain if how == "PLAIN" else client.auth_login
                assert client.auth(how, authobject) == (235, b"2.7.0 Authentication successful")
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> .* tls=TLSv1\.[23]/\S+ auth=alice peer=127\.0\.0\.1")
    (message,) = stored(maildir)
    trace, body = split_trace(message)
    assert body == MESSAGE and re.search(r"\tby mx\.test \(smtpwire\) with ESMTPSA id \w+\r\n", trace)


def test_require_auth_and_the_failure_limit(tmp_path: pathlib.Path, tls_files: list[str], auth_file: str) -> None:
    maildir = tmp_path / "maildir"
    options = ("--auth-file", auth_file, "--require-auth", "--max-auth-failures", "2", "--maildir", str(maildir))
    with serve(*tls_files, *options) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            assert client.docmd("MAIL", "FROM:<alice@example.org>") == (530, b"5.7.0 Authentication required")
        with starttls(server) as client:
            assert client.docmd("MAIL", "FROM:<alice@example.org>") == (530, b"5.7.0 Authentication required")
            assert client.docmd("AUTH", f"PLAIN {plain_blob(USER, 'wrong')}")[0] == 535
            assert client.docmd("AUTH", f"PLAIN {plain_blob('mallory', PASSWORD)}")[0] == 535
            assert client.getreply() == (421, b"4.7.0 mx.test Too many authentication failures, closing connection")
        with starttls(server) as client:
            assert client.docmd("AUTH", f"PLAIN {plain_blob(USER, PASSWORD)}")[0] == 235
            assert client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE) == {}
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> .* auth=alice ")
    (message,) = stored(maildir)
    assert " with ESMTPSA id " in split_trace(message)[0]


def test_scram_sha_256_with_scramp(tmp_path: pathlib.Path, tls_files: list[str], auth_file: str) -> None:
    with serve(*tls_files, "--auth-file", auth_file, "--sink") as server:
        for password, final in ((PASSWORD, (235, b"2.7.0 Authentication successful")), ("wrong", None)):
            scram = scramp.ScramClient(["SCRAM-SHA-256"], USER, password)
            with starttls(server) as client:
                code, server_first = client.docmd(
                    "AUTH", "SCRAM-SHA-256 " + base64.b64encode(scram.get_client_first().encode()).decode()
                )
                assert code == 334
                scram.set_server_first(base64.b64decode(server_first).decode())
                code, server_final = client.docmd(base64.b64encode(scram.get_client_final().encode()).decode())
                if final is None:
                    assert (code, server_final) == (535, b"5.7.8 Authentication credentials invalid")
                    continue
                assert code == 334
                scram.set_server_final(base64.b64decode(server_final).decode())  # the server proves it has the keys
                assert client.docmd("") == final
                client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> .* auth=alice .*discarded")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth(tmp_path: pathlib.Path, tls_files: list[str], auth_file: str, mechanism: str) -> None:
    maildir = tmp_path / "maildir"
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE.removesuffix(b"\r\n"))
    with serve(*tls_files, "--auth-file", auth_file, "--require-auth", "--maildir", str(maildir)) as server:
        result = subprocess.run(
            [
                *(need("swaks"), "--server", f"{server.address[0]}:{server.address[1]}"),
                *("--from", "alice@example.org", "--to", "bob@example.net", "--ehlo", "swaks.example"),
                *("--tls", "--tls-verify", "--tls-ca-path", certs.write_ca(str(tmp_path)), "--tls-sni", "localhost"),
                *("--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD, "--data", str(data)),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "<~  235 2.7.0 Authentication successful" in result.stdout  # ~: over TLS
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> .* auth=alice ")
    (message,) = stored(maildir)
    trace, body = split_trace(message)
    assert body == MESSAGE and "Received: from swaks.example " in trace and " with ESMTPSA id " in trace


def test_the_verbose_log_never_shows_a_password(tls_files: list[str], auth_file: str) -> None:
    blob = plain_blob(USER, PASSWORD)
    login = base64.b64encode(PASSWORD.encode()).decode()
    with serve(*tls_files, "--auth-file", auth_file, "--sink", "-v") as server:
        with starttls(server) as client:
            client.user, client.password = USER, PASSWORD
            assert client.auth("PLAIN", client.auth_plain)[0] == 235  # AUTH PLAIN <blob>, one line
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        with starttls(server) as client:
            client.user, client.password = USER, PASSWORD
            assert client.auth("LOGIN", client.auth_login)[0] == 235  # the password on a line of its own
            assert client.docmd("AUTH", f"PLAIN {plain_blob(USER, 'not ' + PASSWORD)}")[0] == 503
            client.noop()
        server.wait_for(r" C: noop$")
        assert server.stop() == 0
    logged = server.output()
    assert "bytes of an AUTH exchange withheld" in logged and "auth=alice" in logged
    assert PASSWORD not in logged and blob not in logged and login not in logged
    assert plain_blob(USER, "not " + PASSWORD) not in logged


def test_workers_each_authenticate(tmp_path: pathlib.Path, tls_files: list[str], auth_file: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    options = ["--listen", f"127.0.0.1:{port}", "--hostname", "mx.test", "--sink", "--workers", "2"]
    server = Serve([*options, *tls_files, "--auth-file", auth_file, "--require-auth"])
    try:
        server.wait_for(SERVING.pattern)  # the second worker is up too
        for _ in range(8):
            with starttls(server) as client:
                assert client.login(USER, PASSWORD)[0] == 235
                assert client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE) == {}
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert len(re.findall(r"accepted id=\w+ .* auth=alice ", server.output())) == 8


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, ["--self-signed"], "Error: cannot read the auth file {file}: No such file or directory"),
        (f"{USER}:hunter2\n", ["--self-signed"], "Error: {file}, line 1: unknown scheme: only SCRAM-SHA-256"),
        ("# nobody\n", [], "Error: --auth-file needs --tls-cert (or --self-signed): AUTH is offered only over TLS"),
    ],
)
def test_bad_auth_options_give_one_clear_line(
    tmp_path: pathlib.Path, content: str | None, args: list[str], message: str
) -> None:
    file = tmp_path / "users"
    if content is not None:
        file.write_text(content)
    result = run_cli("serve", "--listen", "127.0.0.1:0", "--auth-file", str(file), *args)
    assert result.returncode != 0
    assert message.format(file=file) in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    result = run_cli("serve", "--require-auth", "--self-signed")
    assert result.returncode == 2 and "Error: --require-auth needs --auth-file" in result.stderr


def test_an_auth_file_others_can_read_is_warned_about(tls_files: list[str], auth_file: str) -> None:
    pathlib.Path(auth_file).chmod(0o644)
    with serve(*tls_files, "--auth-file", auth_file, "--sink") as server:
        warning = f"WARNING smtpwire.serve: {auth_file} is open to other users (mode 0644)"
        assert any(warning in line for line in server.log)


@pytest.mark.parametrize(
    ("esmtp", "tls", "authenticated", "smtputf8", "name"),
    [
        (False, False, False, False, "SMTP"),
        (False, True, False, False, "SMTP"),
        (True, False, False, False, "ESMTP"),
        (True, True, False, False, "ESMTPS"),
        (True, False, True, False, "ESMTPA"),
        (True, True, True, False, "ESMTPSA"),
        (True, False, False, True, "UTF8SMTP"),
        (True, True, False, True, "UTF8SMTPS"),
        (True, False, True, True, "UTF8SMTPA"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_protocol_names_of_rfc_3848_and_6531(
    esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool, name: str
) -> None:
    session = types.SimpleNamespace(
        esmtp=esmtp,
        tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256) if tls else None,
        authenticated=smtpwire.Authenticated("PLAIN", "", USER) if authenticated else None,
    )
    assert protocol_name(session, smtputf8) == name  # type: ignore[arg-type]


def test_unknown_scram_users_look_like_the_users_of_the_file(tmp_path: pathlib.Path, tls_files: list[str]) -> None:
    path = tmp_path / "users"
    for name in ("alice", "bob"):
        _authfile.set_user(path, name, smtpwire.scram_credentials(PASSWORD, iterations=5000))
    with serve(*tls_files, "--auth-file", str(path), "--sink") as server, starttls(server) as client:
        for user in ("alice", "nobody"):
            code, server_first = client.docmd(
                "AUTH", "SCRAM-SHA-256 " + base64.b64encode(f"n,,n={user},r=x".encode()).decode()
            )
            assert code == 334 and base64.b64decode(server_first).endswith(b",i=5000")
            assert client.docmd("*")[0] == 501


def test_print_shows_each_message_on_standard_output(tmp_path: pathlib.Path) -> None:
    """``--print``, like ``python -m aiosmtpd``'s debugging mode: the message with who sent it to whom."""
    printed = tmp_path / "stdout"
    with printed.open("w") as stdout, serve("--print", stdout=stdout) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"], MESSAGE)
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> .* printed")
        assert server.stop() == 0
    output = printed.read_text()
    assert "X-MailFrom: alice@example.org\nX-RcptTo: bob@example.net, carol@example.net\n" in output
    assert "Subject: interop\n" in output and not list(tmp_path.glob("maildir*"))


def test_print_and_sink_are_one_or_the_other() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smtpwire_serve", "serve", "--print", "--sink"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "give either --print or --sink, not both" in result.stderr


# -- the settings: built once from the parsed command line, checked by ServerOptions' rules -----


def settings_of(*args: str) -> Settings:
    """The Settings ``serve`` builds from this command line (with an open-file limit of 1,024)."""
    with _cli.serve.make_context("serve", ["--sink", *args]) as ctx:
        return _cli.settings_from(ctx.params, file_limit=1024)


def test_the_options_reach_the_server_options_under_their_own_names() -> None:
    limits = ("command-timeout", "data-timeout", "min-data-rate", "tls-handshake-timeout", "proxy-timeout")
    limits += ("shutdown-grace", "max-sessions", "max-message-size", "max-recipients", "max-errors")
    limits += ("max-auth-failures",)
    given = {name: 7 + n for n, name in enumerate(limits)}
    args = [text for name, value in given.items() for text in (f"--{name}", str(value))]
    options = build_options(settings_of(*args, "--max-sessions-per-client", "0", "--hostname", "mx.example", "--lmtp"))
    for name, value in given.items():
        field = name.replace("-", "_")
        assert getattr(options if hasattr(options, field) else options.config, field) == value, name
    assert options.max_sessions_per_client is None  # 0: no limit per client
    assert options.config.hostname == "mx.example" and options.config.lmtp


def test_without_options_the_limits_are_the_librarys() -> None:
    options, library = build_options(settings_of("--hostname", "mx.test")), ServerOptions()
    for name in ("command_timeout", "data_timeout", "min_data_rate", "tls_handshake_timeout", "proxy_timeout"):
        assert getattr(options, name) == getattr(library, name), name
    assert (options.shutdown_grace, options.max_sessions_per_client) == (library.shutdown_grace, 50)
    for name in ("max_message_size", "max_recipients", "max_errors", "max_auth_failures"):
        assert getattr(options.config, name) == getattr(library.config, name), name
    assert options.max_sessions == (1024 - 64) // 2  # what the open-file limit allows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-sessions", "0"], "'--max-sessions': max_sessions must be an integer of at least 1, not 0"),
        (
            ["--max-message-size", "-1"],
            "'--max-message-size': max_message_size must be an integer of at least 1, not -1",
        ),
        (
            ["--max-auth-failures", "0"],
            "'--max-auth-failures': max_auth_failures must be an integer of at least 1, not 0",
        ),
        (["--hostname", ""], "'--hostname': hostname must be 1-255 printable ASCII characters without spaces, not ''"),
        (
            ["--data-timeout", "inf"],
            "'--data-timeout': data_timeout must be a number of seconds above 0 and below 86400, not inf",
        ),
        (
            ["--min-data-rate", "nan"],
            "'--min-data-rate': min_data_rate must be a number of octets a second above 0, not nan",
        ),
    ],
)
def test_a_value_the_library_refuses_is_named_by_its_flag(args: list[str], message: str) -> None:
    with pytest.raises(click.BadParameter) as refused:
        settings_of(*args)
    assert refused.value.format_message() == f"Invalid value for {message}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--require-starttls"], "--tls-listen and --require-starttls need --tls-cert (or --self-signed)"),
        (["--tls-listen", "127.0.0.1:0"], "--tls-listen and --require-starttls need --tls-cert (or --self-signed)"),
        (["--auth-file", "users"], "--auth-file needs --tls-cert (or --self-signed): AUTH is offered only over TLS"),
        (["--require-auth", "--self-signed"], "--require-auth needs --auth-file"),
        (
            ["--proxy-protocol", "--trusted-proxy", "10.0.0.0/8", "--self-signed", "--tls-listen", "127.0.0.1:0"],
            "--proxy-protocol works with --listen only: a PROXY header cannot precede TLS",
        ),
    ],
)
def test_a_combination_server_options_refuses_is_said_in_the_options_words(args: list[str], message: str) -> None:
    """ServerOptions judges; the command line only words it (a change of ServerOptions' messages shows here)."""
    with pytest.raises(click.UsageError) as refused:
        settings_of(*args)
    assert type(refused.value) is click.UsageError and refused.value.format_message() == message


def test_a_refused_command_line_reads_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    """ServerOptions' rules are asked before the auth file is read, its salt key made or a certificate written."""
    users, certificate = tmp_path / "users", tmp_path / "dev.pem"
    users.write_text("# nobody\n")
    result = run_cli("serve", "--listen", "127.0.0.1:0", "--auth-file", str(users))
    assert result.returncode == 2 and "needs --tls-cert" in result.stderr and "no users" not in result.stderr
    assert sorted(tmp_path.iterdir()) == [users]
    result = run_cli("serve", "--require-auth", "--self-signed", "--self-signed-cert-out", str(certificate))
    assert result.returncode == 2 and "--require-auth needs --auth-file" in result.stderr
    assert "self-signed" not in result.stderr and not certificate.exists()
