"""The adapters' DNS answers: dnspython against a local authoritative server, the shared cache, the budget."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import dns.resolver
import pytest

from smtpwire_handler._resolver import AsyncResolver, DNSCache, Resolver
from smtpwire_verify import NODATA, NXDOMAIN, TEMPFAIL, Check, DNSAnswer, DNSQuery, DNSStatus, RRType, gather, run
from smtpwire_verify._check import Steps, ask, ask_one
from tests.dnsserver import LocalDNS, local_dns
from tests.dnszone import Zone

BACKENDS = ["asyncio", "trio"]
TIMEOUT = 0.3
SILENT = [f"silent{number}.example.test" for number in range(5)]
ZONE = Zone(
    {
        "example.test": [
            ("TXT", "v=spf1 -all"),
            ("TXT", ["first ", "second"]),
            ("A", "192.0.2.1"),
            ("A", "192.0.2.2"),
            ("AAAA", "2001:db8::1"),
            ("MX", (20, "mx2.example.test")),
            ("MX", (10, "mx1.example.test")),
        ],
        "mx1.example.test": [("A", "192.0.2.11")],
        "mx2.example.test": [("A", "192.0.2.12")],
        "null-mx.example.test": [("MX", (0, ""))],
        "1.2.0.192.in-addr.arpa": [("PTR", "mail.example.test")],
        "long.example.test": [("TXT", "k" * 300)],
        "big.example.test": [("TXT", "p=" + "A" * 3000)],
        "octets.example.test": [("TXT", "caf\xe9 \x01")],
        "alias.example.test": [("CNAME", "example.test")],
        "dangling.example.test": [("CNAME", "gone.example.test")],
        "broken.example.test": ["SERVFAIL"],
        **{name: ["TIMEOUT"] for name in SILENT},
    }
)
READ_AS = [
    ("example.test", RRType.TXT, ("v=spf1 -all", "first second")),
    ("example.test", RRType.A, ("192.0.2.1", "192.0.2.2")),
    ("example.test", RRType.AAAA, ("2001:db8::1",)),
    ("example.test", RRType.MX, ("mx1.example.test", "mx2.example.test")),
    ("null-mx.example.test", RRType.MX, ("",)),
    ("1.2.0.192.in-addr.arpa", RRType.PTR, ("mail.example.test",)),
    ("long.example.test", RRType.TXT, ("k" * 300,)),
    ("octets.example.test", RRType.TXT, ("caf\xe9 \x01",)),
    ("alias.example.test", RRType.A, ("192.0.2.1", "192.0.2.2")),
]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[LocalDNS]:
    with local_dns(ZONE) as running:
        yield running


def asked(server: LocalDNS, name: str) -> int:
    return sum(1 for seen, _ in server.queries if seen == name)


def query(name: str, rdtype: RRType = RRType.A) -> DNSQuery:
    return DNSQuery(name, rdtype)


# -- each answer read right --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "rdtype", "records"), READ_AS)
def test_each_record_type_reads_as_the_checks_expect(
    server: LocalDNS, name: str, rdtype: RRType, records: tuple[str, ...]
) -> None:
    answer = Resolver([server.address], timeout=TIMEOUT).resolve(query(name, rdtype))
    assert answer == DNSAnswer(DNSStatus.ANSWER, records)
    assert answer == ZONE.resolve(query(name, rdtype))


def test_a_txt_string_over_255_octets_is_cut_and_joined_again_over_udp(server: LocalDNS) -> None:
    answer = Resolver([server.address], timeout=TIMEOUT).resolve(query("long.example.test", RRType.TXT))
    assert answer.records == ("k" * 300,)
    assert ("long.example.test", "TXT") not in server.tcp_queries


def test_an_answer_over_512_octets_comes_over_tcp_after_truncation(server: LocalDNS) -> None:
    answer = Resolver([server.address], timeout=TIMEOUT).resolve(query("big.example.test", RRType.TXT))
    assert answer.records == ("p=" + "A" * 3000,)
    assert ("big.example.test", "TXT") in server.tcp_queries


@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        ("nowhere.example.test", RRType.A, NXDOMAIN),
        ("dangling.example.test", RRType.A, NXDOMAIN),
        ("example.test", RRType.PTR, NODATA),
        ("alias.example.test", RRType.PTR, NODATA),
        ("broken.example.test", RRType.TXT, TEMPFAIL),
    ],
)
def test_negative_and_failed_answers(server: LocalDNS, name: str, rdtype: RRType, expected: DNSAnswer) -> None:
    assert Resolver([server.address], timeout=TIMEOUT).resolve(query(name, rdtype)) == expected


def test_a_server_that_never_replies_is_tempfail_within_the_timeout(server: LocalDNS) -> None:
    started = time.monotonic()
    answer = Resolver([server.address], timeout=TIMEOUT).resolve(query(SILENT[0]))
    elapsed = time.monotonic() - started
    assert answer == TEMPFAIL
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 0.4  # dnspython pauses 0.1 s before it gives up


@pytest.mark.parametrize(
    "name", ["a" * 64 + ".example.test", ("a" * 60 + ".") * 5 + "test", "a..example.test", "", "é.test"]
)
def test_a_name_that_cannot_exist_is_nxdomain_without_asking(server: LocalDNS, name: str) -> None:
    before = len(server.queries)
    assert Resolver([server.address], timeout=TIMEOUT).resolve(query(name)) == NXDOMAIN
    assert len(server.queries) == before


def test_a_trailing_dot_and_the_case_of_a_name_do_not_matter(server: LocalDNS) -> None:
    resolver = Resolver([server.address], timeout=TIMEOUT)
    assert resolver.resolve(query("Example.TEST.")).records == ("192.0.2.1", "192.0.2.2")


# -- the cache ---------------------------------------------------------------------------------


def test_a_second_question_is_answered_from_the_cache_in_any_case(server: LocalDNS) -> None:
    resolver = Resolver([server.address], timeout=TIMEOUT)
    first = resolver.resolve(query("mx1.example.test"))
    before = asked(server, "mx1.example.test")
    assert resolver.resolve(query("MX1.example.test")) == first
    assert asked(server, "mx1.example.test") == before


def test_an_answer_expires_with_its_ttl_capped_by_max_ttl() -> None:
    clock = Clock()
    zone = Zone({"ttl.example.test": [("A", "192.0.2.7")]})
    with local_dns(zone, ttl=300) as server:
        kept = Resolver([server.address], timeout=TIMEOUT, cache=DNSCache(clock=clock))
        capped = Resolver([server.address], timeout=TIMEOUT, cache=DNSCache(max_ttl=60, clock=clock))
        for resolver in (kept, capped):
            resolver.resolve(query("ttl.example.test"))
        assert len(server.queries) == 2
        clock.now += 61
        for resolver in (kept, capped):
            resolver.resolve(query("ttl.example.test"))
        assert len(server.queries) == 3  # only the capped one asked again
        clock.now += 240
        kept.resolve(query("ttl.example.test"))
        assert len(server.queries) == 4


@pytest.mark.parametrize(("name", "rdtype"), [("gone.example.test", RRType.A), ("there.example.test", RRType.TXT)])
def test_negative_answers_are_kept_for_the_soa_minimum(name: str, rdtype: RRType) -> None:
    clock = Clock()
    zone = Zone({"there.example.test": [("A", "192.0.2.8")]})
    with local_dns(zone, ttl=30) as server:
        resolver = Resolver([server.address], timeout=TIMEOUT, cache=DNSCache(negative_ttl=300, clock=clock))
        first = resolver.resolve(query(name, rdtype))
        assert first.status in {DNSStatus.NXDOMAIN, DNSStatus.NODATA}
        clock.now += 29
        assert resolver.resolve(query(name, rdtype)) == first
        assert len(server.queries) == 1
        clock.now += 2
        assert resolver.resolve(query(name, rdtype)) == first
        assert len(server.queries) == 2


def test_tempfail_is_never_kept(server: LocalDNS) -> None:
    resolver = Resolver([server.address], timeout=TIMEOUT)
    before = asked(server, "broken.example.test")
    for _ in range(2):
        assert resolver.resolve(query("broken.example.test")) == TEMPFAIL
    assert asked(server, "broken.example.test") == before + 2
    assert len(resolver.cache) == 0


def test_a_negative_answer_without_ttl_lives_negative_ttl_and_ttls_are_bounded() -> None:
    clock = Clock()
    cache = DNSCache(negative_ttl=100, min_ttl=10, max_ttl=50, clock=clock)
    cache.put(query("a.test"), NXDOMAIN)
    cache.put(query("b.test"), DNSAnswer.of("192.0.2.1"), ttl=0)
    cache.put(query("c.test"), TEMPFAIL, ttl=100)
    clock.now += 9
    assert (cache.get(query("a.test")), cache.get(query("b.test")), cache.get(query("c.test"))) == (
        NXDOMAIN,
        DNSAnswer.of("192.0.2.1"),
        None,
    )
    clock.now += 2
    assert cache.get(query("b.test")) is None  # min_ttl 10
    clock.now += 40
    assert cache.get(query("a.test")) is None  # negative_ttl 100, capped to max_ttl 50


def test_the_cache_holds_at_most_max_entries_dropping_the_least_recently_used() -> None:
    cache = DNSCache(max_entries=2)
    for name in ("a.test", "b.test"):
        cache.put(query(name), DNSAnswer.of("192.0.2.1"), ttl=60)
    assert cache.get(query("a.test")) is not None
    cache.put(query("c.test"), DNSAnswer.of("192.0.2.3"), ttl=60)
    assert len(cache) == 2
    assert cache.get(query("b.test")) is None
    assert cache.get(query("a.test")) is not None
    assert cache.get(query("c.test")) is not None


@pytest.mark.parametrize(
    "settings",
    [
        {"max_entries": 0},
        {"max_entries": True},
        {"max_ttl": -1},
        {"negative_ttl": float("nan")},
        {"min_ttl": 9, "max_ttl": 5},
    ],
)
def test_bad_cache_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="DNSCache"):
        DNSCache(**settings)  # type: ignore[arg-type]


# -- checks and the budget ---------------------------------------------------------------------


def mail_hosts(domain: str) -> Steps[tuple[DNSAnswer, ...]]:
    """A check in two rounds: the MX hosts, then all their addresses at once."""
    exchanges = yield from ask_one(query(domain, RRType.MX))
    addresses = yield from ask(*(query(host) for host in exchanges.records))
    return tuple(addresses[query(host)] for host in exchanges.records)


def spf_text(domain: str) -> Steps[DNSAnswer]:
    return (yield from ask_one(query(domain, RRType.TXT)))


def silent_names() -> Steps[tuple[DNSAnswer, ...]]:
    answers = yield from ask(*(query(name) for name in SILENT))
    return tuple(answers.values())


def expected_checks() -> tuple[object, ...]:
    return run(Check(gather(mail_hosts("example.test"), spf_text("example.test"))), ZONE.resolve)


def test_a_check_runs_end_to_end(server: LocalDNS) -> None:
    check = Check(gather(mail_hosts("example.test"), spf_text("example.test")))
    result = Resolver([server.address], timeout=TIMEOUT).run(check)
    assert result == expected_checks()
    assert result[0] == (DNSAnswer.of("192.0.2.11"), DNSAnswer.of("192.0.2.12"))


def test_the_budget_bounds_a_whole_check(server: LocalDNS) -> None:
    before = sum(asked(server, name) for name in SILENT)
    started = time.monotonic()
    answers = Resolver([server.address], timeout=TIMEOUT).run(Check(silent_names()), budget=0.5)
    elapsed = time.monotonic() - started
    assert answers == (TEMPFAIL,) * len(SILENT)
    assert elapsed < 0.5 + 2 * 0.1 + 0.3  # two asked, each maybe 0.1 s late; the rest not asked
    assert sum(asked(server, name) for name in SILENT) - before == 2


def test_a_spent_budget_still_answers_from_the_cache(server: LocalDNS) -> None:
    resolver = Resolver([server.address], timeout=TIMEOUT)
    resolver.resolve(query("mx2.example.test"))
    before = len(server.queries)
    check = Check(ask(query("mx2.example.test"), query("mx1.example.test")))
    answers = resolver.run(check, budget=0)
    assert answers == {query("mx2.example.test"): DNSAnswer.of("192.0.2.12"), query("mx1.example.test"): TEMPFAIL}
    assert len(server.queries) == before


# -- the async resolver, on asyncio and trio ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_answers_match_the_blocking_ones(server: LocalDNS, backend: str) -> None:
    questions = [query(name, rdtype) for name, rdtype, _ in READ_AS] + [
        query("big.example.test", RRType.TXT),
        query("nowhere.example.test"),
        query("example.test", RRType.PTR),
        query("broken.example.test"),
    ]

    async def main() -> list[DNSAnswer]:
        resolver = AsyncResolver([server.address], timeout=TIMEOUT)
        return [await resolver.resolve(question) for question in questions]

    assert anyio.run(main, backend=backend) == [ZONE.resolve(question) for question in questions]


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_check_runs_end_to_end(server: LocalDNS, backend: str) -> None:
    async def main() -> tuple[object, ...]:
        resolver = AsyncResolver([server.address], timeout=TIMEOUT)
        return await resolver.run(Check(gather(mail_hosts("example.test"), spf_text("example.test"))))

    assert anyio.run(main, backend=backend) == expected_checks()


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_queries_of_a_round_go_out_together(server: LocalDNS, backend: str) -> None:
    before = sum(asked(server, name) for name in SILENT)

    async def main() -> tuple[DNSAnswer, ...]:
        return await AsyncResolver([server.address], timeout=TIMEOUT).run(Check(silent_names()), budget=5)

    started = time.monotonic()
    assert anyio.run(main, backend=backend) == (TEMPFAIL,) * len(SILENT)
    assert time.monotonic() - started < 2 * TIMEOUT + 0.2  # one timeout, not five
    assert sum(asked(server, name) for name in SILENT) - before == len(SILENT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_budget_cuts_a_round_short(server: LocalDNS, backend: str) -> None:
    async def main() -> tuple[DNSAnswer, ...]:
        return await AsyncResolver([server.address], timeout=5).run(Check(silent_names()), budget=0.3)

    started = time.monotonic()
    assert anyio.run(main, backend=backend) == (TEMPFAIL,) * len(SILENT)
    assert time.monotonic() - started < 0.3 + 0.3


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_resolve_never_outlives_its_timeout(server: LocalDNS, backend: str) -> None:
    async def main() -> DNSAnswer:
        return await AsyncResolver([server.address], timeout=TIMEOUT).resolve(query(SILENT[1]))

    started = time.monotonic()
    assert anyio.run(main, backend=backend) == TEMPFAIL
    assert time.monotonic() - started < TIMEOUT + 0.2


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_nameservers_are_host_port(given: str, parsed: tuple[str, int]) -> None:
    assert Resolver([given]).nameservers == (parsed,)
    assert AsyncResolver([given]).nameservers == (parsed,)


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("dns.example.test", "is not an IP address"),
        ("", "is not an IP address"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535"),
        ("127.0.0.1:65536", "port must be a number from 1 to 65535"),
        ("127.0.0.1:", "port must be a number from 1 to 65535"),
        ("127.0.0.1:\uff15\uff13", "port must be a number from 1 to 65535"),
        ("[::1", r"\[ADDRESS\]:PORT"),
        ("[::1]53", r"\[ADDRESS\]:PORT"),
        ("[127.0.0.1]:53", "brackets are for IPv6 addresses only"),
    ],
)
def test_bad_nameservers_are_refused_clearly(given: str, complaint: str) -> None:
    for kind in (Resolver, AsyncResolver):
        with pytest.raises(ValueError, match=complaint):
            kind([given])


def test_one_nameserver_string_instead_of_a_list_is_refused() -> None:
    with pytest.raises(ValueError, match=r"write \['127.0.0.1'\]"):
        Resolver("127.0.0.1")


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), "2"])
def test_bad_timeouts_are_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match="Resolver timeout must be a positive number of seconds"):
        Resolver(["127.0.0.1"], timeout=timeout)


def test_a_bad_budget_is_refused(server: LocalDNS) -> None:
    with pytest.raises(ValueError, match="budget"):
        Resolver([server.address]).run(Check(spf_text("example.test")), budget=-1)


def test_without_nameservers_an_unreadable_system_configuration_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreadable(self: dns.resolver.Resolver, filename: object) -> None:
        raise dns.resolver.NoResolverConfiguration("cannot open")  # type: ignore[no-untyped-call]

    monkeypatch.setattr(dns.resolver.Resolver, "read_resolv_conf", unreadable)
    with pytest.raises(RuntimeError, match="give the nameservers to ask"):
        Resolver()
