"""Coverage-guided fuzz target for DMARC and Authentication-Results (atheris / libFuzzer).

Fuzz (new inputs go to the first directory, ``fuzz/corpus-dmarc`` is only read)::

    python fuzz/fuzz_dmarc.py -atheris_runs=20000 -max_len=4096 "$(mktemp -d)" fuzz/corpus-dmarc

Rewrite the named seeds after changing the input format::

    python fuzz/fuzz_dmarc.py --write-seeds fuzz/corpus-dmarc

Input format: one byte ``draw`` (the DMARC ``sample`` is ``draw / 256``),
then bytes that are read both as a message and (as latin-1) as a DMARC
record.  ``tests/test_dmarc.py`` replays the corpus through ``TestOneInput``
without atheris.

Invariants: ``parse_dmarc`` returns a record or raises ``DMARCSyntaxError``;
``author_domains`` never raises and gives lowercased host names;
``remove_claims`` never raises and only takes whole Authentication-Results
fields out of the header block; ``check_dmarc`` over a zone holding the
record never raises and gives a consistent result, whose
Authentication-Results field authres reads back.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # replaying the corpus needs no atheris
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["smtpwire_verify"]):
        from smtpwire_verify import _author, _dmarc, _header
else:
    from smtpwire_verify import _author, _dmarc, _header

import authres  # type: ignore[import-untyped]  # authres ships no type hints

from smtpwire_verify import Check, DNSAnswer, DNSQuery, MethodResult, run

POLICIES = _dmarc.POLICIES

AUTHSERV_ID = "mx.example"
RESULTS = ("pass", "fail", "none", "temperror", "permerror")


def check_record(text: str) -> None:
    try:
        record = _dmarc.parse_dmarc(text)
    except _dmarc.DMARCSyntaxError:
        return
    assert isinstance(record, _dmarc.DMARCRecord)
    assert record.p in POLICIES and record.sp in (*POLICIES, None) and 0 <= record.pct <= 100


def check_authors(message: bytes) -> tuple[str, ...] | None:
    domains = _author.author_domains(message)
    assert domains is None or all(domain == domain.lower() and domain.isascii() for domain in domains)
    return domains


def check_claims_removed(message: bytes) -> None:
    """The output is the input less some of its own Authentication-Results fields, the rest unchanged."""
    out = _header.remove_claims(message, AUTHSERV_ID)
    fields, rest = _header.split_header(message)
    assert out.endswith(rest)
    kept = iter(_header.split_header(out)[0])
    expected = next(kept, None)
    for field in fields:
        if field == expected:
            expected = next(kept, None)
        else:
            assert _header.field_name(field) == b"authentication-results", field
    assert expected is None
    assert _header.remove_claims(out, AUTHSERV_ID) == out


def resolver(record: str) -> Callable[[DNSQuery], DNSAnswer]:
    def resolve(query: DNSQuery) -> DNSAnswer:
        return DNSAnswer.of(record) if query.name == "_dmarc.example.com" else DNSAnswer.of()

    return resolve


def check_dmarc_over(record: str, domains: tuple[str, ...] | None, sample: float) -> None:
    spf = MethodResult("spf", "pass", None, (("smtp.mailfrom", "a@bounce.example.com"),))
    dkim = [MethodResult("dkim", "fail", record, (("header.d", "example.com"), ("header.s", record)))]
    steps = _dmarc.check_dmarc(domains, spf=spf, spf_domain="bounce.example.com", dkim=dkim, sample=sample)
    result = run(Check(steps), resolver(record))
    assert isinstance(result, _dmarc.DMARCResult) and result.result in RESULTS
    assert result.policy in (*POLICIES, None) and result.disposition in POLICIES
    assert result.disposition == "none" or result.result == "fail"
    written = [result.method_result(), *dkim]
    header = _header.authentication_results(AUTHSERV_ID, written).decode("ascii")
    parsed = authres.AuthenticationResultsHeader.parse(header)
    assert [(item.method, item.result) for item in parsed.results] == [(item.method, item.result) for item in written]


def TestOneInput(data: bytes) -> None:
    sample = (data[:1] or b"\0")[0] / 256
    body = data[1:]
    record = body.decode("latin-1")
    check_record(record)
    domains = check_authors(body)
    check_claims_removed(body)
    check_dmarc_over(record, ("mail.example.com",), sample)
    check_dmarc_over(record, domains, sample)


#: Named seeds: the whole input, ``draw`` byte first.
SEEDS: dict[str, bytes] = {
    "record-full": b"\x00v=DMARC1; p=reject; sp=quarantine; pct=50; adkim=s; aspf=r; rua=mailto:a@example.com!10m",
    "record-sampled-out": b"\xc0v=DMARC1; p=reject; pct=50",
    "record-rua-only": b"\x10v=DMARC1; rua=mailto:agg@example.com, https://r.example/x",
    "record-bad-pct": b"\x00v=DMARC1; p=reject; pct=1000",
    "record-duplicate-tag": b"\x00v=DMARC1; p=none; P=reject",
    "record-not-dmarc": b"\x00v=spf1 include:example.com -all",
    "message-display-names": b'\x00From: "Doe, J." <j@Example.COM>\r\nSubject: hi\r\n\r\nbody\r\n',
    "message-group-comments": b"\x00From: (c (n)) team: a@x.example, b@y.example;\r\n\r\n",
    "message-encoded-idn": "\x00From: =?utf-8?q?J=C3=BC?= <j@bücher.example>\r\n\r\n".encode(),
    "message-two-froms": b"\x00From: a@example.com\r\nFrom: b@example.net\r\n\r\nx",
    "message-forged-claims": (
        b"\x00Authentication-Results: (forged) MX.Example;\r\n\tdmarc=pass header.from=example.com\r\n"
        b'Authentication-Results: "other.example"; spf=fail\r\nFrom: a@example.com\r\n\r\n'
        b"Authentication-Results: mx.example; body\r\n"
    ),
    "message-no-separator": b"\x00From: a@example.com\r\nAuthentication-Results: mx.example; none",
    "record-mailbox-like": b"\x00Fr=?utf-8?q?J=C3=B@?r=?ut\xe2\xc3\xbcch",
    "message-unclosed-comment": b"\x00Authentication-Results: (mx.example; spf=pass\r\nFrom: (a@b.example\r\n\r\n",
}


if __name__ == "__main__":
    from _cli import main

    main(TestOneInput, SEEDS, atheris)
