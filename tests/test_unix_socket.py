"""``--listen unix:PATH``: SMTP on a Unix socket, its file's life, and the peer that has no IP address."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import smtplib
import socket
import stat

import anyio
import pytest

import smtpwire
import smtpwire_anyio
import smtpwire_asyncio
from smtpwire_handler import ServerOptions, Session
from smtpwire_serve import _cli, _settings
from smtpwire_serve._authlimit import FailureBudget
from tests.test_cli import run_cli, serve, stored
from tests.test_interop import MESSAGE, TIMEOUT
from tests.test_serve_lmtp import BACKENDS, serve_unix, wire


@pytest.mark.parametrize("backend", BACKENDS)
def test_smtp_on_a_unix_socket_stores_with_a_unix_received_header(tmp_path: pathlib.Path, backend: str) -> None:
    path, maildir = tmp_path / "smtp.sock", tmp_path / "maildir"
    with serve_unix(path, "--maildir", str(maildir), "--backend", backend, "--socket-mode", "0600") as server:
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and os.lstat(path).st_mode & 0o777 == 0o600
        with wire(path) as client:
            assert client.reply()[0] == 220
            assert client.command("EHLO client.example")[0] == 250
            assert client.command("MAIL FROM:<alice@example.org>")[0] == 250
            assert client.command("RCPT TO:<bob@example.net>")[0] == 250
            assert client.command("DATA")[0] == 354
            client.send(b"Subject: unix\r\n\r\nhello\r\n.\r\n")
            assert client.reply() == (250, "2.0.0 OK")
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> to=<bob@example.net> .* peer=unix stored=")
        assert server.stop() == 0
    assert not path.exists()
    [message] = stored(maildir)
    assert b"Received: from client.example (unix socket)\r\n\tby mx.test (smtpwire) with ESMTP id " in message
    assert message.endswith(b"Subject: unix\r\n\r\nhello\r\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unix_clients_are_the_local_host_for_the_per_client_limit(tmp_path: pathlib.Path, backend: str) -> None:
    """Every Unix client has the same (empty) peer: counting it would let one client lock out the MTA."""
    path = tmp_path / "lmtp.sock"
    with serve_unix(path, "--lmtp", "--sink", "--max-sessions-per-client", "1", "--backend", backend) as server:
        with wire(path) as first, wire(path) as second, wire(path) as third:
            assert [client.reply()[0] for client in (first, second, third)] == [220, 220, 220]
        assert server.stop() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stale_socket_is_replaced(tmp_path: pathlib.Path, backend: str) -> None:
    path = tmp_path / "lmtp.sock"
    with socket.socket(socket.AF_UNIX) as crashed:  # bound, never listening: what a killed server leaves
        crashed.bind(str(path))
    with serve_unix(path, "--lmtp", "--sink", "--backend", backend) as server:
        with wire(path) as client:
            assert client.reply()[0] == 220
        assert server.stop() == 0
    assert not path.exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_regular_file_is_never_removed(tmp_path: pathlib.Path, backend: str) -> None:
    path = tmp_path / "lmtp.sock"
    path.write_text("precious")
    result = run_cli("serve", "--lmtp", "--sink", "--listen", f"unix:{path}", "--backend", backend)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot listen on unix:{path}: the path exists and is not a socket (not removed)" in result.stderr
    assert path.read_text() == "precious"


def test_a_live_socket_is_not_taken_over(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lmtp.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        result = run_cli("serve", "--sink", "--listen", f"unix:{path}")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "another server is listening on this socket" in result.stderr
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tcp_and_unix_listeners_together(tmp_path: pathlib.Path, backend: str) -> None:
    path = tmp_path / "smtp.sock"
    with serve("--sink", "--listen", f"unix:{path}", "--backend", backend) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            assert client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE) == {}
        with wire(path) as client:
            assert client.reply()[0] == 220
        assert server.stop() == 0
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "unix:"], "expected unix:PATH with a file path, not 'unix:'"),
        (["--listen", "unix:/tmp/x.sock", "--workers", "2"], "--workers works with TCP listeners only"),
        (["--socket-mode", "0999"], "expected octal permission bits such as 0660, not '0999'"),
        (["--tls-listen", "unix:/tmp/x.sock"], "expected HOST:PORT"),
    ],
)
def test_bad_unix_options_give_one_clear_line(args: list[str], message: str) -> None:
    result = run_cli("serve", "--sink", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line]) == 3  # click's usage line, its hint, the error


def test_the_asyncio_server_api_takes_a_path(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "api.sock")

    async def main() -> None:
        server = smtpwire_asyncio.Server(options=ServerOptions(), listen=[path], unix_mode=0o640)
        await server.start()
        assert server.addresses == [] and server.unix_addresses == [path]
        assert os.stat(path).st_mode & 0o777 == 0o640
        reader, writer = await asyncio.open_unix_connection(path)
        assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(b"220 ")
        writer.close()
        await server.shutdown(grace=1)
        assert not os.path.exists(path)

    asyncio.run(main())


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_anyio_server_api_takes_a_path(tmp_path: pathlib.Path, backend: str) -> None:
    path = str(tmp_path / "api.sock")

    async def main() -> None:
        server = smtpwire_anyio.Server(options=ServerOptions(), listen=[path])
        async with anyio.create_task_group() as group:
            await group.start(server.serve)
            assert server.unix_addresses == [path] and os.stat(path).st_mode & 0o777 == 0o660
            with anyio.fail_after(TIMEOUT):
                async with await anyio.connect_unix(path) as stream:
                    assert (await stream.receive()).startswith(b"220 ")
                await server.shutdown(grace=1)
        assert not os.path.exists(path)

    anyio.run(main, backend=backend)


def test_unix_clients_share_one_auth_failure_budget() -> None:
    """Like the local host's TCP clients: the peer of a Unix socket names nobody in particular."""
    session = Session(smtpwire.ServerConnection(), peer="")
    assert session.peer_host == "unix"
    budget = FailureBudget(limit=2, delay=0)
    for _ in range(2):
        budget.end(budget.begin(session.peer_host), failed=True)
    assert budget.begin(Session(smtpwire.ServerConnection(), peer="/run/client.sock").peer_host).refused


def settings(**changes: object) -> _settings.Settings:
    """The command line's Settings, built as ``serve`` builds them, with ``changes``."""
    with _cli.serve.make_context("serve", ["--listen", "127.0.0.1:0", "--hostname", "mx.test", "--sink"]) as ctx:
        base = _cli.settings_from(ctx.params, file_limit=1024)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_trusted_proxy_networks_are_not_counted_per_client() -> None:
    """--trusted-proxy alone exempts a relay carrying many clients; with --proxy-protocol it must send PROXY too."""
    exempt = _settings.build_options(settings(trusted_proxies=("192.0.2.0/24",)))
    assert exempt.counted_client(("192.0.2.7", 1)) is None and exempt.counted_client(("198.51.100.7", 1))
    assert exempt.counted_client(("127.0.0.1", 1)) is None  # the local host stays exempt
    assert not exempt.trusts_proxy(("192.0.2.7", 1))
    proxied = _settings.build_options(settings(trusted_proxies=("192.0.2.0/24",), proxy_protocol=True))
    assert proxied.trusts_proxy(("192.0.2.7", 1)) and not proxied.trusts_proxy(("198.51.100.7", 1))
    assert proxied.counted_client(("192.0.2.7", 1)) is None
    assert _settings.build_options(settings(lmtp=True)).config.lmtp
