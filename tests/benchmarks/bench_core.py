"""Micro-benchmark of the sans-IO core against aiosmtpd's protocol, side by side, no sockets.

    python tests/benchmarks/bench_core.py [--repeats 5] [--quick] [--rounds K] [--size M]

smtpwire: ``ServerConnection`` driven directly (bytes in, events out, every
decision accepted, message pieces counted and dropped).  aiosmtpd: its
``SMTP`` protocol on an asyncio loop with an in-memory transport that collects
writes (its parser cannot run without a loop), and a handler whose
``handle_DATA`` returns "250 OK".  Both get the same bytes in 64 KiB chunks
and both results are checked (reply count, no 4xx/5xx, unstuffed message
size), so a broken run cannot print a fast figure.  The two run in turn,
repeat after repeat; the table gives the median, the range, and the ratio
smtpwire / aiosmtpd of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from itertools import chain
from typing import Any

from aiosmtpd.smtp import SMTP as AiosmtpdProtocol

import smtpwire

MiB = 1024 * 1024
CHUNK = 64 * 1024
EHLO = b"EHLO c.example\r\n"
ROUND = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRSET\r\nNOOP\r\n"
ENVELOPE = EHLO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
END = b".\r\nQUIT\r\n"
DATA_REPLIES = 7  # 220, EHLO, MAIL, RCPT, 354, 250, 221
LINE = b"x" * 76 + b"\r\n"
STUFFED = b".." + b"y" * 75 + b"\r\n"  # the 76-char line ".yyy...", dot-stuffed by the client
PERIOD = LINE * 49 + STUFFED  # 50 lines, 3,900 bytes once unstuffed
PERIOD_SIZE = len(PERIOD) - 1
BLOCK = PERIOD * 16  # 62,416 bytes on the wire


def rechunk(pieces: Iterable[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """The bytes of ``pieces`` cut into ``size``-byte chunks, wherever the cut falls."""
    pending = bytearray()
    for piece in pieces:
        pending += piece
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


def message(size: int) -> Iterator[bytes]:
    """A dot-stuffed message body whose unstuffed size is exactly ``size`` bytes."""
    periods, rest = divmod(size, PERIOD_SIZE)
    if 0 < rest < 3:  # too short for a line of its own
        periods, rest = periods - 1, rest + PERIOD_SIZE
    blocks, periods = divmod(periods, 16)
    yield from (BLOCK for _ in range(blocks))
    yield PERIOD * periods
    while rest > 80:
        yield LINE
        rest -= len(LINE)
    if rest:
        yield b"z" * (rest - 2) + b"\r\n"


def data_session(size: int) -> Iterator[bytes]:
    """One transaction carrying a ``size``-byte message, then QUIT, in 64 KiB chunks."""
    return rechunk(chain((ENVELOPE,), message(size), (END,)))


@dataclass
class Result:
    seconds: float
    output: bytes
    received: int

    def check(self, replies: int, received: int) -> None:
        """Fail unless every reply came, none of them refused, and the whole message arrived."""
        finals = [line for line in self.output.split(b"\r\n") if line[3:4] == b" "]
        refused = [line for line in finals if line[:1] in (b"4", b"5")]
        assert len(finals) == replies and not refused, (len(finals), replies, refused[:3])
        assert self.received == received, (self.received, received)


Server = Callable[[Iterable[bytes], int, int], Result]


# -- the two servers, fed the same chunks ------------------------------------------------


def smtpwire_server(chunks: Iterable[bytes], replies: int, limit: int) -> Result:
    """Feed ``chunks`` to a ServerConnection, accepting every decision; count the message bytes."""
    started = time.perf_counter()
    conn = smtpwire.ServerConnection(smtpwire.ServerConfig(hostname="bench", max_message_size=limit))
    pending = iter(chunks)
    written: list[bytes] = []
    received = 0
    while True:
        event = conn.next_event()
        if event is smtpwire.NEED_DATA:
            written.append(conn.data_to_send())
            chunk = next(pending, None)
            if chunk is None:
                break
            conn.receive_data(chunk)
        elif isinstance(event, smtpwire.MessageData):
            received += len(event.data)  # an application would stream it somewhere
        elif isinstance(event, smtpwire.Decision):
            conn.accept()
        elif isinstance(event, smtpwire.ConnectionClosed):
            written.append(conn.data_to_send())
            break
    return Result(time.perf_counter() - started, b"".join(written), received)


class Transport(asyncio.Transport):
    """Collects what aiosmtpd writes (one reply line per write)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.replies = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        line = bytes(data)
        self.written.append(line)
        self.replies += line[3:4] == b" "

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


async def settle(done: Callable[[], bool]) -> None:
    """Run the loop until ``done()``; fail rather than hang if aiosmtpd stalls."""
    for _ in range(10_000):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("aiosmtpd stalled")


async def feed_aiosmtpd(chunks: Iterable[bytes], replies: int, limit: int) -> Result:
    handler = CountingHandler()
    transport = Transport()
    started = time.perf_counter()
    protocol = AiosmtpdProtocol(handler, hostname="bench", data_size_limit=limit, decode_data=False)
    protocol.connection_made(transport)
    reader: Any = protocol._stream_reader  # type: ignore[attr-defined]
    for chunk in chunks:
        protocol.data_received(chunk)
        await settle(lambda: b"\n" not in reader._buffer)  # whole lines consumed, as before a socket's next read
    await settle(lambda: transport.replies >= replies)
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    return Result(elapsed, b"".join(transport.written), handler.received)


def aiosmtpd_server(chunks: Iterable[bytes], replies: int, limit: int) -> Result:
    return asyncio.run(feed_aiosmtpd(chunks, replies, limit))


# -- workloads: each returns one figure ------------------------------------------------


def commands(server: Server, rounds: int) -> float:
    """Commands answered per second: EHLO, then ``rounds`` pipelined MAIL, RCPT, RSET, NOOP."""
    chunks = list(rechunk((EHLO, ROUND * rounds)))
    result = server(chunks, 2 + 4 * rounds, 32 * MiB)
    result.check(replies=2 + 4 * rounds, received=0)
    return 4 * rounds / result.seconds


def data(server: Server, size: int) -> float:
    """MiB/s of unstuffed message through DATA."""
    chunks = list(data_session(size))
    result = server(chunks, DATA_REPLIES, size + MiB)
    result.check(replies=DATA_REPLIES, received=size)
    return size / MiB / result.seconds


def memory(server: Server, size: int) -> float:
    """tracemalloc's peak (MiB) while one ``size``-byte message goes through, generated as it is fed."""
    tracemalloc.start()
    try:
        result = server(data_session(size), DATA_REPLIES, size + MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    result.check(replies=DATA_REPLIES, received=size)
    return peak / MiB


def feeder_peak(size: int) -> float:
    """tracemalloc's peak (MiB) of generating the chunks alone: the harness's share of ``memory``."""
    tracemalloc.start()
    try:
        for _ in data_session(size):
            pass
        return tracemalloc.get_traced_memory()[1] / MiB
    finally:
        tracemalloc.stop()


# -- report ---------------------------------------------------------------------------------


def measure(repeats: int, workload: Callable[[Server, int], float], argument: int) -> tuple[list[float], list[float]]:
    """``repeats`` figures for each server, taken in turn so drift hits both alike."""
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(repeats):
        for server, figures in ((smtpwire_server, ours), (aiosmtpd_server, theirs)):
            gc.collect()
            figures.append(workload(server, argument))
    return ours, theirs


def figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def cell(figures: list[float]) -> str:
    return f"{figure(statistics.median(figures))} [{figure(min(figures))}-{figure(max(figures))}]"


def main() -> None:
    parser = argparse.ArgumentParser(description="Micro-benchmark of the smtpwire core against aiosmtpd.")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each workload (default 5)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--rounds", type=int, help="pipelined rounds of 4 commands (default 25,000)")
    parser.add_argument("--size", type=int, help="DATA message size in MiB (default 16)")
    args = parser.parse_args()
    rounds, size, memory_sizes = (500, 2, (2, 8)) if args.quick else (25_000, 16, (10, 100))
    rounds, size = args.rounds or rounds, args.size or size

    print(
        f"Python {sys.version.split()[0]} ({platform.python_implementation()}) on {platform.machine()}, "
        f"smtpwire {smtpwire.__version__}, aiosmtpd {version('aiosmtpd')}; "
        f"{args.repeats} repeats: median [min-max]; ratio = smtpwire / aiosmtpd of the medians"
    )
    print("| workload | unit | smtpwire core | aiosmtpd | ratio |")
    print("|---|---|---|---|---|")
    rows = [
        (f"pipelined commands ({4 * rounds:,})", "commands/s", commands, rounds),
        (f"DATA, one {size} MiB message", "MiB/s", data, size * MiB),
        *((f"peak memory, one {m} MiB message", "MiB", memory, m * MiB) for m in memory_sizes),
    ]
    for name, unit, workload, argument in rows:
        ours, theirs = measure(args.repeats, workload, argument)
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(f"| {name} | {unit} | {cell(ours)} | {cell(theirs)} | {ratio:.3g} |", flush=True)
    print(f"Peak memory includes the harness's chunk feeder: {figure(feeder_peak(memory_sizes[-1] * MiB))} MiB alone.")


if __name__ == "__main__":
    main()
