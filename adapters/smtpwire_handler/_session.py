"""What an application knows about one SMTP session, handed to every hook."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import smtpwire

#: An IP address and port as the socket module gives them, or a Unix socket path.
Address = tuple[Any, ...] | str
#: ``Session.peer_host`` of a client on a Unix socket.
UNIX_PEER = "unix"


@dataclass(frozen=True)
class TLSInfo:
    """The negotiated TLS facts, for trace headers, logs and policy."""

    version: str | None
    cipher: str | None
    bits: int | None
    #: The client's certificate as ``SSLSocket.getpeercert()`` decodes it, when one was verified.
    peer_certificate: Mapping[str, Any] | None = None
    #: The client's certificate in DER form, when it sent one (verified or not).
    peer_certificate_der: bytes | None = None


@dataclass
class Envelope:
    """One mail transaction as the server accepted it so far.

    ``content`` is filled by the default ``data_chunk`` hook; a streaming
    handler overrides that hook and leaves it empty.  ``mail_params`` and
    ``rcpt_params`` are the parameters as the client sent them (keywords
    upper-cased, values validated by the extension that owns them);
    ``dsn``, ``rcpt_dsn`` and ``require_tls`` are what they mean.
    """

    mail_from: str
    mail_params: Mapping[str, str | None]
    rcpt_tos: list[str] = field(default_factory=list)
    rcpt_params: list[Mapping[str, str | None]] = field(default_factory=list)
    content: bytearray = field(default_factory=bytearray)
    #: Octets of message data received so far (dot-unstuffed), kept or not.
    size: int = 0

    @property
    def dsn(self) -> smtpwire.MailDsn:
        """MAIL's RET and ENVID (RFC 3461, with ``smtpwire.Dsn`` registered), decoded; ``None`` where absent."""
        return smtpwire.MailDsn.from_params(self.mail_params)

    @property
    def rcpt_dsn(self) -> list[smtpwire.RcptDsn]:
        """Each recipient's NOTIFY and ORCPT (RFC 3461), decoded, in the order of ``rcpt_tos``."""
        smtputf8 = "SMTPUTF8" in self.mail_params
        return [smtpwire.RcptDsn.from_params(params, smtputf8) for params in self.rcpt_params]

    @property
    def require_tls(self) -> bool:
        """MAIL said REQUIRETLS (RFC 8689): the message may travel on only over verified TLS."""
        return "REQUIRETLS" in self.mail_params


class Session:
    """One connection: peer, TLS, greeting and the current envelope.

    ``extensions`` is the live registry of the connection, so a hook (for
    example ``tls_started``) can add or remove what EHLO offers.  ``state`` is
    a free dict for the application's own per-session data.

    Behind a trusted proxy (``ServerOptions.proxy_protocol_from``), ``peer``
    and ``local`` are the client and the address it reached, as the PROXY
    header names them; ``proxy`` is then the proxy's own address (the real
    connection's peer) and ``proxy_header`` the header, with its TLVs.
    """

    def __init__(
        self,
        conn: smtpwire.ServerConnection,
        peer: Address | None = None,
        local: Address | None = None,
        tls: TLSInfo | None = None,
    ) -> None:
        self.id = secrets.token_hex(6)
        self.conn = conn
        self.peer = peer
        self.local = local
        self.tls = tls
        #: True when TLS started before the greeting (RFC 8314 implicit TLS).
        self.implicit_tls = False
        #: The trusted proxy's address when the connection came through one, else ``None``.
        self.proxy: Address | None = None
        self.proxy_header: smtpwire.ProxyHeader | None = None
        self._envelope: Envelope | None = None
        self.state: dict[str, Any] = {}

    @property
    def envelope(self) -> Envelope | None:
        """The open transaction as accepted so far; ``None`` once it ended (end of data, RSET, EHLO, TLS)."""
        return self._envelope if self.conn.transaction is not None else None

    @envelope.setter
    def envelope(self, envelope: Envelope | None) -> None:
        self._envelope = envelope

    @property
    def helo_name(self) -> str | None:
        return self.conn.helo_name

    @property
    def esmtp(self) -> bool:
        return self.conn.esmtp

    @property
    def authenticated(self) -> smtpwire.Authenticated | None:
        """Who the client authenticated as (mechanism, authzid, username), if it did."""
        return self.conn.authenticated

    @property
    def extensions(self) -> smtpwire.Extensions:
        return self.conn.extensions

    @property
    def peer_host(self) -> str:
        """The client's IP address as text; ``"unix"`` on a Unix socket (whose peer is a path, usually empty)."""
        if isinstance(self.peer, tuple):
            return str(self.peer[0])
        return UNIX_PEER if isinstance(self.peer, str) else "unknown"

    def __repr__(self) -> str:
        user = self.authenticated.username if self.authenticated else None
        tls = self.tls is not None
        proxy = f" proxy={self.proxy!r}" if self.proxy is not None else ""
        return f"<Session {self.id} peer={self.peer!r}{proxy} helo={self.helo_name!r} tls={tls} user={user!r}>"


def tls_info(tls: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
    """The facts of an established TLS connection, from the stdlib's TLS object."""
    cipher = tls.cipher()
    return TLSInfo(
        version=tls.version(),
        cipher=cipher[0] if cipher else None,
        bits=cipher[2] if cipher else None,
        peer_certificate=tls.getpeercert() or None,
        peer_certificate_der=tls.getpeercert(binary_form=True),
    )
