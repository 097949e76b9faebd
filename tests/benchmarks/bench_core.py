"""Micro-benchmark of the sans-IO core against aiosmtpd's protocol, side by side, no sockets.

    python tests/benchmarks/bench_core.py [--repeats 5] [--quick]

smtpwire: ``ServerConnection`` driven directly (bytes in, events out, every
decision accepted).  aiosmtpd: its ``SMTP`` protocol on an asyncio loop with
an in-memory transport (its parsing cannot run without a loop).  Both get the
same bytes in 64 KiB chunks and both results are checked, so a broken run
cannot print a fast figure.  Medians of the repeats; ratios are
smtpwire / aiosmtpd (above 1: smtpwire is faster or smaller).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from aiosmtpd.smtp import SMTP as AiosmtpdProtocol

import smtpwire

CHUNK = 64 * 1024
ROUND = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRSET\r\nNOOP\r\n"
LINE = b"x" * 76 + b"\r\n"
STUFFED = b".." + b"y" * 74 + b"\r\n"  # a line that starts with a dot, as the client sends it
BLOCK = (LINE * 49 + STUFFED) * 16  # 800 lines, 62,400 bytes
BLOCK_UNSTUFFED = len(BLOCK) - 16
MiB = 1024 * 1024


def message_blocks(size: int) -> tuple[int, int]:
    """How many blocks make about ``size`` bytes, and the message size after unstuffing."""
    blocks = max(1, size // len(BLOCK))
    return blocks, blocks * BLOCK_UNSTUFFED


# -- the two servers, fed the same way ------------------------------------------------


class SmtpwireServer:
    def __init__(self, max_message_size: int) -> None:
        config = smtpwire.ServerConfig(hostname="bench", max_message_size=max_message_size)
        self.conn = smtpwire.ServerConnection(config)
        self.replies = 0
        self.received = 0
        self._drain()

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._drain()

    def _drain(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is smtpwire.NEED_DATA or isinstance(event, smtpwire.ConnectionClosed):
                break
            if isinstance(event, smtpwire.MessageData):
                self.received += len(event.data)  # the application would stream it somewhere
            elif isinstance(event, smtpwire.Decision):
                conn.accept()
        out = conn.data_to_send()
        self.replies += sum(1 for line in out.split(b"\r\n") if line[3:4] == b" ")


class Transport(asyncio.Transport):
    """Collects what aiosmtpd writes."""

    def __init__(self) -> None:
        super().__init__()
        self.replies = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.replies += sum(1 for line in bytes(data).split(b"\r\n") if line[3:4] == b" ")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 25)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class CountingHandler:
    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += len(envelope.content)
        return "250 OK"


async def feed_aiosmtpd(chunks: Iterator[bytes], replies: int, max_message_size: int) -> int:
    handler = CountingHandler()
    protocol = AiosmtpdProtocol(handler, hostname="bench", data_size_limit=max_message_size, decode_data=False)
    transport = Transport()
    protocol.connection_made(transport)
    reader = protocol._stream_reader  # type: ignore[attr-defined]
    for chunk in chunks:
        protocol.data_received(chunk)
        while b"\n" in reader._buffer:  # let it consume whole lines, as a socket would deliver the next read later
            await asyncio.sleep(0)
    while transport.replies < replies:
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return handler.received


# -- workloads --------------------------------------------------------------------------


def chunked(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def data_session(blocks: int) -> Iterator[bytes]:
    yield b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    for _ in range(blocks):
        yield BLOCK
    yield b".\r\nQUIT\r\n"


DATA_REPLIES = 7  # 220, EHLO, MAIL, RCPT, 354, 250, 221


def commands_smtpwire(rounds: int) -> float:
    data = b"EHLO c.example\r\n" + ROUND * rounds
    started = time.perf_counter()
    server = SmtpwireServer(32 * MiB)
    for chunk in chunked(data):
        server.feed(chunk)
    elapsed = time.perf_counter() - started
    assert server.replies == 2 + 4 * rounds, server.replies
    return 4 * rounds / elapsed


def commands_aiosmtpd(rounds: int) -> float:
    data = b"EHLO c.example\r\n" + ROUND * rounds
    started = time.perf_counter()
    asyncio.run(feed_aiosmtpd(chunked(data), 2 + 4 * rounds, 32 * MiB))
    return 4 * rounds / (time.perf_counter() - started)


def data_smtpwire(size: int) -> float:
    blocks, expected = message_blocks(size)
    started = time.perf_counter()
    server = SmtpwireServer(2 * size + MiB)
    for chunk in data_session(blocks):
        server.feed(chunk)
    elapsed = time.perf_counter() - started
    assert server.received == expected and server.replies == DATA_REPLIES, (server.received, expected)
    return expected / MiB / elapsed


def data_aiosmtpd(size: int) -> float:
    blocks, expected = message_blocks(size)
    started = time.perf_counter()
    received = asyncio.run(feed_aiosmtpd(data_session(blocks), DATA_REPLIES, 2 * size + MiB))
    elapsed = time.perf_counter() - started
    assert received == expected, (received, expected)
    return expected / MiB / elapsed


def peak_memory(run: Callable[[int], float], size: int) -> float:
    """Peak traced allocation (MiB) while one message of ``size`` bytes goes through."""
    tracemalloc.start()
    try:
        run(size)
        return tracemalloc.get_traced_memory()[1] / MiB
    finally:
        tracemalloc.stop()


# -- report -------------------------------------------------------------------------------


def median_of(repeats: int, run: Callable[[int], float], argument: int) -> float:
    return statistics.median(run(argument) for _ in range(repeats))


def row(name: str, ours: float, theirs: float, unit: str, higher_is_better: bool = True) -> str:
    ratio = ours / theirs if higher_is_better else theirs / ours
    return f"| {name} | {ours:,.1f} {unit} | {theirs:,.1f} {unit} | {ratio:.2f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    rounds, size = (500, 2 * MiB) if args.quick else (25_000, 16 * MiB)
    memory_sizes = (2 * MiB, 8 * MiB) if args.quick else (10 * MiB, 100 * MiB)

    print(f"Python {sys.version.split()[0]} on {platform.machine()}, {args.repeats} repeats, medians")
    print("| workload | smtpwire core | aiosmtpd | ratio |")
    print("|---|---|---|---|")
    speed = (
        (f"pipelined commands ({4 * rounds:,})", commands_smtpwire, commands_aiosmtpd, rounds, "commands/s"),
        (f"DATA, one {size // MiB} MiB message", data_smtpwire, data_aiosmtpd, size, "MiB/s"),
    )
    for name, ours, theirs, argument, unit in speed:
        print(row(name, median_of(args.repeats, ours, argument), median_of(args.repeats, theirs, argument), unit))
    for memory_size in memory_sizes:
        print(
            row(
                f"peak memory, one {memory_size // MiB} MiB message",
                peak_memory(data_smtpwire, memory_size),
                peak_memory(data_aiosmtpd, memory_size),
                "MiB",
                higher_is_better=False,
            )
        )


if __name__ == "__main__":
    main()
