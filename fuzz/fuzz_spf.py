"""Coverage-guided fuzz target for the SPF record parser, macro strings and evaluator (atheris / libFuzzer).

Fuzz (new inputs go to the first directory, ``fuzz/corpus-spf`` is only read)::

    python fuzz/fuzz_spf.py -atheris_runs=20000 -max_len=2048 "$(mktemp -d)" fuzz/corpus-spf

Rewrite the named seeds after changing the input format::

    python fuzz/fuzz_spf.py --write-seeds fuzz/corpus-spf

Input format: a record's text, then optionally a NUL and an explanation
macro string, both read as latin-1 (as TXT records reach the evaluator).
``tests/test_spf.py`` replays the corpus through ``TestOneInput`` without atheris.

Invariants: ``parse_record`` returns an ``SPFRecord`` or raises
``SPFSyntaxError``, nothing else; so does the explanation parser, and what it
parses expands; evaluated for an IPv4 and an IPv6 client against a small
static zone that publishes the record (and the explanation), ``check_host``
never raises, returns one of the seven results, and asks at most
``MAX_QUERIES`` questions.
"""

from __future__ import annotations

try:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # replaying the corpus needs no atheris
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["smtpwire_verify"]):
        import smtpwire_verify._spf as spf
        import smtpwire_verify._spf_macro as spf_macro
else:
    import smtpwire_verify._spf as spf
    import smtpwire_verify._spf_macro as spf_macro

from smtpwire_verify import NXDOMAIN, TEMPFAIL, Check, DNSAnswer, DNSQuery, run

RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})
DOMAIN = "fuzz.example"
CLIENTS = ("192.0.2.1", "2001:db8::1")

#: The static zone around the record: names it can include, redirect to, look up and loop through.
STATIC: dict[tuple[str, str], tuple[str, ...]] = {
    ("fuzz.example", "A"): ("192.0.2.1",),
    ("fuzz.example", "AAAA"): ("2001:db8::1",),
    ("fuzz.example", "MX"): ("mx.fuzz.example", "mx2.fuzz.example"),
    ("mx.fuzz.example", "A"): ("192.0.2.10",),
    ("mx2.fuzz.example", "AAAA"): ("2001:db8::1",),
    ("other.example", "TXT"): ("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",),
    ("loop.example", "TXT"): ("v=spf1 include:fuzz.example ~all",),
    ("1.2.0.192.in-addr.arpa", "PTR"): ("fuzz.example", "host.other.example"),
    ("host.other.example", "A"): ("192.0.2.1",),
}


class StaticZone:
    """Answers from ``STATIC`` plus the fuzzed record and explanation; counts the questions."""

    def __init__(self, record: str, explanation: str) -> None:
        self.records = dict(STATIC)
        self.records[(DOMAIN, "TXT")] = (record,)
        self.records[(f"exp.{DOMAIN}", "TXT")] = (explanation,)
        self.asked = 0

    def __call__(self, query: DNSQuery) -> DNSAnswer:
        self.asked += 1
        if query.name.startswith("timeout."):
            return TEMPFAIL
        records = self.records.get((query.name.lower(), str(query.rdtype)))
        return DNSAnswer.of(*records) if records is not None else NXDOMAIN


def check_parsers(record: str, explanation: str) -> None:
    try:
        parsed = spf.parse_record(record)
    except spf.SPFSyntaxError:
        pass
    else:
        assert isinstance(parsed, spf.SPFRecord)
    try:
        tokens = spf_macro.parse_macro_string(explanation, explanation=True)
    except spf_macro.SPFSyntaxError:
        return
    assert len(spf_macro.expand(tokens, lambda letter: f"{letter}.value", limit=100)) <= 100


def check_evaluation(record: str, explanation: str, client: str) -> None:
    zone = StaticZone(record, explanation)
    result = run(Check(spf.check_host(client, DOMAIN, f"user@{DOMAIN}", helo="helo.example")), zone)
    assert result.result in RESULTS, result
    assert zone.asked <= spf.MAX_QUERIES, (zone.asked, result)
    assert result.explanation is None or result.result == "fail", result


def TestOneInput(data: bytes) -> None:
    record, _, explanation = data.decode("latin-1").partition("\0")
    check_parsers(record, explanation)
    for client in CLIENTS:
        check_evaluation(record, explanation, client)


#: Named seeds, from records of the RFC 7208 test suite and the static zone above.
SEEDS: dict[str, str] = {
    "plain-ip4-include": "v=spf1 ip4:192.0.2.0/24 include:other.example -all",
    "include-loop": "v=spf1 include:loop.example -all",
    "mx-dual-cidr": "v=spf1 mx/24//64 a:fuzz.example/32 -all",
    "ptr-and-p-macro": "v=spf1 ptr:other.example exists:%{p}.fuzz.example -all",
    "redirect-macro": "v=spf1 redirect=%{d2}",
    "exp-macros": "v=spf1 -all exp=exp.%{d}\0%{c} is not one of %{d}'s (%{ir}.%{v}.arpa) at %{t} %{R}%%%_%-",
    "upper-macro-delimiters": "v=spf1 -exists:%{L}.%{lr-}.%{o2r+=}.fuzz.example -all",
    "macro-mania": "v=spf1 a:macro%%percent%_%_space%-url-space.example.com -all",
    "void-lookups": "v=spf1 a:n1.example a:n2.example mx:n3.example ?all",
    "timeout-exists": "v=spf1 exists:timeout.example -all",
    "syntax-errors": "v=spf1 ip4:1.2.3.4/033 exp=foo.%{ redirect=a.example redirect=b.example",
    "unknown-modifier-nonascii": "v=spf1 foo=%{l}.bar ip6:::1.1.1.1/0 ~all \xe9",
}


if __name__ == "__main__":
    from _cli import main

    main(TestOneInput, {name: text.encode("latin-1") for name, text in SEEDS.items()}, atheris)
