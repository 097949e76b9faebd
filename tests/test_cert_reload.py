"""SIGHUP while a renewal rewrites the certificate and key: every handshake still succeeds.

The files are rewritten in place, the certificate first and the key a moment
later, so a reload often reads a certificate with the other pair's key (or a
file cut short); such a reload must keep the context it had, whole.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pathlib
import signal
import smtplib
import socket
import ssl
import threading
import time

import pytest
import trustme

from smtpwire_handler import ServerOptions
from smtpwire_serve import _tls
from tests import certs
from tests.test_cli import Serve

#: How long the client keeps shaking hands, and the fewest handshakes that makes a test of it.
STRESS_SECONDS = 3.0
MIN_HANDSHAKES = 50
SIGHUP_EVERY = 0.004
#: Between writing the certificate and writing its key: the half-renewed state a reload may read.
HALF_RENEWED = 0.002
SOCKET_TIMEOUT = 5.0


def fingerprint_of(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def new_pair() -> trustme.LeafCert:
    return certs.authority().issue_cert("localhost", "127.0.0.1")


def pem_of(pair: trustme.LeafCert) -> tuple[bytes, bytes]:
    return pair.cert_chain_pems[0].bytes(), pair.private_key_pem.bytes()


def shown_fingerprint(tls: ssl.SSLSocket) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return fingerprint_of(der)


def starttls_handshake(address: tuple[str, int]) -> str:
    """One STARTTLS session up to the handshake and EHLO; the fingerprint of the certificate shown."""
    with smtplib.SMTP(*address, timeout=SOCKET_TIMEOUT) as client:
        client.ehlo("client.example")
        client.starttls(context=certs.client_context())
        assert client.ehlo("client.example")[0] == 250
        assert isinstance(client.sock, ssl.SSLSocket)
        return shown_fingerprint(client.sock)


def implicit_tls_handshake(address: tuple[str, int]) -> str:
    """One connection to the implicit-TLS listener, up to the greeting; the fingerprint of the certificate shown."""
    raw = socket.create_connection(address, timeout=SOCKET_TIMEOUT)
    with raw, certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.recv(512).startswith(b"220 ")
        return shown_fingerprint(tls)


class Renewal(threading.Thread):
    """Rewrites ``cert`` and ``key`` in place with one pair, then the other, until stopped: never atomically."""

    def __init__(self, cert: pathlib.Path, key: pathlib.Path, pairs: list[tuple[bytes, bytes]]) -> None:
        super().__init__(daemon=True)
        self.cert, self.key, self.pairs = cert, key, pairs
        self.stop = threading.Event()

    def run(self) -> None:
        for certificate, private_key in itertools.cycle(self.pairs):
            if self.stop.is_set():
                return
            self.cert.write_bytes(certificate)
            time.sleep(HALF_RENEWED)
            self.key.write_bytes(private_key)
            time.sleep(HALF_RENEWED)


class Hangups(threading.Thread):
    """Sends SIGHUP to ``pid`` every few milliseconds until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        while not self.stop.wait(SIGHUP_EVERY):
            os.kill(self.pid, signal.SIGHUP)
            self.sent += 1


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_every_handshake_succeeds_while_a_renewal_races_sighups(tmp_path: pathlib.Path, backend: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    pairs = [pem_of(new_pair()), pem_of(new_pair())]
    cert.write_bytes(pairs[0][0])
    key.write_bytes(pairs[0][1])
    tls_port = free_port()
    args = ["--listen", "127.0.0.1:0", "--tls-listen", f"127.0.0.1:{tls_port}", "--sink", "--backend", backend]
    server = Serve([*args, "--tls-cert", str(cert), "--tls-key", str(key)])
    renewal, hangups = Renewal(cert, key, pairs), Hangups(server.process.pid)
    shown: list[str] = []
    try:
        renewal.start()
        hangups.start()
        deadline = time.monotonic() + STRESS_SECONDS
        while time.monotonic() < deadline:
            shown.append(starttls_handshake(server.address))
            shown.append(implicit_tls_handshake(("127.0.0.1", tls_port)))
    finally:
        renewal.stop.set()
        hangups.stop.set()
        renewal.join(SOCKET_TIMEOUT)
        hangups.join(SOCKET_TIMEOUT)
    assert server.stop() == 0
    log = server.output()
    assert len(shown) >= MIN_HANDSHAKES
    expected = {fingerprint_of(ssl.PEM_cert_to_DER_cert(certificate.decode())) for certificate, _ in pairs}
    assert set(shown) == expected  # both pairs were served: reloads did happen while the handshakes went on
    assert "SIGHUP: reloaded the TLS certificate" in log
    assert "does not match the certificate in --tls-cert" in log  # a half-renewed pair was read, and refused
    assert "Traceback" not in log and "TLS handshake" not in log


def test_a_failed_reload_leaves_the_live_context_as_it_was(tmp_path: pathlib.Path) -> None:
    """The swap is whole: the live context is never loaded into, so a bad pair cannot take its key away."""
    first, second = pem_of(new_pair()), pem_of(new_pair())
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(first[0])
    key.write_bytes(first[1])
    live, _ = _tls.server_context(str(cert), str(key))
    options = ServerOptions(tls_context=live)
    key.write_bytes(second[1])  # half renewed: the first certificate, the second key
    with pytest.raises(_tls.TLSFileError, match="does not match the certificate"):
        _tls.server_context(str(cert), str(key))
    assert options.tls_context is live
    cert.write_bytes(second[0])
    renewed, _ = _tls.server_context(str(cert), str(key))
    options.replace_tls_context(renewed)
    assert options.tls_context is renewed and renewed is not live
    for context in (live, renewed):  # the old one still serves whatever handshake holds it
        assert handshake_with(context)


def handshake_with(server_context: ssl.SSLContext) -> bool:
    """A handshake over a socket pair with ``server_context``: whether the client verified and finished it."""
    left, right = socket.socketpair()
    left.settimeout(SOCKET_TIMEOUT)
    right.settimeout(SOCKET_TIMEOUT)
    result: list[BaseException | None] = []

    def serve_one() -> None:
        try:
            with server_context.wrap_socket(right, server_side=True):
                result.append(None)
        except (OSError, ssl.SSLError) as error:
            result.append(error)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    with certs.client_context().wrap_socket(left, server_hostname="127.0.0.1"):
        pass
    thread.join(SOCKET_TIMEOUT)
    return result == [None]


def test_replacing_the_context_of_options_without_tls_is_refused() -> None:
    with pytest.raises(ValueError, match="no tls_context to replace"):
        ServerOptions().replace_tls_context(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    with pytest.raises(ValueError, match=r"must be an ssl\.SSLContext"):
        ServerOptions(tls_context=certs.server_context()).replace_tls_context("cert.pem")  # type: ignore[arg-type]
