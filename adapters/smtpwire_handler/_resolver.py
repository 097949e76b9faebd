"""The adapters' answers to the checks' DNS questions: dnspython behind a shared, bounded TTL cache.

``Resolver`` (blocking) and ``AsyncResolver`` (asyncio and trio, through
anyio) share everything but the waiting: the nameserver list, the reading of
dnspython's answers into ``DNSAnswer`` values, and the ``DNSCache`` that all
sessions of a server use.  A check runs under a time budget for the whole
message: once it is spent, what is not cached is answered TEMPFAIL without
asking, so a slow or silent DNS server delays a message by at most the
budget.  dnspython (the ``verify`` extra) and anyio are imported when a
resolver is made or used, so the handler package itself needs neither.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from smtpwire_verify import NODATA, NXDOMAIN, TEMPFAIL, Check, DNSAnswer, DNSQuery, DNSStatus, RRType
from smtpwire_verify import run as run_check

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.message
    import dns.name
    import dns.rdatatype
    import dns.resolver
    import dns.rrset

R = TypeVar("R")
DNS_PORT = 53
#: What to ask dnspython: the absolute name and the type.
_Ask = tuple["dns.name.Name", "dns.rdatatype.RdataType"]


class DNSCache:
    """Answers already had, shared by all sessions of a server, so a busy sender costs one lookup per TTL.

    Keyed by (lowercased name, type); at most ``max_entries``, the least
    recently used going first.  An answer lives for its record TTL, a
    negative one (NXDOMAIN, NODATA) for its SOA minimum (RFC 2308 5) or
    ``negative_ttl`` when the response had no SOA, all within
    [``min_ttl``, ``max_ttl``]; TEMPFAIL is never kept.  Thread-safe.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        *,
        max_ttl: float = 3600.0,
        min_ttl: float = 0.0,
        negative_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"DNSCache max_entries must be a positive int, not {max_entries!r}")
        for label, seconds in (("max_ttl", max_ttl), ("min_ttl", min_ttl), ("negative_ttl", negative_ttl)):
            _require_seconds(f"DNSCache {label}", seconds, allow_zero=True)
        if min_ttl > max_ttl:
            raise ValueError(f"DNSCache min_ttl ({min_ttl}) is above max_ttl ({max_ttl})")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.min_ttl = min_ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, RRType], tuple[float, DNSAnswer]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, query: DNSQuery) -> DNSAnswer | None:
        """The answer kept for ``query`` if it has not expired, else ``None``."""
        key = _cache_key(query)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, answer = entry
            if self._clock() >= expires:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return answer

    def put(self, query: DNSQuery, answer: DNSAnswer, ttl: float | None = None) -> None:
        """Keep ``answer`` for ``ttl`` seconds (``None``: the response gave none, so ``negative_ttl``)."""
        if answer.status is DNSStatus.TEMPFAIL:
            return
        lifetime = min(max(self.negative_ttl if ttl is None else ttl, self.min_ttl), self.max_ttl)
        if lifetime <= 0:
            return
        key = _cache_key(query)
        with self._lock:
            self._entries[key] = (self._clock() + lifetime, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class _DNSPythonResolver:
    """What both resolvers share: settings, the cache, and turning dnspython's outcome into a ``DNSAnswer``."""

    def __init__(self, nameservers: Sequence[str], timeout: float, cache: DNSCache | None, kind: type[Any]) -> None:
        _require_seconds("Resolver timeout", timeout, allow_zero=False)
        self.timeout = timeout
        self.cache = cache if cache is not None else DNSCache()
        self.nameservers = tuple(parse_nameserver(text) for text in _as_sequence(nameservers))
        self._dns = _make_dnspython(kind, self.nameservers, timeout)

    def _before_asking(self, query: DNSQuery, remaining: float) -> DNSAnswer | _Ask:
        """The answer known without asking (a name that cannot exist, the cache, a spent budget), or what to ask."""
        cached = self.cache.get(query)  # first: the usual answer, and the cheapest
        if cached is not None:
            return cached
        name = _absolute_name(query.name)
        if name is None:
            return NXDOMAIN
        if remaining <= 0:
            return TEMPFAIL
        import dns.rdatatype

        return name, dns.rdatatype.RdataType.make(query.rdtype.value)

    def answer_from_cache(self, check: Check[Any]) -> bool:
        """Give ``check`` every answer known without asking; True if that finished it.

        What lets a hook answer inline, with no wait, while the cache is
        warm; a check left unfinished goes on with ``run`` from where it stopped.
        """
        while not check.done:
            for query in check.queries():
                known = self._before_asking(query, self.timeout)
                if not isinstance(known, DNSAnswer):
                    return False
                check.answer(query, known)
        return True

    def _after_asking(self, query: DNSQuery, outcome: dns.resolver.Answer | Exception) -> DNSAnswer:
        answer, ttl = _read_outcome(query.rdtype, outcome)
        self.cache.put(query, answer, ttl)
        return answer

    def _lifetime(self, remaining: float) -> float:
        return min(self.timeout, remaining)


class Resolver(_DNSPythonResolver):
    """Blocking DNS answers for the checks (the blocking adapter), one query at a time.

    ``nameservers``: "HOST", "HOST:PORT" or "[IPv6]:PORT", HOST an IP
    address; none means the system's resolver configuration.  ``timeout`` is
    each query's lifetime in seconds (a silent server is given up on up to
    0.1 s later: dnspython pauses before it stops); ``cache`` is shared by
    giving the same one to several resolvers (by default each has its own).
    """

    def __init__(self, nameservers: Sequence[str] = (), *, timeout: float = 2.0, cache: DNSCache | None = None) -> None:
        import dns.resolver

        super().__init__(nameservers, timeout, cache, dns.resolver.Resolver)

    def resolve(self, query: DNSQuery) -> DNSAnswer:
        """The answer to ``query``; never raises for anything DNS does."""
        return self._resolve(query, self.timeout)

    def run(self, check: Check[R], *, budget: float = 10.0) -> R:
        """Drive ``check`` to its result within ``budget`` seconds in all; what is left then is TEMPFAIL."""
        _require_seconds("budget", budget, allow_zero=True)
        deadline = time.monotonic() + budget
        return run_check(check, lambda query: self._resolve(query, deadline - time.monotonic()))

    def _resolve(self, query: DNSQuery, remaining: float) -> DNSAnswer:
        step = self._before_asking(query, remaining)
        if isinstance(step, DNSAnswer):
            return step
        outcome: dns.resolver.Answer | Exception
        try:
            outcome = self._dns.resolve(*step, lifetime=self._lifetime(remaining), search=False)
        except _dns_errors() as error:
            outcome = error
        return self._after_asking(query, outcome)


class AsyncResolver(_DNSPythonResolver):
    """``Resolver`` for the asyncio and anyio adapters, on asyncio or trio: a round's queries go out together."""

    def __init__(self, nameservers: Sequence[str] = (), *, timeout: float = 2.0, cache: DNSCache | None = None) -> None:
        import dns.asyncresolver

        super().__init__(nameservers, timeout, cache, dns.asyncresolver.Resolver)

    async def resolve(self, query: DNSQuery) -> DNSAnswer:
        """The answer to ``query`` within ``timeout``; never raises for anything DNS does."""
        import anyio

        answers = await self._round((query,), anyio.current_time() + self.timeout)
        return answers.get(query, TEMPFAIL)

    async def run(self, check: Check[R], *, budget: float = 10.0) -> R:
        """Drive ``check`` to its result within ``budget`` seconds in all; what is left then is TEMPFAIL."""
        import anyio

        _require_seconds("budget", budget, allow_zero=True)
        deadline = anyio.current_time() + budget
        while not check.done:
            queries = check.queries()
            answers = await self._round(queries, deadline)
            for query in queries:
                check.answer(query, answers.get(query, TEMPFAIL))
        return check.result

    async def _round(self, queries: Sequence[DNSQuery], deadline: float) -> Mapping[DNSQuery, DNSAnswer]:
        """One round's answers, the uncached ones asked concurrently; those not in by ``deadline`` are missing."""
        import anyio

        remaining = deadline - anyio.current_time()
        answers: dict[DNSQuery, DNSAnswer] = {}
        to_ask: dict[DNSQuery, _Ask] = {}
        for query in queries:
            step = self._before_asking(query, remaining)
            if isinstance(step, DNSAnswer):
                answers[query] = step
            else:
                to_ask[query] = step

        async def ask(query: DNSQuery, step: _Ask) -> None:
            answers[query] = await self._ask(query, step, remaining)

        if to_ask:
            with anyio.move_on_after(remaining):
                async with anyio.create_task_group() as group:
                    for query, step in to_ask.items():
                        group.start_soon(ask, query, step)
        return answers

    async def _ask(self, query: DNSQuery, step: _Ask, remaining: float) -> DNSAnswer:
        import dns.asyncbackend

        # dnspython remembers the first backend it sniffs; name the running one each time (asyncio, then trio).
        backend = dns.asyncbackend.get_backend(dns.asyncbackend.sniff())
        resolver = cast("dns.asyncresolver.Resolver", self._dns)
        outcome: dns.resolver.Answer | Exception
        try:
            outcome = await resolver.resolve(*step, lifetime=self._lifetime(remaining), search=False, backend=backend)
        except _dns_errors() as error:
            outcome = error
        return self._after_asking(query, outcome)


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"HOST"``, ``"HOST:PORT"`` or ``"[IPv6]:PORT"`` as (address, port); a clear ``ValueError`` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"a DNS resolver is given as a string HOST[:PORT], not {text!r}")
    host, port_text = _split_host_port(text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"DNS resolver {text!r}: {host!r} is not an IP address (write HOST, HOST:PORT or [IPv6]:PORT)"
        ) from None
    if text.startswith("[") and address.version != 6:
        raise ValueError(f"DNS resolver {text!r}: brackets are for IPv6 addresses only")
    return str(address), _port(text, port_text)


def _split_host_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"DNS resolver {text!r}: write an IPv6 address with a port as [ADDRESS]:PORT")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def _port(text: str, port_text: str | None) -> int:
    if port_text is None:
        return DNS_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"DNS resolver {text!r}: the port must be a number from 1 to 65535")
    return int(port_text)


def _as_sequence(nameservers: Sequence[str]) -> Sequence[str]:
    if isinstance(nameservers, str):
        raise ValueError(f"nameservers is a list of HOST[:PORT] strings; write [{nameservers!r}]")
    return nameservers


def _require_seconds(label: str, seconds: float, *, allow_zero: bool) -> None:
    valid = isinstance(seconds, int | float) and not isinstance(seconds, bool) and math.isfinite(seconds)
    if not valid or seconds < 0 or (seconds == 0 and not allow_zero):
        wanted = "a number of seconds, not negative" if allow_zero else "a positive number of seconds"
        raise ValueError(f"{label} must be {wanted}, not {seconds!r}")


def _make_dnspython(kind: type[Any], nameservers: Sequence[tuple[str, int]], timeout: float) -> Any:
    """A dnspython resolver asking ``nameservers`` (none: the system's), no search list, no cache of its own."""
    import dns.nameserver
    import dns.resolver

    try:
        resolver = kind(configure=not nameservers)
    except dns.resolver.NoResolverConfiguration as error:
        raise RuntimeError(
            f"no DNS resolver was given and the system's resolver configuration cannot be used ({error});"
            " give the nameservers to ask"
        ) from error
    if nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers]
    resolver.lifetime = timeout
    # One try per server within the lifetime: dnspython's pause before a second round is not bounded by it.
    resolver.timeout = timeout / max(len(resolver.nameservers), 1)
    resolver.search = []
    resolver.use_search_by_default = False
    resolver.cache = None
    return resolver


def _dns_errors() -> tuple[type[Exception], ...]:
    import dns.exception

    return dns.exception.DNSException, OSError


def _absolute_name(text: str) -> dns.name.Name | None:
    """``text`` as an absolute DNS name, or ``None`` when no such name can exist (RFC 7208 4.3: as NXDOMAIN)."""
    import dns.exception
    import dns.name

    try:
        labels = [label.encode("ascii") for label in text.removesuffix(".").split(".")]
        return dns.name.Name([*labels, b""])
    except (UnicodeEncodeError, dns.exception.DNSException):
        return None


def _cache_key(query: DNSQuery) -> tuple[str, RRType]:
    return query.name.lower().removesuffix("."), query.rdtype


def _read_outcome(rdtype: RRType, outcome: dns.resolver.Answer | Exception) -> tuple[DNSAnswer, float | None]:
    """The ``DNSAnswer`` for what dnspython returned or raised, and how long it may be kept."""
    import dns.resolver

    if isinstance(outcome, dns.resolver.Answer) and outcome.rrset is not None:
        return DNSAnswer.of(*_RECORD_TEXT[rdtype](outcome.rrset)), outcome.chaining_result.minimum_ttl
    if isinstance(outcome, dns.resolver.NXDOMAIN):
        return NXDOMAIN, _negative_ttl(next(iter(outcome.responses().values()), None))  # type: ignore[no-untyped-call]
    if isinstance(outcome, dns.resolver.NoAnswer):
        return NODATA, _negative_ttl(outcome.response())  # type: ignore[no-untyped-call]
    return TEMPFAIL, None


def _negative_ttl(response: dns.message.Message | None) -> float | None:
    """RFC 2308 5: the lesser of the SOA's TTL and its minimum field; ``None`` without an SOA."""
    if response is None:
        return None
    ttls = [min(rrset.ttl, rdata.minimum) for rrset in response.authority for rdata in rrset if _is_soa(rrset)]
    return min(ttls, default=None)


def _is_soa(rrset: dns.rrset.RRset) -> bool:
    import dns.rdatatype

    return rrset.rdtype == dns.rdatatype.SOA


def _name_text(name: dns.name.Name) -> str:
    """A name without its final dot; the root (a null MX, RFC 7505) as ``""``."""
    return "" if len(name) <= 1 else name.to_text(omit_final_dot=True)


def _txt(rrset: dns.rrset.RRset) -> tuple[str, ...]:
    return tuple(b"".join(rdata.strings).decode("latin-1") for rdata in rrset)


def _address(rrset: dns.rrset.RRset) -> tuple[str, ...]:
    return tuple(str(rdata.address) for rdata in rrset)


def _mx(rrset: dns.rrset.RRset) -> tuple[str, ...]:
    return tuple(_name_text(rdata.exchange) for rdata in sorted(rrset, key=lambda rdata: rdata.preference))


def _ptr(rrset: dns.rrset.RRset) -> tuple[str, ...]:
    return tuple(_name_text(rdata.target) for rdata in rrset)


_RECORD_TEXT: dict[RRType, Callable[[dns.rrset.RRset], tuple[str, ...]]] = {
    RRType.TXT: _txt,
    RRType.A: _address,
    RRType.AAAA: _address,
    RRType.MX: _mx,
    RRType.PTR: _ptr,
}
