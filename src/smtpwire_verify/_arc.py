"""ARC chain validation (RFC 8617), sans-IO: the structure and clock checked here, the signatures by dkimpy.

The check reads the ARC sets, refuses a chain that is broken in shape
(a gap, a duplicate, more than 50 instances, the latest seal saying
``cv=fail``) before any query, asks every ARC-Message-Signature and
ARC-Seal key at once, then hands dkimpy a DNS function answering from
those answers.  dkimpy checks ``t=``/``x=`` against ``time.time()``; they
are checked against the ``now`` input here first, so that with a real
clock dkimpy's check never decides anything.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import authres  # type: ignore[import-untyped]
import dkim  # type: ignore[import-untyped]

from ._check import Steps, ask
from ._dkim import (
    MAX_HEADER_BLOCK,
    MAX_SIGNATURE_FIELD,
    Message,
    PublicKey,
    body_start,
    key_from_answer,
    key_name,
    parse_message,
    time_problem,
)
from ._dns import DNSAnswer, DNSQuery, DNSStatus, RRType
from ._results import MethodResult
from ._tags import parse_tag_list

#: RFC 8617 4.2.1: a chain has at most 50 ARC sets.
MAX_INSTANCES = 50
#: A reason taken from dkimpy's messages is cut to this length (they may quote the header).
MAX_REASON = 120

_AAR = b"arc-authentication-results"
_AMS = b"arc-message-signature"
_SEAL = b"arc-seal"
_LABELS = {_AAR: "ARC-Authentication-Results", _AMS: "ARC-Message-Signature", _SEAL: "ARC-Seal"}
_MANDATORY = {_AMS: ("i", "a", "b", "bh", "d", "h", "s"), _SEAL: ("i", "a", "b", "cv", "d", "s")}
_AAR_INSTANCE = re.compile(rb"\s*i\s*=\s*([0-9]{1,3})\s*;")
_INSTANCE = re.compile(r"[0-9]{1,3}\Z")
_ARC_FIELD = re.compile(rb"(?im)^arc-(?:seal|message-signature|authentication-results)[ \t]*:")


@dataclass(frozen=True, slots=True)
class ARCResult:
    """The verdict on a message's ARC chain (RFC 8617 5.2) and what its oldest passing hop recorded.

    ``oldest_pass`` is RFC 8617's oldest-pass: 0 when every AMS still
    validates, else the lowest instance from which on they all do; ``None``
    unless the chain passes.  ``remote_ip`` is the ``smtp.remote-ip`` (or
    ``iprev``'s ``policy.iprev``) in that hop's ARC-Authentication-Results.
    """

    result: str
    instances: int
    reason: str | None = None
    oldest_pass: int | None = None
    remote_ip: str | None = None

    def method_result(self) -> MethodResult:
        """``arc=<result>`` with ``header.oldest-pass`` (when not 0) and ``smtp.remote-ip`` as known (RFC 8617 7.2)."""
        properties: list[tuple[str, str]] = []
        if self.oldest_pass:
            properties.append(("header.oldest-pass", str(self.oldest_pass)))
        if self.remote_ip:
            properties.append(("smtp.remote-ip", self.remote_ip))
        return MethodResult("arc", self.result, self.reason, tuple(properties))


@dataclass(frozen=True, slots=True)
class _Chain:
    """The ARC sets by instance: the AAR's raw value and the AMS's and seal's tags."""

    results: dict[int, bytes]
    signatures: dict[int, dict[str, str]]
    seals: dict[int, dict[str, str]]


def check_arc(message: bytes, *, now: int, min_key_bits: int = 1024) -> Steps[ARCResult]:
    """Validate the ARC chain of ``message`` at time ``now`` (RFC 8617 5.2).

    ``none`` without ARC header fields; ``pass`` or ``fail`` otherwise.  RFC
    8617 has no temperror: a key query that failed for now makes the chain
    ``fail`` with a reason saying so (the safe side: a failed chain
    overrides nothing), as a key too small (under ``min_key_bits``) does.
    """
    cut = body_start(message)
    if cut is not None and not _ARC_FIELD.search(message, 0, cut):  # most mail: no need to parse it
        return ARCResult("none", 0)
    parsed = parse_message(message)
    if isinstance(parsed, str):
        sealed = _ARC_FIELD.search(message, 0, MAX_HEADER_BLOCK)
        return ARCResult("fail" if sealed else "none", 0, parsed)
    fields = [(name.lower(), value) for name, value in parsed.headers if name.lower() in (_AAR, _AMS, _SEAL)]
    if not fields:
        return ARCResult("none", 0)
    chain = _chain(fields)
    if isinstance(chain, str):
        return ARCResult("fail", 0, chain)
    instances = len(chain.seals)
    problem = _chain_problem(chain, instances, now)
    if problem:
        return ARCResult("fail", instances, problem)
    signers = (*chain.signatures.values(), *chain.seals.values())
    names = [name for tags in signers if (name := key_name(tags["s"], tags["d"]))]  # all valid: checked above
    answers = yield from ask(*(DNSQuery(name, RRType.TXT) for name in names))
    if any(answer.status is DNSStatus.TEMPFAIL for answer in answers.values()):
        return ARCResult("fail", instances, "key query failed for now")
    return _validated(parsed, chain, instances, answers, min_key_bits)


def _chain(fields: list[tuple[bytes, bytes]]) -> _Chain | str:
    """The sets by instance, or why the header fields do not form them (RFC 8617 4.2)."""
    if len(fields) > 3 * MAX_INSTANCES:
        return f"more than {MAX_INSTANCES} ARC sets"
    chain = _Chain({}, {}, {})
    for name, value in fields:
        problem = _add(chain, name, value)
        if problem:
            return problem
    count = len(chain.seals)
    expected = set(range(1, count + 1))
    if not (set(chain.seals) == set(chain.signatures) == set(chain.results) == expected):
        return "ARC sets are incomplete or not numbered 1 to N"
    return chain


def _add(chain: _Chain, name: bytes, value: bytes) -> str | None:
    label = _LABELS[name]
    if len(value) > MAX_SIGNATURE_FIELD:
        return f"{label} over {MAX_SIGNATURE_FIELD} octets"
    if name == _AAR:
        match = _AAR_INSTANCE.match(value)
        return _place(chain.results, int(match.group(1)) if match else 0, value, label)
    tags = parse_tag_list(value.decode("latin-1"))
    if tags is None or any(tag not in tags for tag in _MANDATORY[name]) or not _INSTANCE.match(tags["i"]):
        return f"{label} has malformed or missing tags"
    return _place(chain.signatures if name == _AMS else chain.seals, int(tags["i"]), tags, label)


def _place(by_instance: dict[int, Any], instance: int, value: object, label: str) -> str | None:
    if not 1 <= instance <= MAX_INSTANCES:
        return f"{label} has no instance from 1 to {MAX_INSTANCES}"
    if instance in by_instance:
        return f"{label} i={instance} appears twice"
    by_instance[instance] = value
    return None


def _chain_problem(chain: _Chain, instances: int, now: int) -> str | None:
    """A fail found without keys: the latest seal's cv=fail (RFC 8617 5.2 step 2), a clock or a name."""
    if chain.seals[instances]["cv"] == "fail":
        return f"ARC-Seal i={instances} says cv=fail"
    for label, by_instance in (("ARC-Message-Signature", chain.signatures), ("ARC-Seal", chain.seals)):
        for instance, tags in by_instance.items():
            problem = time_problem(tags, now)
            if problem or key_name(tags["s"], tags["d"]) is None:
                return f"{label} i={instance}: {problem or 's= or d= is not a domain name'}"
    return None


def _validated(
    message: Message, chain: _Chain, instances: int, answers: Mapping[DNSQuery, DNSAnswer], min_key_bits: int
) -> ARCResult:
    """dkimpy's verdict on the signatures, given keys from ``answers`` only."""
    records = {query.name: _usable_record(answer) for query, answer in answers.items()}

    def dnsfunc(name: bytes, timeout: float = 0) -> bytes | None:
        return records.get(name.decode("latin-1").rstrip(".").lower())

    arc = dkim.ARC(minkey=min_key_bits)
    arc.headers, arc.body = message.headers, message.body
    try:
        state, sets, reason = arc.verify(dnsfunc=dnsfunc)
    except Exception:  # dkimpy raises more than DKIMException on odd input (IndexError, ValueError)
        return ARCResult("fail", instances, "ARC header fields unusable")
    if state != dkim.CV_Pass:
        return ARCResult("fail", instances, _printable(str(reason)))
    oldest = _oldest_pass(sets)
    return ARCResult("pass", instances, None, oldest, _remote_ip(chain.results[max(oldest, 1)]))


def _usable_record(answer: DNSAnswer) -> bytes | None:
    """The key record for dkimpy, only if our own checks (size, one record, key bounds) accept it."""
    key = key_from_answer(answer)
    return answer.records[0].encode("latin-1") if isinstance(key, PublicKey) else None


def _oldest_pass(sets: list[dict[str, Any]]) -> int:
    """RFC 8617 5.2 step 6: going back from the newest, the instance after the first AMS that fails; 0 if none."""
    for verified in sets:  # dkimpy lists them newest first
        if not verified["ams-valid"]:
            return int(verified["instance"]) + 1
    return 0


def _remote_ip(aar: bytes) -> str | None:
    """The client address the hop recorded: ``smtp.remote-ip`` of any result, else ``iprev``'s ``policy.iprev``."""
    body = aar.split(b";", 1)[1].decode("utf-8", "replace")
    try:
        header = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + body)
    except Exception:  # authres raises its own SyntaxError and others on malformed text
        return None
    found = [p.value for r in header.results for p in r.properties if (p.type, p.name) == ("smtp", "remote-ip")]
    found += [
        p.value
        for r in header.results
        if r.method == "iprev"
        for p in r.properties
        if (p.type, p.name) == ("policy", "iprev")
    ]
    return next((str(value) for value in found if _is_address(str(value))), None)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _printable(text: str) -> str:
    return "".join(char if " " <= char <= "~" else "?" for char in text)[:MAX_REASON]
