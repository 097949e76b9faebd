"""The DNS questions a check asks and the answers the I/O layer gives: values, no resolver."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RRType(enum.StrEnum):
    """The record types sender authentication asks for."""

    TXT = "TXT"
    A = "A"
    AAAA = "AAAA"
    MX = "MX"
    PTR = "PTR"


@dataclass(frozen=True, slots=True)
class DNSQuery:
    """``name`` (ASCII, A-labels, no trailing dot) and the record type wanted."""

    name: str
    rdtype: RRType


class DNSStatus(enum.Enum):
    """How a query ended, in the terms RFC 7208 2.6 and RFC 6376 6.1.2 tell apart."""

    #: Records came back (``DNSAnswer.records`` is not empty).
    ANSWER = "answer"
    #: The name does not exist (RCODE 3).
    NXDOMAIN = "nxdomain"
    #: The name exists but has no record of this type.
    NODATA = "nodata"
    #: No usable answer: a timeout, SERVFAIL, REFUSED, or the budget for this message ran out.
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class DNSAnswer:
    """What the resolver found, as text the checks read.

    ``records`` by type: TXT, each record's character-strings joined with
    nothing between them (RFC 7208 3.3, RFC 6376 3.6.2.2), decoded as
    latin-1 so that no octet is lost; A and AAAA, the address as text; MX,
    the exchange's name without the trailing dot, lowest preference first
    (a null MX, RFC 7505, is ``""``); PTR, the name without the trailing dot.
    CNAMEs are followed by the resolver, never returned.
    """

    status: DNSStatus
    records: tuple[str, ...] = ()

    @classmethod
    def of(cls, *records: str) -> DNSAnswer:
        """An answer with ``records``; with none, NODATA."""
        return cls(DNSStatus.ANSWER, records) if records else NODATA


NXDOMAIN = DNSAnswer(DNSStatus.NXDOMAIN)
NODATA = DNSAnswer(DNSStatus.NODATA)
TEMPFAIL = DNSAnswer(DNSStatus.TEMPFAIL)
