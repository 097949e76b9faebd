"""The SPF check (RFC 7208): ``check_host`` as section 4 defines it, and ``check_spf`` as an MTA runs it at MAIL.

Both are checks in the ``_check`` sense: generators that ask DNS questions
and are given the answers.  Every limit of RFC 7208 4.6.4 holds (10 terms
that look up DNS, 10 MX hosts per ``mx``, 10 names per PTR answer, 2 void
lookups), so the questions one check asks are bounded (``MAX_QUERIES``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace

from ._check import Steps, ask, ask_one
from ._dns import DNSAnswer, DNSQuery, DNSStatus, RRType
from ._results import MethodResult
from ._spf_macro import MacroString, expand, letters_used, parse_macro_string
from ._spf_record import LOOKUP_MECHANISMS, Mechanism, SPFRecord, SPFSyntaxError, is_spf_record, parse_record

__all__ = ["MAX_QUERIES", "SPFRecord", "SPFResult", "SPFSyntaxError", "check_host", "check_spf", "parse_record"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOKUP_LIMIT = 10
VOID_LIMIT = 2
NAMES_PER_ANSWER = 10
#: The most queries one check asks: the first TXT, 10 lookup terms of at most 1 + 10 queries each (an ``mx``),
#: the PTR names validated once for ``ptr`` and ``%{p}`` (1 + 10), and the explanation's TXT.
MAX_QUERIES = 1 + LOOKUP_LIMIT * (1 + NAMES_PER_ANSWER) + (1 + NAMES_PER_ANSWER) + 1
MAX_NAME = 253
#: Enough of an expanded domain-spec to cut to MAX_NAME by whole labels; and the longest explanation kept.
_EXPANDED_DOMAIN = 2 * MAX_NAME
MAX_EXPLANATION = 1024


@dataclass(frozen=True, slots=True)
class SPFResult:
    """The verdict on one identity, with what decided it (``reason``) and, for ``fail``, the explanation."""

    result: str
    identity: str
    sender: str
    domain: str
    explanation: str | None = None
    reason: str | None = None

    def method_result(self) -> MethodResult:
        """This result as ``spf=...`` of Authentication-Results (RFC 8601 2.7.2)."""
        if self.identity == "helo":
            return MethodResult("spf", self.result, self.reason, (("smtp.helo", self.domain),))
        return MethodResult("spf", self.result, self.reason, (("smtp.mailfrom", self.sender),))


class _Stop(Exception):
    """Ends the whole evaluation at once with ``result`` (temperror and permerror do, RFC 7208 4.6.4, 5)."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Verdict:
    result: str
    reason: str
    explanation: str | None = None


class _Evaluation:
    """What one ``check_host`` shares across its includes and redirects: the inputs and the limits' counters."""

    def __init__(self, ip: IPAddress, sender: str, helo: str, receiver: str, now: int) -> None:
        self.ip = ip
        self.sender = sender
        self.local_part, _, self.sender_domain = sender.rpartition("@")
        self.helo = helo
        self.receiver = receiver
        self.now = now
        self.lookups = 0
        self.voids = 0
        self.ptr_void = False
        self.validated: tuple[str, ...] | None = None

    @property
    def address_type(self) -> RRType:
        return RRType.A if self.ip.version == 4 else RRType.AAAA

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise _Stop("permerror", "too many DNS lookups")

    def count_void(self) -> None:
        self.voids += 1
        if self.voids > VOID_LIMIT:
            raise _Stop("permerror", "void lookup limit")

    def macro_value(self, letter: str, domain: str) -> str:
        """The value of ``%{letter}`` while evaluating ``domain`` (RFC 7208 7.3)."""
        return _MACRO_VALUES[letter](self, domain)


_MACRO_VALUES: dict[str, Callable[[_Evaluation, str], str]] = {
    "s": lambda evaluation, domain: evaluation.sender,
    "l": lambda evaluation, domain: evaluation.local_part or "postmaster",
    "o": lambda evaluation, domain: evaluation.sender_domain,
    "d": lambda evaluation, domain: domain,
    "i": lambda evaluation, domain: str(evaluation.ip) if evaluation.ip.version == 4 else _nibbles(evaluation.ip),
    "p": lambda evaluation, domain: _validated_name(evaluation.validated or (), domain),
    "v": lambda evaluation, domain: "in-addr" if evaluation.ip.version == 4 else "ip6",
    "h": lambda evaluation, domain: evaluation.helo,
    "c": lambda evaluation, domain: str(evaluation.ip),
    "r": lambda evaluation, domain: evaluation.receiver,
    "t": lambda evaluation, domain: str(evaluation.now),
}


def check_spf(ip: str, mail_from: str, helo: str, *, receiver: str = "unknown", now: int = 0) -> Steps[SPFResult]:
    """SPF at MAIL (RFC 7208 2.3, 2.4): the MAIL FROM identity, or ``postmaster@<helo>`` when it is empty."""
    address = mail_from.strip().removeprefix("<").removesuffix(">")
    identity, (local_part, _, domain) = "mailfrom", address.rpartition("@")
    if not address:
        identity, local_part, domain = "helo", "postmaster", helo
    ascii_domain = _a_label(domain)
    sender = f"{local_part or 'postmaster'}@{ascii_domain or domain}"
    if ascii_domain is None:
        return SPFResult("none", identity, sender, domain, reason="not a valid domain name")
    result = yield from check_host(ip, ascii_domain, sender, helo=helo, receiver=receiver, now=now)
    return replace(result, identity=identity)


def check_host(
    ip: str, domain: str, sender: str, *, helo: str, receiver: str = "unknown", now: int = 0
) -> Steps[SPFResult]:
    """RFC 7208 4: the SPF result for ``ip`` sending as ``sender`` with ``domain``'s policy.

    ``ip`` is the client's address as the I/O layer saw it (a ``ValueError``
    if it is not one); everything else comes from the peer and never raises.
    """
    evaluation = _Evaluation(_client_address(ip), sender, helo, receiver, now)
    try:
        verdict = yield from _evaluate(evaluation, domain, explain=True)
    except _Stop as stop:
        verdict = _Verdict(stop.result, stop.reason)
    return SPFResult(verdict.result, "mailfrom", sender, domain, verdict.explanation, verdict.reason)


def _nibbles(ip: IPAddress) -> str:
    """``%{i}`` of an IPv6 address: 32 dotted nibbles, in upper case as the RFC 7208 test suite expects."""
    return ".".join(ip.exploded.replace(":", "").upper())


@functools.lru_cache(maxsize=4096)  # a pure function of the client's address: each sender comes back often
def _client_address(ip: str) -> IPAddress:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _a_label(domain: str) -> str | None:
    """``domain`` in ASCII (IDNA A-labels), or ``None`` when it has no such form."""
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


@functools.lru_cache(maxsize=4096)
def is_fqdn(domain: str) -> bool:
    """A name ``check_host`` can evaluate (RFC 7208 4.3): ASCII, several labels of 1 to 63 octets, no literal."""
    name = domain[:-1] if domain.endswith(".") else domain
    labels = name.split(".")
    return (
        len(labels) > 1
        and _valid_name(name)
        and not name.startswith("[")
        and not all(label.isdigit() for label in labels)  # an IPv4 address written without its brackets
    )


def _valid_name(name: str) -> bool:
    """A name DNS can be asked about: printable ASCII (a space too), labels of 1 to 63 octets, 253 in all."""
    return (
        0 < len(name) <= MAX_NAME
        and name.isascii()
        and name.isprintable()
        and all(0 < len(label) <= 63 for label in name.split("."))
    )


def _evaluate(evaluation: _Evaluation, domain: str, *, explain: bool) -> Steps[_Verdict]:
    """check_host() on ``domain`` (a redirect or include runs it again), ending in a verdict or ``_Stop``."""
    if not is_fqdn(domain):
        return _Verdict("none", "not a valid domain name")
    domain = domain.rstrip(".")
    answer = yield from ask_one(DNSQuery(domain, RRType.TXT))
    if answer.status is DNSStatus.TEMPFAIL:
        raise _Stop("temperror", f"DNS failure looking up TXT {domain}")
    records = [text for text in answer.records if is_spf_record(text)]
    if not records:
        return _Verdict("none", "no SPF record")
    if len(records) > 1:
        raise _Stop("permerror", "several SPF records")
    try:
        record = parse_record(records[0])
    except SPFSyntaxError as error:
        raise _Stop("permerror", f"syntax error in record: {error}") from None
    return (yield from _run_record(evaluation, record, domain, explain=explain))


def _run_record(evaluation: _Evaluation, record: SPFRecord, domain: str, *, explain: bool) -> Steps[_Verdict]:
    for mechanism in record.mechanisms:
        if mechanism.kind in LOOKUP_MECHANISMS:
            evaluation.count_lookup()
        if (yield from _matches(evaluation, mechanism, domain)):
            result = _QUALIFIERS[mechanism.qualifier]
            explanation = None
            if result == "fail" and explain and record.explanation is not None:
                explanation = yield from _explanation(evaluation, record.explanation, domain)
            return _Verdict(result, f"matched {mechanism.text}", explanation)
    if record.redirect is None:
        return _Verdict("neutral", "no mechanism matched")
    evaluation.count_lookup()
    target = yield from _target(evaluation, record.redirect, domain)
    verdict = yield from _evaluate(evaluation, target, explain=explain)
    if verdict.result == "none":
        raise _Stop("permerror", f"redirect to {target!r}: {verdict.reason}")
    return verdict


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


def _matches(evaluation: _Evaluation, mechanism: Mechanism, domain: str) -> Steps[bool]:
    """Whether ``mechanism`` matches the client (RFC 7208 5)."""
    kind = mechanism.kind
    if kind == "all":
        return True
    if kind in ("ip4", "ip6"):
        return evaluation.ip in mechanism.network  # type: ignore[operator]
    target = domain if mechanism.domain is None else (yield from _target(evaluation, mechanism.domain, domain))
    if kind == "include":
        return (yield from _include(evaluation, target))
    if kind == "a":
        answer = yield from _lookup(evaluation, DNSQuery(target, evaluation.address_type))
        return _any_in_network(evaluation, answer, mechanism)
    if kind == "mx":
        return (yield from _mx(evaluation, target, mechanism))
    if kind == "ptr":
        return (yield from _ptr(evaluation, target))
    answer = yield from _lookup(evaluation, DNSQuery(target, RRType.A))  # "exists"
    return answer.status is DNSStatus.ANSWER


def _include(evaluation: _Evaluation, target: str) -> Steps[bool]:
    verdict = yield from _evaluate(evaluation, target, explain=False)
    if verdict.result == "none":
        raise _Stop("permerror", f"include:{target} has no SPF record")
    return verdict.result == "pass"


def _mx(evaluation: _Evaluation, target: str, mechanism: Mechanism) -> Steps[bool]:
    answer = yield from _lookup(evaluation, DNSQuery(target, RRType.MX))
    if len(answer.records) > NAMES_PER_ANSWER:
        raise _Stop("permerror", f"more than {NAMES_PER_ANSWER} MX records for {target}")
    hosts = [host for host in answer.records if _valid_name(host)]
    answers = yield from ask(*(DNSQuery(host, evaluation.address_type) for host in hosts))
    for host in hosts:
        if answers[DNSQuery(host, evaluation.address_type)].status is DNSStatus.TEMPFAIL:
            raise _Stop("temperror", f"DNS failure looking up {host}")
        if _any_in_network(evaluation, answers[DNSQuery(host, evaluation.address_type)], mechanism):
            return True
    return False


def _ptr(evaluation: _Evaluation, target: str) -> Steps[bool]:
    names = yield from _validated_names(evaluation)
    if evaluation.ptr_void:
        evaluation.count_void()
    suffix = "." + target.lower()
    return any(name.lower() == target.lower() or name.lower().endswith(suffix) for name in names)


def _validated_names(evaluation: _Evaluation) -> Steps[tuple[str, ...]]:
    """The client's PTR names whose addresses include it (RFC 7208 5.5), looked up once per check."""
    if evaluation.validated is not None:
        return evaluation.validated
    answer = yield from ask_one(DNSQuery(evaluation.ip.reverse_pointer, RRType.PTR))
    evaluation.ptr_void = answer.status in (DNSStatus.NXDOMAIN, DNSStatus.NODATA)
    names = [name for name in answer.records[:NAMES_PER_ANSWER] if _valid_name(name)]
    queries = {name: DNSQuery(name, evaluation.address_type) for name in names}
    answers = yield from ask(*queries.values())
    evaluation.validated = tuple(name for name in names if _has_address(answers[queries[name]], evaluation.ip))
    return evaluation.validated


def _validated_name(validated: tuple[str, ...], domain: str) -> str:
    """``%{p}``: ``domain`` if validated, else a validated subdomain of it, else any, else ``unknown``."""
    lowered = domain.lower()
    for name in validated:
        if name.lower() == lowered:
            return name
    for name in validated:
        if name.lower().endswith("." + lowered):
            return name
    return validated[0] if validated else "unknown"


def _has_address(answer: DNSAnswer, ip: IPAddress) -> bool:
    return any(_parse_address(record) == ip for record in answer.records)


def _parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _any_in_network(evaluation: _Evaluation, answer: DNSAnswer, mechanism: Mechanism) -> bool:
    prefix = mechanism.cidr4 if evaluation.ip.version == 4 else mechanism.cidr6
    network = ipaddress.ip_network(f"{evaluation.ip}/{prefix}", strict=False)
    for record in answer.records:
        address = _parse_address(record)
        if address is not None and address.version == evaluation.ip.version and address in network:
            return True
    return False


def _lookup(evaluation: _Evaluation, query: DNSQuery) -> Steps[DNSAnswer]:
    """Ask ``query``: a failure ends the check with temperror, no answer counts as a void lookup."""
    if not _valid_name(query.name):
        answer = DNSAnswer(DNSStatus.NXDOMAIN)
    else:
        answer = yield from ask_one(query)
    if answer.status is DNSStatus.TEMPFAIL:
        raise _Stop("temperror", f"DNS failure looking up {query.rdtype} {query.name}")
    if answer.status is not DNSStatus.ANSWER:
        evaluation.count_void()
    return answer


def _target(evaluation: _Evaluation, domain_spec: MacroString, domain: str) -> Steps[str]:
    """A domain-spec expanded, then cut to 253 octets by dropping labels from the left (RFC 7208 7.3)."""
    name = (yield from _expand(evaluation, domain_spec, domain, limit=_EXPANDED_DOMAIN, keep_right=True)).rstrip(".")
    while len(name) > MAX_NAME and "." in name:
        name = name.split(".", 1)[1]
    return name


def _expand(
    evaluation: _Evaluation, tokens: MacroString, domain: str, *, limit: int, keep_right: bool = False
) -> Steps[str]:
    if "p" in letters_used(tokens):
        yield from _validated_names(evaluation)
    return expand(tokens, lambda letter: evaluation.macro_value(letter, domain), limit=limit, keep_right=keep_right)


def _explanation(evaluation: _Evaluation, domain_spec: MacroString, domain: str) -> Steps[str | None]:
    """The ``exp=`` text for a fail, or ``None`` when anything about it is wrong (RFC 7208 6.2)."""
    target = yield from _target(evaluation, domain_spec, domain)
    if not _valid_name(target):
        return None
    answer = yield from ask_one(DNSQuery(target, RRType.TXT))
    if answer.status is not DNSStatus.ANSWER or len(answer.records) != 1:
        return None
    try:
        tokens = parse_macro_string(answer.records[0], explanation=True)
    except SPFSyntaxError:
        return None
    return (yield from _expand(evaluation, tokens, domain, limit=MAX_EXPLANATION))
