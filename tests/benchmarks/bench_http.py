"""Benchmark of HTTP delivery: msg/s and server CPU per message of ``smtpwire serve --deliver-http``, against a Maildir.

    python tests/benchmarks/bench_http.py [--rounds 5] [--quick]

The endpoint is this script's own, in its own process (its CPU is not
counted): an asyncio protocol on uvloop when installed, speaking just enough
HTTP/1.1 (keep-alive, ``Content-Length`` bodies) to answer every request 200
with an empty body at once.  It counts the POSTs and says the count when
SIGTERM stops it; a run counts only if that is every message sent.

Servers, each ``smtpwire serve`` started fresh on a free port for every run
(on the loop serve picks by default, as ``bench_verify.py`` starts them), with
a fresh endpoint for the ``http-`` ones:

- ``maildir``: ``--maildir`` a fresh Maildir (fsync each message: mind tmpfs,
  where it is free);
- ``http-spool``: ``--deliver-http URL --deliver-spool DIR`` (spool mode, the
  default): each message fsynced into the spool before the 250, then POSTed;
- ``http-sync``: ``--deliver-http URL --deliver-mode sync``: the 250 once the
  endpoint answered.

The message is ``bench_verify.py``'s (1 KB, DKIM-signed).  Each run first
sends ``warm`` messages and waits for the spool to drain, then reads the
server's utime + stime from /proc/PID/stat before ``smtp-source -s SESSIONS
-m N -d -F FILE`` and again once the load is over *and* the spool is empty
(waited for, bounded): in spool mode the POSTs go on after the last 250, and
their cost is counted.  msg/s is the client's (messages over the time to the
last 250).  A run counts only if smtp-source exits 0, the server logs one
accepted line per message (in sync mode, one delivered line with a 2xx), the Maildir holds them all, and the endpoint
received exactly one POST per message (none left in the spool, none in its
dead/).  Rounds are interleaved, servers in rotating order; tables give the
median [min-max] over the rounds, and the cost of HTTP delivery over the
Maildir: the difference of the medians, and the median of the per-round
differences.  Tables (Markdown) go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.benchmarks

from tests.benchmarks import bench_servers as servers  # server start, /proc, smtp-source, figures
from tests.benchmarks import bench_verify as verify  # the message, smtp-source's command, serve's start, the tables

SERVERS = ("maildir", "http-spool", "http-sync")
#: (without, with): the cost of HTTP delivery is the second's CPU per message less the first's.
PAIRS = (("maildir", "http-spool"), ("maildir", "http-sync"))
SCRIPT = str(Path(__file__).resolve())
ENDPOINT_FLAG = "--be-endpoint"  # this script, run as the answer-200 endpoint on the port that follows
ENDPOINT_STOP_TIMEOUT = 10.0  # seconds for the endpoint to say its count and exit after SIGTERM
DRAIN_POLL = 0.02  # seconds between two looks at the spool's queue/
DRAIN_BASE_TIMEOUT = 30.0  # seconds for the spool to drain, plus DRAIN_PER_MESSAGE for each message
DRAIN_PER_MESSAGE = 0.02


# -- the answer-200 endpoint ---------------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
MAX_HEAD = 64 * 1024  # a longer request head closes the connection
MAX_BODY = 64 * 1024 * 1024  # a longer body too (serve's payload of a 1 KB message is a few KB)


class AnswerOk(asyncio.Protocol):
    """One HTTP/1.1 connection: each request (head, then a ``Content-Length`` body) answered 200, empty."""

    def __init__(self, posts: list[int]) -> None:
        self.posts = posts  # one element: POSTs answered, across connections
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one without the class

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        answers = 0
        while (request := self.next_request()) is not None:
            answers += 1
            self.posts[0] += request.startswith(b"POST ")
        if answers:
            self.transport.write(OK * answers)

    def next_request(self) -> bytes | None:
        """The head of the next whole request, taken off the buffer with its body; None until one is whole."""
        assert self.transport is not None
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.transport.close()
            return None
        head = bytes(self.buffer[:end])
        length = content_length(head)
        if length is None or length > MAX_BODY:
            self.buffer.clear()
            self.transport.close()  # chunked, malformed or too long: not a request this endpoint takes
            return None
        if len(self.buffer) < end + 4 + length:
            return None
        del self.buffer[: end + 4 + length]
        return head


def content_length(head: bytes) -> int | None:
    """The body's length from the request head (0 without the field); None when chunked or malformed."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            if not value.strip().isdigit():
                return None
            length = int(value)
    return length


async def answer_ok(port: int) -> int:
    """Serve on 127.0.0.1:port until SIGTERM; how many POSTs were answered."""
    loop = asyncio.get_running_loop()
    posts = [0]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await loop.create_server(lambda: AnswerOk(posts), servers.LOCALHOST, port, backlog=1024)
    async with server:
        await stop.wait()
    return posts[0]


def endpoint_main(port: int) -> None:
    """The endpoint's process: on uvloop when installed (its latency counts in msg/s), its count said at the end."""
    try:
        import uvloop
    except ImportError:
        posts = asyncio.run(answer_ok(port))
    else:
        posts = uvloop.run(answer_ok(port))
    print(f"posts {posts}", flush=True)


@dataclasses.dataclass
class Endpoint:
    url: str  # as serve's --deliver-http
    posts: int | None = None  # set once the endpoint has stopped


@contextlib.contextmanager
def endpoint_started(run_dir: Path) -> Iterator[Endpoint]:
    """The answer-200 endpoint on a free port; stopped on the way out, its count of POSTs read."""
    port = servers.free_port()
    endpoint = Endpoint(f"http://{servers.LOCALHOST}:{port}/inbound")
    out = run_dir / "endpoint.out"
    with open(out, "wb") as out_file:
        process = subprocess.Popen(
            [sys.executable, SCRIPT, ENDPOINT_FLAG, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + servers.START_TIMEOUT
        while not servers.listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise servers.Failed(f"the endpoint is not listening: {out.read_text(errors='replace')[-300:]}")
            time.sleep(0.02)
        yield endpoint
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=ENDPOINT_STOP_TIMEOUT)
        said = [line.split() for line in out.read_text(errors="replace").splitlines() if line.startswith("posts ")]
        endpoint.posts = int(said[-1][1]) if said and len(said[-1]) == 2 and said[-1][1].isdigit() else None
    finally:
        servers.kill_group(process)


# -- end to end ----------------------------------------------------------------------------------------------


def spool_of(server: str, run_dir: Path) -> Path | None:
    return run_dir / "spool" if server == "http-spool" else None


def serve_command(server: str, port: int, *, run_dir: Path, endpoint: Endpoint | None) -> list[str]:
    """``smtpwire serve`` for ``server``: into a Maildir, or POSTing to ``endpoint`` in spool or sync mode."""
    command = [*servers.SERVE, "--listen", f"{servers.LOCALHOST}:{port}", "--hostname", servers.HOSTNAME]
    if endpoint is None:
        return [*command, "--maildir", str(run_dir / "Maildir")]
    spool = spool_of(server, run_dir)
    command += ["--deliver-http", endpoint.url]
    return command + (["--deliver-spool", str(spool)] if spool else ["--deliver-mode", "sync"])


@contextlib.contextmanager
def server_and_endpoint(server: str, run_dir: Path, expected: int) -> Iterator[servers.Running]:
    """``server`` (and its endpoint when it posts) started; once both have stopped, Failed unless the server
    logged ``expected`` messages accepted, the Maildir (if any) holds them all and the endpoint (if any) got
    exactly ``expected`` POSTs."""
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(endpoint_started(run_dir)) if server.startswith("http") else None
        command_for = functools.partial(serve_command, server, run_dir=run_dir, endpoint=endpoint)
        with verify.started_serve(server, run_dir, command_for) as running:
            yield running
    accepted = len(verify.accepted_lines(running))
    if accepted != expected:
        raise servers.Failed(f"the server logged {accepted} accepted messages, {expected} were sent: {running.tail()}")
    if running.maildir is not None and len(os.listdir(running.maildir / "new")) != expected:
        raise servers.Failed(f"{len(os.listdir(running.maildir / 'new'))} files in new/ for {expected} messages")
    if endpoint is not None and endpoint.posts != expected:
        raise servers.Failed(f"the endpoint received {endpoint.posts} POSTs, {expected} messages were sent")


def wait_for_drain(spool: Path | None, running: servers.Running, messages: int) -> None:
    """Return once the spool's queue/ is empty (at once without a spool); Failed if it is not in time, or if a
    message went to dead/."""
    if spool is None:
        return
    timeout = DRAIN_BASE_TIMEOUT + DRAIN_PER_MESSAGE * messages
    deadline = time.monotonic() + timeout
    while left := len(os.listdir(spool / "queue")):
        running.alive()
        if time.monotonic() > deadline:
            raise servers.Failed(f"{left} messages still in the spool {timeout:.0f} s after the load")
        time.sleep(DRAIN_POLL)
    dead = os.listdir(spool / "dead")
    if dead:
        raise servers.Failed(f"{len(dead)} files in the spool's dead/: {running.tail()}")


def send(smtp_source: str, mail: verify.Mail, running: servers.Running, counts: verify.Counts, messages: int) -> None:
    verify.send(smtp_source, mail, running.port, sessions=counts.sessions, messages=messages)


def measure(smtp_source: str, server: str, mail: verify.Mail, counts: verify.Counts, run_dir: Path) -> verify.Outcome:
    spool = spool_of(server, run_dir)
    with server_and_endpoint(server, run_dir, counts.warm + counts.messages) as running:
        send(smtp_source, mail, running, counts, counts.warm)
        wait_for_drain(spool, running, counts.warm)
        cpu_before, started_at = servers.cpu_seconds(running.pid), time.perf_counter()
        send(smtp_source, mail, running, counts, counts.messages)
        elapsed = time.perf_counter() - started_at
        wait_for_drain(spool, running, counts.messages)
        running.alive()
        cpu = servers.cpu_seconds(running.pid) - cpu_before
        if spool is not None:
            drained = time.perf_counter() - started_at
            print(f"  {server}: spool drained {drained - elapsed:.2f} s after the last 250", file=sys.stderr)
    return verify.Outcome(cpu=cpu / counts.messages, rate=counts.messages / elapsed)


def run_once(smtp_source: str, server: str, mail: verify.Mail, counts: verify.Counts, work: Path) -> verify.Outcome:
    return verify.run_in(
        work, f"bench-http-{server}", lambda run_dir: measure(smtp_source, server, mail, counts, run_dir)
    )


Results = verify.Results


def end_to_end(smtp_source: str, mail: verify.Mail, counts: verify.Counts, rounds: int, work: Path) -> Results:
    return verify.rotated_rounds(SERVERS, rounds, lambda server: run_once(smtp_source, server, mail, counts, work))


def report_end_to_end(results: Results, counts: verify.Counts) -> None:
    """The table, and the cost of HTTP delivery: CPU per message POSTing less into the Maildir, per mode."""
    good = verify.report_table(results, counts)
    print(
        "http-spool's CPU runs until the spool is empty: the POSTs after the last 250 are counted; "
        "its msg/s is the client's, to the last 250.\n"
    )
    for plain, posted in PAIRS:
        found = verify.cost(good, plain, posted)
        if found is None:
            print(f"- cost of {posted} over {plain}: n/a (a run failed)  ")
            continue
        difference, paired = found
        print(
            f"- cost of {posted} over {plain}: {difference:+.0f} µs/msg (difference of the medians; per round "
            f"{servers.spread(paired)}: {', '.join(f'{value:+.0f}' for value in paired)})  "
        )
    verify.report_failures(results)


# -- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:2] == [ENDPOINT_FLAG]:
        endpoint_main(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description="msg/s and CPU per message of smtpwire serve --deliver-http.")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    counts = verify.QUICK if args.quick else verify.Counts()
    smtp_source = servers.find_tool("smtp-source")
    if smtp_source is None:
        raise SystemExit("smtp-source (Postfix) not found on PATH nor in " + ", ".join(servers.SBIN))
    servers.raise_file_limit()
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    try:
        mail = verify.make_mail(work)
        print(header(args.rounds, len(mail.message), work), flush=True)
        report_end_to_end(end_to_end(smtp_source, mail, counts, args.rounds, work), counts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def header(rounds: int, size: int, work: Path) -> str:
    versions = ", ".join(f"{name} {servers.package_version(name)}" for name in ("smtpwire", "httpx", "uvloop"))
    return (
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {versions}; message {size:,} octets (bench_verify's, "
        f"DKIM-signed); serve on its default loop; the endpoint (200, empty body, HTTP/1.1 keep-alive) on uvloop in "
        f"its own process (not counted); Maildir and spool on {servers.filesystem(str(work))}; {rounds} rounds: "
        "median [min-max]; CPU is the server's utime+stime during the load, and for http-spool until the spool "
        "is empty"
    )


if __name__ == "__main__":
    main()
