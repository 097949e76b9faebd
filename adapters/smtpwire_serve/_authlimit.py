"""A budget of failed AUTH attempts per client, for ``smtpwire serve`` (Dovecot's auth penalty, Postfix's anvil).

One session may fail ``max_auth_failures`` times (the core's limit); this
counts across sessions, per client network: an IPv4 address, or an IPv6 /64
(what one host is usually given).  An attempt from a client that has failed
``n`` times waits ``delay * 2**(n-1)`` seconds (at most ``max_delay``) before
it is checked, and once ``limit`` failures are counted the client's attempts
are refused without being checked (454 4.7.0) until ``window`` seconds have
passed without any.  Attempts still running count as failures until they
end, so parallel sessions cannot check more guesses than the budget holds.

The table is bounded: a client is forgotten ``window`` seconds after it was
last seen, and beyond ``max_clients`` the least recently seen goes first.
Time comes from ``clock`` (``time.monotonic``), so tests can move it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtpwire_handler.kit import client_key

log = logging.getLogger("smtpwire.serve")

#: Failed attempts a client may make in ``DEFAULT_WINDOW`` seconds.
DEFAULT_LIMIT = 10
#: Seconds a failure counts (and a refused client stays refused after its last attempt).
DEFAULT_WINDOW = 900.0
#: Seconds the attempt after a first failure waits; it doubles with each further one (Dovecot: 2).
DEFAULT_DELAY = 2.0
#: The longest wait (Dovecot's AUTH_PENALTY_MAX_SECS).
MAX_DELAY = 15.0
#: Clients remembered at most: some 200 bytes each.
MAX_CLIENTS = 16384


def client_network(host: str) -> str:
    """Whom a budget belongs to: who counts as one client for the session limit too (``client_key``), else ``host``."""
    return client_key((host,)) or host  # a Unix socket ("unix"): one budget for all its clients, like 127.0.0.1


@dataclass(frozen=True)
class Attempt:
    """One AUTH attempt's place in the budget: wait ``delay`` seconds, then refuse it or check it and ``end()`` it."""

    client: str
    delay: float
    refused: bool


@dataclass
class _Client:
    seen: float
    failures: int = 0
    running: int = 0  # attempts begun and not yet ended
    last_failure: float = 0.0  # or the last refused attempt
    reported: bool = False  # the refusal was logged


class FailureBudget:
    """Failed AUTH attempts per client network; ``begin()`` each attempt, then ``end()`` it unless refused."""

    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        window: float = DEFAULT_WINDOW,
        delay: float = DEFAULT_DELAY,
        *,
        max_delay: float = MAX_DELAY,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or delay < 0 or max_delay < 0 or max_clients < 1:
            raise ValueError("the AUTH failure limit and window must be positive, the delays not negative")
        self.limit = limit
        self.window = window
        self.delay = delay
        self.max_delay = max(max_delay, delay)
        self.max_clients = max_clients
        self.clock = clock
        self._clients: collections.OrderedDict[str, _Client] = collections.OrderedDict()  # least recently seen first

    def __len__(self) -> int:
        """Clients remembered now."""
        return len(self._clients)

    def wait_after(self, failures: int) -> float:
        """Seconds an attempt waits after ``failures`` (counting attempts still running)."""
        if failures <= 0:
            return 0.0
        return min(self.delay * 2.0 ** min(failures - 1, 32), self.max_delay)

    def begin(self, host: str) -> Attempt:
        """An attempt from ``host`` starts: how long it waits, and whether it is refused unchecked."""
        now = self.clock()
        self._forget_before(now - self.window)
        network = client_network(host)
        client = self._seen(network, now)
        if now - client.last_failure >= self.window:  # the failures have aged out
            client.failures, client.reported = 0, False
        counted = client.failures + client.running
        if counted >= self.limit:
            client.last_failure = now  # a client that keeps trying stays refused
            self._log_refusal_once(host, network, client)
            return Attempt(network, self.wait_after(counted), refused=True)
        client.running += 1
        return Attempt(network, self.wait_after(counted), refused=False)

    def end(self, attempt: Attempt, *, failed: bool) -> None:
        """The attempt was checked (``failed``: it did not authenticate) or given up without a guess."""
        if attempt.refused:
            return
        now = self.clock()
        client = self._seen(attempt.client, now)
        client.running = max(client.running - 1, 0)  # 0: forgotten meanwhile, and seen again just now
        if failed:
            client.failures += 1
            client.last_failure = now
        if not (client.failures or client.running):
            del self._clients[attempt.client]

    def _seen(self, network: str, now: float) -> _Client:
        client = self._clients.get(network)
        if client is None:
            client = self._clients[network] = _Client(now)
            if len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            client.seen = now
            self._clients.move_to_end(network)
        return client

    def _forget_before(self, horizon: float) -> None:
        """Drop the clients not seen since ``horizon``: they are all at the front."""
        while self._clients:
            network, client = next(iter(self._clients.items()))
            if client.seen > horizon:
                return
            del self._clients[network]

    def _log_refusal_once(self, host: str, network: str, client: _Client) -> None:
        """One warning per client while it stays refused, not one per attempt."""
        if client.reported:
            return
        client.reported = True
        log.warning(
            "AUTH from %s refused: %d failed or running attempts from %s within %g s (until %g s pass without one)",
            host,
            client.failures + client.running,
            network,
            self.window,
            self.window,
        )
