"""Per-server settings every adapter shares: the core's config, TLS, timeouts and limits."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import smtpwire
from smtpwire import Xclient, Xforward

if TYPE_CHECKING:
    from ._metrics import Metrics


@dataclass(frozen=True)
class ServerOptions:
    """How a server runs; checked once, at construction, with clear messages.

    Timeouts follow RFC 5321 4.5.3.2 (5 minutes for a command, 10 for a block
    of message data) as deadlines per record, like Postfix's
    ``smtpd_per_record_deadline``, so a client dripping a byte now and then
    cannot hold a session: a whole command line (or SASL exchange) within
    ``command_timeout``; message data within ``data_timeout``, a deadline each
    read extends by its size at ``min_data_rate`` octets a second, never past
    ``data_timeout`` ahead (Postfix's ``smtpd_min_data_rate``).  With ``tls_context`` set, STARTTLS is offered
    on plain listeners and implicit-TLS listeners (RFC 8314) are possible.
    ``max_sessions_per_client`` bounds one client's concurrent sessions (an
    IPv4 address, or an IPv6 /64: what one site usually holds), as Postfix's
    ``smtpd_client_connection_count_limit`` does; ``None`` lifts it.  It does
    not count ``client_limit_exceptions`` (the local host by default, as
    Postfix exempts ``$mynetworks``) nor trusted proxies, whose connections
    carry many clients.

    ``proxy_protocol_from`` lists the networks of trusted proxies (HAProxy's
    PROXY protocol, version 1 or 2, like Postfix's
    ``smtpd_upstream_proxy_protocol``): a connection from one of them must
    open with a PROXY header within ``proxy_timeout`` seconds, and the session
    then reports the client the header names; empty, nobody is trusted.
    Session limits apply when a connection is accepted, before its header:
    ``max_sessions_per_client`` counts a proxy as one client.

    ``xclient_from`` and ``xforward_from`` list the networks whose clients
    may use Postfix's XCLIENT and XFORWARD (``smtpd_authorized_xclient_hosts``
    and ``smtpd_authorized_xforward_hosts``): advertised to them, refused
    with 550 5.7.0 to the rest; empty, the verbs are not served at all.
    After XCLIENT the session reports the client it names.

    ``metrics``, a ``Metrics``, counts what every session does (Prometheus);
    ``None``, the sessions pay one ``is None`` test per point they would count.
    """

    config: smtpwire.ServerConfig = dataclasses.field(default_factory=smtpwire.ServerConfig)
    tls_context: ssl.SSLContext | None = None
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    min_data_rate: float = 500.0
    tls_handshake_timeout: float = 30.0
    max_sessions: int = 1000
    max_sessions_per_client: int | None = 50
    shutdown_grace: float = 30.0
    proxy_protocol_from: Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
    client_limit_exceptions: Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = (
        "127.0.0.0/8",
        "::1/128",
    )
    proxy_timeout: float = 10.0
    xclient_from: Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
    xforward_from: Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
    metrics: Metrics | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.config, smtpwire.ServerConfig):
            raise ValueError(f"config must be a smtpwire.ServerConfig, not {type(self.config).__name__}")
        if self.tls_context is not None and not isinstance(self.tls_context, ssl.SSLContext):
            raise ValueError(f"tls_context must be an ssl.SSLContext, not {type(self.tls_context).__name__}")
        for name in ("command_timeout", "data_timeout", "tls_handshake_timeout", "shutdown_grace", "proxy_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 86400:
                raise ValueError(f"{name} must be a number of seconds above 0 and below 86400, not {value!r}")
        rate = self.min_data_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
            raise ValueError(f"min_data_rate must be a number of octets a second above 0, not {rate!r}")
        if isinstance(self.max_sessions, bool) or not isinstance(self.max_sessions, int) or self.max_sessions < 1:
            raise ValueError(f"max_sessions must be an integer of at least 1, not {self.max_sessions!r}")
        per_client = self.max_sessions_per_client
        if per_client is not None and (
            isinstance(per_client, bool) or not isinstance(per_client, int) or per_client < 1
        ):
            raise ValueError(f"max_sessions_per_client must be an integer of at least 1 or None, not {per_client!r}")
        if self.tls_context is None and "STARTTLS" in {e.keyword for e in self.config.extensions}:
            raise ValueError("the StartTLS extension needs a tls_context: the handshake would always fail")
        if self.config.require_tls and self.tls_context is None:
            raise ValueError("require_tls needs a tls_context: clients could never start TLS")
        auth = next((e for e in self.config.extensions if isinstance(e, smtpwire.Auth)), None)
        if auth is not None and auth.require_tls and self.tls_context is None:
            raise ValueError(
                "the Auth extension is offered only over TLS and needs a tls_context"
                " (Auth(require_tls=False) allows AUTH in clear)"
            )
        if self.metrics is not None and not callable(getattr(self.metrics, "session", None)):
            raise ValueError(f"metrics must be a smtpwire_handler Metrics, not {type(self.metrics).__name__}")
        if self.config.require_auth and auth is None:
            raise ValueError("require_auth needs the Auth extension in config.extensions: nobody could send mail")
        object.__setattr__(self, "proxy_protocol_from", _networks("proxy_protocol_from", self.proxy_protocol_from))
        exceptions = _networks("client_limit_exceptions", self.client_limit_exceptions)
        object.__setattr__(self, "client_limit_exceptions", exceptions)
        object.__setattr__(self, "xclient_from", _networks("xclient_from", self.xclient_from))
        object.__setattr__(self, "xforward_from", _networks("xforward_from", self.xforward_from))

    def replace_tls_context(self, context: ssl.SSLContext) -> None:
        """Have every handshake that starts from now on use ``context``: a certificate reload.

        Every adapter reads ``tls_context`` when a handshake starts, so the
        handshakes and sessions under way keep the context they began with.
        It is the one field that changes after construction, and only from one
        context to another: a reload builds a new context and swaps it in
        whole, as changing a live one is unsafe (a failed ``load_cert_chain``
        leaves it without its key).
        """
        if not isinstance(context, ssl.SSLContext):
            raise ValueError(f"tls_context must be an ssl.SSLContext, not {type(context).__name__}")
        if self.tls_context is None:
            raise ValueError("these options have no tls_context to replace: TLS is set when they are made")
        object.__setattr__(self, "tls_context", context)

    def check_listeners(self, listen: Sequence[object], tls_listen: Sequence[object]) -> None:
        """A server needs a listener (TCP, or a Unix socket's path), and implicit TLS needs a certificate."""
        if tls_listen and self.tls_context is None:
            raise ValueError("implicit TLS listeners need a TLS certificate (options.tls_context)")
        if not listen and not tls_listen:
            raise ValueError("a server needs at least one listener")
        if tls_listen and self.proxy_protocol_from:
            raise ValueError(
                "proxy_protocol_from works on plain listeners only: the PROXY header comes before the TLS"
                " handshake of an implicit TLS listener (let the proxy terminate TLS, or use STARTTLS)"
            )

    def trusts_proxy(self, peer: object) -> bool:
        """Whether ``peer`` (a socket address) is in ``proxy_protocol_from``: its connections start with PROXY."""
        return bool(self.proxy_protocol_from) and _within(_ip_address(peer), self.proxy_protocol_from)

    def forwarding_extensions(self, peer: object) -> tuple[smtpwire.Extension, ...]:
        """XCLIENT and XFORWARD where configured, each allowed only to a ``peer`` in its networks."""
        if not (self.xclient_from or self.xforward_from):  # nearly every server: no address to parse per connection
            return ()
        address = _ip_address(peer)
        extensions: list[smtpwire.Extension] = []
        if self.xclient_from:
            extensions.append(Xclient(_within(address, self.xclient_from)))
        if self.xforward_from:
            extensions.append(Xforward(_within(address, self.xforward_from)))
        return tuple(extensions)

    def counted_client(self, peer: object) -> str | None:
        """Who ``peer`` counts as for ``max_sessions_per_client`` (see ``client_key``); ``None``: not counted.

        A Unix socket's peer (a path, usually ``""``, or ``None``) is the local
        host, which is not counted either.
        """
        if self.max_sessions_per_client is None or not isinstance(peer, tuple):
            return None
        address = _ip_address(peer)
        if address is None:
            return client_key(peer)
        networks = (*self.client_limit_exceptions, *self.proxy_protocol_from)
        return None if _within(address, networks) else _client_of(address)

    def new_connection(self, *, implicit_tls: bool = False) -> smtpwire.ServerConnection:
        """A core connection for a new client; STARTTLS is registered when a TLS context is set."""
        return smtpwire.ServerConnection(self.connection_config, tls_active=implicit_tls)

    @functools.cached_property
    def connection_config(self) -> smtpwire.ServerConfig:
        """``config``, with STARTTLS registered when a TLS context is set: made once, not per connection."""
        config = self.config
        if self.tls_context is not None and "STARTTLS" not in {e.keyword for e in config.extensions}:
            config = dataclasses.replace(config, extensions=(*config.extensions, smtpwire.StartTLS()))
        return config


def _ip_address(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A socket address's IP address (an IPv4-mapped one as IPv4); ``None`` for anything else."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_key(peer: object) -> str | None:
    """Who counts as one client: its IPv4 address, or its IPv6 /64; ``None`` for a peer with no IP address.

    An IPv4-mapped IPv6 address counts as the IPv4 address.  A /64 is what one
    IPv6 site usually holds, so a client cannot escape the limit by using
    addresses from its own prefix.
    """
    address = _ip_address(peer)
    if address is None:  # a peer with no IP address at all, or a name: itself
        return peer[0] if isinstance(peer, tuple) and peer and isinstance(peer[0], str) else None
    return _client_of(address)


def _client_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The IPv4 address, or the IPv6 address's /64 (``_ip_address`` has turned IPv4-mapped ones to IPv4)."""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address.packed, 64), strict=False))
    return str(address)


def _within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    networks: Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    """Whether ``address`` is in one of ``networks`` (``ServerOptions`` made every one a network)."""
    return address is not None and any(address in network for network in networks)


def _networks(name: str, networks: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``name``'s networks, with a clear error for anything else."""
    if isinstance(networks, str | bytes) or not isinstance(networks, Sequence):
        raise ValueError(f"{name} must be a sequence of networks (like ['10.0.0.0/8']), not {networks!r}")
    checked = []
    for network in networks:
        if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
            checked.append(network)
            continue
        if not isinstance(network, str):
            raise ValueError(f"{name}: {network!r} is not a network such as '10.0.0.0/8' or '::1/128'")
        try:
            checked.append(ipaddress.ip_network(network))
        except ValueError as error:
            raise ValueError(f"{name}: {network!r} is not a network: {error}") from None
    return tuple(checked)
