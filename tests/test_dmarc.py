"""DMARC (RFC 7489): the record, the organizational domain, the From domains, and the check over a zone."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from types import ModuleType

import pytest

from smtpwire_verify import Check, DNSQuery, MethodResult, RRType, run
from smtpwire_verify._author import MAX_HEADER, author_domains
from smtpwire_verify._dmarc import (
    DMARCRecord,
    DMARCResult,
    DMARCSyntaxError,
    check_dmarc,
    organizational_domain,
    parse_dmarc,
)
from tests.dnszone import Zone
from tests.fuzzing import load_target

SPF_PASS = MethodResult("spf", "pass", None, (("smtp.mailfrom", "bounce@example.com"),))
SPF_FAIL = MethodResult("spf", "fail", None, (("smtp.mailfrom", "bounce@example.com"),))


def dkim(result: str, domain: str) -> MethodResult:
    return MethodResult("dkim", result, None, (("header.d", domain), ("header.s", "sel")))


def dmarc(
    zone: Zone,
    from_domains: tuple[str, ...] | None,
    *,
    spf: MethodResult | None = None,
    spf_domain: str | None = None,
    signatures: Sequence[MethodResult] = (),
    sample: float = 0.0,
) -> DMARCResult:
    steps = check_dmarc(from_domains, spf=spf, spf_domain=spf_domain, dkim=signatures, sample=sample)
    return run(Check(steps), zone)


def txt(name: str) -> DNSQuery:
    return DNSQuery(name, RRType.TXT)


def policy_zone(record: str, at: str = "example.com") -> Zone:
    return Zone({f"_dmarc.{at}": [("TXT", record)]})


# -- alignment ------------------------------------------------------------------------------------


def test_spf_aligned_relaxed_passes() -> None:
    zone = policy_zone("v=DMARC1; p=reject")
    result = dmarc(zone, ("example.com",), spf=SPF_PASS, spf_domain="bounce.mail.example.com")
    assert (result.result, result.spf_aligned, result.dkim_aligned) == ("pass", True, False)
    assert (result.policy, result.disposition, result.from_domain) == ("reject", "none", "example.com")


def test_spf_under_strict_alignment_must_match_exactly() -> None:
    zone = policy_zone("v=DMARC1; p=reject; aspf=s")
    assert dmarc(zone, ("example.com",), spf=SPF_PASS, spf_domain="mail.example.com").result == "fail"
    assert dmarc(zone, ("example.com",), spf=SPF_PASS, spf_domain="EXAMPLE.com.").result == "pass"


def test_spf_that_did_not_pass_does_not_align() -> None:
    zone = policy_zone("v=DMARC1; p=reject")
    result = dmarc(zone, ("example.com",), spf=SPF_FAIL, spf_domain="example.com")
    assert (result.result, result.spf_aligned, result.disposition) == ("fail", False, "reject")


def test_dkim_aligned_passes() -> None:
    zone = policy_zone("v=DMARC1; p=reject")
    signatures = [dkim("fail", "example.com"), dkim("pass", "other.example"), dkim("pass", "news.example.com")]
    result = dmarc(zone, ("example.com",), spf=SPF_FAIL, spf_domain="example.com", signatures=signatures)
    assert (result.result, result.spf_aligned, result.dkim_aligned) == ("pass", False, True)


def test_dkim_under_strict_alignment_must_match_exactly() -> None:
    zone = policy_zone("v=DMARC1; p=quarantine; adkim=s")
    assert dmarc(zone, ("example.com",), signatures=[dkim("pass", "news.example.com")]).result == "fail"
    assert dmarc(zone, ("example.com",), signatures=[dkim("pass", "example.com")]).result == "pass"


def test_failing_or_unaligned_signatures_fail() -> None:
    zone = policy_zone("v=DMARC1; p=reject")
    signatures = [dkim("fail", "example.com"), dkim("pass", "example.net"), MethodResult("dkim", "pass")]
    result = dmarc(zone, ("example.com",), signatures=signatures)
    assert (result.result, result.dkim_aligned, result.reason) == ("fail", False, "neither SPF nor DKIM passed aligned")


# -- policy and disposition ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["reject", "quarantine", "none"])
def test_a_failure_gets_the_published_policy(policy: str) -> None:
    result = dmarc(policy_zone(f"v=DMARC1; p={policy}"), ("example.com",))
    assert (result.result, result.policy, result.disposition) == ("fail", policy, policy)


def test_a_subdomain_without_a_record_gets_the_organizations_sp() -> None:
    zone = policy_zone("v=DMARC1; p=reject; sp=quarantine")
    result = dmarc(zone, ("mail.example.com",))
    assert (result.result, result.policy, result.disposition) == ("fail", "quarantine", "quarantine")
    assert zone.asked == [txt("_dmarc.mail.example.com"), txt("_dmarc.example.com")]


def test_the_organizational_domain_itself_gets_p_not_sp() -> None:
    result = dmarc(policy_zone("v=DMARC1; p=reject; sp=none"), ("example.com",))
    assert (result.policy, result.disposition) == ("reject", "reject")


def test_a_subdomain_with_its_own_record_gets_its_p() -> None:
    zone = policy_zone("v=DMARC1; p=none; sp=none")
    zone.add("_dmarc.mail.example.com", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    result = dmarc(zone, ("mail.example.com",))
    assert (result.policy, result.disposition) == ("reject", "reject")
    assert zone.asked == [txt("_dmarc.mail.example.com")]


def test_a_subdomain_falls_back_to_the_organizations_p_without_sp() -> None:
    zone = policy_zone("v=DMARC1; p=quarantine")
    zone.add("_dmarc.mail.example.com", "TXT", "spf-like junk, not DMARC")
    result = dmarc(zone, ("a.b.mail.example.com",))
    assert (result.result, result.policy) == ("fail", "quarantine")
    assert zone.asked == [txt("_dmarc.a.b.mail.example.com"), txt("_dmarc.example.com")]


@pytest.mark.parametrize(
    ("policy", "pct", "sample", "disposition"),
    [
        ("reject", 0, 0.0, "quarantine"),
        ("quarantine", 0, 0.0, "none"),
        ("reject", 50, 0.49, "reject"),
        ("reject", 50, 0.5, "quarantine"),
        ("quarantine", 50, 0.99, "none"),
        ("reject", 100, 0.999, "reject"),
    ],
)
def test_pct_samples_the_failures_subject_to_the_policy(policy: str, pct: int, sample: float, disposition: str) -> None:
    result = dmarc(policy_zone(f"v=DMARC1; p={policy}; pct={pct}"), ("example.com",), sample=sample)
    assert (result.result, result.policy, result.disposition) == ("fail", policy, disposition)


def test_pct_leaves_a_pass_alone() -> None:
    result = dmarc(policy_zone("v=DMARC1; p=reject; pct=0"), ("example.com",), signatures=[dkim("pass", "example.com")])
    assert (result.result, result.disposition) == ("pass", "none")


@pytest.mark.parametrize("sample", [-0.1, 1.0, float("nan")])
def test_a_sample_outside_0_1_is_the_callers_error(sample: float) -> None:
    with pytest.raises(ValueError, match="sample"):
        dmarc(policy_zone("v=DMARC1; p=reject"), ("example.com",), sample=sample)


# -- discovery -------------------------------------------------------------------------------------


def test_several_records_mean_no_policy_and_no_fallback() -> None:
    zone = Zone(
        {
            "_dmarc.mail.example.com": [("TXT", "v=DMARC1; p=reject"), ("TXT", "v=DMARC1; p=none")],
            "_dmarc.example.com": [("TXT", "v=DMARC1; p=reject")],
        }
    )
    result = dmarc(zone, ("mail.example.com",))
    assert (result.result, result.policy, result.disposition) == ("none", None, "none")
    assert result.reason == "several DMARC records at _dmarc.mail.example.com"
    assert zone.asked == [txt("_dmarc.mail.example.com")]


def test_other_txt_records_beside_the_dmarc_one_are_discarded() -> None:
    zone = Zone({"_dmarc.example.com": [("TXT", "v=spf1 -all"), ("TXT", "v=DMARC1; p=reject")]})
    assert dmarc(zone, ("example.com",)).disposition == "reject"


def test_no_record_is_none() -> None:
    zone = Zone({"example.com": [("TXT", "v=spf1 -all")]})
    result = dmarc(zone, ("mail.example.com",), spf=SPF_PASS, spf_domain="example.com")
    assert result == DMARCResult("none", "mail.example.com", reason="no DMARC record")
    assert zone.asked == [txt("_dmarc.mail.example.com"), txt("_dmarc.example.com")]


@pytest.mark.parametrize("garbage", ["v=DMARC2; p=reject", "p=reject; v=DMARC1", "v=DMARC1x", "\x00\xff", ""])
def test_a_record_not_starting_with_v_dmarc1_is_ignored(garbage: str) -> None:
    result = dmarc(policy_zone(garbage), ("example.com",))
    assert (result.result, result.policy, result.reason) == ("none", None, "no DMARC record")


@pytest.mark.parametrize(
    "record", ["v=DMARC1; p=reject; pct=150", "v=DMARC1; p=reject; adkim=x", "v=DMARC1; p=reject; p=none", "v=DMARC1;;"]
)
def test_a_broken_dmarc1_record_is_permerror(record: str) -> None:
    result = dmarc(policy_zone(record), ("example.com",))
    assert (result.result, result.disposition) == ("permerror", "none")
    assert result.reason is not None and result.reason.startswith("invalid DMARC record at _dmarc.example.com: ")


def test_a_record_without_a_policy_or_report_address_applies_none() -> None:
    result = dmarc(policy_zone("v=DMARC1; p=bogus"), ("example.com",))
    assert (result.result, result.policy) == ("none", None)


def test_a_record_with_a_bad_policy_but_a_report_address_is_p_none() -> None:
    result = dmarc(policy_zone("v=DMARC1; p=bogus; rua=mailto:agg@example.com"), ("example.com",))
    assert (result.result, result.policy, result.disposition) == ("fail", "none", "none")


def test_a_dns_failure_is_temperror() -> None:
    result = dmarc(Zone({"_dmarc.example.com": ["TIMEOUT"]}), ("example.com",))
    assert (result.result, result.disposition, result.policy) == ("temperror", "none", None)
    assert result.reason == "DNS failure looking up _dmarc.example.com"


def test_a_dns_failure_at_the_organizational_domain_is_temperror() -> None:
    result = dmarc(Zone({"_dmarc.example.com": ["TIMEOUT"]}), ("mail.example.com",))
    assert (result.result, result.from_domain) == ("temperror", "mail.example.com")


def test_an_unlisted_tld_is_a_public_suffix_of_one_label() -> None:
    zone = policy_zone("v=DMARC1; p=reject; sp=quarantine", at="example.test")
    assert dmarc(zone, ("example.test",), spf=SPF_PASS, spf_domain="bounce.example.test").result == "pass"
    result = dmarc(zone, ("mail.example.test",), spf=SPF_PASS, spf_domain="other.test")
    assert (result.result, result.disposition) == ("fail", "quarantine")
    assert zone.asked[-2:] == [txt("_dmarc.mail.example.test"), txt("_dmarc.example.test")]


def test_a_multi_label_public_suffix() -> None:
    zone = policy_zone("v=DMARC1; p=reject", at="example.co.uk")
    assert dmarc(zone, ("example.co.uk",), spf=SPF_PASS, spf_domain="mail.example.co.uk").result == "pass"
    assert dmarc(zone, ("example.co.uk",), spf=SPF_PASS, spf_domain="other.co.uk").result == "fail"
    zone.asked.clear()
    assert dmarc(zone, ("a.example.co.uk",)).disposition == "reject"
    assert zone.asked == [txt("_dmarc.a.example.co.uk"), txt("_dmarc.example.co.uk")]


def test_a_private_suffix_separates_its_tenants() -> None:
    zone = policy_zone("v=DMARC1; p=reject", at="victim.github.io")
    result = dmarc(zone, ("victim.github.io",), signatures=[dkim("pass", "evil.github.io")])
    assert (result.result, result.disposition) == ("fail", "reject")


# -- the From domains ------------------------------------------------------------------------------


def test_an_unparsable_from_is_permerror() -> None:
    zone = policy_zone("v=DMARC1; p=reject")
    assert dmarc(zone, None) == DMARCResult("permerror", reason="the From header field cannot be parsed")
    assert zone.asked == []


def test_no_from_domain_is_permerror() -> None:
    assert dmarc(Zone(), ()) == DMARCResult("permerror", reason="no From domain")


def test_several_addresses_in_one_domain_are_that_domain() -> None:
    zone = policy_zone("v=DMARC1; p=reject")
    result = dmarc(zone, ("example.com", "EXAMPLE.COM"), signatures=[dkim("pass", "example.com")])
    assert (result.result, result.from_domain) == ("pass", "example.com")
    assert zone.asked == [txt("_dmarc.example.com")]


def test_several_domains_are_each_evaluated_and_the_strictest_wins() -> None:
    zone = policy_zone("v=DMARC1; p=none")
    zone.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    zone.add("_dmarc.example.org", "TXT", "v=DMARC1; p=quarantine")
    signatures = [dkim("pass", "example.com")]
    result = dmarc(zone, ("example.com", "example.net", "example.org"), signatures=signatures)
    assert (result.result, result.from_domain, result.disposition) == ("fail", "example.net", "reject")
    assert set(zone.asked) == {txt("_dmarc.example.com"), txt("_dmarc.example.net"), txt("_dmarc.example.org")}


def test_several_domains_that_all_pass_pass() -> None:
    zone = policy_zone("v=DMARC1; p=reject")
    zone.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    signatures = [dkim("pass", "example.com"), dkim("pass", "example.net")]
    assert dmarc(zone, ("example.com", "example.net"), signatures=signatures).result == "pass"


def test_too_many_from_domains_is_permerror() -> None:
    domains = tuple(f"d{index}.example" for index in range(9))
    assert dmarc(Zone(), domains) == DMARCResult("permerror", reason="too many From domains")


@pytest.mark.parametrize("domain", ["exa mple.com", "a..b", "x" * 64 + ".example", ".".join(["abcd"] * 60), ""])
def test_a_from_domain_that_is_no_host_name_is_permerror(domain: str) -> None:
    zone = Zone()
    assert dmarc(zone, (domain,)).result == "permerror"
    assert zone.asked == []


def test_an_idn_from_domain_is_looked_up_as_a_labels() -> None:
    message = "From: Jürgen <j@Bücher.example>\r\nSubject: x\r\n\r\nhi\r\n".encode()
    domains = author_domains(message)
    assert domains == ("xn--bcher-kva.example",)
    zone = policy_zone("v=DMARC1; p=reject", at="xn--bcher-kva.example")
    result = dmarc(zone, domains, signatures=[dkim("pass", "xn--bcher-kva.example")])
    assert (result.result, result.from_domain) == ("pass", "xn--bcher-kva.example")


def test_the_method_result_carries_the_domain_and_policy() -> None:
    result = dmarc(policy_zone("v=DMARC1; p=quarantine"), ("example.com",))
    assert result.method_result() == MethodResult(
        "dmarc",
        "fail",
        "neither SPF nor DKIM passed aligned",
        (("header.from", "example.com"), ("policy.dmarc", "quarantine")),
    )
    assert DMARCResult("permerror", reason="no From domain").method_result() == MethodResult(
        "dmarc", "permerror", "no From domain"
    )


# -- organizational_domain ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "organization"),
    [
        ("mail.example.com", "example.com"),
        ("example.com", "example.com"),
        ("A.B.Example.COM.", "example.com"),
        ("mail.example.test", "example.test"),
        ("example.test", "example.test"),
        ("test", "test"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),
        ("x.victim.github.io", "victim.github.io"),
        ("www.xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_organizational_domain(domain: str, organization: str) -> None:
    assert organizational_domain(domain) == organization


# -- parse_dmarc -------------------------------------------------------------------------------------


def test_parse_a_full_record() -> None:
    record = parse_dmarc(
        "v=DMARC1; P=Reject; sp=none; pct=25; adkim=s; aspf=S; rua=mailto:a@example.com,mailto:b@example.net!10m;"
        " ruf=mailto:f@example.com; fo=1:d; rf=afrf; ri=3600; future=ignored"
    )
    assert record == DMARCRecord(
        p="reject",
        sp="none",
        pct=25,
        adkim="s",
        aspf="s",
        rua="mailto:a@example.com,mailto:b@example.net!10m",
        ruf="mailto:f@example.com",
        fo="1:d",
        rf="afrf",
        ri="3600",
    )


def test_parse_the_defaults() -> None:
    assert parse_dmarc("v = DMARC1 ;p=none") == DMARCRecord(p="none")


@pytest.mark.parametrize(
    ("text", "p", "sp"),
    [
        ("v=DMARC1; rua=mailto:agg@example.com", "none", None),
        ("v=DMARC1; p=reject; sp=bogus; rua=mailto:agg@example.com", "none", None),
        ("v=DMARC1; p=; rua=junk, https://report.example/dmarc", "none", None),
    ],
)
def test_parse_no_valid_policy_with_a_report_address_is_p_none(text: str, p: str, sp: str | None) -> None:
    record = parse_dmarc(text)
    assert (record.p, record.sp) == (p, sp)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("p=reject; v=DMARC1", "does not start with v=DMARC1"),
        ("v=dmarc1; p=reject", "does not start with v=DMARC1"),
        ("v=DMARC1; p=reject; pct=101", "pct=101"),
        ("v=DMARC1; p=reject; pct=-1", "pct=-1"),
        ("v=DMARC1; p=reject; pct=0050", "pct=0050"),
        ("v=DMARC1; p=reject; pct=\uff15", "not a tag=value list"),
        ("v=DMARC1; p=reject; aspf=relaxed", "aspf=relaxed"),
        ("v=DMARC1; p=reject; P=none", "a tag appears twice"),
        ("v=DMARC1; p", "not a tag=value list"),
        ("v=DMARC1; p=reject; 1x=y", "not a tag=value list"),
        ("v=DMARC1; p=reject; rua=mailto:a@b.example\x01", "not a tag=value list"),
        ("v=DMARC1; p=bogus", "no valid p="),
        ("v=DMARC1; p=none; sp=bogus; rua=not a uri", "no valid p="),
        ("v=DMARC1; p=none; x=" + "y" * 5000, "longer than 4096"),
    ],
)
def test_parse_errors(text: str, complaint: str) -> None:
    with pytest.raises(DMARCSyntaxError, match=complaint):
        parse_dmarc(text)


def test_the_syntax_error_is_a_value_error() -> None:
    assert issubclass(DMARCSyntaxError, ValueError)


# -- author_domains ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "domains"),
    [
        (b"From: a@Example.COM", ("example.com",)),
        (b'From: "Doe, John" <john@mail.example.org>', ("mail.example.org",)),
        (b"From: J. Doe <j@example.org>", ("example.org",)),
        (b"From: =?utf-8?q?evil@x.example_<a@x.example>?= <real@y.example>", ("y.example",)),
        (b"From: =?UTF-8?B?SsO8cmdlbg==?= <j@example.org>", ("example.org",)),
        (b"From: (a (nested) comment) a@b.example (c@d.example), e@f.example", ("b.example", "f.example")),
        (b'From: team: a@x.example, "q@q" <b@y.example>; , c@z.example', ("x.example", "y.example", "z.example")),
        (b"From: undisclosed-recipients:;", ()),
        (b'From: "a@evil.example"@quoted.example', ("quoted.example",)),
        (b"From: <@route.example,@r2.example:a@b.example>", ("b.example",)),
        (b"From: Jo\r\n Doe\r\n\t<jo@fold.example>", ("fold.example",)),
        (b"fRoM : a@x.example", ("x.example",)),
        (b"From: a@x.example\r\nSubject: s\r\nFrom: b@y.example", ("x.example", "y.example")),
        (b"From: user@b\xc3\xbccher.example", ("xn--bcher-kva.example",)),
        (b"From: user@fa\xc3\x9f.example", ("xn--fa-hia.example",)),
        (b"From: \xe5\xa5\xbd <user@example.org>", ("example.org",)),
        (b"Subject: no author", ()),
        (b"From:", ()),
        (b"Resent-From: a@x.example", ()),
    ],
)
def test_author_domains(header: bytes, domains: tuple[str, ...]) -> None:
    assert author_domains(header + b"\r\n\r\nFrom: body@not.counted\r\n") == domains


@pytest.mark.parametrize(
    "header",
    [
        b"From: nobody",
        b"From: <>",
        b"From: a@[192.0.2.1]",
        b"From: a@b.example.",
        b"From: a@x..example",
        b"From: a@b\xff.example",
        b"From: a@" + b"x" * 64 + b".example",
        b"From: a@b.example c@d.example",
        b"From: (unclosed a@b.example",
        b'From: "unclosed <a@b.example>',
        b"From: <a@b.example",
        b"From: a\\b@c.example",
        b"From: a@b.example;",
        b"From: " + b"(" * 40 + b")" * 40 + b" a@b.example",
        b"From: " + b", ".join(b"a@x%d.example" % index for index in range(65)),
    ],
)
def test_author_domains_unparsable(header: bytes) -> None:
    assert author_domains(header + b"\r\n\r\nbody\r\n") is None


def test_author_domains_reads_a_message_without_a_body() -> None:
    assert author_domains(b"Subject: x\r\nFrom: a@example.org") == ("example.org",)
    assert author_domains(b"From: a@example.org\n\nbody") == ("example.org",)


def test_author_domains_bounds_the_header_block() -> None:
    long_header = b"X-Filler: " + b"y" * MAX_HEADER + b"\r\n"
    assert author_domains(b"From: a@example.org\r\n" + long_header + b"\r\nbody") is None
    body = b"z" * (2 * MAX_HEADER)
    assert author_domains(b"From: a@example.org\r\n\r\n" + body) == ("example.org",)


# -- the fuzz target's corpus ------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus-dmarc"


def fuzz_target() -> ModuleType:
    return load_target("fuzz_dmarc")


@pytest.mark.parametrize("seed", sorted(CORPUS.iterdir()), ids=lambda path: path.name)
def test_the_fuzz_corpus_replays(seed: pathlib.Path) -> None:
    target = fuzz_target()
    assert seed.name not in target.SEEDS or seed.read_bytes() == target.SEEDS[seed.name]
    target.TestOneInput(seed.read_bytes())


def test_the_corpus_holds_every_named_seed() -> None:
    assert {path.name for path in CORPUS.iterdir()} >= set(fuzz_target().SEEDS)
