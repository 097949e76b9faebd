"""End-to-end benchmark: ``smtpwire serve`` against aiosmtpd, other servers, bare loops and Postfix's smtp-sink.

    python tests/benchmarks/bench_servers.py [--rounds 3] [--quick] [--only LOAD,...] [--servers NAME,...]
                                             [--maildir-parent DIR] [--baseline-tree DIR]

Needs Postfix's ``smtp-source`` and ``smtp-sink`` (searched on PATH, then in
the usual sbin directories), the ``bench`` extra (aiosmtpd), uvloop and trio.
Only 127.0.0.1 is used.  Everything goes over sockets.  The reference servers
in other languages (nodemailer, haraka, go-smtp below) are optional: run
``tests/benchmarks/peers/install.sh`` once, as root on Debian with Node 20 and
npm (it installs go-smtp from apt, smtp-server and Haraka as the lockfile in
that folder pins them, and builds the Go sink there); until then they are
listed as unavailable.

Servers, each a subprocess started fresh, on a free port, for every run (so
its CPU time is read from /proc/PID/stat, utime + stime, just around the
load, and its peak RSS from VmHWM in /proc/PID/status; with ``--workers``,
summed over the serve process and every process under it):

- ``smtpwire-asyncio``, ``smtpwire-uvloop``, ``smtpwire-trio``: ``python -m
  smtpwire_serve serve --sink`` (``--maildir DIR`` for the Maildir load,
  ``--self-signed`` for STARTTLS), with ``--loop asyncio|uvloop`` when
  ``serve --help`` offers it (the uvloop variant is unavailable otherwise)
  or ``--backend trio``.  It logs a line per message; the log goes to a file.
- ``aiosmtpd`` 1.4: its ``SMTP`` protocol on stdlib asyncio through
  ``loop.create_server``, as ``python -m aiosmtpd`` runs it, with a handler
  whose ``handle_DATA`` returns "250 OK" and discards; for Maildir it does
  what smtpwire's Maildir does (trace headers, write to tmp/, fsync, rename
  into new/, fsync new/) in ``loop.run_in_executor(None, ...)``.
- ``nodemailer``, ``haraka``, ``go-smtp``: the sinks in ``peers/``
  (``nodemailer_sink.js``, ``haraka_sink.js``, ``gosmtp_sink``), each the
  server process itself (no launcher in between), on nodemailer's
  ``smtp-server`` (Node; its 100 ms pause before every greeting patched out
  and reverse DNS off, see the sink), Haraka (Node, one process, log level
  warn, only its tls plugin and a sink plugin that answers the reverse-DNS
  hook) and go-smtp (``GOMAXPROCS=1``).  Any sender and recipient, no AUTH,
  messages up to 32 MiB, STARTTLS with this script's certificate; each
  message read fully and dropped, or for Maildir stored as aiosmtpd's handler
  below does it, a message at a time.  They report their count at SIGTERM.
- ``bare-asyncio``, ``bare-uvloop``: the ceiling of the core on a loop: an
  ``asyncio.Protocol`` feeding ``smtpwire.ServerConnection`` directly, every
  decision accepted, message data dropped (and ``loop.start_tls`` for
  STARTTLS).  No handler, no logging, no timeouts, no session limit.
- ``anyio-trio``: the anyio adapter as a library user runs it on trio:
  ``smtpwire_anyio.Server`` with a plain ``Handler`` that discards the data
  (``data_chunk`` does nothing) and counts messages (``message``), no
  logging configured, ``max_sessions`` above the idle count, in
  ``anyio.run(..., backend="trio")`` (its STARTTLS through ``tls_context``).
- ``bare-anyio-trio``: the ceiling of the core on anyio (trio): a task per
  connection of ``anyio.create_tcp_listener`` looping over ``next_event()``,
  sending what is queued and receiving when the core needs data, every
  decision accepted, message data dropped.  No hooks, no timeouts, no session
  limit, no STARTTLS, no Maildir.
- ``smtp-sink``: Postfix's C test server (``-c`` for its message counter), the
  C ceiling.  No STARTTLS, no Maildir.
- ``smtpwire-base-asyncio``, ``smtpwire-base-uvloop``, ``smtpwire-base-trio``,
  only with ``--baseline-tree DIR`` (a checkout of another commit, e.g. made
  with ``git worktree add --detach DIR COMMIT``): the same ``serve`` commands
  with ``PYTHONPATH`` set to DIR's ``src`` and ``adapters``, so that commit's
  code runs the same loads in the same rounds.  Before any run the script
  checks that the packages would be imported from DIR and that both
  ``serve --help`` offer the same options; the tables then add the ratios of
  each ``smtpwire-LOOP`` to its ``smtpwire-base-LOOP`` (above 1 is faster,
  below 1 is less CPU or memory).

The aiosmtpd, anyio and bare servers are this script itself, run as
``bench_servers.py _serve KIND ...``.  Loads (``--quick`` scales the counts down):

- ``persistent``: ``smtp-source -s 20 -m 20000 -l 1000 -d`` (20 sessions,
  each sending message after message); messages/s and server CPU µs/message.
- ``per-connection``: the same without ``-d``, 5,000 messages, one
  connection each.
- ``starttls``: 1,000 sessions of smtplib (2 processes x 4 threads, with
  TCP_NODELAY): EHLO, STARTTLS (certificate not verified), EHLO, MAIL, RCPT,
  DATA of 1 KiB, QUIT;
  sessions/s and server CPU µs/session.  smtpwire uses its own
  ``--self-signed`` certificate, the others one of the same kind (P-256)
  made by this script.
- ``big``: ``smtp-source -s 2 -m 10 -l 20971520``: MiB/s, CPU ms/message
  and the server's peak RSS.
- ``idle``: 1,020 connections held open, each after its 220 greeting and a
  250 reply to EHLO (a 421 counts as refused); KiB of server RSS (VmRSS
  after minus before) per held session.  ``--max-sessions`` is raised above
  the count when ``serve --help`` offers it; smtp-sink gets ``-m`` likewise.
- ``maildir``: ``smtp-source -s 20 -m 2000 -l 1000 -d`` into a fresh Maildir
  (under ``--maildir-parent``, default the temp directory: mind tmpfs, where
  fsync is free); afterwards new/ must hold exactly one file per message.
- ``workers``: ``smtpwire serve --sink --workers 1`` and ``--workers 2`` (one
  port, SO_REUSEPORT) on the loop serve picks by default (uvloop when
  installed), or on each smtpwire server ``--servers`` names, under
  ``smtp-source -s 40 -m 20000 -l 1000 -d``; messages/s, the ratio of 2
  workers to 1 (the aim: at least 1.7 on 2 cores), the server CPU summed over
  its processes, and smtp-source's own CPU (from the rusage of the reaped
  client), since the load generator competes for the same cores.  Both
  workers must log "smtpwire serving on" before the load starts.

Every run is checked before its figure counts: smtp-source exits 0 (it stops
at the first reply that is not the expected success), every smtplib session
succeeds, and the number of messages the server reports (smtpwire's log,
the helpers' counters, smtp-sink's counter) or stores equals the number sent.
A failed run makes its cell FAILED, never a figure; the reasons are listed
under the table.  Rounds are interleaved (every load and server once per
round, servers in rotating order; for ``workers`` the two counts back to
back, in alternating order) so drift hits all alike.  Tables give the median
[min-max] over the rounds, the ratios to aiosmtpd of the medians, the CPU
ratios of each server to its bare ceiling: ``smtpwire serve`` (asyncio,
uvloop) to the bare Protocol on the same loop, the anyio adapter (trio) to
the bare anyio loop (trio), and ``smtpwire serve`` (trio) to the anyio
adapter (trio), and the rate and CPU of ``smtpwire-uvloop`` over nodemailer's
and go-smtp's (issue 23's targets).  Warnings and errors found in the servers' logs are
summarised at the end.  The tables (Markdown) go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import email.utils
import functools
import importlib.util
import itertools
import json
import logging
import multiprocessing
import os
import platform
import pwd
import re
import resource
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anyio.abc import SocketStream, TaskStatus

MiB = 1024 * 1024
LOCALHOST = "127.0.0.1"
HOSTNAME = "localhost"  # the servers' name (greeting, EHLO, trace headers): no DNS lookup at start
SENDER, RECIPIENT = "a@example.org", "b@example.net"
MESSAGE_LENGTH = 1000  # smtp-source -l: payload bytes of the small messages
BIG_LENGTH = 20 * MiB
MAX_MESSAGE = 32 * MiB  # smtpwire serve's default --max-message-size; aiosmtpd and the bare Protocol get the same
SBIN = ("/usr/sbin", "/usr/local/sbin")  # where Postfix installs its test tools when they are not on PATH
SERVE = [sys.executable, "-m", "smtpwire_serve", "serve"]
SERVE_FLAGS = ("--loop", "--max-sessions", "--workers")  # serve's options this script passes when offered
SCRIPT = str(Path(__file__).resolve())
TICK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0  # seconds for a server to listen
STOP_TIMEOUT = 15.0  # seconds for a server to exit after SIGTERM (then SIGKILL)
SOCKET_TIMEOUT = 15.0
STARTTLS_PROCESSES, STARTTLS_THREADS = 2, 4
IDLE_CONCURRENCY = 50  # connections being set up at once (aiosmtpd's listen backlog is 100)
ANYIO_MAX_SESSIONS = 100_000  # the anyio-trio server's limit: never reached (the idle load holds 1,020)
WORKER_COUNTS = (1, 2)  # serve --workers N for the workers load
PEERS = Path(__file__).resolve().parent / "peers"  # the reference servers peers/install.sh puts there
#: Each peer: its program under PEERS, run with ``node`` or not, and the files install.sh makes that it needs.
PEER_PROGRAMS = {
    "nodemailer": ("nodemailer_sink.js", True, ("node_modules/smtp-server/package.json",)),
    "haraka": ("haraka_sink.js", True, ("node_modules/Haraka/package.json", "dhparams.pem")),
    "go-smtp": ("gosmtp_sink/gosmtp_sink", False, ()),  # the program is the binary install.sh builds
}
PEER_ENVIRON = {"go-smtp": {"GOMAXPROCS": "1"}}  # go-smtp on one core, as the Python servers run
#: Issue 23's targets: ratios of this server to each peer, printed under the tables.
PEER_RATIOS = (("smtpwire-uvloop", "nodemailer"), ("smtpwire-uvloop", "go-smtp"))

LOADS = ("persistent", "per-connection", "starttls", "big", "idle", "maildir", "workers")
SERVERS = (
    "smtpwire-asyncio",
    "smtpwire-uvloop",
    "smtpwire-trio",
    "aiosmtpd",
    "nodemailer",
    "haraka",
    "go-smtp",
    "bare-asyncio",
    "bare-uvloop",
    "anyio-trio",
    "bare-anyio-trio",
    "smtp-sink",
)
NOT_APPLICABLE = {
    ("smtp-sink", "starttls"): "no STARTTLS",
    ("smtp-sink", "maildir"): "no Maildir",
    ("bare-asyncio", "maildir"): "no storage",
    ("bare-uvloop", "maildir"): "no storage",
    ("anyio-trio", "maildir"): "no storage",
    ("bare-anyio-trio", "starttls"): "no STARTTLS",
    ("bare-anyio-trio", "maildir"): "no storage",
}
#: ``smtpwire serve`` from ``--baseline-tree``, listed right after its counterpart from this tree.
BASELINE_OF = {f"smtpwire-{loop}": f"smtpwire-base-{loop}" for loop in ("asyncio", "uvloop", "trio")}
#: CPU per message (or session) of a server ÷ that of the ceiling it is built on, printed under the tables.
CPU_RATIOS = (
    ("smtpwire serve (asyncio)", "smtpwire-asyncio", "bare Protocol (asyncio)", "bare-asyncio"),
    ("smtpwire serve (uvloop)", "smtpwire-uvloop", "bare Protocol (uvloop)", "bare-uvloop"),
    ("anyio adapter (trio)", "anyio-trio", "bare anyio (trio)", "bare-anyio-trio"),
    ("smtpwire serve (trio)", "smtpwire-trio", "anyio adapter (trio)", "anyio-trio"),
)


def not_applicable(server: str, load: str) -> str | None:
    """Why ``server`` has no run under ``load``, or None."""
    if load == "workers" and not server.startswith("smtpwire"):
        return "only smtpwire serve has --workers"
    return NOT_APPLICABLE.get((server, load))


@dataclasses.dataclass(frozen=True)
class Counts:
    """How much each load sends per run."""

    persistent: int = 20_000
    per_connection: int = 5_000
    starttls: int = 1_000
    big: int = 10
    idle: int = 1_020
    maildir: int = 2_000
    workers: int = 20_000
    clients: int = 20  # concurrent smtp-source sessions (persistent, per-connection, maildir)
    big_clients: int = 2
    workers_clients: int = 40  # enough sessions to keep two workers busy


QUICK = Counts(persistent=2_000, per_connection=500, starttls=100, big=2, idle=1_020, maildir=200, workers=8_000)


class Failed(Exception):
    """A run that must not count; the message says why."""


# -- the servers under test that this script runs itself (``bench_servers.py _serve KIND ...``) --------------


@dataclasses.dataclass
class Stats:
    sessions: int = 0
    messages: int = 0
    count_sessions: bool = True  # False where counting would take a hook, work the server measured would not do

    def report(self) -> None:
        """The line ``server_count`` reads, written when the server stops."""
        sessions = f" sessions={self.sessions}" if self.count_sessions else ""
        print(f"bench-server: messages={self.messages}{sessions}", file=sys.stderr, flush=True)


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """What ``smtpwire serve`` builds for its certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def trace_headers(helo: str, peer: str, mail_from: str) -> bytes:
    """Return-Path and Received, as smtpwire's Maildir writes them (same work for both)."""
    return (
        f"Return-Path: <{mail_from}>\r\nReceived: from {helo} ([{peer}])\r\n"
        f"\tby {HOSTNAME} (aiosmtpd) with ESMTP id {secrets.token_hex(6)}\r\n"
        f"\tfor <{RECIPIENT}>; {email.utils.formatdate(localtime=True)}\r\n"
    ).encode()


class DurableMaildir:
    """Write to tmp/, fsync the file, rename into new/, fsync new/: what smtpwire serve does before 250."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.counter = itertools.count()
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def deliver(self, data: bytes) -> None:
        name = f"{time.time():.6f}.P{os.getpid()}Q{next(self.counter)}R{secrets.token_hex(8)}.{HOSTNAME}"
        tmp, new = self.path / "tmp" / name, self.path / "new" / name
        with open(tmp, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.rename(tmp, new)
        directory = os.open(new.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class AiosmtpdSink:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.stats.messages += 1
        return "250 OK"


class AiosmtpdMaildir:
    def __init__(self, stats: Stats, maildir: DurableMaildir) -> None:
        self.stats, self.maildir = stats, maildir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = trace_headers(session.host_name, session.peer[0], envelope.mail_from) + envelope.original_content
        await asyncio.get_running_loop().run_in_executor(None, self.maildir.deliver, data)
        self.stats.messages += 1
        return "250 OK"


def bare_protocol(stats: Stats, tls: ssl.SSLContext | None) -> Callable[[], asyncio.Protocol]:
    """The ceiling: ServerConnection on a Protocol, every decision accepted, message data dropped."""
    import smtpwire  # here, so the other servers do not carry it

    extensions = smtpwire.STANDARD_EXTENSIONS + ((smtpwire.StartTLS(),) if tls else ())
    config = smtpwire.ServerConfig(hostname=HOSTNAME, extensions=extensions, max_message_size=MAX_MESSAGE)
    handshakes: set[asyncio.Task[None]] = set()

    class Bare(asyncio.Protocol):
        transport: asyncio.Transport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
            self.conn = smtpwire.ServerConnection(config)
            self.decrypted_early: list[bytes] | None = None  # handshaking: what TLS gave before start_tls returned
            stats.sessions += 1
            self.pump()

        def data_received(self, data: bytes) -> None:
            if self.decrypted_early is not None:  # the client's EHLO can beat start_tls()'s return (TCP_NODELAY)
                self.decrypted_early.append(data)
                return
            self.conn.receive_data(data)
            self.pump()

        def eof_received(self) -> None:
            self.conn.receive_data(b"")
            self.pump()

        def pump(self) -> None:
            conn = self.conn
            while True:
                event = conn.next_event()
                if isinstance(event, smtpwire.Decision):
                    stats.messages += isinstance(event, smtpwire.EndOfMessage)
                    conn.accept()
                elif event is smtpwire.NEED_DATA or event is smtpwire.PAUSED:
                    break
                elif isinstance(event, smtpwire.StartTLSRequested):
                    self.decrypted_early = []
                    self.transport.write(conn.data_to_send())
                    task = asyncio.ensure_future(self.start_tls())
                    handshakes.add(task)
                    task.add_done_callback(handshakes.discard)
                    return
                elif isinstance(event, smtpwire.ConnectionClosed):
                    self.transport.write(conn.data_to_send())
                    self.transport.close()
                    return
            self.transport.write(conn.data_to_send())

        async def start_tls(self) -> None:
            assert tls is not None
            try:
                transport = await asyncio.get_running_loop().start_tls(self.transport, self, tls, server_side=True)
            except (OSError, ssl.SSLError, ConnectionError):
                self.conn.tls_failed()
                self.transport.close()
                return
            assert transport is not None and self.decrypted_early is not None
            self.transport = transport
            self.conn.tls_established()
            early, self.decrypted_early = self.decrypted_early, None
            for data in early:
                self.conn.receive_data(data)
            self.pump()

    return Bare


async def serve_until_terminated(factory: Callable[[], asyncio.BaseProtocol], port: int, stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, LOCALHOST, port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"bench server listening on {LOCALHOST}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    stats.report()


def bare_anyio(stats: Stats, port: int) -> Callable[..., Coroutine[Any, Any, None]]:
    """The ceiling on anyio: a task per connection looping over the core, every decision accepted, data dropped."""
    import anyio

    import smtpwire

    config = smtpwire.ServerConfig(
        hostname=HOSTNAME, extensions=smtpwire.STANDARD_EXTENSIONS, max_message_size=MAX_MESSAGE
    )
    gone = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

    async def session(stream: SocketStream) -> None:
        conn = smtpwire.ServerConnection(config)
        stats.sessions += 1
        async with stream:
            with contextlib.suppress(*gone):  # the peer vanished: the session just ends
                while True:
                    event = conn.next_event()
                    if isinstance(event, smtpwire.Decision):
                        stats.messages += isinstance(event, smtpwire.EndOfMessage)
                        conn.accept()
                    elif event is smtpwire.NEED_DATA or event is smtpwire.PAUSED:
                        data = conn.data_to_send()
                        if data:
                            await stream.send(data)
                        try:
                            received = await stream.receive()
                        except anyio.EndOfStream:
                            received = b""
                        conn.receive_data(received)
                    elif isinstance(event, smtpwire.ConnectionClosed):
                        data = conn.data_to_send()
                        if data:
                            await stream.send(data)
                        return
                    # MessageData (and nothing else comes without STARTTLS) is dropped

    async def serve(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=LOCALHOST, local_port=port)
        task_status.started()
        await listener.serve(session)

    return serve


def anyio_server(stats: Stats, port: int, tls: ssl.SSLContext | None) -> Callable[..., Coroutine[Any, Any, Any]]:
    """The anyio adapter as a library user runs it: ``Server`` with a plain handler that discards the data."""
    import smtpwire
    import smtpwire_anyio

    class Discard(smtpwire_anyio.Handler):
        def data_chunk(self, session: smtpwire_anyio.Session, data: bytes) -> None:
            pass

        def message(self, session: smtpwire_anyio.Session, envelope: smtpwire_anyio.Envelope) -> smtpwire.Reply | None:
            stats.messages += 1  # for the check against the count sent
            return None

    config = smtpwire.ServerConfig(hostname=HOSTNAME, max_message_size=MAX_MESSAGE)
    options = smtpwire_anyio.ServerOptions(config, tls_context=tls, max_sessions=ANYIO_MAX_SESSIONS)
    server = smtpwire_anyio.Server(Discard(), options, listen=[(LOCALHOST, port)])
    return server.serve


async def serve_anyio_until_terminated(serve: Callable[..., Coroutine[Any, Any, Any]], port: int, stats: Stats) -> None:
    """Run ``serve`` (started with ``task_status``) until SIGTERM or SIGINT, then cancel it and report."""
    import anyio

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            await group.start(serve)
            print(f"bench server listening on {LOCALHOST}:{port}", file=sys.stderr, flush=True)
            async for _ in signals:
                break
            group.cancel_scope.cancel()
    stats.report()


def serve_main(argv: Sequence[str]) -> None:
    """``_serve aiosmtpd|bare|anyio|bare-anyio --port P [--loop asyncio|uvloop|trio] [--tls CERT KEY] [--maildir DIR]``.

    aiosmtpd and bare run on asyncio or uvloop, anyio and bare-anyio on trio.
    """
    parser = argparse.ArgumentParser(prog="bench_servers.py _serve")
    parser.add_argument("kind", choices=("aiosmtpd", "bare", "anyio", "bare-anyio"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "trio"), default="asyncio")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--maildir")
    args = parser.parse_args(argv)
    on_anyio = args.kind in ("anyio", "bare-anyio")
    if on_anyio != (args.loop == "trio"):
        parser.error(f"{args.kind} does not run on {args.loop}")
    if (args.maildir and args.kind != "aiosmtpd") or (args.tls and args.kind == "bare-anyio"):
        parser.error(f"{args.kind} has no {'Maildir' if args.maildir else 'STARTTLS'} here")
    stats = Stats()
    tls = server_tls_context(*args.tls) if args.tls else None
    if on_anyio:  # no logging configured, as a library user would leave it
        import anyio

        if args.kind == "anyio":
            stats.count_sessions = False
            serve = anyio_server(stats, args.port, tls)
        else:
            serve = bare_anyio(stats, args.port)
        anyio.run(serve_anyio_until_terminated, serve, args.port, stats, backend="trio")
        return
    logging.basicConfig(level=logging.WARNING)  # aiosmtpd's CLI logs errors only; warnings are worth seeing here
    factory: Callable[[], asyncio.BaseProtocol]
    if args.kind == "aiosmtpd":
        from aiosmtpd.smtp import SMTP

        handler: AiosmtpdSink | AiosmtpdMaildir = AiosmtpdSink(stats)
        if args.maildir:
            handler = AiosmtpdMaildir(stats, DurableMaildir(args.maildir))
        smtp = functools.partial(
            SMTP, handler, hostname=HOSTNAME, data_size_limit=MAX_MESSAGE, tls_context=tls, require_starttls=False
        )

        def factory() -> asyncio.BaseProtocol:
            stats.sessions += 1
            return smtp()

    else:
        factory = bare_protocol(stats, tls)
    loop_factory = None
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve_until_terminated(factory, args.port, stats))


# -- /proc ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread, live or gone)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise Failed(f"no {name} in /proc/{pid}/status")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it (serve --workers: the workers and multiprocessing's resource tracker)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as file:
                    parent = int(file.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):  # gone since the scan began
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree = [pid]
    for current in tree:  # grows as it goes; /proc holds no cycle, so it ends
        tree += children.get(current, [])
    return tree


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (/proc/net/tcp), without connecting to it."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as file:
        return any(f[1] == wanted and f[3] == "0A" for f in (line.split() for line in itertools.islice(file, 1, None)))


def filesystem(path: str) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts)."""
    real, best, kind = os.path.realpath(path), "", "unknown"
    with open("/proc/mounts") as file:
        for line in file:
            fields = line.split()
            mount = fields[1]
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, fields[2]
    return kind


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL the process group of ``process`` (started with start_new_session) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


# -- environment ------------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


@dataclasses.dataclass
class Env:
    counts: Counts
    work: Path
    maildir_parent: str
    smtp_source: str | None
    smtp_sink: str | None
    serve_help: str  # "" when ``serve --help`` failed
    cert: str = ""
    key: str = ""
    pool: concurrent.futures.ProcessPoolExecutor | None = None
    log_notes: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    workers_servers: tuple[str, ...] = ()  # the smtpwire servers the workers load runs
    baseline_environ: dict[str, str] | None = None  # the smtpwire-base-* servers' environment (--baseline-tree)
    baseline: str = ""  # what the header says of the baseline tree

    @property
    def has_loop(self) -> bool:
        return "--loop" in self.serve_help

    @property
    def has_max_sessions(self) -> bool:
        return "--max-sessions" in self.serve_help

    @property
    def has_workers(self) -> bool:
        return "--workers" in self.serve_help

    def unavailable(self, server: str) -> str | None:
        """Why ``server`` cannot run here, or None."""
        if server.startswith("smtpwire") and not self.serve_help:
            return "`smtpwire serve --help` failed"
        if server.startswith("smtpwire") and server.endswith("uvloop") and not self.has_loop:
            return "`serve` has no --loop yet"
        if server.endswith("uvloop") and not available("uvloop"):
            return "uvloop not importable"
        if server.endswith("trio") and not available("trio"):
            return "trio not importable"
        if server == "anyio-trio" and not available("smtpwire_anyio"):
            return "smtpwire_anyio not importable"
        if server == "aiosmtpd" and not available("aiosmtpd"):
            return "aiosmtpd not importable (pip install -e '.[bench]')"
        if server == "smtp-sink" and self.smtp_sink is None:
            return "smtp-sink not found"
        if server in PEER_PROGRAMS:
            return peer_unavailable(server)
        return None

    def skipped(self, server: str, load: str) -> str | None:
        """Why ``server`` has no run under ``load`` here, or None."""
        if load == "workers" and server.startswith("smtpwire") and self.serve_help and not self.has_workers:
            return "`serve` has no --workers"
        if load == "workers" and server.startswith("smtpwire") and server not in self.workers_servers:
            return "not serve's default loop (name it in --servers)"
        return not_applicable(server, load) or self.unavailable(server)

    def starttls_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self.pool is None:
            context = multiprocessing.get_context("spawn")
            self.pool = concurrent.futures.ProcessPoolExecutor(STARTTLS_PROCESSES, mp_context=context)
            list(self.pool.map(time.sleep, [0.2] * STARTTLS_PROCESSES))  # start the workers before any timing
        return self.pool

    def environ(self, server: str) -> dict[str, str] | None:
        """The environment ``server`` starts with: the baseline tree's for smtpwire-base-*, else this one's."""
        if server in PEER_ENVIRON:
            return dict(os.environ, **PEER_ENVIRON[server])
        return self.baseline_environ if server in BASELINE_OF.values() else None


def peer_unavailable(server: str) -> str | None:
    """Why a peer cannot run here (peers/install.sh not run, or no ``node``), or None."""
    program, on_node, needs = PEER_PROGRAMS[server]
    missing = [name for name in (program, *needs) if not (PEERS / name).exists()]
    if missing:
        return f"{', '.join(missing)} missing in {PEERS.name}/ (run tests/benchmarks/peers/install.sh)"
    if on_node and shutil.which("node") is None:
        return "node not found"
    return None


def peer_versions() -> str:
    """The peers' versions, as installed (for the header)."""

    def npm(package: str) -> str:
        with contextlib.suppress(OSError, ValueError):
            text = (PEERS / "node_modules" / package / "package.json").read_text()
            return str(json.loads(text)["version"])
        return "not installed"

    def run(*command: str) -> str:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
        return "unknown"

    go_smtp = run("dpkg-query", "-W", "-f=${Version}", "golang-github-emersion-go-smtp-dev")
    return (
        f"smtp-server {npm('smtp-server')} and Haraka {npm('Haraka')} on Node {run('node', '--version')}, "
        f"go-smtp {go_smtp} (Debian; GOMAXPROCS=1); "
    )


def serve_help(environ: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(
            [*SERVE, "--help"], capture_output=True, text=True, timeout=60, check=False, env=environ
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""


def baseline_environ(tree: Path) -> dict[str, str]:
    """The environment in which ``python -m smtpwire_serve`` imports every package from ``tree``, checked so.

    The editable install of this tree puts its paths in a ``.pth`` file, after
    ``PYTHONPATH``; the check asks the interpreter where each package would
    come from rather than trusting that order.
    """
    roots = [tree / "src", tree / "adapters"]
    missing = [str(root) for root in roots if not root.is_dir()]
    if missing:
        raise SystemExit(f"--baseline-tree {tree}: no {' nor '.join(missing)}")
    packages = sorted(entry.parent.name for root in roots for entry in root.glob("*/__init__.py"))
    inherited = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path]
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, roots), *inherited]))
    where = f"import importlib.util as u; print(*(u.find_spec(n).origin for n in {packages!r}), sep='\\n')"
    result = subprocess.run(
        [sys.executable, "-c", where], env=environ, capture_output=True, text=True, timeout=60, check=False
    )
    origins = result.stdout.split()
    strays = [origin for origin in origins if not Path(origin).resolve().is_relative_to(tree.resolve())]
    if result.returncode or len(origins) != len(packages) or strays:
        raise SystemExit(
            f"--baseline-tree {tree}: its packages would not all be imported from it: "
            f"{'; '.join(strays) or result.stderr.strip()[-300:] or 'nothing found'}"
        )
    return environ


def baseline_commit(tree: Path) -> str:
    """The commit checked out in ``tree`` (short hash and date), or its path when git cannot say."""
    try:
        result = subprocess.run(
            ["git", "-C", str(tree), "log", "-1", "--format=%h of %cs"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return str(tree)
    return result.stdout.strip() or str(tree)


def write_certificate(directory: Path) -> tuple[str, str]:
    """A throwaway P-256 self-signed certificate: the one ``smtpwire serve --self-signed`` makes."""
    from smtpwire_serve._devcert import write_self_signed

    cert, key = write_self_signed(directory, HOSTNAME)
    return str(cert), str(key)


# -- starting and stopping a server ------------------------------------------------------------------------


@dataclasses.dataclass
class Running:
    server: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    out: Path
    maildir: Path | None
    workers: int  # processes that each log that they serve

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise Failed(f"the server exited with status {self.process.returncode}: {self.tail()}")

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        return " | ".join(lines) or "(empty log)"


def server_command(env: Env, server: str, load: str, port: int, maildir: Path | None, workers: int) -> list[str]:
    address = f"{LOCALHOST}:{port}"
    tls = load == "starttls"
    if server.startswith("smtpwire"):
        command = [*SERVE, "--listen", address, "--hostname", HOSTNAME]
        command += ["--maildir", str(maildir)] if maildir else ["--sink"]
        command += ["--self-signed"] if tls else []
        loop = server.rpartition("-")[2]
        if loop == "trio":
            command += ["--backend", "trio"]
        elif env.has_loop:
            command += ["--loop", loop]
        if load == "idle" and env.has_max_sessions:
            command += ["--max-sessions", str(env.counts.idle * 2)]
        if load == "workers":
            command += ["--workers", str(workers)]
        return command
    if server == "smtp-sink":
        assert env.smtp_sink is not None
        user = ["-u", pwd.getpwuid(os.geteuid()).pw_name] if os.geteuid() == 0 else []  # required as root
        return [env.smtp_sink, *user, "-c", "-m", str(max(256, env.counts.idle * 2)), address, "1024"]
    if server in PEER_PROGRAMS:
        program, on_node, _ = PEER_PROGRAMS[server]
        command = ["node"] if on_node else []  # the server itself, no launcher process: its pid is the one measured
        command += [str(PEERS / program), "--port", str(port)]
        command += ["--cert", env.cert, "--key", env.key] if tls else []
        command += ["--maildir", str(maildir)] if maildir else []
        return command
    kind, _, loop = server.rpartition("-") if "-" in server else (server, "", "asyncio")  # bare-anyio-trio, aiosmtpd
    command = [sys.executable, SCRIPT, "_serve", kind, "--port", str(port), "--loop", loop]
    command += ["--tls", env.cert, env.key] if tls else []
    command += ["--maildir", str(maildir)] if maildir else []
    return command


def kind_of(server: str) -> str:
    """smtpwire, aiosmtpd, bare (on asyncio or anyio), anyio, smtp-sink or a peer's name."""
    return server if server == "smtp-sink" or server in PEER_PROGRAMS else server.partition("-")[0]


SMTPWIRE_ACCEPTED = " accepted id="  # smtpwire serve's log line for each message it accepted (counted)
READY = {
    "smtpwire": re.compile(r"smtpwire serving on (\S+?):(\d+)"),
    "aiosmtpd": re.compile(r"bench server listening on (\S+?):(\d+)"),
    "bare": re.compile(r"bench server listening on (\S+?):(\d+)"),
    "anyio": re.compile(r"bench server listening on (\S+?):(\d+)"),
    **{peer: re.compile(r"bench server listening on (\S+?):(\d+)") for peer in PEER_PROGRAMS},
}


@contextlib.contextmanager
def started(env: Env, server: str, load: str, run_dir: Path, workers: int = 1) -> Iterator[Running]:
    """The server, listening on a free port; stopped (SIGTERM, then SIGKILL of its group) on the way out."""
    port = free_port()
    maildir = run_dir / "Maildir" if load == "maildir" else None
    log, out = run_dir / "server.log", run_dir / "server.out"
    with open(log, "wb") as log_file, open(out, "wb") as out_file:
        process = subprocess.Popen(
            server_command(env, server, load, port, maildir, workers),
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=log_file,
            start_new_session=True,
            env=env.environ(server),
        )
    running = Running(server, process, port, log, out, maildir, workers)
    try:
        wait_until_listening(running)
        yield running
        running.alive()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Failed(f"the server did not exit within {STOP_TIMEOUT} s of SIGTERM") from None
    finally:
        kill_group(process)
        collect_notes(env, running)


def wait_until_listening(running: Running) -> None:
    port = running.port
    ready = READY.get(kind_of(running.server))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        running.alive()
        if ready is None:
            if listening(port):
                return
        else:
            matches = list(ready.finditer(running.log.read_text(errors="replace")))  # a line per worker
            wrong = [match[0] for match in matches if int(match[2]) != port]
            if wrong:
                raise Failed(f"the server says it listens on {wrong[0]}, not port {port}")
            if len(matches) >= running.workers:
                return
        time.sleep(0.02)
    raise Failed(f"the server was not listening after {START_TIMEOUT} s: {running.tail()}")


def server_count(running: Running, load: str) -> int:
    """How many messages the (stopped) server says it accepted."""
    kind = kind_of(running.server)
    if kind == "smtpwire":
        lines = [line for line in running.log.read_text(errors="replace").splitlines() if SMTPWIRE_ACCEPTED in line]
        if load == "starttls" and any(" tls=none " in line for line in lines):
            raise Failed("smtpwire logged a message received without TLS")
        return len(lines)
    if kind == "smtp-sink":
        counters = re.findall(r"mesg=(\d+)", running.out.read_text(errors="replace"))
        return int(counters[-1]) if counters else 0
    match = re.search(r"bench-server: messages=(\d+)", running.log.read_text(errors="replace"))
    if match is None:
        raise Failed(f"the server did not report its counts: {running.tail()}")
    return int(match[1])


NOTEWORTHY = re.compile(r"\b(WARNING|WARN|ERROR|CRITICAL|CRIT|fatal|warning|panic)\b")  # WARN, CRIT: Haraka
EXPECTED_NOTES = (
    "self-signed certificate made just now",  # serve --self-signed's own warning
    "loglevel: WARN",  # Haraka saying which level haraka_sink.js set
)


def collect_notes(env: Env, running: Running) -> None:
    """Count the warnings, errors and exceptions of the server's log, with times, ids and numbers blanked out."""
    lines = running.log.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines):
        if line.startswith("Traceback"):  # note the exception line that ends it
            end = next((later for later in lines[number + 1 :] if later and not later[0].isspace()), "?")
            text = f"Traceback: {end}"
        elif NOTEWORTHY.search(line) and not any(expected in line for expected in EXPECTED_NOTES):
            text = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", line)  # smtpwire's log lines start with the time
        else:
            continue
        key = (running.server, re.sub(r"\b[0-9a-f]{12}\b|\d+", "N", text)[:300])
        env.log_notes[key] = env.log_notes.get(key, 0) + 1


# -- clients -----------------------------------------------------------------------------------------------


def children_cpu() -> float:
    """utime + stime of this process's reaped children, so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_client(command: list[str], timeout: float) -> float:
    """Run a client to completion; its CPU seconds.  Failed unless it exits 0 within ``timeout`` seconds.

    The CPU is that of the children reaped meanwhile: the client alone, as
    the servers and the STARTTLS pool live on until later.
    """
    cpu_before = children_cpu()
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"{Path(command[0]).name} did not finish within {timeout:.0f} s") from None
    finally:
        kill_group(process)
    if process.returncode != 0:
        message = (stderr or stdout).decode(errors="replace").strip().replace("\n", " | ")[:300]
        raise Failed(f"{Path(command[0]).name} exited with status {process.returncode}: {message}")
    return children_cpu() - cpu_before


def smtp_source(env: Env, port: int, *, clients: int, messages: int, length: int, persistent: bool) -> float:
    """Send with smtp-source; its CPU seconds."""
    assert env.smtp_source is not None
    command = [env.smtp_source, "-s", str(clients), "-m", str(messages), "-l", str(length)]
    command += ["-d"] if persistent else []
    command += ["-f", SENDER, "-t", RECIPIENT, f"{LOCALHOST}:{port}"]
    return run_client(command, timeout=60 + messages / 50 + messages * length / (5 * MiB))


STARTTLS_MESSAGE = (
    f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench\r\n\r\n" + ("x" * 76 + "\r\n") * 13
).encode()


def starttls_sessions(port: int, sessions: int, threads: int, deadline: float) -> tuple[int, list[str]]:
    """In a client process: ``sessions`` STARTTLS sessions over ``threads`` threads; (successes, errors)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    done: list[int] = []
    errors: list[str] = []

    def session() -> None:
        with smtplib.SMTP(LOCALHOST, port, local_hostname="client.example", timeout=SOCKET_TIMEOUT) as client:
            # Without it the EHLO after the handshake waits for the ACK of the client's Finished, 40 ms of
            # delayed ACK against a server that sends nothing after it (Go's TLS 1.3): the client's delay, not its.
            assert client.sock is not None  # connected by the constructor
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if client.ehlo()[0] != 250 or not client.has_extn("starttls"):
                raise Failed("EHLO did not offer STARTTLS")
            client.starttls(context=context)
            if client.ehlo()[0] != 250:
                raise Failed("EHLO after STARTTLS refused")
            refused = client.sendmail(SENDER, [RECIPIENT], STARTTLS_MESSAGE)
            if refused:
                raise Failed(f"recipients refused: {refused}")
        # leaving the block sends QUIT; smtplib raises unless it gets 221

    def worker(count: int) -> None:
        for _ in range(count):
            if time.time() > deadline:
                errors.append("deadline passed")
                return
            try:
                session()
            except Exception as error:  # any failure fails the run; keep a few reasons
                errors.append(f"{type(error).__name__}: {error}"[:200])
            else:
                done.append(1)

    shares = [sessions // threads + (n < sessions % threads) for n in range(threads)]
    workers = [threading.Thread(target=worker, args=(share,), daemon=True) for share in shares]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max(0.0, deadline - time.time()) + 1)
    return len(done), errors[:3]


def starttls_load(env: Env, port: int, sessions: int) -> None:
    pool = env.starttls_pool()
    deadline = time.time() + 60 + sessions / 5
    shares = [sessions // STARTTLS_PROCESSES + (n < sessions % STARTTLS_PROCESSES) for n in range(STARTTLS_PROCESSES)]
    futures = [pool.submit(starttls_sessions, port, share, STARTTLS_THREADS, deadline) for share in shares]
    done, errors = 0, list[str]()
    for future in futures:
        ok, failures = future.result(timeout=max(1.0, deadline - time.time()) + 10)
        done, errors = done + ok, errors + failures
    if done != sessions:
        raise Failed(f"{sessions - done} of {sessions} STARTTLS sessions failed: {'; '.join(errors[:2])}")


@dataclasses.dataclass
class Idle:
    held: int
    refused: int
    failed: int
    rss_before: int  # KiB
    rss_after: int
    errors: list[str]


async def read_reply(reader: asyncio.StreamReader) -> int:
    """The code of one (possibly multiline) reply."""
    for _ in range(100):
        line = await reader.readline()
        if len(line) < 4:
            raise ConnectionError(f"connection closed or bad reply line {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])
    raise ConnectionError("reply of more than 100 lines")


async def hold_idle(port: int, count: int, pid: int) -> Idle:
    """Open ``count`` sessions, greeted and past EHLO, hold them, and read the server's RSS before and after."""
    rss_before = status_kib(pid, "VmRSS")
    gate = asyncio.Semaphore(IDLE_CONCURRENCY)
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []

    async def one() -> str:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, port), SOCKET_TIMEOUT)
            except (OSError, TimeoutError) as error:
                errors.append(f"connect: {type(error).__name__}: {error}")
                return "failed"
            writers.append(writer)
            try:
                code = await asyncio.wait_for(read_reply(reader), SOCKET_TIMEOUT)
                if code == 220:
                    writer.write(b"EHLO client.example\r\n")
                    code = await asyncio.wait_for(read_reply(reader), SOCKET_TIMEOUT)
                    if code == 250:
                        return "held"
            except (OSError, TimeoutError, ValueError) as error:
                errors.append(f"{type(error).__name__}: {error}")
                return "failed"
            if code == 421:
                return "refused"
            errors.append(f"unexpected reply {code}")
            return "failed"

    try:
        outcomes = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 120 + count / 10)
        await asyncio.sleep(0.5)  # let the server settle (the last replies were just written)
        rss_after = status_kib(pid, "VmRSS")
    finally:
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.2)
    return Idle(
        outcomes.count("held"), outcomes.count("refused"), outcomes.count("failed"), rss_before, rss_after, errors[:3]
    )


# -- one run -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    rate: float = 0.0  # messages/s, sessions/s or MiB/s
    cpu: float = 0.0  # server CPU seconds per message or session
    peak_kib: int = 0  # VmHWM
    held: int = 0  # idle
    refused: int = 0
    idle_kib: float = 0.0  # KiB per held idle session
    rss_before_kib: int = 0
    workers: int = 1  # serve --workers (the workers load)
    server_share: float = 0.0  # server CPU seconds per second of the load (1.0: one core busy)
    client_share: float = 0.0  # the same for smtp-source
    error: str | None = None


def run_once(env: Env, server: str, load: str, workers: int = 1) -> Outcome:
    parent = env.maildir_parent if load == "maildir" else env.work
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{server}-{load}-", dir=parent))
    try:
        return measure(env, server, load, run_dir, workers)
    except Failed as error:
        return Outcome(workers=workers, error=str(error))
    except Exception as error:  # e.g. the server gone between two reads of /proc: this run fails, not the benchmark
        return Outcome(workers=workers, error=f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def measure(env: Env, server: str, load: str, run_dir: Path, workers: int) -> Outcome:
    counts = env.counts
    outcome = Outcome(workers=workers)
    expected = {
        "persistent": counts.persistent,
        "per-connection": counts.per_connection,
        "starttls": counts.starttls,
        "big": counts.big,
        "idle": 0,
        "maildir": counts.maildir,
        "workers": counts.workers,
    }[load]
    client_cpu = 0.0
    with started(env, server, load, run_dir, workers) as running:
        port = running.port
        processes = process_tree(running.pid)  # the server, or serve and its workers
        if workers > 1 and len(processes) <= workers:
            raise Failed(f"{len(processes) - 1} processes under serve --workers {workers}")
        cpu_before, started_at = sum(map(cpu_seconds, processes)), time.perf_counter()
        source = {  # smtp-source's sessions, message length, and whether they stay connected
            "persistent": (counts.clients, MESSAGE_LENGTH, True),
            "maildir": (counts.clients, MESSAGE_LENGTH, True),
            "workers": (counts.workers_clients, MESSAGE_LENGTH, True),
            "per-connection": (counts.clients, MESSAGE_LENGTH, False),
            "big": (counts.big_clients, BIG_LENGTH, False),
        }.get(load)
        if source is not None:
            clients, length, persistent = source
            client_cpu = smtp_source(
                env, port, clients=clients, messages=expected, length=length, persistent=persistent
            )
        elif load == "starttls":
            starttls_load(env, port, expected)
        else:
            idle = asyncio.run(hold_idle(port, counts.idle, running.pid))
            if idle.failed or not idle.held:
                raise Failed(
                    f"{idle.held} held, {idle.refused} refused, {idle.failed} failed: {'; '.join(idle.errors)}"
                )
            outcome.held, outcome.refused, outcome.rss_before_kib = idle.held, idle.refused, idle.rss_before
            outcome.idle_kib = (idle.rss_after - idle.rss_before) / idle.held
        elapsed = time.perf_counter() - started_at
        running.alive()
        cpu = sum(map(cpu_seconds, processes)) - cpu_before
        outcome.peak_kib = sum(status_kib(pid, "VmHWM") for pid in processes)
    outcome.server_share, outcome.client_share = cpu / elapsed, client_cpu / elapsed
    reported = server_count(running, load)
    if reported != expected:
        raise Failed(f"the server reports {reported} messages, {expected} were sent")
    if running.maildir is not None:
        stored = len(os.listdir(running.maildir / "new"))
        left = len(os.listdir(running.maildir / "tmp"))
        if stored != expected or left:
            raise Failed(f"{stored} files in new/ and {left} in tmp/ for {expected} messages")
    if expected:
        units = expected * BIG_LENGTH / MiB if load == "big" else expected
        outcome.rate, outcome.cpu = units / elapsed, cpu / expected
    return outcome


# -- report ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    unit: str  # of the rate
    cpu_unit: str
    cpu_scale: float  # CPU seconds -> cpu_unit


def tables(counts: Counts) -> dict[str, Table]:
    c = counts
    return {
        "persistent": Table(
            f"Persistent sessions: {c.clients} smtp-source sessions (-d), {c.persistent:,} messages of "
            f"{MESSAGE_LENGTH:,} bytes",
            "msg/s",
            "CPU µs/msg",
            1e6,
        ),
        "per-connection": Table(
            f"A connection per message: {c.clients} concurrent smtp-source sessions, {c.per_connection:,} messages "
            f"of {MESSAGE_LENGTH:,} bytes",
            "msg/s",
            "CPU µs/msg",
            1e6,
        ),
        "starttls": Table(
            f"STARTTLS sessions: {c.starttls:,} smtplib sessions ({STARTTLS_PROCESSES} processes x "
            f"{STARTTLS_THREADS} threads), EHLO STARTTLS EHLO MAIL RCPT DATA QUIT",
            "sessions/s",
            "CPU µs/session",
            1e6,
        ),
        "big": Table(
            f"Big messages: {c.big} messages of {BIG_LENGTH // MiB} MiB, {c.big_clients} smtp-source sessions",
            "MiB/s",
            "CPU ms/msg",
            1e3,
        ),
        "idle": Table(f"Idle sessions: {c.idle:,} connections greeted and past EHLO, held open", "", "", 1.0),
        "maildir": Table(
            f"Maildir with fsync: {c.clients} smtp-source sessions (-d), {c.maildir:,} messages of "
            f"{MESSAGE_LENGTH:,} bytes, each durable in new/ before its 250",
            "msg/s",
            "CPU µs/msg",
            1e6,
        ),
        "workers": Table(
            f"Worker processes: `serve --sink --workers N` on one port (SO_REUSEPORT), {c.workers_clients} "
            f"smtp-source sessions (-d), {c.workers:,} messages of {MESSAGE_LENGTH:,} bytes, {os.cpu_count()} CPUs "
            "shared with smtp-source",
            "msg/s",
            "CPU µs/msg",
            1e6,
        ),
    }


def figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def spread(values: list[float]) -> str:
    return f"{figure(statistics.median(values))} [{figure(min(values))}-{figure(max(values))}]"


def span(counts: list[int]) -> str:
    return f"{min(counts):,}" if min(counts) == max(counts) else f"{min(counts):,}-{max(counts):,}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}" if ours is not None and theirs else "n/a"


Results = dict[tuple[str, str], list[Outcome]]


def report(env: Env, load: str, servers: Sequence[str], results: Results, rounds: int) -> None:
    table = tables(env.counts)[load]
    print(f"\n### {table.title}\n")
    failures: list[str] = []
    good: dict[str, list[Outcome]] = {}
    for server in servers:
        runs = results.get((server, load), [])
        bad = [run for run in runs if run.error]
        failures += [f"{server}: {run.error}" for run in bad]
        if runs and not bad:
            good[server] = runs

    def median(server: str, pick: Callable[[Outcome], float]) -> float | None:
        return statistics.median(pick(run) for run in good[server]) if server in good else None

    if load == "idle":
        print("| server | held | refused (421) | KiB per idle session | RSS before, MiB | KiB ÷ aiosmtpd |")
        print("|---|---|---|---|---|---|")
    else:
        print(
            f"| server | {table.unit} | {table.cpu_unit} | peak RSS, MiB | {table.unit} ÷ aiosmtpd | CPU ÷ aiosmtpd |"
        )
        print("|---|---|---|---|---|---|")
    for server in servers:
        runs = results.get((server, load), [])
        reason = env.skipped(server, load)
        if not runs:
            print(f"| {server} | n/a ({reason or 'not run'}) | | | | |")
            continue
        if server not in good:
            failed = sum(1 for run in runs if run.error)
            print(f"| {server} | FAILED ({failed} of {len(runs)} runs) | | | | |")
            continue
        peak = statistics.median(run.peak_kib for run in runs) / 1024
        if load == "idle":
            kib = [run.idle_kib for run in runs]
            before = statistics.median(run.rss_before_kib for run in runs) / 1024
            print(
                f"| {server} | {span([run.held for run in runs])} | {span([run.refused for run in runs])} "
                f"| {spread(kib)} | {figure(before)} "
                f"| {ratio(median(server, lambda r: r.idle_kib), median('aiosmtpd', lambda r: r.idle_kib))} |"
            )
            continue
        rates = [run.rate for run in runs]
        cpu = median(server, lambda r: r.cpu)
        assert cpu is not None
        print(
            f"| {server} | {spread(rates)} | {figure(cpu * table.cpu_scale)} | {figure(peak)} "
            f"| {ratio(median(server, lambda r: r.rate), median('aiosmtpd', lambda r: r.rate))} "
            f"| {ratio(cpu, median('aiosmtpd', lambda r: r.cpu))} |"
        )
    if load != "idle":
        lines = []
        for ours_name, ours_server, bare_name, bare_server in CPU_RATIOS:
            ours, bare = median(ours_server, lambda r: r.cpu), median(bare_server, lambda r: r.cpu)
            if ours is not None and bare is not None:
                lines.append(f"{ours_name} CPU per {table.cpu_unit.split('/')[-1]} ÷ {bare_name}: {ratio(ours, bare)}")
        if lines:
            print("\n" + "  \n".join(lines))  # a Markdown line break each

    def versus(new: str, base: str, pick: Callable[[Outcome], float]) -> str:
        return ratio(median(new, pick), median(base, pick))

    lines = []
    for new, base in BASELINE_OF.items():
        if new in good and base in good and load == "idle":
            lines.append(f"{new} ÷ {base}: KiB per idle session {versus(new, base, lambda r: r.idle_kib)}")
        elif new in good and base in good:
            lines.append(
                f"{new} ÷ {base}: {table.unit} {versus(new, base, lambda r: r.rate)}, "
                f"{table.cpu_unit} {versus(new, base, lambda r: r.cpu)}, "
                f"peak RSS {versus(new, base, lambda r: r.peak_kib)}"
            )
    lines += [  # issue 23's targets: at or above the rate, at or below the CPU
        f"{ours} ÷ {peer}: {table.unit} {versus(ours, peer, lambda r: r.rate)}, "
        f"{table.cpu_unit} {versus(ours, peer, lambda r: r.cpu)}"
        for ours, peer in PEER_RATIOS
        if ours in good and peer in good and load != "idle"
    ]
    if lines:
        print("\n" + "  \n".join(lines))
    for failure in failures:
        print(f"\n- FAILED {failure}")
    sys.stdout.flush()


def report_workers(env: Env, results: Results) -> None:
    """The workers load: a row per server and worker count, and the speed-up of 2 workers over 1."""
    table = tables(env.counts)["workers"]
    print(f"\n### {table.title}\n")
    print(
        f"| server | workers | {table.unit} | {table.cpu_unit} | server CPU, % of a core "
        f"| smtp-source CPU, % of a core | peak RSS, MiB (all processes) | {table.unit} ÷ 1 worker |"
    )
    print("|---|---|---|---|---|---|---|---|")
    if not env.workers_servers:
        print("| (no smtpwire server chosen) | | | | | | | |")
    failures: list[str] = []
    for server in env.workers_servers:
        runs = results.get((server, "workers"), [])
        if not runs:
            print(f"| {server} | | n/a ({env.skipped(server, 'workers') or 'not run'}) | | | | | |")
            continue
        by_count = {n: [run for run in runs if run.workers == n] for n in WORKER_COUNTS}
        failures += [f"{server} --workers {run.workers}: {run.error}" for run in runs if run.error]
        one = by_count[1]
        one_rate = statistics.median(run.rate for run in one) if one and not any(r.error for r in one) else None
        for n, chosen in by_count.items():
            bad = sum(1 for run in chosen if run.error)
            if not chosen or bad:
                print(f"| {server} | {n} | FAILED ({bad} of {len(chosen)} runs) | | | | | |")
                continue
            rate = statistics.median(run.rate for run in chosen)
            print(
                f"| {server} | {n} | {spread([run.rate for run in chosen])} "
                f"| {figure(statistics.median(run.cpu for run in chosen) * table.cpu_scale)} "
                f"| {spread([run.server_share * 100 for run in chosen])} "
                f"| {spread([run.client_share * 100 for run in chosen])} "
                f"| {figure(statistics.median(run.peak_kib for run in chosen) / 1024)} | {ratio(rate, one_rate)} |"
            )
    print(f"\nThe aim: 2 workers at least 1.7x the messages/s of 1 on 2 cores; this machine has {os.cpu_count()}.")

    def versus(new: str, base: str, n: int, pick: Callable[[Outcome], float]) -> str:
        medians = []
        for server in (new, base):
            runs = [run for run in results.get((server, "workers"), []) if run.workers == n]
            medians.append(statistics.median(map(pick, runs)) if runs and not any(r.error for r in runs) else None)
        return ratio(*medians)

    lines = [
        f"{new} ÷ {base}, --workers {n}: {table.unit} {versus(new, base, n, lambda r: r.rate)}, "
        f"{table.cpu_unit} {versus(new, base, n, lambda r: r.cpu)}"
        for new, base in BASELINE_OF.items()
        if {new, base} <= set(env.workers_servers)
        for n in WORKER_COUNTS
    ]
    if lines:
        print("\n" + "  \n".join(lines))
    for failure in failures:
        print(f"\n- FAILED {failure}")
    sys.stdout.flush()


def header(env: Env, rounds: int, servers: Sequence[str]) -> str:
    postfix = "unknown"
    postconf = find_tool("postconf")
    if postconf:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            result = subprocess.run([postconf, "-d", "mail_version"], capture_output=True, text=True, timeout=30)
            postfix = result.stdout.partition("=")[2].strip() or postfix
    versions = ", ".join(
        f"{name} {package_version(name)}" for name in ("smtpwire", "aiosmtpd", "uvloop", "trio", "anyio")
    )
    flags = (("--loop", env.has_loop), ("--max-sessions", env.has_max_sessions), ("--workers", env.has_workers))
    options = ", ".join(f"{flag}: {'yes' if present else 'no'}" for flag, present in flags)
    return (
        f"Python {sys.version.split()[0]} ({platform.python_implementation()}) on {platform.system()} "
        f"{platform.release()} {platform.machine()}, {os.cpu_count()} CPUs; {versions}, Postfix {postfix}; "
        f"{peer_versions() if set(servers) & set(PEER_PROGRAMS) else ''}"
        f"serve {options if env.serve_help else 'not run'}; {env.baseline}"
        f"Maildir on {filesystem(env.maildir_parent)}; {rounds} rounds: median [min-max]; "
        "ratios of the medians; CPU is the server's utime+stime during the load (summed over its processes)"
    )


def pick(names: str | None, known: Sequence[str], what: str) -> list[str]:
    if not names:
        return list(known)
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [name for name in known if name in chosen]


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main() -> None:
    if sys.argv[1:2] == ["_serve"]:
        serve_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description="End-to-end SMTP server benchmark (smtpwire serve and others).")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--only", metavar="LOAD[,LOAD]", help=f"loads to run: {', '.join(LOADS)}")
    parser.add_argument(
        "--servers",
        metavar="NAME[,NAME]",
        help=f"servers to run: {', '.join(SERVERS)}, and with --baseline-tree {', '.join(BASELINE_OF.values())}",
    )
    parser.add_argument("--maildir-parent", metavar="DIR", help="where the Maildirs go (default: the temp directory)")
    parser.add_argument(
        "--baseline-tree",
        metavar="DIR",
        type=Path,
        help="a checkout of another commit: adds smtpwire-base-LOOP servers, its serve, and the ratios to them",
    )
    args = parser.parse_args()
    known: Sequence[str] = SERVERS
    if args.baseline_tree:
        known = tuple(name for server in SERVERS for name in (server, BASELINE_OF.get(server)) if name)
    loads, servers = pick(args.only, LOADS, "load"), pick(args.servers, known, "server")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    raise_file_limit()

    work = Path(tempfile.mkdtemp(prefix="bench-servers-"))
    env = Env(
        counts=QUICK if args.quick else Counts(),
        work=work,
        maildir_parent=args.maildir_parent or tempfile.gettempdir(),
        smtp_source=find_tool("smtp-source"),
        smtp_sink=find_tool("smtp-sink"),
        serve_help=serve_help() if any(s.startswith("smtpwire") for s in servers) else "",
    )
    if args.baseline_tree and any(server in BASELINE_OF.values() for server in servers):
        env.baseline_environ = baseline_environ(args.baseline_tree)
        theirs = serve_help(env.baseline_environ)
        if not theirs or not env.serve_help:
            raise SystemExit(f"`smtpwire serve --help` failed {'from --baseline-tree' if env.serve_help else 'here'}")
        differ = [flag for flag in SERVE_FLAGS if (flag in theirs) != (flag in env.serve_help)]
        if differ:
            raise SystemExit(
                f"--baseline-tree: its serve and this one differ in {', '.join(differ)}; runs would differ"
            )
        env.baseline = f"baseline serve from {baseline_commit(args.baseline_tree)}; "
    if env.smtp_source is None and set(loads) - {"starttls", "idle"}:
        raise SystemExit("smtp-source (Postfix) not found on PATH nor in " + ", ".join(SBIN))
    # the workers load: the smtpwire servers named, or the loop serve picks by default (uvloop when installed)
    named = [server for server in servers if server.startswith("smtpwire")] if args.servers else []
    default = next((s for s in ("smtpwire-uvloop", "smtpwire-asyncio") if env.unavailable(s) is None), None)
    if args.servers:
        env.workers_servers = tuple(named)
    elif default is not None:
        env.workers_servers = (default, BASELINE_OF[default]) if args.baseline_tree else (default,)
    results: Results = {}
    try:
        if {"starttls"} & set(loads):
            env.cert, env.key = write_certificate(work)
        print(header(env, args.rounds, servers), flush=True)
        runnable = [server for server in servers if env.unavailable(server) is None]
        if "starttls" in loads and any(env.skipped(server, "starttls") is None for server in runnable):
            env.starttls_pool()  # its client processes start now, not in a timed run
        for server in servers:
            if server not in runnable:
                print(f"{server}: skipped, {env.unavailable(server)}", file=sys.stderr)
        for number in range(args.rounds):
            for load in loads:
                shift = number % len(runnable) if runnable else 0
                for server in runnable[shift:] + runnable[:shift]:
                    if env.skipped(server, load):
                        continue
                    # the workers load: both counts back to back, which first alternating by round
                    counts = WORKER_COUNTS[:: -1 if number % 2 else 1] if load == "workers" else (1,)
                    for workers in counts:
                        begun = time.monotonic()
                        outcome = run_once(env, server, load, workers)
                        results.setdefault((server, load), []).append(outcome)
                        table = tables(env.counts)[load]
                        shown = outcome.error or (
                            f"{outcome.held} held, {outcome.refused} refused, {outcome.idle_kib:.1f} KiB each"
                            if load == "idle"
                            else f"{figure(outcome.rate)} {table.unit}, {figure(outcome.cpu * table.cpu_scale)} "
                            f"{table.cpu_unit}"
                        )
                        if load == "workers":
                            shown += f", server CPU {outcome.server_share:.0%}, smtp-source {outcome.client_share:.0%}"
                        print(
                            f"round {number + 1}/{args.rounds} {load} {server}"
                            f"{f' --workers {workers}' if load == 'workers' else ''}: {shown} "
                            f"({time.monotonic() - begun:.1f} s)",
                            file=sys.stderr,
                            flush=True,
                        )
        for load in loads:
            if load == "workers":
                report_workers(env, results)
            else:
                report(env, load, servers, results, args.rounds)
        if env.log_notes:
            print("\nWarnings and errors in the servers' logs (numbers blanked to N; count over all runs):\n")
            for (server, text), count in sorted(env.log_notes.items()):
                print(f"- {server}, {count}x: {text}")
    finally:
        if env.pool is not None:
            env.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
