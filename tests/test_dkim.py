"""DKIM verification (RFC 6376, RFC 8463): messages signed by dkimpy, keys in a zone, every verdict RFC 8601 names."""

from __future__ import annotations

import base64
import hashlib
import pathlib
import time
from collections.abc import Callable
from types import ModuleType

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import CanonicalizationPolicy  # type: ignore[import-untyped]
from dkim.crypto import parse_pem_private_key  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from smtpwire_verify import Check, DNSQuery, MethodResult, RRType, run
from smtpwire_verify._dkim import _B_VALUE, MAX_HEADER_BLOCK, DKIMResult, PublicKey, check_dkim, load_key, parse_message
from tests.dnszone import Zone
from tests.fuzzing import load_target

NOW = int(time.time())
MESSAGE = (
    b"Received: from client.example.org by mx.example.net; Sun, 6 Dec 2026 17:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Date: Sun, 6 Dec 2026 17:00:00 +0000\r\n"
    b"Message-ID: <figures@example.org>\r\n"
    b"X-Unsigned: one\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"the figures are  attached.\r\n"
)
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]


def rsa_key(bits: int) -> tuple[bytes, str]:
    """A private key PEM for dkimpy and the ``p=`` of its key record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


def ed25519_key() -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(seed), base64.b64encode(public).decode()


def rsa_512_record() -> str:
    """A 512-bit RSA public key (cryptography no longer makes such keys): an odd 512-bit modulus will do."""
    modulus = (1 << 511) | 0xF00D  # never reaches a signature check: its size is refused first
    public = rsa.RSAPublicNumbers(65537, modulus).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, str]]:
    return {"rsa": rsa_key(2048), "ed": ed25519_key(), "small": rsa_key(1024)}


@pytest.fixture(scope="module")
def zone(keys: dict[str, tuple[bytes, str]]) -> Zone:
    rsa2048, ed, small = keys["rsa"][1], keys["ed"][1], keys["small"][1]
    return Zone(
        {
            "rsa._domainkey.example.org": [("TXT", "v=DKIM1; k=rsa; p=" + rsa2048)],
            "ed._domainkey.example.org": [("TXT", "v=DKIM1; k=ed25519; p=" + ed)],
            "small._domainkey.example.org": [("TXT", "v=DKIM1; k=rsa; p=" + small)],
            "tiny._domainkey.example.org": [("TXT", rsa_512_record())],
            "revoked._domainkey.example.org": [("TXT", "v=DKIM1; k=rsa; p=")],
            "slow._domainkey.example.org": ["TIMEOUT"],
            "huge._domainkey.example.org": [("TXT", "v=DKIM1; k=rsa; n=" + "x" * 9000 + "; p=" + rsa2048)],
            "twice._domainkey.example.org": [("TXT", "v=DKIM1; p=" + rsa2048), ("TXT", "v=DKIM1; p=" + rsa2048)],
            "mismatch._domainkey.example.org": [("TXT", "v=DKIM1; k=rsa; p=" + rsa2048)],
            "web._domainkey.example.org": [("TXT", "v=DKIM1; s=tlsrpt; p=" + rsa2048)],
            "sha1only._domainkey.example.org": [("TXT", "v=DKIM1; h=sha1; p=" + rsa2048)],
            "nodata._domainkey.example.org": [("A", "192.0.2.1")],
        }
    )


Signer = Callable[..., bytes]


@pytest.fixture(scope="module")
def sign(keys: dict[str, tuple[bytes, str]]) -> Signer:
    """``sign(message, key="rsa", selector=key, canon="relaxed", **dkimpy_options)``: the signed message."""

    def signer(
        message: bytes = MESSAGE, key: str = "rsa", selector: str | None = None, canon: str = "relaxed", **kw: object
    ) -> bytes:
        algorithm = b"ed25519-sha256" if key == "ed" else b"rsa-sha256"
        kw.setdefault("include_headers", SIGNED)
        field = dkim.sign(
            message,
            (selector or key).encode(),
            b"example.org",
            keys[key][0],
            canonicalize=(canon.encode(), canon.encode()),
            signature_algorithm=algorithm,
            **kw,
        )
        return bytes(field) + message

    return signer


def verify(zone: Zone, message: bytes, **options: int) -> tuple[DKIMResult, ...]:
    options.setdefault("now", NOW)
    return run(Check(check_dkim(message, **options)), zone)


def one(zone: Zone, message: bytes, **options: int) -> DKIMResult:
    (result,) = verify(zone, message, **options)
    return result


def dkimpy_says(zone: Zone, message: bytes) -> bool:
    """dkimpy's own verdict on the first signature, from the same zone: the second opinion."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        answer = zone.resolve(DNSQuery(name.decode().rstrip("."), RRType.TXT))
        return answer.records[0].encode() if answer.records else None

    return bool(dkim.verify(message, dnsfunc=dnsfunc))


KINDS = [("rsa", "relaxed"), ("rsa", "simple"), ("ed", "relaxed"), ("ed", "simple")]


# -- what verifies and what does not ----------------------------------------------------------


@pytest.mark.parametrize(("key", "canon"), KINDS)
def test_an_untouched_message_passes(zone: Zone, sign: Signer, key: str, canon: str) -> None:
    result = one(zone, sign(key=key, canon=canon))
    assert result.result == "pass" and result.reason is None
    assert (result.domain, result.selector, result.identity) == ("example.org", key, "@example.org")
    assert result.algorithm == ("ed25519-sha256" if key == "ed" else "rsa-sha256")
    assert result.key_bits == (256 if key == "ed" else 2048)
    assert dkimpy_says(zone, sign(key=key, canon=canon))


@pytest.mark.parametrize(("key", "canon"), KINDS)
def test_one_body_octet_changed_fails(zone: Zone, sign: Signer, key: str, canon: str) -> None:
    message = sign(key=key, canon=canon).replace(b"Hello Bob", b"Hello Rob")
    assert (one(zone, message).result, one(zone, message).reason) == ("fail", "body hash mismatch")
    assert not dkimpy_says(zone, message)


@pytest.mark.parametrize(("key", "canon"), KINDS)
def test_a_signed_header_changed_fails(zone: Zone, sign: Signer, key: str, canon: str) -> None:
    message = sign(key=key, canon=canon).replace(b"Quarterly figures", b"Quarterly figurez")
    assert (one(zone, message).result, one(zone, message).reason) == ("fail", "signature did not verify")
    assert not dkimpy_says(zone, message)


@pytest.mark.parametrize("key", ["rsa", "ed"])
def test_relaxed_survives_refolding_and_white_space_simple_does_not(zone: Zone, sign: Signer, key: str) -> None:
    refold = {b"Subject: Quarterly figures\r\n": b"Subject:  Quarterly\r\n\t figures  \r\n"}
    for canon, expected in (("relaxed", "pass"), ("simple", "fail")):
        message = sign(key=key, canon=canon)
        for old, new in refold.items():
            message = message.replace(old, new)
        assert one(zone, message).result == expected, canon


@pytest.mark.parametrize(("key", "canon"), KINDS)
def test_unsigned_headers_added_or_moved_still_pass(zone: Zone, sign: Signer, key: str, canon: str) -> None:
    message = sign(key=key, canon=canon).replace(b"X-Unsigned: one\r\n", b"")
    message = message.replace(b"From: Alice", b"X-Unsigned: one\r\nFrom: Alice")
    message = b"Received: from relay.example.net by mx.example.net\r\n" + message
    assert one(zone, message).result == "pass"


@pytest.mark.parametrize(("key", "canon"), KINDS)
def test_a_signed_but_absent_header_may_not_be_added(zone: Zone, sign: Signer, key: str, canon: str) -> None:
    message = sign(key=key, canon=canon, include_headers=[*SIGNED, b"reply-to"])
    assert one(zone, message).result == "pass"
    added = message.replace(b"To: Bob", b"Reply-To: mallory@example.com\r\nTo: Bob")
    assert one(zone, added).result == "fail"
    assert not dkimpy_says(zone, added)


def test_a_second_from_above_the_signed_one_fails(zone: Zone, sign: Signer) -> None:
    message = sign()
    forged = message.replace(b"From: Alice", b"From: Mallory <m@example.com>\r\nFrom: Alice")
    assert one(zone, forged).result == "fail"


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "result", "reason"),
    [
        ("revoked", "permerror", "key revoked (empty p=)"),
        ("absent", "permerror", "no key record"),
        ("nodata", "permerror", "no key record"),
        ("slow", "temperror", "key query failed for now"),
        ("huge", "permerror", "key record over 8192 octets"),
        ("twice", "permerror", "several key records"),
        ("web", "permerror", "key is not for email (s=)"),
        ("sha1only", "permerror", "key h= does not allow sha256"),
        ("ed", "permerror", "key type ed25519 does not match a=rsa-sha256"),
    ],
)
def test_a_key_that_cannot_be_used(zone: Zone, sign: Signer, selector: str, result: str, reason: str) -> None:
    verdict = one(zone, sign(key="rsa", selector=selector))
    assert (verdict.result, verdict.reason) == (result, reason)
    assert (verdict.domain, verdict.selector) == ("example.org", selector)


def der(tag: int, content: bytes) -> bytes:
    size = len(content)
    length = (
        bytes([size])
        if size < 0x80
        else bytes([0x80 | (size.bit_length() + 7) // 8]) + size.to_bytes((size.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + content


def rsa_record_of(modulus: int, exponent: int = 65537) -> str:
    """A record with a bare RSAPublicKey (RFC 8017, which dkimpy reads too), whatever its numbers."""
    integers = b"".join(der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big")) for n in (modulus, exponent))
    return "p=" + base64.b64encode(der(0x30, integers)).decode()


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("v=DKIM1; p", "key record is not a valid tag list"),
        ("v=DKIM2; p=AAAA", "key record v= is not DKIM1"),
        ("v=DKIM1; k=rsa", "key record has no p="),
        ("v=DKIM1; p=\r\n ", "key revoked (empty p=)"),
        ("v=DKIM1; p=!!!!", "key p= is not base64"),
        ("v=DKIM1; k=dsa; p=AAAA", "unknown key type k="),
        ("v=DKIM1; p=AAAA", "RSA key unparsable"),
        ("k=ed25519; p=AAAA", "ed25519 key is not 32 octets"),
        (rsa_record_of((1 << 8191) | 1, (1 << 80) | 1), "RSA key over 8192 bits or with an exponent over 64 bits"),
        (rsa_record_of((1 << 8200) | 1), "RSA key over 8192 bits or with an exponent over 64 bits"),
        (rsa_record_of((1 << 2047) | 1, 1), "RSA key unparsable"),
        (rsa_record_of((1 << 2047) | 1), None),
    ],
)
def test_a_key_record_that_holds_no_usable_key(record: str, reason: str | None) -> None:
    key = load_key(record)
    assert key == reason or (reason is None and isinstance(key, PublicKey) and key.bits == 2048)


def test_a_key_record_with_folded_p_and_its_flags(keys: dict[str, tuple[bytes, str]]) -> None:
    p = keys["rsa"][1]
    key = load_key(f"v=DKIM1; h=sha1:sha256; t=y:s; s=email:tlsrpt; p={p[:100]}\r\n {p[100:]}")
    assert isinstance(key, PublicKey)
    assert (key.kind, key.bits, key.hash_names, key.strict_identity) == ("rsa", 2048, ("sha1", "sha256"), True)


def test_a_strict_key_refuses_a_subdomain_identity(
    zone: Zone, sign: Signer, keys: dict[str, tuple[bytes, str]]
) -> None:
    zone.add("strict._domainkey.example.org", "TXT", "v=DKIM1; t=s; p=" + keys["rsa"][1])
    assert one(zone, sign(selector="strict", identity=b"@example.org")).result == "pass"
    verdict = one(zone, sign(selector="strict", identity=b"news@lists.example.org"))
    assert (verdict.result, verdict.reason) == ("permerror", "key t=s forbids a subdomain in i=")
    assert one(zone, sign(identity=b"news@lists.example.org")).result == "pass"


def test_a_1024_bit_key_passes_by_default_and_is_policy_under_a_stricter_minimum(zone: Zone, sign: Signer) -> None:
    message = sign(key="small")
    assert (one(zone, message).result, one(zone, message).key_bits) == ("pass", 1024)
    strict = one(zone, message, min_key_bits=2048)
    assert (strict.result, strict.reason, strict.key_bits) == ("policy", "RSA key of 1024 bits is under 2048", 1024)
    changed = message.replace(b"Hello Bob", b"Hello Rob")
    assert one(zone, changed, min_key_bits=2048).result == "fail"


def test_a_512_bit_key_is_refused_even_when_asked_for(zone: Zone, sign: Signer) -> None:
    for minimum in (1024, 512):
        verdict = one(zone, sign(key="small", selector="tiny"), min_key_bits=minimum)
        assert (verdict.result, verdict.reason) == ("permerror", "RSA key of 512 bits is under 1024 (RFC 8301)")


def test_the_key_queries_are_asked_at_once(zone: Zone, sign: Signer) -> None:
    message = sign(key="ed", message=sign(key="rsa"))
    check = Check(check_dkim(message, now=NOW))
    assert set(check.queries()) == {
        DNSQuery("ed._domainkey.example.org", RRType.TXT),
        DNSQuery("rsa._domainkey.example.org", RRType.TXT),
    }


# -- time, length, several signatures ---------------------------------------------------------


def sign_with_tags(keys: dict[str, tuple[bytes, str]], message: bytes, **extra: bytes) -> bytes:
    """A message signed rsa-sha256 relaxed with tags dkimpy's ``sign`` does not write (``x=``), by its own parts."""
    signer = dkim.DKIM(message)
    signer.hasher = hashlib.sha256
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(signer.body)).digest())
    fields = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", b"example.org")]
    fields += [(b"s", b"rsa"), *((name.encode(), value) for name, value in extra.items())]
    fields += [(b"h", b"from:subject"), (b"bh", body_hash), (b"b", b"")]
    pem = parse_pem_private_key(keys["rsa"][0])
    value = signer.gen_header(fields, [b"from", b"subject"], policy, b"DKIM-Signature", pem)
    return b"DKIM-Signature: " + bytes(value) + message


def test_x_decides_by_the_given_time(zone: Zone, keys: dict[str, tuple[bytes, str]]) -> None:
    message = sign_with_tags(keys, MESSAGE, t=str(NOW - 100).encode(), x=str(NOW + 100).encode())
    assert one(zone, message, now=NOW).result == "pass"
    late = one(zone, message, now=NOW + 101)
    assert (late.result, late.reason) == ("permerror", "signature expired (x=)")


def test_t_far_in_the_future_cannot_be_checked(zone: Zone, keys: dict[str, tuple[bytes, str]]) -> None:
    message = sign_with_tags(keys, MESSAGE, t=str(NOW + 86400).encode())
    assert (one(zone, message).result, one(zone, message).reason) == ("permerror", "t= is in the future")
    assert one(zone, message, now=NOW + 86400).result == "pass"


def test_l_covers_part_of_the_body_and_says_so(zone: Zone, sign: Signer) -> None:
    message = sign(length=True)
    assert (one(zone, message).result, one(zone, message).reason) == ("pass", None)
    appended = message + b"-- \r\nUnsubscribe: https://lists.example.net/\r\n"
    verdict = one(zone, appended)
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body
    covered, whole = (len(relaxed(text.split(b"\r\n\r\n", 1)[1])) for text in (MESSAGE, appended))
    assert (covered, whole) == (41, 86)  # relaxed: the double space is one, the trailing one gone
    assert (verdict.result, verdict.reason) == ("pass", "l= covers only 41 of 86 body octets")
    cut = message[: -len(b"attached.\r\n")] + b"\r\n"
    assert one(zone, cut).result == "fail"


def test_several_signatures_give_results_in_header_order(zone: Zone, sign: Signer) -> None:
    bad = sign(key="ed", message=MESSAGE.replace(b"Quarterly", b"Monthly"))
    message = sign(key="rsa", message=field_of(bad) + MESSAGE)
    results = verify(zone, message)
    assert [(r.selector, r.result) for r in results] == [("rsa", "pass"), ("ed", "fail")]


def test_signatures_beyond_the_limit_are_not_checked(zone: Zone, sign: Signer) -> None:
    message = MESSAGE
    for selector in ("rsa", "ed", "small"):
        message = sign(key="ed" if selector == "ed" else selector, message=message)
    zone.asked.clear()
    results = verify(zone, message, max_signatures=2)
    assert [(r.selector, r.result) for r in results] == [("small", "pass"), ("ed", "pass"), ("rsa", "policy")]
    assert results[2].reason == "not checked: more than 2 signatures"
    oversized = b"DKIM-Signature: z=" + b"x" * 9000 + b"\r\n"
    assert verify(zone, oversized + message, max_signatures=0)[0] == DKIMResult(
        "policy", reason="not checked: more than 0 signatures"
    )
    assert {query.name for query in zone.asked} == {"small._domainkey.example.org", "ed._domainkey.example.org"}


# -- what a sender may write ------------------------------------------------------------------


def field_of(message: bytes) -> bytes:
    return message.split(b"Received:")[0]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f[: f.rindex(b"\r\n b=")] + b"\r\n", "missing b="),
        (lambda f: f.replace(b"v=1;", b"v=2;"), "v= is not 1"),
        (lambda f: f.replace(b"a=rsa-sha256", b"a=rsa-sha1"), "rsa-sha1 is not accepted (RFC 8301)"),
        (lambda f: f.replace(b"a=rsa-sha256", b"a=rsa-md5"), "unknown algorithm a="),
        (lambda f: f.replace(b"c=relaxed/relaxed", b"c=loose/relaxed"), "unknown canonicalization c="),
        (lambda f: f.replace(b"i=@example.org", b"i=@example.com"), "i= is not within d="),
        (lambda f: f.replace(b"h=from", b"h=sender"), "h= does not sign From"),
        (lambda f: f.replace(b"bh=", b"bh=!"), "bh= is not base64"),
        (lambda f: f.replace(b"example.org", b"example..org"), "s= or d= is not a domain name"),
        (lambda f: f.replace(b"s=rsa", b"s=r\\sa"), "s= or d= is not a domain name"),
        (lambda f: f.replace(b"q=dns/txt", b"q=http"), "q= offers no dns/txt"),
        (lambda f: f.replace(b"v=1;", b"v=1; l=ten;"), "l= is not a number"),
        (lambda f: f.replace(b"v=1;", b"v=1; x=soon;"), "x= is not a number"),
        (lambda f: f.replace(b"v=1;", b"v=1; x=10;"), "x= is before t="),
        (lambda f: f.replace(b"h=from", b"h=from::to"), "h= is not a list of header field names"),
        (lambda f: f.replace(b"v=1;", b"v=1; v=1;"), "signature is not a valid tag list"),
        (lambda f: f.replace(b"v=1;", b"v=1; =;"), "signature is not a valid tag list"),
        (lambda f: f.replace(b"v=1;", b"v=1; \xff=1;"), "signature is not a valid tag list"),
        (lambda f: b"DKIM-Signature: " + b"garbage " * 10 + b"\r\n", "signature is not a valid tag list"),
        (lambda f: b"DKIM-Signature:\r\n", "missing v="),
        (lambda f: f.replace(b"v=1;", b"v=1; z=" + b"x" * 9000 + b";"), "signature field over 8192 octets"),
    ],
)
def test_a_malformed_signature_is_permerror(
    zone: Zone, sign: Signer, change: Callable[[bytes], bytes], reason: str
) -> None:
    message = sign()
    field = field_of(message)
    verdict = one(zone, change(field) + message[len(field) :])
    assert (verdict.result, verdict.reason) == ("permerror", reason)


def test_a_message_without_signature_is_none(zone: Zone) -> None:
    assert verify(zone, MESSAGE) == (DKIMResult("none"),)
    assert DKIMResult("none").method_result() == MethodResult("dkim", "none")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b" leading continuation\r\nDKIM-Signature: v=1\r\n\r\n", "message header unparsable"),
        (b"DKIM-Signature: v=1\r\nnot a header line\r\n\r\n", "message header unparsable"),
        (b"X-Big: " + b"x" * MAX_HEADER_BLOCK + b"\r\n\r\nbody", f"header block over {MAX_HEADER_BLOCK} octets"),
    ],
)
def test_a_message_whose_header_cannot_be_read_is_one_permerror(zone: Zone, message: bytes, reason: str) -> None:
    assert verify(zone, message) == (DKIMResult("permerror", reason=reason),)


def test_method_result_names_the_signature(zone: Zone, sign: Signer) -> None:
    message = sign()
    verdict = one(zone, message)
    b = field_of(message).split(b" b=")[1][:12].decode()
    assert verdict.signature == b
    assert verdict.method_result() == MethodResult(
        "dkim",
        "pass",
        None,
        (
            ("header.d", "example.org"),
            ("header.i", "@example.org"),
            ("header.s", "rsa"),
            ("header.a", "rsa-sha256"),
            ("header.b", b),
        ),
    )
    revoked = one(zone, sign(selector="revoked"))
    assert revoked.method_result().reason == "key revoked (empty p=)"
    assert revoked.method_result().property("header.s") == "revoked"


# -- the shortcuts taken around dkimpy agree with it -----------------------------------------

_value_text = st.lists(
    st.sampled_from(
        [b"b=", b"b =", b"bh=", b";", b" ", b"\t", b"\r\n ", b"\r\n", b"\n", b"A", b"z", b"0", b"+/=", b"x"]
    ),
    max_size=40,
).map(b"".join)


@given(value=_value_text)
def test_blanking_b_matches_dkimpy(value: bytes) -> None:
    assert _B_VALUE.sub(rb"\1", value) == dkim.RE_BTAG.sub(b"\\1", value)


_message_text = st.lists(
    st.sampled_from([b"From: a", b"X: b", b" c", b"\t", b"\r\n", b"\n", b"\r", b"body", b":", b" "]), max_size=30
).map(b"".join)


@given(message=_message_text)
def test_reading_only_the_header_block_matches_dkimpy(message: bytes) -> None:
    try:
        expected = dkim.rfc822_parse(message)
    except Exception:
        assert isinstance(parse_message(message), str)
        return
    parsed = parse_message(message)
    assert not isinstance(parsed, str)
    assert (parsed.headers, parsed.body) == (expected[0], expected[1])


# -- the fuzz target's corpus ------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus-dkim"


def fuzz_target() -> ModuleType:
    return load_target("fuzz_dkim")


@pytest.mark.parametrize("seed", sorted(CORPUS.iterdir()), ids=lambda path: path.name)
def test_the_fuzz_corpus_replays(seed: pathlib.Path) -> None:
    fuzz_target().TestOneInput(seed.read_bytes())


@pytest.mark.parametrize(
    ("seed", "expected"),
    [("dkim-relaxed-signed", "pass"), ("dkim-simple-signed", "pass"), ("dkim-missing-b", "permerror")],
)
def test_the_named_seeds_still_mean_what_they_say(seed: str, expected: str) -> None:
    target = fuzz_target()
    assert seed in target.seeds()
    message = (CORPUS / seed).read_bytes() + target.BODY
    (verdict,) = run(Check(check_dkim(message, now=target.NOW)), target.resolver([]))
    assert verdict.result == expected
