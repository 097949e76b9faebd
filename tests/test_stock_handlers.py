"""The stock handlers (MaildirStore, MboxStore, PrintHandler, EmailHandler) over real sockets, on every kind of adapter.

Each runs as it is (a plain ``Handler``) on the blocking adapter and on the
asyncio adapter, with smtplib as the client; what they store is read back
with the standard library's ``mailbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.policy
import errno
import importlib
import io
import mailbox
import os
import re
import smtplib
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest

import smtpwire
import smtpwire_anyio
import smtpwire_handler
from smtpwire import Reply
from smtpwire_handler import (
    EmailHandler,
    Envelope,
    Handler,
    MaildirStore,
    MboxStore,
    PrintHandler,
    ServerOptions,
    Session,
)
from smtpwire_handler._mbox import FromQuoter
from tests.servers import running

KINDS = ("blocking", "asyncio")
TIMEOUT = 10
SENDER, RECIPIENT = "alice@example.org", "bob@example.net"
#: Lines an mbox must quote, and lines it must leave alone.
BODY = (
    b"Subject: from lines\r\n"
    b"\r\n"
    b"From here on, a line an mbox must quote.\r\n"
    b">From an already quoted one.\r\n"
    b">>From twice quoted.\r\n"
    b"Fromage is no From_ line, nor is\r\n"
    b" From with a space before.\r\n"
    b"From "
)
MESSAGE = BODY + b"the end\r\n"
BIG = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 40  # over max_message_size=2000


@contextlib.contextmanager
def serving(kind: str, handler: Handler, **config: Any) -> Iterator[tuple[str, int]]:
    """``handler`` served as it is by ``kind``'s adapter on 127.0.0.1 (no wrapping into async hooks)."""
    options = ServerOptions(config=smtpwire.ServerConfig(**config))
    if kind in ("blocking", "memorybio"):
        with running(kind, handler, options) as server:
            yield server.address
        return
    if kind.startswith("anyio-"):
        import smtpwire_anyio

        anyio_server = smtpwire_anyio.Server(handler, options, listen=[("127.0.0.1", 0)])
        with anyio.from_thread.start_blocking_portal(kind.removeprefix("anyio-")) as portal:
            future, _ = portal.start_task(anyio_server.serve)
            try:
                yield anyio_server.addresses[0]
            finally:
                portal.call(anyio_server.shutdown, 1.0)
                future.result(timeout=TIMEOUT)
        return
    import smtpwire_asyncio

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="stock-asyncio", daemon=True)
    thread.start()

    def call(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=TIMEOUT)

    async def start() -> smtpwire_asyncio.Server:
        server = smtpwire_asyncio.Server(handler, options, listen=[("127.0.0.1", 0)])
        await server.start()
        return server

    server = call(start())
    try:
        yield server.addresses[0]
    finally:
        call(server.shutdown(1.0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=TIMEOUT)
        loop.close()


def send(address: tuple[str, int], message: bytes = MESSAGE, sender: str = SENDER) -> None:
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        assert client.sendmail(sender, [RECIPIENT], message) == {}


def refused(address: tuple[str, int], message: bytes = MESSAGE) -> tuple[int, bytes | str]:
    """The end of data's refusal (smtplib raises it)."""
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        with pytest.raises(smtplib.SMTPDataError) as error:
            client.sendmail(SENDER, [RECIPIENT], message)
        return error.value.smtp_code, error.value.smtp_error


def raw_data(address: tuple[str, int], body: bytes, end: bool) -> bytes:
    """Send a message without SIZE (so only the end of data can refuse it); its reply, or b"" if ``end`` is False.

    Without ``end``, the client leaves in the middle of the data.
    """
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        file = sock.makefile("rb")
        file.readline()
        for line, code in (
            (b"EHLO client.example", b"250 "),
            (f"MAIL FROM:<{SENDER}>".encode(), b"250"),
            (f"RCPT TO:<{RECIPIENT}>".encode(), b"250"),
            (b"DATA", b"354"),
        ):
            sock.sendall(line + b"\r\n")
            while not (reply := file.readline()).startswith(code):
                assert reply.startswith(code[:3] + b"-"), reply
        sock.sendall(body + (b".\r\n" if end else b""))
        return file.readline() if end else b""


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def failing_for(folder: Path, real: Callable[..., Any], error: int, after: int = 0) -> Callable[..., Any]:
    """``real`` (os.write, os.fsync) failing with ``error`` on files under ``folder``, after ``after`` good calls."""
    calls = 0

    def call(fd: int, *args: Any) -> Any:
        nonlocal calls
        try:
            ours = os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
        except OSError:
            ours = False
        calls += ours
        if ours and calls > after:
            raise OSError(error, os.strerror(error))
        return real(fd, *args)

    return call


def unquoted(mbox_body: bytes) -> bytes:
    """mboxrd's quoting taken off again: what a reader that knows mboxrd shows."""
    return re.sub(rb"(?m)^>(>*From )", rb"\1", mbox_body)


# -- MaildirStore ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_maildir_store_delivers_what_mailbox_maildir_reads(kind: str, tmp_path: Path) -> None:
    folder = tmp_path / "Maildir"
    with serving(kind, MaildirStore(folder, hostname="mx.example")) as address:
        send(address)
        send(address, b"Subject: second\r\n\r\nhello\r\n", sender="")
    box = mailbox.Maildir(folder, factory=None, create=False)
    messages = sorted((message for message in box), key=lambda message: str(message["Subject"]))
    assert [str(message["Subject"]) for message in messages] == ["from lines", "second"]
    first, second = messages
    assert first["Return-Path"] == f"<{SENDER}>" and second["Return-Path"] == "<>"
    received = " ".join(first["Received"].split())
    assert "([127.0.0.1]) by mx.example (smtpwire) with ESMTP id " in received and f"for <{RECIPIENT}>;" in received
    files = sorted((folder / "new").iterdir(), key=lambda path: b"from lines" not in path.read_bytes())
    stored = files[0].read_bytes()
    assert stored.endswith(MESSAGE) and stored.startswith(b"Return-Path: <alice@example.org>\r\nReceived: from ")
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert list((folder / "tmp").iterdir()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_maildir_store_leaves_nothing_of_an_abandoned_or_refused_message(kind: str, tmp_path: Path) -> None:
    folder = tmp_path / "Maildir"
    with serving(kind, MaildirStore(folder), max_message_size=2000) as address:
        raw_data(address, b"Subject: half\r\n\r\nthe client leaves here", end=False)
        eventually(lambda: list((folder / "tmp").iterdir()) == [])
        assert raw_data(address, BIG, end=True).startswith(b"552 ")
        send(address)
    assert list((folder / "tmp").iterdir()) == []
    assert [path.read_bytes().endswith(MESSAGE) for path in (folder / "new").iterdir()] == [True]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("call", "error", "code"),
    [("fsync", errno.EIO, 451), ("write", errno.ENOSPC, 452)],
)
def test_maildir_store_answers_a_failed_write_with_4xx_and_keeps_nothing(
    kind: str, call: str, error: int, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "Maildir"
    store = MaildirStore(folder)
    # the write fails after the trace headers: in data_chunk, so the refusal comes at the end of data
    monkeypatch.setattr(os, call, failing_for(folder, getattr(os, call), error, after=1 if call == "write" else 0))
    big = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" * 8
    with serving(kind, store) as address:
        assert refused(address, big)[0] == code
        monkeypatch.undo()
        send(address)
    assert list((folder / "tmp").iterdir()) == []
    assert [path.read_bytes().endswith(MESSAGE) for path in (folder / "new").iterdir()] == [True]


# -- MboxStore -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_mbox_store_writes_what_mailbox_mbox_reads_from_lines_and_all(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    with serving(kind, MboxStore(path)) as address:
        send(address)
        send(address, b"Subject: second\r\n\r\nFrom the null sender\r\n", sender="")
    first, second = mailbox.mbox(path, create=False)  # exactly two: no From line inside started a third
    assert first.get_from().startswith(f"{SENDER} ") and second.get_from().startswith("MAILER-DAEMON ")
    assert first["Return-Path"] == f"<{SENDER}>" and "by localhost (smtpwire)" in first["Received"]
    body = first.as_bytes(unixfrom=False).split(b"\n\n", 1)[1]
    assert body.startswith(b">From here on") and b"\n>>From an already" in body  # quoted, so no message starts there
    assert unquoted(body) == MESSAGE.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")  # mboxrd gives it back
    assert second.get_payload() == ">From the null sender\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(tmp_path.iterdir()) == [path]  # the spool files are gone


@pytest.mark.parametrize("kind", KINDS)
def test_mbox_store_leaves_nothing_of_an_abandoned_message(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    with serving(kind, MboxStore(path), max_message_size=2000) as address:
        raw_data(address, b"Subject: half\r\n\r\nFrom the client that leaves", end=False)
        assert raw_data(address, BIG, end=True).startswith(b"552 ")
        send(address, b"Subject: kept\r\n\r\nkept\r\n")
    assert [str(message["Subject"]) for message in mailbox.mbox(path, create=False)] == ["kept"]
    assert b"half" not in path.read_bytes() and b"big" not in path.read_bytes()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("call", "error", "code"), [("fsync", errno.EIO, 451), ("write", errno.ENOSPC, 452)])
def test_mbox_store_cuts_a_failed_append_back_and_answers_4xx(
    kind: str, call: str, error: int, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mbox"
    with serving(kind, MboxStore(path)) as address:
        send(address, b"Subject: first\r\n\r\nfirst\r\n")
        before = path.read_bytes()
        # a write fails halfway through the append (after the From_ line), an fsync at its end
        monkeypatch.setattr(os, call, failing_for(path, getattr(os, call), error, after=1 if call == "write" else 0))
        assert refused(address)[0] == code
        assert path.read_bytes() == before  # nothing half-written stays
        monkeypatch.undo()
        send(address, b"Subject: third\r\n\r\nthird\r\n")
    assert [str(message["Subject"]) for message in mailbox.mbox(path, create=False)] == ["first", "third"]


def test_mbox_store_waits_for_the_lock_mailbox_takes(tmp_path: Path) -> None:
    """A reader holding ``mailbox.mbox.lock()`` in another process holds the 250 back until it lets go."""
    path = tmp_path / "mbox"
    path.write_bytes(b"")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import mailbox, sys; m = mailbox.mbox(sys.argv[1]); m.lock(); print(1, flush=True); "
            "sys.stdin.readline(); m.unlock()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"1\n"
        with serving("blocking", MboxStore(path)) as address:
            sent = threading.Thread(target=send, args=(address, b"Subject: waited\r\n\r\nwaited\r\n"))
            sent.start()
            sent.join(0.5)
            assert sent.is_alive() and path.read_bytes() == b""  # still waiting for the lock
            assert holder.stdin is not None
            holder.stdin.write(b"\n")
            holder.stdin.flush()
            sent.join(TIMEOUT)
            assert not sent.is_alive()
    finally:
        holder.kill()
        holder.wait(TIMEOUT)
    assert [str(message["Subject"]) for message in mailbox.mbox(path, create=False)] == ["waited"]


def test_from_quoting_does_not_depend_on_where_the_pieces_are_cut() -> None:
    """Cut anywhere (inside a CRLF, inside ">>From "), the quoting is what the whole message gets."""
    message = b"From x\r\n>>From y\r\nFrom\r\nFro\r\n>\r\n>>Fr\r\nFrom \r\nab\rc\r\n" + MESSAGE + b">From"
    expected = re.sub(rb"(?m)^(>*From )", rb">\1", message.replace(b"\r\n", b"\n"))
    for one in range(len(message)):
        for two in range(one, min(one + 9, len(message))):
            quoter = FromQuoter()
            pieces = (message[:one], message[one:two], message[two:])
            assert b"".join(quoter.feed(piece) for piece in pieces) + quoter.end() == expected, (one, two)


@pytest.mark.parametrize("kind", ["anyio-asyncio", "anyio-trio", "memorybio"])
def test_the_stores_run_as_they_are_on_the_other_adapters(kind: str, tmp_path: Path) -> None:
    inbox = Inbox()
    for handler in (MaildirStore(tmp_path / "Maildir"), MboxStore(tmp_path / "mbox"), inbox):
        with serving(kind, handler) as address:
            send(address)
    assert [path.read_bytes().endswith(MESSAGE) for path in (tmp_path / "Maildir" / "new").iterdir()] == [True]
    [message] = mailbox.mbox(tmp_path / "mbox", create=False)
    assert unquoted(message.as_bytes(unixfrom=False)).endswith(MESSAGE.replace(b"\r\n", b"\n"))
    [(_, parsed)] = inbox.received
    assert parsed["Subject"] == "from lines"


# -- PrintHandler and EmailHandler --------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_print_handler_prints_each_message_with_its_envelope(kind: str) -> None:
    stream = io.StringIO()
    with serving(kind, PrintHandler(stream)) as address:
        send(address, b"Subject: hi\r\nTo: bob@example.net\r\n\r\nhello\r\n\r\nbye\r\n")
    token = re.match("---------- MESSAGE FOLLOWS ([0-9a-f]{16}) ----------\n", stream.getvalue())
    assert token, stream.getvalue()
    assert stream.getvalue() == (
        f"---------- MESSAGE FOLLOWS {token[1]} ----------\n"
        "Subject: hi\n"
        "To: bob@example.net\n"
        "X-Peer: 127.0.0.1\n"
        f"X-MailFrom: {SENDER}\n"
        f"X-RcptTo: {RECIPIENT}\n"
        "\n"
        "hello\n"
        "\n"
        "bye\n"
        f"------------ END MESSAGE {token[1]} ------------\n"
    )


def test_print_handler_prints_to_stdout_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    with serving("asyncio", PrintHandler()) as address:
        send(address, b"Subject: hi\r\n\r\nhello\r\n")
    out = capsys.readouterr().out
    assert re.fullmatch(
        "---------- MESSAGE FOLLOWS ([0-9a-f]{16}) ----------\nSubject: hi\nX-Peer: 127.0.0.1\n.*"
        "\nhello\n------------ END MESSAGE \\1 ------------\n",
        out,
        re.DOTALL,
    ), out


class Inbox(EmailHandler):
    """Keeps each parsed message; refuses any whose subject says so."""

    def __init__(self) -> None:
        self.received: list[tuple[str, email.message.EmailMessage]] = []

    def email(self, session: Session, envelope: Envelope, message: email.message.EmailMessage) -> Reply | None:
        if message["Subject"] == "refuse me":
            return Reply(550, "Not this one", (5, 7, 1))
        self.received.append((envelope.mail_from, message))
        return None


@pytest.mark.parametrize("kind", KINDS)
def test_email_handler_hands_over_an_email_message(kind: str) -> None:
    inbox = Inbox()
    mime = email.message.EmailMessage()
    mime["Subject"] = "Grüße"
    mime.set_content("body text\n")
    mime.add_attachment(b"\x00\x01", maintype="application", subtype="octet-stream", filename="a.bin")
    with serving(kind, inbox) as address:
        send(address, mime.as_bytes(policy=email.policy.SMTP))
        assert refused(address, b"Subject: refuse me\r\n\r\nno\r\n") == (550, b"5.7.1 Not this one")
    [(sender, message)] = inbox.received
    assert sender == SENDER and isinstance(message, email.message.EmailMessage)
    assert message["Subject"] == "Grüße"
    body = message.get_body()
    assert body is not None and body.get_content() == "body text\n"
    [attachment] = message.iter_attachments()
    assert attachment.get_filename() == "a.bin" and attachment.get_content() == b"\x00\x01"


# -- Re-exports -------------------------------------------------------------------

#: What every adapter re-exports from smtpwire_handler (docs/handlers.md, docs/stores.md).
REEXPORTED = (
    "Address",
    "Composite",
    "EmailHandler",
    "Envelope",
    "Handler",
    "MaildirStore",
    "MboxStore",
    "Params",
    "PrintHandler",
    "Reject",
    "ServerOptions",
    "Session",
    "TLSInfo",
    "TransactionSlot",
)
#: What the async adapters add: hooks that may be ``async def``, and the stores made of them.
ASYNC = ("AsyncComposite", "AsyncHandler", "AsyncMaildirStore")
ADAPTERS = {
    "smtpwire_asyncio": ASYNC,
    "smtpwire_anyio": ASYNC,
    "smtpwire_blocking": (),
    "smtpwire_memorybio": (),
}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_reexports_the_handler_api(adapter: str) -> None:
    module = importlib.import_module(adapter)
    for name in (*REEXPORTED, *ADAPTERS[adapter]):
        assert name in module.__all__, f"{adapter}.__all__ lacks {name}"
        assert getattr(module, name) is getattr(smtpwire_handler, name), f"{adapter}.{name}"
    assert not set(ASYNC) - set(ADAPTERS[adapter]) & set(module.__all__), "async stores where hooks must be plain"


class Noted(smtpwire_anyio.AsyncMaildirStore):
    """Records what ``stored`` was told."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, hostname="mx.example")
        self.stored_paths: list[tuple[int, Path]] = []

    def stored(self, session: Session, envelope: Envelope, size: int, path: Path) -> None:
        self.stored_paths.append((size, path))


@pytest.mark.parametrize("kind", ["asyncio", "anyio-asyncio", "anyio-trio"])
def test_async_maildir_store_delivers_off_the_event_loop(kind: str, tmp_path: Path) -> None:
    """The same Maildir as MaildirStore's, stored by worker threads, on asyncio and trio; big messages too."""
    folder = tmp_path / "Maildir"
    store = Noted(folder)
    big = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 8000  # over one 256 KiB write
    with serving(kind, store, max_message_size=1 << 20) as address:
        send(address)
        send(address, big)
    subjects = sorted(str(message["Subject"]) for message in mailbox.Maildir(folder, factory=None, create=False))
    assert subjects == ["big", "from lines"]
    bodies = [path.read_bytes() for _, path in store.stored_paths]  # in the order sent
    assert len(bodies) == 2 and bodies[0].endswith(MESSAGE) and bodies[1].endswith(big)
    assert [size for size, _ in store.stored_paths] == [len(body) for body in bodies]
    assert list((folder / "tmp").iterdir()) == []


#: Without anyio installed (an import of it fails): the handler package and the adapters that need none load.
WITHOUT_ANYIO = """
import sys
sys.modules["anyio"] = None
import smtpwire_asyncio, smtpwire_blocking, smtpwire_handler
try:
    smtpwire_handler.AsyncMaildirStore(sys.argv[1])
except ModuleNotFoundError as error:
    print(error)
"""


def test_anyio_stays_optional_and_async_maildir_store_says_when_it_is_needed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_ANYIO, str(tmp_path / "Maildir")], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == "AsyncMaildirStore writes in anyio's worker threads: install smtpwire[anyio]\n"
    assert not (tmp_path / "Maildir").exists()  # refused before anything was made
