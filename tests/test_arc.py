"""ARC chain validation (RFC 8617): chains sealed by dkimpy at one and two hops, broken ones, and none."""

from __future__ import annotations

import time

import dkim  # type: ignore[import-untyped]
import pytest

from smtpwire_verify import Check, DNSQuery, MethodResult, RRType, run
from smtpwire_verify._arc import ARCResult, _remote_ip, check_arc
from tests.dnszone import Zone
from tests.test_dkim import MESSAGE, rsa_key

NOW = int(time.time())


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, str]]:
    return {"one": rsa_key(2048), "two": rsa_key(2048), "small": rsa_key(1024)}


@pytest.fixture(scope="module")
def zone(keys: dict[str, tuple[bytes, str]]) -> Zone:
    return Zone(
        {
            "one._domainkey.hop1.example": [("TXT", "v=DKIM1; k=rsa; p=" + keys["one"][1])],
            "two._domainkey.hop2.example": [("TXT", "v=DKIM1; k=rsa; p=" + keys["two"][1])],
            "small._domainkey.hop2.example": [("TXT", "v=DKIM1; k=rsa; p=" + keys["small"][1])],
            "slow._domainkey.hop2.example": ["TIMEOUT"],
        }
    )


def seal(
    keys: dict[str, tuple[bytes, str]], message: bytes, hop: int, cv: str, ip: str, key: str | None = None
) -> bytes:
    """``message`` as hop ``hop`` forwards it: its Authentication-Results (``arc=cv``, the client's address), sealed."""
    server = f"mx{hop}.hop{hop}.example"
    results = f"Authentication-Results: {server}; arc={cv} smtp.remote-ip={ip}; spf=pass smtp.mailfrom=example.org\r\n"
    received = results.encode() + message
    selector = key or ("one" if hop == 1 else "two")
    fields = dkim.arc_sign(
        received, selector.encode(), f"hop{hop}.example".encode(), keys[selector][0], server.encode()
    )
    assert fields, "dkimpy made no ARC set"
    return b"".join(fields) + received


def check(zone: Zone, message: bytes, **options: int) -> ARCResult:
    options.setdefault("now", NOW)
    return run(Check(check_arc(message, **options)), zone)


@pytest.fixture(scope="module")
def one_hop(keys: dict[str, tuple[bytes, str]]) -> bytes:
    return seal(keys, MESSAGE, 1, "none", "192.0.2.1")


@pytest.fixture(scope="module")
def two_hops(keys: dict[str, tuple[bytes, str]], one_hop: bytes) -> bytes:
    return seal(keys, one_hop, 2, "pass", "192.0.2.2")


def test_a_message_without_arc_is_none(zone: Zone) -> None:
    assert check(zone, MESSAGE) == ARCResult("none", 0)
    assert ARCResult("none", 0).method_result() == MethodResult("arc", "none")


def test_one_hop_passes_with_its_client_address(zone: Zone, one_hop: bytes) -> None:
    verdict = check(zone, one_hop)
    assert verdict == ARCResult("pass", 1, None, 0, "192.0.2.1")
    assert verdict.method_result() == MethodResult("arc", "pass", None, (("smtp.remote-ip", "192.0.2.1"),))


def test_two_hops_pass_and_name_the_first_hops_client(zone: Zone, two_hops: bytes) -> None:
    assert check(zone, two_hops) == ARCResult("pass", 2, None, 0, "192.0.2.1")


def test_all_keys_are_asked_at_once(two_hops: bytes) -> None:
    assert set(Check(check_arc(two_hops, now=NOW)).queries()) == {
        DNSQuery("one._domainkey.hop1.example", RRType.TXT),
        DNSQuery("two._domainkey.hop2.example", RRType.TXT),
    }


def test_a_body_changed_before_the_second_hop_moves_oldest_pass(
    zone: Zone, keys: dict[str, tuple[bytes, str]], one_hop: bytes
) -> None:
    """A list adds a footer, then seals: the chain holds, but only hop 2's AMS still validates (RFC 8617 5.2 step 6)."""
    footer = one_hop + b"-- \r\nThe list's footer\r\n"
    verdict = check(zone, seal(keys, footer, 2, "pass", "192.0.2.2"))
    assert verdict == ARCResult("pass", 2, None, 2, "192.0.2.2")
    assert verdict.method_result().properties == (("header.oldest-pass", "2"), ("smtp.remote-ip", "192.0.2.2"))


def test_a_body_changed_after_the_last_seal_fails(zone: Zone, two_hops: bytes) -> None:
    verdict = check(zone, two_hops.replace(b"Hello Bob", b"Hello Rob"))
    assert (verdict.result, verdict.instances) == ("fail", 2)
    assert verdict.reason == "Most recent ARC-Message-Signature did not validate"
    assert (verdict.oldest_pass, verdict.remote_ip) == (None, None)


def test_a_changed_seal_fails(zone: Zone, two_hops: bytes) -> None:
    verdict = check(zone, two_hops.replace(b"arc=none smtp.remote-ip=192.0.2.1", b"arc=none smtp.remote-ip=192.0.2.9"))
    assert (verdict.result, verdict.reason) == ("fail", "ARC-Seal[2] did not validate")


def without_field(message: bytes, name: bytes, instance: int) -> bytes:
    """``message`` without the (folded) header field ``name`` of ``instance``."""
    lines = message.split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(name + b": i=%d;" % instance))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i][:1].isspace())
    return b"\r\n".join(lines[:start] + lines[end:])


def test_a_removed_seal_fails(zone: Zone, two_hops: bytes) -> None:
    verdict = check(zone, without_field(two_hops, b"ARC-Seal", 1))
    assert (verdict.result, verdict.reason) == ("fail", "ARC sets are incomplete or not numbered 1 to N")


def test_a_missing_set_is_a_gap(zone: Zone, two_hops: bytes) -> None:
    message = two_hops
    for name in (b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"):
        message = without_field(message, name, 1)
    assert check(zone, message).result == "fail"


def test_a_latest_seal_saying_fail_fails_without_asking(
    zone: Zone, keys: dict[str, tuple[bytes, str]], one_hop: bytes
) -> None:
    message = seal(keys, one_hop, 2, "fail", "192.0.2.2")
    check_ = Check(check_arc(message, now=NOW))
    assert check_.done and check_.result == ARCResult("fail", 2, "ARC-Seal i=2 says cv=fail")


def test_a_key_query_that_fails_for_now_fails_the_chain(
    zone: Zone, keys: dict[str, tuple[bytes, str]], one_hop: bytes
) -> None:
    message = seal(keys, one_hop, 2, "pass", "192.0.2.2").replace(b"s=two;", b"s=slow;")
    assert check(zone, message) == ARCResult("fail", 2, "key query failed for now")


def test_a_key_under_the_minimum_fails(zone: Zone, keys: dict[str, tuple[bytes, str]], one_hop: bytes) -> None:
    message = seal(keys, one_hop, 2, "pass", "192.0.2.2", key="small")
    assert check(zone, message).result == "pass"
    assert check(zone, message, min_key_bits=2048).result == "fail"


@pytest.mark.parametrize(
    ("count", "reason"), [(51, "ARC-Seal has no instance from 1 to 50"), (151, "more than 50 ARC sets")]
)
def test_more_than_fifty_sets_fail_without_asking(zone: Zone, one_hop: bytes, count: int, reason: str) -> None:
    sets = b"".join(
        b"ARC-Seal: i=%d; cv=pass; a=rsa-sha256; d=hop1.example; s=one; b=AAAA\r\n" % n for n in range(2, count + 1)
    )
    check_ = Check(check_arc(sets + one_hop, now=NOW))
    assert check_.done and check_.result == ARCResult("fail", 0, reason)


def test_the_client_address_may_come_from_iprev_and_must_be_an_address(
    zone: Zone, keys: dict[str, tuple[bytes, str]]
) -> None:
    def hop(results: bytes) -> bytes:
        received = b"Authentication-Results: mx1.hop1.example; " + results + b"\r\n" + MESSAGE
        return (
            b"".join(dkim.arc_sign(received, b"one", b"hop1.example", keys["one"][0], b"mx1.hop1.example")) + received
        )

    assert check(zone, hop(b"arc=none; iprev=pass policy.iprev=192.0.2.7")).remote_ip == "192.0.2.7"
    assert check(zone, hop(b"arc=none smtp.remote-ip=client.example")) == ARCResult("pass", 1, None, 0, None)


def test_fields_dkimpy_cannot_pair_fail(zone: Zone, one_hop: bytes) -> None:
    """dkimpy looks the AMS up by " i=1;" and raises IndexError when it is written "i=1 ;"."""
    verdict = check(zone, one_hop.replace(b"ARC-Message-Signature: i=1;", b"ARC-Message-Signature: i=1 ;"))
    assert verdict == ARCResult("fail", 1, "ARC header fields unusable")


def test_an_oversized_field_or_an_unreadable_header_fails(zone: Zone, one_hop: bytes) -> None:
    big = b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=hop1.example; s=one; z=" + b"x" * 9000 + b"; b=AAAA\r\n"
    assert check(zone, big + MESSAGE) == ARCResult("fail", 0, "ARC-Seal over 8192 octets")
    assert check(zone, b" folded first\r\n" + one_hop) == ARCResult("fail", 0, "message header unparsable")
    assert check(zone, b" folded first\r\n" + MESSAGE) == ARCResult("none", 0)  # no ARC field: nothing to read


@pytest.mark.parametrize(
    "header",
    [
        b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=hop1.example; s=one; b=AAAA\r\n",
        b"ARC-Seal: garbage\r\nARC-Message-Signature: ;;\r\nARC-Authentication-Results: nope\r\n",
        b"ARC-Seal: i=0; cv=none\r\n",
        b"ARC-Seal: i=1; i=1\r\n",
        b"ARC-Authentication-Results: i=1; x\r\nARC-Authentication-Results: i=1; y\r\n",
    ],
)
def test_malformed_arc_fields_fail_never_raise(zone: Zone, header: bytes) -> None:
    verdict = check(zone, header + MESSAGE)
    assert verdict.result == "fail" and verdict.reason


def test_a_future_seal_fails_by_the_given_time(zone: Zone, keys: dict[str, tuple[bytes, str]]) -> None:
    results = b"Authentication-Results: mx1.hop1.example; arc=none smtp.remote-ip=192.0.2.1\r\n" + MESSAGE
    fields = dkim.arc_sign(results, b"one", b"hop1.example", keys["one"][0], b"mx1.hop1.example", timestamp=NOW)
    message = b"".join(fields) + results
    assert check(zone, message).result == "pass"
    early = check(zone, message, now=NOW - 86400)
    assert (early.result, early.reason) == ("fail", "ARC-Message-Signature i=1: t= is in the future")


def test_the_arc_sealed_fuzz_seed_passes() -> None:
    from tests.test_dkim import CORPUS, fuzz_target

    target = fuzz_target()
    message = (CORPUS / "arc-sealed").read_bytes() + target.BODY
    verdict = run(Check(check_arc(message, now=target.NOW)), target.resolver([]))
    assert (verdict.result, verdict.instances, verdict.remote_ip) == ("pass", 1, "192.0.2.1")


@pytest.mark.parametrize(
    ("aar", "address"),
    [
        (b'i=1; mx.example; arc=none smtp.remote-ip="2001:db8::1"', "2001:db8::1"),  # RFC 8601: quoted
        (b"i=1; mx.example; arc=none smtp.remote-ip=2001:db8::1", None),
        (b"i=1; mx.example; iprev=fail policy.iprev=192.0.2.3; spf=pass smtp.remote-ip=192.0.2.4", "192.0.2.4"),
        (b"i=1; mx.example; arc=none (no address)", None),
        (b"i=1; ;;; = garbage (", None),
        (b"i=1; mx.example; arc=none smtp.remote-ip=\xff\xfe", None),
    ],
)
def test_the_client_address_read_from_an_aar(aar: bytes, address: str | None) -> None:
    assert _remote_ip(aar) == address
