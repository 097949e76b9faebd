"""``smtpwire serve`` for a newcomer and an operator: missing extras, TLS files, defaults, reloads, logs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import tomllib

import pytest
from cryptography.hazmat.primitives import serialization

import smtpwire
from smtpwire_serve import _authfile, _cli, _logging
from tests import certs
from tests.test_cli import SERVING, Serve
from tests.test_interop import MESSAGE, TIMEOUT, starttls_client

ROOT = pathlib.Path(__file__).resolve().parent.parent
HIDING = "import os, sys\nfor name in os.environ.get('SMTPWIRE_HIDE', '').split():\n    sys.modules[name] = None\n"


def console_script() -> str:
    """The ``smtpwire`` command's target, as pyproject.toml declares it (``module:function``)."""
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["smtpwire"])


def run_hiding(tmp_path: pathlib.Path, hidden: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``smtpwire`` command with the modules ``hidden`` not installed (a sitecustomize makes them unimportable)."""
    (tmp_path / "sitecustomize.py").write_text(HIDING)
    module, function = console_script().split(":")
    code = f"import sys; sys.argv[0] = 'smtpwire'; from {module} import {function}; {function}()"
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path, "SMTPWIRE_HIDE": hidden}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=TIMEOUT, env=environment
    )


@pytest.mark.parametrize("hidden", ["anyio", "click", "cryptography", "click anyio"])
def test_without_the_cli_extra_the_command_says_what_to_install(tmp_path: pathlib.Path, hidden: str) -> None:
    result = run_hiding(tmp_path, hidden, "serve")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"smtpwire: the command needs the 'cli' extra ({', '.join(hidden.split())} missing):"
        " pip install 'smtpwire[cli]'"
    ]


@pytest.mark.parametrize(
    ("args", "hidden", "line"),
    [
        (["serve", "--backend", "trio"], "trio", "smtpwire: --backend trio needs trio: pip install 'smtpwire[cli]'"),
        (["serve", "--backend=trio"], "trio", "smtpwire: --backend trio needs trio: pip install 'smtpwire[cli]'"),
        (
            ["serve", "--loop", "uvloop"],
            "uvloop",
            "smtpwire: --loop uvloop needs uvloop: pip install 'smtpwire[uvloop]'",
        ),
    ],
)
def test_a_missing_event_loop_is_one_line_naming_the_extra(
    tmp_path: pathlib.Path, args: list[str], hidden: str, line: str
) -> None:
    result = run_hiding(tmp_path, hidden, *args)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [line]


def test_with_the_extra_the_command_runs(tmp_path: pathlib.Path) -> None:
    result = run_hiding(tmp_path, "trio", "serve", "--help")  # trio is only needed for --backend trio
    assert result.returncode == 0, result.stderr
    assert "--listen" in result.stdout


# 2. Certificate and key files: one clear line for each way they can be wrong.


def serve_cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "smtpwire_serve", "serve", "--sink", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture
def pem(tmp_path: pathlib.Path) -> dict[str, str]:
    """cert.pem, its key.pem, other-key.pem (another certificate's key) and both.pem (certificate and key)."""
    leaf, other = certs.server_certificate(), certs.authority().issue_cert("other.test")
    files = {
        "cert": leaf.cert_chain_pems[0].bytes(),
        "key": leaf.private_key_pem.bytes(),
        "other-key": other.private_key_pem.bytes(),
        "both": leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes(),
    }
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    return {name: str(tmp_path / f"{name}.pem") for name in files}


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ")
    return line.removeprefix("Error: ")


def test_a_certificate_without_its_key_says_to_give_the_key(pem: dict[str, str]) -> None:
    """Not ssl's ``[SSL] PEM lib (_ssl.c:3926)``."""
    line = one_error(serve_cli("--tls-cert", pem["cert"]))
    assert line == f"--tls-cert {pem['cert']} holds no private key: give it with --tls-key"


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        ("cert", "cert", "--tls-key {cert} holds no PEM private key"),
        ("key", "key", "--tls-cert {key} holds no PEM certificate"),
        ("cert", "other-key", "--tls-key {other-key} does not match the certificate in --tls-cert {cert}"),
        ("both", None, "the key in --tls-cert {both} does not match the certificate in --tls-cert {both}"),
    ],
)
def test_wrong_pem_files_are_named_in_one_line(
    pem: dict[str, str], tmp_path: pathlib.Path, cert: str, key: str | None, expected: str
) -> None:
    if key is None:  # a cert file holding its key and a stranger's: the first key is the stranger's
        pathlib.Path(pem["both"]).write_bytes(
            pathlib.Path(pem["other-key"]).read_bytes() + pathlib.Path(pem["cert"]).read_bytes()
        )
    args = ["--tls-cert", pem[cert], *(["--tls-key", pem[key]] if key else [])]
    assert one_error(serve_cli(*args)) == expected.format_map(pem)


def test_missing_and_unreadable_files_say_so(pem: dict[str, str], tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "missing.pem")
    assert one_error(serve_cli("--tls-cert", missing)) == f"cannot read --tls-cert {missing}: No such file or directory"
    line = one_error(serve_cli("--tls-cert", pem["cert"], "--tls-key", missing))
    assert line == f"cannot read --tls-key {missing}: No such file or directory"
    line = one_error(serve_cli("--tls-cert", str(tmp_path)))
    assert line == f"cannot read --tls-cert {tmp_path}: Is a directory"
    pathlib.Path(pem["key"]).chmod(0)
    line = one_error(serve_cli("--tls-cert", pem["cert"], "--tls-key", pem["key"], prefix=without_root_powers()))
    assert line == f"cannot read --tls-key {pem['key']}: Permission denied"


def without_root_powers() -> tuple[str, ...]:
    """A command prefix under which root, too, obeys file modes (no CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a mode-0 file is readable")
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search")


def test_an_encrypted_key_is_refused_without_asking_a_passphrase(pem: dict[str, str], tmp_path: pathlib.Path) -> None:
    key = serialization.load_pem_private_key(pathlib.Path(pem["key"]).read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        )
    )
    line = one_error(serve_cli("--tls-cert", pem["cert"], "--tls-key", str(encrypted)))
    assert (
        line == f"--tls-key {encrypted} is encrypted: give it unencrypted (a server has nobody to ask the passphrase)"
    )


# 3. --tls-listen alone keeps the default plain listener.


def planned(*args: str) -> _cli.Settings:
    """The settings ``serve ARGS`` would run with: what it will listen on, found without binding anything."""
    with _cli.serve.make_context("serve", list(args)) as ctx:
        return _cli.settings_from(ctx.params, file_limit=1024)


def test_tls_listen_alone_keeps_the_default_plain_listener() -> None:
    """Planned, not bound: the default 127.0.0.1:8025 may be taken by anything else on the machine."""
    settings = planned("--self-signed", "--tls-listen", "127.0.0.1:0", "--sink")
    assert settings.listen == (("127.0.0.1", 8025),) and settings.tls_listen == (("127.0.0.1", 0),)
    assert planned("--self-signed", "--tls-listen", "127.0.0.1:0", "--listen", "127.0.0.1:2525").listen == (
        ("127.0.0.1", 2525),
    )


def test_the_planned_listeners_are_the_ones_served(tmp_path: pathlib.Path) -> None:
    """A plain and an implicit-TLS listener, both answering: what the plan above becomes once bound."""
    server = Serve(["--self-signed", "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0", "--sink"])
    try:
        serving = re.search(r"smtpwire serving on 127\.0\.0\.1:(\d+), 127\.0\.0\.1:(\d+) ", "".join(server.log))
        assert serving, server.log
        with smtplib.SMTP("127.0.0.1", int(serving[1]), timeout=TIMEOUT) as plain:
            assert plain.ehlo()[0] == 250 and plain.has_extn("starttls")
        raw = socket.create_connection(("127.0.0.1", int(serving[2])), timeout=TIMEOUT)
        with ssl._create_unverified_context().wrap_socket(raw) as implicit:  # self-signed: nothing to verify against
            assert implicit.recv(100).startswith(b"220 ")
    finally:
        server.process.kill()
        server.process.wait(TIMEOUT)


# 4. The default --hostname is this machine's name, found without DNS.


def test_the_default_hostname_is_this_machines_name() -> None:
    name = socket.gethostname()
    server = Serve(["--listen", "127.0.0.1:0", "--sink"])
    try:
        with smtplib.SMTP(timeout=TIMEOUT) as client:
            code, greeting = client.connect(*server.address)
            assert (code, greeting.split()[0]) == (220, name.encode())
            assert client.ehlo()[1].split(b"\n")[0] == name.encode()
    finally:
        server.process.kill()
        server.process.wait(TIMEOUT)


def test_the_default_hostname_asks_no_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """getfqdn() asks DNS (which can hang) and often says localhost; the kernel's name needs nobody."""

    def no_lookup(*args: object) -> None:
        raise AssertionError("a name lookup")

    for lookup in ("getfqdn", "gethostbyaddr", "gethostbyname", "gethostbyname_ex", "getaddrinfo", "getnameinfo"):
        monkeypatch.setattr(socket, lookup, no_lookup)
    monkeypatch.setattr(socket, "gethostname", lambda: "mx.example.org")
    assert _cli.default_hostname() == "mx.example.org"
    monkeypatch.setattr(socket, "gethostname", lambda: "bad name!")
    assert _cli.default_hostname() == "localhost"


# 5. --self-signed: nothing on disk, a fingerprint in the log, a certificate to trust.


def colon_hex(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


@pytest.mark.parametrize("tls", [[], ["--self-signed"]])
def test_nothing_is_left_in_the_temporary_directory_even_after_sigkill(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, tls: list[str]
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    server = Serve(["--listen", "127.0.0.1:0", "--sink", *tls])
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        assert client.ehlo()[0] == 250
        assert client.has_extn("starttls") == bool(tls)
        assert list(scratch.iterdir()) == []
    server.process.kill()
    server.process.wait(TIMEOUT)
    assert list(scratch.iterdir()) == []


def test_self_signed_logs_its_fingerprint_and_writes_a_certificate_to_trust(tmp_path: pathlib.Path) -> None:
    written = tmp_path / "dev.pem"
    server = Serve(["--listen", "127.0.0.1:0", "--sink", "--self-signed", "--self-signed-cert-out", str(written)])
    try:
        logged = re.search(
            r"self-signed certificate .*SHA-256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})\b", "".join(server.log)
        )
        assert logged, server.log
        assert b"PRIVATE KEY" not in written.read_bytes()
        trusting = ssl.create_default_context(cafile=str(written))  # verifies the chain and the name 127.0.0.1
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.starttls(context=trusting)
            assert client.sock is not None
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
            assert colon_hex(der) == logged[1]
            assert client.noop()[0] == 250
    finally:
        server.process.kill()
        server.process.wait(TIMEOUT)


def test_self_signed_cert_out_needs_self_signed(tmp_path: pathlib.Path) -> None:
    result = serve_cli("--self-signed-cert-out", str(tmp_path / "dev.pem"))
    assert result.returncode == 2 and "--self-signed-cert-out needs --self-signed" in result.stderr
    assert not (tmp_path / "dev.pem").exists()


# 6. Timeouts, the error limit and the shutdown grace, from the command line.


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_timeouts_and_the_error_limit_are_options() -> None:
    server = Serve(
        [
            *("--listen", "127.0.0.1:0", "--sink", "--self-signed", "--tls-listen", "127.0.0.1:0"),
            *("--command-timeout", "1", "--data-timeout", "1.5", "--tls-handshake-timeout", "1", "--max-errors", "2"),
        ]
    )
    tls_port = int(re.findall(r"127\.0\.0\.1:(\d+)", "".join(server.log))[-1])
    try:
        started = time.monotonic()
        with socket.create_connection(server.address, timeout=TIMEOUT) as idle:
            assert read_reply(idle).split(b"\r\n")[1].startswith(b"421 4.4.2 ")
        assert 0.9 < time.monotonic() - started < 5
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.ehlo()
            client.mail("alice@example.org")
            client.rcpt("bob@example.net")
            assert client.docmd("DATA")[0] == 354
            started = time.monotonic()
            client.send(b"Subject: slow\r\n")
            code, _ = client.getreply()
            assert code == 421 and 1.4 < time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", tls_port), timeout=TIMEOUT) as silent:
            started = time.monotonic()
            assert read_reply(silent) == b""  # no handshake: closed after a second
            assert time.monotonic() - started < 5
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            assert client.docmd("FOO")[0] == 500
            assert client.docmd("BAR")[0] == 500
            assert client.getreply()[0] == 421
    finally:
        server.process.kill()
        server.process.wait(TIMEOUT)


def test_shutdown_grace_bounds_an_open_transaction() -> None:
    server = Serve(["--listen", "127.0.0.1:0", "--sink", "--shutdown-grace", "1"])
    client = smtplib.SMTP(*server.address, timeout=TIMEOUT)
    try:
        client.ehlo()
        client.mail("alice@example.org")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(TIMEOUT) == 0
        assert 0.9 < time.monotonic() - started < 5  # the default grace is 30 s
    finally:
        client.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--command-timeout", "0"),
        ("--data-timeout", "86400"),
        ("--tls-handshake-timeout", "-1"),
        ("--proxy-timeout", "soon"),
        ("--shutdown-grace", "0"),
        ("--min-data-rate", "0"),
        ("--max-errors", "0"),
    ],
)
def test_bad_limits_give_one_clear_line(option: str, value: str) -> None:
    result = serve_cli(option, value)
    assert result.returncode == 2
    assert f"Error: Invalid value for '{option}': " in result.stderr and "Traceback" not in result.stderr


# 7. SIGHUP reloads the certificate and the auth file; sessions under way go on.


def write_leaf(cert: pathlib.Path, key: pathlib.Path) -> str:
    """A new certificate for 127.0.0.1 from the test CA, written over ``cert`` and ``key``; returns its fingerprint."""
    leaf = certs.authority().issue_cert("localhost", "127.0.0.1")
    key.write_bytes(leaf.private_key_pem.bytes())
    cert.write_bytes(leaf.cert_chain_pems[0].bytes())
    return colon_hex(ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()))


def tls_session(address: tuple[str, int]) -> tuple[smtplib.SMTP, str]:
    """A client after STARTTLS and EHLO, and the fingerprint of the certificate it was shown."""
    client = starttls_client(address)
    assert client.sock is not None
    return client, colon_hex(client.sock.getpeercert(binary_form=True))  # type: ignore[attr-defined]


def logs_in(address: tuple[str, int], user: str, password: str) -> bool:
    client, _ = tls_session(address)
    try:
        client.login(user, password)
    except smtplib.SMTPAuthenticationError:
        return False
    finally:
        client.close()
    return True


KEPT = "keeping the certificate loaded before"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sighup_reloads_the_certificate_and_users_and_sessions_go_on(tmp_path: pathlib.Path, backend: str) -> None:
    cert, key, users = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "users"
    first = write_leaf(cert, key)
    _authfile.set_user(users, "alice", smtpwire.scram_credentials("alice's password"))
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--auth-file", str(users), "--auth-failure-delay", "0"]
    server = Serve(["--listen", "127.0.0.1:0", "--maildir", str(tmp_path / "maildir"), "--backend", backend, *tls])
    try:
        open_session, shown = tls_session(server.address)
        assert shown == first
        open_session.mail("alice@example.org")
        open_session.rcpt("bob@example.net")
        second = write_leaf(cert, key)
        users.unlink()
        _authfile.set_user(users, "bob", smtpwire.scram_credentials("bob's password"))
        server.process.send_signal(signal.SIGHUP)
        server.wait_for(
            rf"INFO smtpwire.serve: SIGHUP: reloaded the TLS certificate {cert} \(SHA-256 fingerprint {second}\)"
        )
        server.wait_for(rf"INFO smtpwire.serve: SIGHUP: reloaded 1 user\(s\) of {users}")
        new_session, shown = tls_session(server.address)
        new_session.close()
        assert shown == second
        assert logs_in(server.address, "bob", "bob's password")
        assert not logs_in(server.address, "alice", "alice's password")
        assert open_session.data(MESSAGE)[0] == 250  # the session from before the reload finishes its message
        open_session.quit()

        cert.write_text("garbage\n")  # a bad reload keeps what was loaded, and says so in one line
        users.write_text("bob:not a key\n")
        server.process.send_signal(signal.SIGHUP)
        line = server.wait_for(r"ERROR smtpwire.serve: SIGHUP: .*").group()
        assert line == f"ERROR smtpwire.serve: SIGHUP: --tls-cert {cert} holds no PEM certificate; {KEPT}"
        server.wait_for(rf"ERROR smtpwire.serve: SIGHUP: {users}, line 1: .*; keeping the 1 user\(s\) loaded before")
        later, shown = tls_session(server.address)
        later.close()
        assert shown == second
        assert logs_in(server.address, "bob", "bob's password")
        assert server.stop() == 0
    finally:
        server.process.kill()
        server.process.wait(TIMEOUT)
    assert len(list((tmp_path / "maildir" / "new").iterdir())) == 1


def test_sighup_reaches_every_worker(tmp_path: pathlib.Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_leaf(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    args = ["--listen", f"127.0.0.1:{port}", "--sink", "--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key)]
    server = Serve(args)
    try:
        server.wait_for(SERVING.pattern)  # the second worker is up too
        second = write_leaf(cert, key)
        server.process.send_signal(signal.SIGHUP)
        for _ in range(2):
            server.wait_for(rf"SIGHUP: reloaded the TLS certificate {cert} \(SHA-256 fingerprint {second}\)")
        shown = set()
        for _ in range(8):
            client, fingerprint = tls_session(server.address)
            client.close()
            shown.add(fingerprint)
        assert shown == {second}
        assert server.stop() == 0
    finally:
        server.process.kill()
        server.process.wait(TIMEOUT)


# 8. --log-format json: one object a line, the session id a field of its own, nothing raw.


def test_json_log_lines_are_objects_with_the_session_as_a_field() -> None:
    server = Serve(["--listen", "127.0.0.1:0", "--sink", "--self-signed", "--log-format", "json", "-v"])
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    server.wait_for(r"closed \(1 message")
    assert server.stop() == 0
    records = [json.loads(line) for line in server.output().splitlines()]
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    assert records[0]["level"] == "WARNING" and "self-signed certificate" in records[0]["message"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", record["time"]) for record in records)
    sessions = [record for record in records if "session" in record]
    assert len({record["session"] for record in sessions}) == 1
    session = sessions[0]["session"]
    messages = [record["message"] for record in sessions]
    assert any(message.startswith(f"accepted id={session} from=<alice@example.org>") for message in messages)
    assert any(message.startswith("closed (1 message") for message in messages)  # not "session ...: closed"
    assert any(message.startswith("<<< ") and "mail from" in message.lower() for message in messages)  # the transcript
    assert not any(message.startswith("session ") for message in messages)


def test_json_log_escapes_what_the_text_log_escapes() -> None:
    hostile = "evil\r\n2026-01-01 00:00:00,000 INFO forged\x1b[2J\x85\u2028\u202egnp.exe\U000e0041\udcff é"
    record = logging.LogRecord(
        "smtpwire.test", logging.INFO, __file__, 1, "session %s: HELO %s", ("abc123", hostile), None
    )
    line = _logging.JsonFormatter().format(record)
    assert "\n" not in line and line.isprintable()
    assert "é" in line  # printable text stays as it is
    parsed = json.loads(line)
    assert parsed["session"] == "abc123" and parsed["message"] == f"HELO {hostile}"
    assert _logging.TextFormatter.escape(hostile) == _logging.TextFormatter.escape(
        parsed["message"][5:]
    )  # the same text
