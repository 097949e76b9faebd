"""``serve --metrics HOST:PORT``: ``/metrics`` (Prometheus), ``/livez`` and ``/readyz`` on one port.

A small HTTP server in a thread of its own, so it answers the same under
asyncio, trio, or the parent of ``--workers`` (which runs no event loop).
It serves one request at a time, each within ``REQUEST_TIMEOUT`` seconds:
a scraper is one client, and a stalled one cannot hold it longer.

Under ``--workers`` the parent makes a ``PROMETHEUS_MULTIPROC_DIR`` (in a
temporary folder, removed at exit) before the workers start, and serves what
they all wrote, summed (prometheus-client's ``MultiProcessCollector``).
"""

from __future__ import annotations

import atexit
import http.server
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import click

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("smtpwire.serve")

#: Seconds a request may take to arrive and be answered.
REQUEST_TIMEOUT = 5.0
#: Seconds a store check's answer is reused: a scraper polling /readyz costs a file at most this often.
CHECK_CACHE = 2.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: A readiness check: why the server is not ready, or ``None``.
Check = Callable[[], "str | None"]


class _Stopping(Protocol):
    @property
    def stopping(self) -> bool: ...


class Health:
    """What /readyz answers: ready unless shutting down or a registered check says why not.

    ``add_check`` takes any readiness check (the HTTP delivery's spool over
    its limit, say); a check that raises counts as not ready.
    """

    def __init__(self) -> None:
        self.stopping = False
        self._checks: list[Check] = []

    def add_check(self, check: Check) -> None:
        self._checks.append(check)

    def watch(self, server: _Stopping) -> None:
        """Not ready once ``server`` is shutting down (it admits no one any more)."""
        self.add_check(lambda: "shutting down" if server.stopping else None)

    def not_ready(self) -> list[str]:
        """Why the server is not ready (empty: it is)."""
        reasons = ["shutting down"] if self.stopping else []
        for check in self._checks:
            try:
                reason = check()
            except Exception as error:
                reason = f"a readiness check failed: {error!r}"
            if reason is not None:
                reasons.append(reason)
        return reasons


class _CachedCheck:
    """A readiness check whose answer is kept ``CHECK_CACHE`` seconds: scrapes come often, the disk is slow."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._checked_at = -CHECK_CACHE
        self._answer: str | None = None

    def __call__(self) -> str | None:
        now = self._clock()
        if now - self._checked_at >= CHECK_CACHE:
            self._answer, self._checked_at = self._probe(), now
        return self._answer

    def _probe(self) -> str | None:
        raise NotImplementedError


class MaildirWritable(_CachedCheck):
    """A check that the Maildir's ``tmp/`` takes a new file, as a delivery would."""

    def __init__(self, maildir: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.tmp = os.path.join(maildir, "tmp")

    def _probe(self) -> str | None:
        path = os.path.join(self.tmp, f".smtpwire-ready.{os.getpid()}.{threading.get_ident()}")
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(descriptor)
            os.unlink(path)
        except OSError as error:
            return f"the Maildir is not writable: {error.strerror or error}"
        return None


class Endpoint:
    """The HTTP server of /metrics, /livez and /readyz, in a daemon thread until ``close()``."""

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, health: Health) -> None:
        handler = type("Handler", (_Handler,), {"registry": registry, "health": health})
        self.server = http.server.HTTPServer(address, handler)
        self.address: tuple[str, int] = self.server.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(target=self.server.serve_forever, name="smtpwire-metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics (and /livez, /readyz)", *self.address)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(REQUEST_TIMEOUT)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET (or HEAD) of the three paths; anything else 404 or 405."""

    registry: CollectorRegistry
    health: Health
    timeout = REQUEST_TIMEOUT  # on the socket: reading the request and writing the answer

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._answer(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/livez":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            reasons = self.health.not_ready()
            self._answer(503 if reasons else 200, "".join(f"{r}\n" for r in reasons or ["ready"]).encode())
        else:
            self._answer(404, b"not found: /metrics, /livez or /readyz\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged: one every few seconds would drown the mail log."""


class SpoolWithin(_CachedCheck):
    """A check that the HTTP delivery's spool holds at most ``limit`` messages.

    It counts the files of ``queue/``, so the parent of ``--workers`` (which
    holds no delivery of its own) answers for the spool they share.
    """

    def __init__(self, spool: str, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.queue = os.path.join(spool, "queue")
        self.limit = limit

    def _probe(self) -> str | None:
        try:
            with os.scandir(self.queue) as entries:
                queued = sum(1 for entry in entries if not entry.name.endswith(".json"))
        except OSError as error:
            return f"the spool cannot be read: {error.strerror or error}"
        return f"the spool holds {queued} messages, over {self.limit}" if queued > self.limit else None


def health_for(maildir: str | None, lmtp: bool, spool: str | None = None, spool_limit: int = 0) -> Health:
    """serve's readiness: with a Maildir store, that it is writable; with a spool, that it is within its limit."""
    health = Health()
    if maildir is not None and not lmtp:
        health.add_check(MaildirWritable(maildir))
    if spool is not None:
        health.add_check(SpoolWithin(spool, spool_limit))
    return health


def start(address: tuple[str, int] | None, registry: CollectorRegistry | None, health: Health) -> Endpoint | None:
    """The endpoint (``None`` without an address); one that cannot listen is the usual one-line error."""
    if address is None or registry is None:
        return None
    try:
        return Endpoint(address, registry, health)
    except OSError as error:
        raise click.ClickException(f"--metrics {address[0]}:{address[1]}: {error}") from None


class WorkersEndpoint:
    """The parent's endpoint under ``--workers``: what every worker writes, summed; closed at exit.

    The ``PROMETHEUS_MULTIPROC_DIR`` is made, in a temporary folder, before
    the workers start (spawned, they inherit it) and removed at exit.
    """

    def __init__(self, address: tuple[str, int], health: Health) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        self.health = health
        self._folder = tempfile.TemporaryDirectory(prefix="smtpwire-metrics-")
        self.path = self._folder.name
        os.environ[MULTIPROC_ENV] = self.path
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]
        try:
            self._endpoint = start(address, registry, health)
        except BaseException:
            self._remove()
            raise
        atexit.register(self.close)

    @classmethod
    def start(cls, address: tuple[str, int] | None, health: Health) -> WorkersEndpoint | None:
        """The endpoint of ``--metrics`` (``None`` without it), before the workers start."""
        return None if address is None else cls(address, health)

    def worker_gone(self, pid: int | None) -> None:
        """A worker ended: its live gauges (open sessions) no longer count."""
        from prometheus_client.multiprocess import mark_process_dead

        if pid is not None:
            mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        self._remove()

    def _remove(self) -> None:
        os.environ.pop(MULTIPROC_ENV, None)
        self._folder.cleanup()
