"""A durable spool for HTTP delivery: the 250 only once the message is on disk, then delivery with retries.

Layout of a spool directory (each folder 0700, each file 0600)::

    tmp/    a message being written (then renamed into queue/)
    queue/  MSGID, the message: one JSON line of facts that never change
            (``{"first_seen": ...}``), then the payload to POST; and
            MSGID.json, its delivery state once an attempt failed
            (attempts, next attempt time, last answer)
    dead/   MSGID and MSGID.json: refused for good (400, 403, 404, 410,
            413, 422) or expired, with the last answer and why

A message is written to tmp/, fsynced, renamed into queue/, and queue/ is
fsynced (a group commit shared with the messages renamed meanwhile) before
the client hears 250: every acknowledged message survives a SIGKILL or a
power loss.  The state file is replaced whole (tmp/ then a rename) and not
fsynced: losing it to a crash only means an earlier retry.  A delivered
message is unlinked; if a crash undoes that, it is delivered again, with the
same id (the payload holds it), which the receiver deduplicates on: at least
once, never lost.

Several processes (``serve --workers``) share one spool: each delivers any
queued message, and claims it for the attempt with ``flock`` on the message's
file, so no message is posted by two at once, and a claim dies with its
process (no stale claim after a SIGKILL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import heapq
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

from smtpwire import Reply

from ._async_maildir import in_thread
from ._handler import AsyncHandler
from ._http_delivery import DeliveryResult
from ._http_payload import delivery_payload, new_message_id
from ._maildir import FILE_MODE, DirectorySync, make_folder, storage_reply, write_all
from ._session import Envelope, Session

log = logging.getLogger("smtpwire.delivery")

FOLDERS = ("tmp", "queue", "dead")
MESSAGE_ID = re.compile(r"msg_[A-Za-z0-9_-]{1,64}")
#: The first line of a message file is at most this long (it holds a few numbers).
MAX_FACTS_LINE = 1024
#: The longest answer detail kept in a state or dead-letter record.
MAX_DETAIL = 1000
#: A file in tmp/ older than this is a write that a crash interrupted; the next start removes it.
STALE_TMP = 3600.0


@dataclasses.dataclass
class Entry:
    """What the spool knows of one queued message (its payload stays on disk)."""

    id: str
    first_seen: float
    attempts: int = 0
    next_attempt: float = 0.0
    last_answer: dict[str, Any] | None = None

    def state(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "next_attempt": self.next_attempt, "last_answer": self.last_answer}


def answer_record(result: DeliveryResult) -> dict[str, Any]:
    """A delivery result as recorded (the endpoint's words cut to ``MAX_DETAIL``)."""
    return {"outcome": result.outcome, "status": result.status, "detail": result.detail[:MAX_DETAIL]}


class Spool:
    """A spool directory (created with its folders, each 0700, if missing); every method blocks on the disk."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory)
        make_folder(self.path)
        for folder in FOLDERS:
            (self.path / folder).mkdir(mode=0o700, exist_ok=True)
        self.queue = self.path / "queue"
        self.dead = self.path / "dead"
        #: The group commit of queue/: messages renamed at about the same time share one fsync.
        self.queue_sync = DirectorySync(self.queue)
        #: Called (on the caller's thread) with each new ``Entry`` once it is durable: how a delivery hears of it.
        self.arrivals: list[Callable[[Entry], None]] = []

    def write(self, message_id: str, payload: bytes, first_seen: float) -> Entry:
        """Put a message in queue/, durably: written in tmp/, fsynced, renamed, queue/ fsynced.

        On an error nothing is left in tmp/ and the error is raised.  If the
        fsync of queue/ is what failed, the message stays queued (it may be
        delivered though the client was told to retry: the safe side).
        """
        if not MESSAGE_ID.fullmatch(message_id):
            raise ValueError(f"{message_id!r} is not a spool message id")
        tmp = self.path / "tmp" / message_id
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            try:
                write_all(fd, json.dumps({"first_seen": first_seen}).encode() + b"\n", tmp)
                write_all(fd, payload, tmp)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.queue / message_id)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.queue_sync.sync()
        return Entry(message_id, first_seen, next_attempt=first_seen)

    def announce(self, entry: Entry) -> None:
        for arrived in self.arrivals:
            arrived(entry)

    def queued(self, known: Collection[str] = ()) -> tuple[set[str], list[Entry]]:
        """The ids in queue/, and the entries (with their state) of those not ``known``, as found on disk."""
        ids, entries = set(), []
        for path in self.queue.iterdir():
            if MESSAGE_ID.fullmatch(path.name):
                ids.add(path.name)
                if path.name not in known:
                    with contextlib.suppress(FileNotFoundError):  # delivered meanwhile by another process
                        entries.append(self.read_entry(path.name))
            elif path.suffix == ".json" and not (self.queue / path.stem).exists():
                path.unlink(missing_ok=True)  # a crash came between the message's unlink and its state's
        return ids, entries

    def read_entry(self, message_id: str) -> Entry:
        """The message's facts and state; a missing or broken state file means no attempt yet."""
        with open(self.queue / message_id, "rb") as file:
            return self._entry(message_id, file.readline(MAX_FACTS_LINE))

    def _entry(self, message_id: str, facts_line: bytes) -> Entry:
        try:
            first_seen = float(json.loads(facts_line)["first_seen"])
        except (ValueError, KeyError, TypeError):
            log.warning("spool %s: %s has no first line of facts; taken as new", self.path, message_id)
            first_seen = time.time()
        entry = Entry(message_id, first_seen, next_attempt=first_seen)
        try:
            state = json.loads((self.queue / f"{message_id}.json").read_bytes())
            entry.attempts = int(state["attempts"])
            entry.next_attempt = float(state["next_attempt"])
            entry.last_answer = state["last_answer"] if isinstance(state["last_answer"], dict) else None
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as error:  # a state a crash cut short: retry now
            log.warning("spool %s: unreadable state of %s (%s); retrying it now", self.path, message_id, error)
        return entry

    def claim(self, message_id: str) -> Claim | None:
        """The message locked for an attempt, with payload and fresh state; ``None``: another has it, or it is gone."""
        try:
            fd = os.open(self.queue / message_id, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(self.queue / message_id).st_ino:
                raise FileNotFoundError(errno.ENOENT, "delivered meanwhile", message_id)
            with os.fdopen(os.dup(fd), "rb") as file:
                entry = self._entry(message_id, file.readline(MAX_FACTS_LINE))
                payload = file.read()
        except (BlockingIOError, FileNotFoundError):  # another process's attempt; or it finished one meanwhile
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return Claim(self, fd, entry, payload)

    def save_state(self, entry: Entry) -> None:
        """Replace the message's state file whole (not fsynced: a lost one only means an earlier retry)."""
        tmp = self.path / "tmp" / f"{entry.id}.json"
        tmp.write_bytes(json.dumps(entry.state()).encode())
        os.rename(tmp, self.queue / f"{entry.id}.json")

    def remove_stale_tmp(self, now: float) -> None:
        """Files a crash left in tmp/ (older than ``STALE_TMP``: a live write is younger)."""
        for path in (self.path / "tmp").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > STALE_TMP:
                    path.unlink()


class Claim:
    """One process's hold on a queued message for an attempt: its lock, payload and state, until ``release``."""

    def __init__(self, spool: Spool, fd: int, entry: Entry, payload: bytes) -> None:
        self.spool = spool
        self.fd = fd
        self.entry = entry
        self.payload = payload

    def delivered(self) -> None:
        """Gone from the queue (its state after it: a crash between leaves a state file the next scan removes)."""
        (self.spool.queue / self.entry.id).unlink(missing_ok=True)
        (self.spool.queue / f"{self.entry.id}.json").unlink(missing_ok=True)
        self.release()

    def retry_later(self) -> None:
        self.spool.save_state(self.entry)
        self.release()

    def bury(self, reason: str, when: float) -> None:
        """Into dead/, its record first (a crash between leaves it queued, never dead without why)."""
        record = {"id": self.entry.id, "first_seen": self.entry.first_seen, "reason": reason, "dead_since": when}
        record |= self.entry.state()
        tmp = self.spool.path / "tmp" / f"{self.entry.id}.dead.json"
        tmp.write_bytes(json.dumps(record, indent=1).encode())
        os.rename(tmp, self.spool.dead / f"{self.entry.id}.json")
        os.rename(self.spool.queue / self.entry.id, self.spool.dead / self.entry.id)
        (self.spool.queue / f"{self.entry.id}.json").unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class AsyncSpoolStore(AsyncHandler):
    """The store of ``--deliver-mode spool``: each message durably in the spool, then 250; ``SpoolDelivery`` posts it.

    The message is kept in ``envelope.content`` (bounded by the message size
    limit); at the end of data one trip to a worker thread (anyio, on asyncio
    or trio) builds the payload (``delivery_payload``) with a new id and
    writes it to the spool.  A spool that cannot take it answers 452 4.3.1
    (full) or 451 4.3.0, never 250.
    """

    def __init__(self, spool: Spool, clock: Callable[[], float] = time.time) -> None:
        self.spool = spool
        self.clock = clock

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        message_id = new_message_id()
        try:
            entry = await in_thread(self._spool, session, envelope, message_id)
        except OSError as error:
            log.error("session %s: spooling the message failed: %s", session.id, error)
            return storage_reply(error)
        self.spool.announce(entry)
        self.spooled(session, envelope, entry)
        return None

    def _spool(self, session: Session, envelope: Envelope, message_id: str) -> Entry:
        now = self.clock()
        payload = delivery_payload(session, envelope, bytes(envelope.content), message_id, received_at=now)
        return self.spool.write(message_id, payload, now)

    def spooled(self, session: Session, envelope: Envelope, entry: Entry) -> None:
        """The message is durably in the spool as ``entry.id``: say so."""
        log.info("session %s: spooled %s (%d octets)", session.id, entry.id, envelope.size)


class Poster(Protocol):
    """What posts a payload: ``HttpPoster``, or a stand-in."""

    async def post(self, message_id: str, payload: bytes) -> DeliveryResult: ...


class SpoolDelivery:
    """Posts what the spool holds until cancelled: retries with backoff and jitter, dead letters, at least once.

    Due messages go first by due time, the oldest first among equals, at
    most ``concurrency`` at a time.  2xx removes a message; a temporary
    answer schedules the next attempt ``retry_delay`` after the first,
    then from ``retry_delay`` up to a cap that doubles with each attempt
    (at most ``max_delay``), uniformly at random (full jitter above the
    floor, so retries of many messages spread out and none comes sooner than
    ``retry_delay``).  A permanent answer, or a retry that would come
    ``max_age`` after the message arrived, moves it to dead/ with the last
    answer; a message found already that old (serve was down) is moved
    there unposted.  The queue is read at start and every ``rescan``
    seconds (messages other processes spooled, or left behind when they
    died); this process's own arrivals come at once (``Spool.arrivals``).
    """

    def __init__(
        self,
        spool: Spool,
        poster: Poster,
        *,
        retry_delay: float = 30.0,
        max_age: float = 3 * 86400.0,
        max_delay: float = 3600.0,
        concurrency: int = 10,
        rescan: float | None = None,
        clock: Callable[[], float] = time.time,
        random: Callable[[], float] = random.random,
    ) -> None:
        if retry_delay <= 0 or max_age <= 0 or concurrency < 1:
            raise ValueError("retry_delay and max_age must be positive, concurrency at least 1")
        self.spool = spool
        self.poster = poster
        self.retry_delay = retry_delay
        self.max_age = max_age
        self.max_delay = max(max_delay, retry_delay)
        self.concurrency = concurrency
        self.rescan = min(retry_delay, 60.0) if rescan is None else rescan
        self.clock = clock
        self.random = random
        self._entries: dict[str, Entry] = {}  # every message known to be queued, in flight or not
        self._due: list[tuple[float, float, str]] = []  # (next attempt, first seen, id); stale ones skipped
        self._in_flight: set[str] = set()
        self._wake: Any = None  # an anyio.Event while run() runs: an arrival or a finished attempt
        spool.arrivals.append(self._arrived)

    def depth(self) -> int:
        """Messages queued (as this process last saw the spool)."""
        return len(self._entries)

    def oldest_age(self) -> float:
        """Seconds since the oldest queued message arrived; 0 for an empty queue."""
        return max(0.0, self.clock() - min((e.first_seen for e in self._entries.values()), default=self.clock()))

    def retry_delay_for(self, attempts: int) -> float:
        """Seconds until the next attempt after ``attempts`` failed ones: ``retry_delay``, then jittered backoff."""
        cap = min(self.max_delay, self.retry_delay * 2.0 ** min(attempts - 1, 64))
        return self.retry_delay + self.random() * (cap - self.retry_delay)

    async def run(self) -> None:
        import anyio

        self._wake = anyio.Event()
        with contextlib.suppress(OSError):  # a leftover that stays does no harm
            await in_thread(self.spool.remove_stale_tmp, self.clock())
        try:
            async with anyio.create_task_group() as group:
                while True:
                    await self._scan()
                    next_scan = self.clock() + self.rescan
                    while self.clock() < next_scan:
                        for entry in self._take_due():
                            group.start_soon(self._attempt, entry)
                        with anyio.move_on_after(self._sleep_until(next_scan)):
                            await self._wake.wait()
                        self._wake = anyio.Event()
        finally:
            self._wake = None

    def _arrived(self, entry: Entry) -> None:
        self._schedule(entry)
        if self._wake is not None:
            self._wake.set()

    def _schedule(self, entry: Entry) -> None:
        self._entries[entry.id] = entry
        heapq.heappush(self._due, (entry.next_attempt, entry.first_seen, entry.id))

    async def _scan(self) -> None:
        """What queue/ holds that this process does not know of, and what it no longer holds; an error is logged."""
        known = set(self._entries)  # not those arriving during the scan: they may be missing from its listing
        try:
            on_disk, found = await in_thread(self.spool.queued, known)
        except OSError as error:  # what is known is still delivered; the next scan tries again
            log.error("spool %s: cannot read the queue: %s", self.spool.path, error)
            return
        for message_id in known - on_disk - self._in_flight:  # delivered by another process (or by this one, meanwhile)
            self._entries.pop(message_id, None)
        for entry in found:
            if entry.id not in self._entries:
                self._schedule(entry)

    def _take_due(self) -> list[Entry]:
        """The due messages that fit in the free slots, taken off the schedule."""
        now, taken = self.clock(), []
        while self._due and self._due[0][0] <= now and len(self._in_flight) < self.concurrency:
            when, _, message_id = heapq.heappop(self._due)
            entry = self._entries.get(message_id)
            if entry is None or entry.next_attempt != when or message_id in self._in_flight:
                continue  # rescheduled or gone since
            self._in_flight.add(message_id)
            taken.append(entry)
        return taken

    def _sleep_until(self, next_scan: float) -> float:
        """Seconds until the next message is due (when a slot is free) or the next scan, whichever comes first."""
        wake_at = next_scan
        if self._due and len(self._in_flight) < self.concurrency:
            wake_at = min(wake_at, self._due[0][0])
        return max(0.0, wake_at - self.clock())

    async def _attempt(self, entry: Entry) -> None:
        import anyio

        try:
            with anyio.CancelScope(shield=True):  # a claim taken is a claim released
                claim = await in_thread(self.spool.claim, entry.id)
            if claim is None:  # another process has it, or it is gone
                self._entries.pop(entry.id, None)
                return
            try:
                await self._deliver(claim)
            finally:
                claim.release()
        except OSError as error:  # the spool's disk: tried again at the next scan
            log.error("spool %s: %s: %s", self.spool.path, entry.id, error)
            self._entries.pop(entry.id, None)
        finally:
            self._in_flight.discard(entry.id)
            if self._wake is not None:
                self._wake.set()

    async def _deliver(self, claim: Claim) -> None:
        import anyio

        entry = claim.entry
        if entry.next_attempt > self.clock():  # another process tried it meanwhile: its schedule holds
            self._schedule(entry)
            return
        if self.clock() - entry.first_seen >= self.max_age:
            verdict = "expired before an attempt"
        else:
            result = await self._post(entry, claim.payload)
            entry.attempts += 1
            entry.last_answer = answer_record(result)
            verdict = self._verdict(entry, result)
        with anyio.CancelScope(shield=True):  # what the endpoint said is recorded, even at shutdown
            await self._conclude(claim, verdict)

    def _verdict(self, entry: Entry, result: DeliveryResult) -> str:
        """``delivered``, ``refused``, ``expired`` or ``retry`` (with ``entry.next_attempt`` set)."""
        if result.outcome == "delivered":
            return "delivered"
        if result.outcome == "permanent":
            return "refused"
        now = self.clock()
        entry.next_attempt = now + self.retry_delay_for(entry.attempts)
        return "expired" if entry.next_attempt >= entry.first_seen + self.max_age else "retry"

    async def _conclude(self, claim: Claim, verdict: str) -> None:
        entry = claim.entry
        detail = (entry.last_answer or {}).get("detail")
        if verdict == "retry":
            await in_thread(claim.retry_later)
            self._schedule(entry)
            delay = entry.next_attempt - self.clock()
            log.info("%s deferred (%s); attempt %d in %.0f s", entry.id, detail, entry.attempts + 1, delay)
            return
        if verdict == "delivered":
            await in_thread(claim.delivered)
            log.info("delivered %s at attempt %d", entry.id, entry.attempts)
        else:
            await in_thread(claim.bury, verdict, self.clock())
            log.warning("%s moved to dead/: %s after %d attempt(s): %s", entry.id, verdict, entry.attempts, detail)
        self._entries.pop(entry.id, None)

    async def _post(self, entry: Entry, payload: bytes) -> DeliveryResult:
        """The poster's answer; an error it raised (a bug) counts as a temporary failure, logged."""
        try:
            return await self.poster.post(entry.id, payload)
        except Exception as error:
            log.exception("posting %s failed", entry.id)
            return DeliveryResult("temporary", None, f"{type(error).__name__}: {error}")
