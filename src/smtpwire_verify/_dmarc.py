"""DMARC (RFC 7489): the policy record, its discovery in DNS, identifier alignment and the disposition.

The organizational domain comes from the public suffix list that
publicsuffixlist ships, ICANN and private sections both: the private
section names the suffixes under which different owners register
(``github.io``, ``blogspot.com``), and those are exactly the boundaries
relaxed alignment must not cross (with the ICANN section alone,
``evil.github.io``'s DKIM signature would align with ``victim.github.io``).
An unlisted top-level domain is a public suffix of one label (the list's
``*`` rule), so ``mail.example.test`` belongs to ``example.test``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from ._check import Steps, ask_one, gather
from ._dns import DNSQuery, DNSStatus, RRType
from ._results import MethodResult
from ._tags import parse_tag_list

#: A record longer than this is not read (the longest sensible one is a few hundred characters).
MAX_RECORD = 4096
#: Distinct From domains evaluated for one message; more is a permerror.
MAX_FROM_DOMAINS = 8
POLICIES = ("none", "quarantine", "reject")
#: What a message not sampled by ``pct=`` gets instead (RFC 7489 6.6.4).
_STEP_DOWN = {"reject": "quarantine", "quarantine": "none", "none": "none"}
#: Which outcome is stricter, when several From domains are evaluated.
_RESULT_RANK = {"pass": 0, "none": 1, "permerror": 2, "temperror": 3, "fail": 4}
_DMARC1 = re.compile(r"[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+(?:![0-9]+[kmgtKMGT]?)?\Z")
_ALIGNMENT = ("r", "s")


class DMARCSyntaxError(ValueError):
    """A DMARC record that breaks RFC 7489 6.4's grammar."""


class _NoPolicy(DMARCSyntaxError):
    """No valid ``p=`` and no valid ``rua=``: RFC 7489 6.6.3 applies no DMARC processing."""


@dataclass(frozen=True)
class DMARCRecord:
    """A parsed ``v=DMARC1`` record (RFC 7489 6.3); ``sp`` is ``None`` when the record has none."""

    p: str
    sp: str | None = None
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    rua: str | None = None
    ruf: str | None = None
    fo: str | None = None
    rf: str | None = None
    ri: str | None = None

    def policy_for(self, subdomain: bool) -> str:
        """The policy for the From domain itself, or for one of its subdomains (``sp=``, else ``p=``)."""
        return self.sp if subdomain and self.sp is not None else self.p


def is_dmarc_record(text: str) -> bool:
    """Whether a TXT record starts with ``v=DMARC1`` (the others at ``_dmarc`` are discarded, RFC 7489 6.6.3)."""
    return _DMARC1.match(text) is not None


@functools.lru_cache(maxsize=1024)  # a pure function of the record's text, which the DNS cache hands out again
def parse_dmarc(text: str) -> DMARCRecord:
    """The record ``text`` (a tag-value list, ``v=DMARC1`` first); ``DMARCSyntaxError`` says what is wrong.

    Tag names are read without case, unknown tags are ignored.  A missing
    or invalid ``p=`` (or invalid ``sp=``) with a valid ``rua=`` reads as
    ``p=none`` (RFC 7489 6.6.3); without one it is an error.
    """
    if len(text) > MAX_RECORD:
        raise DMARCSyntaxError(f"the record is longer than {MAX_RECORD} characters")
    if not is_dmarc_record(text):
        raise DMARCSyntaxError("the record does not start with v=DMARC1")
    tags = _tags(text)
    policy, subdomain_policy = tags.get("p", "").lower(), tags.get("sp", "none").lower()
    if policy not in POLICIES or subdomain_policy not in POLICIES:
        if not _has_valid_uri(tags.get("rua", "")):
            raise _NoPolicy("the record has no valid p= (or an invalid sp=) and no valid rua=")
        tags = {**tags, "p": "none"}
        tags.pop("sp", None)
    return DMARCRecord(
        p=tags["p"].lower(),
        sp=tags["sp"].lower() if "sp" in tags else None,
        pct=_percent(tags.get("pct", "100")),
        adkim=_alignment_mode(tags, "adkim"),
        aspf=_alignment_mode(tags, "aspf"),
        rua=tags.get("rua"),
        ruf=tags.get("ruf"),
        fo=tags.get("fo"),
        rf=tags.get("rf"),
        ri=tags.get("ri"),
    )


def _tags(text: str) -> dict[str, str]:
    parsed = parse_tag_list(text)
    if parsed is None:
        raise DMARCSyntaxError("the record is not a tag=value list")
    tags = {name.lower(): value for name, value in parsed.items()}
    if len(tags) != len(parsed):
        raise DMARCSyntaxError("a tag appears twice")
    return tags


def _percent(text: str) -> int:
    if not (text.isdigit() and len(text) <= 3 and int(text) <= 100):
        raise DMARCSyntaxError(f"pct={text} is not a whole number from 0 to 100")
    return int(text)


def _alignment_mode(tags: dict[str, str], name: str) -> str:
    mode = tags.get(name, "r").lower()
    if mode not in _ALIGNMENT:
        raise DMARCSyntaxError(f"{name}={mode} is neither r nor s")
    return mode


def _has_valid_uri(text: str) -> bool:
    return any(_URI.match(uri.strip()) for uri in text.split(","))


def organizational_domain(domain: str) -> str:
    """The organizational domain of ``domain`` (RFC 7489 3.2): its public suffix and one label more.

    ``domain`` is ASCII (A-labels); a domain that is itself a public
    suffix (``co.uk``, ``test``) is its own organizational domain.
    """
    domain = domain.lower().rstrip(".")
    return _suffix_list().privatesuffix(domain) or domain


@functools.cache
def _suffix_list() -> PublicSuffixList:
    """The list publicsuffixlist ships, read once (about 35 ms) when first needed."""
    return PublicSuffixList()


def aligned(identifier: str, author: str, mode: str) -> bool:
    """Whether an authenticated domain aligns with the From domain: equal (``s``), or same organization (``r``)."""
    identifier, author = identifier.lower().rstrip("."), author.lower().rstrip(".")
    if identifier == author:
        return True
    return mode == "r" and bool(identifier) and organizational_domain(identifier) == organizational_domain(author)


@dataclass(frozen=True, slots=True)
class DMARCResult:
    """The DMARC verdict for one message.

    ``policy`` is the published ``p=`` or ``sp=`` that applies (``None``
    without a record); ``disposition`` what the receiver should do once
    ``pct=`` sampling is applied, ``"none"`` unless ``result`` is ``fail``.
    """

    result: str
    from_domain: str | None = None
    policy: str | None = None
    disposition: str = "none"
    reason: str | None = None
    spf_aligned: bool = False
    dkim_aligned: bool = False

    def method_result(self) -> MethodResult:
        """``dmarc=<result> header.from=<domain> policy.dmarc=<policy>``.

        ``header.from`` is the property RFC 7489 11.2 registers.  The
        policy is written as ``policy.dmarc`` (RFC 8601's ``policy`` ptype,
        and the name authres's DMARC support gives it) rather than
        DMARCbis's newer ``polrec.p``, which authres's parser, and so
        dkimpy's ARC sealing that reads our field through it, drops.
        """
        properties = (("header.from", self.from_domain), ("policy.dmarc", self.policy))
        return MethodResult(
            "dmarc", self.result, self.reason, tuple((name, value) for name, value in properties if value is not None)
        )


def check_dmarc(
    from_domains: tuple[str, ...] | None,
    *,
    spf: MethodResult | None,
    spf_domain: str | None,
    dkim: Sequence[MethodResult],
    sample: float,
) -> Steps[DMARCResult]:
    """DMARC for a message whose From fields hold ``from_domains`` (``author_domains``'s answer).

    ``spf`` is the SPF verdict for ``spf_domain`` (the MAIL FROM domain,
    or the HELO name for a null reverse-path); ``dkim`` one result per
    signature, the passing ones carrying ``header.d``; ``sample`` a number
    in [0, 1) the caller draws: a failing message is subject to the policy
    when ``sample * 100 < pct``, else it steps down (RFC 7489 6.6.4).

    RFC 7489 6.6.1 leaves zero or several authors to the receiver.  Here:
    an unparsable From is ``permerror``, as is no From domain at all;
    several addresses in one domain are that domain; several domains are
    each evaluated (their records asked for together) and the strictest
    outcome wins, so no author can be hidden behind another that passes.
    """
    if not 0.0 <= sample < 1.0:
        raise ValueError(f"sample {sample} is not in [0, 1)")
    if from_domains is None:
        return DMARCResult("permerror", reason="the From header field cannot be parsed")
    domains = tuple(dict.fromkeys(domain.lower().rstrip(".") for domain in from_domains))
    if not domains:
        return DMARCResult("permerror", reason="no From domain")
    if len(domains) > MAX_FROM_DOMAINS:
        return DMARCResult("permerror", reason="too many From domains")
    outcomes: tuple[DMARCResult, ...] = yield from gather(
        *(_evaluate(domain, spf, spf_domain, dkim, sample) for domain in domains)
    )
    return max(outcomes, key=_strictness)


def _strictness(outcome: DMARCResult) -> tuple[int, int]:
    return POLICIES.index(outcome.disposition), _RESULT_RANK[outcome.result]


def _evaluate(
    domain: str, spf: MethodResult | None, spf_domain: str | None, dkim: Sequence[MethodResult], sample: float
) -> Steps[DMARCResult]:
    """Discover ``domain``'s policy, then check alignment and apply it."""
    if not _is_host_name(domain):
        return DMARCResult("permerror", domain, reason="the From domain is not a host name")
    found = yield from _discover(domain)
    if isinstance(found, DMARCResult):
        return found
    record, subdomain = found
    policy = record.policy_for(subdomain)
    spf_aligned = spf is not None and spf.result == "pass" and aligned(spf_domain or "", domain, record.aspf)
    dkim_aligned = any(_dkim_aligned(result, domain, record.adkim) for result in dkim)
    if spf_aligned or dkim_aligned:
        return DMARCResult("pass", domain, policy, "none", None, spf_aligned, dkim_aligned)
    if _aligned_for_now(spf, spf_domain, dkim, domain, record):  # it may pass once DNS answers (RFC 7489 6.6.2)
        return DMARCResult("temperror", domain, policy, "none", "an aligned SPF or DKIM check failed for now")
    disposition = policy if sample * 100 < record.pct else _STEP_DOWN[policy]
    return DMARCResult("fail", domain, policy, disposition, "neither SPF nor DKIM passed aligned")


def _aligned_for_now(
    spf: MethodResult | None, spf_domain: str | None, dkim: Sequence[MethodResult], domain: str, record: DMARCRecord
) -> bool:
    """Whether an SPF or DKIM check of an aligned domain ended in ``temperror``: no verdict yet, not a fail."""
    if spf is not None and spf.result == "temperror" and aligned(spf_domain or "", domain, record.aspf):
        return True
    return any(
        result.result == "temperror" and aligned(result.property("header.d") or "", domain, record.adkim)
        for result in dkim
    )


def _dkim_aligned(result: MethodResult, domain: str, mode: str) -> bool:
    signer = result.property("header.d")
    return result.result == "pass" and signer is not None and aligned(signer, domain, mode)


def _discover(domain: str) -> Steps[DMARCResult | tuple[DMARCRecord, bool]]:
    """The record that applies to ``domain`` and whether it came from its organizational domain (RFC 7489 6.6.3).

    Or the final result when there is none to apply: no record, several,
    a DNS failure, a record that cannot be read.
    """
    records = yield from _records(domain)
    found_at = domain
    if records == () and organizational_domain(domain) != domain:
        found_at = organizational_domain(domain)
        records = yield from _records(found_at)
    if records is None:
        return DMARCResult("temperror", domain, reason=f"DNS failure looking up _dmarc.{found_at}")
    if len(records) != 1:
        reason = "no DMARC record" if not records else f"several DMARC records at _dmarc.{found_at}"
        return DMARCResult("none", domain, reason=reason)
    try:
        return parse_dmarc(records[0]), found_at != domain
    except _NoPolicy as error:
        return DMARCResult("none", domain, reason=str(error))
    except DMARCSyntaxError as error:
        return DMARCResult("permerror", domain, reason=f"invalid DMARC record at _dmarc.{found_at}: {error}")


def _records(domain: str) -> Steps[tuple[str, ...] | None]:
    """The ``v=DMARC1`` TXT records at ``_dmarc.<domain>``; ``None`` on a DNS failure."""
    answer = yield from ask_one(DNSQuery(f"_dmarc.{domain}", RRType.TXT))
    if answer.status is DNSStatus.TEMPFAIL:
        return None
    return tuple(record for record in answer.records if is_dmarc_record(record))


_HOST_NAME = re.compile(
    r"(?=.{1,246}\Z)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\Z"
)


def _is_host_name(domain: str) -> bool:
    """Whether ``_dmarc.<domain>`` is a name DNS can hold (246 + 7 = 253 characters)."""
    return _HOST_NAME.match(domain) is not None
