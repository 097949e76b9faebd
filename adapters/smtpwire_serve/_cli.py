"""``smtpwire serve``: a real mail server storing into a Maildir, in one command."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import click
from click.core import ParameterSource

import smtpwire
import smtpwire_anyio
import smtpwire_asyncio
from smtpwire_handler import AsyncComposite, AsyncHandler, Envelope, Handler, Maildir, ServerOptions, Session
from smtpwire_handler._around import Around
from smtpwire_handler._group_commit import filesystem_sync_available
from smtpwire_handler.kit import DEFAULT_MODE

if TYPE_CHECKING:
    from smtpwire_handler._metrics import Metrics
    from smtpwire_handler.filters import MilterSpec, PolicyService

from . import _authfile, _authlimit, _observe, _recipients, _run, _tls, _workers
from ._devcert import make_self_signed
from ._launch import quiet_interrupt
from ._lmtp import LmtpMaildirHandler, Mailboxes
from ._logging import LOG_FORMATS, configure_logging
from ._params import DEFAULT_LISTEN, HostPortType, ListenType, networks, no_port_option, octal_mode
from ._reload import Reloader
from ._settings import FIELDS, Settings, build_options, options_for
from ._store import MaildirHandler, PrintingHandler, SinkHandler, log_accepted

log = logging.getLogger("smtpwire.serve")

#: Said once at start without --accept-domain and --recipients: fine for development, not for a real MX.
EVERYONE_ACCEPTED = "accepting mail for every recipient: give --accept-domain or --recipients on a real MX"
NEEDS_CERTIFICATE = "--tls-listen and --require-starttls need --tls-cert (or --self-signed)"
#: What ServerOptions refuses in a combination of options (how its message starts), in the command line's words.
REFUSED_COMBINATIONS = {
    "require_tls needs": NEEDS_CERTIFICATE,
    "implicit TLS listeners need": NEEDS_CERTIFICATE,
    "the Auth extension is offered only over TLS": (
        "--auth-file needs --tls-cert (or --self-signed): AUTH is offered only over TLS"
    ),
    "require_auth needs": "--require-auth needs --auth-file",
    "proxy_protocol_from works on plain listeners only": (
        "--proxy-protocol works with --listen only: a PROXY header cannot precede TLS"
    ),
}


def default_hostname() -> str:
    """This machine's name as the kernel has it (``hostname``): no DNS lookup, which could hang or say localhost."""
    name = socket.gethostname()
    return name if re.fullmatch(r"[A-Za-z0-9.-]{1,255}", name) else "localhost"


def refuse_conflicts(params: Mapping[str, Any]) -> None:
    """What the command line alone refuses: options that exclude or need one another (ServerOptions checks the rest)."""
    unix = any(isinstance(address, str) for address in params["listen"])
    rules = (
        (params["tls_cert"] and params["self_signed"], "give either --tls-cert or --self-signed, not both"),
        (params["tls_key"] and not params["tls_cert"], "--tls-key needs --tls-cert"),
        (params["self_signed_cert_out"] and not params["self_signed"], "--self-signed-cert-out needs --self-signed"),
        (params["backend"] == "trio" and params["loop"] != "auto", "--loop is for --backend asyncio"),
        (params["print_messages"] and params["sink"], "give either --print or --sink, not both"),
        (
            params["proxy_protocol"] and not params["trusted_proxies"],
            "--proxy-protocol needs --trusted-proxy CIDR: the networks that may send the header",
        ),
        (params["dns_resolvers"] and not params["verify"], "--dns-resolver is for --verify"),
        (params["verify"] and params["lmtp"], "--verify is for SMTP: an LMTP client is the MTA that already checked"),
        (
            (params["milters"] or params["policy_service"]) and params["lmtp"],
            "--milter and --policy-service are for SMTP: an LMTP client is the MTA that already filtered",
        ),
        (
            params["workers"] > 1 and unix,
            "--workers works with TCP listeners only: a unix:PATH socket is bound by one process",
        ),
    )
    for broken, message in rules:
        if broken:
            raise click.UsageError(message)


#: The options of --deliver-http (their parameter names), and those of its spool mode only.
DELIVERY_OPTIONS = (
    "deliver_mode",
    "deliver_secret_file",
    "deliver_spool",
    "deliver_retry_delay",
    "deliver_max_age",
    "deliver_timeout",
    "deliver_concurrency",
)
#: The choices of --maildir-sync.
MAILDIR_SYNCS = ("auto", "filesystem", "file")
SPOOL_OPTIONS = ("deliver_spool", "deliver_retry_delay", "deliver_max_age")


def refuse_delivery_conflicts(params: Mapping[str, Any]) -> None:
    """--deliver-http is the store: not with another (--maildir given, --sink, --print, --lmtp); its options need it."""
    ctx = click.get_current_context()
    given = {
        name for name in (*DELIVERY_OPTIONS, "maildir") if ctx.get_parameter_source(name) != ParameterSource.DEFAULT
    }
    if params["deliver_http"] is None:
        for name in DELIVERY_OPTIONS:
            if name in given:
                raise click.UsageError(f"{option_name(name)} is for --deliver-http")
        return
    for name in ("maildir", "sink", "print_messages", "lmtp"):
        if params[name] and (name in given or name != "maildir"):
            flag = "--print" if name == "print_messages" else option_name(name)
            raise click.UsageError(f"give either --deliver-http or {flag}, not both: --deliver-http delivers the mail")
    if params["deliver_mode"] == "sync" and given & set(SPOOL_OPTIONS):
        raise click.UsageError(
            "--deliver-spool, --deliver-retry-delay and --deliver-max-age are for --deliver-mode spool"
        )
    http_endpoint(params["deliver_http"], None, params["deliver_timeout"], params["deliver_concurrency"])  # the URL


def refuse_maildir_sync_conflicts(params: Mapping[str, Any]) -> None:
    """--maildir-sync is for serve's Maildir store; filesystem only where syncfs reports errors."""
    if click.get_current_context().get_parameter_source("maildir_sync") == ParameterSource.DEFAULT:
        return
    if params["lmtp"] or params["sink"] or params["print_messages"] or params["deliver_http"]:
        raise click.UsageError("--maildir-sync is for the Maildir store (not --lmtp, --sink, --print, --deliver-http)")
    if params["maildir_sync"] == "filesystem" and not filesystem_sync_available():
        raise click.UsageError("--maildir-sync filesystem needs Linux 5.8 or later (syncfs that reports errors)")


def syncs_file_system(settings: Settings) -> bool:
    """--maildir-sync resolved: a syncfs per batch (``filesystem``, or ``auto`` where syncfs reports errors)."""
    if settings.maildir_sync == "auto":
        return filesystem_sync_available()
    return settings.maildir_sync == "filesystem"


def option_name(parameter: str) -> str:
    return "--" + parameter.replace("_", "-")


def http_endpoint(url: str, secret: bytes | None, timeout: float, concurrency: int) -> Any:
    """The ``HttpEndpoint`` of --deliver-http; a bad URL is the option's error, a missing extra a one-line one."""
    try:
        from smtpwire_handler._http_delivery import HttpEndpoint
    except ModuleNotFoundError as error:
        raise click.ClickException(f"--deliver-http needs {error.name}: pip install 'smtpwire[http]'") from None
    try:
        return HttpEndpoint(url, secret, timeout=timeout, concurrency=concurrency)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--deliver-http") from None


def settings_from(params: Mapping[str, Any], file_limit: int) -> Settings:
    """``serve``'s parsed parameters as Settings, refused as ServerOptions would refuse them, before anything is loaded.

    A parameter named like a field is that field; those below are made from others.  Call it in the click context.
    """
    made = {
        "listen": params["listen"] or (DEFAULT_LISTEN,),
        "maildir": None if params["sink"] or params["print_messages"] or params["deliver_http"] else params["maildir"],
        "hostname": default_hostname() if params["hostname"] is None else params["hostname"],
        "max_sessions": _run.sessions_for(file_limit) if params["max_sessions"] is None else params["max_sessions"],
        "max_sessions_per_client": params["max_sessions_per_client"] or None,  # 0: no limit
        "verify": verify_methods(params),
        "accept_domains": accept_domains(params),
    }
    settings = Settings(**{name: value for name, value in params.items() if name in FIELDS} | made)
    if settings.milters:  # a bad --milter or --policy-service address is said now, once
        milter_specs(settings)
    if settings.policy_service is not None:
        policy_service(settings)
    tls = settings.tls_cert is not None or params["self_signed"]
    try:  # stand-ins for the TLS context and AUTH to come: that they will be there is what the rules ask
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if tls else None
        options = options_for(settings, context, smtpwire.Auth() if settings.auth_file is not None else None)
        options.check_listeners(settings.listen, settings.tls_listen)
    except ValueError as error:
        raise refusal(str(error)) from None
    return settings


def verify_methods(params: Mapping[str, Any]) -> tuple[str, ...]:
    """--verify's methods, in their usual order, and the policies' need of them, or a usage error.

    Without --verify the checks' package (and dkimpy, dnspython) is not even imported.
    """
    named = [name for value in params["verify"] for name in value.split(",")]
    methods: frozenset[str] = frozenset()
    if named:
        from smtpwire_verify import methods_from

        try:
            methods = methods_from(named)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--verify") from None
    for flag, method in (("--enforce-dmarc", "dmarc"), ("--reject-spf-fail", "spf")):
        if params[flag[2:].replace("-", "_")] and method not in methods:
            raise click.UsageError(f"{flag} needs --verify {method} (or --verify all)")
    authserv_id = params["authserv_id"]
    if authserv_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,254}", authserv_id):
        raise click.BadParameter(
            f"{authserv_id!r} is not a host name (letters, digits, dots and hyphens)", param_hint="--authserv-id"
        )
    if not methods:
        return ()
    from smtpwire_verify import METHODS

    return tuple(method for method in METHODS if method in methods)


def accept_domains(params: Mapping[str, Any]) -> tuple[str, ...]:
    """--accept-domain's domains as they are compared (lower-cased A-labels), or a usage error naming the bad one."""
    try:
        return tuple(sorted(_recipients.table_of_domains(params["accept_domains"]).domains))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--accept-domain") from None


def refusal(message: str) -> click.UsageError:
    """ServerOptions' refusal in the command line's words: the combination of options, or the option of the value."""
    for start, words in REFUSED_COMBINATIONS.items():
        if message.startswith(start):
            return click.UsageError(words)
    ctx = click.get_current_context()
    field = message.partition(" ")[0]  # ServerOptions and ServerConfig name the field first
    return click.BadParameter(message, ctx, next((param for param in ctx.command.params if param.name == field), None))


def load_once(settings: Settings, params: Mapping[str, Any]) -> Settings:
    """What the parent reads or makes once for all workers: the auth file's users and salt key, the self-signed pair."""
    users = load_users(settings.auth_file) if settings.auth_file is not None else {}
    return dataclasses.replace(
        settings,
        users=tuple(users.items()),
        salt_key=load_salt_key(settings.auth_file, users) if settings.auth_file is not None else None,
        self_signed_pem=(
            self_signed_pair(settings.hostname, params["self_signed_cert_out"]) if params["self_signed"] else None
        ),
        recipient_table=load_recipients(settings.recipients_file) if settings.recipients_file is not None else None,
        deliver_secret=load_secret(settings.deliver_secret_file) if settings.deliver_secret_file is not None else None,
    )


def load_secret(path: str) -> bytes:
    """The --deliver-secret-file's key, or the error naming the file."""
    from smtpwire_handler._http_delivery import load_webhook_secret

    try:
        return load_webhook_secret(path)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot use --deliver-secret-file {path}: {error}") from None


def load_recipients(path: str) -> _recipients.RecipientTable:
    """The entries of ``serve --recipients``, or the error naming the file and line; a warning for an empty file."""
    try:
        table = _recipients.load(path)
    except _recipients.RecipientsFileError as error:
        raise click.ClickException(str(error)) from None
    if not table:
        log.warning("%s has no entries: it accepts nobody until SIGHUP reloads it", path)
    return table


def recipients_of(settings: Settings) -> _recipients.Recipients | None:
    """Who serve accepts mail for; ``None``, without --accept-domain and --recipients: everyone."""
    if not settings.accept_domains and settings.recipients_file is None:
        return None
    fixed = _recipients.RecipientTable(frozenset(settings.accept_domains))
    return _recipients.Recipients(fixed, settings.recipient_table)


def build_handler(settings: Settings, recipients: _recipients.Recipients | None = None) -> AsyncHandler:
    """serve's handler for ``settings``; with ``recipients``, RCPT answers for them (``550 5.1.1`` for others)."""
    accounts = None
    if settings.auth_file is not None:
        limits = (settings.auth_failure_limit, settings.auth_failure_window, settings.auth_failure_delay)
        accounts = _authfile.Accounts(dict(settings.users), budget=_authlimit.FailureBudget(*limits))
    if settings.deliver_http is not None:
        return checked(settings, HttpDeliveryHandler(settings, accounts, recipients))
    if settings.print_messages:
        return checked(settings, PrintingHandler(accounts, recipients))
    if settings.maildir is None:
        return checked(settings, SinkHandler(accounts, recipients))
    try:
        if settings.lmtp:
            return LmtpMaildirHandler(Mailboxes(settings.maildir), settings.hostname, accounts, recipients)
        maildir = Maildir(settings.maildir)
        store = MaildirHandler(maildir, settings.hostname, accounts, recipients, syncs_file_system(settings))
        return checked(settings, store)
    except OSError as error:
        raise click.ClickException(f"cannot use the Maildir {settings.maildir}: {error}") from None


class HttpDeliveryHandler(_authfile.AuthFileHandler, AsyncComposite):
    """--deliver-http: the AUTH file's hooks, the recipients check, and the HTTP store of --deliver-mode.

    ``run_delivery`` runs beside the server while it serves: in spool mode it
    posts what the spool holds (``SpoolDelivery``, which every worker runs on
    the one spool, each message claimed by a lock while it is posted); in
    either mode it closes the HTTP client at the end.
    """

    def __init__(
        self, settings: Settings, accounts: _authfile.Accounts | None, recipients: _recipients.Recipients | None
    ) -> None:
        from smtpwire_handler._http_delivery import HttpPoster
        from smtpwire_handler._spool import Spool, SpoolDelivery

        self.accounts = accounts
        url, secret = str(settings.deliver_http), settings.deliver_secret
        self.poster = HttpPoster(http_endpoint(url, secret, settings.deliver_timeout, settings.deliver_concurrency))
        self.delivery: SpoolDelivery | None = None
        store: AsyncHandler = logged_http_store(self.poster)
        if settings.deliver_mode == "spool":
            try:
                spool = Spool(settings.deliver_spool)
            except OSError as error:
                raise click.ClickException(f"cannot use the spool {settings.deliver_spool}: {error}") from None
            store = logged_spool_store(spool)
            self.delivery = SpoolDelivery(
                spool,
                self.poster,
                retry_delay=settings.deliver_retry_delay,
                max_age=settings.deliver_max_age,
                concurrency=settings.deliver_concurrency,
            )
        super().__init__(store, *_recipients.recipient_parts(recipients))

    def observe(self, metrics: Metrics, *, gauges: bool) -> None:
        """Count each delivery attempt by outcome; with ``gauges`` (one process serving scrapes), the spool's
        depth and its oldest message's age too (under workers, each worker's spool view would not sum)."""
        attempts = metrics.counter("smtpwire_delivery_attempts", "HTTP delivery attempts by outcome", ["outcome"])
        for outcome in ("delivered", "temporary", "permanent"):
            attempts.labels(outcome)
        self.poster.observe(lambda result: attempts.labels(result.outcome).inc())
        if gauges and self.delivery is not None:
            metrics.gauge_callback("smtpwire_spool_depth", "Messages in the spool's queue", self.delivery.depth)
            metrics.gauge_callback(
                "smtpwire_spool_oldest_age_seconds", "Age of the oldest queued message", self.delivery.oldest_age
            )

    async def run_delivery(self) -> None:
        """Until cancelled: the spool's deliveries (spool mode) or nothing; then the HTTP client is closed."""
        try:
            if self.delivery is not None:
                await self.delivery.run()
            else:
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.poster.aclose()


def logged_http_store(poster: Any) -> AsyncHandler:
    """An ``AsyncHttpStore`` (--deliver-mode sync) saying each delivered message in serve's log line."""
    from smtpwire_handler._http_store import AsyncHttpStore

    class LoggedHttpStore(AsyncHttpStore):
        def delivered(self, session: Session, envelope: Envelope, message_id: str, result: Any) -> None:
            log_accepted(session, envelope, envelope.size, f"delivered={message_id}")

    return LoggedHttpStore(poster)


def logged_spool_store(spool: Any) -> AsyncHandler:
    """An ``AsyncSpoolStore`` saying each spooled message in serve's log line."""
    from smtpwire_handler._spool import AsyncSpoolStore, Entry

    class LoggedSpoolStore(AsyncSpoolStore):
        def spooled(self, session: Session, envelope: Envelope, entry: Entry) -> None:
            log_accepted(session, envelope, envelope.size, f"spooled={entry.id}")

    return LoggedSpoolStore(spool)


def checked(settings: Settings, handler: AsyncHandler) -> AsyncHandler:
    """``handler`` behind what the options put around it, outermost first: the policy server (at RCPT),
    sender authentication (so milters see its Authentication-Results), the milters; as it is without them."""
    if settings.milters:
        from smtpwire_handler.filters import AsyncMilterHandler  # imported only when used, as the checks below

        handler = AsyncMilterHandler(handler, milter_specs(settings), hostname=settings.hostname)
    if settings.verify:
        handler = verified(settings, handler)
    if settings.policy_service is not None:
        from smtpwire_handler.filters import AsyncPolicyHandler

        handler = AsyncPolicyHandler(handler, policy_service(settings))
    return handler


def milter_specs(settings: Settings) -> list[MilterSpec]:
    """One ``MilterSpec`` per --milter, in order; a bad address is the option's error."""
    from smtpwire_handler.filters import MilterSpec

    timeout = settings.milter_timeout
    try:
        return [
            MilterSpec(address, timeout, timeout, max(timeout, 300.0), settings.milter_default_action)  # type: ignore[arg-type]
            for address in settings.milters
        ]
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--milter") from None


def policy_service(settings: Settings) -> PolicyService:
    from smtpwire_handler.filters import PolicyService

    try:
        return PolicyService(str(settings.policy_service))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--policy-service") from None


def verified(settings: Settings, handler: AsyncHandler) -> AsyncHandler:
    """``handler`` behind sender authentication (--verify)."""
    from smtpwire_handler.authentication import AsyncResolver, AsyncSenderAuthentication, Verification

    try:
        resolver = AsyncResolver(settings.dns_resolvers)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--dns-resolver") from None
    except OSError as error:
        raise click.ClickException(f"cannot read the system's DNS resolvers: {error}") from None
    verification = Verification(
        methods=frozenset(settings.verify),
        authserv_id=settings.authserv_id or settings.hostname,
        enforce_dmarc=settings.enforce_dmarc,
        reject_spf_fail=settings.reject_spf_fail,
    )
    return AsyncSenderAuthentication(handler, resolver, verification)


def about(settings: Settings, worker: tuple[int, int] | None = None) -> str:
    """The start-up line's protocol, store and ``(number, of)`` worker: what a user needs to know mail goes where."""
    if settings.deliver_http is not None:
        store = f"deliver http {settings.deliver_http} ({settings.deliver_mode}"
        store += f", spool {settings.deliver_spool})" if settings.deliver_mode == "spool" else ")"
    elif settings.print_messages:
        store = "store print (standard output)"
    elif settings.maildir is None:
        store = "store sink (discards)"
    else:
        path = settings.maildir
        shown = path if os.path.isabs(path) or path.startswith(".") else os.path.join(".", path)
        store = f"store {'lmtp root' if settings.lmtp else 'maildir'} {shown}"
        if not settings.lmtp:
            store += ", syncfs per batch" if syncs_file_system(settings) else ", fsync per file"
    said = f"{'LMTP' if settings.lmtp else 'SMTP'}; {store}"
    if settings.verify:
        said += f"; verify {','.join(settings.verify)}" + ("; enforce DMARC" if settings.enforce_dmarc else "")
    if settings.milters:
        said += f"; milters {' '.join(settings.milters)} (down: {settings.milter_default_action})"
    if settings.policy_service is not None:
        said += f"; policy {settings.policy_service}"
    return said if worker is None else f"{said}; worker {worker[0]} of {worker[1]}"


def run(settings: Settings, reuse_port: bool = False, worker: tuple[int, int] | None = None) -> None:
    """One server process, on asyncio's Protocol server (uvloop when installed) or, for trio, the anyio adapter.

    ``worker`` is its number and how many there are, when there are several.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop reloads on it: never a death at start-up
    configure_logging(settings.verbose, settings.log_format)
    recipients = recipients_of(settings)
    options, handler = build_options(settings), build_handler(settings, recipients)
    metrics = None
    if settings.metrics_listen is not None:  # each worker counts; the parent of workers serves the sum
        from smtpwire_handler._metrics import Metrics

        metrics = Metrics()
        options = dataclasses.replace(options, metrics=metrics)
    if settings.auth_file is not None:
        log.info("AUTH for %d user(s) of %s", len(settings.users), settings.auth_file)
    if recipients is None and (worker is None or worker[0] == 1):  # once, after what may stop serve with an error
        log.warning("%s", EVERYONE_ACCEPTED)
    store: Handler | AsyncHandler = handler
    while isinstance(store, Around):  # behind the milters, sender authentication, the policy server
        store = store.store
    accounts = store.accounts if isinstance(store, _authfile.AuthFileHandler) else None
    background = store.run_delivery if isinstance(store, HttpDeliveryHandler) else None  # posts what the spool holds
    if metrics is not None and isinstance(store, HttpDeliveryHandler):
        store.observe(metrics, gauges=worker is None)
    swapped = options if settings.tls_cert else None  # whose TLS context SIGHUP replaces; --self-signed has no file
    reload = Reloader(
        swapped, settings.tls_cert, settings.tls_key, accounts, settings.auth_file, recipients, settings.recipients_file
    )
    listen, tls_listen, mode = settings.listen, settings.tls_listen, settings.socket_mode
    health = readiness(settings)
    registry = metrics.registry if metrics is not None and worker is None else None  # workers: the parent serves
    endpoint = _observe.start(settings.metrics_listen, registry, health)
    try:
        if settings.backend == "trio":
            server = smtpwire_anyio.Server(
                handler, options, listen=listen, tls_listen=tls_listen, reuse_port=reuse_port, unix_mode=mode
            )
            health.watch(server)
            anyio.run(_run.serve_anyio, server, reload, about(settings, worker), background, backend="trio")
        else:
            protocols = smtpwire_asyncio.Server(
                handler, options, listen=listen, tls_listen=tls_listen, reuse_port=reuse_port, unix_mode=mode
            )
            health.watch(protocols)
            serving = _run.serve_asyncio(protocols, reload, about(settings, worker), background)
            smtpwire_asyncio.run(serving, loop=settings.loop)
    except OSError as error:
        raise click.ClickException(str(error)) from None
    except BaseExceptionGroup as group:
        matched, _ = group.split(OSError)
        if matched is None:
            raise
        raise click.ClickException(str(matched.exceptions[0])) from None
    finally:
        if endpoint is not None:
            endpoint.close()


def readiness(settings: Settings) -> _observe.Health:
    """What /readyz checks: the Maildir writable; in spool mode, the spool within --deliver-spool-limit."""
    spooled = settings.deliver_http is not None and settings.deliver_mode == "spool"
    spool = settings.deliver_spool if spooled else None
    return _observe.health_for(settings.maildir, settings.lmtp, spool, settings.deliver_spool_limit)


def run_worker(settings: Settings, worker: tuple[int, int], ready: Connection) -> None:
    """One worker of ``run_workers``; ``ready`` hears from it once it serves."""
    quiet_interrupt()
    _workers.report_serving(ready)
    try:
        run(settings, reuse_port=True, worker=worker)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)


def run_workers(settings: Settings, workers: int) -> None:
    """Several processes on the same ports (SO_REUSEPORT), each replaced when it dies; signals are passed on.

    Exits with status 1 when a worker could not start (see ``_workers``).
    """
    observed = _observe.WorkersEndpoint.start(settings.metrics_listen, readiness(settings))
    supervisor = _workers.Supervisor(run_worker, (settings,), workers)
    if observed is not None:

        def stopping() -> None:
            observed.health.stopping = True

        supervisor.on_stopping, supervisor.on_ended = stopping, observed.worker_gone
    if supervisor.run():
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
@click.option("--port", hidden=True, expose_value=False, callback=no_port_option, is_eager=True)
@click.option(
    "--socket-mode",
    metavar="MODE",
    default=f"{DEFAULT_MODE:04o}",
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
@click.option(
    "--maildir-sync",
    type=click.Choice(MAILDIR_SYNCS),
    default="auto",
    show_default=True,
    help="How each batch of messages is made durable before its 250s: one syncfs of the Maildir's file system"
    " (filesystem; auto on Linux 5.8+, where it reports errors), or an fsync per file (file; for a file system"
    " shared with other busy writers). Not with --lmtp.",
)
@click.option("--sink", is_flag=True, help="Accept and discard every message (for testing clients and benchmarks).")
@click.option(
    "--print",
    "print_messages",
    is_flag=True,
    help="Print each message to standard output instead of storing it (like python -m aiosmtpd's debugging mode).",
)
@click.option(
    "--deliver-http",
    metavar="URL",
    help="POST each message to this URL (JSON: envelope, session, the raw message) instead of storing it in a"
    " Maildir. Not with --maildir, --sink, --print or --lmtp.",
)
@click.option(
    "--deliver-mode",
    type=click.Choice(["spool", "sync"]),
    default="spool",
    show_default=True,
    help="spool: 250 once the message is fsynced in --deliver-spool, then posted with retries; sync: 250 only"
    " after the endpoint answered 2xx.",
)
@click.option(
    "--deliver-secret-file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Sign each request per Standard Webhooks with the secret in FILE (whsec_ and base64). Read at start.",
)
@click.option(
    "--deliver-spool",
    type=click.Path(file_okay=False),
    metavar="DIR",
    default="spool",
    show_default=True,
    help="The spool of --deliver-mode spool: ./spool in the working directory unless given; created 0700 if"
    " missing. Undeliverable messages land in its dead/ with the last answer. --workers share it.",
)
@click.option(
    "--deliver-retry-delay",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=30.0,
    show_default=True,
    help="The first retry after a temporary failure (5xx, 429, timeout); then up to twice as long each time"
    " (randomly, at most an hour).",
)
@click.option(
    "--deliver-max-age",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=3 * 86400.0,
    show_default=True,
    help="A message undelivered this long after it arrived (default: 3 days) goes to the spool's dead/.",
)
@click.option(
    "--deliver-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=30.0,
    show_default=True,
    help="One POST, from connecting to the endpoint's answer.",
)
@click.option(
    "--deliver-concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=10,
    show_default=True,
    help="POSTs under way at once, per worker process.",
)
@click.option(
    "--deliver-spool-limit",
    type=click.IntRange(min=1),
    metavar="N",
    default=10_000,
    show_default=True,
    help="With --metrics: /readyz answers 503 while the spool holds more messages than this.",
)
@click.option(
    "--accept-domain",
    "accept_domains",
    metavar="DOMAIN",
    multiple=True,
    help="Accept mail for every address of DOMAIN (repeatable); other recipients get 550 5.1.1 at RCPT, unless"
    " --recipients lists them. Without either, every recipient is accepted.",
)
@click.option(
    "--recipients",
    "recipients_file",
    type=click.Path(dir_okay=False, readable=False),  # checked by _recipients.load, at start and on SIGHUP alike
    metavar="FILE",
    help="Accept mail for the addresses and @domains of FILE (one a line, # comments); others get 550 5.1.1 at"
    " RCPT. Domains compared without case and as A-labels, local parts without case. Reloaded on SIGHUP.",
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
    help="Answer every command but EHLO, STARTTLS, NOOP and QUIT with 530 5.7.0 until STARTTLS.",
)
@click.option(
    "--max-message-size",
    type=int,
    default=smtpwire.ServerConfig.max_message_size,
    show_default=True,
    help="Largest message in bytes (advertised with SIZE).",
)
@click.option(
    "--max-recipients",
    type=int,
    default=smtpwire.ServerConfig.max_recipients,
    show_default=True,
    help="Recipients per message.",
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
    type=int,
    help="Open sessions per process; one more is told 421 4.7.0 and closed."
    f" Default: what the open-file limit allows (2 descriptors a session), at most {_run.MAX_DEFAULT_SESSIONS:,}.",
)
@click.option(
    "--max-sessions-per-client",
    type=click.IntRange(min=0),
    default=ServerOptions.max_sessions_per_client,
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
    type=int,
    default=smtpwire.ServerConfig.max_auth_failures,
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
    "--xclient-from",
    metavar="CIDR",
    multiple=True,
    callback=networks,
    help="A network whose clients may use Postfix's XCLIENT (repeatable): a proxy such as nginx's names the real"
    " client, which the session, its log and the Received header then report. Others get 550 5.7.0.",
)
@click.option(
    "--xforward-from",
    metavar="CIDR",
    multiple=True,
    callback=networks,
    help="A network whose clients may use Postfix's XFORWARD (repeatable): a filter names the client of the next"
    " message, for the log. Others get 550 5.7.0.",
)
@click.option(
    "--milter",
    "milters",
    metavar="inet:HOST:PORT|unix:PATH",
    multiple=True,
    help="A milter (rspamd, OpenDKIM, ClamAV...) each message goes through, as Postfix's smtpd_milters: repeatable,"
    " in order.",
)
@click.option(
    "--milter-default-action",
    type=click.Choice(["tempfail", "accept", "reject"]),
    default="tempfail",
    show_default=True,
    help="What a milter that is down, times out or breaks means for the session (Postfix's milter_default_action).",
)
@click.option(
    "--milter-timeout",
    type=float,
    metavar="SECONDS",
    default=30.0,
    show_default=True,
    help="A milter's connect and each of its replies; the end of the message waits at least 300 s.",
)
@click.option(
    "--policy-service",
    metavar="inet:HOST:PORT|unix:PATH",
    help="A Postfix policy server (postgrey, policyd-spf...) asked at RCPT; down or silent: 451 4.3.5.",
)
@click.option(
    "--metrics",
    "metrics_listen",
    type=HostPortType(),
    help="Serve Prometheus /metrics, /livez and /readyz (503 while shutting down or the Maildir is not"
    " writable) on this HTTP address; under --workers, summed over the workers. Needs prometheus-client.",
)
@click.option(
    "--command-timeout",
    type=float,
    metavar="SECONDS",
    default=ServerOptions.command_timeout,
    show_default=True,
    help="A whole command line (or AUTH exchange) must arrive within this; then 421 4.4.2.",
)
@click.option(
    "--data-timeout",
    type=float,
    metavar="SECONDS",
    default=ServerOptions.data_timeout,
    show_default=True,
    help="Message data: the deadline each read extends (at --min-data-rate), never further ahead than this.",
)
@click.option(
    "--tls-handshake-timeout",
    type=float,
    metavar="SECONDS",
    default=ServerOptions.tls_handshake_timeout,
    show_default=True,
    help="A TLS handshake (STARTTLS or --tls-listen) must finish within this.",
)
@click.option(
    "--proxy-timeout",
    type=float,
    metavar="SECONDS",
    default=ServerOptions.proxy_timeout,
    show_default=True,
    help="With --proxy-protocol: the PROXY header must arrive within this.",
)
@click.option(
    "--shutdown-grace",
    type=float,
    metavar="SECONDS",
    default=ServerOptions.shutdown_grace,
    show_default=True,
    help="On SIGTERM or SIGINT, open transactions may finish within this; then every connection is closed.",
)
@click.option(
    "--min-data-rate",
    type=float,
    metavar="OCTETS",
    default=ServerOptions.min_data_rate,
    show_default=True,
    help="Octets a second of message data that keep extending its deadline (Postfix's smtpd_min_data_rate).",
)
@click.option(
    "--max-errors",
    type=int,
    metavar="N",
    default=smtpwire.ServerConfig.max_errors,
    show_default=True,
    help="Refused commands (5xx) in a session before it ends with 421 4.7.0.",
)
@click.option(
    "--verify",
    metavar="METHODS",
    multiple=True,
    help="Check who really sent each message and write Authentication-Results: spf, dkim, dmarc, arc (comma"
    " separated, repeatable) or all. DMARC brings SPF and DKIM along. Without it, serve makes no DNS query.",
)
@click.option(
    "--dns-resolver",
    "dns_resolvers",
    metavar="HOST[:PORT]",
    multiple=True,
    help="With --verify: the DNS resolver to ask (repeatable; default: the system's, from /etc/resolv.conf).",
)
@click.option(
    "--authserv-id",
    metavar="NAME",
    help="The name this server's Authentication-Results fields carry (default: --hostname).",
)
@click.option(
    "--enforce-dmarc",
    is_flag=True,
    help="With --verify dmarc: refuse a message whose From domain's policy is reject (550 5.7.1), file one"
    " under quarantine into the Maildir's .Junk folder.",
)
@click.option(
    "--reject-spf-fail",
    is_flag=True,
    help="With --verify spf: refuse MAIL when SPF fails (550 5.7.23).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="text: one line per record; json: one JSON object per line (time, level, logger, session, message).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log a transcript of every session (AUTH exchanges withheld).")
def serve(**params: Any) -> None:
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
    refuse_conflicts(params)
    refuse_delivery_conflicts(params)
    refuse_maildir_sync_conflicts(params)
    file_limit = _run.raise_file_limit()
    settings = settings_from(params, file_limit)
    configure_logging(settings.verbose, settings.log_format)  # start-up warnings in the format of the rest of the log
    if settings.max_sessions > _run.sessions_for(file_limit):
        log.warning(
            "--max-sessions %d may run out of descriptors (the open-file limit is %d)",
            settings.max_sessions,
            file_limit,
        )
    settings = load_once(settings, params)
    if params["workers"] > 1:
        build_options(settings)  # fail here, once, rather than in every worker
        run_workers(settings, params["workers"])
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


def ask_password(derive: Callable[[str], smtpwire.ScramCredentials]) -> smtpwire.ScramCredentials:
    """The password, typed twice; from a pipe that ends too soon, a one-line error rather than click's ``Aborted!``."""
    terminal = sys.stdin.isatty()
    try:
        # object, then checked: click's prompt() is typed Any in some releases and precisely in others
        credentials: object = click.prompt(
            "Password",
            hide_input=terminal,  # getpass reads the terminal, not a pipe; a pipe does not echo anyway
            confirmation_prompt=True,
            default="",  # an empty password is refused by derive(), not asked for again and again
            show_default=False,
            value_proc=derive,
            err=True,
        )
    except click.Abort:
        if terminal:  # Ctrl-C or Ctrl-D at the prompt: the user's own choice
            raise
        click.echo(err=True)  # the prompts' line, which the pipe never ended
        raise click.ClickException(
            "the password is expected twice, the same both times (from a pipe: two lines)"
        ) from None
    assert isinstance(credentials, smtpwire.ScramCredentials)  # what value_proc=derive returns
    return credentials


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
    credentials = ask_password(_derive(iterations))
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
