"""The checks of one message put together: SPF at MAIL, then DKIM and ARC side by side, then DMARC on both."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from ._arc import ARCResult, check_arc
from ._author import author_domains
from ._check import Steps, gather
from ._dkim import DKIMResult, check_dkim
from ._dmarc import DMARCResult, check_dmarc
from ._header import authentication_results
from ._results import MethodResult
from ._spf import SPFResult, check_spf

#: Every method, in the order Authentication-Results lists them.
METHODS = ("spf", "dkim", "dmarc", "arc")
#: What each method needs run too: DMARC is built on SPF's and DKIM's results.
_NEEDS = {"spf": {"spf"}, "dkim": {"dkim"}, "dmarc": {"spf", "dkim", "dmarc"}, "arc": {"arc"}}


def methods_from(names: Iterable[str]) -> frozenset[str]:
    """The methods to run for ``names`` (``"all"`` is every one); ``ValueError`` names an unknown one."""
    wanted: set[str] = set()
    for name in names:
        name = name.strip().lower()
        if name == "all":
            wanted.update(METHODS)
        elif name in _NEEDS:
            wanted.update(_NEEDS[name])
        else:
            raise ValueError(f"unknown verification method {name!r}: choose from {', '.join(METHODS)} or all")
    return frozenset(wanted)


@dataclass(frozen=True)
class Verdict:
    """What the checks found for one message (a method not run is ``None`` or ``()``)."""

    spf: SPFResult | None = None
    dkim: tuple[DKIMResult, ...] = ()
    dmarc: DMARCResult | None = None
    arc: ARCResult | None = None

    @functools.cached_property
    def results(self) -> tuple[MethodResult, ...]:
        """Each method's result, in the order Authentication-Results lists them (made once)."""
        spf = (self.spf.method_result(),) if self.spf is not None else ()
        dmarc = (self.dmarc.method_result(),) if self.dmarc is not None else ()
        arc = (self.arc.method_result(),) if self.arc is not None else ()
        return (*spf, *(result.method_result() for result in self.dkim), *dmarc, *arc)

    @property
    def disposition(self) -> str:
        """What the From domain's DMARC policy asks for this message: ``none``, ``quarantine`` or ``reject``."""
        return self.dmarc.disposition if self.dmarc is not None else "none"

    def header(self, authserv_id: str) -> bytes:
        """The Authentication-Results header field (RFC 8601), CRLF included."""
        return authentication_results(authserv_id, self.results)

    def summary(self) -> str:
        """``spf=pass dkim=pass dmarc=pass arc=none``: one word per method, for a log line."""
        return " ".join(f"{result.method}={result.result}" for result in self.results)


def verify_sender(ip: str, mail_from: str, helo: str, *, receiver: str, now: int = 0) -> Steps[Verdict]:
    """At MAIL: SPF for the MAIL FROM identity (the HELO identity for the null reverse-path)."""
    spf = yield from check_spf(ip, mail_from, helo, receiver=receiver, now=now)
    return Verdict(spf=spf)


def verify_message(
    message: bytes,
    sender: Verdict,
    methods: frozenset[str],
    *,
    now: int,
    sample: float,
    max_signatures: int = 5,
    min_key_bits: int = 1024,
) -> Steps[Verdict]:
    """At the end of data: DKIM and ARC (their key queries asked together), then DMARC over SPF and DKIM.

    ``sender`` is what ``verify_sender`` found at MAIL; ``now`` the time in
    seconds since the epoch (for DKIM's ``x=``), ``sample`` a number in
    [0, 1) for DMARC's ``pct=``: the caller's clock and randomness.
    """

    def nothing() -> Steps[None]:
        return None
        yield  # a generator that asks nothing

    dkim_steps = check_dkim(message, now=now, max_signatures=max_signatures, min_key_bits=min_key_bits)
    arc_steps = check_arc(message, now=now, min_key_bits=min_key_bits)
    dkim, arc = yield from gather(
        dkim_steps if "dkim" in methods else nothing(), arc_steps if "arc" in methods else nothing()
    )
    dmarc = None
    if "dmarc" in methods:
        spf = sender.spf
        dmarc = yield from check_dmarc(
            author_domains(message),
            spf=spf.method_result() if spf is not None else None,
            spf_domain=spf.domain if spf is not None else None,
            dkim=[result.method_result() for result in dkim],
            sample=sample,
        )
    return Verdict(spf=sender.spf, dkim=dkim or (), dmarc=dmarc, arc=arc)
