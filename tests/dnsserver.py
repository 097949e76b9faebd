"""A local authoritative DNS server for tests, on 127.0.0.1 (UDP and TCP, one OS-chosen port), serving a ``Zone``.

``with local_dns(zone) as dns: Resolver([dns.address])``.  It answers as a
real server would: CNAME chains within the zone with the target's records,
NXDOMAIN for unknown names and NODATA (NOERROR, no answer) for known names
without the type, both with an SOA whose minimum is the TTL; no EDNS, so an
answer over 512 octets on UDP comes back truncated and the resolver asks
again over TCP.  A name listed with ``"TIMEOUT"`` gets no reply at all, one
with ``"SERVFAIL"`` a SERVFAIL.  Every question received is recorded.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SOA, TXT, A, DNSError, DNSRecord  # type: ignore[import-untyped]
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer  # type: ignore[import-untyped]

from tests.dnszone import CNAME_CHAIN, Zone

UDP_LIMIT = 512  # RFC 1035 4.2.1, for a server without EDNS
CHARACTER_STRING = 255
SOCKET_TIMEOUT = 2.0
STOP_TIMEOUT = 5.0
BIND_ATTEMPTS = 10
POLL_INTERVAL = 0.05


class _NoReply(DNSError):  # type: ignore[misc]
    """Raised by the zone resolver to drop the question; dnslib's handler then sends nothing."""


class _Handler(DNSHandler):  # type: ignore[misc]
    def setup(self) -> None:
        if self.server.socket_type == socket.SOCK_STREAM:
            self.request.settimeout(SOCKET_TIMEOUT)


class _ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone: Zone, ttl: int, served: LocalDNS) -> None:
        self.zone = zone
        self.ttl = ttl
        self.served = served

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        name = str(request.q.qname).rstrip(".").lower()
        rdtype = QTYPE[request.q.qtype]
        self.served.record(name, rdtype, handler.protocol)
        reply = request.reply()
        self._answer(reply, name, rdtype)
        if handler.protocol == "udp" and len(reply.pack()) > UDP_LIMIT:
            return _truncated(request)
        return reply

    def _answer(self, reply: DNSRecord, name: str, rdtype: str) -> None:
        for _ in range(CNAME_CHAIN):
            entries = self.zone.records.get(name)
            if entries is None:
                reply.header.rcode = RCODE.NXDOMAIN
                reply.add_auth(self._soa(name))
                return
            if "TIMEOUT" in entries:
                raise _NoReply(name)
            if "SERVFAIL" in entries:
                reply.header.rcode = RCODE.SERVFAIL
                return
            target = _values(entries, "CNAME")
            if target and rdtype != "CNAME":
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(target[0]), ttl=self.ttl))
                name = str(target[0]).rstrip(".").lower()
                continue
            values = _values(entries, rdtype)
            for value in values:
                reply.add_answer(RR(name, getattr(QTYPE, rdtype), rdata=_RDATA[rdtype](value), ttl=self.ttl))
            if not values:
                reply.add_auth(self._soa(name))
            return
        reply.header.rcode = RCODE.SERVFAIL  # a CNAME loop

    def _soa(self, name: str) -> RR:
        """An SOA at the name's top-level label (an ancestor, as the resolver wants), minimum = the TTL."""
        apex = name.rsplit(".", 1)[-1]
        times = (1, 3600, 600, 86400, self.ttl)
        return RR(apex, QTYPE.SOA, rdata=SOA(f"ns.{apex}", f"hostmaster.{apex}", times), ttl=self.ttl)


class LocalDNS:
    """The running server: ``address`` ("127.0.0.1:PORT"), ``queries`` and ``tcp_queries`` as (name, type)."""

    def __init__(self, zone: Zone, ttl: int = 300) -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []
        self.tcp_queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        resolver = _ZoneResolver(zone, ttl, self)
        self._servers = _bind_pair(resolver)
        self.port: int = self._servers[0].server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._threads = [
            threading.Thread(target=server.server.serve_forever, args=(POLL_INTERVAL,), daemon=True)
            for server in self._servers
        ]

    def record(self, name: str, rdtype: str, protocol: str) -> None:
        with self._lock:
            self.queries.append((name, rdtype))
            if protocol == "tcp":
                self.tcp_queries.append((name, rdtype))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for server, thread in zip(self._servers, self._threads, strict=True):
            if thread.is_alive():
                server.server.shutdown()
            thread.join(STOP_TIMEOUT)
            server.server.server_close()


@contextmanager
def local_dns(zone: Zone, ttl: int = 300) -> Iterator[LocalDNS]:
    """A ``LocalDNS`` serving ``zone`` for the block, stopped (within seconds) when it ends."""
    server = LocalDNS(zone, ttl)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _bind_pair(resolver: _ZoneResolver) -> tuple[DNSServer, DNSServer]:
    """UDP on a port the OS picks, then TCP on the same one (trying again if TCP finds it taken)."""
    logger = DNSLogger("-request,-reply,-truncated,-error")
    for _ in range(BIND_ATTEMPTS):
        udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger, handler=_Handler)
        try:
            port = udp.server.server_address[1]
            return udp, DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=logger, handler=_Handler)
        except OSError:
            udp.server.server_close()
    raise OSError(f"no port free for both UDP and TCP after {BIND_ATTEMPTS} tries")


def _truncated(request: DNSRecord) -> DNSRecord:
    """The question with TC set and no records, as a server says "ask me over TCP" (RFC 7766 5)."""
    reply = request.reply()
    reply.header.tc = 1
    return reply


def _values(entries: list[Any], rdtype: str) -> list[Any]:
    return [entry[1] for entry in entries if isinstance(entry, tuple) and entry[0] == rdtype]


def _octets(text: str | bytes) -> bytes:
    """Record text as octets: latin-1 (every octet the resolver reads back), else UTF-8 as a zone file would."""
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _txt(value: str | bytes | list[str] | tuple[str, ...]) -> TXT:
    """One TXT record: each string cut into character-strings of at most 255 octets (RFC 1035 3.3.14)."""
    strings = value if isinstance(value, list | tuple) else [value]
    octets = [_octets(string) for string in strings]
    return TXT([data[start : start + CHARACTER_STRING] for data in octets for start in _cuts(data)])


def _cuts(data: bytes) -> range:
    """Where each character-string starts (an empty string is one empty character-string)."""
    return range(0, max(len(data), 1), CHARACTER_STRING)


def _mx(value: tuple[int, str]) -> MX:
    preference, exchange = value
    return MX(exchange or ".", preference)


_RDATA: dict[str, Any] = {"TXT": _txt, "A": A, "AAAA": AAAA, "MX": _mx, "PTR": PTR, "CNAME": CNAME}
