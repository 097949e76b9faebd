"""A real HAProxy in front of ``smtpwire serve``: the stored mail names the client, not the proxy.

The client connects from 127.0.0.2, HAProxy from 127.0.0.1, and only 127.0.0.1
is trusted: a Received header showing 127.0.0.2 can only come from the header.
"""

from __future__ import annotations

import pathlib
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.test_cli import run_cli, serve, split_trace, stored
from tests.test_interop import MESSAGE, TIMEOUT

CLIENT = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def haproxy(tmp_path: pathlib.Path, backend: tuple[str, int], server_options: str) -> Iterator[tuple[str, int]]:
    """HAProxy in TCP mode on a free 127.0.0.1 port, relaying to ``backend``; yields its address."""
    program = shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")
    if program is None:  # like the other real peers: a missing one fails, it does not hide
        pytest.fail("haproxy is not installed (.ci/run installs it)")
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 20s\n  timeout server 20s\n"
        f"frontend smtp\n  bind 127.0.0.1:{port}\n  default_backend mx\n"
        f"backend mx\n  server mx {backend[0]}:{backend[1]} source 127.0.0.1 {server_options}\n"
    )
    process = subprocess.Popen([program, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "haproxy never listened"
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(TIMEOUT)


@pytest.mark.parametrize(
    ("server_options", "version"),
    [("send-proxy", "PROXY v1 TCP4"), ("send-proxy-v2 check check-send-proxy inter 100ms", "PROXY v2 TCP4")],
)
def test_haproxy_relays_the_real_client(tmp_path: pathlib.Path, server_options: str, version: str) -> None:
    maildir = tmp_path / "maildir"
    with (
        serve("--maildir", str(maildir), "--proxy-protocol", "--trusted-proxy", "127.0.0.1/32") as server,
        haproxy(tmp_path, server.address, server_options) as front,
    ):
        if "check" in server_options:  # health checks (a v2 LOCAL header, then a reset) come and go meanwhile
            server.wait_for(r"connection lost")
        with smtplib.SMTP(*front, timeout=TIMEOUT, source_address=(CLIENT, 0)) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        server.wait_for(rf"client \('{CLIENT}', \d+\) via the proxy \('127\.0\.0\.1', \d+\) \({version}\)")
        assert server.stop() == 0
    [message] = stored(maildir)
    trace, content = split_trace(message)
    assert f"([{CLIENT}])" in trace.splitlines()[1]  # after the HELO name (smtplib says [127.0.0.1])
    assert content == MESSAGE


def test_a_direct_connection_from_an_untrusted_address_is_plain_smtp(tmp_path: pathlib.Path) -> None:
    with serve("--sink", "--proxy-protocol", "--trusted-proxy", "127.0.0.1/32") as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT, source_address=(CLIENT, 0)) as client:
            assert client.docmd("PROXY", f"TCP4 192.0.2.1 {CLIENT} 1 25")[0] == 500
            assert client.noop()[0] == 250
        assert server.stop() == 0


def test_the_trusted_proxy_must_speak_first(tmp_path: pathlib.Path) -> None:
    with serve("--sink", "--proxy-protocol", "--trusted-proxy", "127.0.0.1/32") as server:
        with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
            sock.sendall(b"EHLO direct.example\r\n")
            assert sock.recv(4096) == b""  # no greeting: nobody to talk SMTP to
        server.wait_for(r"closing the connection from the proxy \('127\.0\.0\.1', \d+\): not a PROXY protocol header")
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--trusted-proxy", "10.0.0.1/8"],
            "Invalid value for '--trusted-proxy': not an IP network such as 10.0.0.0/8: 10.0.0.1/8",
        ),
        (["--trusted-proxy", "proxy.example"], "'proxy.example' does not appear to be an IPv4 or IPv6 network"),
        (
            ["--proxy-protocol", "--trusted-proxy", "127.0.0.1", "--self-signed", "--tls-listen", "127.0.0.1:0"],
            "--proxy-protocol works with --listen only",
        ),
        (["--proxy-protocol"], "--proxy-protocol needs --trusted-proxy CIDR"),
        (["--proxy-protocol-from", "127.0.0.1"], "No such option '--proxy-protocol-from'"),
    ],
)
def test_bad_proxy_options_give_one_clear_line(args: list[str], message: str) -> None:
    result = run_cli("serve", "--sink", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
