"""Prometheus metrics of a server's sessions, observed by the session driver (``ServerOptions.metrics``).

prometheus-client is imported when a ``Metrics`` is made, so ``smtpwire_handler``
runs without it.  Every label value is one of a fixed set named here (verbs,
reply classes, reasons, results, hooks, mechanisms), never a client's text: a
client cannot grow the number of series.  Every series exists from the start
(at 0), so a scrape always shows the whole label set.

Under prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set
before the process first imports it), the values go to files the serving
process sums; open sessions are a ``livesum`` gauge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import smtpwire
from smtpwire import Reply

from ._driver import HOOK_NAMES

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import Metric

log = logging.getLogger("smtpwire.metrics")

#: The ``verb`` label: the core's verbs, XCLIENT and XFORWARD; any other command counts as OTHER.
VERBS = (
    "HELO",
    "EHLO",
    "LHLO",
    "MAIL",
    "RCPT",
    "DATA",
    "BDAT",
    "RSET",
    "NOOP",
    "VRFY",
    "HELP",
    "QUIT",
    "STARTTLS",
    "AUTH",
    "XCLIENT",
    "XFORWARD",
    "OTHER",
)
#: The ``class`` label of a reply.
REPLY_CLASSES = ("2xx", "3xx", "4xx", "5xx")
#: Why a session was refused: over ``max_sessions``, over ``max_sessions_per_client``, while shutting down,
#: or by the ``connect`` hook (a 4xx or 5xx greeting).
SESSION_REFUSALS = ("too_many", "per_client", "shutting_down", "greeting")
#: Why a message was refused at its end: the handler's 5xx or 4xx, over the size limit, bare CR or LF.
MESSAGE_REFUSALS = ("refused", "deferred", "too_big", "malformed")
#: The ``mechanism`` label of AUTH: the mechanisms the core knows, and OTHER.
MECHANISMS = (*smtpwire.KNOWN_MECHANISMS, "OTHER")
#: The ``hook`` label: the handler's hooks.
HOOKS = HOOK_NAMES
#: Hook latencies span a cached answer (microseconds) to a milter or DNS timeout (tens of seconds).
HOOK_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
#: How workers' values of a gauge add up (prometheus-client's multiprocess modes).
MultiprocessMode = Literal[
    "all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent"
]
#: Names this class registers start with it; so must what ``counter``, ``gauge`` and the others add.
PREFIX = "smtpwire_"


class Metrics:
    """The counters of every session of a server: give it as ``ServerOptions(metrics=Metrics())``.

    ``registry`` is where they are registered (a new one by default): serve
    it with ``prometheus_client.generate_latest(metrics.registry)``.  More
    metrics of the application (store latency, delivery attempts, a spool's
    depth) join the same registry with ``counter``, ``gauge``, ``histogram``
    and ``gauge_callback``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        import prometheus_client as prom

        self.registry = prom.CollectorRegistry() if registry is None else registry
        self.sessions_open = self.gauge("smtpwire_sessions_open", "Sessions open now.")
        self.sessions = self.counter("smtpwire_sessions", "Sessions opened (admitted connections).")
        refused = self.counter("smtpwire_sessions_refused", "Connections refused, by reason.", ("reason",))
        tls = self.counter("smtpwire_tls_handshakes", "TLS handshakes, by result (ok, failed).", ("result",))
        commands = self.counter("smtpwire_commands", "Commands answered, by verb and reply class.", ("verb", "class"))
        self.messages_accepted = self.counter(
            "smtpwire_messages_accepted", "Messages accepted (250 at their end; in LMTP, per recipient)."
        )
        messages_refused = self.counter("smtpwire_messages_refused", "Messages refused at their end.", ("reason",))
        self.octets = self.counter("smtpwire_message_octets_received", "Message octets received (dot-unstuffed).")
        auth = self.counter("smtpwire_auth", "AUTH attempts, by mechanism and result.", ("mechanism", "result"))
        hooks = self.histogram("smtpwire_hook_duration_seconds", "Handler hook latency.", ("hook",), HOOK_BUCKETS)
        self.refused = {reason: refused.labels(reason) for reason in SESSION_REFUSALS}
        self.tls = {ok: tls.labels("ok" if ok else "failed") for ok in (True, False)}
        self.commands = {(v, c): commands.labels(v, c) for v in VERBS for c in REPLY_CLASSES}
        self.messages_refused = {reason: messages_refused.labels(reason) for reason in MESSAGE_REFUSALS}
        self.auth = {
            (m, ok): auth.labels(m, "success" if ok else "failure") for m in MECHANISMS for ok in (True, False)
        }
        self.hooks = {hook: hooks.labels(hook) for hook in HOOKS}

    def session(self, *, lmtp: bool = False) -> SessionMetrics:
        """A new session's observer (the driver makes one per session): counted open until ``closed()``."""
        return SessionMetrics(self, lmtp)

    def session_refused(self, reason: str) -> None:
        """A connection refused before it became a session; ``reason`` is one of ``SESSION_REFUSALS``."""
        self.refused[reason].inc()

    # -- the application's own metrics, in the same registry --------------------------------------

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """A counter named ``smtpwire_...`` (exposed with ``_total``)."""
        from prometheus_client import Counter

        return Counter(_checked(name), documentation, labelnames, registry=self.registry)

    def gauge(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        multiprocess_mode: MultiprocessMode = "livesum",
    ) -> Gauge:
        """A gauge named ``smtpwire_...``; ``multiprocess_mode`` says how workers' values add up (prometheus-client)."""
        from prometheus_client import Gauge

        return Gauge(
            _checked(name), documentation, labelnames, registry=self.registry, multiprocess_mode=multiprocess_mode
        )

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = HOOK_BUCKETS
    ) -> Histogram:
        """A histogram named ``smtpwire_..._seconds`` (or another unit)."""
        from prometheus_client import Histogram

        return Histogram(_checked(name), documentation, labelnames, registry=self.registry, buckets=buckets)

    def gauge_callback(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value ``read()`` gives at each scrape (a spool's depth, its oldest message's age).

        It is read in the process that serves the scrape: under workers, add it
        to the serving process's registry with ``register_gauge_callback``.
        """
        register_gauge_callback(self.registry, name, documentation, read)


def register_gauge_callback(
    registry: CollectorRegistry, name: str, documentation: str, read: Callable[[], float]
) -> None:
    """A gauge in ``registry`` whose value ``read()`` gives at each scrape; one that raises is left out, logged."""
    registry.register(_CallbackGauge(_checked(name), documentation, read))


class _CallbackGauge:
    """A prometheus-client collector of one gauge read at scrape time."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def describe(self) -> list[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            value = float(self.read())
        except Exception:
            log.warning("metric %s: reading it failed, left out of this scrape", self.name, exc_info=True)
            return
        yield GaugeMetricFamily(self.name, self.documentation, value=value)


def _checked(name: str) -> str:
    if not name.startswith(PREFIX):
        raise ValueError(f"metric names start with {PREFIX!r}: {name!r}")
    return name


class SessionMetrics:
    """One session's observer: the driver tells it what happened, it counts (in ``Metrics``' fixed series)."""

    __slots__ = ("_lmtp", "_lookup", "_metrics", "_open")

    def __init__(self, metrics: Metrics, lmtp: bool) -> None:
        self._metrics = metrics
        self._lmtp = lmtp
        self._lookup: str | None = None  # the mechanism of a CredentialsLookup whose outcome the core tells
        self._open = True
        metrics.sessions.inc()
        metrics.sessions_open.inc()

    def saw(self, event: smtpwire.Event) -> None:
        """An event of the core: those answered by the core itself are counted here, decisions in ``answered``."""
        seen = _SEEN.get(type(event))
        if seen is not None:
            seen(self, event)

    def answered(self, event: smtpwire.Decision, reply: Reply | None) -> None:
        """A decision was answered with ``reply`` (``None``: accepted with the core's default)."""
        kind = type(event)
        metrics = self._metrics
        if kind is smtpwire.EndOfMessage:
            self._message_answered(reply)
        elif kind is smtpwire.ConnectionOpened:
            if reply is not None and reply.code >= 400:
                metrics.refused["greeting"].inc()
        elif kind is smtpwire.AuthCredentials or kind is smtpwire.CredentialsLookup:
            self._auth_answered(event, reply)  # type: ignore[arg-type]  # one of the two, by the test
        else:
            klass = _class_of(reply) if reply is not None else _accepted_class(event)
            metrics.commands[self._verb_of(event), klass].inc()

    def tls(self, ok: bool) -> None:
        """A TLS handshake ended."""
        self._metrics.tls[ok].inc()

    @staticmethod
    def hook_started() -> float:
        """When a hook is called: give it back to ``hook_ended``."""
        return time.perf_counter()

    def hook_ended(self, hook: str, started: float) -> None:
        """The hook returned or raised (an ``async def`` hook: once its awaitable is done)."""
        self._metrics.hooks[hook].observe(time.perf_counter() - started)

    def closed(self) -> None:
        """The session ended (said once; any later call changes nothing)."""
        if self._open:
            self._open = False
            self._metrics.sessions_open.dec()

    # -- what each event counts ----------------------------------------------------------------

    def _verb_of(self, event: smtpwire.Decision) -> str:
        kind = type(event)
        if kind is smtpwire.Ehlo:
            return "LHLO" if self._lmtp else "EHLO"
        if kind is smtpwire.DataRequested:
            return "BDAT" if event.chunked else "DATA"  # type: ignore[attr-defined]  # a DataRequested
        if kind is smtpwire.ExtensionCommand:
            return _known_verb(event.verb)  # type: ignore[attr-defined]  # an ExtensionCommand
        return _DECISION_VERBS.get(kind, "OTHER")

    def _message_answered(self, reply: Reply | None) -> None:
        if reply is None or reply.code < 400:
            self._metrics.messages_accepted.inc()
        else:
            self._metrics.messages_refused["deferred" if reply.code < 500 else "refused"].inc()

    def _auth_answered(self, event: smtpwire.AuthCredentials | smtpwire.CredentialsLookup, reply: Reply | None) -> None:
        """A password check refused, or a lookup answered with an error; a success is counted at ``Authenticated``."""
        self._lookup = None
        if reply is None or reply.code < 400:
            return
        self._metrics.commands["AUTH", _class_of(reply)].inc()
        self._metrics.auth[_known_mechanism(event.mechanism), False].inc()

    def _message_data(self, event: smtpwire.MessageData) -> None:
        self._metrics.octets.inc(len(event.data))

    def _command_rejected(self, event: smtpwire.CommandRejected) -> None:
        verb = _known_verb(event.command)
        self._metrics.commands[verb, _class_of(event.reply)].inc()
        if verb == "AUTH" and self._lookup is not None:  # the core checked the supplied secret: no
            self._metrics.auth[self._lookup, False].inc()
            self._lookup = None

    def _message_rejected(self, event: smtpwire.MessageRejected) -> None:
        reason = "too_big" if event.reply.code == 552 else "malformed"
        self._metrics.messages_refused[reason].inc()

    def _authenticated(self, event: smtpwire.Authenticated) -> None:
        self._lookup = None
        self._metrics.commands["AUTH", "2xx"].inc()
        self._metrics.auth[_known_mechanism(event.mechanism), True].inc()

    def _credentials_lookup(self, event: smtpwire.CredentialsLookup) -> None:
        self._lookup = _known_mechanism(event.mechanism)

    def _answered_by_core(self, event: smtpwire.Event) -> None:
        self._metrics.commands[_CORE_ANSWERED[type(event)], "2xx"].inc()


def _class_of(reply: Reply) -> str:
    return REPLY_CLASSES[min(max(reply.code // 100, 2), 5) - 2]


def _accepted_class(event: smtpwire.Decision) -> str:
    """What ``accept()`` answered: 354 to DATA, 2xx to the rest (a BDAT chunk's 250 comes once it is read)."""
    if isinstance(event, smtpwire.DataRequested) and not event.chunked:
        return "3xx"
    return "2xx"


_VERB_SET = frozenset(VERBS)
_MECHANISM_SET = frozenset(MECHANISMS)


def _known_verb(verb: str) -> str:
    """``verb`` when it is one of ``VERBS``, else OTHER (a client's unknown verb never becomes a label)."""
    upper = verb.upper() if len(verb) <= 8 else ""
    return upper if upper in _VERB_SET else "OTHER"


def _known_mechanism(name: str) -> str:
    return name if name in _MECHANISM_SET else "OTHER"


_DECISION_VERBS: dict[type[smtpwire.Event], str] = {
    smtpwire.Helo: "HELO",
    smtpwire.MailFrom: "MAIL",
    smtpwire.RcptTo: "RCPT",
    smtpwire.Vrfy: "VRFY",
}
_CORE_ANSWERED: dict[type[smtpwire.Event], str] = {
    smtpwire.Rset: "RSET",
    smtpwire.Noop: "NOOP",
    smtpwire.Help: "HELP",
    smtpwire.Quit: "QUIT",
    smtpwire.StartTLSRequested: "STARTTLS",
}
_SEEN: dict[type[smtpwire.Event], Callable[[SessionMetrics, smtpwire.Event], None]] = {
    smtpwire.MessageData: SessionMetrics._message_data,  # type: ignore[dict-item]
    smtpwire.CommandRejected: SessionMetrics._command_rejected,  # type: ignore[dict-item]
    smtpwire.MessageRejected: SessionMetrics._message_rejected,  # type: ignore[dict-item]
    smtpwire.Authenticated: SessionMetrics._authenticated,  # type: ignore[dict-item]
    smtpwire.CredentialsLookup: SessionMetrics._credentials_lookup,  # type: ignore[dict-item]
    **dict.fromkeys(_CORE_ANSWERED, SessionMetrics._answered_by_core),
}
