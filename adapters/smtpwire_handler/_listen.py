"""Listening sockets, made one way for every server, and accept() failures, handled one way.

A name is bound on every address it resolves to (``localhost``: 127.0.0.1
and ::1 where the resolver gives both), each address once, IPv6 sockets
IPv6-only so the IPv4 one can be bound too.  Every listener, TCP or Unix,
asks the kernel for ``BACKLOG`` pending connections: the kernel caps it at
``net.core.somaxconn`` (Linux), so that setting is the operator's one knob.
In SMTP the server speaks first: a connection dropped from a full backlog
after the client's ACK hangs until the client gives up, so the backlog must
hold a whole burst of connects.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._unix import UnixListener

HostPort = tuple[str, int]

#: Pending connections asked for on every listener; the kernel caps it (``net.core.somaxconn``).
BACKLOG = 65535
#: Seconds to wait after a failing accept() (out of descriptors, say) before accepting again.
ACCEPT_RETRY = 0.1


def tcp_sockets(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets on every address of ``host`` (``""``: all interfaces).

    An error closes what was made and raises ``OSError(errno, "cannot listen on HOST:PORT: why")``.
    """
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as error:  # socket.gaierror included
        for sock in socks:
            sock.close()
        raise OSError(
            error.errno, f"cannot listen on {address_text((host, port))}: {error.strerror or error}"
        ) from error
    return socks


def address_text(address: HostPort | str) -> str:
    """A listener as people write it: ``127.0.0.1:8025``, ``[::1]:8025``, ``unix:/run/smtp``."""
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True)
class Listening:
    """One bound, listening, non-blocking socket, and what it serves.

    ``address`` is the bound ``(host, port)`` (port 0 became a real one) or a
    Unix socket's path; ``unix`` is set for a Unix socket, whose file
    ``close()`` also removes.
    """

    sock: socket.socket
    address: HostPort | str
    implicit_tls: bool = False
    unix: UnixListener | None = None

    @classmethod
    def tcp(cls, sock: socket.socket, *, implicit_tls: bool) -> Listening:
        bound = sock.getsockname()
        return cls(sock, (bound[0], bound[1]), implicit_tls)

    @property
    def name(self) -> str:
        """The address for logs and thread names: ``127.0.0.1:25``, ``[::1]:25``, ``unix:/run/lmtp``."""
        return address_text(self.address)

    def close(self) -> None:
        """Stop listening (and remove a Unix socket's file); again is harmless."""
        if self.unix is not None:
            self.unix.close()
        else:
            self.sock.close()


class AcceptErrors:
    """Logs failing accept() calls once per burst, not once per retry, and when accepting works again."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._failures = 0

    def failed(self, where: object, error: OSError) -> None:
        if not self._failures:
            self.log.error("cannot accept connections on %s (%r): retrying every %s s", where, error, ACCEPT_RETRY)
        self._failures += 1

    def accepted(self) -> None:
        if self._failures:
            self.log.warning("accepting connections again after %d failed attempts", self._failures)
            self._failures = 0


def service_address(address: str, what: str) -> tuple[str, int] | str:
    """A milter's or policy server's ``inet:HOST:PORT`` as ``(host, port)``, ``unix:PATH`` as the path.

    Anything else is a ``ValueError`` naming ``what`` it was for.
    """
    kind, _, rest = address.partition(":")
    if kind == "unix" and rest:
        return rest
    if kind == "inet":
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if host and port.isdigit() and 0 < int(port) < 65536:
            return host, int(port)
    raise ValueError(f"{what} {address!r}: expected inet:HOST:PORT or unix:PATH (a port from 1 to 65535)")
