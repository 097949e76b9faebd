"""``smtpwire serve --lmtp``: one reply per recipient, one durable copy per recipient's Maildir.

The server runs as a user runs it (a subprocess) on a Unix socket; the
clients are a raw socket, Python's ``smtplib.LMTP`` and Postfix's own
``smtp-source -L``.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import socket
import subprocess
import types
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

import smtpwire
from smtpwire_anyio import TLSInfo
from smtpwire_handler._trace import protocol_name
from smtpwire_serve._lmtp import SPOOL, Mailboxes, folder_name
from tests.postfix import sendmail, shared_temp_dir, throwaway_postfix
from tests.test_cli import Serve, killed_after
from tests.test_interop import MESSAGE, TIMEOUT

BACKENDS = ["asyncio", "trio"]


class UnixServe(Serve):
    """``serve`` on Unix sockets only: ready once it says where it serves."""

    def _address(self) -> tuple[str, int]:
        self.wait_for(r"smtpwire serving on .*unix:")
        return ("", 0)


def serve_unix(socket_path: pathlib.Path, *args: str) -> AbstractContextManager[UnixServe]:
    return killed_after(UnixServe(["--listen", f"unix:{socket_path}", "--hostname", "mx.test", *args]))


class Wire:
    """A raw client on a Unix socket: send a line, read one (multi-line) reply."""

    def __init__(self, path: pathlib.Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, str]:
        lines: list[str] = []
        while True:
            line = self.file.readline(1024)
            assert line.endswith(b"\r\n"), f"connection closed after {lines!r}: {line!r}"
            lines.append(line[4:-2].decode())
            if line[3:4] == b" ":
                return int(line[:3]), "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@contextmanager
def wire(path: pathlib.Path) -> Iterator[Wire]:
    client = Wire(path)
    try:
        yield client
    finally:
        client.close()


def lmtp_transaction(client: Wire, recipients: list[str], message: bytes) -> list[tuple[int, str]]:
    """LHLO, MAIL, one RCPT each (all must be accepted), DATA: the replies after the data, one per recipient."""
    assert client.reply()[0] == 220
    assert client.command("LHLO client.example")[0] == 250
    assert client.command("MAIL FROM:<alice@example.org>")[0] == 250
    for recipient in recipients:
        assert client.command(f"RCPT TO:<{recipient}>") == (250, "2.1.5 OK")
    assert client.command("DATA")[0] == 354
    stuffed = (b"." if message.startswith(b".") else b"") + message.replace(b"\r\n.", b"\r\n..")  # RFC 5321 4.5.2
    client.send(stuffed + b".\r\n")
    return [client.reply() for _ in recipients]


def delivered(root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Each recipient folder's messages in new/; nothing may be left in tmp/ or the spool."""
    assert not list((root / SPOOL / "tmp").iterdir()), "the spool kept a file"
    found: dict[str, list[pathlib.Path]] = {}
    for folder in sorted(root.iterdir()):
        if folder.name != SPOOL and folder.is_dir():
            assert not list((folder / "tmp").iterdir())
            found[folder.name] = sorted((folder / "new").iterdir())
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_recipient_gets_its_reply_and_its_copy(tmp_path: pathlib.Path, backend: str) -> None:
    path, root = tmp_path / "lmtp.sock", tmp_path / "mail"
    with serve_unix(path, "--lmtp", "--maildir", str(root), "--backend", backend) as server:
        assert os.stat(path).st_mode & 0o777 == 0o660
        with wire(path) as client:
            recipients = ["Bob@Example.NET", "carol@example.net", "dave+tag@example.net"]
            assert lmtp_transaction(client, recipients, MESSAGE) == [(250, "2.0.0 OK")] * 3
            assert client.command("QUIT")[0] == 221
        assert server.stop() == 0
        assert not path.exists(), "the socket file outlived the server"
    boxes = delivered(root)
    assert list(boxes) == ["bob@example.net", "carol@example.net", "dave+tag@example.net"]
    copies = [messages[0] for messages in boxes.values()]
    assert all(len(messages) == 1 for messages in boxes.values())
    assert len({copy.read_bytes() for copy in copies}) == 1, "the copies differ"
    assert copies[0].stat().st_nlink == 3  # one file, linked into each recipient's new/
    text = copies[0].read_bytes()
    assert text.endswith(MESSAGE)
    assert b"Received: from client.example (unix socket)\r\n\tby mx.test (smtpwire) with LMTP id " in text
    assert copies[0].stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_recipient_whose_copy_fails_gets_451_the_others_250(tmp_path: pathlib.Path, backend: str) -> None:
    path, root = tmp_path / "lmtp.sock", tmp_path / "mail"
    root.mkdir()
    (root / "carol@example.net").write_text("a file where the Maildir should be")
    with serve_unix(path, "--lmtp", "--maildir", str(root), "--backend", backend) as server:
        with wire(path) as client:
            replies = lmtp_transaction(client, ["bob@example.net", "carol@example.net", "dave@example.net"], MESSAGE)
            assert [code for code, _ in replies] == [250, 451, 250]
            assert replies[1][1] == "4.3.0 Requested action aborted: error in storing the message"
            assert client.command("NOOP")[0] == 250  # the session goes on
        server.wait_for(r"storing the message for <carol@example.net> failed")
        assert server.stop() == 0
    boxes = delivered(root)
    assert list(boxes) == ["bob@example.net", "dave@example.net"]
    assert boxes["bob@example.net"][0].read_bytes() == boxes["dave@example.net"][0].read_bytes()
    assert (root / "carol@example.net").read_text() == "a file where the Maildir should be"


def test_bdat_chunks_are_delivered_per_recipient_too(tmp_path: pathlib.Path) -> None:
    path, root = tmp_path / "lmtp.sock", tmp_path / "mail"
    with serve_unix(path, "--lmtp", "--maildir", str(root)) as server:
        with wire(path) as client:
            assert client.reply()[0] == 220
            assert "CHUNKING" in client.command("LHLO client.example")[1].splitlines()
            assert client.command("MAIL FROM:<alice@example.org>")[0] == 250
            assert client.command("RCPT TO:<bob@example.net>")[0] == 250
            assert client.command("RCPT TO:<carol@example.net>")[0] == 250
            head, tail = MESSAGE[:40], MESSAGE[40:]
            client.send(f"BDAT {len(head)}\r\n".encode() + head)
            assert client.reply() == (250, f"2.0.0 {len(head)} octets received")
            client.send(f"BDAT {len(tail)} LAST\r\n".encode() + tail)
            assert [client.reply() for _ in range(2)] == [(250, "2.0.0 OK")] * 2
        assert server.stop() == 0
    boxes = delivered(root)
    assert [len(messages) for messages in boxes.values()] == [1, 1]
    assert all(messages[0].read_bytes().endswith(MESSAGE) for messages in boxes.values())


def test_python_smtplib_lmtp_and_the_sink(tmp_path: pathlib.Path) -> None:
    import smtplib

    path = tmp_path / "lmtp.sock"
    with serve_unix(path, "--lmtp", "--sink") as server:
        with smtplib.LMTP(str(path), timeout=TIMEOUT) as client:
            assert client.docmd("EHLO", "client.example")[0] == 500  # LMTP has LHLO instead (RFC 2033 4.1)
            assert client.ehlo("client.example")[0] == 250  # smtplib.LMTP's ehlo() says LHLO
            assert client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE) == {}
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> to=<bob@example.net> .* peer=unix discarded")
        assert server.stop() == 0


def test_smtp_source_speaks_lmtp_to_serve(tmp_path: pathlib.Path) -> None:
    """Postfix's load generator: 5 messages of 2 recipients each (b@ and 2b@) over LMTP, 10 copies stored."""
    program = shutil.which("smtp-source") or shutil.which("/usr/sbin/smtp-source")
    if program is None:  # like the other real peers: a missing one fails, it does not hide
        pytest.fail("smtp-source (postfix) is not installed")
    path, root = tmp_path / "lmtp.sock", tmp_path / "mail"
    with serve_unix(path, "--lmtp", "--maildir", str(root)) as server:
        source = [program, "-L", "-c", "-m", "5", "-r", "2", "-f", "a@example.org", "-t", "b@example.org"]
        result = subprocess.run([*source, f"unix:{path}"], capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr
        assert server.stop() == 0
    boxes = delivered(root)
    assert {name: len(messages) for name, messages in boxes.items()} == {"2b@example.org": 5, "b@example.org": 5}
    assert sorted(p.name for p in boxes["b@example.org"]) == sorted(p.name for p in boxes["2b@example.org"])


def test_postfix_delivers_by_lmtp_over_the_unix_socket(tmp_path: pathlib.Path) -> None:
    """Postfix's own lmtp client (default_transport = lmtp:unix:...): one message, two recipients, two copies."""
    sockets = shared_temp_dir()  # the lmtp client runs as the postfix user
    try:
        path, root = sockets / "lmtp.sock", tmp_path / "mail"
        main_cf = (
            "myhostname = mta.test\nmyorigin = mta.test\nrelay_domains =\ninet_interfaces = loopback-only\n"
            f"smtputf8_enable = no\ndefault_transport = lmtp:unix:{path}\n"
        )
        # 0666: the lmtp client runs as the postfix user (in production: 0660 and postfix in the socket's group)
        with (
            serve_unix(path, "--lmtp", "--maildir", str(root), "--socket-mode", "0666") as server,
            throwaway_postfix(main_cf, "lmtp unix - - n - - lmtp\n") as home,
        ):
            sendmail(home, "alice@example.org", ["bob@example.org", "carol@example.org"], MESSAGE)
            for recipient in ("bob", "carol"):
                server.wait_for(rf"accepted id=\w+ from=<alice@example.org> to=<{recipient}@example.org> .* peer=unix")
            assert server.stop() == 0
        boxes = delivered(root)
        assert list(boxes) == ["bob@example.org", "carol@example.org"]
        [bob], [carol] = boxes.values()
        assert bob.read_bytes() == carol.read_bytes() and bob.stat().st_nlink == 2
        assert b"(unix socket)\r\n\tby mx.test (smtpwire) with LMTP id " in bob.read_bytes()
        assert b"Received: by mta.test (Postfix" in bob.read_bytes()  # Postfix's own trace, below ours
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


# -- the naming and the store, without a server


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("Bob@Example.NET", "bob@example.net"),
        ("../../etc/passwd@x", "%2E.%2F..%2Fetc%2Fpasswd@x"),
        (".hidden@example.org", "%2Ehidden@example.org"),
        ("..", "%2E."),
        ('"a b/c%"@example.org', "%22a%20b%2Fc%25%22@example.org"),
        ("postmaster", "postmaster"),
        ("jürgen@bücher.example", "j%C3%BCrgen@b%C3%BCcher.example"),
        ("a\udcffb@x", "a%ED%B3%BFb@x"),
        ("", "%"),
    ],
)
def test_folder_names_are_one_safe_path_component(address: str, name: str) -> None:
    assert folder_name(address) == name


def test_long_folder_names_are_cut_and_hashed() -> None:
    long = "x" * 300 + "@example.org"
    name = folder_name(long)
    assert len(name) == 197 and name.startswith("x" * 180 + "~")
    assert folder_name("y" + long[1:]) != name and folder_name(long.upper()) == name


def test_without_links_each_copy_is_written_and_renamed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across file systems (EXDEV) a copy replaces the link: same bytes, its own file, nothing left in tmp/."""

    def no_link(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    mailboxes = Mailboxes(tmp_path)
    delivery = mailboxes.spool.begin()
    delivery.write(b"Subject: one\r\n\r\n")
    monkeypatch.setattr(os, "link", no_link)
    outcomes = mailboxes.deliver(delivery, b"body\r\n", ["a@x", "b@x", "a@x"])
    assert list(outcomes) == ["a@x", "b@x"]  # the same folder twice gets one copy
    paths = [outcome for outcome in outcomes.values() if isinstance(outcome, pathlib.Path)]
    assert [p.read_bytes() for p in paths] == [b"Subject: one\r\n\r\nbody\r\n"] * 2
    assert all(p.stat().st_nlink == 1 and p.stat().st_mode & 0o777 == 0o600 for p in paths)
    assert list(delivered(tmp_path)) == ["a@x", "b@x"]


def test_a_spool_that_fails_fails_every_recipient(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    mailboxes = Mailboxes(tmp_path)
    delivery = mailboxes.spool.begin()
    monkeypatch.setattr(os, "fsync", full)
    outcomes = mailboxes.deliver(delivery, b"body\r\n", ["a@x", "b@x"])
    assert [getattr(o, "errno", None) for o in outcomes.values()] == [errno.ENOSPC, errno.ENOSPC]
    assert delivered(tmp_path) == {}


@pytest.mark.parametrize(
    ("tls", "authenticated", "smtputf8", "name"),
    [
        (False, False, False, "LMTP"),
        (True, False, False, "LMTPS"),
        (False, True, False, "LMTPA"),
        (True, True, False, "LMTPSA"),
        (False, False, True, "UTF8LMTP"),
        (True, True, True, "UTF8LMTPSA"),
    ],
)
def test_lmtp_protocol_names_of_rfc_3848_and_6531(tls: bool, authenticated: bool, smtputf8: bool, name: str) -> None:
    session = types.SimpleNamespace(
        esmtp=True,
        tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256) if tls else None,
        authenticated=smtpwire.Authenticated("PLAIN", "", "alice") if authenticated else None,
    )
    assert protocol_name(session, smtputf8, lmtp=True) == name  # type: ignore[arg-type]
