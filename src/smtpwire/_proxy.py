"""The PROXY protocol (HAProxy's, versions 1 and 2): who the client really is, before the greeting.

A trusted proxy (HAProxy, a load balancer) opens each connection with one
header naming the client it relays; only then does SMTP start.  The reader is
fed the connection's first bytes and tells the header apart from anything
else; it never decides whom to trust (the adapter does, from the peer's
address) and reads no clock (the adapter bounds the phase)::

    reader = ProxyReader()
    reader.receive_data(data)          # b"" means the peer closed
    result = reader.next_event()       # NEED_DATA, a ProxyHeader or a ProxyRefused
    rest = reader.trailing_data        # bytes after the header: the SMTP session's first

Everything is bounded by the specification itself: a version 1 line is at most
107 octets, a version 2 header at most 16 + 65535; each ``receive_data`` reads
as far as it can, so an incomplete header holds at most that and one call's bytes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ._connection import NEED_DATA, Sentinel
from ._errors import LocalProtocolError

#: The first twelve octets of every version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: A version 1 line, CRLF included, is at most this long (the worst case: UNKNOWN with two full IPv6 endpoints).
V1_MAX_SIZE = 107
_V2_FIXED = 16

#: The version 2 TLV types this reader decodes (section 2.2 of the specification); others stay raw in ``tlvs``.
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
#: PP2_TYPE_SSL client flags.
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

#: Version 2 family/protocol byte: (protocol name, address block length, address kind).
_V2_FAMILIES: dict[int, tuple[str | None, int, type[ipaddress.IPv4Address | ipaddress.IPv6Address] | None]] = {
    0x00: (None, 0, None),
    0x11: ("TCP4", 12, ipaddress.IPv4Address),
    0x12: ("UDP4", 12, ipaddress.IPv4Address),
    0x21: ("TCP6", 36, ipaddress.IPv6Address),
    0x22: ("UDP6", 36, ipaddress.IPv6Address),
    0x31: ("UNIX", 216, None),
    0x32: ("UNIX_DGRAM", 216, None),
}
_V1_ADDRESSES = {
    "TCP4": (ipaddress.IPv4Address, b"0123456789."),
    "TCP6": (ipaddress.IPv6Address, b"0123456789abcdefABCDEF:."),
}

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class ProxySSL:
    """PP2_TYPE_SSL: what the proxy knows of the TLS between the client and itself."""

    client: int  # PP2_CLIENT_* flags
    verified: bool  # the client presented a certificate and the proxy verified it
    version: str | None = None
    cipher: str | None = None
    common_name: str | None = None
    signature_algorithm: str | None = None
    key_algorithm: str | None = None

    @property
    def tls(self) -> bool:
        """Whether the client spoke TLS to the proxy."""
        return bool(self.client & PP2_CLIENT_SSL)


@dataclass(frozen=True)
class ProxyHeader:
    """A valid PROXY header.

    ``source`` and ``destination`` are the client's and the address it
    connected to, as ``(host, port)``; they are ``None`` when the header does
    not carry an IP endpoint (version 1 ``UNKNOWN``, version 2 ``LOCAL``, an
    unspecified or Unix family): then the connection's own addresses stand.
    ``tlvs`` are version 2's type-length-values in order (empty for version 1
    and ``LOCAL``, whose block is discarded as the specification says).
    """

    version: int
    command: str  # "PROXY", or "LOCAL" (version 2: the proxy's own connection, a health check)
    protocol: str | None  # "TCP4", "TCP6", "UDP4", "UDP6", "UNIX", "UNIX_DGRAM"; None: unknown/unspecified
    source: Endpoint | None
    destination: Endpoint | None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    ssl: ProxySSL | None = None

    def tlv(self, kind: int) -> bytes | None:
        """The first TLV of type ``kind``, if the header has one."""
        return next((value for key, value in self.tlvs if key == kind), None)


@dataclass(frozen=True)
class ProxyRefused:
    """The connection did not start with a valid PROXY header: close it, say nothing."""

    reason: str


class _Invalid(Exception):
    """Why the header is refused; never leaves this module."""


class ProxyReader:
    """Reads one PROXY header, version 1 or 2 (told apart by its first octets), and nothing more."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._closed = False
        self._result: ProxyHeader | ProxyRefused | None = None
        self._end = 0

    def receive_data(self, data: bytes) -> None:
        """The peer's next bytes; ``b""`` when it closed its side.

        Each call reads as far as it can, so a header's bytes are never held
        past its end: bytes behind a valid header are kept for
        ``trailing_data``; after a refusal nothing more is kept.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"receive_data() takes bytes, not {type(data).__name__}")
        if isinstance(self._result, ProxyRefused):
            return
        if data:
            self._buffer += data
        else:
            self._closed = True
        if self._result is None:
            self._result = self._read()

    def next_event(self) -> ProxyHeader | ProxyRefused | Sentinel:
        """``NEED_DATA`` until the header is complete, then its result (the same on every call)."""
        return NEED_DATA if self._result is None else self._result

    def _read(self) -> ProxyHeader | ProxyRefused | None:
        try:
            header = self._parse()
        except _Invalid as error:
            self._buffer.clear()
            return ProxyRefused(str(error))
        if header is None and self._closed:
            self._buffer.clear()
            return ProxyRefused("the connection closed before the PROXY header ended")
        return header

    @property
    def trailing_data(self) -> bytes:
        """What came after a valid header (the SMTP session's first bytes); nothing before the result."""
        return bytes(self._buffer[self._end :]) if isinstance(self._result, ProxyHeader) else b""

    def _parse(self) -> ProxyHeader | None:
        data = self._buffer
        if data.startswith(V2_SIGNATURE):
            return self._parse_v2()
        if data.startswith(V1_PREFIX):
            return self._parse_v1()
        if V2_SIGNATURE.startswith(data[:12]) or V1_PREFIX.startswith(data[:6]):
            return None
        raise _Invalid("not a PROXY protocol header")

    def _parse_v1(self) -> ProxyHeader | None:
        end = self._buffer.find(b"\r\n", 0, V1_MAX_SIZE)
        if end < 0:
            if len(self._buffer) >= V1_MAX_SIZE:
                raise _Invalid(f"PROXY line without CRLF in its first {V1_MAX_SIZE} octets")
            return None
        self._end = end + 2
        return _parse_v1_line(bytes(self._buffer[:end]))

    def _parse_v2(self) -> ProxyHeader | None:
        data = self._buffer
        if len(data) < _V2_FIXED:
            return None
        version_command, family = data[12], data[13]
        size = int.from_bytes(data[14:16], "big")
        if version_command >> 4 != 2:
            raise _Invalid(f"PROXY version {version_command >> 4}: only 2 has a binary header")
        if version_command & 0xF not in (0, 1):
            raise _Invalid(f"PROXY v2 command {version_command & 0xF} is unknown")
        if len(data) < _V2_FIXED + size:
            return None
        self._end = _V2_FIXED + size
        if version_command & 0xF == 0:  # LOCAL: the proxy's own connection; the block (and family) is discarded
            return ProxyHeader(2, "LOCAL", None, None, None)
        if family not in _V2_FAMILIES:
            raise _Invalid(f"PROXY v2 family/protocol 0x{family:02x} is unknown")
        block = bytes(data[_V2_FIXED : self._end])
        protocol, address_size, kind = _V2_FAMILIES[family]
        if size < address_size:
            raise _Invalid(f"PROXY v2 {protocol} addresses need {address_size} octets, the header has {size}")
        source = destination = None
        if kind is not None:
            half = address_size // 2 - 2
            source = (str(kind(block[:half])), int.from_bytes(block[2 * half : 2 * half + 2], "big"))
            destination = (str(kind(block[half : 2 * half])), int.from_bytes(block[2 * half + 2 : address_size], "big"))
        tlvs = _tlvs(block[address_size:], "TLV")
        return ProxyHeader(2, "PROXY", protocol, source, destination, tlvs, _ssl(tlvs))


def _parse_v1_line(line: bytes) -> ProxyHeader:
    """A version 1 line without its CRLF: ``PROXY TCP4|TCP6 src dst sport dport`` or ``PROXY UNKNOWN ...``."""
    fields = line.split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:  # the rest, if any, is to be ignored
        return ProxyHeader(1, "PROXY", None, None, None)
    if len(fields) != 6 or fields[0] != b"PROXY":
        raise _Invalid("PROXY v1 needs: PROXY TCP4|TCP6|UNKNOWN source destination source-port destination-port")
    protocol = fields[1].decode("ascii", "replace")
    if protocol not in _V1_ADDRESSES:
        raise _Invalid(f"PROXY v1 protocol {protocol!r} is not TCP4, TCP6 or UNKNOWN")
    source = (_v1_address(protocol, fields[2]), _v1_port(fields[4]))
    destination = (_v1_address(protocol, fields[3]), _v1_port(fields[5]))
    return ProxyHeader(1, "PROXY", protocol, source, destination)


def _v1_address(protocol: str, text: bytes) -> str:
    kind, allowed = _V1_ADDRESSES[protocol]
    if not text or text.translate(None, allowed):  # no zone index, no spaces: nothing ipaddress would also take
        raise _Invalid(f"PROXY v1 address {text!r} is not an {protocol} address")
    try:
        return str(kind(text.decode("ascii")))
    except ValueError:
        raise _Invalid(f"PROXY v1 address {text!r} is not an {protocol} address") from None


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (text.startswith(b"0") and text != b"0") or int(text) > 0xFFFF:
        raise _Invalid(f"PROXY v1 port {text!r} is not a number from 0 to 65535")
    return int(text)


def _tlvs(data: bytes, what: str) -> tuple[tuple[int, bytes], ...]:
    """Type (1 octet), length (2, big-endian), value: exactly filling ``data``."""
    tlvs = []
    at = 0
    while at < len(data):
        if len(data) - at < 3:
            raise _Invalid(f"PROXY v2 {what} truncated in its type and length")
        size = int.from_bytes(data[at + 1 : at + 3], "big")
        if len(data) - at - 3 < size:
            raise _Invalid(f"PROXY v2 {what} 0x{data[at]:02x} longer than the header")
        tlvs.append((data[at], data[at + 3 : at + 3 + size]))
        at += 3 + size
    return tuple(tlvs)


_SSL_TEXT = {
    PP2_SUBTYPE_SSL_VERSION: "version",
    PP2_SUBTYPE_SSL_CIPHER: "cipher",
    PP2_SUBTYPE_SSL_CN: "common_name",
    PP2_SUBTYPE_SSL_SIG_ALG: "signature_algorithm",
    PP2_SUBTYPE_SSL_KEY_ALG: "key_algorithm",
}


def _ssl(tlvs: tuple[tuple[int, bytes], ...]) -> ProxySSL | None:
    """PP2_TYPE_SSL: client flags (1 octet), verify (4, zero when verified), then sub-TLVs."""
    value = next((v for k, v in tlvs if k == PP2_TYPE_SSL), None)
    if value is None:
        return None
    if len(value) < 5:
        raise _Invalid("PROXY v2 SSL TLV shorter than its 5 fixed octets")
    texts: dict[str, str] = {}
    for kind, text in _tlvs(value[5:], "SSL sub-TLV"):
        name = _SSL_TEXT.get(kind)
        if name is not None and name not in texts:
            texts[name] = "".join(c if c.isprintable() else "\ufffd" for c in text.decode("utf-8", "replace"))
    certificate = bool(value[0] & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS))
    return ProxySSL(value[0], certificate and value[1:5] == b"\0\0\0\0", **texts)
