"""Core events to hook calls, hook outcomes to replies: the part every adapter shares.

The driver does no I/O and calls no hook itself: it says which hook to call
(``hook_for``) and turns what the hook returned or raised into the reply
(``returned`` / ``failed``), so one driver serves plain and async hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import smtpwire
from smtpwire import Reply

from ._handler import Reject
from ._options import ServerOptions
from ._session import Envelope, Session, TLSInfo


@dataclass(frozen=True)
class HookCall:
    """Call ``handler.<name>(*args)``, then report the outcome to the driver."""

    name: str
    args: tuple[Any, ...]
    event: smtpwire.Event | None = None


LOCAL_ERROR = Reply(451, "Requested action aborted: local error in processing", (4, 3, 0))
#: RFC 4954 6: what a broken or unavailable credential check answers.
AUTH_UNAVAILABLE = Reply(454, "Temporary authentication failure", (4, 7, 0))
BAD_CREDENTIALS = Reply(535, "Authentication credentials invalid", (5, 7, 8))
_AUTH_EVENTS = (smtpwire.AuthCredentials, smtpwire.CredentialsLookup)


def _greeting_failed(hostname: str) -> Reply:
    return Reply(421, f"{hostname} Service not available, local error", (4, 3, 0))


def too_many_sessions(options: ServerOptions) -> bytes:
    """The ``421 4.7.0`` greeting for a connection over the session limit: write it, then close."""
    conn = options.new_connection()
    conn.next_event()  # a new connection's first event is always ConnectionOpened
    conn.send(Reply(421, f"{conn.config.hostname} Too many connections, try again later", (4, 7, 0)))
    return conn.data_to_send()


class SessionDriver:
    def __init__(self, session: Session, log: logging.Logger) -> None:
        self.session = session
        self.conn = session.conn
        self.log = log
        self._in_message = False
        self._refusal: Reply | None = None  # set when data_chunk failed: it decides the end of data
        self._stop: str | None = None  # None, "when idle" or "now": a shutdown's request
        self._withholding = False  # the transcript is inside a received AUTH line
        self._received_tail = b""

    @property
    def idle(self) -> bool:
        """Between transactions (none open, not inside DATA): a graceful shutdown may close it now."""
        return self.conn.transaction is None and self.conn.state is not smtpwire.State.DATA

    def request_stop(self, *, force: bool = False) -> bool:
        """A graceful shutdown asks the session to close with 421 4.3.2; True when it should be woken now."""
        self._stop = "now" if force else self._stop or "when idle"
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        """Whether the adapter should answer 421 4.3.2 (``conn.shutdown()``) instead of reading on."""
        return self._stop == "now" or (self._stop is not None and self.idle)

    # -- which hook ----------------------------------------------------------

    def hook_for(self, event: smtpwire.Event) -> HookCall | None:
        """The hook that answers or observes ``event`` (``None``: nothing to call)."""
        self._sync_envelope()
        session = self.session
        if isinstance(event, smtpwire.MessageData):
            return None if self._refusal else HookCall("data_chunk", (session, event.data), event)
        if isinstance(event, smtpwire.EndOfMessage):
            if self._refusal is not None:
                self.conn.send(self._refusal)
                return self._aborted(self._refusal)
            assert session.envelope is not None
            return HookCall("message", (session, session.envelope), event)
        if isinstance(event, smtpwire.MessageRejected):
            return self._aborted(event.reply)
        if isinstance(event, smtpwire.CommandRejected):
            return HookCall("error", (session, event.command, event.reply), event)
        if isinstance(event, smtpwire.AuthCredentials):
            return HookCall("authenticate", (session, event), event)
        if isinstance(event, smtpwire.CredentialsLookup):
            return HookCall("credentials", (session, event), event)
        hook = _HOOKS.get(type(event))
        if hook is None:
            return None
        name, fields = hook
        return HookCall(name, (session, *(getattr(event, f) for f in fields)), event)

    def tls_started(self, info: TLSInfo) -> HookCall | None:
        """A handshake finished: record it; after STARTTLS also reset the core and call ``tls_started``.

        Before the greeting (implicit TLS, RFC 8314) there is nothing to reset
        and no hook to call.
        """
        self.session.tls = info
        if self.conn.state is not smtpwire.State.TLS_HANDSHAKE:
            self.session.implicit_tls = True
            return None
        self.conn.tls_established()
        self._sync_envelope()
        return HookCall("tls_started", (self.session,))

    def shown(self, received: bytes) -> str:
        """How the transcript shows received bytes: anything near an AUTH exchange is withheld.

        A chunk is withheld while the core reads SASL responses, when it (with
        the end of the chunk before) holds "AUTH", and until such a line ends.
        """
        window = (self._received_tail + received).upper()
        withhold = self._withholding or self.conn.state is smtpwire.State.AUTH or b"AUTH" in window
        self._received_tail = received[-4:]
        self._withholding = withhold and not received.endswith(b"\n")
        return f"[{len(received)} bytes of an AUTH exchange withheld]" if withhold else repr(received[:1024])

    def closing_calls(self) -> list[HookCall]:
        """What to call when the connection ends, whatever the reason."""
        calls = [self._aborted(None)] if self._in_message else []
        return [*calls, HookCall("disconnect", (self.session,))]

    # -- what came of it -------------------------------------------------------

    def returned(self, call: HookCall, result: object) -> None:
        event = call.event
        if not isinstance(event, smtpwire.Decision):
            return
        if isinstance(event, smtpwire.CredentialsLookup) and not isinstance(result, Reply):
            self._supply(event, result)
            return
        if isinstance(event, smtpwire.AuthCredentials) and isinstance(result, bool | None):
            result = None if result is True else BAD_CREDENTIALS  # a forgotten return lets nobody in
        if result is not None and not isinstance(result, Reply):
            self.log.error("session %s: hook %s returned %r, not a Reply", self.session.id, call.name, result)
            result = self._fallback(event)
        self._answer(event, call.name, result)

    def failed(self, call: HookCall, error: Exception) -> None:
        if isinstance(error, Reject):
            reply = error.reply
        else:
            self.log.error("session %s: hook %s failed", self.session.id, call.name, exc_info=error)
            reply = self._fallback(call.event)
        if isinstance(call.event, smtpwire.MessageData):
            self._refusal = reply if reply.code >= 400 else LOCAL_ERROR
        elif isinstance(call.event, smtpwire.Decision):
            self._answer(call.event, call.name, reply)

    # -- internals -------------------------------------------------------------

    def _answer(self, event: smtpwire.Decision, hook: str, reply: Reply | None) -> None:
        reply = reply or event.default_reply(self.conn.config.hostname)
        try:
            self.conn.send(reply)
        except smtpwire.LocalProtocolError as error:
            self.log.error("session %s: hook %s answered %s: %s", self.session.id, hook, type(event).__name__, error)
            reply = self._fallback(event)
            self.conn.send(reply)
        if reply.code in event.accepts:
            if isinstance(event, smtpwire.MailFrom):
                self.session.envelope = Envelope(event.address, event.params)
            elif isinstance(event, smtpwire.RcptTo) and self.session.envelope is not None:
                self.session.envelope.rcpt_tos.append(event.address)
                self.session.envelope.rcpt_params.append(event.params)
        self._in_message = self.conn.state is smtpwire.State.DATA
        self._sync_envelope()

    def _supply(self, event: smtpwire.CredentialsLookup, secret: object) -> None:
        try:
            self.conn.supply(secret)  # type: ignore[arg-type]
        except smtpwire.LocalProtocolError:
            self.log.error(
                "session %s: hook credentials returned a %s for %s", self.session.id, type(secret).__name__, event
            )
            self.conn.send(AUTH_UNAVAILABLE)

    def _aborted(self, reply: Reply | None) -> HookCall:
        self._in_message = False
        self._refusal = None
        return HookCall("message_aborted", (self.session, reply))

    def _fallback(self, event: smtpwire.Event | None) -> Reply:
        if isinstance(event, smtpwire.ConnectionOpened):
            return _greeting_failed(self.conn.config.hostname)
        if isinstance(event, _AUTH_EVENTS):
            return AUTH_UNAVAILABLE
        return LOCAL_ERROR

    def _sync_envelope(self) -> None:
        if self.conn.transaction is None:
            self.session.envelope = None


#: Decision and report events answered by a hook: (hook name, event fields passed after the session).
_HOOKS: dict[type[smtpwire.Event], tuple[str, tuple[str, ...]]] = {
    smtpwire.ConnectionOpened: ("connect", ()),
    smtpwire.Helo: ("helo", ("name",)),
    smtpwire.Ehlo: ("ehlo", ("name",)),
    smtpwire.MailFrom: ("mail_from", ("address", "params")),
    smtpwire.RcptTo: ("rcpt_to", ("address", "params")),
    smtpwire.DataRequested: ("data_start", ()),
    smtpwire.Vrfy: ("vrfy", ("argument",)),
    smtpwire.Rset: ("rset", ()),
    smtpwire.Quit: ("quit", ()),
}


def run_hook(driver: SessionDriver, handler: object, call: HookCall | None) -> None:
    """Call a plain hook and report its outcome."""
    if call is None:
        return
    hook: Callable[..., object] = getattr(handler, call.name)
    try:
        result = hook(*call.args)
    except Exception as error:
        driver.failed(call, error)
    else:
        driver.returned(call, result)


async def run_async_hook(driver: SessionDriver, handler: object, call: HookCall | None) -> None:
    """Await a coroutine hook and report its outcome (cancellation passes through)."""
    if call is None:
        return
    hook: Callable[..., Awaitable[object]] = getattr(handler, call.name)
    try:
        result = await hook(*call.args)
    except Exception as error:
        driver.failed(call, error)
    else:
        driver.returned(call, result)
