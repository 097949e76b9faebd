"""DKIM verification (RFC 6376, ed25519-sha256 from RFC 8463), sans-IO: we ask DNS, dkimpy canonicalizes.

The check reads every DKIM-Signature, refuses the ones that cannot be
checked (``permerror``) before any query, asks all the key records at once,
then verifies each signature with the key in hand: dkimpy parses the
message and the RSA key, canonicalizes the body and selects, canonicalizes
and hashes the signed header fields; the signature itself is checked by
OpenSSL through ``cryptography``.  dkimpy's own ``verify()`` is not used:
it fetches the key itself, checks ``t=``/``x=`` against ``time.time()``
(here the ``now`` input alone decides) and does RSA in pure Python, whose
``pow`` alone costs about 140 µs for a 2048-bit key, against 20 µs in
OpenSSL.  A key record is parsed once and reused while it stays in a
bounded cache of pure values keyed by the record's text (``load_key``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy  # type: ignore[import-untyped]
from dkim.crypto import parse_public_key  # type: ignore[import-untyped]

from ._check import Steps, ask
from ._dns import DNSAnswer, DNSQuery, DNSStatus, RRType
from ._results import MethodResult
from ._tags import parse_tag_list, without_fws

#: The header block (up to the empty line) is read only this far; a longer one is refused as a whole.
MAX_HEADER_BLOCK = 256 * 1024
#: A DKIM-Signature field (or an ARC one) longer than this is refused: real ones are under 2 KiB.
MAX_SIGNATURE_FIELD = 8 * 1024
#: A key record longer than this is refused: a 4096-bit RSA key takes about 800 octets.
MAX_KEY_RECORD = 8 * 1024
#: RSA keys are bounded both ways: under 1024 bits RFC 8301 3.2 forbids them; over 8192 they only cost time.
RSA_FLOOR_BITS = 1024
RSA_MAX_BITS = 8192
#: A public exponent is 65537 (or 3) in practice; a huge one would make each verification take seconds.
RSA_MAX_EXPONENT_BITS = 64
#: How far ``t=`` may be ahead of ``now`` (signers' clocks drift, some are set to the wrong zone): dkimpy's 10 hours.
FUTURE_ALLOWANCE = 10 * 3600
#: Parsed key records kept for reuse, keyed by the record's text.
KEY_CACHE_SIZE = 512

_ALGORITHMS = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}
_CANONICALIZATIONS = ("simple", "relaxed")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}\Z")
_DIGITS = re.compile(r"[0-9]{1,40}\Z")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")
#: dkimpy's RE_BTAG (the b= value, for the hash), with its FWS written as the ``\s*`` it amounts to: dkimpy's
#: form tries a group per character and takes 40 µs on a 2048-bit signature, this one 4 µs.
_B_VALUE = re.compile(rb"([;\s]b\s*=)(?:[\sA-Za-z0-9+/=]*[A-Za-z0-9+/=])?(?:\r?\n\Z)?")
_SHA256 = hashes.SHA256()


@dataclass(frozen=True, slots=True)
class DKIMResult:
    """The verdict on one DKIM-Signature, with the RFC 8601 properties that name it."""

    result: str
    domain: str | None = None
    selector: str | None = None
    identity: str | None = None
    algorithm: str | None = None
    #: The ``b=`` value's first 12 characters, enough to tell signatures apart (RFC 6008).
    signature: str | None = None
    reason: str | None = None
    key_bits: int | None = None

    def method_result(self) -> MethodResult:
        """``dkim=<result>`` with ``header.d``, ``header.i``, ``header.s``, ``header.a``, ``header.b`` as known."""
        named = (
            ("header.d", self.domain),
            ("header.i", self.identity),
            ("header.s", self.selector),
            ("header.a", self.algorithm),
            ("header.b", self.signature),
        )
        return MethodResult("dkim", self.result, self.reason, tuple((k, v) for k, v in named if v is not None))


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A key record's key, parsed and checked once (RFC 6376 3.6.1)."""

    kind: str
    key: RSAPublicKey | Ed25519PublicKey
    bits: int
    hash_names: tuple[str, ...] | None
    strict_identity: bool


@dataclass(frozen=True, slots=True)
class _Signature:
    """A signature that passed every check that needs no key: what verifying it takes."""

    described: DKIMResult
    tags: dict[str, str]
    field: tuple[bytes, bytes]
    query: DNSQuery


def check_dkim(
    message: bytes, *, now: int, max_signatures: int = 5, min_key_bits: int = 1024
) -> Steps[tuple[DKIMResult, ...]]:
    """Verify each DKIM-Signature of ``message`` (RFC 6376) at time ``now`` (seconds since the epoch).

    One result per signature, in header order; only the first
    ``max_signatures`` are checked, the others are reported as ``policy``
    ("not checked: more than N signatures").  No signature at all gives one
    ``none`` result.  A signature that does not verify is ``fail``; one that
    cannot be checked (bad tags, expired ``x=``, no usable key) ``permerror``;
    a key query that failed for now ``temperror``.  An RSA key under 1024
    bits is ``permerror`` whatever ``min_key_bits`` says (RFC 8301 forbids
    it); one of 1024 bits or more but under ``min_key_bits`` is ``policy``
    once it verifies (RFC 8601 2.7.1: signed, but not acceptable to this
    ADMD).  ``l=``: the signature is verified over the first l octets of the
    body, as RFC 6376 says, and a pass that leaves octets after them
    uncovered says so in its reason (RFC 6376 8.2).
    """
    parsed = _parse_message(message)
    if isinstance(parsed, DKIMResult):
        return (parsed,)
    fields = [(name, value) for name, value in parsed.headers if name.lower() == b"dkim-signature"]
    if not fields:
        return (DKIMResult("none"),)
    prepared = [_prepare(field, now) for field in fields[:max_signatures]]
    wanted = [item.query for item in prepared if isinstance(item, _Signature)]
    answers = yield from ask(*wanted)
    results = [
        item if isinstance(item, DKIMResult) else _verify(parsed, item, answers, min_key_bits) for item in prepared
    ]
    skipped = f"not checked: more than {max_signatures} signatures"
    results += [_described(_tags_of(value), "policy", skipped) for _, value in fields[max_signatures:]]
    return tuple(results)


@dataclass(slots=True)
class Message:
    """dkimpy's view of a message: its header fields as (name, raw value) pairs and its body."""

    headers: list[list[bytes]]
    body: bytes


def parse_message(message: bytes) -> Message | str:
    """The message's header fields and body as dkimpy reads them, or why they cannot be read."""
    cut = body_start(message)
    if cut is None:
        return f"header block over {MAX_HEADER_BLOCK} octets"
    try:  # dkimpy reads only the header block: splitting the body into lines too would cost as much again
        headers, _ = dkim.rfc822_parse(message[:cut])
    except Exception:  # dkimpy raises MessageFormatError and, for a leading continuation line, IndexError
        return "message header unparsable"
    # the body with every line ending made CRLF, as dkimpy's rfc822_parse gives it
    return Message(headers, message[cut:].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def body_start(message: bytes) -> int | None:
    """Where the body starts: after the first empty line, or at the end; ``None`` past ``MAX_HEADER_BLOCK``."""
    for empty in (b"\r\n", b"\n"):
        if message.startswith(empty):
            return len(empty)
    ends = [at + len(end) for end in (b"\n\r\n", b"\n\n") if (at := message.find(end, 0, MAX_HEADER_BLOCK + 3)) >= 0]
    if ends:
        return min(ends)
    return len(message) if len(message) <= MAX_HEADER_BLOCK else None


def _parse_message(message: bytes) -> Message | DKIMResult:
    parsed = parse_message(message)
    if isinstance(parsed, str):
        return DKIMResult("permerror", reason=parsed)
    return parsed


def _prepare(field: tuple[bytes, bytes], now: int) -> _Signature | DKIMResult:
    """The signature in ``field`` ready to verify, or its ``permerror``."""
    if len(field[1]) > MAX_SIGNATURE_FIELD:
        return DKIMResult("permerror", reason=f"signature field over {MAX_SIGNATURE_FIELD} octets")
    tags = _tags_of(field[1])
    if tags is None:
        return DKIMResult("permerror", reason="signature is not a valid tag list")
    problem = _signature_problem(tags, now)
    if problem:
        return _described(tags, "permerror", problem)
    name = key_name(tags["s"], tags["d"])
    if name is None:
        return _described(tags, "permerror", "s= or d= is not a domain name")
    return _Signature(_described(tags, "pass", None), tags, field, DNSQuery(name, RRType.TXT))


def _tags_of(value: bytes) -> dict[str, str] | None:
    if len(value) > MAX_SIGNATURE_FIELD:
        return None
    return parse_tag_list(value.decode("latin-1"))


def _described(tags: Mapping[str, str] | None, result: str, reason: str | None) -> DKIMResult:
    """A result naming the signature by its tags, as far as they can be read."""
    if tags is None:
        return DKIMResult(result, reason=reason)
    b = without_fws(tags.get("b", ""))[:12] or None
    return DKIMResult(result, tags.get("d"), tags.get("s"), tags.get("i"), tags.get("a"), b, reason)


def _signature_problem(tags: Mapping[str, str], now: int) -> str | None:
    """Why the signature cannot be checked (RFC 6376 6.1.1), or ``None``."""
    missing = [tag for tag in ("v", "a", "b", "bh", "d", "h", "s") if tag not in tags]
    if missing:
        return f"missing {missing[0]}="
    return (
        _version_problem(tags)
        or _algorithm_problem(tags)
        or _hash_value_problem(tags)
        or _header_list_problem(tags["h"])
        or _identity_problem(tags)
        or _length_problem(tags)
        or time_problem(tags, now)
    )


def _version_problem(tags: Mapping[str, str]) -> str | None:
    if tags["v"] != "1":
        return "v= is not 1"
    if "q" in tags and "dns/txt" not in without_fws(tags["q"]).split(":"):
        return "q= offers no dns/txt"
    return None


def _algorithm_problem(tags: Mapping[str, str]) -> str | None:
    if tags["a"] == "rsa-sha1":
        return "rsa-sha1 is not accepted (RFC 8301)"
    if tags["a"] not in _ALGORITHMS:
        return "unknown algorithm a="
    header, _, body = tags.get("c", "simple").partition("/")
    if header not in _CANONICALIZATIONS or (body or "simple") not in _CANONICALIZATIONS:
        return "unknown canonicalization c="
    return None


def _hash_value_problem(tags: Mapping[str, str]) -> str | None:
    for tag in ("b", "bh"):
        if not _decodes(without_fws(tags[tag])):
            return f"{tag}= is not base64"
    return None


def _header_list_problem(header_list: str) -> str | None:
    names = [name.lower() for name in without_fws(header_list).split(":")]
    if not all(_FIELD_NAME.match(name) for name in names):
        return "h= is not a list of header field names"
    if "from" not in names:
        return "h= does not sign From"
    return None


def _identity_problem(tags: Mapping[str, str]) -> str | None:
    """RFC 6376 3.5: the domain of ``i=`` is ``d=`` or a subdomain of it."""
    if "i" not in tags:
        return None
    domain = tags["i"].rpartition("@")[2].lower()
    signer = tags["d"].lower()
    if "@" not in tags["i"] or not (domain == signer or domain.endswith("." + signer)):
        return "i= is not within d="
    return None


def _length_problem(tags: Mapping[str, str]) -> str | None:
    if "l" in tags and not _DIGITS.match(tags["l"]):
        return "l= is not a number"
    return None


def time_problem(tags: Mapping[str, str], now: int) -> str | None:
    """``t=`` and ``x=`` against ``now`` (RFC 6376 3.5): an expired or future signature cannot be checked."""
    for tag in ("t", "x"):
        if tag in tags and not _DIGITS.match(tags[tag]):
            return f"{tag}= is not a number"
    if "x" in tags and "t" in tags and int(tags["x"]) < int(tags["t"]):
        return "x= is before t="
    if "x" in tags and now > int(tags["x"]):
        return "signature expired (x=)"
    if "t" in tags and int(tags["t"]) > now + FUTURE_ALLOWANCE:
        return "t= is in the future"
    return None


def key_name(selector: str, domain: str) -> str | None:
    """``selector._domainkey.domain`` in lower case, or ``None`` if either is not a domain name."""
    name = f"{selector}._domainkey.{domain}".lower()
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return None
    return name


def _decodes(text: str) -> bool:
    return len(text) % 4 == 0 and bool(_BASE64.match(text))


def _verify(
    message: Message, signature: _Signature, answers: Mapping[DNSQuery, DNSAnswer], min_bits: int
) -> DKIMResult:
    tags = signature.tags
    key = key_from_answer(answers[signature.query])
    if isinstance(key, DKIMResult):
        return _with(signature.described, key.result, key.reason)
    problem = _key_problem(tags, key)
    if problem:
        return _with(signature.described, "permerror", problem, key.bits)
    uncovered = _uncovered_body(message, tags)
    if isinstance(uncovered, DKIMResult):
        return _with(signature.described, uncovered.result, uncovered.reason, key.bits)
    failure = _verification_failure(message, signature, key)
    if failure:
        return _with(signature.described, "fail", failure, key.bits)
    if key.kind == "rsa" and key.bits < min_bits:
        return _with(signature.described, "policy", f"RSA key of {key.bits} bits is under {min_bits}", key.bits)
    return _with(signature.described, "pass", uncovered, key.bits)


def _with(described: DKIMResult, result: str, reason: str | None, key_bits: int | None = None) -> DKIMResult:
    d = described
    return DKIMResult(result, d.domain, d.selector, d.identity, d.algorithm, d.signature, reason, key_bits)


def key_from_answer(answer: DNSAnswer) -> PublicKey | DKIMResult:
    """The key an answer to ``s._domainkey.d TXT`` holds, or the result it leads to (RFC 6376 6.1.2)."""
    if answer.status is DNSStatus.TEMPFAIL:
        return DKIMResult("temperror", reason="key query failed for now")
    if answer.status is not DNSStatus.ANSWER:
        return DKIMResult("permerror", reason="no key record")
    if len(answer.records) > 1:
        return DKIMResult("permerror", reason="several key records")  # RFC 6376 3.6.2.2 leaves it undefined
    if len(answer.records[0]) > MAX_KEY_RECORD:
        return DKIMResult("permerror", reason=f"key record over {MAX_KEY_RECORD} octets")
    key = load_key(answer.records[0])
    return DKIMResult("permerror", reason=key) if isinstance(key, str) else key


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def load_key(record: str) -> PublicKey | str:
    """The key in a key record's text, or why there is none usable (RFC 6376 3.6.1)."""
    tags = parse_tag_list(record)
    if tags is None:
        return "key record is not a valid tag list"
    if tags.get("v", "DKIM1") != "DKIM1":
        return "key record v= is not DKIM1"
    if "p" not in tags:
        return "key record has no p="
    data = without_fws(tags["p"])
    if not data:
        return "key revoked (empty p=)"
    services = without_fws(tags.get("s", "*")).split(":")
    if "*" not in services and "email" not in services:
        return "key is not for email (s=)"
    if not _decodes(data):
        return "key p= is not base64"
    hash_names = tuple(without_fws(tags["h"]).split(":")) if "h" in tags else None
    strict = "s" in without_fws(tags.get("t", "")).split(":")
    kind = tags.get("k", "rsa")
    if kind == "rsa":
        return _rsa_key(base64.b64decode(data), hash_names, strict)
    if kind == "ed25519":
        return _ed25519_key(base64.b64decode(data), hash_names, strict)
    return "unknown key type k="


def _rsa_key(der: bytes, hash_names: tuple[str, ...] | None, strict: bool) -> PublicKey | str:
    try:
        key = parse_public_key(der)
    except Exception:  # dkimpy's ASN.1 reader raises UnparsableKeyError, and IndexError on truncated input
        return "RSA key unparsable"
    modulus, exponent = key["modulus"], key["publicExponent"]
    if not isinstance(modulus, int) or not isinstance(exponent, int) or modulus < 3 or exponent < 3:
        return "RSA key unparsable"
    bits = modulus.bit_length()
    if bits < RSA_FLOOR_BITS:
        return f"RSA key of {bits} bits is under {RSA_FLOOR_BITS} (RFC 8301)"
    if bits > RSA_MAX_BITS or exponent.bit_length() > RSA_MAX_EXPONENT_BITS:
        return f"RSA key over {RSA_MAX_BITS} bits or with an exponent over {RSA_MAX_EXPONENT_BITS} bits"
    return PublicKey("rsa", RSAPublicNumbers(exponent, modulus).public_key(), bits, hash_names, strict)


def _ed25519_key(raw: bytes, hash_names: tuple[str, ...] | None, strict: bool) -> PublicKey | str:
    if len(raw) != 32:
        return "ed25519 key is not 32 octets"
    return PublicKey("ed25519", Ed25519PublicKey.from_public_bytes(raw), 256, hash_names, strict)


def _key_problem(tags: Mapping[str, str], key: PublicKey) -> str | None:
    """Whether this key may check this signature (RFC 6376 3.6.1, 6.1.2)."""
    if _ALGORITHMS[tags["a"]] != key.kind:
        return f"key type {key.kind} does not match a={tags['a']}"
    if key.hash_names is not None and "sha256" not in key.hash_names:
        return "key h= does not allow sha256"
    if key.strict_identity and "i" in tags and tags["i"].rpartition("@")[2].lower() != tags["d"].lower():
        return "key t=s forbids a subdomain in i="
    return None


def _uncovered_body(message: Message, tags: Mapping[str, str]) -> str | DKIMResult | None:
    """With ``l=``: a note that body octets are not covered, or ``fail`` if ``l=`` is longer than the body."""
    if "l" not in tags:
        return None
    body = CanonicalizationPolicy.from_c_value(tags.get("c", "simple").encode()).canonicalize_body(message.body)
    signed = int(tags["l"])
    if signed > len(body):
        return DKIMResult("fail", reason=f"l={signed} is longer than the body ({len(body)} octets)")
    return f"l= covers only {signed} of {len(body)} body octets" if signed < len(body) else None


def _verification_failure(message: Message, signature: _Signature, key: PublicKey) -> str | None:
    """Why the signature does not verify (RFC 6376 6.1.3), or ``None`` when it does."""
    tags = signature.tags
    policy = CanonicalizationPolicy.from_c_value(tags.get("c", "simple/simple").encode())
    body = policy.canonicalize_body(message.body)
    if "l" in tags:
        body = body[: int(tags["l"])]
    if hashlib.sha256(body).digest() != base64.b64decode(without_fws(tags["bh"])):
        return "body hash mismatch"
    digest = _header_hash(message, policy, tags, signature.field)
    try:
        if isinstance(key.key, RSAPublicKey):
            key.key.verify(base64.b64decode(without_fws(tags["b"])), digest, padding.PKCS1v15(), Prehashed(_SHA256))
        else:
            key.key.verify(base64.b64decode(without_fws(tags["b"])), digest)
    except (InvalidSignature, ValueError):
        return "signature did not verify"
    return None


def _header_hash(message: Message, policy: object, tags: Mapping[str, str], field: tuple[bytes, bytes]) -> bytes:
    """SHA-256 over the signed header fields and the signature field without its ``b=`` value, by dkimpy."""
    # h= always names From; as dkimpy does, one more From is asked for, so a From added above breaks the signature
    names = [*(name.lower().encode() for name in without_fws(tags["h"]).split(":")), b"from"]
    # Only the fields h= names are canonicalized (relaxed costs two regex passes a field); their order is kept,
    # so dkimpy picks the same instances from them as from the whole header.
    wanted = set(names)
    signed = [header for header in message.headers if header[0].lower() in wanted]
    blanked = (field[0], _B_VALUE.sub(rb"\1", field[1]))  # dkimpy blanks it again, finding nothing left to do
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, policy.canonicalize_headers(signed), names, blanked, None)  # type: ignore[attr-defined]
    return hasher.digest()
