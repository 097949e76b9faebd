"""OpenDKIM signs, smtpwire verifies: a real signer's output checked by ``check_dkim`` and by ``smtpwire serve``.

OpenDKIM runs as a milter in signing mode with a key ``opendkim-genkey``
made, in its own process group on a Unix socket in a temporary folder; a
small milter client below plays the MTA (it must name the SMTP client
127.0.0.1, an internal host, or OpenDKIM does not sign).  The key record
opendkim-genkey wrote is published as it is, in a ``Zone`` or the local DNS server.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import shutil
import smtplib
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

import smtpwire_verify
from tests.dnsserver import local_dns
from tests.dnszone import Zone
from tests.test_cli import serve, stored
from tests.test_interop import TIMEOUT
from tests.test_serve_verify import AUTH_RESULTS

OPENDKIM = shutil.which("opendkim")
GENKEY = shutil.which("opendkim-genkey")
pytestmark = pytest.mark.skipif(
    OPENDKIM is None or GENKEY is None, reason="OpenDKIM is not installed (.ci/run installs opendkim, opendkim-tools)"
)

KEY_NAME = "mail._domainkey.example.org"
STARTUP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
#: Connections made to wake a stopping OpenDKIM, one per POLL_INTERVAL.
STOP_KNOCKS = 40
SOCKET_TIMEOUT = 5.0
#: No reply of OpenDKIM's is near this; a longer length word means the stream is out of step.
MAX_PACKET = 64 * 1024
#: Replies read for one command at most (progress notes, header changes, then the verdict).
MAX_REPLIES = 32

HEADERS = [
    ("From", "Alice <alice@example.org>"),
    ("To", "bob@example.net"),
    ("Subject", "Signed by OpenDKIM"),
    ("Date", "Sun, 06 Dec 2026 17:00:00 +0000"),
    ("Message-ID", "<opendkim-1@example.org>"),
]
#: Trailing spaces and empty lines at the end, which the two canonicalizations treat differently.
BODY = b"Hello from OpenDKIM.\r\nA second  line, with\tspaces \t\r\n\r\n\r\n"

# Milter protocol version 6 (libmilter's mfdef.h): command and reply codes, and the flags used here.
VERSION = 6
ALL_ACTIONS = 0x1FF
IPV4 = b"4"  # the address family in CONNECT
CLIENT_PORT = 40000  # the SMTP client's port, as an MTA would report it
OPTNEG, CONNECT, HELO, MAIL, RCPT, HEADER, EOH, BODY_CHUNK, EOB, QUIT = (c.encode() for c in "OCHMRLNBEQ")
CONTINUE, PROGRESS, ADD_HEADER, INSERT_HEADER = b"c", b"p", b"h", b"i"
FINAL = frozenset({b"a", b"c", b"r", b"t", b"d", b"y"})  # accept, continue, reject, tempfail, discard, reply
ACCEPTED = frozenset({b"a", b"c"})
SKIPPABLE = {CONNECT: 0x01, HELO: 0x02, MAIL: 0x04, RCPT: 0x08, BODY_CHUNK: 0x10, HEADER: 0x20, EOH: 0x40}


class MilterClient:
    """The MTA's side of the milter protocol, just enough to hand one message to a filter and read its changes."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(SOCKET_TIMEOUT)
        self.sock.connect(path)
        self.skipped = 0

    def negotiate(self) -> None:
        """Offer version 6, every action and no step skipped; note the steps the filter asks us to leave out."""
        self.send(OPTNEG, struct.pack(">III", VERSION, ALL_ACTIONS, 0))
        code, data = self.receive()
        assert code == OPTNEG and len(data) >= 12, (code, data)
        self.skipped = struct.unpack(">III", data[:12])[2]

    def step(self, command: bytes, data: bytes) -> None:
        """One stage the filter answers with "continue" (unless it asked not to be sent it)."""
        if self.skipped & SKIPPABLE.get(command, 0):
            return
        self.send(command, data)
        code, reply = self.verdict()
        assert code == CONTINUE, (command, code, reply)

    def end_of_message(self) -> list[tuple[int | None, bytes, bytes]]:
        """Send EOB; the header fields the filter adds, as (index or None for "append", name, value)."""
        self.send(EOB)
        added: list[tuple[int | None, bytes, bytes]] = []
        for _ in range(MAX_REPLIES):
            code, data = self.receive()
            if code == ADD_HEADER:
                added.append((None, *_two_strings(data)))
            elif code == INSERT_HEADER:
                added.append((struct.unpack(">I", data[:4])[0], *_two_strings(data[4:])))
            elif code in FINAL:
                assert code in ACCEPTED, (code, data)
                return added
        raise AssertionError("no verdict at the end of the message")

    def verdict(self) -> tuple[bytes, bytes]:
        for _ in range(MAX_REPLIES):
            code, data = self.receive()
            if code != PROGRESS:
                return code, data
        raise AssertionError("the filter only ever said it is still working")

    def send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(data) + 1) + command + data)

    def receive(self) -> tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", self._exactly(4))
        assert 1 <= length <= MAX_PACKET, length
        packet = self._exactly(length)
        return packet[:1], packet[1:]

    def _exactly(self, size: int) -> bytes:
        """``size`` octets; each recv returns at least one or the peer has gone, so this ends."""
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self.sock.recv(size - len(chunks))
            assert chunk, "the filter closed the connection"
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(QUIT)
        self.sock.close()


def _two_strings(data: bytes) -> tuple[bytes, bytes]:
    name, value, _ = data.split(b"\0", 2)
    return name, value


def sign(path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """The message as an MTA would pass it on after OpenDKIM: its header fields added, LF turned into CRLF."""
    client = MilterClient(path)
    try:
        client.negotiate()
        client.step(CONNECT, b"localhost\0" + IPV4 + struct.pack(">H", CLIENT_PORT) + b"127.0.0.1\0")
        client.step(HELO, b"client.example\0")
        client.step(MAIL, b"<alice@example.org>\0")
        client.step(RCPT, b"<bob@example.net>\0")
        for name, value in headers:
            client.step(HEADER, f"{name}\0{value}\0".encode())
        client.step(EOH, b"")
        client.step(BODY_CHUNK, body)
        added = client.end_of_message()
    finally:
        client.close()
    fields = [f"{name}: {value}\r\n".encode() for name, value in headers]
    for index, added_name, added_value in added:
        field = added_name + b": " + added_value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
        fields.insert(len(fields) if index is None else index, field)
    return b"".join(fields) + b"\r\n" + body


def key_record(folder: pathlib.Path) -> str:
    """The TXT record ``opendkim-genkey`` wrote in zone-file form: its quoted strings joined."""
    return "".join(re.findall(r'"([^"]*)"', (folder / "mail.txt").read_text()))


@pytest.fixture(scope="module")
def folder() -> Iterator[pathlib.Path]:
    """A short temporary folder (a Unix socket path must stay under 108 octets) holding a fresh key."""
    with tempfile.TemporaryDirectory(prefix="opendkim-") as name:
        path = pathlib.Path(name)
        command = [str(GENKEY), "-b", "2048", "-d", "example.org", "-s", "mail", "-D", name]
        subprocess.run(command, check=True, capture_output=True, timeout=TIMEOUT)
        yield path


@contextlib.contextmanager
def opendkim(folder: pathlib.Path, canonicalization: str) -> Iterator[str]:
    """A signing OpenDKIM for the block, in the foreground in its own process group; yields its socket."""
    name = canonicalization.replace("/", "-")
    socket_path, config, log = (folder / f"{name}.{suffix}" for suffix in ("sock", "conf", "log"))
    config.write_text(
        f"Mode s\nDomain example.org\nSelector mail\nKeyFile {folder / 'mail.private'}\n"
        f"Socket local:{socket_path}\nInternalHosts 127.0.0.0/8,::1\nRequireSafeKeys false\n"
        f"Syslog no\nCanonicalization {canonicalization}\n"
    )
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(OPENDKIM), "-f", "-x", str(config)], stdout=output, stderr=output, start_new_session=True
        )
    try:
        _wait_for_socket(socket_path, process, log)
        yield str(socket_path)
    finally:
        _stop(process, socket_path)


def _wait_for_socket(path: pathlib.Path, process: subprocess.Popen[bytes], log: pathlib.Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"opendkim exited with {process.returncode}: {log.read_text(errors='replace')}")
        if _knock(path):
            return
        time.sleep(POLL_INTERVAL)
    raise AssertionError(f"opendkim did not listen on {path} within {STARTUP_TIMEOUT} s")


def _stop(process: subprocess.Popen[bytes], path: pathlib.Path) -> None:
    """SIGTERM to its pid, then knock on the socket until it has gone (bounded), SIGKILL if it stays.

    libmilter's listener notices the stop request only when its 5-second poll
    returns; a connection makes it return at once.
    """
    process.terminate()
    for _ in range(STOP_KNOCKS):
        _knock(path)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(POLL_INTERVAL)
            return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(TIMEOUT)
        return
    process.kill()
    process.wait(TIMEOUT)


def _knock(path: pathlib.Path) -> bool:
    """Whether a connection to the socket was accepted (it is closed at once)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(SOCKET_TIMEOUT)
        return probe.connect_ex(str(path)) == 0


@pytest.fixture(scope="module", params=["relaxed/relaxed", "simple/simple"])
def signed(request: pytest.FixtureRequest, folder: pathlib.Path) -> bytes:
    """A message OpenDKIM signed with each canonicalization."""
    with opendkim(folder, request.param) as path:
        message = sign(path, HEADERS, BODY)
    assert f"c={request.param}".encode() in message.replace(b"\r\n\t", b""), message[:600]
    return message


def verify(message: bytes, zone: Zone) -> list[smtpwire_verify.MethodResult]:
    check = smtpwire_verify.Check(smtpwire_verify.check_dkim(message, now=int(time.time())))
    return [result.method_result() for result in smtpwire_verify.run(check, zone)]


def test_opendkim_writes_one_signature_for_the_key_it_made(signed: bytes, folder: pathlib.Path) -> None:
    assert signed.count(b"DKIM-Signature: ") == 1
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert key_record(folder).startswith("v=DKIM1;") and "p=MII" in key_record(folder)


def test_smtpwire_verifies_what_opendkim_signed(signed: bytes, folder: pathlib.Path) -> None:
    zone = Zone({KEY_NAME: [("TXT", key_record(folder))]})
    (result,) = verify(signed, zone)
    assert (result.result, result.property("header.d"), result.property("header.s")) == ("pass", "example.org", "mail")
    assert [query.name for query in zone.asked] == [KEY_NAME]


def test_one_changed_body_octet_fails(signed: bytes, folder: pathlib.Path) -> None:
    tampered = signed.replace(b"Hello from", b"Jello from")
    assert tampered != signed
    (result,) = verify(tampered, Zone({KEY_NAME: [("TXT", key_record(folder))]}))
    assert (result.result, result.property("header.d")) == ("fail", "example.org")


def test_serve_verify_passes_an_opendkim_signed_message(
    signed: bytes, folder: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    maildir = tmp_path / "maildir"
    with local_dns(Zone({KEY_NAME: [("TXT", key_record(folder))]})) as dns:
        args = ["--verify", "dkim", "--dns-resolver", dns.address, "--maildir", str(maildir)]
        with serve(*args) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], signed)
            server.wait_for(r"accepted id=")
    (kept,) = stored(maildir)
    (field,) = AUTH_RESULTS.findall(kept)
    signature = re.search(rb"\bb=([A-Za-z0-9+/]{12})", signed)
    assert signature, signed[:600]
    start = (
        b"Authentication-Results: mx.test;\r\n\tdkim=pass header.d=example.org header.s=mail header.a=rsa-sha256\r\n"
    )
    assert field.startswith(start + b"\t  header.b="), field
    assert field[len(start) + 12 :].strip(b'"\r\n') == signature[1]  # a quoted-string only when it needs one
    assert kept.endswith(field + signed)
