"""Milters as a stock handler, as Postfix runs them: each stage of each session goes through a chain of filters.

One connection per SMTP session per milter, opened at ``connect``.  The
stages are Postfix's: connect, HELO, MAIL, RCPT, DATA; at the end of the
data the header fields (the store's Received field on top, the very text it
writes), the end of headers, the body and the end of the message, milter by
milter, each seeing what the ones before it changed.  Their changes then
reach the store: header fields and body in the message handed to it, the
envelope's in ``envelope.milter_changes``, a quarantine as a Maildir++
folder (Postfix holds such a message; a folder is the nearest a store that
does not relay has).

A milter that cannot be reached, times out, closes or says something
malformed gets its ``default_action`` for the rest of the session, logged
once: ``tempfail`` (451 4.7.1 to every MAIL and to the command under way),
``reject`` (550 5.7.1), ``accept`` (the milter is left out).  The message is
held in memory meanwhile, as in ``envelope.content``, bounded by the
server's message size limit.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from smtpwire import Reply
from smtpwire_filters import _milter_codec as codec
from smtpwire_filters._milter import EnvelopeChanges, MilterMessage, MilterSession, Outcome, Step

from ._around import Around, settled
from ._handler import AsyncHandler, Handler, Params
from ._listen import service_address
from ._session import Envelope, Session
from ._trace import trace_headers

log = logging.getLogger("smtpwire.milter")

DefaultAction = Literal["tempfail", "accept", "reject"]
#: Where a session's milter connections are kept.
CHAIN = "smtpwire.milters"
REJECTED = Reply(550, "Command rejected", (5, 7, 1))
TEMPFAILED = Reply(451, "Service unavailable - try again later", (4, 7, 1))
_DEFAULT_REPLIES = {"tempfail": TEMPFAILED, "reject": REJECTED}
_SESSION_STAGES = ("connect", "helo")  # a verdict there holds for the whole session
_READ = 65536 + 16


@dataclass(frozen=True)
class MilterSpec:
    """One milter: ``address`` ``inet:HOST:PORT`` (``inet:[::1]:PORT``) or ``unix:PATH``, its timeouts and default.

    Timeouts in seconds, as Postfix's ``milter_connect_timeout`` (30),
    ``milter_command_timeout`` (30: the negotiation and the envelope
    stages) and ``milter_content_timeout`` (300: the header, body and end of
    message, each reply); ``default_action`` as ``milter_default_action``.
    """

    address: str
    connect_timeout: float = 30.0
    command_timeout: float = 30.0
    content_timeout: float = 300.0
    default_action: DefaultAction = "tempfail"
    endpoint: tuple[str, int] | str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.default_action not in ("tempfail", "accept", "reject"):
            raise ValueError(f"a milter's default action is tempfail, accept or reject, not {self.default_action!r}")
        if min(self.connect_timeout, self.command_timeout, self.content_timeout) <= 0:
            raise ValueError("a milter's timeouts are positive seconds")
        object.__setattr__(self, "endpoint", parse_milter_address(self.address))


def parse_milter_address(address: str) -> tuple[str, int] | str:
    """``inet:HOST:PORT`` as ``(host, port)``, ``unix:PATH`` as the path; anything else a ``ValueError`` saying why."""
    return service_address(address, "milter address")


class _Link:
    """One milter's connection in one SMTP session."""

    def __init__(self, spec: MilterSpec) -> None:
        self.spec = spec
        self.milter = MilterSession()
        self.stream: Any = None  # a socket, or an anyio byte stream
        self.active = True  # False once the milter accepted the session, or failed
        self.message_done = False  # it accepted this message: no more of it
        self.in_transaction = False  # it heard MAIL, and no end of message or abort since


class _Chain:
    """A session's milters and what they decided for it."""

    def __init__(self, specs: Sequence[MilterSpec]) -> None:
        self.links = [_Link(spec) for spec in specs]
        self.refusal: Reply | None = None  # for every MAIL of the session
        self.discard_session = False
        self.discard_message = False

    def working(self) -> list[_Link]:
        return [link for link in self.links if link.active and not link.message_done]


class _Milters(Around):
    """What both handlers share: the macros of each stage and what each outcome means for the client."""

    WRAPS = frozenset(
        {"connect", "helo", "ehlo", "mail_from", "rcpt_to", "data_start", "data_chunk", "message", "message_aborted"}
        | {"rset", "disconnect"}
    )
    #: Stages whose replies may take ``content_timeout`` rather than ``command_timeout``.
    CONTENT: ClassVar[frozenset[str]] = frozenset({"message"})

    def __init__(
        self,
        store: Handler | AsyncHandler,
        milters: Sequence[MilterSpec],
        hostname: str | None = None,
        quarantine_folder: str = "Quarantine",
    ) -> None:
        super().__init__(store)
        self.milters = tuple(milters)
        self.hostname = hostname if hostname is not None else getattr(store, "hostname", None)
        self.quarantine_folder = quarantine_folder

    # -- the commands each stage sends ------------------------------------------------------------

    def connect_step(self, session: Session, milter: MilterSession) -> Step:
        family, port = _family(session)
        return milter.connect(self.connect_macros(session), "unknown", family, port, session.peer_host)

    def connect_macros(self, session: Session) -> dict[str, str]:
        local = session.local
        macros = {"j": session.conn.config.hostname, "_": f"unknown [{session.peer_host}]", "v": "smtpwire"}
        macros |= {"{daemon_name}": "smtpwire", "{client_addr}": session.peer_host, "{client_name}": "unknown"}
        if isinstance(session.peer, tuple):
            macros["{client_port}"] = str(session.peer[1])
        if isinstance(local, tuple):
            macros["{daemon_addr}"] = str(local[0])
        return macros

    @staticmethod
    def helo_macros(session: Session) -> dict[str, str]:
        tls = session.tls
        if tls is None:
            return {}
        macros = {"{tls_version}": tls.version or "", "{cipher}": tls.cipher or "", "{cipher_bits}": str(tls.bits)}
        return {name: value for name, value in macros.items() if value}

    @staticmethod
    def mail_macros(session: Session, address: str) -> dict[str, str]:
        macros = {"i": session.id, "{mail_addr}": address}
        if session.authenticated is not None:
            user = session.authenticated
            macros |= {"{auth_type}": user.mechanism, "{auth_authen}": user.username}
            macros |= {"{auth_author}": user.authzid} if user.authzid else {}
        return macros

    def message_of(self, session: Session, envelope: Envelope) -> MilterMessage:
        """The message as the milters see it: the store's trace fields but Return-Path (Postfix adds that later)."""
        trace = trace_headers(session, envelope, self.hostname)
        if trace.startswith(b"Return-Path:"):
            trace = trace.split(b"\n", 1)[1]
        message, envelope.content = bytes(envelope.content), bytearray()
        return MilterMessage.parse(trace, message)

    # -- what outcomes mean --------------------------------------------------------------------

    def verdict(self, session: Session, chain: _Chain, link: _Link, outcome: Outcome, stage: str) -> Reply | None:
        """The refusal of the command under way, if any; session-wide verdicts are kept on ``chain``."""
        final = outcome.final
        if isinstance(final, codec.MilterError):
            return self.failed(session, chain, link, final.reason, stage)
        if isinstance(final, codec.Accept):
            if stage in _SESSION_STAGES:
                link.active = False
            link.message_done = True
            return None
        if isinstance(final, codec.Discard):
            chain.discard_session |= stage in _SESSION_STAGES
            chain.discard_message = True
            return None
        reply = _reply_of(final)
        if reply is None:
            return None
        log.info("session %s: milter %s refused at %s: %s", session.id, link.spec.address, stage, reply.lines[0])
        if stage in _SESSION_STAGES:
            chain.refusal = chain.refusal or reply
            return None
        return reply

    def failed(self, session: Session, chain: _Chain, link: _Link, reason: str, stage: str) -> Reply | None:
        """The milter's default action, for the rest of the session; logged once, as the milter is left then."""
        link.milter.broken(reason)
        link.active = False
        action = link.spec.default_action
        log.warning("session %s: milter %s at %s: %s; %s", session.id, link.spec.address, stage, reason, action)
        if action == "accept":
            return None
        reply = _DEFAULT_REPLIES[action]
        chain.refusal = chain.refusal or reply
        return None if stage in _SESSION_STAGES else reply

    def finish(self, session: Session, envelope: Envelope, chain: _Chain, message: MilterMessage) -> bytes | None:
        """The message for the store (``None``: discarded), with the envelope's changes recorded."""
        if chain.discard_message:
            log.info("session %s: a milter discarded the message", session.id)
            return None
        changes = message.envelope
        if changes != EnvelopeChanges():
            envelope.milter_changes = changes
            log.info("session %s: milters changed the envelope: %s", session.id, changes)
        if changes.quarantine is not None:
            envelope.folder = self.quarantine_folder
        if message.ignored:
            log.info("session %s: milters may not change the trace fields: %s", session.id, message.ignored)
        return message.stored()

    def chain(self, session: Session) -> _Chain:
        chain: _Chain | None = session.state.get(CHAIN)
        if chain is None:
            chain = session.state[CHAIN] = _Chain(self.milters)
        return chain

    def timeout(self, link: _Link, stage: str) -> float:
        return link.spec.content_timeout if stage in self.CONTENT else link.spec.command_timeout

    def started_transaction(self, chain: _Chain, stage: str) -> None:
        if stage == "mail_from":
            chain.discard_message = chain.discard_session
            for link in chain.links:
                link.message_done = False


def _reply_of(final: codec.Final) -> Reply | None:
    """The SMTP reply a milter's final word asks for (``None``: go on); its own reply code passes as it is."""
    if isinstance(final, codec.Reject):
        return REJECTED
    if isinstance(final, codec.Tempfail):
        return TEMPFAILED
    if isinstance(final, codec.ReplyCode):
        try:
            return Reply(final.code, final.lines, final.enhanced)
        except Exception:  # a reply the core cannot send (too long): refused as the class says
            return REJECTED if final.code >= 500 else TEMPFAILED
    return None


def _family(session: Session) -> tuple[str, int]:
    if not isinstance(session.peer, tuple):
        return "U", 0
    return ("6" if ":" in session.peer_host else "4"), int(session.peer[1])


# -- the blocking handler ---------------------------------------------------------------------


class MilterHandler(_Milters, Handler):
    """Runs ``store`` behind the chain of ``milters``, for the blocking and MemoryBIO adapters (plain sockets).

    ``hostname`` is the store's (its ``hostname`` attribute by default), so
    the Received field the milters see is the one it writes;
    ``quarantine_folder`` the Maildir++ folder a quarantined message goes to.
    """

    store: Handler

    def connect(self, session: Session) -> Reply | None:
        chain = self.chain(session)
        for link in chain.links:
            self._open(session, chain, link)
        self._stage(session, "connect", lambda link: self.connect_step(session, link.milter))
        return self.store.connect(session)

    def helo(self, session: Session, name: str) -> Reply | None:
        macros = self.helo_macros(session)
        self._stage(session, "helo", lambda link: link.milter.helo(macros, name))
        return self.store.helo(session, name)

    def ehlo(self, session: Session, name: str) -> Reply | None:
        macros = self.helo_macros(session)
        self._stage(session, "helo", lambda link: link.milter.helo(macros, name))
        return self.store.ehlo(session, name)

    def mail_from(self, session: Session, address: str, params: Params) -> Reply | None:
        chain = self.chain(session)
        self._abort(session, chain)
        if chain.refusal is not None:
            return chain.refusal
        macros, args = self.mail_macros(session, address), codec.smtp_params(params)
        reply = self._stage(session, "mail_from", lambda link: link.milter.mail(macros, address, args))
        if reply is not None:
            self._abort(session, chain)
            return reply
        return self.store.mail_from(session, address, params)

    def rcpt_to(self, session: Session, address: str, params: Params) -> Reply | None:
        macros, args = {"{rcpt_addr}": address}, codec.smtp_params(params)
        reply = self._stage(session, "rcpt_to", lambda link: link.milter.rcpt(macros, address, args))
        return reply or self.store.rcpt_to(session, address, params)

    def data_start(self, session: Session) -> Reply | None:
        reply = self._stage(session, "data_start", lambda link: link.milter.data({"i": session.id}))
        return reply or self.store.data_start(session)

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        chain = self.chain(session)
        message = self.message_of(session, envelope)
        reply = None
        for link in chain.working() if not chain.discard_message else ():
            step = link.milter.message({"i": session.id}, message.headers(), message.body)
            outcome = self._exchange(link, step, "message")
            link.in_transaction = False
            reply = self.verdict(session, chain, link, outcome, "message")
            if reply is not None or chain.discard_message:
                break
            message.apply(outcome.modifications)
        self._abort(session, chain)
        stored = None if reply is not None else self.finish(session, envelope, chain, message)
        if stored is None:
            self.store.message_aborted(session, reply)
            return reply
        self.store.data_chunk(session, stored)
        return self.store.message(session, envelope)

    def message_aborted(self, session: Session, reply: Reply | None) -> None:
        self._abort(session, self.chain(session))
        self.store.message_aborted(session, reply)

    def rset(self, session: Session) -> None:
        self._abort(session, self.chain(session))
        self.store.rset(session)

    def disconnect(self, session: Session) -> None:
        chain = session.state.pop(CHAIN, None)
        for link in chain.links if chain is not None else ():
            if link.stream is not None:
                with contextlib.suppress(OSError):
                    link.stream.settimeout(link.spec.command_timeout)
                    link.stream.sendall(link.milter.quit())
                link.stream.close()
        self.store.disconnect(session)

    # -- the I/O ---------------------------------------------------------------------------------

    def _stage(self, session: Session, stage: str, step: Callable[[_Link], Step]) -> Reply | None:
        chain = self.chain(session)
        self.started_transaction(chain, stage)
        for link in chain.working():
            link.in_transaction |= stage == "mail_from"
            reply = self.verdict(session, chain, link, self._exchange(link, step(link), stage), stage)
            if reply is not None:
                return reply
        return None

    def _open(self, session: Session, chain: _Chain, link: _Link) -> None:
        endpoint, timeout = link.spec.endpoint, link.spec.connect_timeout
        try:
            if isinstance(endpoint, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                link.stream = sock
                sock.settimeout(timeout)
                sock.connect(endpoint)
            else:
                link.stream = socket.create_connection(endpoint, timeout=timeout)
        except OSError as error:
            self._close(link)
            self.failed(session, chain, link, f"cannot connect: {error}", "connect")
            return
        outcome = self._exchange(link, link.milter.negotiate(), "negotiate")
        if isinstance(outcome.final, codec.MilterError):
            self.failed(session, chain, link, outcome.final.reason, "connect")

    def _exchange(self, link: _Link, step: Step, stage: str) -> Outcome:
        """One stage with one milter: send, read until its outcome, each reply within the stage's time limit."""
        sock, limit = link.stream, self.timeout(link, stage)
        deadline = time.monotonic() + limit
        try:
            while True:
                if step.data:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    sock.sendall(step.data)
                    deadline = time.monotonic() + limit
                if step.outcome is not None:
                    return step.outcome
                if step.progress:
                    deadline = time.monotonic() + limit
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                step = link.milter.receive(sock.recv(_READ))
        except TimeoutError:
            return self._lost(link, f"no answer within {limit:g} s")
        except OSError as error:
            return self._lost(link, f"the connection broke: {error}")

    def _lost(self, link: _Link, reason: str) -> Outcome:
        self._close(link)
        return link.milter.broken(reason)

    def _abort(self, session: Session, chain: _Chain) -> None:
        """ABORT to each milter that heard this transaction begin (it sends no reply)."""
        for link in chain.links:
            if link.in_transaction and link.active:
                try:
                    link.stream.settimeout(link.spec.command_timeout)
                    link.stream.sendall(link.milter.abort())
                except OSError as error:
                    self._close(link)
                    self.failed(session, chain, link, f"the connection broke: {error}", "abort")
            link.in_transaction = False

    @staticmethod
    def _close(link: _Link) -> None:
        if link.stream is not None:
            link.stream.close()
            link.stream = None


# -- the async handler ------------------------------------------------------------------------


class AsyncMilterHandler(_Milters, AsyncHandler):
    """``MilterHandler`` for the asyncio and anyio adapters (asyncio and trio), on anyio's streams.

    ``store`` may be an ``AsyncHandler`` or a ``Handler``.
    """

    async def connect(self, session: Session) -> Reply | None:
        chain = self.chain(session)
        for link in chain.links:
            await self._open(session, chain, link)
        await self._stage(session, "connect", lambda link: self.connect_step(session, link.milter))
        result: Reply | None = await settled(self.store.connect(session))
        return result

    async def helo(self, session: Session, name: str) -> Reply | None:
        macros = self.helo_macros(session)
        await self._stage(session, "helo", lambda link: link.milter.helo(macros, name))
        result: Reply | None = await settled(self.store.helo(session, name))
        return result

    async def ehlo(self, session: Session, name: str) -> Reply | None:
        macros = self.helo_macros(session)
        await self._stage(session, "helo", lambda link: link.milter.helo(macros, name))
        result: Reply | None = await settled(self.store.ehlo(session, name))
        return result

    async def mail_from(self, session: Session, address: str, params: Params) -> Reply | None:
        chain = self.chain(session)
        await self._abort(session, chain)
        if chain.refusal is not None:
            return chain.refusal
        macros, args = self.mail_macros(session, address), codec.smtp_params(params)
        reply = await self._stage(session, "mail_from", lambda link: link.milter.mail(macros, address, args))
        if reply is not None:
            await self._abort(session, chain)
            return reply
        result: Reply | None = await settled(self.store.mail_from(session, address, params))
        return result

    async def rcpt_to(self, session: Session, address: str, params: Params) -> Reply | None:
        macros, args = {"{rcpt_addr}": address}, codec.smtp_params(params)
        reply = await self._stage(session, "rcpt_to", lambda link: link.milter.rcpt(macros, address, args))
        result: Reply | None = reply or await settled(self.store.rcpt_to(session, address, params))
        return result

    async def data_start(self, session: Session) -> Reply | None:
        reply = await self._stage(session, "data_start", lambda link: link.milter.data({"i": session.id}))
        result: Reply | None = reply or await settled(self.store.data_start(session))
        return result

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        chain = self.chain(session)
        message = self.message_of(session, envelope)
        reply = None
        for link in chain.working() if not chain.discard_message else ():
            step = link.milter.message({"i": session.id}, message.headers(), message.body)
            outcome = await self._exchange(link, step, "message")
            link.in_transaction = False
            reply = self.verdict(session, chain, link, outcome, "message")
            if reply is not None or chain.discard_message:
                break
            message.apply(outcome.modifications)
        await self._abort(session, chain)
        stored = None if reply is not None else self.finish(session, envelope, chain, message)
        if stored is None:
            await settled(self.store.message_aborted(session, reply))
            return reply
        await settled(self.store.data_chunk(session, stored))
        result: Reply | None = await settled(self.store.message(session, envelope))
        return result

    async def message_aborted(self, session: Session, reply: Reply | None) -> None:
        await self._abort(session, self.chain(session))
        await settled(self.store.message_aborted(session, reply))

    async def rset(self, session: Session) -> None:
        await self._abort(session, self.chain(session))
        await settled(self.store.rset(session))

    async def disconnect(self, session: Session) -> None:
        import anyio

        chain = session.state.pop(CHAIN, None)
        for link in chain.links if chain is not None else ():
            if link.stream is not None:
                with contextlib.suppress(Exception), anyio.fail_after(link.spec.command_timeout):
                    await link.stream.send(link.milter.quit())
                await _close_stream(link)
        await settled(self.store.disconnect(session))

    # -- the I/O ---------------------------------------------------------------------------------

    async def _stage(self, session: Session, stage: str, step: Callable[[_Link], Step]) -> Reply | None:
        chain = self.chain(session)
        self.started_transaction(chain, stage)
        for link in chain.working():
            link.in_transaction |= stage == "mail_from"
            reply = self.verdict(session, chain, link, await self._exchange(link, step(link), stage), stage)
            if reply is not None:
                return reply
        return None

    async def _open(self, session: Session, chain: _Chain, link: _Link) -> None:
        import anyio

        endpoint = link.spec.endpoint
        try:
            with anyio.fail_after(link.spec.connect_timeout):
                if isinstance(endpoint, str):
                    link.stream = await anyio.connect_unix(endpoint)
                else:
                    link.stream = await anyio.connect_tcp(*endpoint)
        except (OSError, TimeoutError) as error:
            self.failed(session, chain, link, f"cannot connect: {error or 'timed out'}", "connect")
            return
        outcome = await self._exchange(link, link.milter.negotiate(), "negotiate")
        if isinstance(outcome.final, codec.MilterError):
            self.failed(session, chain, link, outcome.final.reason, "connect")

    async def _exchange(self, link: _Link, step: Step, stage: str) -> Outcome:
        """As ``MilterHandler._exchange``: each reply within the stage's time limit, every failure an outcome."""
        import anyio

        limit = self.timeout(link, stage)
        stream = link.stream
        try:
            while True:
                with anyio.fail_after(limit):
                    if step.data:
                        await stream.send(step.data)
                    if step.outcome is not None:
                        return step.outcome
                    step = await self._reply(link, stream)
        except TimeoutError:
            return await self._lost(link, f"no answer within {limit:g} s")
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as error:
            return await self._lost(link, f"the connection broke: {error!r}")

    @staticmethod
    async def _reply(link: _Link, stream: Any) -> Step:
        """Read until the step moves on: a whole reply, the filter's end, or a "still working"."""
        import anyio

        while True:
            try:
                data = await stream.receive(_READ)
            except anyio.EndOfStream:
                data = b""
            step: Step = link.milter.receive(data)
            if step.data or step.outcome is not None or step.progress:
                return step

    async def _lost(self, link: _Link, reason: str) -> Outcome:
        await _close_stream(link)
        return link.milter.broken(reason)

    async def _abort(self, session: Session, chain: _Chain) -> None:
        import anyio

        for link in chain.links:
            if link.in_transaction and link.active:
                try:
                    with anyio.fail_after(link.spec.command_timeout):
                        await link.stream.send(link.milter.abort())
                except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError) as error:
                    await _close_stream(link)
                    self.failed(session, chain, link, f"the connection broke: {error!r}", "abort")
            link.in_transaction = False


async def _close_stream(link: _Link) -> None:
    if link.stream is not None:
        stream, link.stream = link.stream, None
        with contextlib.suppress(Exception):
            await stream.aclose()
