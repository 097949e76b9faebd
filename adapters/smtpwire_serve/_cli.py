"""``smtpwire serve``: a real mail server storing into a Maildir, in one command."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import click

import smtpwire
import smtpwire_anyio
import smtpwire_asyncio
from smtpwire_asyncio import HostPort
from smtpwire_handler import AsyncHandler, Maildir, ServerOptions
from smtpwire_handler._unix import DEFAULT_MODE

from . import _authfile, _authlimit, _run, _tls
from ._devcert import make_self_signed
from ._lmtp import LmtpMaildirHandler, Mailboxes
from ._logging import LOG_FORMATS, configure_logging
from ._params import DEFAULT_LISTEN, SECONDS, HostPortType, Listen, ListenType, networks, octal_mode
from ._reload import Reloader
from ._store import MaildirHandler, PrintingHandler, SinkHandler

log = logging.getLogger("smtpwire.serve")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a worker process needs, as plain values (picklable)."""

    listen: tuple[Listen, ...]
    tls_listen: tuple[HostPort, ...]
    cert: str | None
    key: str | None
    maildir: str | None  # None: the sink, or standard output with print_messages
    hostname: str
    require_starttls: bool
    max_message_size: int
    max_recipients: int
    backend: str
    loop: str
    max_sessions: int
    verbose: bool
    auth_file: str | None = None  # None: no AUTH
    users: tuple[tuple[str, smtpwire.ScramCredentials], ...] = ()  # loaded once, by the parent process
    require_auth: bool = False
    max_auth_failures: int = 3
    salt_key: bytes | None = dataclasses.field(default=None, repr=False)  # unknown users' SCRAM salts
    auth_failure_limit: int = _authlimit.DEFAULT_LIMIT
    auth_failure_window: float = _authlimit.DEFAULT_WINDOW
    auth_failure_delay: float = _authlimit.DEFAULT_DELAY
    max_sessions_per_client: int | None = 50
    trusted_proxies: tuple[str, ...] = ()  # not counted per client; with proxy_protocol, they send PROXY
    proxy_protocol: bool = False
    lmtp: bool = False
    print_messages: bool = False  # --print: each message to standard output instead of a store
    socket_mode: int = DEFAULT_MODE  # of the Unix sockets
    self_signed: tuple[bytes, bytes] | None = dataclasses.field(default=None, repr=False)  # PEM certificate, key
    command_timeout: float = ServerOptions.command_timeout
    data_timeout: float = ServerOptions.data_timeout
    min_data_rate: float = ServerOptions.min_data_rate
    tls_handshake_timeout: float = ServerOptions.tls_handshake_timeout
    proxy_timeout: float = ServerOptions.proxy_timeout
    shutdown_grace: float = ServerOptions.shutdown_grace
    max_errors: int = smtpwire.ServerConfig.max_errors
    log_format: str = "text"


def default_hostname() -> str:
    """This machine's name as the kernel has it (``hostname``): no DNS lookup, which could hang or say localhost."""
    name = socket.gethostname()
    return name if re.fullmatch(r"[A-Za-z0-9.-]{1,255}", name) else "localhost"


def request_extensions(tls: bool) -> tuple[smtpwire.Extension, ...]:
    """DSN, LIMITS and BINARYMIME (a store takes binary MIME as it is); REQUIRETLS where TLS can be."""
    extensions = (smtpwire.Dsn(), smtpwire.Limits(), smtpwire.BinaryMime())
    return (*extensions, smtpwire.RequireTls()) if tls else extensions


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, from --tls-cert and --tls-key or the --self-signed pair; ``None`` without TLS."""
    if settings.cert is None and settings.self_signed is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if settings.self_signed is not None:
        _tls.load_from_memory(context, *settings.self_signed)
        return context
    try:
        _tls.load(context, str(settings.cert), settings.key)
    except _tls.TLSFileError as error:
        raise click.ClickException(str(error)) from None
    return context


def build_options(settings: Settings) -> ServerOptions:
    context = tls_context(settings)
    auth: tuple[smtpwire.Auth, ...] = ()
    if settings.auth_file is not None:  # SCRAM-SHA-256 PLAIN LOGIN, only over TLS
        iterations = _authfile.usual_iterations(dict(settings.users))
        auth = (smtpwire.Auth(scram_iterations=iterations, scram_salt_key=settings.salt_key),)  # like the usual user
    try:
        config = smtpwire.ServerConfig(
            hostname=settings.hostname,
            extensions=(*smtpwire.STANDARD_EXTENSIONS, *auth, *request_extensions(tls=context is not None)),
            max_message_size=settings.max_message_size,
            max_recipients=settings.max_recipients,
            require_tls=settings.require_starttls,
            require_auth=settings.require_auth,
            max_auth_failures=settings.max_auth_failures,
            max_errors=settings.max_errors,
            lmtp=settings.lmtp,
        )
        return ServerOptions(
            config=config,
            tls_context=context,
            max_sessions=settings.max_sessions,
            max_sessions_per_client=settings.max_sessions_per_client,
            proxy_protocol_from=settings.trusted_proxies if settings.proxy_protocol else (),
            client_limit_exceptions=(*ServerOptions.client_limit_exceptions, *settings.trusted_proxies),
            command_timeout=settings.command_timeout,
            data_timeout=settings.data_timeout,
            min_data_rate=settings.min_data_rate,
            tls_handshake_timeout=settings.tls_handshake_timeout,
            proxy_timeout=settings.proxy_timeout,
            shutdown_grace=settings.shutdown_grace,
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from None


def build_handler(settings: Settings) -> AsyncHandler:
    accounts = None
    if settings.auth_file is not None:
        limits = (settings.auth_failure_limit, settings.auth_failure_window, settings.auth_failure_delay)
        accounts = _authfile.Accounts(dict(settings.users), budget=_authlimit.FailureBudget(*limits))
    if settings.print_messages:
        return PrintingHandler(accounts)
    if settings.maildir is None:
        return SinkHandler(accounts)
    try:
        if settings.lmtp:
            return LmtpMaildirHandler(Mailboxes(settings.maildir), settings.hostname, accounts)
        return MaildirHandler(Maildir(settings.maildir), settings.hostname, accounts)
    except OSError as error:
        raise click.ClickException(f"cannot use the Maildir {settings.maildir}: {error}") from None


def run(settings: Settings, reuse_port: bool = False) -> None:
    """One server process, on asyncio's Protocol server (uvloop when installed) or, for trio, the anyio adapter."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop reloads on it: never a death at start-up
    configure_logging(settings.verbose, settings.log_format)
    options, handler = build_options(settings), build_handler(settings)
    if settings.auth_file is not None:
        log.info("AUTH for %d user(s) of %s", len(settings.users), settings.auth_file)
    accounts = handler.accounts if isinstance(handler, _authfile.AuthFileHandler) else None
    context = options.tls_context if settings.cert else None  # the --self-signed pair has no file to reload
    reload = Reloader(context, settings.cert, settings.key, accounts, settings.auth_file)
    listen, tls_listen, mode = settings.listen, settings.tls_listen, settings.socket_mode
    try:
        if settings.backend == "trio":
            server = smtpwire_anyio.Server(
                handler, options, listen=listen, tls_listen=tls_listen, reuse_port=reuse_port, unix_mode=mode
            )
            anyio.run(_run.serve_anyio, server, reload, backend="trio")
        else:
            protocols = smtpwire_asyncio.Server(
                handler, options, listen=listen, tls_listen=tls_listen, reuse_port=reuse_port, unix_mode=mode
            )
            smtpwire_asyncio.run(_run.serve_asyncio(protocols, reload), loop=settings.loop)
    except OSError as error:
        raise click.ClickException(str(error)) from None
    except BaseExceptionGroup as group:
        matched, _ = group.split(OSError)
        if matched is None:
            raise
        raise click.ClickException(str(matched.exceptions[0])) from None


def run_worker(settings: Settings) -> None:
    try:
        run(settings, reuse_port=True)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)


def run_workers(settings: Settings, workers: int) -> None:
    """Several processes on the same ports (SO_REUSEPORT); signals (SIGHUP too: each reloads) are passed on."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_worker, args=(settings,), name=f"smtpwire-{n}") for n in range(workers)]
    for process in processes:
        process.start()

    def forward(signum: int, frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    for process in processes:
        process.join()
    if any(process.exitcode for process in processes):
        sys.exit(1)


@click.group()
@click.version_option(smtpwire.__version__, prog_name="smtpwire")
def main() -> None:
    """smtpwire: an ESMTP server with STARTTLS done right."""


@main.command()
@click.option(
    "--listen",
    "listen",
    type=ListenType(),
    metavar="HOST:PORT|unix:PATH",
    multiple=True,
    help="Plain listener, HOST:PORT or unix:PATH (a Unix socket); STARTTLS offered when a certificate is given."
    " Repeatable. Default 127.0.0.1:8025.",
)
@click.option(
    "--socket-mode",
    metavar="MODE",
    default="0660",
    show_default=True,
    callback=octal_mode,
    help="Permissions of the unix:PATH sockets (octal): who may connect. A stale socket there is replaced.",
)
@click.option(
    "--lmtp",
    is_flag=True,
    help="Speak LMTP (RFC 2033), one reply per recipient; with --maildir, one Maildir per recipient in it.",
)
@click.option(
    "--tls-listen",
    "tls_listen",
    type=HostPortType(),
    multiple=True,
    help="Implicit-TLS listener (RFC 8314, like port 465). Repeatable.",
)
@click.option(
    "--tls-cert",
    type=click.Path(readable=False),  # checked by _tls.load, at start and on SIGHUP alike
    metavar="FILE",
    help="Certificate chain, PEM. Reloaded on SIGHUP.",
)
@click.option(
    "--tls-key",
    type=click.Path(readable=False),
    metavar="FILE",
    help="Private key, PEM, unencrypted (default: in --tls-cert). Reloaded on SIGHUP.",
)
@click.option(
    "--self-signed",
    is_flag=True,
    help="Make a throwaway self-signed certificate, in memory (its SHA-256 fingerprint is logged). Development only.",
)
@click.option(
    "--self-signed-cert-out",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="With --self-signed: write its certificate (not the key) to FILE, for clients to trust.",
)
@click.option(
    "--maildir",
    type=click.Path(file_okay=False),
    default="maildir",
    show_default=True,
    help="Store messages in this Maildir (created if missing); with --lmtp, a folder of one Maildir per recipient.",
)
@click.option("--sink", is_flag=True, help="Accept and discard every message (for testing clients and benchmarks).")
@click.option(
    "--print",
    "print_messages",
    is_flag=True,
    help="Print each message to standard output instead of storing it (like python -m aiosmtpd's debugging mode).",
)
@click.option(
    "--hostname",
    metavar="NAME",
    help="Name in the greeting, EHLO and Received headers. Default: this machine's name as `hostname` prints it"
    " (no DNS lookup).",
)
@click.option(
    "--require-starttls",
    is_flag=True,
    help="Answer every command but EHLO, HELO, STARTTLS, NOOP, RSET and QUIT with 530 5.7.0 until STARTTLS.",
)
@click.option(
    "--max-message-size",
    type=click.IntRange(min=1),
    default=32 * 1024 * 1024,
    show_default=True,
    help="Largest message in bytes (advertised with SIZE).",
)
@click.option(
    "--max-recipients", type=click.IntRange(min=1), default=100, show_default=True, help="Recipients per message."
)
@click.option(
    "--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio", show_default=True, help="Event loop."
)
@click.option(
    "--loop",
    type=click.Choice(smtpwire_asyncio.LOOPS),
    default="auto",
    show_default=True,
    help="With --backend asyncio: uvloop when installed (auto), or the one named.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(min=1),
    help="Open sessions per process; one more is told 421 4.7.0 and closed."
    f" Default: what the open-file limit allows (2 descriptors a session), at most {_run.MAX_DEFAULT_SESSIONS:,}.",
)
@click.option(
    "--max-sessions-per-client",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Open sessions per client address (IPv6: per /64) and process; one more is told 421 4.7.0. 0: no limit.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes sharing the ports (SO_REUSEPORT); TCP listeners only.",
)
@click.option(
    "--auth-file",
    type=click.Path(dir_okay=False),
    help="Offer AUTH (after TLS) to the users of this file (made with 'smtpwire passwd'). Read at start.",
)
@click.option("--require-auth", is_flag=True, help="Refuse MAIL until the client authenticated (530 5.7.0).")
@click.option(
    "--max-auth-failures",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Failed AUTH attempts before the session is closed (421).",
)
@click.option(
    "--auth-failure-limit",
    type=click.IntRange(min=1),
    default=_authlimit.DEFAULT_LIMIT,
    show_default=True,
    help="Failed AUTH attempts per client (IPv4 address, IPv6 /64) and worker, across sessions, before its"
    " attempts are refused unchecked (454 4.7.0) until --auth-failure-window seconds pass without one.",
)
@click.option(
    "--auth-failure-window",
    type=click.FloatRange(min=0, min_open=True),
    default=_authlimit.DEFAULT_WINDOW,
    show_default=True,
    help="Seconds a failed AUTH attempt counts against its client.",
)
@click.option(
    "--auth-failure-delay",
    type=click.FloatRange(min=0),
    default=_authlimit.DEFAULT_DELAY,
    show_default=True,
    help=f"Seconds an AUTH attempt waits after its client's first failure; doubled for each further one,"
    f" at most {_authlimit.MAX_DELAY:g} (0: no wait).",
)
@click.option(
    "--proxy-protocol",
    is_flag=True,
    help="Connections from --trusted-proxy networks must open with a PROXY header (v1 or v2); sessions report"
    " the client it names. TCP --listen only.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    metavar="CIDR",
    multiple=True,
    callback=networks,
    help="A proxy network (repeatable): not counted by --max-sessions-per-client, and with --proxy-protocol"
    " the networks that may (and must) send the PROXY header.",
)
@click.option(
    "--command-timeout",
    type=SECONDS,
    metavar="SECONDS",
    default=ServerOptions.command_timeout,
    show_default=True,
    help="A whole command line (or AUTH exchange) must arrive within this; then 421 4.4.2.",
)
@click.option(
    "--data-timeout",
    type=SECONDS,
    metavar="SECONDS",
    default=ServerOptions.data_timeout,
    show_default=True,
    help="Message data: the deadline each read extends (at --min-data-rate), never further ahead than this.",
)
@click.option(
    "--tls-handshake-timeout",
    type=SECONDS,
    metavar="SECONDS",
    default=ServerOptions.tls_handshake_timeout,
    show_default=True,
    help="A TLS handshake (STARTTLS or --tls-listen) must finish within this.",
)
@click.option(
    "--proxy-timeout",
    type=SECONDS,
    metavar="SECONDS",
    default=ServerOptions.proxy_timeout,
    show_default=True,
    help="With --proxy-protocol: the PROXY header must arrive within this.",
)
@click.option(
    "--shutdown-grace",
    type=SECONDS,
    metavar="SECONDS",
    default=ServerOptions.shutdown_grace,
    show_default=True,
    help="On SIGTERM or SIGINT, open transactions may finish within this; then every connection is closed.",
)
@click.option(
    "--min-data-rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="OCTETS",
    default=ServerOptions.min_data_rate,
    show_default=True,
    help="Octets a second of message data that keep extending its deadline (Postfix's smtpd_min_data_rate).",
)
@click.option(
    "--max-errors",
    type=click.IntRange(min=1),
    metavar="N",
    default=smtpwire.ServerConfig.max_errors,
    show_default=True,
    help="Refused commands (5xx) in a session before it ends with 421 4.7.0.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="text: one line per record; json: one JSON object per line (time, level, logger, session, message).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log a transcript of every session (AUTH exchanges withheld).")
def serve(
    listen: tuple[Listen, ...],
    tls_listen: tuple[HostPort, ...],
    tls_cert: str | None,
    tls_key: str | None,
    self_signed: bool,
    maildir: str,
    sink: bool,
    print_messages: bool,
    hostname: str | None,
    require_starttls: bool,
    max_message_size: int,
    max_recipients: int,
    backend: str,
    loop: str,
    max_sessions: int | None,
    max_sessions_per_client: int,
    workers: int,
    auth_file: str | None,
    require_auth: bool,
    max_auth_failures: int,
    auth_failure_limit: int,
    auth_failure_window: float,
    auth_failure_delay: float,
    proxy_protocol: bool,
    trusted_proxies: tuple[str, ...],
    verbose: bool,
    socket_mode: int,
    lmtp: bool,
    self_signed_cert_out: str | None,
    command_timeout: float,
    data_timeout: float,
    tls_handshake_timeout: float,
    proxy_timeout: float,
    shutdown_grace: float,
    min_data_rate: float,
    max_errors: int,
    log_format: str,
) -> None:
    """Run a mail server that stores every message it accepts into a Maildir.

    \b
    Examples:
      smtpwire serve                                   # 127.0.0.1:8025 into ./maildir
      smtpwire serve --self-signed --tls-listen 127.0.0.1:8465   # and 127.0.0.1:8025
      smtpwire serve --listen 0.0.0.0:25 --listen [::]:25 \\
          --tls-cert cert.pem --tls-key key.pem --require-starttls --workers 4
      smtpwire serve --self-signed --auth-file users --require-auth
      smtpwire serve --lmtp --listen unix:/run/smtpwire/lmtp --maildir /var/mail/lmtp
    """
    if tls_cert and self_signed:
        raise click.UsageError("give either --tls-cert or --self-signed, not both")
    if tls_key and not tls_cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    if self_signed_cert_out and not self_signed:
        raise click.UsageError("--self-signed-cert-out needs --self-signed")
    if backend == "trio" and loop != "auto":
        raise click.UsageError("--loop is for --backend asyncio")
    configure_logging(verbose, log_format)  # start-up warnings in the format of the rest of the log
    file_limit = _run.raise_file_limit()
    if max_sessions is not None and max_sessions > _run.sessions_for(file_limit):
        log.warning(
            "--max-sessions %d may run out of descriptors (the open-file limit is %d)", max_sessions, file_limit
        )
    if print_messages and sink:
        raise click.UsageError("give either --print or --sink, not both")
    if require_auth and auth_file is None:
        raise click.UsageError("--require-auth needs --auth-file")
    if proxy_protocol and not trusted_proxies:
        raise click.UsageError("--proxy-protocol needs --trusted-proxy CIDR: the networks that may send the header")
    if proxy_protocol and tls_listen:
        raise click.UsageError("--proxy-protocol works with --listen only: a PROXY header cannot precede TLS")
    if workers > 1 and any(isinstance(address, str) for address in listen):
        raise click.UsageError("--workers works with TCP listeners only: a unix:PATH socket is bound by one process")
    if auth_file is not None and not (tls_cert or self_signed):
        raise click.UsageError("--auth-file needs --tls-cert (or --self-signed): AUTH is offered only over TLS")
    if (tls_listen or require_starttls) and not (tls_cert or self_signed):
        raise click.UsageError("--tls-listen and --require-starttls need --tls-cert (or --self-signed)")
    users = load_users(auth_file) if auth_file is not None else {}
    salt_key = load_salt_key(auth_file, users) if auth_file is not None else None  # once, for every worker
    hostname = hostname or default_hostname()
    settings = Settings(
        listen=listen or (DEFAULT_LISTEN,),
        tls_listen=tls_listen,
        cert=tls_cert,
        key=tls_key,
        maildir=None if sink or print_messages else maildir,
        print_messages=print_messages,
        hostname=hostname,
        require_starttls=require_starttls,
        max_message_size=max_message_size,
        max_recipients=max_recipients,
        backend=backend,
        loop=loop,
        max_sessions=max_sessions or _run.sessions_for(file_limit),
        max_sessions_per_client=max_sessions_per_client or None,
        verbose=verbose,
        auth_file=auth_file,
        users=tuple(users.items()),
        require_auth=require_auth,
        max_auth_failures=max_auth_failures,
        salt_key=salt_key,
        auth_failure_limit=auth_failure_limit,
        auth_failure_window=auth_failure_window,
        auth_failure_delay=auth_failure_delay,
        trusted_proxies=trusted_proxies,
        proxy_protocol=proxy_protocol,
        lmtp=lmtp,
        socket_mode=socket_mode,
        self_signed=self_signed_pair(hostname, self_signed_cert_out) if self_signed else None,
        command_timeout=command_timeout,
        data_timeout=data_timeout,
        min_data_rate=min_data_rate,
        tls_handshake_timeout=tls_handshake_timeout,
        proxy_timeout=proxy_timeout,
        shutdown_grace=shutdown_grace,
        max_errors=max_errors,
        log_format=log_format,
    )
    if workers > 1:
        build_options(settings)  # fail here, once, rather than in every worker
        run_workers(settings, workers)
    else:
        run(settings)


def self_signed_pair(hostname: str, cert_out: str | None) -> tuple[bytes, bytes]:
    """A new certificate and key in memory, announced loudly with its fingerprint; the certificate to ``cert_out``."""
    certificate, key = make_self_signed(hostname)
    if cert_out is not None:
        try:
            Path(cert_out).write_bytes(certificate)
        except OSError as error:
            raise click.ClickException(f"cannot write --self-signed-cert-out {cert_out}: {error.strerror}") from None
    trust = f"trust {cert_out}" if cert_out else "pin the fingerprint, or trust the file --self-signed-cert-out writes"
    log.warning(
        "using a self-signed certificate made just now, SHA-256 fingerprint %s. It is for development only:"
        " clients cannot verify it unless they %s.",
        _tls.fingerprint(certificate),
        trust,
    )
    return certificate, key


def load_users(auth_file: str) -> dict[str, smtpwire.ScramCredentials]:
    """The users for ``serve --auth-file``, with a warning for a file others may read or an empty one."""
    try:
        users = _authfile.load(auth_file)
    except _authfile.AuthFileError as error:
        raise click.ClickException(str(error)) from None
    warning = _authfile.loose_permissions(auth_file)
    if warning:
        log.warning("%s", warning)
    if not users:
        log.warning("%s has no users: every AUTH attempt will fail", auth_file)
    return users


def load_salt_key(auth_file: str, users: dict[str, smtpwire.ScramCredentials]) -> bytes:
    """The key of unknown users' SCRAM salts (``FILE.saltkey``), with a note when it was made or cannot be."""
    try:
        found = _authfile.salt_key(auth_file, users)
    except _authfile.AuthFileError as error:
        raise click.ClickException(str(error)) from None
    if found.note:
        log.log(logging.WARNING if found.warning else logging.INFO, "%s", found.note)
    return found.key


def _derive(iterations: int) -> Callable[[str], smtpwire.ScramCredentials]:
    def derive(password: str) -> smtpwire.ScramCredentials:
        try:
            return smtpwire.scram_credentials(password, iterations=iterations)
        except ValueError as error:  # the message never quotes the password
            raise click.BadParameter(f"unusable password: {error}") from None

    return derive


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("user")
@click.option(
    "--iterations",
    type=click.IntRange(min=_authfile.MIN_ITERATIONS, max=2**31 - 1),
    default=_authfile.MIN_ITERATIONS,
    show_default=True,
    help="PBKDF2 iterations (RFC 7677: at least 4096). More is slower for attackers, clients and the server alike.",
)
def passwd(file: str, user: str, iterations: int) -> None:
    """Add USER to the credentials FILE of 'serve --auth-file', or change their password.

    The password is asked twice, without echo (from a pipe: two lines).  The
    file holds SCRAM-SHA-256 keys (RFC 5803), never the password; it is
    rewritten atomically and created with mode 0600.

    \b
    Example:
      smtpwire passwd /etc/smtpwire/users alice
    """
    try:
        username = _authfile.prepare_username(user)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="USER") from None
    try:
        _authfile.load(file)  # a malformed file: say so before asking for a password
    except _authfile.AuthFileError as error:
        if os.path.lexists(file):
            raise click.ClickException(str(error)) from None
    credentials = click.prompt(
        "Password",
        hide_input=sys.stdin.isatty(),  # getpass reads the terminal, not a pipe; a pipe does not echo anyway
        confirmation_prompt=True,
        default="",  # an empty password is refused by derive(), not asked for again and again
        show_default=False,
        value_proc=_derive(iterations),
        err=True,
    )
    try:
        saved = _authfile.set_user(file, username, credentials)
    except _authfile.AuthFileError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot write {file}: {error.strerror or error}") from None
    click.echo(f"updated user {username} in {file}" if saved.replaced else f"added user {username} to {file}")
    if saved.previous_mode is not None and saved.previous_mode & 0o007:
        click.secho(
            f"WARNING: {file} was open to other users (mode {saved.previous_mode:04o}); it is now {saved.mode:04o}",
            fg="yellow",
            err=True,
        )
