"""What an application knows about one SMTP session, handed to every hook."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import smtpwire
from smtpwire import TEMPUNAVAIL, UNAVAILABLE

if TYPE_CHECKING:
    from smtpwire import ForwardedClient, XclientAttributes
    from smtpwire_filters._milter import EnvelopeChanges
    from smtpwire_verify import Verdict

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


class Envelope:
    """One mail transaction as the server accepted it so far: the core's record of it, plus the message data.

    ``mail_from``, ``mail_params``, ``rcpt_tos`` and ``rcpt_params`` read the
    core's ``smtpwire.Transaction`` (``transaction``), which the server
    records once; the envelope keeps only what the core does not: ``content``,
    filled by the default ``data_chunk`` hook (a streaming handler overrides
    that hook and leaves it empty), and ``size``.  ``mail_params`` and
    ``rcpt_params`` are the parameters as the client sent them (keywords
    upper-cased, values validated by the extension that owns them); ``dsn``,
    ``rcpt_dsn`` and ``require_tls`` are what they mean.  The envelope holds
    the transaction as ``session.envelope`` last found it, never the
    connection, so the one given to ``message`` keeps the whole transaction
    after it ended, for a handler that keeps it.

    ``Envelope(mail_from, mail_params, rcpt_tos, rcpt_params)`` makes one of
    its own (a handler's unit test); a session's is ``session.envelope``.
    """

    def __init__(
        self,
        mail_from: str,
        mail_params: Mapping[str, str | None],
        rcpt_tos: Iterable[str] = (),
        rcpt_params: Iterable[Mapping[str, str | None]] | None = None,
    ) -> None:
        recipients = tuple(rcpt_tos)
        params = tuple(rcpt_params) if rcpt_params is not None else ({},) * len(recipients)
        if len(params) != len(recipients):
            raise ValueError(f"{len(recipients)} recipients but {len(params)} sets of recipient parameters")
        self._start(smtpwire.Transaction(mail_from, mail_params, recipients, params))

    @classmethod
    def of(cls, transaction: smtpwire.Transaction) -> Envelope:
        """The envelope of the core's ``transaction``, with no data yet."""
        envelope = cls.__new__(cls)
        envelope._start(transaction)
        return envelope

    def _start(self, transaction: smtpwire.Transaction) -> None:
        self._transaction = transaction
        self.content = bytearray()
        #: Octets of message data received so far (dot-unstuffed), kept or not.
        self.size = 0
        #: The Maildir++ folder (``"Junk"``) a Maildir store files this message into; ``None``: the inbox.
        self.folder: str | None = None
        #: What sender authentication found (a ``smtpwire_verify.Verdict``), once a ``SenderAuthentication``
        #: handler checked, at the end of data (MAIL's SPF verdict is in ``session.state`` until then).
        self.authentication: Verdict | None = None
        #: The Authentication-Results field that handler wrote on top of the message (its authserv-id's).
        self.authentication_field: bytes | None = None
        #: What milters changed in the envelope (sender, recipients, quarantine), once a milter handler ran.
        self.milter_changes: EnvelopeChanges | None = None
        self._handler_values: dict[TransactionSlot[Any], Any] | None = None  # TransactionSlot's, made on first use
        self._trace: tuple[str | None, bytes] | None = None  # trace_headers' text, the same for milters and store

    @property
    def transaction(self) -> smtpwire.Transaction:
        """The core's record of the transaction, as it stood when the server last looked (its end, once ended)."""
        return self._transaction

    @property
    def mail_from(self) -> str:
        return self._transaction.mail_from

    @property
    def mail_params(self) -> Mapping[str, str | None]:
        return self._transaction.mail_params

    @property
    def rcpt_tos(self) -> list[str]:
        """The accepted recipients in RCPT order (a new list: the envelope is not changed through it)."""
        return list(self._transaction.recipients)

    @property
    def rcpt_params(self) -> list[Mapping[str, str | None]]:
        """Each recipient's parameters, in the order of ``rcpt_tos`` (a new list)."""
        return list(self._transaction.recipient_params)

    @property
    def dsn(self) -> smtpwire.MailDsn:
        """MAIL's RET and ENVID (RFC 3461, with ``smtpwire.Dsn`` registered), decoded; ``None`` where absent."""
        return smtpwire.MailDsn.from_params(self.mail_params)

    @property
    def rcpt_dsn(self) -> list[smtpwire.RcptDsn]:
        """Each recipient's NOTIFY and ORCPT (RFC 3461), decoded, in the order of ``rcpt_tos``."""
        smtputf8 = "SMTPUTF8" in self.mail_params
        return [smtpwire.RcptDsn.from_params(params, smtputf8) for params in self._transaction.recipient_params]

    @property
    def require_tls(self) -> bool:
        """MAIL said REQUIRETLS (RFC 8689): the message may travel on only over verified TLS."""
        return "REQUIRETLS" in self.mail_params

    def __repr__(self) -> str:
        return f"<Envelope from={self.mail_from!r} to={self.rcpt_tos!r} size={self.size}>"


T = TypeVar("T")
D = TypeVar("D")
_UNSET: Any = object()


class TransactionSlot(Generic[T]):
    """A handler's own value for each mail transaction: typed, and gone with the transaction.

    What a store keeps from ``data_start`` to the end of the message (its
    file, its buffer) belongs here rather than in ``session.state``: each
    slot is a key of its own, so handlers composed into one never meet each
    other's values, and nothing is left over for the next transaction.  The
    hooks that run as a transaction ends (``message``, ``deliver``,
    ``message_aborted``) still find its values::

        class Counting(Handler):
            def __init__(self) -> None:
                self.chunks = TransactionSlot[int]("chunks")

            def data_chunk(self, session, data):
                self.chunks.set(session, self.chunks.get(session, 0) + 1)
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def get(self, session: Session) -> T: ...

    @overload
    def get(self, session: Session, default: D) -> T | D: ...

    def get(self, session: Session, default: object = _UNSET) -> object:
        """The value set in the session's transaction; without ``default``, ``LookupError`` if there is none."""
        values = self._values(session)
        if values is not None and self in values:
            return values[self]
        if default is _UNSET:
            raise LookupError(f"{self.name} was not set in this transaction")
        return default

    def set(self, session: Session, value: T) -> None:
        """Keep ``value`` for the rest of the session's transaction."""
        envelope = session._latest_envelope()
        if envelope is None:
            raise RuntimeError(f"{self.name} is kept per mail transaction, and none has begun in this session")
        if envelope._handler_values is None:
            envelope._handler_values = {}
        envelope._handler_values[self] = value

    def pop(self, session: Session) -> T | None:
        """The value, no longer kept; ``None`` if there was none."""
        values = self._values(session)
        return values.pop(self, None) if values is not None else None

    @staticmethod
    def _values(session: Session) -> dict[TransactionSlot[Any], Any] | None:
        envelope = session._latest_envelope()
        return envelope._handler_values if envelope is not None else None

    def __repr__(self) -> str:
        return f"<TransactionSlot {self.name}>"


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
        #: What a trusted proxy's XCLIENT commands said (``ServerOptions.xclient_from``): ``peer``, ``local``,
        #: ``helo_name``, ``client_name`` and ``xclient_login`` report it, and ``proxy`` is the proxy.
        self.xclient: XclientAttributes | None = None
        #: What XFORWARD said about the client of the next transaction (``ServerOptions.xforward_from``);
        #: forgotten at HELO/EHLO and XCLIENT, as Postfix does.
        self.forwarded: ForwardedClient | None = None
        self._envelope: Envelope | None = None
        self.state: dict[str, Any] = {}

    @property
    def envelope(self) -> Envelope | None:
        """The open transaction as accepted so far; ``None`` once it ended (end of data, RSET, EHLO, TLS).

        One envelope per transaction: it follows the core's record as RCPTs
        add to it, and a new one starts with the next MAIL.
        """
        transaction = self.conn.transaction
        if transaction is None:
            return None
        envelope = self._envelope
        if envelope is None or envelope._transaction.number != transaction.number:
            envelope = self._envelope = Envelope.of(transaction)
        else:
            envelope._transaction = transaction
        return envelope

    def _latest_envelope(self) -> Envelope | None:
        """The open transaction's envelope, else the last one's until the next begins (for hooks that see it end)."""
        return self.envelope or self._envelope

    @property
    def helo_name(self) -> str | None:
        """The HELO/EHLO name; until the client gives one after XCLIENT, the one XCLIENT named."""
        return self.conn.helo_name or _known(self.xclient.helo if self.xclient else None)

    @property
    def client_name(self) -> str | None:
        """The client's host name as XCLIENT named it (``None``: not named, or unknown to the proxy)."""
        return _known(self.xclient.name if self.xclient else None)

    @property
    def xclient_login(self) -> str | None:
        """Who the client authenticated as with the proxy that sent XCLIENT (not an AUTH here)."""
        return _known(self.xclient.login if self.xclient else None)

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


def _known(value: str | None) -> str | None:
    """An XCLIENT value, or ``None`` where the proxy did not know it."""
    return None if value in (UNAVAILABLE, TEMPUNAVAIL) else value


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
