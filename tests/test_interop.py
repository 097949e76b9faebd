"""Real clients nobody here wrote, against every adapter over 127.0.0.1.

smtplib (plain, starttls(), SMTP_SSL), aiosmtplib, swaks and
``openssl s_client -starttls smtp``; certificates from trustme; every
message is checked byte for byte as the application's hook received it.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import aiosmtplib
import pytest

from smtpwire_handler import ServerOptions
from tests import certs
from tests.servers import KINDS, Recorder, Running, running

TIMEOUT = 20
MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: interop\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b"\xc3\xa9 8-bit text\r\n"
)


#: MESSAGE as a raw client sends it after DATA: dot-stuffed (RFC 5321 4.5.2), then the end mark.
ON_THE_WIRE = MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\n"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(kind: str, recorder: Recorder) -> Iterator[Running]:
    options = ServerOptions(tls_context=certs.server_context())
    with running(kind, recorder, options) as run:
        yield run


def starttls_client(address: tuple[str, int]) -> smtplib.SMTP:
    """An smtplib client that said EHLO, upgraded with STARTTLS and said EHLO again."""
    client = smtplib.SMTP(*address, timeout=TIMEOUT)
    client.ehlo("client.example")
    client.starttls(context=certs.client_context())
    client.ehlo("client.example")
    return client


def delivered(recorder: Recorder) -> bytes:
    assert recorder.delivered.wait(TIMEOUT)
    (message,) = recorder.messages
    assert message.mail_from == "alice@example.org"
    assert message.rcpt_tos == ("bob@example.net",)
    return message.content


def test_smtplib_plain(server: Running, recorder: Recorder) -> None:
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        assert client.ehlo()[0] == 250
        assert client.has_extn("starttls")
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert delivered(recorder) == MESSAGE
    assert recorder.messages[0].tls is None


def test_smtplib_starttls(server: Running, recorder: Recorder) -> None:
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        assert client.starttls(context=certs.client_context())[0] == 220
        code, features = client.ehlo("client.example")
        assert code == 250
        assert b"STARTTLS" not in features.upper()  # RFC 3207 4.2: not offered once TLS is active
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert delivered(recorder) == MESSAGE
    tls = recorder.messages[0].tls
    assert tls is not None and tls.version in ("TLSv1.2", "TLSv1.3") and tls.cipher
    assert "tls_started" in recorder.calls


def test_smtplib_implicit_tls(server: Running, recorder: Recorder) -> None:
    assert server.tls_address is not None
    with smtplib.SMTP_SSL(*server.tls_address, timeout=TIMEOUT, context=certs.client_context()) as client:
        code, features = client.ehlo("client.example")
        assert code == 250 and b"STARTTLS" not in features.upper()
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert delivered(recorder) == MESSAGE
    assert recorder.messages[0].tls is not None


def test_client_certificate_reaches_the_handler(kind: str, recorder: Recorder) -> None:
    context = certs.server_context()
    context.verify_mode = ssl.CERT_OPTIONAL
    certs.authority().configure_trust(context)
    client_context = certs.client_context()
    certs.authority().issue_cert("client@example.org").configure_cert(client_context)
    with running(kind, recorder, ServerOptions(tls_context=context)) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.starttls(context=client_context)
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        assert delivered(recorder) == MESSAGE
    tls = recorder.messages[0].tls
    assert tls is not None and tls.peer_certificate is not None and tls.peer_certificate_der
    assert tls.peer_certificate["subjectAltName"] == (("email", "client@example.org"),)


def test_aiosmtplib_starttls(server: Running, recorder: Recorder) -> None:
    async def send() -> None:
        client = aiosmtplib.SMTP(
            hostname=server.address[0], port=server.address[1], tls_context=certs.client_context(), timeout=TIMEOUT
        )
        async with client:  # aiosmtplib upgrades with STARTTLS when the server offers it
            assert client.is_ehlo_or_helo_needed is False or await client.ehlo()
            errors, _ = await client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
            assert errors == {}

    asyncio.run(asyncio.wait_for(send(), TIMEOUT))
    assert delivered(recorder) == MESSAGE
    assert recorder.messages[0].tls is not None


def test_session_is_reset_after_tls(server: Running) -> None:
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("before.example")
        client.starttls(context=certs.client_context())
        # No EHLO after the handshake: the EHLO name and what it negotiated are forgotten.
        assert client.docmd("MAIL", "FROM:<alice@example.org>")[0] == 503
        assert client.ehlo("after.example")[0] == 250
        assert client.mail("alice@example.org")[0] == 250


def read_reply(stream: socket.socket | ssl.SSLSocket) -> bytes:
    """One whole SMTP reply, multi-line or not."""
    data = b""
    while True:
        chunk = stream.recv(4096)
        assert chunk, f"closed after {data!r}"
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and any(len(line) >= 4 and line[3:4] == b" " for line in lines[:-1]):
            return data


def test_plaintext_pipelined_after_starttls_is_never_executed(server: Running) -> None:
    """CVE-2011-0411: ``STARTTLS\\r\\nNOOP\\r\\n`` in one packet; the NOOP must not be answered."""
    with socket.create_connection(server.address, timeout=TIMEOUT) as raw:
        assert read_reply(raw).startswith(b"220 ")
        raw.sendall(b"EHLO c.example\r\n")
        assert b"STARTTLS" in read_reply(raw)
        raw.sendall(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<evil@example.org>\r\n")
        assert read_reply(raw) == b"220 2.0.0 Ready to start TLS\r\n"
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"EHLO c.example\r\n")
            ehlo = read_reply(tls)
            assert ehlo.startswith(b"250-") and b"STARTTLS" not in ehlo
            tls.sendall(b"QUIT\r\n")
            rest = read_reply(tls)
            assert rest.startswith(b"221 "), rest  # not the NOOP's 250, not MAIL's


def test_failed_handshake_leaves_the_server_serving(
    server: Running, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_connection(server.address, timeout=TIMEOUT) as raw:
        read_reply(raw)
        raw.sendall(b"EHLO c.example\r\n")
        read_reply(raw)
        raw.sendall(b"STARTTLS\r\n")
        assert read_reply(raw).startswith(b"220 ")
        raw.sendall(b"this is not a TLS ClientHello\r\n" * 4)
        assert_closed(raw)
    assert server.tls_address is not None
    with socket.create_connection(server.tls_address, timeout=TIMEOUT) as raw:  # garbage on implicit TLS
        raw.sendall(b"\x16\x03\x01\x00\x05hello")
        assert_closed(raw)

    def warnings() -> list[str]:
        records = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("smtpwire.")]
        return [r.getMessage() for r in records]

    deadline = time.monotonic() + TIMEOUT  # a session may close the socket a moment before it logs
    while len(warnings()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(warnings()) == 2, warnings()  # once per failed handshake
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert delivered(recorder) == MESSAGE


def assert_closed(sock: socket.socket) -> None:
    """The server closes the socket (EOF, reset or a broken TLS stream), within a bounded number of reads."""
    for _ in range(100):
        try:
            if not sock.recv(4096):
                return
        except (ConnectionResetError, ssl.SSLError):
            return
    raise AssertionError("the server kept the connection open")


def test_hook_exception_gives_451_and_the_session_goes_on(
    server: Running, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.fail_on.add("rcpt_to")
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        client.mail("alice@example.org")
        assert client.rcpt("bob@example.net") == (451, b"4.3.0 Requested action aborted: local error in processing")
        recorder.fail_on.clear()
        assert client.rcpt("bob@example.net")[0] == 250
        assert client.data(MESSAGE)[0] == 250
    assert delivered(recorder) == MESSAGE
    assert any("rcpt_to" in record.getMessage() and record.exc_info for record in caplog.records)


# -- command-line clients ------------------------------------------------------------------


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed (.ci/run installs it)")
    return path


def test_swaks_starttls_pipelining(server: Running, recorder: Recorder, tmp_path: pathlib.Path) -> None:
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE.removesuffix(b"\r\n"))  # swaks ends the data with CRLF . CRLF itself
    result = subprocess.run(
        [
            *(need("swaks"), "--server", server.address[0], "--port", str(server.address[1])),
            *("--from", "alice@example.org", "--to", "bob@example.net", "--ehlo", "swaks.example"),
            *("--tls", "--tls-verify", "--tls-ca-path", certs.write_ca(str(tmp_path)), "--tls-sni", "localhost"),
            *("--pipeline", "--data", str(data)),
        ],
        capture_output=True,
        timeout=TIMEOUT * 2,
    )
    transcript = result.stdout.decode(errors="replace")
    assert result.returncode == 0, transcript + result.stderr.decode(errors="replace")
    assert "<-  220 2.0.0 Ready to start TLS" in transcript
    assert delivered(recorder) == MESSAGE
    assert recorder.messages[0].helo_name == "swaks.example"
    assert recorder.messages[0].tls is not None


def test_openssl_s_client_starttls(server: Running, recorder: Recorder, tmp_path: pathlib.Path) -> None:
    commands = (
        b"EHLO openssl.example\n"
        b"MAIL FROM:<alice@example.org>\n"
        b"RCPT TO:<bob@example.net>\n"
        b"DATA\n" + ON_THE_WIRE.replace(b"\r\n", b"\n") + b"QUIT\n"
    )
    result = subprocess.run(
        [
            *(need("openssl"), "s_client", "-starttls", "smtp", "-crlf", "-quiet", "-ign_eof"),
            *("-connect", f"{server.address[0]}:{server.address[1]}", "-servername", "localhost"),
            *("-CAfile", certs.write_ca(str(tmp_path)), "-verify_return_error"),
        ],
        input=commands,
        capture_output=True,
        timeout=TIMEOUT * 2,
    )
    out = result.stdout.decode(errors="replace")
    assert "250 2.0.0 OK" in out and "221 " in out, out + result.stderr.decode(errors="replace")
    assert delivered(recorder) == MESSAGE
    assert recorder.messages[0].helo_name == "openssl.example"
