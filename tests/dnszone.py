"""A DNS zone held in memory, for tests: answers a check's queries as a resolver would.

``Zone({"example.com": [("TXT", "v=spf1 -all"), ("MX", (10, "mx.example.com"))]})``;
a name listed with the record ``"TIMEOUT"`` (no reply) or ``"SERVFAIL"`` answers TEMPFAIL for every type.
CNAMEs are followed (as a resolver does), names compare without case, and
a name that is listed with other types answers NODATA, one not listed at
all NXDOMAIN.  The same zone data feeds the local DNS server (``dnsserver``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from smtpwire_verify import NODATA, NXDOMAIN, TEMPFAIL, DNSAnswer, DNSQuery

Record = tuple[str, Any] | str
CNAME_CHAIN = 8


class Zone:
    def __init__(self, records: Mapping[str, Iterable[Record]] = ()) -> None:  # type: ignore[assignment]
        self.records: dict[str, list[Record]] = {}
        for name, entries in dict(records).items():
            self.records.setdefault(name.lower().rstrip("."), []).extend(entries)
        self.asked: list[DNSQuery] = []

    def add(self, name: str, rdtype: str, value: Any) -> None:
        self.records.setdefault(name.lower().rstrip("."), []).append((rdtype, value))

    def resolve(self, query: DNSQuery) -> DNSAnswer:
        self.asked.append(query)
        name = query.name.lower().rstrip(".")
        for _ in range(CNAME_CHAIN):
            entries = self.records.get(name)
            if entries is None:
                return NXDOMAIN
            if "TIMEOUT" in entries or "SERVFAIL" in entries:
                return TEMPFAIL
            cname = [value for rdtype, value in entries if rdtype == "CNAME"]  # type: ignore[misc]
            if cname and query.rdtype != "CNAME":
                name = str(cname[0]).lower().rstrip(".")
                continue
            return _answer(query.rdtype, [value for rdtype, value in entries if rdtype == query.rdtype])  # type: ignore[misc]
        return TEMPFAIL  # a CNAME loop: a resolver gives up with SERVFAIL

    __call__ = resolve


def _answer(rdtype: str, values: list[Any]) -> DNSAnswer:
    if not values:
        return NODATA
    if rdtype == "MX":
        return DNSAnswer.of(*(str(exchange).rstrip(".") for _, exchange in sorted(values, key=lambda mx: mx[0])))
    if rdtype == "TXT":
        return DNSAnswer.of(*("".join(value) if isinstance(value, list | tuple) else str(value) for value in values))
    return DNSAnswer.of(*(str(value).rstrip(".") for value in values))
