"""Benchmark of sender authentication: server CPU per message of ``smtpwire serve --verify all``, and without.

    python tests/benchmarks/bench_verify.py [--rounds 5] [--quick] [--profile] [--profile-serve] [--py-spy FILE]
                                            [--no-servers]

The message is 1 KB (headers and body, before signing) from
alice@example.org, signed by dkimpy (rsa-sha256, 2048-bit key, relaxed/relaxed)
and sent with that MAIL FROM from 127.0.0.1.  A local DNS server on 127.0.0.1
(``tests/dnsserver.py``) holds the SPF record ``v=spf1 ip4:127.0.0.1 -all``,
the DKIM key and ``_dmarc`` ``v=DMARC1; p=reject``, so the message passes SPF,
DKIM and DMARC (``arc=none``): every accepted message's log line must say so.

Servers, each ``smtpwire serve`` started fresh on a free port for every run,
on the loop serve picks by default (uvloop when installed), as
``bench_servers.py`` starts them:

- ``sink``: ``--sink``; ``sink+verify``: ``--sink --verify all --dns-resolver``
  the local DNS server;
- ``sink+spf``: ``--sink --verify spf``: the handler's wrapping (the message
  held, the hook awaited, the verdict logged) with the cheapest check;
- ``maildir``, ``maildir+verify``: the same into a fresh ``--maildir`` (fsync
  each message: mind tmpfs, where it is free).

Each run first sends ``warm`` messages (serve imports what it needs, the DNS
cache takes every answer), then reads the server's utime + stime from
/proc/PID/stat around ``smtp-source -s SESSIONS -m N -d -F FILE`` (Postfix's
C client, in its own process, so the client's CPU never counts).  A run
counts only if smtp-source exits 0, the server logs one accepted line per
message (``spf=pass dkim=pass dmarc=pass arc=none`` on each, with
``--verify``), and the DNS server is asked nothing during the measured load
(the cache was warm).  Rounds are interleaved, servers in rotating order;
tables give the median [min-max] over the rounds, and the cost of verifying:
the difference of the medians, and the median of the per-round differences.

In process, without sockets: ``verify_sender`` and ``verify_message`` driven
by ``smtpwire_verify.run`` with a ``Zone`` holding the same records, alone and
with the Authentication-Results field and ``remove_claims`` the handler adds
(thread CPU, median per message over the rounds), to separate the checks'
cost from the handler's and the adapter's.  ``--profile`` runs that path
under cProfile and gives the time of each layer (smtpwire_verify's modules,
dkimpy, authres, publicsuffixlist, cryptography, ...), the time of the
standard library and of built-ins charged to the layer that called them.
``--profile-serve`` runs ``sink`` and ``sink+verify`` once more each under
cProfile (started by SIGUSR1 after the warm-up, stopped and written by
SIGUSR2 after the load) and gives each layer's µs per message in both and
the difference: where the cost of verifying goes, the handler's and the
adapter's share included.  ``--py-spy FILE`` samples a ``sink+verify`` server with ``py-spy record
--nonblocking`` (Python frames; ``--native`` would stop the server at each
sample) during one more load, keeps the raw stacks in FILE, and gives each
layer's share of the samples the same way (native time is its Python
caller's), and the shares under the handler's hooks and under the checks.
Tables (Markdown) go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import cProfile
import dataclasses
import email.utils
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.dnsserver and tests.dnszone

import dkim  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import smtpwire_verify
from tests.benchmarks import bench_servers as servers  # server start, /proc, smtp-source, figures
from tests.dnsserver import LocalDNS, local_dns
from tests.dnszone import Zone

DOMAIN = "example.org"
SELECTOR = "bench"
MAIL_FROM, AUTHOR = f"alice@{DOMAIN}", f"Alice <alice@{DOMAIN}>"
RECIPIENT = "bob@example.net"
CLIENT_IP = "127.0.0.1"
MESSAGE_SIZE = 1000  # octets before signing, as bench_servers' smtp-source -l
KEY_BITS = 2048
VERDICT = "spf=pass dkim=pass dmarc=pass arc=none"
TARGET_US = 300.0  # issue 20: the cost of --verify all per message, in µs of server CPU
SERVERS = ("sink", "sink+spf", "sink+verify", "maildir", "maildir+verify")
#: (without, with): the cost of verifying is the second's CPU per message less the first's.
PAIRS = (("sink", "sink+verify"), ("maildir", "maildir+verify"), ("sink", "sink+spf"))
#: serve's --verify for each server's suffix, and what each accepted message's log line must then say.
VERIFY = {"verify": ("all", VERDICT), "spf": ("spf", "spf=pass")}
PY_SPY_RATE = 250  # samples per second
PY_SPY_STOP = 30.0  # seconds for py-spy to write its samples after SIGINT


@dataclasses.dataclass(frozen=True)
class Counts:
    messages: int = 5_000  # measured, per run
    warm: int = 200  # sent before the measured load, per run
    sessions: int = 4  # smtp-source -s: persistent sessions
    in_process: int = 500  # messages per in-process round


QUICK = Counts(messages=500, warm=50, sessions=2, in_process=100)


@dataclasses.dataclass(frozen=True)
class Mail:
    """The signed message, the zone that makes it pass everything, and its file for smtp-source."""

    message: bytes
    records: Mapping[str, list[tuple[str, str]]]
    file: Path


def make_mail(directory: Path) -> Mail:
    """A 1 KB message signed rsa-sha256 with a fresh 2048-bit key; the zone publishing SPF, the key and DMARC."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    head = (
        f"From: {AUTHOR}\r\nTo: <{RECIPIENT}>\r\nSubject: bench\r\nDate: {email.utils.formatdate()}\r\n"
        f"Message-ID: <bench@{DOMAIN}>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    lines, rest = divmod(MESSAGE_SIZE - len(head), len(line))
    text = head + line * lines + b"y" * max(rest - 2, 0) + b"\r\n"
    signed = dkim.sign(
        text,
        SELECTOR.encode(),
        DOMAIN.encode(),
        private,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    message = signed + text
    file = directory / "message.txt"
    file.write_bytes(message.replace(b"\r\n", b"\n"))  # smtp-source -F ends each line with CRLF itself
    records = {
        DOMAIN: [("TXT", f"v=spf1 ip4:{CLIENT_IP} -all")],
        f"{SELECTOR}._domainkey.{DOMAIN}": [("TXT", f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")],
        f"_dmarc.{DOMAIN}": [("TXT", "v=DMARC1; p=reject")],
    }
    return Mail(message, records, file)


# -- end to end ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    cpu: float = 0.0  # server CPU seconds per message
    rate: float = 0.0  # messages/s
    error: str | None = None


#: serve under a profiler that SIGUSR1 starts and SIGUSR2 stops, writing its stats to argv[1].
PROFILED_SERVE = """
import cProfile, runpy, signal, sys
profiler, output = cProfile.Profile(), sys.argv.pop(1)
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
signal.signal(signal.SIGUSR2, lambda *_: (profiler.disable(), profiler.dump_stats(output)))
sys.argv[0] = "smtpwire"
runpy.run_module("smtpwire_serve", run_name="__main__", alter_sys=True)
"""
PROFILE_WRITE_TIMEOUT = 30.0  # seconds for the stats file to appear after SIGUSR2


def serve_command(server: str, port: int, run_dir: Path, dns: LocalDNS, profile: Path | None = None) -> list[str]:
    """``smtpwire serve`` for ``server``; under PROFILED_SERVE, writing to ``profile``, when it is given."""
    serve = [sys.executable, "-c", PROFILED_SERVE, str(profile), *servers.SERVE[3:]] if profile else servers.SERVE
    command = [*serve, "--listen", f"{servers.LOCALHOST}:{port}", "--hostname", servers.HOSTNAME]
    store, _, verify = server.partition("+")
    command += ["--maildir", str(run_dir / "Maildir")] if store == "maildir" else ["--sink"]
    command += ["--verify", VERIFY[verify][0], "--dns-resolver", dns.address] if verify else []
    return command


def started(
    server: str, run_dir: Path, dns: LocalDNS, profile: Path | None = None
) -> contextlib.AbstractContextManager[servers.Running]:
    """``smtpwire serve`` as ``server`` says, with the local DNS server, until the block ends."""
    return started_serve(server, run_dir, lambda port: serve_command(server, port, run_dir, dns, profile))


@contextlib.contextmanager
def started_serve(server: str, run_dir: Path, command_for: Callable[[int], list[str]]) -> Iterator[servers.Running]:
    """``command_for(port)`` listening on a free port; SIGTERM (then SIGKILL of its group) on the way out."""
    port = servers.free_port()
    log, out = run_dir / "server.log", run_dir / "server.out"
    with open(log, "wb") as log_file, open(out, "wb") as out_file:
        process = subprocess.Popen(
            command_for(port),
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=log_file,
            start_new_session=True,
        )
    maildir = run_dir / "Maildir" if server.startswith("maildir") else None
    running = servers.Running(f"smtpwire-{server}", process, port, log, out, maildir, workers=1)
    try:
        servers.wait_until_listening(running)
        yield running
        running.alive()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=servers.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise servers.Failed(f"the server did not exit within {servers.STOP_TIMEOUT} s of SIGTERM") from None
    finally:
        servers.kill_group(process)


def send(smtp_source: str, mail: Mail, port: int, *, sessions: int, messages: int) -> None:
    """``messages`` copies of the signed message over ``sessions`` persistent smtp-source sessions."""
    command = [smtp_source, "-s", str(sessions), "-m", str(messages), "-d", "-F", str(mail.file)]
    command += ["-f", MAIL_FROM, "-t", RECIPIENT, f"{servers.LOCALHOST}:{port}"]
    servers.run_client(command, timeout=60 + messages / 20)


def accepted_lines(running: servers.Running) -> list[str]:
    text = running.log.read_text(errors="replace")
    return [line for line in text.splitlines() if servers.SMTPWIRE_ACCEPTED in line]


def check_run(server: str, running: servers.Running, expected: int) -> None:
    """Failed unless the server accepted every message, with the verdict it must reach under --verify."""
    lines = accepted_lines(running)
    if len(lines) != expected:
        raise servers.Failed(
            f"the server logged {len(lines)} accepted messages, {expected} were sent: {running.tail()}"
        )
    verify = server.partition("+")[2]
    if verify:
        verdict = VERIFY[verify][1]
        wrong = [line for line in lines if verdict not in line]
        if wrong:
            raise servers.Failed(f"{len(wrong)} messages without {verdict}: {wrong[0][-200:]}")
    if running.maildir is not None and len(os.listdir(running.maildir / "new")) != expected:
        raise servers.Failed(f"{len(os.listdir(running.maildir / 'new'))} files in new/ for {expected} messages")


def measure(smtp_source: str, server: str, mail: Mail, dns: LocalDNS, counts: Counts, run_dir: Path) -> Outcome:
    with started(server, run_dir, dns) as running:
        send(smtp_source, mail, running.port, sessions=counts.sessions, messages=counts.warm)
        asked = len(dns.queries)
        cpu_before, started_at = servers.cpu_seconds(running.pid), time.perf_counter()
        send(smtp_source, mail, running.port, sessions=counts.sessions, messages=counts.messages)
        elapsed = time.perf_counter() - started_at
        running.alive()
        cpu = servers.cpu_seconds(running.pid) - cpu_before
        if len(dns.queries) != asked:
            raise servers.Failed(f"the DNS server was asked {dns.queries[asked:][:3]}... during the load: cache cold")
    check_run(server, running, counts.warm + counts.messages)
    return Outcome(cpu=cpu / counts.messages, rate=counts.messages / elapsed)


def run_once(smtp_source: str, server: str, mail: Mail, dns: LocalDNS, counts: Counts, work: Path) -> Outcome:
    return run_in(
        work, f"bench-verify-{server}", lambda run_dir: measure(smtp_source, server, mail, dns, counts, run_dir)
    )


def run_in(work: Path, name: str, measure_in: Callable[[Path], Outcome]) -> Outcome:
    """``measure_in`` a new folder of ``work`` (removed after); a run that fails is an ``Outcome`` saying why."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name.replace('+', '-')}-", dir=work))
    try:
        return measure_in(run_dir)
    except servers.Failed as error:
        return Outcome(error=str(error))
    except Exception as error:  # the server gone between two reads of /proc: this run fails, not the benchmark
        return Outcome(error=f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


Results = dict[str, list[Outcome]]


def end_to_end(smtp_source: str, mail: Mail, dns: LocalDNS, counts: Counts, rounds: int, work: Path) -> Results:
    return rotated_rounds(SERVERS, rounds, lambda server: run_once(smtp_source, server, mail, dns, counts, work))


def rotated_rounds(names: Sequence[str], rounds: int, run_one: Callable[[str], Outcome]) -> Results:
    """``rounds`` runs of each server, interleaved, each round starting one server later; each printed as it ends."""
    results: Results = {server: [] for server in names}
    for number in range(rounds):
        shift = number % len(names)
        for server in [*names[shift:], *names[:shift]]:
            begun = time.monotonic()
            outcome = run_one(server)
            results[server].append(outcome)
            shown = outcome.error or f"{servers.figure(outcome.rate)} msg/s, {outcome.cpu * 1e6:.1f} CPU µs/msg"
            print(
                f"round {number + 1}/{rounds} {server}: {shown} ({time.monotonic() - begun:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    return results


def report_end_to_end(results: Results, counts: Counts) -> None:
    """The table, and the cost of verifying: CPU per message with it less without, against the target."""
    good = report_table(results, counts)
    for plain, verified in PAIRS:
        found = cost(good, plain, verified)
        if found is None:
            print(f"- cost of {verified} over {plain}: n/a (a run failed)  ")
            continue
        difference, paired = found
        verdict = "under" if difference < TARGET_US else "NOT under"
        print(
            f"- cost of --verify {VERIFY[verified.partition('+')[2]][0]} over {plain}: {difference:.0f} µs/msg "
            f"(difference of the medians; per round {servers.spread(paired)}), "
            f"{verdict} the {TARGET_US:.0f} µs target  "
        )
    report_failures(results)


def report_table(results: Results, counts: Counts) -> dict[str, list[Outcome]]:
    """Every server's msg/s and CPU per message; the servers whose runs all succeeded."""
    print(
        f"\n### Persistent sessions: {counts.sessions} smtp-source sessions (-d), {counts.messages:,} messages "
        f"after {counts.warm} to warm up\n"
    )
    print("| server | msg/s | server CPU µs/msg |")
    print("|---|---|---|")
    good = {server: runs for server, runs in results.items() if runs and not any(run.error for run in runs)}
    for server, runs in results.items():
        if server not in good:
            print(f"| {server} | FAILED ({sum(1 for run in runs if run.error)} of {len(runs)} runs) | |")
            continue
        cpu = servers.spread([run.cpu * 1e6 for run in runs])
        print(f"| {server} | {servers.spread([run.rate for run in runs])} | {cpu} |")
    print()
    return good


def cost(good: dict[str, list[Outcome]], plain: str, other: str) -> tuple[float, list[float]] | None:
    """CPU µs per message of ``other`` over ``plain``: the difference of the medians, and round by round."""
    if plain not in good or other not in good:
        return None
    difference = statistics.median(r.cpu for r in good[other]) - statistics.median(r.cpu for r in good[plain])
    return difference * 1e6, [(o.cpu - p.cpu) * 1e6 for o, p in zip(good[other], good[plain], strict=True)]


def report_failures(results: Results) -> None:
    for server, runs in results.items():
        for run in runs:
            if run.error:
                print(f"\n- FAILED {server}: {run.error}")


# -- in process --------------------------------------------------------------------------------------------

METHODS = smtpwire_verify.methods_from(["all"])
NOW = int(time.time())
SAMPLE = 0.5  # DMARC pct= draw; p=reject has pct=100, so any value applies the policy


def sender_check(zone: Zone) -> smtpwire_verify.Verdict:
    steps = smtpwire_verify.verify_sender(CLIENT_IP, MAIL_FROM, servers.HOSTNAME, receiver=servers.HOSTNAME, now=NOW)
    verdict: smtpwire_verify.Verdict = smtpwire_verify.run(smtpwire_verify.Check(steps), zone)
    return verdict


def message_check(zone: Zone, message: bytes, sender: smtpwire_verify.Verdict) -> smtpwire_verify.Verdict:
    steps = smtpwire_verify.verify_message(message, sender, METHODS, now=NOW, sample=SAMPLE)
    verdict: smtpwire_verify.Verdict = smtpwire_verify.run(smtpwire_verify.Check(steps), zone)
    return verdict


def whole_check(zone: Zone, message: bytes) -> bytes:
    """What the handler computes per message: both checks, the header field, the claims removed."""
    verdict = message_check(zone, message, sender_check(zone))
    return verdict.header(servers.HOSTNAME) + smtpwire_verify.remove_claims(message, servers.HOSTNAME)


def dkimpy_verify(message: bytes, records: Mapping[str, list[tuple[str, str]]]) -> bool:
    """dkimpy's own verify (its key lookup answered from the records, its RSA in pure Python): for scale."""
    key_record = records[f"{SELECTOR}._domainkey.{DOMAIN}"][0][1].encode()
    return bool(dkim.verify(message, dnsfunc=lambda name, timeout=5: key_record))


def in_process_loads(mail: Mail) -> dict[str, Callable[[Zone], object]]:
    message = mail.message
    sender = sender_check(Zone(mail.records))
    return {
        "verify_sender (SPF at MAIL)": sender_check,
        "verify_message (DKIM, ARC, DMARC at the end of data)": lambda zone: message_check(zone, message, sender),
        "both + Authentication-Results + remove_claims": lambda zone: whole_check(zone, message),
        "for scale: dkimpy's dkim.verify alone": lambda zone: dkimpy_verify(message, mail.records),
    }


def check_in_process(mail: Mail) -> None:
    """The in-process path must reach the same verdict as the server, or its figures mean nothing."""
    zone = Zone(mail.records)
    summary = message_check(zone, mail.message, sender_check(zone)).summary()
    if summary != VERDICT:
        raise SystemExit(f"in process the message gets {summary!r}, not {VERDICT!r}")
    if not dkimpy_verify(mail.message, mail.records):
        raise SystemExit("dkimpy does not verify the message")


def in_process(mail: Mail, counts: Counts, rounds: int) -> dict[str, list[float]]:
    """Thread CPU µs per message of each load, one figure per round (loads interleaved)."""
    check_in_process(mail)
    loads = in_process_loads(mail)
    figures: dict[str, list[float]] = {name: [] for name in loads}
    zone = Zone(mail.records)
    for _ in range(rounds):
        for name, load in loads.items():
            load(zone)  # warm
            started_at = time.thread_time()
            for _ in range(counts.in_process):
                load(zone)
            figures[name].append((time.thread_time() - started_at) / counts.in_process * 1e6)
            zone.asked.clear()
    return figures


def report_in_process(figures: dict[str, list[float]], counts: Counts) -> None:
    print(f"\n### In process: driven by smtpwire_verify.run with a Zone, {counts.in_process} messages a round\n")
    print("| what | thread CPU µs/msg |")
    print("|---|---|")
    for name, values in figures.items():
        print(f"| {name} | {servers.spread(values)} |")


# -- where the time goes -------------------------------------------------------------------------------------

#: A frame's layer, from its file: the first pattern found in the path names it (``{}``: the file's name).
#: cProfile gives absolute paths, py-spy paths below their sys.path entry (``dkim/__init__.py``).
LAYERS = (
    ("smtpwire_verify/", "smtpwire_verify/{}"),
    ("smtpwire_handler/_authentication", "handler: _authentication.py"),
    ("smtpwire_handler/_resolver", "handler: _resolver.py (DNS cache)"),
    ("dkim/", "dkimpy/{}"),
    ("authres/", "authres"),
    ("publicsuffixlist/", "publicsuffixlist"),
    ("cryptography/", "cryptography"),
    ("tests/dnszone", "tests/dnszone.py (the Zone)"),
    ("smtpwire_handler/", "handler: the rest"),
    ("smtpwire_serve/", "smtpwire_serve"),
    ("smtpwire_asyncio/", "smtpwire_asyncio"),
    ("smtpwire/", "smtpwire (core)"),
    ("uvloop/", "uvloop"),
    ("asyncio/", "asyncio"),
    ("logging/", "logging"),
    ("bench_verify", "this benchmark"),
)
Seconds = dict[str, float]  # seconds per layer
CHARGE_UP = 8  # how many callers up the time of the standard library or a built-in is charged, at most
MINOR_US = 1.0  # a layer costing less per message in both profiles of serve is left out of the table
STARTUP = "start-up (imports)"  # the import system and modules' top-level code, wherever they are


def layer_of(path: str) -> str | None:
    """The layer a source file belongs to, or None (standard library, built-in, native code)."""
    path = path.replace(os.sep, "/")
    for pattern, name in LAYERS:
        if pattern in path:
            return name.format(path.rpartition("/")[2]) if "{}" in name else name
    return None


def profile_layers(mail: Mail, counts: Counts) -> tuple[Seconds, list[tuple[float, str]], float]:
    """cProfile over ``whole_check``: seconds per layer, the top functions by own time, and the total."""
    zone = Zone(mail.records)
    whole_check(zone, mail.message)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(counts.in_process):
        whole_check(zone, mail.message)
    profiler.disable()
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    layers = layers_of(stats)
    top = sorted(((own, f"{Path(f[0]).name}:{f[1]} {f[2]}") for f, (_, _, own, _, _) in stats.items()), reverse=True)
    return layers, top[:15], sum(layers.values())


def layers_of(stats: dict[Any, Any]) -> Seconds:
    """Seconds per layer of a cProfile run (``pstats.Stats.stats``)."""
    layers: Seconds = collections.defaultdict(float)
    for function, (_, _, own, _, callers) in stats.items():
        charge(stats, function, own, callers, layers, CHARGE_UP)
    return layers


def charge(stats: dict[Any, Any], function: Any, seconds: float, callers: Any, layers: Seconds, up: int) -> None:
    """Charge ``seconds`` to ``function``'s layer, or else to its callers' in proportion to their calls' time."""
    if function[0].startswith("<frozen importlib") or function[2] == "<module>":
        layers[STARTUP] += seconds
        return
    layer = layer_of(function[0])
    if layer is not None or not callers or up == 0:
        layers[layer or f"unattributed: {function[2]}"] += seconds
        return
    total = sum(entry[2] for entry in callers.values()) or 1.0
    for caller, entry in callers.items():
        share = seconds * entry[2] / total
        charge(stats, caller, share, stats.get(caller, (0, 0, 0, 0, {}))[4], layers, up - 1)


def report_profile(layers: Seconds, top: list[tuple[float, str]], total: float, counts: Counts) -> None:
    print(
        f"\n### cProfile of the in-process path (both checks + header + remove_claims), {counts.in_process} messages\n"
    )
    print("Standard-library and built-in time (hashing, RSA through OpenSSL, re) charged to the calling layer.\n")
    print("| layer | µs/msg under cProfile | share |")
    print("|---|---|---|")
    for name, seconds in sorted(layers.items(), key=lambda item: -item[1]):
        print(f"| {name} | {seconds / counts.in_process * 1e6:.1f} | {seconds / total:.0%} |")
    print("\nTop functions by own time:\n")
    print("| function | µs/msg own |")
    print("|---|---|")
    for seconds, name in top:
        print(f"| {name} | {seconds / counts.in_process * 1e6:.1f} |")


FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


#: Parts of the work a sample can be under, whatever its innermost frame: (label, a file pattern in the stack).
UNDER = (
    ("the handler's hooks (_authentication.py)", "smtpwire_handler/_authentication"),
    ("the checks (smtpwire_verify)", "smtpwire_verify/"),
    ("dkimpy", "dkim/"),
)


def py_spy_layers(samples: Path) -> tuple[Counter[str], Counter[str], int]:
    """From py-spy's raw (collapsed) stacks: samples per layer (innermost frame with one), per UNDER, and in all."""
    layers: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in samples.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        files = [match["file"] for match in map(FRAME.match, stack.split(";")) if match]
        owners = [layer for layer in map(layer_of, reversed(files)) if layer]
        layers[owners[0] if owners else "other (outside every layer)"] += count
        for label, pattern in UNDER:
            under[label] += count if any(pattern in file for file in files) else 0
        total += count
    return layers, under, total


def py_spy_run(smtp_source: str, mail: Mail, dns: LocalDNS, counts: Counts, work: Path, output: Path) -> None:
    """One more sink+verify load, sampled by ``py-spy record``, its raw stacks written to ``output``."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise servers.Failed("py-spy not found on PATH")
    run_dir = Path(tempfile.mkdtemp(prefix="bench-verify-py-spy-", dir=work))
    output.unlink(missing_ok=True)
    with started("sink+verify", run_dir, dns) as running:
        send(smtp_source, mail, running.port, sessions=counts.sessions, messages=counts.warm)
        command = [py_spy, "record", "--nonblocking", "--format", "raw", "--rate", str(PY_SPY_RATE)]
        command += ["--output", str(output), "--pid", str(running.pid)]
        recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            time.sleep(1.0)  # py-spy attaches
            send(smtp_source, mail, running.port, sessions=counts.sessions, messages=counts.messages)
            recorder.send_signal(signal.SIGINT)
            _, errors = recorder.communicate(timeout=PY_SPY_STOP)
        finally:
            servers.kill_group(recorder)
        if not output.exists():
            raise servers.Failed(f"py-spy wrote nothing: {errors.decode(errors='replace')[-300:]}")
    check_run("sink+verify", running, counts.warm + counts.messages)


def report_py_spy(samples: Path, counts: Counts) -> None:
    layers, under, total = py_spy_layers(samples)
    print(f"\n### py-spy record of serve --sink --verify all, {counts.messages:,} messages, {PY_SPY_RATE} Hz\n")
    shares = ", ".join(f"{under[label] / max(total, 1):.0%} under {label}" for label, _ in UNDER)
    print(f"{total} samples; {shares}.\n")
    print("| layer (innermost frame that has one) | samples | share |")
    print("|---|---|---|")
    for name, count in layers.most_common():
        print(f"| {name} | {count} | {count / max(total, 1):.0%} |")


def profile_serve(smtp_source: str, mail: Mail, dns: LocalDNS, counts: Counts, work: Path) -> dict[str, Seconds]:
    """sink and sink+verify, each under cProfile during the load after the warm-up: seconds per layer."""
    profiled: dict[str, Seconds] = {}
    for server in ("sink", "sink+verify"):
        run_dir = Path(tempfile.mkdtemp(prefix=f"bench-verify-cprofile-{server.replace('+', '-')}-", dir=work))
        profile = run_dir / "server.prof"
        with started(server, run_dir, dns, profile) as running:
            send(smtp_source, mail, running.port, sessions=counts.sessions, messages=counts.warm)
            running.process.send_signal(signal.SIGUSR1)
            send(smtp_source, mail, running.port, sessions=counts.sessions, messages=counts.messages)
            running.process.send_signal(signal.SIGUSR2)
            wait_for_file(profile, running)
        check_run(server, running, counts.warm + counts.messages)
        profiled[server] = layers_of(pstats.Stats(str(profile)).stats)  # type: ignore[attr-defined]
    return profiled


def wait_for_file(path: Path, running: servers.Running) -> None:
    deadline = time.monotonic() + PROFILE_WRITE_TIMEOUT
    while not path.exists() and time.monotonic() < deadline:
        running.alive()
        time.sleep(0.05)
    time.sleep(0.5)  # dump_stats may still be writing
    if not path.exists():
        raise servers.Failed(f"serve under cProfile wrote no profile within {PROFILE_WRITE_TIMEOUT} s")


def report_profile_serve(profiled: dict[str, Seconds], counts: Counts) -> None:
    messages = counts.messages
    print(f"\n### cProfile of serve --sink, without and with --verify all, {messages:,} messages each\n")
    print(
        "During the load after the warm-up; standard-library and built-in time charged to the calling layer; "
        f"µs per message under cProfile; layers under {MINOR_US} µs in both left out.\n"
    )
    print("| layer | sink | sink+verify | difference |")
    print("|---|---|---|---|")
    plain = collections.defaultdict(float, profiled["sink"])
    verified = collections.defaultdict(float, profiled["sink+verify"])
    names = sorted(set(plain) | set(verified), key=lambda name: plain[name] - verified[name])
    for name in names:
        ours, theirs = plain[name] / messages * 1e6, verified[name] / messages * 1e6
        if max(ours, theirs) < MINOR_US:
            continue
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {theirs - ours:+.1f} |")
    before, after = sum(plain.values()) / messages * 1e6, sum(verified.values()) / messages * 1e6
    print(f"| all | {before:.1f} | {after:.1f} | {after - before:+.1f} |")


# -- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU cost per message of smtpwire serve --verify all.")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process path, by layer")
    parser.add_argument(
        "--py-spy", metavar="FILE", type=Path, help="sample a serve --verify all load with py-spy, raw stacks to FILE"
    )
    parser.add_argument("--profile-serve", action="store_true", help="cProfile serve --sink with and without --verify")
    parser.add_argument("--no-servers", action="store_true", help="only the in-process figures (and --profile)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    counts = QUICK if args.quick else Counts()
    smtp_source = servers.find_tool("smtp-source")
    if smtp_source is None and not args.no_servers:
        raise SystemExit("smtp-source (Postfix) not found on PATH nor in " + ", ".join(servers.SBIN))
    servers.raise_file_limit()
    work = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    try:
        mail = make_mail(work)
        print(header(args.rounds, len(mail.message), work), flush=True)
        report_in_process(in_process(mail, counts, args.rounds), counts)
        if args.profile:
            report_profile(*profile_layers(mail, counts), counts)
        if args.no_servers or smtp_source is None:
            return
        with local_dns(Zone(mail.records)) as dns:
            report_end_to_end(end_to_end(smtp_source, mail, dns, counts, args.rounds, work), counts)
            if args.profile_serve:
                try:
                    report_profile_serve(profile_serve(smtp_source, mail, dns, counts, work), counts)
                except servers.Failed as error:
                    print(f"\n- cProfile of serve: FAILED {error}")
            if args.py_spy:
                try:
                    py_spy_run(smtp_source, mail, dns, counts, work, args.py_spy)
                    report_py_spy(args.py_spy, counts)
                except servers.Failed as error:
                    print(f"\n- py-spy: FAILED {error}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def header(rounds: int, size: int, work: Path) -> str:
    versions = ", ".join(f"{name} {servers.package_version(name)}" for name in ("smtpwire", "dkimpy", "uvloop"))
    return (
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {versions}; message {size:,} octets signed "
        f"rsa-sha256 ({KEY_BITS}-bit); serve on its default loop; Maildir on {servers.filesystem(str(work))}; "
        f"{rounds} rounds: median [min-max]; CPU is the server's utime+stime during the load"
    )


if __name__ == "__main__":
    main()
