"""``serve --workers N``: processes sharing the ports (SO_REUSEPORT), each replaced when it dies.

A worker that dies (killed, out of memory, a crash) takes only its own
sessions with it; the parent starts a new one with the same number, at once
when the old one had served a while, else after a pause that doubles with
each quick death (1 s up to 60 s), so a worker that dies as it starts cannot
spin.  A worker that ends with an exit status before it ever served failed
at start-up (a port in use, a Maildir it cannot write): starting it again
would fail again, so the parent stops every worker and exits with status 1.

SIGTERM and SIGINT go to every worker and no worker is started from then on;
the parent waits for all to end.  SIGHUP goes to every worker that serves
(one still starting reads the files itself, and would die of a SIGHUP before
it handles it).  Signal handlers only note the signal; the loop acts on it,
so a handler never meets the list of workers half changed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("smtpwire.serve")

#: The pause before restarting a worker that died soon after it started, doubled for each further quick death.
FIRST_DELAY = 1.0
MAX_DELAY = 60.0
#: A worker that ran this long before it died counts as healthy: restarted at once, its pause reset.
HEALTHY_RUN = 10.0
#: How the line a worker logs once it serves begins (``_run._serving``): from then on it is no start-up failure.
SERVING = "smtpwire serving on "

Target = Callable[..., None]


class ServingReport(logging.Filter):
    """In a worker: tells the parent, once, that the worker serves, when the worker logs that it does."""

    def __init__(self, ready: Connection) -> None:
        super().__init__()
        self.ready: Connection | None = ready

    def filter(self, record: logging.LogRecord) -> bool:
        if self.ready is not None and isinstance(record.msg, str) and record.msg.startswith(SERVING):
            with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
                self.ready.send_bytes(b"serving")
            self.ready.close()
            self.ready = None
        return True


def report_serving(ready: Connection) -> None:
    """Called in a worker before it starts: ``ready`` hears from it when it serves."""
    logging.getLogger("smtpwire.serve").addFilter(ServingReport(ready))


@dataclass
class Worker:
    """One running worker process, and whether it said it serves."""

    number: int
    process: BaseProcess
    ready: Connection | None  # closed and None once it said it serves, or died before
    started: float = field(default_factory=time.monotonic)
    serving: bool = False

    def heard(self) -> None:
        """``ready`` is readable: the worker serves, or it died before it did (end of file)."""
        assert self.ready is not None
        with contextlib.suppress(EOFError, OSError):
            self.serving = self.ready.recv_bytes(64) == b"serving"
        self.ready.close()
        self.ready = None


class Supervisor:
    """Runs ``target(*args, (number, count), ready)`` in ``count`` processes and keeps them running."""

    def __init__(self, target: Target, args: tuple[Any, ...], count: int) -> None:
        self.target, self.args, self.count = target, args, count
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, Worker] = {}
        self.restarts: dict[int, float] = {}  # number: when (monotonic) to start its new worker
        self.quick_deaths: dict[int, int] = {}
        self.signals: list[int] = []
        self.stopping = False
        self.status = 0
        self.on_stopping: Callable[[], None] = lambda: None  # told once, when the workers are told to stop
        self.on_ended: Callable[[int | None], None] = lambda pid: None  # told the pid of each worker that ended

    def run(self) -> int:
        """Until every worker has ended after SIGTERM or SIGINT, or a start-up failure; returns the exit status."""
        wake, woken = socket.socketpair()
        for end in (wake, woken):
            end.setblocking(False)
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {signum: signal.signal(signum, self.note) for signum in handled}
        previous_wakeup = signal.set_wakeup_fd(wake.fileno(), warn_on_full_buffer=False)
        try:
            for number in range(1, self.count + 1):
                self.start(number)
            while self.workers or (self.restarts and not self.stopping):
                self.wait(woken)
                self.act_on_signals()
                self.reap()
                self.start_due()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            wake.close()
            woken.close()
        return self.status

    def note(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def start(self, number: int) -> None:
        ready, told = self.context.Pipe(duplex=False)
        args = (*self.args, (number, self.count), told)
        process = self.context.Process(target=self.target, args=args, name=f"smtpwire-{number}")
        try:
            process.start()
        except OSError as error:  # out of processes or memory, for now: a later try may work
            ready.close()
            pause = self.next_pause(number)
            log.error("cannot start worker %d of %d: %s; trying again in %g s", number, self.count, error, pause)
            self.restarts[number] = time.monotonic() + pause
            return
        finally:
            told.close()  # the worker's end: once it is gone, ready reads end of file
        self.workers[number] = Worker(number, process, ready)

    def wait(self, woken: socket.socket) -> None:
        """Until a worker ends or says it serves, a signal comes, or a restart is due."""
        readers = [worker.ready for worker in self.workers.values() if worker.ready is not None]
        sentinels = [worker.process.sentinel for worker in self.workers.values()]
        due = min(self.restarts.values(), default=None) if not self.stopping else None
        timeout = None if due is None else max(0.0, due - time.monotonic())
        ready = wait([*readers, *sentinels, woken], timeout)
        if woken in ready:
            with contextlib.suppress(BlockingIOError):
                woken.recv(4096)
        for worker in list(self.workers.values()):
            if worker.ready is not None and worker.ready in ready:
                worker.heard()

    def act_on_signals(self) -> None:
        signals, self.signals = self.signals, []
        for signum in signals:
            if signum == signal.SIGHUP:
                self.send(signum, serving_only=True)
            else:
                self.stop(signum)

    def stop(self, signum: int) -> None:
        """Pass ``signum`` (SIGTERM or SIGINT) on to every worker, and start none from now on."""
        if not self.stopping:
            self.on_stopping()
        self.stopping = True
        self.restarts.clear()
        self.send(signum)

    def send(self, signum: int, serving_only: bool = False) -> None:
        for worker in self.workers.values():
            pid = worker.process.pid
            if pid is not None and (worker.serving or not serving_only):
                with contextlib.suppress(ProcessLookupError):  # ended since: reap() will see it
                    os.kill(pid, signum)

    def reap(self) -> None:
        for worker in list(self.workers.values()):
            exitcode = worker.process.exitcode
            if exitcode is None:
                continue
            worker.process.join()
            if worker.ready is not None:
                worker.heard()  # a word it sent just before it ended still counts
            del self.workers[worker.number]
            self.on_ended(worker.process.pid)
            self.ended(worker, exitcode)

    def ended(self, worker: Worker, exitcode: int) -> None:
        """What the end of ``worker`` means: nothing while stopping, a failed start, or a new worker."""
        name = f"worker {worker.number} of {self.count}"
        if self.stopping:
            if worker.serving and exitcode != 0:
                self.status = 1
            return
        if exitcode >= 0 and not worker.serving:
            log.error("%s could not start (exit status %d); stopping every worker", name, exitcode)
            self.status = 1
            self.stop(signal.SIGTERM)
            return
        delay = self.restart_delay(worker)
        died = f"{name} {'died' if exitcode < 0 else 'ended'} ({cause(exitcode)})"
        if delay == 0:
            log.warning("%s; starting a new one", died)
        else:
            age = time.monotonic() - worker.started
            log.warning("%s %.1f s after it started; starting a new one in %g s", died, age, delay)
        self.restarts[worker.number] = time.monotonic() + delay

    def restart_delay(self, worker: Worker) -> float:
        """0 after a healthy run (and the count of quick deaths reset); else 1 s, doubled per further quick death."""
        if time.monotonic() - worker.started >= HEALTHY_RUN:
            self.quick_deaths[worker.number] = 0
            return 0.0
        return self.next_pause(worker.number)

    def next_pause(self, number: int) -> float:
        """One more quick death (or failed start) of worker ``number``: the pause before the next try."""
        deaths = self.quick_deaths.get(number, 0) + 1
        self.quick_deaths[number] = deaths
        return min(MAX_DELAY, FIRST_DELAY * 2.0 ** (deaths - 1))

    def start_due(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for number, when in sorted(self.restarts.items()):
            if when <= now:
                del self.restarts[number]
                self.start(number)


def cause(exitcode: int) -> str:
    """How a process ended, as the log says it: ``signal 9 SIGKILL`` or ``exit status 1``."""
    if exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        return f"signal {-exitcode} {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"signal {-exitcode}"
