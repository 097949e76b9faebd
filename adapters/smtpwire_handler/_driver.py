"""One session's core, hooks, transcript and log lines behind an h11-like contract.

An adapter only moves bytes and runs TLS; everything else is here, once::

    while True:
        step = driver.next_step()
        write(driver.data_to_send())
        if step is NEED_DATA:       driver.receive(read())   # or driver.timed_out()
        elif step is START_TLS:     driver.tls_started(upgrade())   # or driver.tls_failed(reason)
        elif step is CLOSED:        close(); break
        else:                       driver.resolve(step, await step.awaitable)   # or driver.reject(step, error)

Hooks the handler does not override are never called: the driver applies
their default outcome itself.  A hook that returns a plain value is called
inline; one that returns an awaitable (an ``async def`` hook) comes back as a
``HookWait`` step for the adapter to await, and the session waits for it.
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
from smtpwire import Reply

from ._handler import AsyncHandler, Handler, Reject
from ._options import ServerOptions
from ._session import Address, Envelope, Session, TLSInfo
from ._transcript import Transcript

LOCAL_ERROR = Reply(451, "Requested action aborted: local error in processing", (4, 3, 0))
#: RFC 4954 6: what a broken or unavailable credential check answers.
AUTH_UNAVAILABLE = Reply(454, "Temporary authentication failure", (4, 7, 0))
BAD_CREDENTIALS = smtpwire.AuthCredentials.refusal
HOOKS = tuple(name for name in vars(Handler) if not name.startswith("_"))
_HOOK_NAMES = frozenset(HOOKS)


class Step(enum.Enum):
    """What the adapter does next (besides writing ``data_to_send()``)."""

    NEED_DATA = "read the client's next bytes"
    START_TLS = "upgrade the connection to TLS"
    CLOSED = "close the connection"


NEED_DATA, START_TLS, CLOSED = Step.NEED_DATA, Step.START_TLS, Step.CLOSED


@dataclass(frozen=True, eq=False)
class HookWait:
    """An async hook is running: await ``awaitable``, then ``driver.resolve()`` or ``driver.reject()``."""

    hook: str
    awaitable: Awaitable[object]
    event: smtpwire.Event | None


def too_many_sessions(options: ServerOptions) -> bytes:
    """The ``421 4.7.0`` greeting for a connection over the session limit: write it, then close."""
    conn = options.new_connection()
    conn.next_event()  # a new connection's first event is always ConnectionOpened
    conn.send(Reply(421, f"{conn.config.hostname} Too many connections, try again later", (4, 7, 0)))
    return conn.data_to_send()


@functools.cache
def _overridden_by(cls: type[object]) -> frozenset[str]:
    if cls.__getattribute__ is not object.__getattribute__ or hasattr(cls, "__getattr__"):
        return frozenset(HOOKS)  # hooks decided at lookup time: call them all
    defaults = (Handler, AsyncHandler)
    return frozenset(name for name in HOOKS if all(getattr(cls, name, None) is not vars(d)[name] for d in defaults))


def overridden_hooks(handler: object) -> frozenset[str]:
    """The hooks ``handler`` defines itself (in its class or on the instance): the only ones called."""
    hooks = _overridden_by(type(handler))  # type: ignore[arg-type]  # classes are hashable
    own = getattr(handler, "__dict__", None)
    return hooks | own.keys() & _HOOK_NAMES if own else hooks


class SessionDriver:
    """Runs one connection's conversation; see the module docstring for the adapter's loop.

    ``can_await=False`` (the blocking and MemoryBIO adapters) treats a hook
    that returns an awaitable as a broken hook: 451 4.3.0, logged.
    """

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
        self.can_await = can_await
        self._hooks = overridden_hooks(handler)
        self._calls: deque[tuple[str, tuple[Any, ...], smtpwire.Event | None]] = deque()
        self._waiting: HookWait | None = None
        self._tls_due = implicit_tls  # a handshake is due: before the greeting (implicit TLS) or after STARTTLS
        self._closing = False  # the conversation is over: closing hooks, then CLOSED
        self._lost = False  # the peer is gone: nothing more can be sent
        #: True once the closing hooks are queued: the next steps run them, then CLOSED.
        self.closed = False
        #: The wire transcript, decided when the session starts.
        self._transcript = Transcript(self.conn, self.session.id) if Transcript.enabled() else None
        self._in_message = False  # DATA was accepted and the message not yet answered
        self._refusal: Reply | None = None  # data_chunk failed: it decides the end of data
        self._shared: tuple[Reply | None] | None = None  # LMTP: the message hook's answer, for every recipient
        self._stop: str | None = None  # None, "when idle" or "now": a shutdown's request
        self._messages = 0
        self._delivered = False  # this transaction's message was accepted (in LMTP: for one recipient at least)
        self._clock = clock
        self._deadline = 0.0  # when the client's next record (command line, SASL exchange, message) is due
        self._progressed = True  # an event came out since the last wait: a new record is due
        self._rated = 0  # message octets already counted into the deadline
        #: A trusted proxy's connection starts with a PROXY header, read before the core sees a byte.
        self._proxy = smtpwire.ProxyReader() if options.trusts_proxy(peer) else None
        if self._proxy is not None:
            if implicit_tls:
                raise ValueError("a PROXY header cannot come through an implicit TLS listener")
            self._deadline = clock() + options.proxy_timeout
        log.debug("session %s: connection from %s", self.session.id, self.session.peer_host)

    # -- what the adapter looks at -------------------------------------------

    @property
    def timeout(self) -> float:
        """Seconds to wait for the step at hand (the handshake, or the client's next bytes)."""
        if self._tls_due:
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
        self._stop = "now" if force else self._stop or "when idle"
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        """Whether the session should say 421 4.3.2 rather than wait for the client."""
        return self._stop == "now" or (self._stop is not None and self.idle)

    # -- the contract ----------------------------------------------------------

    def next_step(self) -> Step | HookWait:
        """Run the conversation until the adapter must act."""
        if self._waiting is not None:
            raise RuntimeError(f"the hook {self._waiting.hook} is still being awaited")
        while True:
            if self._calls:
                wait = self._call(*self._calls.popleft())
                if wait is not None:
                    return wait
            elif self.closed:
                if self._transcript is not None:
                    self._transcript.read_up(ended=True)
                return CLOSED
            elif self._closing:
                self._finish()
            elif self._proxy is not None:
                if self._stop is not None:
                    self._proxy_failed("the server is shutting down")
                elif not self._read_proxy():
                    return NEED_DATA
            elif self._tls_due:
                return START_TLS
            else:
                event = self.conn.next_event()
                if event is smtpwire.NEED_DATA:
                    if self._lost:
                        self._closing = True
                    elif self._stop is not None and self.should_stop:
                        self.conn.shutdown()
                    else:
                        self._await_client()
                        return NEED_DATA
                elif isinstance(event, smtpwire.Sentinel):  # PAUSED: every decision is answered here
                    raise RuntimeError(f"the core waits for a decision nobody made: {self.conn.pending!r}")
                else:
                    if type(event) is not smtpwire.MessageData:
                        self._progressed = True
                    if self._transcript is not None:
                        self._transcript.saw(event)
                    on_event = _ON_EVENT.get(type(event), SessionDriver._observe)
                    step = on_event(self, event)
                    if step is not None:
                        return step

    def _await_client(self) -> None:
        """Set when the client's next bytes are due: deadlines per record, not per read."""
        if self._transcript is not None:
            self._transcript.read_up()
        now, options = self._clock(), self.options
        if not self.reading_message:
            if self._progressed:  # a new command line (or SASL exchange) is due
                self._deadline = now + options.command_timeout
        else:
            envelope = self.session.envelope
            assert envelope is not None
            if self._progressed:  # DATA was just accepted
                self._deadline = now + options.data_timeout
            else:  # each octet buys 1 / min_data_rate seconds, up to data_timeout ahead
                credit = (envelope.size - self._rated) / options.min_data_rate
                self._deadline = min(self._deadline + credit, now + options.data_timeout)
            self._rated = envelope.size
        self._progressed = False

    def data_to_send(self) -> bytes:
        data = self.conn.data_to_send()
        if data and self._transcript is not None:
            self._transcript.said(data)
        return b"" if self._lost else data

    def receive(self, data: bytes) -> None:
        """The client's bytes (``b""``: it closed its side)."""
        if self._proxy is not None:
            self._proxy.receive_data(data)
            return
        if data and self._transcript is not None:
            self._transcript.heard(data)
        self.conn.receive_data(data)

    def timed_out(self) -> None:
        """The adapter's timer ran out waiting for the client: 421 4.4.2 (a handshake just ends)."""
        if self._tls_due:
            self.tls_failed(f"timed out after {self.timeout} s")
            return
        if self._proxy is not None:
            self._proxy_failed(f"no PROXY header within {self.options.proxy_timeout} s")
            return
        what = "message data" if self.reading_message else "a command"
        self.log.info("session %s: timed out waiting for %s", self.session.id, what)
        self.conn.timed_out()

    def connection_lost(self, error: BaseException | None = None) -> None:
        """The connection broke or the peer vanished: end the session (closing hooks still run)."""
        if not self._lost and not self.closed:
            self.log.info("session %s: connection lost: %r", self.session.id, error)
        self._lost = True
        self._end_handshake()
        if self._proxy is not None:  # no SMTP session began
            self._proxy = None
            self._closing = True
        self.conn.receive_data(b"")

    def tls_started(self, info: TLSInfo) -> None:
        """The handshake succeeded: after STARTTLS the core starts over and ``tls_started`` is called."""
        if not self._tls_due:
            raise RuntimeError("no TLS handshake was due (or the connection was lost meanwhile)")
        self._tls_due = False
        self.session.tls = info
        self.log.info("session %s: TLS established: %s %s", self.session.id, info.version, info.cipher)
        if self.conn.state is smtpwire.State.GREETING:  # implicit TLS (RFC 8314): nothing to reset
            self.session.implicit_tls = True
            return
        self.conn.tls_established()
        self._queue("tls_started", (self.session,), None)

    def tls_failed(self, reason: str) -> None:
        """The handshake failed: this session ends, the server goes on."""
        if not self._tls_due:
            return  # the connection was lost meanwhile: already ended
        peer = self.session.peer
        self.log.warning("session %s: TLS handshake with %s failed: %s", self.session.id, peer, reason)
        self._lost = True  # nothing can be said in plaintext or in TLS
        self._end_handshake()

    def _end_handshake(self) -> None:
        """No handshake is due any more: before the greeting the session ends, after STARTTLS the core closes."""
        if not self._tls_due:
            return
        self._tls_due = False
        if self.conn.state is smtpwire.State.TLS_HANDSHAKE:
            self.conn.tls_failed()
        else:
            self._closing = True

    def _read_proxy(self) -> bool:
        """The PROXY phase: False while the header is incomplete; True once it ended, read or refused."""
        assert self._proxy is not None
        header = self._proxy.next_event()
        if header is smtpwire.NEED_DATA:
            return False
        if isinstance(header, smtpwire.ProxyRefused):
            self._proxy_failed(header.reason)
            return True
        assert isinstance(header, smtpwire.ProxyHeader)
        session = self.session
        session.proxy, session.proxy_header = session.peer, header
        if header.source is not None:  # else (UNKNOWN, LOCAL, no IP family) the connection's own addresses stand
            session.peer, session.local = header.source, header.destination
        rest, self._proxy = self._proxy.trailing_data, None
        what = f"PROXY v{header.version} {header.protocol or header.command}"
        self.log.info("session %s: client %s via the proxy %s (%s)", session.id, session.peer, session.proxy, what)
        if rest:  # the client spoke first: the core answers that as it would without a proxy
            self.receive(rest)
        return True

    def _proxy_failed(self, reason: str) -> None:
        """No valid PROXY header: nobody to greet, the connection just closes."""
        peer = self.session.peer
        self.log.warning("session %s: closing the connection from the proxy %s: %s", self.session.id, peer, reason)
        self._proxy = None
        self._lost = True  # nothing is said: no greeting, no 421
        self._closing = True

    def resolve(self, wait: HookWait, result: object) -> None:
        """The awaited hook returned ``result``."""
        self._waiting = None
        self._returned(wait.hook, wait.event, result)

    def reject(self, wait: HookWait, error: Exception) -> None:
        """The awaited hook raised ``error``."""
        self._waiting = None
        self._failed(wait.hook, wait.event, error)

    # -- events to hooks ---------------------------------------------------------

    def _queue(self, hook: str, args: tuple[Any, ...], event: smtpwire.Event | None) -> None:
        if hook in self._hooks:
            self._calls.append((hook, args, event))
        elif isinstance(event, smtpwire.Decision):
            self._returned(hook, event, False if hook == "authenticate" else None)

    def _call(self, hook: str, args: tuple[Any, ...], event: smtpwire.Event | None) -> HookWait | None:
        try:
            result = getattr(self.handler, hook)(*args)
        except Exception as error:
            self._failed(hook, event, error)
            return None
        if result is None or isinstance(result, bool | Reply) or not inspect.isawaitable(result):
            self._returned(hook, event, result)
            return None
        if not self.can_await:
            if inspect.iscoroutine(result):
                result.close()
            self._failed(hook, event, TypeError(f"{hook} returned an awaitable: this adapter needs plain hooks"))
            return None
        self._waiting = HookWait(hook, result, event)
        return self._waiting

    def _observe(self, event: smtpwire.Event) -> None:
        """Events with no hook (NOOP, HELP, Authenticated, ...): reported, nothing to do."""

    def _hook(self, event: smtpwire.Event) -> None:
        hook, fields = _HOOKS[type(event)]
        if hook in self._hooks:
            self._calls.append((hook, (self.session, *(getattr(event, f) for f in fields)), event))
        elif isinstance(event, smtpwire.Decision):  # nobody overrode it: the standard answer, no call
            self._answer(event, hook, None)

    def _message_data(self, event: smtpwire.MessageData) -> None:
        envelope = self.session.envelope
        assert envelope is not None
        envelope.size += len(event.data)
        if self._refusal is not None:
            return
        if "data_chunk" in self._hooks:
            self._calls.append(("data_chunk", (self.session, event.data), event))
        else:
            envelope.content += event.data

    def _end_of_message(self, event: smtpwire.EndOfMessage) -> None:
        if self._shared is not None:  # LMTP, a later recipient: the message hook answered for all
            self._answer(event, "message", self._shared[0])
        elif self._refusal is not None:
            refusal = self._refusal
            self._aborted(refusal)
            self._answer(event, "data_chunk", refusal)
        elif event.recipient is not None and "deliver" in self._hooks:
            self._queue("deliver", (self.session, self.session.envelope, event.recipient), event)
        else:
            self._queue("message", (self.session, self.session.envelope), event)

    def _message_rejected(self, event: smtpwire.MessageRejected) -> None:
        self._log_refusal("the message", event.reply)
        self._aborted(event.reply)

    def _command_rejected(self, event: smtpwire.CommandRejected) -> None:
        self._log_refusal(event.command or "a command", event.reply)
        self._queue("error", (self.session, event.command, event.reply), event)

    def _log_refusal(self, what: str, reply: Reply) -> None:
        """Every refusal leaves a line: what was refused and the reply the client got."""
        first, *more = reply.to_bytes(True).decode(errors="replace").splitlines()
        self.log.info("session %s: refused %s: %s%s", self.session.id, what, first, " ..." if more else "")

    def _auth(self, event: smtpwire.AuthCredentials | smtpwire.CredentialsLookup) -> None:
        hook = "authenticate" if isinstance(event, smtpwire.AuthCredentials) else "credentials"
        self._queue(hook, (self.session, event), event)

    def _start_tls(self, event: smtpwire.StartTLSRequested) -> Step:
        if self._transcript is not None:
            self._transcript.read_up()
        self._tls_due = True
        return START_TLS

    def _connection_closed(self, event: smtpwire.ConnectionClosed) -> None:
        self._closing = True

    def _finish(self) -> None:
        """Queue the closing hooks, exactly once; after them, CLOSED."""
        if self._in_message:  # a message started and was never answered
            self._aborted(None)
        self._queue("disconnect", (self.session,), None)
        self.closed = True
        messages = f"{self._messages} message(s)"
        self.log.info("session %s: closed (%s, peer %s)", self.session.id, messages, self.session.peer_host)

    def _aborted(self, reply: Reply | None) -> None:
        self._in_message = False
        self._refusal = None
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
            self.log.error("session %s: hook %s returned %r, not a Reply", self.session.id, hook, result)
            result = self._fallback(event)
        self._answer(event, hook, result)

    def _failed(self, hook: str, event: smtpwire.Event | None, error: Exception) -> None:
        if isinstance(error, Reject):
            reply = error.reply
        else:
            self.log.error("session %s: hook %s failed", self.session.id, hook, exc_info=error)
            reply = self._fallback(event)
        if isinstance(event, smtpwire.MessageData):
            self._refusal = reply if reply.code >= 400 else LOCAL_ERROR
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
            self.log.error("session %s: hook %s answered %s: %s", self.session.id, hook, type(event).__name__, error)
            reply = self._fallback(event)
            conn.send(reply)
        if reply is None or reply.code in event.accepts:
            self._accepted(event)
        else:
            self._log_refusal(_refused(event), reply)
        if type(event) is smtpwire.EndOfMessage:
            self._in_message = False
            more = self.conn.transaction is not None  # LMTP: recipients are still due
            self._shared = (reply,) if more and hook != "deliver" else None
            self._delivered = self._delivered and more

    def _accepted(self, event: smtpwire.Decision) -> None:
        """Keep the session's envelope in step with what the core accepted."""
        if type(event) is smtpwire.MailFrom:
            self.session.envelope = Envelope(event.address, event.params)
        elif type(event) is smtpwire.RcptTo:
            envelope = self.session.envelope
            assert envelope is not None
            envelope.rcpt_tos.append(event.address)
            envelope.rcpt_params.append(event.params)
        elif type(event) is smtpwire.DataRequested:
            self._in_message = True
        elif type(event) is smtpwire.EndOfMessage and not self._delivered:  # LMTP: a message, not a recipient
            self._messages += 1
            self._delivered = True

    def _supply(self, event: smtpwire.CredentialsLookup, secret: object) -> None:
        try:
            self.conn.supply(secret)  # type: ignore[arg-type]
        except smtpwire.LocalProtocolError:
            self.log.error(
                "session %s: hook credentials returned a %s for %s", self.session.id, type(secret).__name__, event
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


def _refused(event: smtpwire.Decision) -> str:
    """What a refused decision was, for the log line."""
    if isinstance(event, smtpwire.MailFrom | smtpwire.RcptTo):
        return f"{_COMMANDS[type(event)]}<{event.address}>"
    if isinstance(event, smtpwire.EndOfMessage):
        return "the message" if event.recipient is None else f"the message for <{event.recipient}>"
    if isinstance(event, smtpwire.ExtensionCommand):
        return event.verb
    if isinstance(event, smtpwire.DataRequested):
        return "BDAT" if event.chunked else "DATA"
    return _COMMANDS.get(type(event), type(event).__name__)


_COMMANDS: dict[type[smtpwire.Event], str] = {
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

#: Decision and report events answered by a hook: (hook name, event fields passed after the session).
_HOOKS: dict[type[smtpwire.Event], tuple[str, tuple[str, ...]]] = {
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
_ON_EVENT: dict[type[smtpwire.Event], Callable[[SessionDriver, Any], Step | None]] = {
    **dict.fromkeys(_HOOKS, SessionDriver._hook),
    smtpwire.MessageData: SessionDriver._message_data,
    smtpwire.EndOfMessage: SessionDriver._end_of_message,
    smtpwire.MessageRejected: SessionDriver._message_rejected,
    smtpwire.CommandRejected: SessionDriver._command_rejected,
    smtpwire.AuthCredentials: SessionDriver._auth,
    smtpwire.CredentialsLookup: SessionDriver._auth,
    smtpwire.StartTLSRequested: SessionDriver._start_tls,
    smtpwire.ConnectionClosed: SessionDriver._connection_closed,
}
