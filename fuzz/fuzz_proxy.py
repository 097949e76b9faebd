"""Coverage-guided fuzz target for ``smtpwire.ProxyReader`` and the SMTP session behind it (atheris / libFuzzer).

Fuzz (new inputs go to the first directory, ``fuzz/corpus-proxy`` is only read)::

    python fuzz/fuzz_proxy.py -atheris_runs=20000 -max_len=4096 "$(mktemp -d)" fuzz/corpus-proxy

Rewrite the named seeds after changing the input format::

    python fuzz/fuzz_proxy.py --write-seeds fuzz/corpus-proxy

Input format: one byte ``cut`` (the input is fed in pieces of ``cut % 64 + 1``
octets, or whole when ``cut`` is 0), one byte ``flags`` (bit 0: the peer
closes after the last piece), then the bytes the proxy sends.  ``tests/test_proxy.py``
replays the corpus through ``TestOneInput`` without atheris.

Invariants: only ``NEED_DATA``, a ``ProxyHeader`` or a ``ProxyRefused`` comes
out, never an exception; the result and where the header ends do not depend
on how the input was cut; a header is at most 107 octets (version 1)
or 16 + 65535 (version 2) and its endpoints are valid addresses and ports;
a close always ends the phase; and the bytes behind a header reach a
``ServerConnection`` that answers them without raising.
"""

from __future__ import annotations

import ipaddress
import struct

try:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # replaying the corpus needs no atheris
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["smtpwire"]):
        import smtpwire
else:
    import smtpwire

from smtpwire import NEED_DATA, ProxyHeader, ProxyReader, ProxyRefused

MAX_EVENTS = 10_000
V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def read(data: bytes, piece: int, close: bool) -> tuple[object, bytes, int]:
    """Feed ``data`` in pieces until a result; the result, the trailing bytes and how much was fed."""
    reader = ProxyReader()
    fed = 0
    while fed < len(data) and reader.next_event() is NEED_DATA:
        reader.receive_data(data[fed : fed + piece])
        fed += len(data[fed : fed + piece])
    if close and reader.next_event() is NEED_DATA:
        reader.receive_data(b"")
        assert isinstance(reader.next_event(), ProxyRefused), "a close must end the phase"
    result = reader.next_event()
    assert result is reader.next_event(), "the result is final"
    return result, reader.trailing_data, fed


def check_header(header: ProxyHeader, data: bytes, rest: bytes, fed: int) -> None:
    size = fed - len(rest)
    assert data[size:fed] == rest
    assert size <= (107 if header.version == 1 else 16 + 0xFFFF)
    assert data.startswith(b"PROXY " if header.version == 1 else V2)
    for endpoint in (header.source, header.destination):
        if endpoint is not None:
            ipaddress.ip_address(endpoint[0])
            assert 0 <= endpoint[1] <= 0xFFFF
    assert (header.source is None) == (header.destination is None)
    assert header.command in ("PROXY", "LOCAL")


def session_after(rest: bytes, close: bool) -> None:
    """The SMTP session the header opens takes whatever followed it."""
    conn = smtpwire.ServerConnection(smtpwire.ServerConfig(hostname="mx.test"))
    conn.receive_data(rest)
    if close:
        conn.receive_data(b"")
    for _ in range(MAX_EVENTS):
        event = conn.next_event()
        conn.data_to_send()
        if event is smtpwire.NEED_DATA or isinstance(event, smtpwire.ConnectionClosed):
            return
        assert event is not smtpwire.PAUSED, "every decision was answered"
        if isinstance(event, smtpwire.Decision):
            conn.accept()
    raise AssertionError("the session never stopped")


def TestOneInput(data: bytes) -> None:
    cut, flags, body = (data[:1] or b"\0")[0], (data[1:2] or b"\0")[0], data[2:]
    close = bool(flags & 1)
    whole = read(body, len(body) or 1, close)
    pieces = read(body, cut % 64 + 1, close) if cut else whole
    result, rest, fed = pieces
    assert result == whole[0], (whole, pieces)
    assert result is NEED_DATA or isinstance(result, ProxyHeader | ProxyRefused)
    if isinstance(result, ProxyHeader):
        assert fed - len(rest) == whole[2] - len(whole[1]), (whole, pieces)
        check_header(result, body, rest, fed)
        session_after(rest, close)


def v2(command: int, family: int, block: bytes) -> bytes:
    return V2 + bytes([0x20 | command, family]) + struct.pack(">H", len(block)) + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack(">H", len(value)) + value


_V4 = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack(">HH", 56324, 25)
_V6 = ipaddress.IPv6Address("2001:db8::1").packed + ipaddress.IPv6Address("2001:db8::2").packed + b"\x00\x01\x00\x19"
_SSL = tlv(0x20, b"\x07\0\0\0\0" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example") + tlv(0x23, b"TLS_AES"))

#: Named seeds: (cut, flags, bytes).
SEEDS: dict[str, tuple[int, int, bytes]] = {
    "proxy-v1-tcp4-ehlo": (0, 0, b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO c.example\r\nQUIT\r\n"),
    "proxy-v1-tcp6-dripped": (1, 1, b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.7 65535 0\r\nNOOP\r\n"),
    "proxy-v1-unknown": (5, 0, b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\nHELO x\r\n"),
    "proxy-v1-too-long": (7, 0, b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n"),
    "proxy-v1-bad-port": (0, 0, b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 25\r\n"),
    "proxy-v2-tcp4-tlvs": (3, 0, v2(1, 0x11, _V4 + tlv(0x05, b"id") + _SSL) + b"EHLO c.example\r\n"),
    "proxy-v2-tcp6": (16, 1, v2(1, 0x21, _V6) + b"MAIL FROM:<a@example.org>\r\n"),
    "proxy-v2-local": (0, 0, v2(0, 0x00, b"") + b"QUIT\r\n"),
    "proxy-v2-unix": (9, 0, v2(1, 0x31, b"/run/a.sock".ljust(216, b"\0"))),
    "proxy-v2-bad-tlv": (2, 1, v2(1, 0x11, _V4 + b"\x20\x00\x09\x07\0\0")),
    "proxy-v2-truncated-close": (4, 1, v2(1, 0x21, _V6)[:30]),
    "proxy-not-a-header": (0, 1, b"EHLO c.example\r\n"),
}


if __name__ == "__main__":
    from _cli import main

    main(TestOneInput, {name: bytes([cut, flags]) + body for name, (cut, flags, body) in SEEDS.items()}, atheris)
