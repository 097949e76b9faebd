"""What ``smtpwire serve`` runs with: the Settings record, and the ServerOptions made from it.

A Settings field named like a ``ServerOptions`` or ``ServerConfig`` field is
that field, passed on as it is, so each limit is named, defaulted and checked
in one place: the library's.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any

import click

import smtpwire
from smtpwire_handler import ServerOptions
from smtpwire_handler.kit import HostPort

from . import _authfile, _tls
from ._params import Listen
from ._recipients import RecipientTable


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a worker process needs, as plain values (picklable).

    The command line fills every field; only what is loaded once, by the parent process, comes later.
    """

    listen: tuple[Listen, ...]
    tls_listen: tuple[HostPort, ...]
    tls_cert: str | None
    tls_key: str | None
    maildir: str | None  # None: the sink, or standard output with print_messages
    print_messages: bool  # --print: each message to standard output instead of a store
    lmtp: bool
    hostname: str
    require_starttls: bool
    max_message_size: int
    max_recipients: int
    max_errors: int
    backend: str
    loop: str
    max_sessions: int
    max_sessions_per_client: int | None
    trusted_proxies: tuple[str, ...]  # not counted per client; with proxy_protocol, they send PROXY
    proxy_protocol: bool
    socket_mode: int  # of the Unix sockets
    auth_file: str | None  # None: no AUTH
    require_auth: bool
    max_auth_failures: int
    auth_failure_limit: int
    auth_failure_window: float
    auth_failure_delay: float
    command_timeout: float
    data_timeout: float
    min_data_rate: float
    tls_handshake_timeout: float
    proxy_timeout: float
    shutdown_grace: float
    verbose: bool
    log_format: str
    verify: tuple[str, ...]  # the sender authentication methods to run (smtpwire_verify.METHODS); () for none
    dns_resolvers: tuple[str, ...]  # HOST[:PORT] of the resolvers --verify asks; () for the system's
    authserv_id: str | None  # in Authentication-Results; None: the hostname
    enforce_dmarc: bool
    reject_spf_fail: bool
    accept_domains: tuple[str, ...] = ()  # --accept-domain, as compared (A-labels, lower case)
    recipients_file: str | None = None  # --recipients; with accept_domains both (): every recipient accepted
    recipient_table: RecipientTable | None = None  # the recipients file's entries, read once by the parent
    xclient_from: tuple[str, ...] = ()  # the networks that may use XCLIENT
    xforward_from: tuple[str, ...] = ()  # the networks that may use XFORWARD
    milters: tuple[str, ...] = ()  # --milter addresses, in the order the message goes through them
    milter_default_action: str = "tempfail"  # when a milter is down, times out or breaks
    milter_timeout: float = 30.0  # connect and each command; the message content gets at least 300 s
    policy_service: str | None = None  # --policy-service address, asked at RCPT
    metrics_listen: tuple[str, int] | None = None  # --metrics HOST:PORT: /metrics, /livez, /readyz
    maildir_sync: str = "auto"  # --maildir-sync: a syncfs per batch (filesystem), an fsync per file, or auto
    deliver_http: str | None = None  # --deliver-http URL: each message POSTed there, instead of a Maildir
    deliver_mode: str = "spool"  # spool: 250 once fsynced in the spool, posted after; sync: 250 after the 2xx
    deliver_secret_file: str | None = None  # the Standard Webhooks secret (whsec_...); None: unsigned
    deliver_secret: bytes | None = dataclasses.field(default=None, repr=False)  # read once by the parent
    deliver_spool: str = "spool"  # the spool directory (spool mode)
    deliver_retry_delay: float = 30.0  # the first retry; backoff from there
    deliver_max_age: float = 3 * 86400.0  # then a message goes to the spool's dead/
    deliver_timeout: float = 30.0  # one POST
    deliver_concurrency: int = 10  # POSTs at once per process
    deliver_spool_limit: int = 10_000  # /readyz: not ready while the spool holds more
    users: tuple[tuple[str, smtpwire.ScramCredentials], ...] = ()  # the auth file's
    salt_key: bytes | None = dataclasses.field(default=None, repr=False)  # unknown users' SCRAM salts
    self_signed_pem: tuple[bytes, bytes] | None = dataclasses.field(default=None, repr=False)  # certificate, key


FIELDS = frozenset(field.name for field in dataclasses.fields(Settings))


def request_extensions(tls: bool) -> tuple[smtpwire.Extension, ...]:
    """DSN, LIMITS and BINARYMIME (a store takes binary MIME as it is); REQUIRETLS where TLS can be."""
    extensions = (smtpwire.Dsn(), smtpwire.Limits(), smtpwire.BinaryMime())
    return (*extensions, smtpwire.RequireTls()) if tls else extensions


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, from --tls-cert and --tls-key or the --self-signed pair; ``None`` without TLS."""
    if settings.tls_cert is None and settings.self_signed_pem is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if settings.self_signed_pem is not None:
        _tls.load_from_memory(context, *settings.self_signed_pem)
        return context
    try:
        _tls.load(context, str(settings.tls_cert), settings.tls_key)
    except _tls.TLSFileError as error:
        raise click.ClickException(str(error)) from None
    return context


def build_options(settings: Settings) -> ServerOptions:
    auth = None
    if settings.auth_file is not None:  # SCRAM-SHA-256 PLAIN LOGIN, only over TLS
        iterations = _authfile.usual_iterations(dict(settings.users))
        auth = smtpwire.Auth(scram_iterations=iterations, scram_salt_key=settings.salt_key)  # like the usual user
    return options_for(settings, tls_context(settings), auth)


def options_for(settings: Settings, context: ssl.SSLContext | None, auth: smtpwire.Auth | None) -> ServerOptions:
    """ServerOptions of these settings, with this TLS context and AUTH; ``ValueError`` says what they refuse."""
    offered = (auth,) if auth is not None else ()
    config = smtpwire.ServerConfig(
        extensions=(*smtpwire.STANDARD_EXTENSIONS, *offered, *request_extensions(tls=context is not None)),
        require_tls=settings.require_starttls,
        **same_named(settings, smtpwire.ServerConfig),
    )
    return ServerOptions(
        config=config,
        tls_context=context,
        proxy_protocol_from=settings.trusted_proxies if settings.proxy_protocol else (),
        client_limit_exceptions=(*ServerOptions.client_limit_exceptions, *settings.trusted_proxies),
        **same_named(settings, ServerOptions),
    )


def same_named(settings: Settings, target: type) -> dict[str, Any]:
    """The settings ``target`` (a dataclass) has a field of the same name for."""
    return {field.name: getattr(settings, field.name) for field in dataclasses.fields(target) if field.name in FIELDS}
