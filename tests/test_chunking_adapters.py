"""CHUNKING (RFC 3030) over real sockets: every adapter, ``smtpwire serve``, and Perl's Net::SMTP.

A raw-socket client pipelines whole transactions (every BDAT, its octets and
the commands after them in one send), so each adapter must find the chunk
boundaries in a stream it reads in arbitrary pieces; the replies on the wire
and the bytes the handler received are compared exactly.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable

import pytest

import smtpwire
from smtpwire import Reply
from smtpwire_handler import Envelope, Handler, Params, ServerOptions, Session
from tests.servers import KINDS, Recorder, running
from tests.test_cli import serve, split_trace, stored
from tests.test_interop import TIMEOUT, assert_closed, need, read_reply

#: Chunks whose octets DATA could not carry as they are: an end-of-data mark, NUL, bare CR and LF, 8-bit.
CHUNKS = (
    b"From: Alice <alice@example.org>\r\nSubject: chunks\r\n\r\n",
    b"a line\r\n.\r\nnot the end of anything\r\n.\r\n",
    b"\x00\x01\xff\xfe binary \r bare CR \n bare LF \x80\r\n",
    b"BDAT 5 LAST\r\nQUIT\r\n",  # commands inside a chunk are octets, nothing else
)
MESSAGE = b"".join(CHUNKS)
ENVELOPE = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
ACCEPTED = ["250 2.1.0 OK", "250 2.1.5 OK"]
DELIVERED = "250 2.0.0 OK"
CLOSING = "221 2.0.0 localhost Service closing transmission channel"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
MiB = 1 << 20

every_adapter = pytest.mark.parametrize("kind", KINDS)


def bdat(*chunks: bytes) -> bytes:
    """The chunks as BDAT commands, each followed by its octets, the last one marked LAST."""
    *middle, last = chunks
    sent = b"".join(b"BDAT %d\r\n" % len(chunk) + chunk for chunk in middle)
    return sent + b"BDAT %d LAST\r\n" % len(last) + last


def received(chunks: tuple[bytes, ...] | list[bytes]) -> list[str]:
    """The core's answer to each chunk but the last (which the message hook answers)."""
    return [f"250 2.0.0 {len(chunk)} octets received" for chunk in chunks[:-1]]


def read_replies(sock: socket.socket, count: int) -> list[str]:
    """The next ``count`` replies (last lines only: none of these is multi-line), read in bounded steps."""
    data = b""
    for _ in range(10_000):
        lines = data.split(b"\r\n")[:-1]
        if len(lines) >= count:
            assert len(lines) == count, lines
            return [line.decode() for line in lines]
        data += read_reply(sock)
    raise AssertionError(f"never got {count} replies: {data!r}")


def connect(address: tuple[str, int]) -> socket.socket:
    """A session past EHLO, which offered CHUNKING."""
    sock = socket.create_connection(address, timeout=TIMEOUT)
    assert read_reply(sock).startswith(b"220 ")
    sock.sendall(b"EHLO client.example\r\n")
    assert re.search(rb"^250[- ]CHUNKING\r$", read_reply(sock), re.MULTILINE)
    return sock


def converse(address: tuple[str, int], pipeline: bytes, expected: list[str]) -> None:
    """Send ``pipeline`` in one go after EHLO; its replies must be ``expected``, exactly."""
    with connect(address) as sock:
        sock.sendall(pipeline)
        assert read_replies(sock, len(expected)) == expected


def wait_for(condition: Callable[[], object], what: str) -> None:
    """Hooks run after the reply is queued on some adapters: give them a bounded moment."""
    deadline = time.monotonic() + TIMEOUT
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition(), what


@every_adapter
def test_pipelined_chunks_reach_the_handler_byte_exact(kind: str) -> None:
    recorder = Recorder()
    second = [b"Subject: then an empty LAST\r\n\r\nbody\r\n", b""]
    pipeline = ENVELOPE + bdat(*CHUNKS) + ENVELOPE + bdat(*second) + b"QUIT\r\n"
    expected = [*ACCEPTED, *received(CHUNKS), DELIVERED, *ACCEPTED, *received(second), DELIVERED, CLOSING]
    with running(kind, recorder, ServerOptions()) as server:
        converse(server.address, pipeline, expected)
    wait_for(lambda: len(recorder.messages) == 2, "both messages delivered")
    assert [m.content for m in recorder.messages] == [MESSAGE, second[0]]
    assert recorder.messages[0].rcpt_tos == ("bob@example.net",)


class RefusesFirst(Recorder):
    """The first message is refused as it starts (452); later ones are taken."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def data_start(self, session: Session) -> Reply | None:
        if self.refused:
            return None
        self.refused += 1
        return Reply(452, "Insufficient system storage", (4, 3, 1))


@every_adapter
def test_a_refused_first_chunk_is_discarded_and_a_pipelined_rset_goes_on(kind: str) -> None:
    recorder = RefusesFirst()
    refused_chunk = b"RSET\r\nMAIL FROM:<evil@example.org>\r\n"  # discarded octets, never commands
    pipeline = ENVELOPE + bdat(refused_chunk) + b"RSET\r\n" + ENVELOPE + bdat(*CHUNKS) + b"QUIT\r\n"
    expected = [
        *ACCEPTED,
        "452 4.3.1 Insufficient system storage",
        "250 2.0.0 OK",  # the RSET
        *ACCEPTED,
        *received(CHUNKS),
        DELIVERED,
        CLOSING,
    ]
    with running(kind, recorder, ServerOptions()) as server:
        converse(server.address, pipeline, expected)
    wait_for(lambda: len(recorder.messages) == 1, "the second message delivered")
    assert [m.content for m in recorder.messages] == [MESSAGE]
    assert recorder.calls.count("data_start") == 2 and recorder.calls.count("mail_from") == 2


class Digest(Handler):
    """Streams the message into a hash and keeps none of it: what a Maildir writer does."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self.digests: list[tuple[int, str]] = []

    def data_chunk(self, session: Session, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)

    def message(self, session: Session, envelope: Envelope) -> None:
        self.digests.append((self.size, self.hash.hexdigest()))


@every_adapter
def test_eight_mebibytes_in_one_mebibyte_chunks_in_bounded_memory(kind: str) -> None:
    """The adapter never holds the message: far less than 8 MiB is allocated while it streams through."""
    block = bytes(range(256)) * (MiB // 256)
    digest = hashlib.sha256(block * 8).hexdigest()
    handler = Digest()
    with running(kind, handler, ServerOptions()) as server, connect(server.address) as sock:
        tracemalloc.start()
        try:
            sock.sendall(ENVELOPE)
            for number in range(8):
                sock.sendall(b"BDAT %d%s\r\n" % (MiB, b" LAST" if number == 7 else b""))
                sock.sendall(block)
            expected = [*ACCEPTED, *received([block] * 8), DELIVERED]
            assert read_replies(sock, len(expected)) == expected
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert handler.digests == [(8 * MiB, digest)]
    assert peak < 2 * MiB, f"{peak} bytes allocated at the peak"  # a quarter of the message


@every_adapter
def test_a_chunk_over_the_size_limit_gets_552_and_the_session_goes_on(kind: str) -> None:
    recorder = Recorder()
    config = smtpwire.ServerConfig(max_message_size=1000)
    commands = b"RCPT TO:<evil@example.org>\r\n" * 40  # 1120 octets that must never run
    pipeline = (
        ENVELOPE
        + b"BDAT 600\r\n"
        + b"x" * 600
        + bdat(commands[:600])  # 1200 in all: too big, though the chunk alone is not
        + b"RSET\r\n"
        + ENVELOPE
        + bdat(commands)  # too big as the first chunk
        + b"RSET\r\n"
        + ENVELOPE
        + bdat(*CHUNKS)
        + b"QUIT\r\n"
    )
    ok = "250 2.0.0 OK"
    expected = [
        *ACCEPTED,
        "250 2.0.0 600 octets received",
        TOO_BIG,
        ok,
        *ACCEPTED,
        TOO_BIG,
        ok,
        *ACCEPTED,
        *received(CHUNKS),
        DELIVERED,
        CLOSING,
    ]
    with running(kind, recorder, ServerOptions(config=config)) as server:
        converse(server.address, pipeline, expected)
    wait_for(lambda: len(recorder.messages) == 1, "the last message delivered")
    assert [m.content for m in recorder.messages] == [MESSAGE]
    assert recorder.calls.count("rcpt_to") == 3  # the refused chunks' RCPT lines never ran
    assert [recorder.calls.count(hook) for hook in ("data_start", "message_aborted")] == [2, 1]


@every_adapter
def test_chunks_trickled_in_three_octet_pieces_are_reassembled(kind: str) -> None:
    """Chunk boundaries never coincide with reads: the adapter must hand the core whatever arrives."""
    recorder = Recorder()
    pipeline = ENVELOPE + bdat(*CHUNKS) + b"RSET\r\n" + ENVELOPE + bdat(*CHUNKS) + b"QUIT\r\n"
    with running(kind, recorder, ServerOptions()) as server, connect(server.address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(pipeline), 3):
            sock.sendall(pipeline[start : start + 3])
            time.sleep(0.0005)  # each piece its own segment, mostly
        transaction = [*ACCEPTED, *received(CHUNKS), DELIVERED]
        expected = [*transaction, "250 2.0.0 OK", *transaction, CLOSING]
        assert read_replies(sock, len(expected)) == expected
    wait_for(lambda: len(recorder.messages) == 2, "both messages delivered")
    assert [m.content for m in recorder.messages] == [MESSAGE, MESSAGE]


@every_adapter
def test_a_chunk_that_stalls_gets_the_data_timeout(kind: str) -> None:
    recorder = Recorder()
    options = ServerOptions(command_timeout=5, data_timeout=0.5)
    with running(kind, recorder, options) as server, connect(server.address) as sock:
        sock.sendall(ENVELOPE + b"BDAT 100 LAST\r\n" + b"x" * 10)
        assert read_replies(sock, 3) == [*ACCEPTED, "421 4.4.2 localhost Timeout, closing connection"]
        assert_closed(sock)
    wait_for(lambda: recorder.calls[-2:] == ["message_aborted", "disconnect"], "the message aborted")
    assert recorder.messages == []


@every_adapter
def test_a_graceful_shutdown_waits_for_the_last_chunk(kind: str) -> None:
    recorder = Recorder()
    with running(kind, recorder, ServerOptions()) as server, connect(server.address) as busy:
        busy.sendall(ENVELOPE + b"BDAT %d\r\n" % len(CHUNKS[0]) + CHUNKS[0])
        assert read_replies(busy, 3) == [*ACCEPTED, f"250 2.0.0 {len(CHUNKS[0])} octets received"]
        with connect(server.address) as idle:
            stopper = threading.Thread(target=server.stop, args=(TIMEOUT,))
            stopper.start()
            assert read_reply(idle) == b"421 4.3.2 localhost Service shutting down\r\n"  # shutting down now
        busy.sendall(bdat(*CHUNKS[1:]))
        expected = [*received(CHUNKS[1:]), DELIVERED, "421 4.3.2 localhost Service shutting down"]
        assert read_replies(busy, len(expected)) == expected
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
    assert [m.content for m in recorder.messages] == [MESSAGE]


class BinaryMime(Recorder):
    """Net::SMTP sends BDAT only for BODY=BINARYMIME; keeps the MAIL parameters to show it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[str | None] = []

    def mail_from(self, session: Session, address: str, params: Params) -> Reply | None:
        self.bodies.append(params.get("BODY"))
        return None


NET_SMTP = r"""
use strict;
use Net::SMTP;
my ($port, @files) = @ARGV;
my $smtp = Net::SMTP->new("127.0.0.1", Port => $port, Hello => "perl.example", Timeout => 10)
    or die "connect: $@";
$smtp->mail("alice\@example.org", Bits => "binary") or die "MAIL: " . $smtp->message;
$smtp->to("bob\@example.net") or die "RCPT: " . $smtp->message;
my $last = pop @files;
for my $file (@files, $last) {
    open(my $in, "<:raw", $file) or die "$file: $!";
    local $/;
    my $chunk = <$in>;
    my $ok = $file eq $last ? $smtp->bdatlast($chunk) : $smtp->bdat($chunk);
    $ok or die "BDAT: " . $smtp->code . " " . $smtp->message;
}
$smtp->quit;
"""


@every_adapter
def test_perl_net_smtp_sends_binarymime_by_bdat(kind: str, tmp_path: pathlib.Path) -> None:
    """A client library nobody here wrote: Perl's Net::SMTP (libnet), the chunks as it sends them."""
    recorder = BinaryMime()
    config = smtpwire.ServerConfig(extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.BinaryMime()))
    files = []
    for number, chunk in enumerate(CHUNKS):
        files.append(tmp_path / f"chunk{number}")
        files[-1].write_bytes(chunk)
    with running(kind, recorder, ServerOptions(config=config)) as server:
        result = subprocess.run(
            [need("perl"), "-e", NET_SMTP, str(server.address[1]), *map(str, files)],
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        wait_for(lambda: recorder.messages, "the message delivered")
    assert recorder.bodies == ["BINARYMIME"]
    assert [m.content for m in recorder.messages] == [MESSAGE]
    assert recorder.messages[0].helo_name == "perl.example"


def test_serve_stores_exactly_the_chunks_after_its_trace_headers(tmp_path: pathlib.Path) -> None:
    """The second message is large enough for serve to write it in several pieces as it streams."""
    maildir = tmp_path / "maildir"
    large = [bytes(range(256)) * 3000, b"\r\n.\r\n" * 100_000]
    with serve("-v", "--maildir", str(maildir)) as server:
        with connect(server.address) as sock:
            sock.sendall(ENVELOPE + bdat(*CHUNKS) + ENVELOPE + bdat(*large) + b"QUIT\r\n")
            expected = [*ACCEPTED, *received(CHUNKS), DELIVERED, *ACCEPTED, *received(large), DELIVERED]
            assert read_replies(sock, len(expected) + 1) == [*expected, CLOSING.replace("localhost", "mx.test")]
        for _ in range(2):
            server.wait_for(r"accepted id=\w+ from=<alice@example.org> to=<bob@example.net> ")
        assert server.stop() == 0
    transcript = server.output()
    for chunk in CHUNKS[:-1]:
        assert f"C: BDAT {len(chunk)}\n" in transcript  # -v shows each line as C: or S:
    assert f"C: BDAT {len(CHUNKS[-1])} LAST\n" in transcript
    messages = [split_trace(message) for message in stored(maildir)]
    assert sorted(body for _, body in messages) == sorted([MESSAGE, b"".join(large)])
    assert all(" with ESMTP id " in trace for trace, _ in messages)
