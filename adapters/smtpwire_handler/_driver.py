"""One session's core, hooks, input pacing, transcript and log lines behind an h11-like contract.

An adapter only moves bytes and runs TLS; everything else is here, once::

    while True:
        step = driver.next_step()
        write(driver.data_to_send())
        if step is NEED_DATA:     driver.receive(read())        # or driver.timed_out()
        elif step is FLUSH:       wait_until_the_client_took_what_was_written()
        elif step is START_TLS:   driver.tls_started(upgrade()) # or driver.tls_failed(reason)
        elif step is CLOSED:      close(); break
        else:                     driver.resolve(step, await step.awaitable)  # or driver.reject(step, error)

and on an unexpected error anywhere in that loop, ``driver.fail(error)``
and go on while it returns True: the closing hooks still run, once.  ``receive()`` takes any
amount of bytes, at any time: the driver feeds the core a slice at a time
(``_input``), drops plaintext pipelined behind STARTTLS (RFC 3207 4.2), and
keeps what a TLS layer decrypted during the handshake for after it.

Hooks the handler does not override are never called: the driver applies
their default outcome itself.  A hook that returns a plain value is called
inline; one that returns an awaitable (an ``async def`` hook) comes back as a
``HookWait`` step for the adapter to await, and the session waits for it.

The session's lifecycle is a ``Phase`` moved only by ``_PHASES`` (h11's
rule 1, one layer up from the core's ``_state``).
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import smtpwire
from smtpwire import UNAVAILABLE, Reply, Xclient, Xforward, parse_xclient, parse_xforward

from ._handler import DEFAULT_OUTCOMES, AsyncHandler, Handler, Reject, keep_data
from ._input import SLICE, InputQueue
from ._options import ServerOptions
from ._session import Address, Session, TLSInfo
from ._transcript import Transcript

LOCAL_ERROR = Reply(451, "Requested action aborted: local error in processing", (4, 3, 0))
#: RFC 4954 6: what a broken or unavailable credential check answers.
AUTH_UNAVAILABLE = Reply(454, "Temporary authentication failure", (4, 7, 0))
BAD_CREDENTIALS = smtpwire.AuthCredentials.refusal
#: The handler's hooks, by name.
HOOK_NAMES = tuple(name for name in vars(Handler) if not name.startswith("_"))
_HOOK_NAME_SET = frozenset(HOOK_NAMES)
#: Lines a session may log about what its client did wrong (refusals, failing hooks); the rest are
#: counted into the closing line.  With one line per message and a few per session, a session's log
#: volume is bounded whatever the client sends.
PROBLEM_LINES = 10
#: What a log line shows of a client's text at most.
_SHOWN = 200


class AdapterStep(enum.Enum):
    """What the adapter does next (besides writing ``data_to_send()``)."""

    NEED_DATA = "read the client's next bytes"
    FLUSH = "wait until the client has taken what was written, then ask again"
    START_TLS = "upgrade the connection to TLS"
    CLOSED = "close the connection"


NEED_DATA = AdapterStep.NEED_DATA
FLUSH = AdapterStep.FLUSH
START_TLS = AdapterStep.START_TLS
CLOSED = AdapterStep.CLOSED


class Phase(enum.Enum):
    """Where a session is in its life; what moves it is ``_PHASES``."""

    PROXY = "reading a trusted proxy's PROXY header"
    HANDSHAKE = "the adapter runs a TLS handshake"
    CONVERSATION = "the core converses with the client"
    CLOSING = "the conversation is over: the closing hooks are due"
    CLOSED = "the closing hooks are queued: close once they ran"

    __hash__ = object.__hash__  # identity, as for the core's State


class Happening(enum.Enum):
    """What moves a session from one phase to the next."""

    PROXY_READ = "the PROXY header was read"
    PROXY_FAILED = "no valid PROXY header: refused, timed out, shutting down, or the peer left"
    TLS_REQUESTED = "the core accepted STARTTLS"
    TLS_ESTABLISHED = "the handshake succeeded"
    TLS_FAILED = "the handshake failed, timed out, or the peer left during it"
    CONVERSATION_ENDED = "the core closed, or the peer left and the core has nothing more to say"
    FAILED = "an unexpected error: the session ends without the core"
    CLOSING_HOOKS_QUEUED = "the closing hooks were queued"

    __hash__ = object.__hash__  # identity, as for Phase: ``_PHASES`` is looked up by (phase, happening)


P, H = Phase, Happening
_PHASES: dict[tuple[Phase, Happening], Phase] = {
    (P.PROXY, H.PROXY_READ): P.CONVERSATION,
    (P.PROXY, H.PROXY_FAILED): P.CLOSING,
    (P.CONVERSATION, H.TLS_REQUESTED): P.HANDSHAKE,
    (P.HANDSHAKE, H.TLS_ESTABLISHED): P.CONVERSATION,
    (P.HANDSHAKE, H.TLS_FAILED): P.CLOSING,
    (P.CONVERSATION, H.CONVERSATION_ENDED): P.CLOSING,
    (P.PROXY, H.FAILED): P.CLOSING,
    (P.HANDSHAKE, H.FAILED): P.CLOSING,
    (P.CONVERSATION, H.FAILED): P.CLOSING,
    (P.CLOSING, H.FAILED): P.CLOSED,
    (P.CLOSED, H.FAILED): P.CLOSED,
    (P.CLOSING, H.CLOSING_HOOKS_QUEUED): P.CLOSED,
}
del P, H


class StopRequest(enum.Enum):
    """A shutdown's request to a session."""

    WHEN_IDLE = "say 421 4.3.2 and close once no transaction is open"
    NOW = "say 421 4.3.2 and close at the next step"


@dataclass(frozen=True, eq=False)
class HookWait:
    """An async hook is running: await ``awaitable``, then ``driver.resolve()`` or ``driver.reject()``."""

    hook: str
    awaitable: Awaitable[object]
    event: smtpwire.Event | None
    started: float = 0.0  # when the hook was called, with metrics (``SessionMetrics.hook_started``)


@functools.cache
def _overridden_by(cls: type[object]) -> frozenset[str]:
    if cls.__getattribute__ is not object.__getattribute__ or hasattr(cls, "__getattr__"):
        return frozenset(HOOK_NAMES)  # hooks decided at lookup time: call them all
    defaults = (Handler, AsyncHandler)
    return frozenset(
        name for name in HOOK_NAMES if all(getattr(cls, name, None) is not vars(d)[name] for d in defaults)
    )


def overridden_hooks(handler: object) -> frozenset[str]:
    """The hooks ``handler`` defines itself (in its class or on the instance): the only ones called."""
    hooks = _overridden_by(type(handler))  # type: ignore[arg-type]  # classes are hashable
    own = getattr(handler, "__dict__", None)
    return hooks | own.keys() & _HOOK_NAME_SET if own else hooks


class SessionDriver:
    """Runs one connection's conversation; see the module docstring for the adapter's loop.

    ``can_await=False`` (the blocking and MemoryBIO adapters) treats a hook
    that returns an awaitable as a broken hook: 451 4.3.0, logged.
    """

    __slots__ = (
        "_answer_for_all",
        "_answered_for_all",
        "_calls",
        "_chunk_refusal",
        "_clock",
        "_deadline",
        "_delivered",
        "_end_fed",
        "_event_since_wait",
        "_flushed",
        "_hooks",
        "_in_message",
        "_input",
        "_messages",
        "_metrics",
        "_octets_credited",
        "_peer_present",
        "_problems_logged",
        "_problems_unlogged",
        "_proxy",
        "_stop_request",
        "_transcript",
        "_waiting",
        "can_await",
        "conn",
        "handler",
        "log",
        "options",
        "phase",
        "session",
    )

    def __init__(
        self,
        handler: Handler | AsyncHandler,
        options: ServerOptions,
        *,
        log: logging.Logger,
        peer: Address | None = None,
        local: Address | None = None,
        implicit_tls: bool = False,
        can_await: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler = handler
        self.options = options
        self.log = log
        self.conn = options.new_connection(implicit_tls=implicit_tls)
        self.session = Session(self.conn, peer, local)
        self._offer_forwarding()
        self.can_await = can_await
        self._hooks = overridden_hooks(handler)
        self._calls: deque[tuple[str, tuple[Any, ...], smtpwire.Event | None]] = deque()
        self._waiting: HookWait | None = None
        self._input = InputQueue()
        self._end_fed = False  # the core was told the client closed its side
        self._flushed = b""  # replies drained from the core before a FLUSH, still to be written
        #: False once the peer is gone (or TLS broke): nothing more can be said.
        self._peer_present = True
        self._stop_request: StopRequest | None = None
        self._transcript = Transcript(self.conn, self.session.id) if Transcript.enabled() else None
        self._metrics = None if options.metrics is None else options.metrics.session(lmtp=options.config.lmtp)
        self._in_message = False  # DATA or a first BDAT chunk was accepted, and the message not yet answered
        self._chunk_refusal: Reply | None = None  # data_chunk failed: it decides the end of data
        #: LMTP: the message hook's answer goes to every recipient (RFC 2033 4.2): set once it answered.
        self._answer_for_all: Reply | None = None
        self._answered_for_all = False
        self._messages = 0
        self._delivered = False  # this transaction's message was accepted (in LMTP: for one recipient at least)
        self._problems_logged = 0
        self._problems_unlogged = 0
        self._clock = clock
        self._deadline = 0.0  # when the client's next record (command line, SASL exchange, message) is due
        self._event_since_wait = True  # the core produced an event since the client was last waited for
        self._octets_credited = 0  # message octets already counted into the deadline
        #: A trusted proxy's connection starts with a PROXY header, read before the core sees a byte.
        self._proxy = smtpwire.ProxyReader() if options.trusts_proxy(peer) else None
        if self._proxy is not None:
            if implicit_tls:
                raise ValueError("a PROXY header cannot come through an implicit TLS listener")
            self.phase = Phase.PROXY
            self._deadline = clock() + options.proxy_timeout
        else:
            self.phase = Phase.HANDSHAKE if implicit_tls else Phase.CONVERSATION
        log.debug("session %s: connection from %s", self.session.id, self.session.peer_host)

    def _move(self, happening: Happening) -> None:
        try:
            self.phase = _PHASES[self.phase, happening]
        except KeyError:
            raise RuntimeError(f"{happening.value} cannot happen while {self.phase.value}") from None

    # -- what the adapter looks at -------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the closing hooks are queued: the next steps run them, then ``CLOSED``."""
        return self.phase is _CLOSED_PHASE

    @property
    def timeout(self) -> float:
        """Seconds to wait for the step at hand (the handshake, or the client's next bytes)."""
        if self.phase is _HANDSHAKE:
            return self.options.tls_handshake_timeout
        return max(self._deadline - self._clock(), 0.0)

    @property
    def reading_message(self) -> bool:
        """The core reads message data (after 354, or a BDAT chunk's octets): no reply until its end."""
        return self.conn.state in _READING_MESSAGE

    @property
    def idle(self) -> bool:
        """Between transactions (none open, not inside DATA): a graceful shutdown may close it now."""
        return self.conn.transaction is None and not self.reading_message

    def request_stop(self, *, force: bool = False) -> bool:
        """A graceful shutdown asks the session to close with 421 4.3.2; True when it should be woken now."""
        self._stop_request = StopRequest.NOW if force else self._stop_request or StopRequest.WHEN_IDLE
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        """Whether the session should say 421 4.3.2 rather than wait for the client."""
        return self._stop_request is StopRequest.NOW or (self._stop_request is not None and self.idle)

    # -- the contract ----------------------------------------------------------

    def next_step(self) -> AdapterStep | HookWait:
        """Run the conversation until the adapter must act."""
        if self._waiting is not None:
            raise RuntimeError(f"the hook {self._waiting.hook} is still being awaited")
        while True:
            if self._calls:
                step: AdapterStep | HookWait | None = self._call(*self._calls.popleft())
            elif self.phase is _CONVERSATION:  # nearly every step: called without the table's lookup
                step = self._converse()
            else:
                step = _IN_PHASE[self.phase](self)
            if step is not None:
                return step

    def data_to_send(self) -> bytes:
        """What to write now: replies, in order (nothing once the peer is gone)."""
        data = self.conn.data_to_send()
        if self._flushed:
            data, self._flushed = self._flushed + data, b""
        if data and self._transcript is not None:
            self._transcript.said(data)
        return data if self._peer_present else b""

    def receive(self, data: bytes) -> None:
        """The client's bytes, any amount (``b""``: it closed its side)."""
        if self.phase is _CONVERSATION and data and not self._input and len(data) <= SLICE:
            self._feed(data)  # the usual case: one command, or one read of message data, fed at once
        elif self.phase is Phase.PROXY:
            assert self._proxy is not None
            self._proxy.receive_data(data)
        elif not data:
            self._input.ended = True
        else:  # a large read, a read while a hook runs, or bytes a TLS layer decrypted during its handshake
            self._input.put(data)

    def timed_out(self) -> None:
        """The adapter's timer ran out waiting for the client: 421 4.4.2 (a handshake or PROXY wait just ends)."""
        if self.phase is Phase.HANDSHAKE:
            self.tls_failed(f"timed out after {self.timeout} s")
        elif self.phase is Phase.PROXY:
            self._proxy_failed(f"no PROXY header within {self.options.proxy_timeout} s")
        elif self.phase is Phase.CONVERSATION:
            what = "message data" if self._in_message else "a command"
            self.log.info("session %s: timed out waiting for %s", self.session.id, what)
            self.conn.timed_out()

    def connection_lost(self, error: BaseException | None = None) -> None:
        """The connection broke or the peer vanished: end the session (closing hooks still run)."""
        if self._peer_present and self.phase not in _ENDED:
            self.log.info("session %s: connection lost: %s", self.session.id, _short(repr(error)))
        self._peer_present = False
        self._input.clear()
        self._input.ended = True
        if self.phase is Phase.HANDSHAKE:
            self._end_handshake()
        elif self.phase is Phase.PROXY:
            self._proxy = None
            self._move(Happening.PROXY_FAILED)

    def fail(self, error: BaseException) -> bool:
        """An unexpected error in the adapter or the driver: log it; then only the closing hooks run, once.

        The adapter drops the connection (nothing more is said) and, when
        this returns True, goes on with ``next_step()``.  A failure while
        closing gives up on the hooks: False, close now.
        """
        closing = self.phase in _ENDED
        what = "while closing" if closing else "closing the connection"
        self.log.error("session %s: unexpected error, %s", self.session.id, what, exc_info=error)
        self._waiting = None
        self._peer_present = False
        self._input.clear()
        self._move(Happening.FAILED)
        if self.phase is Phase.CLOSED:
            self._calls.clear()
            if self._metrics is not None:
                self._metrics.closed()
            return False
        return True

    def tls_started(self, info: TLSInfo) -> None:
        """The handshake succeeded: after STARTTLS the core starts over and ``tls_started`` is called."""
        if self.phase is not Phase.HANDSHAKE:
            raise RuntimeError("no TLS handshake was due (or the connection was lost meanwhile)")
        self._move(Happening.TLS_ESTABLISHED)
        if self._metrics is not None:
            self._metrics.tls(True)
        self.session.tls = info
        self.log.info("session %s: TLS established: %s %s", self.session.id, info.version, info.cipher)
        if self.conn.state is smtpwire.State.GREETING:  # implicit TLS (RFC 8314): nothing to reset
            self.session.implicit_tls = True
            return
        self.conn.tls_established()
        self._queue("tls_started", (self.session,), None)

    def tls_failed(self, reason: str) -> None:
        """The handshake failed: this session ends, the server goes on."""
        if self.phase is not Phase.HANDSHAKE:
            return  # the connection was lost meanwhile: already ended
        peer = self.session.peer_host
        self.log.warning("session %s: TLS handshake with %s failed: %s", self.session.id, peer, _short(reason))
        self._peer_present = False  # nothing can be said in plaintext or in TLS
        self._end_handshake()

    def resolve(self, wait: HookWait, result: object) -> None:
        """The awaited hook returned ``result``."""
        self._waiting = None
        if self._metrics is not None:
            self._metrics.hook_ended(wait.hook, wait.started)
        self._returned(wait.hook, wait.event, result)

    def reject(self, wait: HookWait, error: Exception) -> None:
        """The awaited hook raised ``error``."""
        self._waiting = None
        if self._metrics is not None:
            self._metrics.hook_ended(wait.hook, wait.started)
        self._failed(wait.hook, wait.event, error)

    # -- each phase's step ---------------------------------------------------------

    def _read_proxy_header(self) -> AdapterStep | None:
        """PROXY: wait for the whole header; then the conversation (or the end) begins."""
        assert self._proxy is not None
        if self._stop_request is not None:
            self._proxy_failed("the server is shutting down")
            return None
        header = self._proxy.next_event()
        if header is smtpwire.NEED_DATA:
            return NEED_DATA
        if isinstance(header, smtpwire.ProxyRefused):
            self._proxy_failed(header.reason)
            return None
        assert isinstance(header, smtpwire.ProxyHeader)
        session = self.session
        session.proxy, session.proxy_header = session.peer, header
        if header.source is not None:  # else (UNKNOWN, LOCAL, no IP family) the connection's own addresses stand
            session.peer, session.local = header.source, header.destination
        rest, self._proxy = self._proxy.trailing_data, None
        self._offer_forwarding()  # trusted or not as the client the header names
        self._move(Happening.PROXY_READ)
        what = f"PROXY v{header.version} {header.protocol or header.command}"
        self.log.info("session %s: client %s via the proxy %s (%s)", session.id, session.peer, session.proxy, what)
        if rest:  # the client spoke first: the core answers that as it would without a proxy
            self._input.put(rest)
        return None

    def _handshake(self) -> AdapterStep:
        return START_TLS

    def _converse(self) -> AdapterStep | HookWait | None:
        """CONVERSATION: the core's next event, to a hook; or the client's next bytes."""
        if self._in_message and self.conn.transaction is None:  # RSET, HELO or EHLO between BDAT chunks
            self._aborted(None)
            return None
        event = self.conn.next_event()
        if event is smtpwire.NEED_DATA:
            return self._next_input()
        if isinstance(event, smtpwire.Sentinel):  # PAUSED: every decision is answered here
            raise RuntimeError(f"the core waits for a decision nobody made: {self.conn.pending!r}")
        if type(event) is not smtpwire.MessageData:
            self._event_since_wait = True
        if self._transcript is not None:
            self._transcript.saw(event)
        if self._metrics is not None:
            self._metrics.saw(event)
        return _ON_EVENT.get(type(event), SessionDriver._observe)(self, event)

    def _next_input(self) -> AdapterStep | None:
        """The core needs bytes: the next queued slice, once the replies so far were taken; else the client's."""
        if self._input:
            if not self._flushed and (replies := self.conn.data_to_send()):
                self._flushed = replies
                return FLUSH
            self._feed(self._input.take(self.conn.state is _DATA))  # a chunk ends by count, not by a dot
        elif self._input.ended:
            if self._end_fed:  # the core heard the end and has nothing more to say
                self._move(Happening.CONVERSATION_ENDED)
            else:
                self._end_fed = True
                self._feed(b"")
        elif self._stop_request is not None and self.should_stop:
            self.conn.shutdown()
        else:
            self._await_client()
            return NEED_DATA
        return None

    def _finish(self) -> None:
        """CLOSING: queue the closing hooks, exactly once; after them, CLOSED."""
        if self._in_message:  # a message started and was never answered
            self._aborted(None)
        self._queue("disconnect", (self.session,), None)
        self._move(Happening.CLOSING_HOOKS_QUEUED)
        unlogged = f", {self._problems_unlogged} more problem(s) not logged" if self._problems_unlogged else ""
        messages = f"{self._messages} message(s){unlogged}"
        self.log.info("session %s: closed (%s, peer %s)", self.session.id, messages, self.session.peer_host)

    def _closed(self) -> AdapterStep:
        if self._transcript is not None:
            self._transcript.read_up(ended=True)
        if self._metrics is not None:
            self._metrics.closed()
        return CLOSED

    # -- input and deadlines ------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if data and self._transcript is not None:
            self._transcript.heard(data)
        self.conn.receive_data(data)

    def _await_client(self) -> None:
        """Set when the client's next bytes are due: deadlines per record, not per read.

        A command line (or SASL response) is due ``command_timeout`` after
        the last event.  A message, DATA or BDAT alike and the BDAT commands
        between its chunks included, is due within ``data_timeout`` of its
        start, each octet buying ``1 / min_data_rate`` seconds more, never
        past ``data_timeout`` ahead: a chunk is not a new command.
        """
        if self._transcript is not None:
            self._transcript.read_up()
        now, options = self._clock(), self.options
        if self._in_message:
            envelope = self.session.envelope
            assert envelope is not None
            size = envelope.size
            credit = (size - self._octets_credited) / options.min_data_rate
            self._deadline = min(self._deadline + credit, now + options.data_timeout)
            self._octets_credited = size
        elif self._event_since_wait:  # a new command line (or SASL exchange) is due
            self._deadline = now + options.command_timeout
        self._event_since_wait = False

    def _start_message_deadline(self) -> None:
        self._deadline = self._clock() + self.options.data_timeout
        self._octets_credited = 0

    # -- ends of phases --------------------------------------------------------------------

    def _end_handshake(self) -> None:
        """No handshake any more: the session ends (after STARTTLS the core is told, and closes)."""
        if self.conn.state is smtpwire.State.TLS_HANDSHAKE:
            self.conn.tls_failed()
        self._input.clear()
        self._move(Happening.TLS_FAILED)
        if self._metrics is not None:
            self._metrics.tls(False)

    def _proxy_failed(self, reason: str) -> None:
        """No valid PROXY header: nobody to greet, the connection just closes."""
        peer = self.session.peer
        self.log.warning("session %s: closing the connection from the proxy %s: %s", self.session.id, peer, reason)
        self._proxy = None
        self._peer_present = False  # nothing is said: no greeting, no 421
        self._move(Happening.PROXY_FAILED)

    # -- events to hooks ---------------------------------------------------------

    def _queue(self, hook: str, args: tuple[Any, ...], event: smtpwire.Event | None) -> None:
        if hook in self._hooks:
            self._calls.append((hook, args, event))
        elif isinstance(event, smtpwire.Decision):
            self._returned(hook, event, DEFAULT_OUTCOMES[hook])

    def _call(self, hook: str, args: tuple[Any, ...], event: smtpwire.Event | None) -> HookWait | None:
        metrics = self._metrics
        started = 0.0 if metrics is None else metrics.hook_started()
        try:
            result = getattr(self.handler, hook)(*args)
        except Exception as error:
            if metrics is not None:
                metrics.hook_ended(hook, started)
            self._failed(hook, event, error)
            return None
        if result is None or isinstance(result, bool | Reply) or not inspect.isawaitable(result):
            if metrics is not None:
                metrics.hook_ended(hook, started)
            self._returned(hook, event, result)
            return None
        if not self.can_await:
            if inspect.iscoroutine(result):
                result.close()
            self._failed(hook, event, TypeError(f"{hook} returned an awaitable: this adapter needs plain hooks"))
            return None
        self._waiting = HookWait(hook, result, event, started)
        return self._waiting

    def _observe(self, event: smtpwire.Event) -> None:
        """Events with no hook (NOOP, HELP, Authenticated, ...): reported, nothing to do."""

    def _hook(self, event: smtpwire.Event) -> None:
        hook, fields = _EVENT_HOOKS[type(event)]
        if hook in self._hooks:
            self._calls.append((hook, (self.session, *(getattr(event, f) for f in fields)), event))
        elif isinstance(event, smtpwire.Decision):  # nobody overrode it: its default outcome (None), no call
            self._answer(event, hook, None)

    def _extension_command(self, event: smtpwire.ExtensionCommand) -> None:
        """XCLIENT and XFORWARD get the core's answer (220, 250, 501 or 550); other verbs go to ``command``."""
        extension = self.conn.extensions.get(event.verb)
        if isinstance(extension, Xclient | Xforward):
            self._answer(event, event.verb, None)
            if event.default.code < 400:
                (self._take_xclient if isinstance(extension, Xclient) else self._take_xforward)(event.argument)
        else:
            self._hook(event)

    def _take_xclient(self, argument: str) -> None:
        """The session is now the named client's: peer, local address, names; the proxy is kept as ``proxy``."""
        attributes = parse_xclient(argument)
        assert not isinstance(attributes, Reply)  # the core answered 220: they are valid
        session = self.session
        if session.proxy is None:
            session.proxy = session.peer
        session.xclient = session.xclient.updated_by(attributes) if session.xclient else attributes
        session.peer = _forwarded_address(attributes.addr, attributes.port, session.peer)
        session.local = _forwarded_address(attributes.destaddr, attributes.destport, session.local)
        session.forwarded = None
        self.log.info(
            "session %s: client %s (%s) via XCLIENT from %s",
            session.id,
            session.peer_host,
            session.client_name or "no name",
            session.proxy,
        )

    def _take_xforward(self, argument: str) -> None:
        """Who the next transaction is really from, added to what earlier XFORWARDs said."""
        attributes = parse_xforward(argument)
        assert not isinstance(attributes, Reply)  # the core answered 250: they are valid
        session = self.session
        session.forwarded = session.forwarded.updated_by(attributes) if session.forwarded else attributes
        self.log.info("session %s: XFORWARD %s", session.id, _short(argument))

    def _offer_forwarding(self) -> None:
        """XCLIENT and XFORWARD, where configured: allowed only to a client in their trusted networks."""
        for extension in self.options.forwarding_extensions(self.session.peer):
            self.conn.extensions.add(extension)

    def _message_data(self, event: smtpwire.MessageData) -> None:
        envelope = self.session.envelope
        assert envelope is not None
        envelope.size += len(event.data)
        if self._chunk_refusal is not None:
            return
        if "data_chunk" in self._hooks:
            self._calls.append(("data_chunk", (self.session, event.data), event))
        else:
            keep_data(envelope, event.data)

    def _end_of_message(self, event: smtpwire.EndOfMessage) -> None:
        if self._answered_for_all:  # LMTP, a later recipient: the message hook answered for all
            self._answer(event, "message", self._answer_for_all)
        elif self._chunk_refusal is not None:
            refusal = self._chunk_refusal
            self._aborted(refusal)
            self._answer(event, "data_chunk", refusal)
        elif event.recipient is not None and "deliver" in self._hooks:
            self._queue("deliver", (self.session, self.session.envelope, event.recipient), event)
        else:
            self._queue("message", (self.session, self.session.envelope), event)

    def _message_rejected(self, event: smtpwire.MessageRejected) -> None:
        self._log_refusal("the message", event.reply, always=True)
        self._aborted(event.reply)

    def _command_rejected(self, event: smtpwire.CommandRejected) -> None:
        self._log_refusal(event.command or "a command", event.reply)
        self._queue("error", (self.session, event.command, event.reply), event)

    def _log_problem(self, level: int, message: str, *args: object, always: bool = False, **kwargs: Any) -> None:
        """At most ``PROBLEM_LINES`` a session (messages' lines ``always``); the rest are counted."""
        if always or self._problems_logged < PROBLEM_LINES:
            self._problems_logged += not always
            self.log.log(level, message, *args, **kwargs)
        else:
            self._problems_unlogged += 1

    def _log_refusal(self, what: str, reply: Reply, *, always: bool = False) -> None:
        """A refusal leaves a line: what was refused and the reply the client got."""
        first, *more = reply.to_bytes(True).decode(errors="replace").splitlines()
        line = "session %s: refused %s: %s%s"
        self._log_problem(
            logging.INFO, line, self.session.id, _short(what), first, " ..." if more else "", always=always
        )

    def _auth(self, event: smtpwire.AuthCredentials | smtpwire.CredentialsLookup) -> None:
        hook = "authenticate" if isinstance(event, smtpwire.AuthCredentials) else "credentials"
        self._queue(hook, (self.session, event), event)

    def _start_tls(self, event: smtpwire.StartTLSRequested) -> AdapterStep:
        if self._transcript is not None:
            self._transcript.read_up()
        self._input.clear()  # plaintext pipelined behind STARTTLS is never read (RFC 3207 4.2)
        self._move(Happening.TLS_REQUESTED)
        return START_TLS

    def _connection_closed(self, event: smtpwire.ConnectionClosed) -> None:
        self._move(Happening.CONVERSATION_ENDED)

    def _aborted(self, reply: Reply | None) -> None:
        self._in_message = False
        self._chunk_refusal = None
        self._queue("message_aborted", (self.session, reply), None)

    # -- hook outcomes to replies -------------------------------------------------

    def _returned(self, hook: str, event: smtpwire.Event | None, result: object) -> None:
        if not isinstance(event, smtpwire.Decision):
            return
        if isinstance(event, smtpwire.CredentialsLookup) and not isinstance(result, Reply):
            self._supply(event, result)
            return
        if isinstance(event, smtpwire.AuthCredentials) and isinstance(result, bool | None):
            result = None if result is True else BAD_CREDENTIALS  # a forgotten return lets nobody in
        if isinstance(result, str) and (reply := reply_from_text(result)) is not None:
            _warn_text_reply(self.log, type(self.handler), hook, result)
            result = reply  # what the hook meant: answering 451 after it stored a message would make it twice
        elif result is not None and not isinstance(result, Reply):
            self._log_problem(
                logging.ERROR, "session %s: hook %s returned %r, not a Reply", self.session.id, hook, result
            )
            result = self._fallback(event)
        self._answer(event, hook, result)

    def _failed(self, hook: str, event: smtpwire.Event | None, error: Exception) -> None:
        if isinstance(error, Reject):
            reply = error.reply
        else:
            self._log_problem(logging.ERROR, "session %s: hook %s failed", self.session.id, hook, exc_info=error)
            reply = self._fallback(event)
        if isinstance(event, smtpwire.MessageData):
            self._chunk_refusal = reply if reply.code >= 400 else LOCAL_ERROR
        elif isinstance(event, smtpwire.Decision):
            self._answer(event, hook, reply)

    def _answer(self, event: smtpwire.Decision, hook: str, reply: Reply | None) -> None:
        conn = self.conn
        try:
            if reply is None:
                conn.accept()
            else:
                conn.send(reply)
        except smtpwire.LocalProtocolError as error:
            name = type(event).__name__
            self._log_problem(logging.ERROR, "session %s: hook %s answered %s: %s", self.session.id, hook, name, error)
            reply = self._fallback(event)
            conn.send(reply)
        if reply is None or reply.code in event.accepts:
            self._accepted(event)
        else:
            is_message = type(event) is smtpwire.EndOfMessage
            self._log_refusal(_what_was_refused(event), reply, always=is_message)
        if type(event) is smtpwire.EndOfMessage:
            self._in_message = False
            more = self.conn.transaction is not None  # LMTP: recipients are still due
            self._answered_for_all = more and hook != "deliver"
            self._answer_for_all = reply if self._answered_for_all else None
            self._delivered = self._delivered and more
        if self._metrics is not None:
            self._metrics.answered(event, reply)

    def _accepted(self, event: smtpwire.Decision) -> None:
        """A message began or was delivered, or HELO/EHLO began anew (the envelope is the core's transaction)."""
        if type(event) is smtpwire.DataRequested:
            if not self._in_message:  # DATA, or a message's first BDAT chunk
                self._in_message = True
                self._start_message_deadline()
        elif type(event) is smtpwire.EndOfMessage and not self._delivered:  # LMTP: a message, not a recipient
            self._messages += 1
            self._delivered = True
        elif type(event) is smtpwire.Helo or type(event) is smtpwire.Ehlo:  # XFORWARD's are forgotten (Postfix)
            self.session.forwarded = None

    def _supply(self, event: smtpwire.CredentialsLookup, secret: object) -> None:
        try:
            self.conn.supply(secret)  # type: ignore[arg-type]
        except smtpwire.LocalProtocolError:
            kind = type(secret).__name__
            self._log_problem(
                logging.ERROR, "session %s: hook credentials returned a %s for %s", self.session.id, kind, event
            )
            self.conn.send(AUTH_UNAVAILABLE)

    def _fallback(self, event: smtpwire.Event | None) -> Reply:
        if isinstance(event, smtpwire.ConnectionOpened):
            return Reply(421, f"{self.conn.config.hostname} Service not available, local error", (4, 3, 0))
        if isinstance(event, smtpwire.AuthCredentials | smtpwire.CredentialsLookup):
            return AUTH_UNAVAILABLE
        return LOCAL_ERROR


_TEXT_REPLY = re.compile(r"([2-5][0-9][0-9])(?: (?:([245])\.([0-9]{1,3})\.([0-9]{1,3}) )?(.*))?", re.DOTALL)


def reply_from_text(text: str) -> Reply | None:
    """aiosmtpd's answer, ``"250 OK"`` or ``"550 5.1.1 No such user"``, as a Reply (None if it is none)."""
    match = _TEXT_REPLY.fullmatch(text)
    if match is None:
        return None
    code, klass, subject, detail, rest = match.groups()
    enhanced = (int(klass), int(subject), int(detail)) if klass else None
    try:
        return Reply(int(code), rest or "", enhanced)
    except (ValueError, TypeError, smtpwire.LocalProtocolError):
        return None


_WARNED: set[tuple[type[object], str]] = set()  # (handler class, hook): bounded by the code, not by clients


def _warn_text_reply(log: logging.Logger, handler: type[object], hook: str, text: str) -> None:
    """Once per handler class and hook: the answer went out as meant, but the hook should return a Reply."""
    if (handler, hook) not in _WARNED:
        _WARNED.add((handler, hook))
        log.warning("%s.%s returned %r, a str: answered as such; return smtpwire.Reply", handler.__name__, hook, text)


def _forwarded_address(host: str | None, port: str | None, current: Address | None) -> Address | None:
    """XCLIENT's ADDR and PORT (or DESTADDR and DESTPORT) over the address they replace; ``None``: unknown."""
    if host is None and port is None:
        return current
    was = current if isinstance(current, tuple) else (None, 0)
    host = was[0] if host is None else host
    if host is None or host == UNAVAILABLE:
        return None
    return (host, int(port) if port is not None and port != UNAVAILABLE else was[1])


def _short(text: str) -> str:
    """A client's text in a log line, cut to ``_SHOWN`` characters."""
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _what_was_refused(event: smtpwire.Decision) -> str:
    """What a refused decision was, for the log line."""
    if isinstance(event, smtpwire.MailFrom | smtpwire.RcptTo):
        return f"{_COMMAND_NAMES[type(event)]}<{event.address}>"
    if isinstance(event, smtpwire.EndOfMessage):
        return "the message" if event.recipient is None else f"the message for <{event.recipient}>"
    if isinstance(event, smtpwire.ExtensionCommand):
        return event.verb
    if isinstance(event, smtpwire.DataRequested):
        return "BDAT" if event.chunked else "DATA"
    return _COMMAND_NAMES.get(type(event), type(event).__name__)


_COMMAND_NAMES: dict[type[smtpwire.Event], str] = {
    smtpwire.ConnectionOpened: "the connection",
    smtpwire.Helo: "HELO",
    smtpwire.Ehlo: "EHLO",
    smtpwire.MailFrom: "MAIL FROM:",
    smtpwire.RcptTo: "RCPT TO:",
    smtpwire.Vrfy: "VRFY",
    smtpwire.AuthCredentials: "AUTH",
    smtpwire.CredentialsLookup: "AUTH",
}

_READING_MESSAGE = frozenset({smtpwire.State.DATA, smtpwire.State.CHUNK})
#: States and phases compared for every step or read, as constants: in Python 3.11, looking up an Enum's
#: member (``Phase.CLOSED``) goes through its metaclass's ``__getattr__`` hook, as slow as a Python call.
_DATA = smtpwire.State.DATA
_CONVERSATION = Phase.CONVERSATION
_HANDSHAKE = Phase.HANDSHAKE
_CLOSED_PHASE = Phase.CLOSED
#: Phases in which the conversation is over.
_ENDED = frozenset({Phase.CLOSING, Phase.CLOSED})

#: Decision and report events answered by a hook: (hook name, event fields passed after the session).
_EVENT_HOOKS: dict[type[smtpwire.Event], tuple[str, tuple[str, ...]]] = {
    smtpwire.ConnectionOpened: ("connect", ()),
    smtpwire.Helo: ("helo", ("name",)),
    smtpwire.Ehlo: ("ehlo", ("name",)),
    smtpwire.MailFrom: ("mail_from", ("address", "params")),
    smtpwire.RcptTo: ("rcpt_to", ("address", "params")),
    smtpwire.DataRequested: ("data_start", ()),
    smtpwire.Vrfy: ("vrfy", ("argument",)),
    smtpwire.ExtensionCommand: ("command", ("verb", "argument")),
    smtpwire.Rset: ("rset", ()),
    smtpwire.Quit: ("quit", ()),
}

#: What the driver does with each kind of event (the rest are observed: nothing to do).
_ON_EVENT: dict[type[smtpwire.Event], Callable[[SessionDriver, Any], AdapterStep | None]] = {
    **dict.fromkeys(_EVENT_HOOKS, SessionDriver._hook),
    smtpwire.ExtensionCommand: SessionDriver._extension_command,
    smtpwire.MessageData: SessionDriver._message_data,
    smtpwire.EndOfMessage: SessionDriver._end_of_message,
    smtpwire.MessageRejected: SessionDriver._message_rejected,
    smtpwire.CommandRejected: SessionDriver._command_rejected,
    smtpwire.AuthCredentials: SessionDriver._auth,
    smtpwire.CredentialsLookup: SessionDriver._auth,
    smtpwire.StartTLSRequested: SessionDriver._start_tls,
    smtpwire.ConnectionClosed: SessionDriver._connection_closed,
}

#: What ``next_step()`` does in each phase, once no hook call is queued.
_IN_PHASE: dict[Phase, Callable[[SessionDriver], AdapterStep | HookWait | None]] = {
    Phase.PROXY: SessionDriver._read_proxy_header,
    Phase.HANDSHAKE: SessionDriver._handshake,
    Phase.CONVERSATION: SessionDriver._converse,
    Phase.CLOSING: SessionDriver._finish,
    Phase.CLOSED: SessionDriver._closed,
}
