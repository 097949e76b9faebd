"""XCLIENT with real peers: swaks from a trusted and an untrusted address, and nginx's mail proxy in front.

Each client connects from 127.0.0.2 (the whole 127.0.0.0/8 is the loopback
on Linux), so the server's own view of the connection (127.0.0.1 for nginx)
and the client XCLIENT names differ, and trust is varied by the networks
given.  nginx runs in the foreground with a throwaway configuration and an
``auth_http`` endpoint served by the test (a few lines of http.server).
"""

from __future__ import annotations

import http.server
import logging
import os
import pathlib
import shutil
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from smtpwire_handler import MaildirStore, ServerOptions
from tests.servers import running
from tests.test_xclient_adapters import MESSAGE, Watching

TIMEOUT = 10
CLIENT = "127.0.0.2"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MAIL_MODULE = pathlib.Path("/usr/lib/nginx/modules/ngx_mail_module.so")


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("swaks")
    if binary is None:
        pytest.skip("swaks is not installed")
    command = [binary, "--server", f"127.0.0.1:{port}", "--local-interface", CLIENT, "--ehlo", "swaks.example"]
    command += ["--from", "alice@example.org", "--to", "bob@example.net", "--timeout", "10", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


XCLIENT_ARGS = ("--xclient-addr", "192.0.2.9", "--xclient-name", "client.example", "--xclient-login", "alice")


def test_swaks_from_a_trusted_address_names_another_client() -> None:
    handler = Watching()
    with running("asyncio", handler, ServerOptions(xclient_from=[f"{CLIENT}/32"])) as server:
        result = swaks(server.address[1], *XCLIENT_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> XCLIENT ADDR=192.0.2.9 NAME=client.example LOGIN=alice" in result.stdout, result.stdout
    assert "<-  220 localhost ESMTP smtpwire" in result.stdout, result.stdout
    seen = handler.seen[0]
    assert "Received: from swaks.example (client.example [192.0.2.9])" in seen.trace, seen.trace
    assert (seen.xclient_login, seen.proxy[0]) == ("alice", CLIENT)  # type: ignore[index]


def test_swaks_from_an_untrusted_address_is_not_offered_xclient_and_stays_itself() -> None:
    """Not advertised, swaks does not send XCLIENT (its 550 is in test_xclient_adapters, by smtplib)."""
    handler = Watching()
    with running("blocking", handler, ServerOptions(xclient_from=["127.0.0.3/32"])) as server:
        refused = swaks(server.address[1], *XCLIENT_ARGS)
        optional = swaks(server.address[1], *XCLIENT_ARGS, "--xclient-optional")
    assert refused.returncode == 33 and "Host did not advertise XCLIENT" in refused.stderr, refused.stderr
    assert optional.returncode == 0, optional.stdout + optional.stderr  # the message goes on, as itself
    assert len(handler.seen) == 1
    seen = handler.seen[0]
    assert "Received: from swaks.example ([127.0.0.2])" in seen.trace, seen.trace
    assert seen.peer[0] == CLIENT and seen.client_name is None and seen.proxy is None  # type: ignore[index]


# -- nginx's mail proxy ----------------------------------------------------------------


class AuthEndpoint(http.server.BaseHTTPRequestHandler):
    """nginx's auth_http: every client may pass, to the smtpwire server the test runs."""

    backend_port = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Auth-Status", "OK")
        self.send_header("Auth-Server", "127.0.0.1")
        self.send_header("Auth-Port", str(self.backend_port))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: nginx's requests are not the test's output."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def auth_endpoint() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), AuthEndpoint)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def nginx_config(folder: pathlib.Path, port: int, auth_port: int) -> pathlib.Path:
    config = folder / "nginx.conf"
    config.write_text(
        f"load_module {MAIL_MODULE};\n"
        "daemon off;\nmaster_process off;\nworker_processes 1;\n"
        f"error_log {folder / 'error.log'} info;\npid {folder / 'nginx.pid'};\n"
        "events { worker_connections 64; }\n"
        "mail {\n"
        "  server_name proxy.example;\n"
        f"  auth_http 127.0.0.1:{auth_port}/auth;\n"
        "  server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    protocol smtp;\n    xclient on;\n    smtp_auth none;\n"
        "  }\n"
        "}\n"
    )
    return config


@pytest.fixture
def nginx_mail(tmp_path: pathlib.Path, auth_endpoint: http.server.HTTPServer) -> Iterator[tuple[int, pathlib.Path]]:
    """nginx's SMTP proxy in the foreground on a free port: (its port, its error log)."""
    if not (os.access(NGINX, os.X_OK) and MAIL_MODULE.exists()):
        pytest.skip("nginx with its mail module (libnginx-mod-mail) is not installed")
    port = free_port()
    config = nginx_config(tmp_path, port, auth_endpoint.server_address[1])
    command = [NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        yield port, tmp_path / "error.log"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - nginx ignored SIGTERM
            process.kill()
            process.wait(timeout=10)


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            pytest.fail(f"nginx exited {process.returncode}: {process.stderr.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("nginx did not listen within 10 s")


def test_behind_nginx_the_stored_received_header_and_the_log_name_the_real_client(
    nginx_mail: tuple[int, pathlib.Path], tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, error_log = nginx_mail
    caplog.set_level(logging.INFO)
    store = MaildirStore(tmp_path / "mail")
    with running("asyncio", store, ServerOptions(xclient_from=["127.0.0.1/32"])) as server:
        AuthEndpoint.backend_port = server.address[1]
        with smtplib.SMTP("127.0.0.1", port, "client.example", timeout=TIMEOUT, source_address=(CLIENT, 0)) as client:
            refused = client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert refused == {}, error_log.read_text()
    (stored,) = (tmp_path / "mail" / "new").iterdir()
    # nginx's XCLIENT: ADDR=127.0.0.2 (the real client), NAME=[UNAVAILABLE] (no resolver configured)
    assert b"Received: from client.example ([127.0.0.2])\r\n" in stored.read_bytes(), stored.read_bytes()
    assert f"client {CLIENT} (no name) via XCLIENT from ('127.0.0.1'" in caplog.text, caplog.text
    assert f"closed (1 message(s), peer {CLIENT})" in caplog.text, caplog.text
