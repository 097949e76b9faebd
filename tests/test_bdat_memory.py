"""Many tiny BDAT chunks cost no more memory than one: per session, the load is bounded, not the chunk count.

120,000 pipelined ``BDAT 2`` chunks (240,000 octets) go through one session
on every adapter, into the default in-memory envelope and into serve's
store.  The server runs in a thread of this process and the client in a
process of its own, so ``tracemalloc`` here sees the server's allocations
only; their peak must stay under 512 KiB.  A store that kept each chunk as
an object of its own until 256 KiB of data once took 15 MiB here.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from smtpwire_handler import AsyncHandler, Envelope, Handler, Maildir, MaildirStore, ServerOptions, Session
from smtpwire_serve._store import MaildirHandler
from tests.servers import KINDS, running

CHUNKS = 120_000
LIMIT = 512 * 1024
#: anyio's asyncio stream takes asyncio's reads whole (up to 256 KiB) and splits each by copying what a
#: receive() leaves: 256 KiB more at the peak, for one chunk as for many (smtpwire_asyncio reads 64 KiB).
ANYIO_ASYNCIO_READS = 256 * 1024
MESSAGE = b"xy" * CHUNKS

#: The client: one session that pipelines ``chunks`` BDAT 2 chunks, 1,000 to a send, while a thread reads
#: the replies (each socket operation has a timeout, the whole run a deadline); prints the last reply.
CLIENT = r"""
import socket, sys, threading, time

host, port, chunks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 120
sock = socket.create_connection((host, port), timeout=20)

def replies(count):
    seen, tail = 0, b""
    while seen < count:
        assert time.monotonic() < deadline, f"{seen} of {count} replies in time"
        data = sock.recv(65536)
        assert data, f"closed after {seen} of {count} replies"
        seen += data.count(b"\r\n")
        tail = (tail + data)[-200:]
    return tail.rsplit(b"\r\n", 2)[-2]

def send():
    one, rest = b"BDAT 2\r\nxy", chunks - 1
    for _ in range(rest // 1000):
        sock.sendall(one * 1000)
    sock.sendall(one * (rest % 1000) + b"BDAT 2 LAST\r\nxy")

assert replies(1).startswith(b"220 ")
sock.sendall(b"EHLO client.example\r\n")
assert b"CHUNKING" in sock.recv(4096)
sock.sendall(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n")
assert replies(2) == b"250 2.1.5 OK"
sender = threading.Thread(target=send, daemon=True)
sender.start()
print(replies(chunks).decode())
sender.join(20)
sock.sendall(b"QUIT\r\n")
"""


def client(address: tuple[str, int], chunks: int) -> str:
    """Run the client against ``address``; the reply to its last chunk."""
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, address[0], str(address[1]), str(chunks)],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode().strip()


class InMemory(Handler):
    """Leaves ``data_chunk`` as it is (the data goes into the envelope) and notes each message's digest."""

    def __init__(self) -> None:
        self.digests: list[str] = []

    def message(self, session: Session, envelope: Envelope) -> None:
        self.digests.append(hashlib.sha256(envelope.content).hexdigest())


def stored_digests(folder: Path) -> list[str]:
    """The stored messages' digests, without the trace headers the store puts on top (``Received`` last)."""
    digests = []
    for path in folder.iterdir():
        trace, _, message = path.read_bytes().partition(b"\r\nxy")
        assert trace.startswith(b"Return-Path: <alice@example.org>\r\nReceived: "), trace[:200]
        digests.append(hashlib.sha256(b"xy" + message).hexdigest())
    return digests


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["envelope", "store"])
def test_120000_tiny_chunks_stay_under_512_kib_per_session(kind: str, where: str, tmp_path: Path) -> None:
    """``store``: serve's (``MaildirStore`` where hooks must be plain, which writes each chunk as it comes)."""
    folder = tmp_path / "Maildir"
    handler: Handler | AsyncHandler
    if where == "envelope":
        handler = InMemory()
    elif kind in ("blocking", "memorybio"):
        handler = MaildirStore(folder, hostname="mx.test")
    else:
        handler = MaildirHandler(Maildir(folder), "mx.test")
    with running(kind, handler, ServerOptions()) as server:
        assert client(server.address, 1) == "250 2.0.0 OK"  # lazy imports and worker threads: before the measure
        tracemalloc.start()
        try:
            assert client(server.address, CHUNKS) == "250 2.0.0 OK"
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    found = handler.digests if isinstance(handler, InMemory) else stored_digests(folder / "new")
    assert sorted(found) == sorted(hashlib.sha256(message).hexdigest() for message in (b"xy", MESSAGE))
    limit = LIMIT + (ANYIO_ASYNCIO_READS if kind == "anyio-asyncio" else 0)
    assert peak < limit, f"{peak // 1024} KiB allocated at the peak on {kind}"
