"""SPF records (RFC 7208 4.5, 5, 6, 12): which TXT records are SPF, and each parsed into terms."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from ._spf_macro import MacroString, SPFSyntaxError, parse_domain_spec, parse_macro_string

__all__ = ["Mechanism", "SPFRecord", "SPFSyntaxError", "is_spf_record", "parse_record"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Mechanisms that cost a DNS lookup, counted against the limit of 10 (RFC 7208 4.6.4).
LOOKUP_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})

_MODIFIER = re.compile(r"([a-zA-Z][a-zA-Z0-9\-_.]*)=(.*)", re.DOTALL)
_DIRECTIVE = re.compile(r"([+\-~?]?)([a-zA-Z][a-zA-Z0-9]*)(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(?::(.+?))?(?:/(0|[1-9][0-9]?))?(?://(0|[1-9][0-9]{0,2}))?", re.DOTALL)
_IP4 = re.compile(r":([0-9.]+)(?:/(0|[1-9][0-9]?))?")
_IP6 = re.compile(r":([0-9a-fA-F:.]+)(?:/(0|[1-9][0-9]{0,2}))?")


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One directive: ``text`` as written, its qualifier (``+ - ~ ?``), kind and arguments."""

    text: str
    qualifier: str
    kind: str
    domain: MacroString | None = None
    network: Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class SPFRecord:
    """The directives in order, and the ``redirect=`` and ``exp=`` domain-specs (unknown modifiers dropped)."""

    mechanisms: tuple[Mechanism, ...]
    redirect: MacroString | None = None
    explanation: MacroString | None = None


def is_spf_record(text: str) -> bool:
    """Whether a TXT record is an SPF record: ``v=spf1`` then a space or the end (RFC 7208 4.5)."""
    return text[:6].lower() == "v=spf1" and text[6:7] in ("", " ")


def parse_record(text: str) -> SPFRecord:
    """Parse a whole record (``v=spf1 ...``); raises ``SPFSyntaxError`` where RFC 7208 12 says permerror."""
    return _parse_short(text) if len(text) <= CACHED_RECORD else _parse(text)


#: Records up to this long are remembered (the same few policies and includes are checked over and over).
CACHED_RECORD = 512


@functools.lru_cache(maxsize=1024)
def _parse_short(text: str) -> SPFRecord:
    return _parse(text)


def _parse(text: str) -> SPFRecord:
    if not is_spf_record(text):
        raise SPFSyntaxError("the record does not start with 'v=spf1'")
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, MacroString] = {}
    for term in text[6:].split(" "):
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier is not None:
            _add_modifier(modifiers, modifier[1].lower(), modifier[2])
        else:
            mechanisms.append(parse_mechanism(term))
    return SPFRecord(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"))


def _add_modifier(modifiers: dict[str, MacroString], name: str, value: str) -> None:
    if name not in ("redirect", "exp"):
        parse_macro_string(value)  # unknown modifiers are ignored, but must still be well-formed
        return
    if name in modifiers:
        raise SPFSyntaxError(f"{name}= given twice")
    modifiers[name] = parse_domain_spec(value)


def parse_mechanism(term: str) -> Mechanism:
    """One directive, e.g. ``-ip4:192.0.2.0/24`` or ``mx:%{d}/24//64``."""
    directive = _DIRECTIVE.fullmatch(term)
    if directive is None:
        raise SPFSyntaxError(f"not a mechanism: {term!r}")
    qualifier, kind, rest = directive[1] or "+", directive[2].lower(), directive[3]
    if kind == "all" and not rest:
        return Mechanism(term, qualifier, kind)
    if kind in ("include", "exists") and rest.startswith(":"):
        return Mechanism(term, qualifier, kind, parse_domain_spec(rest[1:]))
    if kind == "ptr" and (not rest or rest.startswith(":")):
        return Mechanism(term, qualifier, kind, parse_domain_spec(rest[1:]) if rest else None)
    if kind in ("a", "mx"):
        return _address_mechanism(term, qualifier, kind, rest)
    if kind in ("ip4", "ip6"):
        return Mechanism(term, qualifier, kind, network=_network(kind, rest, term))
    raise SPFSyntaxError(f"unknown mechanism or bad arguments: {term!r}")


def _address_mechanism(term: str, qualifier: str, kind: str, rest: str) -> Mechanism:
    found = _DUAL_CIDR.fullmatch(rest)
    if found is None:
        raise SPFSyntaxError(f"bad arguments: {term!r}")
    domain, cidr4, cidr6 = found.groups()
    return Mechanism(
        term,
        qualifier,
        kind,
        parse_domain_spec(domain) if domain is not None else None,
        cidr4=_cidr(cidr4, 32, term),
        cidr6=_cidr(cidr6, 128, term),
    )


def _cidr(digits: str | None, most: int, term: str) -> int:
    if digits is None:
        return most
    if int(digits) > most:
        raise SPFSyntaxError(f"prefix length over {most}: {term!r}")
    return int(digits)


def _network(kind: str, rest: str, term: str) -> Network:
    found = (_IP4 if kind == "ip4" else _IP6).fullmatch(rest)
    if found is None:
        raise SPFSyntaxError(f"bad network: {term!r}")
    network, most = (ipaddress.IPv4Network, 32) if kind == "ip4" else (ipaddress.IPv6Network, 128)
    prefix = _cidr(found[2], most, term)
    try:
        return network((found[1], prefix), strict=False)
    except ValueError as error:
        raise SPFSyntaxError(f"bad address: {term!r}") from error
