"""Benchmark of the milter client: server CPU per message of ``smtpwire serve --milter``, and without.

    python tests/benchmarks/bench_milter.py [--rounds 5] [--quick] [--profile-serve]

The milter is this script's own, in its own process (its CPU is not counted):
an asyncio protocol speaking milter protocol version 6 that asks for every
stage and a reply to each (protocol flags 0, no actions), answers each
command CONTINUE and the end of the message ACCEPT, so what is measured is
the client's side of a milter that does nothing: the codec, the socket round
trips (one per stage and per header field) and the handler around them.  It
counts the messages it saw; a run counts only if that is every message sent.

Servers, each ``smtpwire serve`` started fresh on a free port for every run
(on the loop serve picks by default, as ``bench_servers.py`` and
``bench_verify.py`` start them), with a fresh milter for the ``+milter`` ones:

- ``sink``, ``sink+milter``: ``--sink``, and with ``--milter inet:127.0.0.1:PORT``;
- ``maildir``, ``maildir+milter``: the same into a fresh ``--maildir`` (fsync
  each message: mind tmpfs, where it is free);
- ``sink+milter-unix``: ``--sink --milter unix:PATH``, the same milter on a
  Unix socket: what the loopback TCP stack costs of the round trips.

The message is ``bench_verify.py``'s: 1 KB, DKIM-signed (six header fields,
and the Received field the milter sees).  Each run first sends ``warm``
messages, then reads the server's utime + stime from /proc/PID/stat around
``smtp-source -s SESSIONS -m N -d -F FILE``.  A run counts only if
smtp-source exits 0, the server logs one accepted line per message, the
Maildir holds them all, and (with ``+milter``) the milter saw each one's end.
Rounds are interleaved, servers in rotating order; tables give the median
[min-max] over the rounds, and the milter's cost: the difference of the
medians, and the median of the per-round differences.

``--profile-serve`` runs ``sink`` and ``sink+milter`` once more each under
cProfile (started by SIGUSR1 after the warm-up, stopped by SIGUSR2 after the
load, as ``bench_verify.py`` does) and gives each layer's µs per message in
both and the difference: the milter codec, the handler, anyio's streams, the
socket calls themselves (uvloop's or the socket module's native methods, a
layer of their own here), the event loop.  Standard-library time is charged
to the calling layer.  Tables (Markdown) go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.benchmarks

from tests.benchmarks import bench_servers as servers  # server start, /proc, smtp-source, figures
from tests.benchmarks import bench_verify as verify  # the message, smtp-source's command, serve under cProfile

SERVERS = ("sink", "sink+milter", "sink+milter-unix", "maildir", "maildir+milter")
#: (without, with): the milter's cost is the second's CPU per message less the first's.
PAIRS = (("sink", "sink+milter"), ("maildir", "maildir+milter"), ("sink", "sink+milter-unix"))
SCRIPT = str(Path(__file__).resolve())
MILTER_FLAG = "--be-milter"  # this script, run as the accept-all milter on the address that follows
MILTER_STOP_TIMEOUT = 10.0  # seconds for the milter to say its count and exit after SIGTERM


# -- the accept-all milter -----------------------------------------------------------------------------------


def milter_packet(command: bytes, payload: bytes = b"") -> bytes:
    """A milter packet: a 4-octet length (command and payload), the command octet, the payload."""
    return (len(payload) + 1).to_bytes(4, "big") + command + payload


#: OPTNEG: version 6, no actions, protocol flags 0 (every stage sent, each answered).
NEGOTIATED = milter_packet(b"O", (6).to_bytes(4, "big") + bytes(8))
CONTINUE, ACCEPT = milter_packet(b"c"), milter_packet(b"a")
SILENT = frozenset(b"DAK")  # macros, abort, quit-and-new-connection: the MTA waits for no reply
MILTER_MAX_PACKET = 1 << 20  # a longer length closes the connection (the client's bug, not ours to buffer)


class AcceptAll(asyncio.Protocol):
    """One MTA connection: every command answered CONTINUE, the end of a message ACCEPT; QUIT closes."""

    def __init__(self, ends: list[int]) -> None:
        self.ends = ends  # one element: messages whose end this milter has seen, across connections
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one without the class

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        replies = []
        while len(self.buffer) >= 5:
            length = int.from_bytes(self.buffer[:4], "big")
            if not 1 <= length <= MILTER_MAX_PACKET or self.buffer[4] == ord("Q"):
                self.transport.close()
                return
            if len(self.buffer) < 4 + length:
                break
            command = self.buffer[4]
            del self.buffer[: 4 + length]
            replies.append(self.reply(command))
        self.transport.write(b"".join(replies))

    def reply(self, command: int) -> bytes:
        if command in SILENT:
            return b""
        if command == ord("O"):
            return NEGOTIATED
        if command == ord("E"):
            self.ends[0] += 1
            return ACCEPT
        return CONTINUE


async def accept_all(address: str) -> int:
    """Serve on ``inet:HOST:PORT`` or ``unix:PATH`` until SIGTERM; how many messages' ends were seen."""
    loop = asyncio.get_running_loop()
    ends = [0]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    kind, _, where = address.partition(":")
    if kind == "unix":
        server = await loop.create_unix_server(lambda: AcceptAll(ends), where)
    else:
        host, _, port = where.rpartition(":")
        server = await loop.create_server(lambda: AcceptAll(ends), host, int(port))
    async with server:
        await stop.wait()
    return ends[0]


def milter_main(address: str) -> None:
    """The milter's process: on uvloop when installed (its latency counts in msg/s), its count said at the end."""
    try:
        import uvloop
    except ImportError:
        ends = asyncio.run(accept_all(address))
    else:
        ends = uvloop.run(accept_all(address))
    print(f"ends {ends}", flush=True)


@dataclasses.dataclass
class Milter:
    address: str  # as serve's --milter
    ends: int | None = None  # set once the milter has stopped


@contextlib.contextmanager
def milter_started(run_dir: Path, unix: bool) -> Iterator[Milter]:
    """The accept-all milter on a free port or a Unix socket; stopped on the way out, its count of messages read."""
    path = run_dir / "milter.sock"
    port = servers.free_port()
    milter = Milter(f"unix:{path}" if unix else f"inet:{servers.LOCALHOST}:{port}")
    out = run_dir / "milter.out"
    with open(out, "wb") as out_file:
        process = subprocess.Popen(
            [sys.executable, SCRIPT, MILTER_FLAG, milter.address],
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + servers.START_TIMEOUT
        while not (path.exists() if unix else servers.listening(port)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise servers.Failed(f"the milter is not listening: {out.read_text(errors='replace')[-300:]}")
            time.sleep(0.02)
        yield milter
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=MILTER_STOP_TIMEOUT)
        said = [line.split() for line in out.read_text(errors="replace").splitlines() if line.startswith("ends ")]
        milter.ends = int(said[-1][1]) if said and len(said[-1]) == 2 and said[-1][1].isdigit() else None
    finally:
        servers.kill_group(process)


# -- end to end ----------------------------------------------------------------------------------------------


def serve_command(server: str, port: int, run_dir: Path, milter: Milter | None, profile: Path | None) -> list[str]:
    """``smtpwire serve`` for ``server``; under bench_verify's PROFILED_SERVE, writing to ``profile``, if given."""
    serve = (
        [sys.executable, "-c", verify.PROFILED_SERVE, str(profile), *servers.SERVE[3:]] if profile else servers.SERVE
    )
    command = [*serve, "--listen", f"{servers.LOCALHOST}:{port}", "--hostname", servers.HOSTNAME]
    command += ["--maildir", str(run_dir / "Maildir")] if server.startswith("maildir") else ["--sink"]
    return command + (["--milter", milter.address] if milter else [])


def started(
    server: str, run_dir: Path, milter: Milter | None, profile: Path | None = None
) -> contextlib.AbstractContextManager[servers.Running]:
    """``smtpwire serve`` as ``server`` says, through ``milter`` if given, until the block ends."""
    return verify.started_serve(server, run_dir, lambda port: serve_command(server, port, run_dir, milter, profile))


@contextlib.contextmanager
def server_and_milter(
    server: str, run_dir: Path, expected: int, profile: Path | None = None
) -> Iterator[servers.Running]:
    """``server`` (and its milter when it has one) started; once both have stopped, Failed unless the server
    logged ``expected`` messages accepted, the Maildir (if any) holds them all and the milter (if any) saw each."""
    with contextlib.ExitStack() as stack:
        milter = stack.enter_context(milter_started(run_dir, server.endswith("-unix"))) if "+milter" in server else None
        with started(server, run_dir, milter, profile) as running:
            yield running
    accepted = len(verify.accepted_lines(running))
    if accepted != expected:
        raise servers.Failed(f"the server logged {accepted} accepted messages, {expected} were sent: {running.tail()}")
    if running.maildir is not None and len(os.listdir(running.maildir / "new")) != expected:
        raise servers.Failed(f"{len(os.listdir(running.maildir / 'new'))} files in new/ for {expected} messages")
    if milter is not None and milter.ends != expected:
        raise servers.Failed(f"the milter saw {milter.ends} messages end, {expected} were sent")


def send(smtp_source: str, mail: verify.Mail, running: servers.Running, counts: verify.Counts, messages: int) -> None:
    verify.send(smtp_source, mail, running.port, sessions=counts.sessions, messages=messages)


def measure(smtp_source: str, server: str, mail: verify.Mail, counts: verify.Counts, run_dir: Path) -> verify.Outcome:
    with server_and_milter(server, run_dir, counts.warm + counts.messages) as running:
        send(smtp_source, mail, running, counts, counts.warm)
        cpu_before, started_at = servers.cpu_seconds(running.pid), time.perf_counter()
        send(smtp_source, mail, running, counts, counts.messages)
        elapsed = time.perf_counter() - started_at
        running.alive()
        cpu = servers.cpu_seconds(running.pid) - cpu_before
    return verify.Outcome(cpu=cpu / counts.messages, rate=counts.messages / elapsed)


def run_once(smtp_source: str, server: str, mail: verify.Mail, counts: verify.Counts, work: Path) -> verify.Outcome:
    return verify.run_in(
        work, f"bench-milter-{server}", lambda run_dir: measure(smtp_source, server, mail, counts, run_dir)
    )


Results = verify.Results


def end_to_end(smtp_source: str, mail: verify.Mail, counts: verify.Counts, rounds: int, work: Path) -> Results:
    return verify.rotated_rounds(SERVERS, rounds, lambda server: run_once(smtp_source, server, mail, counts, work))


def report_end_to_end(results: Results, counts: verify.Counts) -> None:
    """The table, and the milter's cost: CPU per message with it less without, per pair."""
    good = verify.report_table(results, counts)
    for plain, filtered in PAIRS:
        found = verify.cost(good, plain, filtered)
        if found is None:
            print(f"- cost of the milter over {plain}: n/a (a run failed)  ")
            continue
        difference, paired = found
        print(
            f"- cost of the accept-all milter, {filtered} over {plain}: {difference:.0f} µs/msg (difference of "
            f"the medians; per round {servers.spread(paired)}: {', '.join(f'{value:.0f}' for value in paired)})  "
        )
    verify.report_failures(results)


# -- where the time goes -------------------------------------------------------------------------------------

#: A frame's layer, from its file: the first pattern found in the path names it.
LAYERS = (
    ("smtpwire_filters/_milter_codec", "codec: smtpwire_filters/_milter_codec.py"),
    ("smtpwire_filters/_milter", "codec: smtpwire_filters/_milter.py (session)"),
    ("smtpwire_handler/_milter", "handler: _milter.py"),
    ("smtpwire_handler/_trace", "handler: _trace.py (Received)"),
    ("smtpwire_handler/_around", "handler: _around.py"),
    ("smtpwire_handler/", "handler: the rest (stores, hooks)"),
    ("anyio/", "anyio (streams, fail_after)"),
    ("smtpwire_serve/", "smtpwire_serve"),
    ("smtpwire_asyncio/", "smtpwire_asyncio"),
    ("smtpwire/", "smtpwire (core)"),
    ("uvloop/", "uvloop (Python part)"),
    ("asyncio/", "asyncio"),
    ("logging/", "logging"),
)
#: Native methods that are the socket I/O itself: their own layer, not their caller's.  uvloop's (Cython) methods
#: are invisible to cProfile: their time is their caller's own, anyio's SocketStream.send (transport.write, the
#: send system call) and receive, which are therefore this layer too.
SOCKET_CALLS = ("of '_socket.socket'", "<built-in method _socket.", "of 'uvloop.loop.")
SOCKET_FUNCTIONS = ("send", "receive")  # in anyio's asyncio backend: the stream's own calls
SOCKET_LAYER = "socket I/O (anyio's SocketStream.send/receive, the native writes inside)"
Seconds = dict[str, float]
CHARGE_UP = 8  # how many callers up the time of the standard library or a built-in is charged, at most


def layer_of(function: tuple[str, int, str]) -> str | None:
    """The layer of a cProfile function key (file, line, name), or None (standard library, other built-ins)."""
    path, _, name = function
    if path == "~" and any(call in name for call in SOCKET_CALLS):
        return SOCKET_LAYER
    path = path.replace(os.sep, "/")
    if "anyio/_backends/" in path and name in SOCKET_FUNCTIONS:
        return SOCKET_LAYER
    return next((layer for pattern, layer in LAYERS if pattern in path), None)


def layers_of(stats: dict[Any, Any]) -> Seconds:
    """Seconds per layer of a cProfile run (``pstats.Stats.stats``), as bench_verify's, with the socket layer."""
    layers: Seconds = collections.defaultdict(float)
    for function, (_, _, own, _, callers) in stats.items():
        charge(stats, function, own, callers, layers, CHARGE_UP)
    return layers


def charge(stats: dict[Any, Any], function: Any, seconds: float, callers: Any, layers: Seconds, up: int) -> None:
    """Charge ``seconds`` to ``function``'s layer, or else to its callers' in proportion to their calls' time."""
    if function[0].startswith("<frozen importlib") or function[2] == "<module>":
        layers[verify.STARTUP] += seconds
        return
    layer = layer_of(function)
    if layer is not None or not callers or up == 0:
        layers[layer or f"unattributed: {function[2]}"] += seconds
        return
    total = sum(entry[2] for entry in callers.values()) or 1.0
    for caller, entry in callers.items():
        charge(stats, caller, seconds * entry[2] / total, stats.get(caller, (0, 0, 0, 0, {}))[4], layers, up - 1)


def profile_serve(smtp_source: str, mail: verify.Mail, counts: verify.Counts, work: Path) -> dict[str, Any]:
    """sink and sink+milter, each under cProfile during the load after the warm-up: their pstats."""
    profiled: dict[str, Any] = {}
    for server in ("sink", "sink+milter"):
        run_dir = Path(tempfile.mkdtemp(prefix=f"bench-milter-cprofile-{server.replace('+', '-')}-", dir=work))
        profile = run_dir / "server.prof"
        with server_and_milter(server, run_dir, counts.warm + counts.messages, profile) as running:
            send(smtp_source, mail, running, counts, counts.warm)
            running.process.send_signal(signal.SIGUSR1)
            send(smtp_source, mail, running, counts, counts.messages)
            running.process.send_signal(signal.SIGUSR2)
            verify.wait_for_file(profile, running)
        profiled[server] = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    return profiled


def report_profile_serve(profiled: dict[str, Any], counts: verify.Counts) -> None:
    messages = counts.messages
    print(f"\n### cProfile of serve --sink, without and with one accept-all milter, {messages:,} messages each\n")
    print(
        "During the load after the warm-up; standard-library and built-in time charged to the calling layer, "
        f"the socket calls excepted; µs per message under cProfile; layers under {verify.MINOR_US} µs in both "
        "left out.\n"
    )
    print("| layer | sink | sink+milter | difference |")
    print("|---|---|---|---|")
    plain = collections.defaultdict(float, layers_of(profiled["sink"]))
    filtered = collections.defaultdict(float, layers_of(profiled["sink+milter"]))
    for name in sorted(set(plain) | set(filtered), key=lambda name: plain[name] - filtered[name]):
        ours, theirs = plain[name] / messages * 1e6, filtered[name] / messages * 1e6
        if max(ours, theirs) >= verify.MINOR_US:
            print(f"| {name} | {ours:.1f} | {theirs:.1f} | {theirs - ours:+.1f} |")
    before, after = sum(plain.values()) / messages * 1e6, sum(filtered.values()) / messages * 1e6
    print(f"| all | {before:.1f} | {after:.1f} | {after - before:+.1f} |")
    report_top(profiled["sink+milter"], messages)


def report_top(stats: dict[Any, Any], messages: int) -> None:
    """The functions of the milter path by own time, and the calls per message that say how many round trips."""
    rows = sorted(((own, calls, function) for function, (_, calls, own, _, _) in stats.items()), reverse=True)
    print(
        "\nsink+milter: top functions by own time (cProfile counts each resumption of a coroutine as a call: "
        "a coroutine's calls per message are about twice its awaits that suspend):\n"
    )
    print("| function | µs/msg own | calls/msg |")
    print("|---|---|---|")
    for own, calls, (path, line, name) in rows[:20]:
        print(f"| {Path(path).name}:{line} {name} | {own / messages * 1e6:.1f} | {calls / messages:.1f} |")


# -- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:2] == [MILTER_FLAG]:
        milter_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description="CPU cost per message of smtpwire serve with an accept-all milter.")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--profile-serve", action="store_true", help="cProfile serve --sink with and without --milter")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    counts = verify.QUICK if args.quick else verify.Counts()
    smtp_source = servers.find_tool("smtp-source")
    if smtp_source is None:
        raise SystemExit("smtp-source (Postfix) not found on PATH nor in " + ", ".join(servers.SBIN))
    servers.raise_file_limit()
    work = Path(tempfile.mkdtemp(prefix="bench-milter-"))
    try:
        mail = verify.make_mail(work)
        print(header(args.rounds, len(mail.message), work), flush=True)
        report_end_to_end(end_to_end(smtp_source, mail, counts, args.rounds, work), counts)
        if args.profile_serve:
            try:
                report_profile_serve(profile_serve(smtp_source, mail, counts, work), counts)
            except servers.Failed as error:
                print(f"\n- cProfile of serve: FAILED {error}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def header(rounds: int, size: int, work: Path) -> str:
    versions = ", ".join(f"{name} {servers.package_version(name)}" for name in ("smtpwire", "anyio", "uvloop"))
    return (
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {versions}; message {size:,} octets (bench_verify's, "
        f"DKIM-signed); serve on its default loop; the milter on uvloop in its own process (not counted); Maildir on "
        f"{servers.filesystem(str(work))}; {rounds} rounds: median [min-max]; CPU is the server's utime+stime "
        "during the load"
    )


if __name__ == "__main__":
    main()
