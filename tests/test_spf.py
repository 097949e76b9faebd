"""The SPF evaluator beyond the RFC 7208 suite: identities, IDNA, bounds, pyspf's second opinion, fuzz seeds."""

from __future__ import annotations

import ipaddress
import pathlib
from types import ModuleType
from typing import Any

import pytest
import spf as pyspf  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpwire_verify import Check, DNSQuery, DNSStatus, MethodResult, RRType, run
from smtpwire_verify._spf import MAX_QUERIES, SPFResult, SPFSyntaxError, check_host, check_spf, parse_record
from tests.dnszone import Zone
from tests.fuzzing import load_target

RESULTS = {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}


def spf_zone(policies: dict[str, str] | None = None) -> Zone:
    """A zone publishing ``policies`` (domain -> record) beside a few hosts of example.com."""
    zone = Zone(
        {
            "mx.example.com": [("A", "192.0.2.10"), ("AAAA", "2001:db8::10")],
            "mx2.example.com": [("A", "192.0.2.11")],
            "example.com": [("A", "192.0.2.1"), ("MX", (10, "mx.example.com")), ("MX", (20, "mx2.example.com"))],
            "10.2.0.192.in-addr.arpa": [("PTR", "mx.example.com")],
        }
    )
    for name, policy in (policies or {}).items():
        zone.add(name, "TXT", policy)
    return zone


def check(
    zone: Zone, ip: str = "192.0.2.10", mail_from: str = "user@example.com", helo: str = "mx.example.com", **kw: Any
) -> SPFResult:
    return run(Check(check_spf(ip, mail_from, helo, **kw)), zone)


# -- identities and what goes into Authentication-Results -------------------------------------


def test_mailfrom_identity_gives_smtp_mailfrom() -> None:
    result = check(spf_zone({"example.com": "v=spf1 mx -all"}))
    assert (result.result, result.identity, result.sender, result.domain) == (
        "pass",
        "mailfrom",
        "user@example.com",
        "example.com",
    )
    assert result.reason == "matched mx"
    assert result.method_result() == MethodResult("spf", "pass", "matched mx", (("smtp.mailfrom", "user@example.com"),))


def test_empty_mail_from_checks_helo_as_postmaster() -> None:
    zone = spf_zone({"helo.example.net": "v=spf1 ip4:192.0.2.0/24 -all"})
    result = check(zone, mail_from="<>", helo="helo.example.net")
    assert (result.result, result.identity, result.sender, result.domain) == (
        "pass",
        "helo",
        "postmaster@helo.example.net",
        "helo.example.net",
    )
    assert result.method_result().properties == (("smtp.helo", "helo.example.net"),)
    assert zone.asked == [DNSQuery("helo.example.net", RRType.TXT)]


def test_mail_from_without_local_part_is_postmaster() -> None:
    zone = spf_zone({"example.com": "v=spf1 -exists:%{l}.bad.example.com -all exp=why.example.com"})
    zone.add("why.example.com", "TXT", "%{l} of %{o} may not send from %{c} (%{r}, %{t})")
    result = check(zone, mail_from="@example.com", receiver="mx.receiver.example", now=1700000000)
    assert result.sender == "postmaster@example.com"
    assert (
        result.explanation == "postmaster of example.com may not send from 192.0.2.10 (mx.receiver.example, 1700000000)"
    )


@pytest.mark.parametrize("helo", ["localhost", "[192.0.2.1]", "a..example.com", "x" * 64 + ".example.com", "192.0.2.1"])
def test_helo_that_is_not_a_domain_name_is_none_without_a_query(helo: str) -> None:
    zone = spf_zone()
    result = check(zone, mail_from="", helo=helo)
    assert (result.result, result.identity) == ("none", "helo")
    assert zone.asked == []


def test_unicode_domain_is_asked_as_a_labels() -> None:
    zone = spf_zone({"xn--bcher-kva.example": "v=spf1 ip4:192.0.2.10 -all"})
    result = check(zone, mail_from="user@bücher.example")
    assert (result.result, result.domain) == ("pass", "xn--bcher-kva.example")
    assert zone.asked == [DNSQuery("xn--bcher-kva.example", RRType.TXT)]


def test_domain_without_an_a_label_form_is_none() -> None:
    zone = spf_zone()
    assert check(zone, mail_from="user@" + "ü" * 70 + ".example").result == "none"
    assert zone.asked == []


def test_ipv4_mapped_ipv6_client_is_treated_as_ipv4() -> None:
    zone = spf_zone({"example.com": "v=spf1 exists:%{i}.%{v}.allow.example.com ip6:::/0 -all"})
    zone.add("192.0.2.10.in-addr.allow.example.com", "A", "127.0.0.2")
    assert check(zone, ip="::ffff:192.0.2.10").reason == "matched exists:%{i}.%{v}.allow.example.com"
    assert check(zone, ip="2001:db8::10").reason == "matched ip6:::/0"


def test_client_address_that_is_not_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        check(spf_zone(), ip="mx.example.com")


def test_mx_hosts_are_asked_together() -> None:
    steps = Check(check_host("192.0.2.99", "example.com", "user@example.com", helo="h.example"))
    zone = spf_zone({"example.com": "v=spf1 mx -all"})
    rounds = []
    while not steps.done:
        rounds.append(set(steps.queries()))
        for query in steps.queries():
            steps.answer(query, zone(query))
    assert rounds[-1] == {DNSQuery("mx.example.com", RRType.A), DNSQuery("mx2.example.com", RRType.A)}
    assert steps.result.result == "fail"


def test_parse_record_refuses_what_the_grammar_does_not_allow() -> None:
    record = parse_record("v=spf1 -ip4:192.0.2.0/24 mx/24//64 redirect=%{d2} foo=bar")
    assert [(m.qualifier, m.kind, m.cidr4, m.cidr6) for m in record.mechanisms] == [
        ("-", "ip4", 32, 128),
        ("+", "mx", 24, 64),
    ]
    assert record.redirect is not None and record.explanation is None
    for text in (
        "v=spf1 ip4:192.0.2.0/33",
        "v=spf1 a:%{x}.example.com",
        "v=spf1 exists:%{d0}.example.com",
        "v=spf2 -all",
        "v=spf1 exp=a.example exp=b.example",
        "v=spf1 include:museum",
        "v=spf1 -exists:%{t}.example.com",
    ):
        with pytest.raises(SPFSyntaxError):
            parse_record(text)


# -- bounds: the lookup limits, checked with hypothesis ----------------------------------------

NAMES = ("a.test", "b.test", "c.test", "d.test", "nx.test", "to.test")
MACRO_SPECS = (
    "%{d}",
    "%{l}.a.test",
    "%{ir}.%{v}.b.test",
    "%{p}.c.test",
    "%{d2}",
    "%{o}",
    "%{s}.d.test",
    "%{h}",
    "%{L-r}.%{d1}",
)
domain_specs = st.sampled_from(NAMES + MACRO_SPECS)
cidrs = st.sampled_from(("", "/24", "//64", "/0//0", "/32//128"))
qualifiers = st.sampled_from(("", "+", "-", "~", "?"))
mechanisms = st.one_of(
    st.just("all"),
    st.builds("include:{}".format, domain_specs),
    st.builds("a:{}{}".format, domain_specs, cidrs),
    st.builds("mx:{}{}".format, domain_specs, cidrs),
    st.sampled_from(("a", "mx", "ptr", "ip4:192.0.2.0/24", "ip6:2001:db8::/32", "ip4:0.0.0.0/0")),
    st.builds("ptr:{}".format, domain_specs),
    st.builds("exists:{}".format, domain_specs),
)
terms = st.one_of(
    st.builds("{}{}".format, qualifiers, mechanisms),
    st.builds("redirect={}".format, domain_specs),
    st.builds("exp={}".format, domain_specs),
    st.just("unknown=%{l}x"),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=12),
)
records = st.builds(lambda parts: " ".join(["v=spf1", *parts]), st.lists(terms, max_size=8))
hosts = st.lists(st.sampled_from(("192.0.2.10", "198.51.100.1", "2001:db8::10", "not-an-address")), max_size=3)


@st.composite
def random_zones(draw: st.DrawFn) -> Zone:
    """Each name publishes a random record (so includes and redirects loop), hosts and MX; to.test times out."""
    zone = Zone({"to.test": ["TIMEOUT"]})
    for name in NAMES[:4]:
        zone.add(name, "TXT", draw(records))
        for host in draw(hosts):
            zone.add(name, "AAAA" if ":" in host else "A", host)
        for exchange in draw(st.lists(st.sampled_from(NAMES), max_size=12)):
            zone.add(name, "MX", (10, exchange))
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=12)):
        zone.add("10.2.0.192.in-addr.arpa", "PTR", name)
    return zone


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_zones(), st.sampled_from(("192.0.2.10", "2001:db8::10", "::ffff:192.0.2.10")))
def test_random_records_never_raise_and_ask_a_bounded_number_of_queries(zone: Zone, ip: str) -> None:
    # MAX_QUERIES = 1 first TXT + 10 lookup terms x (1 + 10 MX hosts) + PTR names validated once (1 + 10) + 1 exp TXT
    assert MAX_QUERIES == 123
    result = run(Check(check_host(ip, "a.test", "user@a.test", helo="h.test")), zone)
    assert result.result in RESULTS
    assert len(zone.asked) <= MAX_QUERIES, (len(zone.asked), result)
    assert result.explanation is None or result.result == "fail"


# "exists" is left out: a name with an address matches, one without is a void lookup.
lookup_terms = st.sampled_from(("a:a.test", "mx:a.test", "include:b.test", "ptr:nomatch.test"))


@given(st.lists(lookup_terms, min_size=1, max_size=15), st.booleans())
def test_more_than_ten_lookup_terms_is_permerror(terms: list[str], through_redirect: bool) -> None:
    zone = Zone({"a.test": [("A", "198.51.100.1"), ("MX", (10, "a.test"))], "b.test": [("TXT", "v=spf1 -all")]})
    zone.add("10.2.0.192.in-addr.arpa", "PTR", "a.test")
    zone.add("c.test", "TXT", "v=spf1 " + " ".join(terms) + " ?all")
    if through_redirect:
        zone.add("d.test", "TXT", "v=spf1 redirect=c.test")
    result = run(
        Check(check_host("192.0.2.10", "d.test" if through_redirect else "c.test", "u@c.test", helo="h.test")), zone
    )
    if len(terms) + through_redirect > 10:
        assert (result.result, result.reason) == ("permerror", "too many DNS lookups")
    else:
        assert result.result == "neutral"


@given(
    st.lists(st.sampled_from(("a:nx.test", "mx:nx.test", "exists:nx.test", "a:nodata.test")), min_size=1, max_size=6)
)
def test_more_than_two_void_lookups_is_permerror(terms: list[str]) -> None:
    zone = Zone({"c.test": [("TXT", "v=spf1 " + " ".join(terms) + " ?all")], "nodata.test": [("AAAA", "2001:db8::1")]})
    result = run(Check(check_host("192.0.2.10", "c.test", "u@c.test", helo="h.test")), zone)
    assert (result.result, result.reason) == (
        ("permerror", "void lookup limit") if len(terms) > 2 else ("neutral", "matched ?all")
    )


def test_include_chain_deeper_than_the_limit_is_permerror() -> None:
    zone = Zone({f"n{i}.test": [("TXT", f"v=spf1 include:n{i + 1}.test -all")] for i in range(20)})
    result = run(Check(check_host("192.0.2.10", "n0.test", "u@n0.test", helo="h.test")), zone)
    assert (result.result, result.reason) == ("permerror", "too many DNS lookups")
    assert len(zone.asked) == 11


def test_more_than_ten_mx_records_is_permerror() -> None:
    zone = Zone({"c.test": [("TXT", "v=spf1 mx -all"), *(("MX", (i, f"mx{i}.test")) for i in range(11))]})
    result = run(Check(check_host("192.0.2.10", "c.test", "u@c.test", helo="h.test")), zone)
    assert result.result == "permerror"
    assert all(query.rdtype != RRType.A for query in zone.asked)


# -- a second opinion: pyspf, answering from the same zone ------------------------------------

# pyspf (strict mode) and this evaluator agree on every record here, for each client address.
# Known deliberate difference outside this set, from RFC 7208 as the reference: pyspf also
# queries type SPF (99) records when asked to; RFC 7208 3.1 queries TXT only, and so do we.
SECOND_OPINION = [
    ("example.com", "v=spf1 ip4:192.0.2.0/24 -all"),
    ("example.com", "v=spf1 mx ~all"),
    ("example.com", "v=spf1 mx/30 ?all"),
    ("example.com", "v=spf1 a:mx.example.com -all"),
    ("example.com", "v=spf1 a/24 -all"),
    ("example.com", "v=spf1 ptr -all"),
    ("example.com", "v=spf1 ptr:other.example -all"),
    ("example.com", "v=spf1 include:inc.example.org -all"),
    ("example.com", "v=spf1 include:none.example.org -all"),
    ("example.com", "v=spf1 include:timeout.example.org -all"),
    ("example.com", "v=spf1 redirect=inc.example.org"),
    ("example.com", "v=spf1 redirect=nx.example.org"),
    ("example.com", "v=spf1 exists:%{ir}.%{v}.list.example.org -all"),
    ("example.com", "v=spf1 -exists:%{l}.block.example.org +all"),
    ("example.com", "v=spf1 ip6:2001:db8::/32 -all"),
    ("example.com", "v=spf1 ip4:192.0.2.0/33 -all"),
    ("example.com", "v=spf1 a:nx1.example.org a:nx2.example.org a:nx3.example.org -all"),
    ("example.com", "v=spf1 foo=bar ?all"),
    ("example.com", "v=spf1 include:loop.example.org -all"),
    ("example.com", "v=spf1 -all exp=explain.example.org"),
]


def second_opinion_zone(record: str) -> Zone:
    zone = spf_zone({"example.com": record})
    zone.records["timeout.example.org"] = ["TIMEOUT"]
    zone.add("inc.example.org", "TXT", "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all")
    zone.add("loop.example.org", "TXT", "v=spf1 include:loop.example.org -all")
    zone.add("none.example.org", "A", "192.0.2.1")
    zone.add("10.2.0.192.list.example.org", "A", "127.0.0.2")
    zone.add("user.block.example.org", "A", "127.0.0.2")
    zone.add("explain.example.org", "TXT", "%{i} is not allowed for %{d}")
    return zone


def pyspf_lookup(zone: Zone) -> Any:
    """A stand-in for ``spf.DNSLookup`` answering from ``zone`` in pyspf's answer format."""

    def lookup(name: str, qtype: str, strict: bool = True, timeout: Any = None, level: int = 0) -> list[Any]:
        if qtype not in RRType.__members__:
            return []
        answer = zone(DNSQuery(name.rstrip("."), RRType(qtype)))
        if answer.status is DNSStatus.TEMPFAIL:
            raise pyspf.TempError("DNS timeout")
        return [((name, qtype), _pyspf_rdata(qtype, index, value)) for index, value in enumerate(answer.records)]

    return lookup


def _pyspf_rdata(qtype: str, index: int, value: str) -> Any:
    if qtype == "TXT":
        return (value.encode("latin-1"),)
    if qtype == "MX":
        return (index, value)
    if qtype == "AAAA":
        return ipaddress.IPv6Address(value).packed
    return value


@pytest.mark.parametrize(("domain", "record"), SECOND_OPINION, ids=[record for _, record in SECOND_OPINION])
@pytest.mark.parametrize("ip", ["192.0.2.10", "192.0.2.99", "2001:db8::10"])
def test_pyspf_agrees(monkeypatch: pytest.MonkeyPatch, domain: str, record: str, ip: str) -> None:
    monkeypatch.setattr(pyspf, "DNSLookup", pyspf_lookup(second_opinion_zone(record)))
    theirs, _, their_explanation = pyspf.query(i=ip, s=f"user@{domain}", h="mx.example.com").check()
    ours = check(second_opinion_zone(record), ip=ip, mail_from=f"user@{domain}")
    assert ours.result == theirs, ours
    if ours.result == "fail" and ours.explanation is not None:
        assert ours.explanation == their_explanation


# -- the fuzz target's corpus ------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus-spf"


def fuzz_target() -> ModuleType:
    return load_target("fuzz_spf")


@pytest.mark.parametrize("seed", sorted(CORPUS.iterdir()), ids=lambda path: path.name)
def test_the_spf_fuzz_corpus_replays(seed: pathlib.Path) -> None:
    target = fuzz_target()
    assert seed.name not in target.SEEDS or seed.read_bytes() == target.SEEDS[seed.name].encode("latin-1")
    target.TestOneInput(seed.read_bytes())


def test_macro_heavy_records_expand_to_bounded_names_and_text() -> None:
    sender = "x" * 60 + "@example.com"
    zone = spf_zone({"example.com": "v=spf1 exists:" + "%{l}." * 400 + "example.com -all exp=why.example.com"})
    zone.add("why.example.com", "TXT", "%{s} " * 2000)
    result = check(zone, mail_from=sender)
    exists = zone.asked[1]
    assert exists.rdtype == RRType.A and len(exists.name) <= 253 and exists.name.endswith("x.example.com")
    assert result.result == "fail" and result.explanation is not None and len(result.explanation) == 1024
