"""The Authentication-Results header field (RFC 8601): how it is written, and forged copies of ours removed."""

from __future__ import annotations

import authres  # type: ignore[import-untyped]  # authres ships no type hints
import pytest

from smtpwire_verify import MethodResult
from smtpwire_verify._header import LINE_WIDTH, MAX_VALUE, authentication_results, remove_claims

SPF = MethodResult("spf", "pass", None, (("smtp.mailfrom", "bounce@example.com"), ("smtp.helo", "mail.example.com")))
DKIM = MethodResult(
    "dkim",
    "pass",
    None,
    (("header.d", "example.com"), ("header.s", "sel2024"), ("header.a", "rsa-sha256"), ("header.b", "Ab/+9xY=")),
)
DKIM_FAIL = MethodResult("dkim", "fail", "signature did not verify", (("header.d", "example.net"),))
DMARC = MethodResult("dmarc", "pass", None, (("header.from", "example.com"), ("policy.dmarc", "reject")))
ARC = MethodResult("arc", "none")
ARC_PASS = MethodResult("arc", "pass", None, (("smtp.remote-ip", "192.0.2.1"), ("header.oldest-pass", "0")))


def parsed(field: bytes) -> list[tuple[str, str, str | None, list[tuple[str, str]]]]:
    """The results authres reads from ``field``, as (method, result, reason, properties)."""
    header = authres.AuthenticationResultsHeader.parse(field.decode("ascii"))
    return [
        (
            result.method,
            result.result,
            result.reason,
            [(f"{item.type}.{item.name}", item.value) for item in result.properties],
        )
        for result in header.results
    ]


def as_tuples(result: MethodResult) -> tuple[str, str, str | None, list[tuple[str, str]]]:
    return result.method, result.result, result.reason, list(result.properties)


# -- writing ------------------------------------------------------------------------------------------


def test_each_method_on_its_own_line() -> None:
    field = authentication_results("mx.example.org", [SPF, DKIM, DKIM_FAIL, DMARC, ARC_PASS])
    assert field == (
        b"Authentication-Results: mx.example.org;\r\n"
        b"\tspf=pass smtp.mailfrom=bounce@example.com smtp.helo=mail.example.com;\r\n"
        b"\tdkim=pass header.d=example.com header.s=sel2024 header.a=rsa-sha256\r\n"
        b'\t  header.b="Ab/+9xY=";\r\n'
        b'\tdkim=fail reason="signature did not verify" header.d=example.net;\r\n'
        b"\tdmarc=pass header.from=example.com policy.dmarc=reject;\r\n"
        b"\tarc=pass smtp.remote-ip=192.0.2.1 header.oldest-pass=0\r\n"
    )


def test_a_result_without_properties() -> None:
    assert (
        authentication_results("mx.example.org", [ARC]) == b"Authentication-Results: mx.example.org;\r\n\tarc=none\r\n"
    )


def test_no_results_is_none() -> None:
    field = authentication_results("mx.example.org", [])
    assert field == b"Authentication-Results: mx.example.org; none\r\n"
    assert parsed(field) == []


def test_the_typical_results_read_back_through_authres() -> None:
    results = [SPF, DKIM, DKIM_FAIL, DMARC, ARC_PASS, ARC]
    field = authentication_results("mx.example.org", results)
    assert parsed(field) == [as_tuples(result) for result in results]
    assert authres.AuthenticationResultsHeader.parse(field.decode()).authserv_id == "mx.example.org"


def test_a_long_result_is_folded_between_its_words() -> None:
    long_mailbox = "a-rather-long-bounce-address+" + "x" * 20 + "@bounces.mailer.example.com"
    result = MethodResult(
        "spf", "pass", None, (("smtp.mailfrom", long_mailbox), ("smtp.helo", "mx1.mailer.example.com"))
    )
    field = authentication_results("mx.example.org", [result, DKIM])
    lines = field.split(b"\r\n")
    assert lines[-1] == b"" and all(b"\n" not in line and b"\r" not in line for line in lines)
    assert lines[1:4] == [
        b"\tspf=pass",
        b"\t  smtp.mailfrom=" + long_mailbox.encode(),
        b"\t  smtp.helo=mx1.mailer.example.com;",
    ]
    assert all(len(line.expandtabs(8)) <= LINE_WIDTH for line in lines if long_mailbox.encode() not in line)
    assert all(line == line.rstrip() for line in lines)
    assert parsed(field) == [as_tuples(result), as_tuples(DKIM)]


HOSTILE = [
    ("header.s", "a b@c; dkim=pass", '"a b@c; dkim=pass"'),
    ("smtp.mailfrom", "x@y\r\nX-Injected: yes", '"x@y??X-Injected: yes"'),
    ("header.d", "evil.example;dmarc=pass", '"evil.example;dmarc=pass"'),
    ("smtp.helo", 'say "hi" \\ (comment)', '"say \\"hi\\" \\\\ (comment)"'),
    ("smtp.helo", "b\u00fccher\x00\x7f\t.example", '"b?cher???.example"'),
    ("smtp.helo", "", '""'),
    ("smtp.mailfrom", '"john doe"@example.com', '"john doe"@example.com'),
]


@pytest.mark.parametrize(("name", "value", "written"), HOSTILE, ids=[case[0] + repr(case[1]) for case in HOSTILE])
def test_hostile_values_are_cleaned_and_quoted(name: str, value: str, written: str) -> None:
    result = MethodResult("spf", "pass", None, (("smtp.remote-ip", "192.0.2.1"), (name, value)))
    field = authentication_results("mx.example.org", [result, DMARC])
    unfolded = field.replace(b"\r\n\t  ", b" ")
    assert f"\tspf=pass smtp.remote-ip=192.0.2.1 {name}={written};\r\n".encode() in unfolded
    assert unfolded.count(b"\r\n") == 3 and field.isascii()
    methods = [(method, outcome) for method, outcome, _, _ in parsed(field)]
    assert methods == [("spf", "pass"), ("dmarc", "pass")]


def test_quoted_values_go_last_so_authres_reads_them() -> None:
    result = MethodResult("dkim", "pass", None, (("header.b", "ab/cd=="), ("header.d", "example.com")))
    field = authentication_results("mx.example.org", [result])
    assert field.endswith(b'\tdkim=pass header.d=example.com header.b="ab/cd=="\r\n')
    assert parsed(field) == [("dkim", "pass", None, [("header.d", "example.com"), ("header.b", "ab/cd==")])]


def test_a_hostile_reason_is_cleaned_and_quoted() -> None:
    result = MethodResult("dkim", "fail", 'bad\r\n"sig"; spf=pass', (("header.d", "example.com"),))
    field = authentication_results("mx.example.org", [result])
    assert b'\tdkim=fail reason="bad??\\"sig\\"; spf=pass" header.d=example.com\r\n' in field
    assert [(method, outcome) for method, outcome, _, _ in parsed(field)] == [("dkim", "fail")]


def test_a_reason_is_never_written_as_a_mailbox() -> None:
    result = MethodResult(
        "dkim", "fail", "a=b@c.example", (("header.i", "a=b@c.example"), ("header.s", "s@x_y.example"))
    )
    field = authentication_results("mx.example.org", [result])
    assert b'\tdkim=fail reason="a=b@c.example" header.i=a=b@c.example\r\n\t  header.s="s@x_y.example"\r\n' in field
    assert parsed(field) == [as_tuples(result)]


def test_an_overlong_value_is_cut() -> None:
    result = MethodResult("dkim", "pass", "r" * 1000, (("header.s", "s" * 1000),))
    field = authentication_results("mx.example.org", [result])
    assert b"s" * MAX_VALUE + b"\r\n" in field and b"s" * (MAX_VALUE + 1) not in field
    assert b"reason=" + b"r" * MAX_VALUE + b"\r\n\t  header.s=" in field and b"r" * (MAX_VALUE + 1) not in field
    assert max(len(line) for line in field.split(b"\r\n")) < 998


@pytest.mark.parametrize("authserv_id", ["", "mx example", "mx.example;", "mx\r\n.example", "mx..example", "mx.é"])
def test_a_bad_authserv_id_is_refused(authserv_id: str) -> None:
    with pytest.raises(ValueError, match="authserv-id"):
        authentication_results(authserv_id, [SPF])


@pytest.mark.parametrize(
    "result",
    [
        MethodResult("spf pass", "pass"),
        MethodResult("spf", "pass; dkim=pass"),
        MethodResult("spf", "pass", None, (("smtp mailfrom", "x"),)),
        MethodResult("spf", "pass", None, (("evil.mailfrom", "x"),)),
        MethodResult("spf", "pass", None, (("smtp.", "x"),)),
    ],
)
def test_names_that_are_not_ours_to_write_are_refused(result: MethodResult) -> None:
    with pytest.raises(ValueError, match="RFC 8601"):
        authentication_results("mx.example.org", [result])


# -- removing forged claims -----------------------------------------------------------------------------

BODY = b"\r\nAuthentication-Results: mx.example.org; dkim=pass\r\nbody line\r\n"


@pytest.mark.parametrize(
    "forged",
    [
        b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=a@example.com\r\n",
        b"Authentication-Results: MX.Example.ORG; none\r\n",
        b"authentication-results:mx.example.org;dkim=pass\r\n",
        b"Authentication-Results : mx.example.org 1; dkim=pass\r\n",
        b'Authentication-Results: "mx.example.org"; dkim=pass\r\n',
        b"Authentication-Results: (from (nested) us) mx.example.org (c); dkim=pass\r\n",
        b"Authentication-Results: mx.example.org;\r\n\tspf=pass smtp.mailfrom=a@example.com;\r\n dkim=pass\r\n",
        b"Authentication-Results:\r\n mx.example.org; dmarc=pass\r\n",
        b"Authentication-Results: (an unclosed comment mx.example.org; dkim=pass\r\n",
        b"Authentication-Results:\r\n",
    ],
)
def test_our_claims_are_removed_whole(forged: bytes) -> None:
    head = b"Received: from a by b; Sun, 6 Dec 2026 10:00:00 +0000\r\n"
    tail = b"From: a@example.com\r\nSubject: hi\r\n"
    assert remove_claims(head + forged + tail + BODY, "mx.example.org") == head + tail + BODY
    assert remove_claims(forged + BODY, "MX.example.org") == BODY


@pytest.mark.parametrize(
    "other",
    [
        b"Authentication-Results: other.example; spf=pass\r\n",
        b"Authentication-Results: mx.example.org.evil.example; dkim=pass\r\n",
        b"Authentication-Results: mx.example.orgx; dkim=pass\r\n",
        b"Authentication-Results: (mx.example.org) other.example; dkim=pass\r\n",
        b"ARC-Authentication-Results: i=1; mx.example.org; dkim=pass\r\n",
        b"X-Authentication-Results: mx.example.org; dkim=pass\r\n",
        b"Authentication-Results-Copy: mx.example.org; dkim=pass\r\n",
        b"Subject: Authentication-Results: mx.example.org; dkim=pass\r\n",
    ],
)
def test_other_fields_are_kept_byte_for_byte(other: bytes) -> None:
    message = b"From: a@example.com\r\n" + other + b"Subject: x  \r\n" + BODY
    assert remove_claims(message, "mx.example.org") is message


def test_several_claims_among_others() -> None:
    message = (
        b"Authentication-Results: mx.example.org; spf=pass\r\n"
        b"Authentication-Results: other.example;\r\n\tspf=fail\r\n"
        b"Authentication-Results: mx.example.org;\r\n\tdkim=pass\r\n"
        b"Subject: x\r\n" + BODY
    )
    out = remove_claims(message, "mx.example.org")
    assert out == b"Authentication-Results: other.example;\r\n\tspf=fail\r\nSubject: x\r\n" + BODY


def test_a_header_only_message() -> None:
    message = b"Subject: x\r\nAuthentication-Results: mx.example.org; spf=pass"
    assert remove_claims(message, "mx.example.org") == b"Subject: x\r\n"
    assert remove_claims(b"Authentication-Results: mx.example.org; spf=pass\r\n", "mx.example.org") == b""


def test_bare_lf_line_ends() -> None:
    message = (
        b"Authentication-Results: mx.example.org;\n spf=pass\nSubject: x\n\nAuthentication-Results: mx.example.org\n"
    )
    assert remove_claims(message, "mx.example.org") == b"Subject: x\n\nAuthentication-Results: mx.example.org\n"


def test_a_message_that_is_all_body() -> None:
    message = b"\r\nAuthentication-Results: mx.example.org; spf=pass\r\n"
    assert remove_claims(message, "mx.example.org") is message
    assert remove_claims(b"", "mx.example.org") == b""


def test_a_continuation_line_before_any_field_is_kept() -> None:
    message = b" stray continuation\r\nAuthentication-Results: mx.example.org; spf=pass\r\nSubject: x\r\n\r\nbody"
    assert remove_claims(message, "mx.example.org") == b" stray continuation\r\nSubject: x\r\n\r\nbody"


def test_what_we_write_is_what_we_remove() -> None:
    field = authentication_results("mx.example.org", [SPF, DKIM, DMARC])
    message = field + b"Subject: x\r\n" + BODY
    assert remove_claims(message, "mx.example.org") == b"Subject: x\r\n" + BODY


def test_a_huge_header_block_is_linear() -> None:
    lines = b"".join(b"Authentication-Results: mx.example.org;\r\n\tspf=pass\r\n" for _ in range(20_000))
    folded = b"X-Long: a\r\n" + b" b\r\n" * 100_000
    comment = b"Authentication-Results: " + b"(" * 10 + b"x" * 100_000 + b")" * 10 + b" other.example\r\n"
    message = lines + folded + comment + BODY
    assert remove_claims(message, "mx.example.org") == folded + comment + BODY
