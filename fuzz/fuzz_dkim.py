"""Coverage-guided fuzz target for the DKIM and ARC checks of ``smtpwire_verify`` (atheris / libFuzzer).

Fuzz (new inputs go to the first directory, ``fuzz/corpus-dkim`` is only read)::

    python fuzz/fuzz_dkim.py -atheris_runs=20000 -max_len=8192 "$(mktemp -d)" fuzz/corpus-dkim

Rewrite the named seeds (they carry signatures made now, with the key below)::

    python fuzz/fuzz_dkim.py --write-seeds fuzz/corpus-dkim

Input format: a message's header block; the target appends the empty line
and a short body (``BODY``), so a seed signed over that body verifies.
``tests/test_dkim.py`` replays the corpus through ``TestOneInput`` without
atheris.

Invariants: ``check_dkim`` and ``check_arc`` never raise; against a zone
holding one valid key they return results from their RFC vocabularies,
one DKIM result per DKIM-Signature field (or one ``none``), at most
``MAX_SIGNATURES`` key queries for DKIM and two per ARC set, and a passing
ARC chain names its instance count and oldest-pass.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

try:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # replaying the corpus needs no atheris
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["smtpwire_verify", "dkim", "authres"]):
        from smtpwire_verify import Check, DNSAnswer, DNSQuery, run
        from smtpwire_verify._arc import MAX_INSTANCES, check_arc
        from smtpwire_verify._dkim import check_dkim
else:
    from smtpwire_verify import Check, DNSAnswer, DNSQuery, run
    from smtpwire_verify._arc import MAX_INSTANCES, check_arc
    from smtpwire_verify._dkim import check_dkim

import dkim  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization

#: A throwaway 1024-bit key made for these seeds; it signs nothing but them.
SEED_KEY = b"""-----BEGIN RSA PRIVATE KEY-----
MIICWwIBAAKBgQDQy8xOIq7fOZo5UGbceyxLJ/8cy9MnhBl/YS2EpnljZ6v8m+ZQ
bHrRFxloyuHXS187zvQxzg2s5lhb4QJM+ao80n6EXu8eXtkNe5BW3ac0DCvxqwHv
L7L9IymLjMY6Dkqrrs4TkmwPJ1IpFOHbo8/YDBL7BpGc1qj8M77W4P8GnwIDAQAB
AoGAcs4MKU5SvvTKQwddd4/WfACi+m9sTAcLigmh4JU0m57OZ1hFXCU5pqw/0Wn0
oc+UrqsNhDEbPd1t6h8fh7mji01IlDbYdVRbwNZbm84634a8NoCocF6uqoDgjukf
JwiDXpP/WTQr2tHMFG0M7xygllJAWomZ+wGjv5jgu2zO9lkCQQDz/W+w3Fz7z1+a
Vo3XW/SMD0Gj3hwG86PkLpWvWtolxT/Jqw5cxz8I8ZbgfXPByietbO4KONxbJAl0
FoP1+KeTAkEA2xLgd9llE33PbNAlAs7cvZYq9b/PyKfeLuG6UAnIeGgomfe9d7ST
xyyAuGSTPGH64wmsqtCuRR/KL7IRl1A0RQJAN9Yp91mW1fGxOUrRjxV2M49SQEQW
OekL+q5GhyjNf5NSc753vPfEDzHqi1lqYlD3H5MsLp6wnxLyLuTwMhxDjQJAOfdz
t6KpURAAG52zvVt5Ix0h/uajF0f7zVHjF5yPE/UTkTHxS0RXueL3qFLMdrTCSuLb
clNHWXkA6b/nUa9iNQJABDmuRXBPim3o2/1V3W8ZFjdU15enLh+XKJHzP71fz8lt
+X7xBIhW1RmSfw+1SnstBkqBRLxUsnqaHNQL99NBJA==
-----END RSA PRIVATE KEY-----
"""
KEY_NAME = "fuzz._domainkey.example.org"
BODY = b"\r\nHello from the fuzzer.\r\n"
#: Far enough ahead that no seed's t= is in the future, and no x= in a seed.
NOW = 4_000_000_000
MAX_SIGNATURES = 5
DKIM_RESULTS = {"pass", "fail", "neutral", "none", "temperror", "permerror", "policy"}


def _key_record() -> str:
    public = serialization.load_pem_private_key(SEED_KEY, None).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


KEY_RECORD = _key_record()


def resolver(asked: list[DNSQuery]) -> Callable[[DNSQuery], DNSAnswer]:
    """A zone with the one key, noting each query in ``asked``."""

    def resolve(query: DNSQuery) -> DNSAnswer:
        asked.append(query)
        return DNSAnswer.of(KEY_RECORD) if query.name == KEY_NAME else DNSAnswer.of()

    return resolve


def TestOneInput(data: bytes) -> None:
    message = data + BODY
    asked: list[DNSQuery] = []
    results = run(Check(check_dkim(message, now=NOW, max_signatures=MAX_SIGNATURES)), resolver(asked))
    assert results and all(result.result in DKIM_RESULTS for result in results), results
    assert len(asked) <= MAX_SIGNATURES, asked
    assert len(results) == 1 or all(result.result != "none" for result in results), results
    for result in results:
        result.method_result()
    asked.clear()
    chain = run(Check(check_arc(message, now=NOW)), resolver(asked))
    assert chain.result in ("pass", "fail", "none") and 0 <= chain.instances <= MAX_INSTANCES, chain
    assert len(asked) <= 2 * MAX_INSTANCES, asked
    if chain.result == "pass":
        assert chain.instances >= 1 and chain.oldest_pass is not None, chain
    chain.method_result()


HEADERS = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Fuzz seed\r\n"
    b"Date: Sun, 6 Dec 2026 17:00:00 +0000\r\nMessage-ID: <seed@example.org>\r\n"
)


def seeds() -> dict[str, bytes]:
    """Named seeds: header blocks, signed now where they carry a signature."""
    signed = dkim.sign(HEADERS + BODY, b"fuzz", b"example.org", SEED_KEY, canonicalize=(b"relaxed", b"relaxed"))
    simple = dkim.sign(HEADERS + BODY, b"fuzz", b"example.org", SEED_KEY, canonicalize=(b"simple", b"simple"))
    received = b"Authentication-Results: mx.example.net; arc=none smtp.remote-ip=192.0.2.1\r\n" + signed + HEADERS
    sealed = b"".join(dkim.arc_sign(received + BODY, b"fuzz", b"example.org", SEED_KEY, b"mx.example.net"))
    return {
        "dkim-relaxed-signed": signed + HEADERS,
        "dkim-simple-signed": simple + HEADERS,
        "dkim-missing-b": signed[: signed.rindex(b"\r\n b=")] + b"\r\n" + HEADERS,
        "dkim-broken-tags": signed.replace(b"v=1;", b"v=1;; a b=\x7f;", 1) + HEADERS,
        "dkim-garbage": b"DKIM-Signature: ;;; ==\r\n\tv=1; v=1\r\n" + HEADERS,
        "arc-sealed": sealed + received,
        "unsigned": HEADERS,
    }


if __name__ == "__main__":
    from _cli import main

    main(TestOneInput, seeds(), atheris)
