"""The RFC 7208 test suite (``tests/data/rfc7208-tests.yml``, BSD licence beside it): every case, from a Zone."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from smtpwire_verify import TEMPFAIL, Check, DNSAnswer, DNSQuery, run
from smtpwire_verify._spf import check_spf
from tests.dnszone import Zone

SUITE = pathlib.Path(__file__).parent / "data" / "rfc7208-tests.yml"


def load_cases() -> list[Any]:
    cases = []
    with SUITE.open(encoding="utf-8") as stream:
        for scenario in yaml.safe_load_all(stream):
            for name, case in scenario["tests"].items():
                case_id = f"{scenario['description']}/{name}"
                cases.append(pytest.param(scenario["zonedata"], case, id=case_id))
    return cases


def wire_text(value: str) -> str:
    """A TXT string as the resolver hands it over: the UTF-8 octets the zone holds, read as latin-1."""
    return value.encode("utf-8").decode("latin-1")


class SuiteZone(Zone):
    """The suite's zone as its header asks drivers to build it.

    RFC 7208 queries TXT only; the suite writes most policies as type SPF and
    has drivers copy them to TXT wherever a name has no TXT entry of its own
    (``TXT: NONE`` says "no TXT record here").  The SPF-type records themselves
    are never served.  ``TIMEOUT`` under a name times out every type not
    listed before it, as the reference driver reads it.
    """

    def __init__(self, zonedata: dict[str, list[Any]]) -> None:
        super().__init__()
        self.answered_before_timeout: dict[str, set[str]] = {}
        for name, entries in zonedata.items():
            self._add_name(name.lower(), entries)

    def _add_name(self, name: str, entries: list[Any]) -> None:
        typed = [next(iter(entry.items())) for entry in entries if entry != "TIMEOUT"]
        has_txt = any(rdtype == "TXT" for rdtype, _ in typed)
        self.records[name] = []
        for rdtype, value in typed:
            if rdtype == "SPF" and not has_txt:
                rdtype = "TXT"
            if rdtype != "SPF" and value != "NONE":
                self.add(name, rdtype, _rdata(rdtype, value))
        if "TIMEOUT" in entries:
            before = entries[: entries.index("TIMEOUT")]
            self.answered_before_timeout[name] = {
                rdtype for entry in before for rdtype, value in entry.items() if value != "NONE"
            }

    def resolve(self, query: DNSQuery) -> DNSAnswer:
        answered = self.answered_before_timeout.get(query.name.lower())
        if answered is not None and query.rdtype not in answered:
            self.asked.append(query)
            return TEMPFAIL
        return super().resolve(query)

    __call__ = resolve


def _rdata(rdtype: str, value: Any) -> Any:
    if rdtype == "TXT":
        return [wire_text(part) for part in value] if isinstance(value, list) else wire_text(value)
    return tuple(value) if rdtype == "MX" else value


@pytest.mark.parametrize(("zonedata", "case"), load_cases())
def test_rfc7208_suite(zonedata: dict[str, list[Any]], case: dict[str, Any]) -> None:
    zone = SuiteZone(zonedata)
    result = run(Check(check_spf(case["host"], case["mailfrom"], case["helo"])), zone)
    expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
    assert result.result in expected, (result, case.get("description"))
    if "explanation" in case and result.result == "fail":
        wanted = None if case["explanation"] == "DEFAULT" else case["explanation"]
        assert result.explanation == wanted, result
