"""Failure injection: which misbehaviour, at which point of the session, for whom, how often.

Every rule is deterministic: it fires for the commands it matches, ``times``
times (or always), and with ``probability`` only as a ``random.Random(seed)``
draws it, so a failing run repeats exactly.
"""

from __future__ import annotations

import collections
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import smtpwire

Point: TypeAlias = Literal["connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "end_of_data"]
POINTS: tuple[Point, ...] = ("connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "end_of_data")
#: Points whose command carries something to match: an address, the EHLO name, the user name, the recipients.
MATCHABLE: frozenset[Point] = frozenset({"ehlo", "auth", "mail", "rcpt", "data", "end_of_data"})
Match: TypeAlias = str | Callable[[str], bool] | None


@dataclass(frozen=True)
class Fail:
    """Answer the command with ``reply``."""

    reply: smtpwire.Reply


@dataclass(frozen=True)
class Disconnect:
    """Drop the connection (``abrupt``) or say 421 and close."""

    abrupt: bool


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` before answering (the session is paused, the others go on)."""

    seconds: float


Action: TypeAlias = Fail | Disconnect | Delay


def same_address(a: str, b: str) -> bool:
    """Exact address equality, except that domains compare without case (RFC 5321 2.4: local parts may not)."""
    local_a, at_a, domain_a = a.rpartition("@")
    local_b, at_b, domain_b = b.rpartition("@")
    if not (at_a and at_b):
        return a == b
    return local_a == local_b and domain_a.lower() == domain_b.lower()


class Fault:
    """One injected rule; ``hits`` counts how often it fired, ``remaining`` how often it still may."""

    def __init__(
        self,
        point: Point,
        action: Action,
        *,
        match: Match = None,
        times: int | None = None,
        probability: float | None = None,
        seed: int | None = None,
    ) -> None:
        if point not in POINTS:
            raise ValueError(f"point must be one of {POINTS}, not {point!r}")
        if match is not None and point not in MATCHABLE:
            raise ValueError(f"{point!r} has nothing to match; match= works at {sorted(MATCHABLE)}")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
            raise ValueError(f"times must be a positive integer or None (always), not {times!r}")
        if probability is not None and not 0.0 < probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], not {probability!r}")
        self.point = point
        self.action = action
        self.match = match
        self.remaining = times
        self.probability = probability
        self.hits = 0
        self._random = random.Random(seed)

    def fires(self, arguments: Sequence[str]) -> bool:
        """Whether the rule fires for a command with these arguments (counting it if so)."""
        if self.remaining == 0 or not self._matches(arguments):
            return False
        if self.probability is not None and self._random.random() >= self.probability:
            return False
        self.hits += 1
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def _matches(self, arguments: Sequence[str]) -> bool:
        match = self.match
        if match is None:
            return True
        if isinstance(match, str):
            return any(same_address(argument, match) for argument in arguments)
        return any(match(argument) for argument in arguments)

    def __repr__(self) -> str:
        return f"<Fault {self.point} {self.action} match={self.match!r} hits={self.hits} remaining={self.remaining}>"


class RateLimit(Fault):
    """Postfix's ``smtpd_client_message_rate_limit``: past ``messages`` MAIL commands in any ``per`` seconds
    (a sliding window read from ``clock``), MAIL is answered ``421 4.7.0`` and the connection closed."""

    def __init__(self, messages: int, per: float, clock: Callable[[], float]) -> None:
        if isinstance(messages, bool) or not isinstance(messages, int) or messages < 0:
            raise ValueError(f"messages must be an integer of at least 0, not {messages!r}")
        if not per > 0:
            raise ValueError(f"per must be a positive number of seconds, not {per!r}")
        refusal = smtpwire.Reply(421, "Error: too many messages, try again later", (4, 7, 0))
        super().__init__("mail", Fail(refusal))
        self.messages = messages
        self.per = per
        self._clock = clock
        self._accepted: collections.deque[float] = collections.deque()

    def fires(self, arguments: Sequence[str]) -> bool:
        """Whether this MAIL is one too many (an accepted one is counted in the window)."""
        now = self._clock()
        while self._accepted and self._accepted[0] <= now - self.per:
            self._accepted.popleft()
        if len(self._accepted) < self.messages:
            self._accepted.append(now)
            return False
        self.hits += 1
        return True

    def __repr__(self) -> str:
        return f"<RateLimit {self.messages} per {self.per} s hits={self.hits}>"


@dataclass(frozen=True)
class Throttle:
    """Read at most ``bytes_per_second`` from each connection (MailHog's Jim does it): slow networks, timeouts."""

    bytes_per_second: float


class Faults:
    """The rules in force on one server, shared by the loop thread (which fires them) and the tests (which set them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._throttles: list[Throttle] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def add_throttle(self, throttle: Throttle) -> Throttle:
        with self._lock:
            self._throttles.append(throttle)
        return throttle

    def remove(self, faults: Iterable[Fault | Throttle]) -> None:
        gone = set(map(id, faults))
        with self._lock:
            self._faults = [fault for fault in self._faults if id(fault) not in gone]
            self._throttles = [throttle for throttle in self._throttles if id(throttle) not in gone]

    def read_rate(self) -> float | None:
        """The bytes per second a connection may be read at now (the slowest throttle), or ``None``: unpaced."""
        with self._lock:
            return min((throttle.bytes_per_second for throttle in self._throttles), default=None)

    def due(self, point: Point, arguments: Sequence[str] = ()) -> tuple[float, Fail | Disconnect | None]:
        """What to do at ``point``: the total delay, then the first failure or disconnect that fires (if any)."""
        delay = 0.0
        outcome: Fail | Disconnect | None = None
        with self._lock:
            for fault in self._faults:
                if fault.point != point:
                    continue
                if isinstance(fault.action, Delay):
                    delay += fault.action.seconds if fault.fires(arguments) else 0.0
                elif outcome is None and fault.fires(arguments):
                    outcome = fault.action
        return delay, outcome


#: RFC 3463 subjects of a bare code's enhanced status: addressing for MAIL and RCPT, security for AUTH.
_SUBJECTS: dict[Point, int] = {"mail": 1, "rcpt": 1, "auth": 7}


def injected_reply(point: Point, reply: smtpwire.Reply | int | None) -> smtpwire.Reply:
    """The reply a failure answers with: as given, or built from a bare code."""
    if point == "starttls":
        if reply not in (None, 454) and not (isinstance(reply, smtpwire.Reply) and reply.code == 454):
            raise ValueError("the core answers STARTTLS itself: an injected STARTTLS failure is its 454 4.7.0")
        return smtpwire.Reply(454, "TLS not available", (4, 7, 0))
    if reply is None:
        reply = 554 if point == "connect" else 451
    if isinstance(reply, int):
        reply = smtpwire.Reply(reply, "Injected failure", (reply // 100, _SUBJECTS.get(point, 0), 0))
    if point == "connect" and reply.code not in (421, 554):
        raise ValueError("a refused connection is answered 554 (or 421, which closes it)")
    if not 400 <= reply.code < 600:
        raise ValueError(f"an injected failure needs a 4xx or 5xx reply, not {reply.code}")
    return reply
