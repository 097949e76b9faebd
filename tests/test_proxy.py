"""The PROXY protocol reader (HAProxy's specification, versions 1 and 2): what it takes, what it refuses."""

from __future__ import annotations

import ipaddress
import pathlib
import struct
import subprocess
import sys
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

import smtpwire
from smtpwire import NEED_DATA, ProxyHeader, ProxyReader, ProxyRefused, ProxySSL
from tests.fuzzing import load_target

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(
    source: tuple[str, int] | None = ("192.0.2.1", 56324),
    destination: tuple[str, int] = ("198.51.100.2", 25),
    *,
    command: int = 1,
    family: int | None = None,
    tlvs: bytes = b"",
    version: int = 2,
    size: int | None = None,
) -> bytes:
    """A version 2 header as a proxy writes it (``size`` overrides the length field)."""
    block = b""
    if source is not None:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
        block = src.packed + dst.packed + struct.pack(">HH", source[1], destination[1])
        if family is None:
            family = 0x11 if src.version == 4 else 0x21
    block += tlvs
    length = len(block) if size is None else size
    return SIGNATURE + bytes([version << 4 | command, family or 0]) + struct.pack(">H", length) + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack(">H", len(value)) + value


def read(*chunks: bytes, close: bool = False) -> tuple[ProxyHeader | ProxyRefused | smtpwire.Sentinel, bytes]:
    reader = ProxyReader()
    for chunk in filter(None, chunks):  # b"" would mean a close
        reader.receive_data(chunk)
    if close:
        reader.receive_data(b"")
    return reader.next_event(), reader.trailing_data


# -- version 1 ---------------------------------------------------------------------------


def test_v1_tcp4_and_the_bytes_behind_it() -> None:
    result, rest = read(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO client.example\r\n")
    assert result == ProxyHeader(1, "PROXY", "TCP4", ("192.0.2.1", 56324), ("198.51.100.2", 25))
    assert rest == b"EHLO client.example\r\n"


def test_v1_tcp6_is_normalised() -> None:
    result, rest = read(b"PROXY TCP6 2001:DB8::0:1 ::FFFF:192.0.2.7 65535 0\r\n")
    assert result == ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 65535), ("::ffff:c000:207", 0))
    assert rest == b""


def test_v1_unknown_keeps_the_connection_addresses_and_ignores_the_rest() -> None:
    result, _ = read(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n")
    assert result == ProxyHeader(1, "PROXY", None, None, None)


def test_v1_longest_line_is_taken() -> None:
    addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {addr} {addr} 65535 65535\r\n".encode()
    assert len(line) == 104
    unknown = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(unknown) == 107
    assert isinstance(read(line)[0], ProxyHeader)
    assert read(unknown)[0] == ProxyHeader(1, "PROXY", None, None, None)


def test_v1_without_crlf_in_107_octets_is_refused_before_more_arrives() -> None:
    reader = ProxyReader()
    reader.receive_data(b"PROXY UNKNOWN " + b"x" * 92)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\r")
    assert reader.next_event() == ProxyRefused("PROXY line without CRLF in its first 107 octets")
    assert reader.trailing_data == b""


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
        b"PROXY TCP4 192.0.2.1  198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 \r\n",
        b"PROXY TCP5 192.0.2.1 198.51.100.2 56324 25\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 25\r\n",
        b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 25\r\n",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 56324 25\r\n",
        b"PROXY TCP4 192.0.2.01 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 192.0.2.256 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 \xd9\xa1 25\r\n",
        b"PROXY TCP4 192.0.2.1\n198.51.100.2 56324 25\r\n",
        b"PROXY \r\n",
    ],
)
def test_v1_malformed_lines_are_refused(line: bytes) -> None:
    result, rest = read(line + b"EHLO x\r\n")
    assert isinstance(result, ProxyRefused) and result.reason.startswith("PROXY v1 ")
    assert rest == b""


# -- version 2 ---------------------------------------------------------------------------


def test_v2_tcp4_with_tlvs_and_ssl() -> None:
    ssl = tlv(0x21, b"TLSv1.3") + tlv(0x23, b"TLS_AES_256_GCM_SHA384") + tlv(0x22, "client\r\n\u202e".encode())
    tlvs = tlv(0x05, b"id-1") + tlv(0x20, bytes([0x07]) + b"\0\0\0\0" + ssl) + tlv(0x05, b"id-2")
    result, rest = read(v2(tlvs=tlvs) + b"EHLO")
    assert isinstance(result, ProxyHeader)
    assert (result.version, result.command, result.protocol) == (2, "PROXY", "TCP4")
    assert (result.source, result.destination) == (("192.0.2.1", 56324), ("198.51.100.2", 25))
    assert result.tlv(0x05) == b"id-1" and result.tlv(0x04) is None
    assert [kind for kind, _ in result.tlvs] == [0x05, 0x20, 0x05]
    assert result.ssl == ProxySSL(7, True, "TLSv1.3", "TLS_AES_256_GCM_SHA384", "client\ufffd\ufffd\ufffd")
    assert result.ssl.tls
    assert rest == b"EHLO"


def test_v2_ssl_without_a_certificate_is_not_verified() -> None:
    result, _ = read(v2(tlvs=tlv(0x20, bytes([0x01]) + b"\0\0\0\0" + tlv(0x99, b"x"))))
    assert isinstance(result, ProxyHeader) and result.ssl == ProxySSL(1, False)
    result, _ = read(v2(tlvs=tlv(0x20, bytes([0x00]) + b"\0\0\0\1")))
    assert isinstance(result, ProxyHeader) and result.ssl is not None and not result.ssl.tls


def test_v2_tcp6() -> None:
    result, _ = read(v2(("2001:db8::1", 1), ("2001:db8::2", 587)))
    assert result == ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::1", 1), ("2001:db8::2", 587))


def test_v2_local_discards_its_block_whatever_the_family() -> None:
    result, rest = read(v2(command=0, family=0xFF, tlvs=b"\x20\xff") + b"QUIT\r\n")
    assert result == ProxyHeader(2, "LOCAL", None, None, None)
    assert rest == b"QUIT\r\n"


@pytest.mark.parametrize(("family", "protocol"), [(0x00, None), (0x31, "UNIX"), (0x32, "UNIX_DGRAM")])
def test_v2_families_without_ip_endpoints(family: int, protocol: str | None) -> None:
    block = b"" if family == 0 else b"/run/proxy.sock".ljust(216, b"\0")
    result, _ = read(v2(None, family=family, tlvs=block))
    assert result == ProxyHeader(2, "PROXY", protocol, None, None)


def test_v2_udp4_is_reported_as_such() -> None:
    result, _ = read(v2(family=0x12))
    assert isinstance(result, ProxyHeader) and result.protocol == "UDP4"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (v2(version=1), "PROXY version 1: only 2 has a binary header"),
        (v2(command=2), "PROXY v2 command 2 is unknown"),
        (v2(family=0x13), "PROXY v2 family/protocol 0x13 is unknown"),
        (v2(family=0x21), "PROXY v2 TCP6 addresses need 36 octets, the header has 12"),
        (v2(tlvs=b"\x05\x00"), "PROXY v2 TLV truncated in its type and length"),
        (v2(tlvs=b"\x05\x00\x05abcd"), "PROXY v2 TLV 0x05 longer than the header"),
        (v2(tlvs=tlv(0x20, b"\x07\0\0\0")), "PROXY v2 SSL TLV shorter than its 5 fixed octets"),
        (v2(tlvs=tlv(0x20, b"\x07\0\0\0\0\x21\x00")), "PROXY v2 SSL sub-TLV truncated in its type and length"),
    ],
)
def test_v2_malformed_headers_are_refused(header: bytes, reason: str) -> None:
    assert read(header + b"EHLO x\r\n") == (ProxyRefused(reason), b"")


def test_v2_waits_for_its_declared_length_and_keeps_no_more_than_the_maximum() -> None:
    reader = ProxyReader()
    reader.receive_data(v2(size=0xFFFF))
    for _ in range(15):  # 12 + 15 * 4096 octets of the 65535 declared: empty TLVs so far
        reader.receive_data(b"\0" * 4096)
        assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_event() == ProxyRefused("the connection closed before the PROXY header ended")
    flooded = ProxyReader()  # fed with no look in between: the header still ends where it says, nothing is lost
    flooded.receive_data(v2(size=0xFFFF))
    for _ in range(40):
        flooded.receive_data(b"\1\0\0" * 1365)
    header = flooded.next_event()
    assert isinstance(header, ProxyHeader) and len(header.tlvs) == (0xFFFF - 12) // 3
    assert flooded.trailing_data == (b"\1\0\0" * 1365 * 40)[0xFFFF - 12 :]


# -- not a header at all -----------------------------------------------------------------


@pytest.mark.parametrize(
    "start", [b"EHLO client.example\r\n", b"\x16\x03\x01", b"PROXYTCP4", b"\r\n\r\n\x00\r\nQUIT\r"]
)
def test_anything_else_is_refused_at_its_first_wrong_octet(start: bytes) -> None:
    assert read(start) == (ProxyRefused("not a PROXY protocol header"), b"")


@pytest.mark.parametrize("start", [b"", b"PROX", b"\r\n\r\n\x00", SIGNATURE + b"\x21\x11\x00"])
def test_a_close_before_the_end_is_refused(start: bytes) -> None:
    assert read(start)[0] is NEED_DATA
    assert read(start, close=True) == (ProxyRefused("the connection closed before the PROXY header ended"), b"")


def test_the_result_is_final_and_later_bytes_are_kept_behind_a_header_only() -> None:
    reader = ProxyReader()
    reader.receive_data(b"PROXY UNKNOWN\r\nEHLO")
    reader.receive_data(b" x\r\n")
    assert reader.next_event() is reader.next_event() == ProxyHeader(1, "PROXY", None, None, None)
    assert reader.trailing_data == b"EHLO x\r\n"
    refused = ProxyReader()
    refused.receive_data(b"EHLO")
    refused.receive_data(b" x\r\n")
    assert refused.next_event() == ProxyRefused("not a PROXY protocol header")
    assert refused.trailing_data == b"" and not refused._buffer
    with pytest.raises(smtpwire.LocalProtocolError, match="takes bytes, not str"):
        ProxyReader().receive_data("PROXY")  # type: ignore[arg-type]


# -- properties ----------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 0xFFFF)
texts = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
LOCAL = ProxyHeader(2, "LOCAL", None, None, None)
any_tlvs = st.lists(st.tuples(st.integers(0, 255).filter(lambda t: t != 0x20), st.binary(max_size=40)), max_size=5)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A valid header of either version, with what it must read as."""
    addresses = draw(st.sampled_from([ipv4, ipv6]))
    source, destination = (draw(addresses), draw(ports)), (draw(addresses), draw(ports))
    protocol = "TCP4" if "." in source[0] and ":" not in source[0] else "TCP6"
    kind = draw(st.sampled_from(["v1", "v2", "v2-ssl", "v2-local", "v2-unspec"]))
    if kind == "v1":
        line = f"PROXY {protocol} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()
        return line, ProxyHeader(1, "PROXY", protocol, source, destination)
    if kind == "v2-local":  # whatever follows the fixed part is discarded
        return v2(None, command=0, family=draw(st.integers(0, 255)), tlvs=draw(st.binary(max_size=300))), LOCAL
    tlvs = draw(any_tlvs)
    ssl = None
    if kind == "v2-ssl":
        client, version, cipher = draw(st.integers(0, 7)), draw(texts), draw(texts)
        ssl = ProxySSL(client, bool(client & 6), version, cipher)
        tlvs.append((0x20, bytes([client]) + b"\0" * 4 + tlv(0x21, version.encode()) + tlv(0x23, cipher.encode())))
    tlv_bytes = b"".join(tlv(k, v) for k, v in tlvs)
    if kind == "v2-unspec":
        return v2(None, family=0, tlvs=tlv_bytes), ProxyHeader(2, "PROXY", None, None, None, tuple(tlvs))
    return v2(source, destination, tlvs=tlv_bytes), ProxyHeader(
        2, "PROXY", protocol, source, destination, tuple(tlvs), ssl
    )


@given(headers(), st.binary(max_size=50), st.lists(st.integers(0, 400), max_size=8))
def test_any_split_of_a_valid_header_reads_the_same(
    generated: tuple[bytes, ProxyHeader], after: bytes, cuts: list[int]
) -> None:
    data, expected = generated
    wire = data + after
    points = sorted({min(cut, len(wire)) for cut in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True) if a < b]
    reader = ProxyReader()
    fed = 0
    for chunk in chunks:
        if reader.next_event() is not NEED_DATA:
            break
        reader.receive_data(chunk)
        fed += len(chunk)
    assert reader.next_event() == expected
    assert reader.trailing_data == wire[len(data) : fed]


@given(st.lists(st.binary(max_size=300), max_size=6), st.booleans())
def test_random_bytes_never_raise_and_the_result_is_stable(chunks: list[bytes], close: bool) -> None:
    reader = ProxyReader()
    for chunk in filter(None, chunks):
        if reader.next_event() is not NEED_DATA:
            break
        reader.receive_data(chunk)
    if close and reader.next_event() is NEED_DATA:
        reader.receive_data(b"")
        assert isinstance(reader.next_event(), ProxyRefused)
    result = reader.next_event()
    assert result is NEED_DATA or isinstance(result, ProxyHeader | ProxyRefused)
    assert reader.next_event() is result
    if not isinstance(result, ProxyHeader):
        assert reader.trailing_data == b""


@given(st.binary(min_size=1, max_size=200))
def test_random_v2_blocks_never_raise(block: bytes) -> None:
    result, _ = read(SIGNATURE + block, close=True)
    assert isinstance(result, ProxyHeader | ProxyRefused)


# -- the fuzz target's corpus ------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus-proxy"
FUZZ_LIMITS = ("-max_len=4096", "-timeout=10", "-rss_limit_mb=1024")


def fuzz_target() -> ModuleType:
    return load_target("fuzz_proxy")


@pytest.mark.parametrize("seed", sorted(CORPUS.iterdir()), ids=lambda path: path.name)
def test_the_fuzz_corpus_replays(seed: pathlib.Path) -> None:
    target = fuzz_target()
    assert seed.name not in target.SEEDS or seed.read_bytes()[2:] == target.SEEDS[seed.name][2]
    target.TestOneInput(seed.read_bytes())


def test_a_short_fuzz_run_finds_nothing(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("atheris", reason="atheris has no build for this platform; the corpus replay still runs")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "fuzz_proxy.py"),
            "-atheris_runs=5000",
            *FUZZ_LIMITS,
            f"-artifact_prefix={tmp_path}/",
            str(tmp_path),
            str(CORPUS),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "Done 5000 " in result.stderr, result.stderr[-4000:]
