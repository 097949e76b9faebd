"""A Postfix policy server (postgrey, policyd-spf, your own) asked at RCPT, as Postfix's check_policy_service asks.

The handler wraps the store that keeps the message.  At each stage asked
(``PolicyService.stages``: RCPT by default; MAIL, DATA and END-OF-MESSAGE
when wanted) it sends the attributes Postfix sends and applies the action:

- OK, DUNNO: the store's own hook decides.  WARN: logged, then the same.
  FILTER, REDIRECT, BCC and INFO change nothing for a server that stores
  and does not relay: logged, then the same.
- REJECT: 550 5.7.1; DEFER: 450 4.7.1; ``4xx``/``5xx text``: as given,
  with 4.7.1/5.7.1 when the text starts with no enhanced code.  The store's
  hook is not called.
- DEFER_IF_PERMIT: 450 4.7.1 if the store's hook accepts, else its refusal
  (how postgrey greylists).  DEFER_IF_REJECT: 450 4.7.1 if the store's hook
  refuses with a 5xx, else its answer.  At END-OF-MESSAGE nothing decides
  after the policy server, so the first defers and the second lets the
  message through, as Postfix's implicit permit at the end of a list.
- PREPEND header, HOLD, DISCARD (once the command they answer is
  accepted): the header goes on top of the message as the store gets it
  (below the store's own trace headers), HOLD files the message into the
  Maildir++ folder ``Hold`` (``envelope.folder``), DISCARD answers 250 and
  the store never gets the message (its ``message_aborted`` is called).

The message is held in memory until the end of data (``envelope.content``,
bounded by the server's message size limit) and handed to the store then,
with the headers on top, as ``SenderAuthentication`` does.  A policy server
that is down, slow past ``timeout`` or says something that is not the
protocol gets the default action, Postfix's
``smtpd_policy_service_default_action``.  Connections are kept open and
reused across sessions, at most ``connections`` at once; one the server
closed while idle is replaced once, at once.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from anyio.lowlevel import RunVar

from smtpwire import Reply
from smtpwire_filters._policy import (
    PolicyAction,
    PolicyKind,
    PolicyReplyError,
    PolicyReplyReader,
    parse_action,
    policy_request,
)

from ._around import Around, settled, then_call
from ._handler import AsyncHandler, Handler, MaybeAwaitable, Params, Reject
from ._listen import service_address
from ._session import Envelope, Session, TLSInfo

log = logging.getLogger("smtpwire.policy")

#: The stages a policy server may be asked at, as Postfix names them in ``protocol_state``.
STAGES = frozenset({"MAIL", "RCPT", "DATA", "END-OF-MESSAGE"})
#: The Maildir++ folder HOLD files a message into.
HOLD_FOLDER = "Hold"
#: PREPENDed header fields one transaction keeps; later ones are logged and dropped.
MAX_PREPENDS = 100
_RECEIVE = 4096
_TEXT_OCTETS = 400  # of a policy server's text in a reply: it fits any reply line with its codes
_DEFAULT_TEXT = "Access denied"


@dataclass(frozen=True)
class PolicyService:
    """Where the policy server listens and how to use it; checked when made (``ValueError``).

    ``address`` is ``inet:HOST:PORT`` (``inet:[::1]:10023`` for IPv6) or
    ``unix:PATH``.  ``timeout`` bounds each request, waiting for a free
    connection included: 100 seconds, Postfix's
    ``smtpd_policy_service_timeout``.  ``default_action`` is what a server
    that is down, slow or garbled comes to, in the policy's own words
    (Postfix's default: ``451 4.3.5 Server configuration problem``; ``DUNNO``
    lets mail through instead).  ``context`` is sent as ``policy_context``.
    ``connections`` bounds the connections kept open to the server: a
    Postfix process keeps one for its one session, a server here serves many.
    """

    address: str
    timeout: float = 100.0
    default_action: str = "451 4.3.5 Server configuration problem"
    stages: frozenset[str] = frozenset({"RCPT"})
    context: str = ""
    connections: int = 4
    #: ``(host, port)`` for ``inet:``, the path for ``unix:``, read from ``address``.
    endpoint: tuple[str, int] | str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoint", policy_endpoint(self.address))
        if not self.timeout > 0:
            raise ValueError(f"the policy service timeout must be above 0 seconds, not {self.timeout!r}")
        if self.connections < 1:
            raise ValueError(f"at least one connection to the policy service, not {self.connections!r}")
        unknown = set(self.stages) - STAGES
        if unknown or not self.stages:
            raise ValueError(f"policy stages are some of {sorted(STAGES)}, not {sorted(self.stages)}")
        try:
            parse_action(self.default_action)
        except PolicyReplyError as error:
            raise ValueError(f"the policy default action {self.default_action!r} is not an action") from error


def policy_endpoint(address: str) -> tuple[str, int] | str:
    """``inet:HOST:PORT`` as ``(host, port)``, ``unix:PATH`` as the path; ``ValueError`` for anything else."""
    return service_address(address, "policy service")


@dataclass
class _Transaction:
    """What the policy said about one mail transaction that acts at its end."""

    instance: str
    headers: list[str] = field(default_factory=list)
    hold: bool = False
    discard: bool = False


class _Policy(Around):
    """What both handlers share: the request's attributes and what an action means for the client and the store."""

    WRAPS = frozenset({"mail_from", "rcpt_to", "data_start", "data_chunk", "message"})
    _instances: Iterator[int] = itertools.count(1)

    def __init__(self, store: Handler | AsyncHandler, service: PolicyService) -> None:
        super().__init__(store)
        self.service = service
        self.default = parse_action(service.default_action)
        self._key = f"smtpwire.policy.{id(self)}"

    # -- the request --

    def begin(self, session: Session) -> _Transaction:
        """A new transaction's record, with its ``instance`` (one per transaction, as Postfix's)."""
        record = session.state[self._key] = _Transaction(f"{session.id}.{next(self._instances)}")
        return record

    def transaction(self, session: Session) -> _Transaction:
        record = session.state.get(self._key)
        return record if isinstance(record, _Transaction) else self.begin(session)

    def attributes(
        self, session: Session, stage: str, address: str = "", params: Params | None = None, size: int | None = None
    ) -> dict[str, str]:
        """What Postfix sends at ``stage``: every attribute it has, empty where this server knows nothing."""
        envelope = session.envelope
        recipients = envelope.rcpt_tos if envelope is not None else []
        mail_params = params if stage == "MAIL" else envelope.mail_params if envelope is not None else {}
        sender = address if stage == "MAIL" else envelope.mail_from if envelope is not None else ""
        recipient = address if stage == "RCPT" else recipients[0] if len(recipients) == 1 else ""
        authenticated = session.authenticated
        peer, local = session.peer, session.local
        return {
            "request": "smtpd_access_policy",
            "protocol_state": stage,
            "protocol_name": "ESMTP" if session.esmtp else "SMTP",
            "helo_name": session.helo_name or "",
            "queue_id": "",
            "sender": sender,
            "recipient": recipient,
            "recipient_count": str(len(recipients)) if stage in ("DATA", "END-OF-MESSAGE") else "0",
            "client_address": str(peer[0]) if isinstance(peer, tuple) else "",
            "client_name": "unknown",  # no reverse DNS here, as Postfix with smtpd_peername_lookup = no
            "reverse_client_name": "unknown",
            "instance": self.transaction(session).instance,
            "sasl_method": authenticated.mechanism if authenticated else "",
            "sasl_username": authenticated.username if authenticated else "",
            "sasl_sender": "",
            "size": str(size if size is not None else _declared_size(mail_params or {})),
            **_certificate(session.tls),
            "encryption_protocol": (session.tls.version or "") if session.tls else "",
            "encryption_cipher": (session.tls.cipher or "") if session.tls else "",
            "encryption_keysize": str(session.tls.bits or 0) if session.tls else "0",
            "etrn_domain": "",
            "stress": "",
            "client_port": str(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else "",
            "server_address": str(local[0]) if isinstance(local, tuple) else "",
            "server_port": str(local[1]) if isinstance(local, tuple) and len(local) > 1 else "",
            "policy_context": self.service.context,
        }

    def noted(self, session: Session, stage: str, action: PolicyAction) -> PolicyAction:
        """The action, after logging what it asks to log (WARN) or what is not applied here."""
        if action.kind is PolicyKind.WARN:
            log.warning("session %s: policy server warns at %s: %s", session.id, stage, action.text)
        elif action.ignored is not None:
            log.info("session %s: policy action %s at %s is not applied here", session.id, action.ignored, stage)
        return action

    def failed(self, session: Session, stage: str, error: BaseException) -> PolicyAction:
        """The default action, for a policy server that did not answer by the protocol."""
        log.warning(
            "session %s: policy service %s at %s: %s; default action %r",
            session.id,
            self.service.address,
            stage,
            str(error) or type(error).__name__,
            self.service.default_action,
        )
        return self.default

    # -- what an action means --

    def refusal(self, action: PolicyAction) -> Reply | None:
        """The reply for an action that refuses outright (REJECT, DEFER, a numeric reply); ``None`` otherwise."""
        if action.kind in (PolicyKind.REJECT, PolicyKind.DEFER, PolicyKind.REPLY):
            return _reply(action)
        return None

    def concluded(self, session: Session, action: PolicyAction, answer: Reply | None) -> Reply | None:
        """The reply, from the action and the store's own ``answer`` to the same command (``None``: accepted)."""
        accepted = answer is None or answer.is_positive
        if action.kind is PolicyKind.DEFER_IF_PERMIT and accepted:
            return _reply(action)
        if action.kind is PolicyKind.DEFER_IF_REJECT and answer is not None and answer.code >= 500:
            return _reply(action)
        if accepted:
            self.keep(session, action)
        return answer

    def final(self, session: Session, action: PolicyAction) -> Reply | None:
        """END-OF-MESSAGE: the refusal, with nothing after the policy to permit or reject (see the module)."""
        if action.kind is PolicyKind.DEFER_IF_PERMIT:
            return _reply(action)
        refusal = self.refusal(action)
        if refusal is None:
            self.keep(session, action)
        return refusal

    def keep(self, session: Session, action: PolicyAction) -> None:
        """Record what acts on the message at its end: a header to prepend, HOLD, DISCARD."""
        record = self.transaction(session)
        if action.kind is PolicyKind.PREPEND:
            if len(record.headers) < MAX_PREPENDS:
                record.headers.append(action.text)
            else:
                log.warning("session %s: more than %d policy PREPENDs; dropped", session.id, MAX_PREPENDS)
        elif action.kind is PolicyKind.HOLD:
            record.hold = True
        elif action.kind is PolicyKind.DISCARD:
            record.discard = True

    def to_store(self, session: Session, envelope: Envelope, message: bytes) -> bytes | None:
        """The message as the store gets it, headers on top (filed per HOLD); ``None``: DISCARDed."""
        record = session.state.pop(self._key, None)
        if not isinstance(record, _Transaction):
            return message
        if record.discard:
            log.info("session %s: message discarded by the policy server", session.id)
            return None
        if record.hold:
            log.info("session %s: message held (folder %s) by the policy server", session.id, HOLD_FOLDER)
            envelope.folder = HOLD_FOLDER
        headers = "".join(f"{header}\r\n" for header in record.headers)  # in the order given, as Postfix
        return headers.encode("utf-8", "replace") + message

    def store_answer(self, hook_name: str, session: Session, *args: Any) -> Any:
        """The store's own answer to the command (a ``Reject`` read as its reply), or ``None`` if it has no hook."""
        hook = self.store_hook(hook_name)
        if hook is None:
            return None
        try:
            return hook(session, *args)
        except Reject as refusal:
            return refusal.reply


def _reply(action: PolicyAction) -> Reply:
    """The reply for a refusing action: its code (550, 450 by kind), its enhanced code or X.7.1, its text."""
    code = action.code or (550 if action.kind is PolicyKind.REJECT else 450)
    enhanced = action.enhanced or (code // 100, 7, 1)
    text = "".join(c if c.isprintable() else "?" for c in action.text) or _DEFAULT_TEXT
    fitted = text.encode()[:_TEXT_OCTETS].decode("utf-8", "ignore")
    return Reply(code, fitted, enhanced)


def _declared_size(params: Params) -> int:
    """MAIL's SIZE parameter (0 when absent, as Postfix sends it)."""
    size = params.get("SIZE")
    return int(size) if size is not None and size.isdigit() else 0


def _certificate(tls: TLSInfo | None) -> dict[str, str]:
    """Postfix's ``ccert_*`` attributes: a verified client certificate's names and SHA-256 fingerprint."""
    if tls is None or tls.peer_certificate is None or tls.peer_certificate_der is None:
        return {"ccert_subject": "", "ccert_issuer": "", "ccert_fingerprint": "", "ccert_pubkey_fingerprint": ""}
    digest = hashlib.sha256(tls.peer_certificate_der).hexdigest().upper()
    return {
        "ccert_subject": _common_name(tls.peer_certificate.get("subject", ())),
        "ccert_issuer": _common_name(tls.peer_certificate.get("issuer", ())),
        "ccert_fingerprint": ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
        "ccert_pubkey_fingerprint": "",
    }


def _common_name(name: Any) -> str:
    """The commonName of a name as ``getpeercert()`` gives it (a tuple of RDNs of (key, value) pairs)."""
    for rdn in name:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class _Stale(ConnectionError):
    """A kept connection the server closed while it was idle: the request goes once more, on a new one."""


# -- the blocking client --


class _Connections:
    """Up to ``service.connections`` connections to the policy server, kept open between requests."""

    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(service.connections)

    def ask(self, request: bytes) -> PolicyAction:
        deadline = time.monotonic() + self.service.timeout
        if not self._slots.acquire(timeout=self.service.timeout):
            raise TimeoutError("every connection to the policy service stayed busy")
        try:
            with self._lock:
                kept = self._idle.pop() if self._idle else None
            if kept is not None:
                try:
                    return self._exchange(kept, request, deadline)
                except _Stale:
                    pass
            return self._exchange(self._connect(deadline), request, deadline)
        finally:
            self._slots.release()

    def _connect(self, deadline: float) -> socket.socket:
        endpoint = self.service.endpoint
        if isinstance(endpoint, tuple):
            sock = socket.create_connection(endpoint, timeout=_left(deadline))
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(_left(deadline))
                sock.connect(endpoint)
            except BaseException:
                sock.close()
                raise
        return sock

    def _exchange(self, sock: socket.socket, request: bytes, deadline: float) -> PolicyAction:
        """The reply on ``sock``, which is kept for the next request if the server stayed in step."""
        reader = PolicyReplyReader()
        try:
            action = self._converse(sock, reader, request, deadline)
        except BaseException:
            sock.close()
            raise
        if reader.trailing:
            sock.close()
        else:
            with self._lock:
                self._idle.append(sock)
        return action

    @staticmethod
    def _converse(sock: socket.socket, reader: PolicyReplyReader, request: bytes, deadline: float) -> PolicyAction:
        heard = False
        try:
            sock.settimeout(_left(deadline))
            sock.sendall(request)
            while True:
                sock.settimeout(_left(deadline))
                data = sock.recv(_RECEIVE)
                if not data and not heard:
                    raise _Stale("the policy server closed the connection")
                heard = True
                action = reader.receive(data)
                if action is not None:
                    return action
        except ConnectionError as error:
            if heard or isinstance(error, _Stale):
                raise
            raise _Stale(str(error)) from error


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the policy service did not answer in time")
    return left


#: What a policy server that is down, slow or garbled comes to (then the default action applies).
_FAILURES = (OSError, PolicyReplyError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


class PolicyHandler(_Policy, Handler):
    """Asks ``service``'s policy server, for the blocking and MemoryBIO adapters, around ``store``.

    See the module for what each action does.  Connections are shared by
    every session of the handler (one server: one handler).
    """

    store: Handler

    def __init__(self, store: Handler, service: PolicyService) -> None:
        super().__init__(store, service)
        self.connections = _Connections(service)

    def ask(self, session: Session, stage: str, attributes: dict[str, str]) -> PolicyAction:
        try:
            action = self.connections.ask(policy_request(attributes))
        except _FAILURES as error:
            return self.failed(session, stage, error)
        return self.noted(session, stage, action)

    def mail_from(self, session: Session, address: str, params: Params) -> Reply | None:
        self.begin(session)
        return self._checked(session, "MAIL", "mail_from", address, params)

    def rcpt_to(self, session: Session, address: str, params: Params) -> Reply | None:
        return self._checked(session, "RCPT", "rcpt_to", address, params)

    def data_start(self, session: Session) -> Reply | None:
        return self._checked(session, "DATA", "data_start")

    def _checked(self, session: Session, stage: str, hook: str, *args: Any) -> Reply | None:
        if stage not in self.service.stages:
            answer: Reply | None = self.store_answer(hook, session, *args)
            return answer
        action = self.ask(session, stage, self.attributes(session, stage, *args))
        refusal = self.refusal(action)
        if refusal is not None:
            return refusal
        return self.concluded(session, action, self.store_answer(hook, session, *args))

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        message, envelope.content = bytes(envelope.content), bytearray()  # the store gets it back at the end
        if "END-OF-MESSAGE" in self.service.stages:
            attributes = self.attributes(session, "END-OF-MESSAGE", size=len(message))
            refusal = self.final(session, self.ask(session, "END-OF-MESSAGE", attributes))
            if refusal is not None:
                self.store.message_aborted(session, refusal)
                return refusal
        stored = self.to_store(session, envelope, message)
        if stored is None:
            self.store.message_aborted(session, None)
            return None
        self.store.data_chunk(session, stored)
        return self.store.message(session, envelope)


# -- the async client --


@dataclass
class _LoopConnections:
    """The connections of one event loop, and the bound on them (anyio's objects belong to the loop made in)."""

    slots: anyio.Semaphore
    idle: list[anyio.abc.ByteStream] = field(default_factory=list)


class _AsyncConnections:
    """``_Connections`` on anyio streams (asyncio or trio), kept per event loop and made there on first use."""

    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self._per_loop = RunVar[_LoopConnections | None](f"policy connections {id(self)}", None)

    def _here(self) -> _LoopConnections:
        connections = self._per_loop.get()
        if connections is None:
            connections = _LoopConnections(anyio.Semaphore(self.service.connections))
            self._per_loop.set(connections)
        return connections

    async def ask(self, request: bytes) -> PolicyAction:
        connections = self._here()
        with anyio.fail_after(self.service.timeout):
            async with connections.slots:
                kept = connections.idle.pop() if connections.idle else None
                if kept is not None:
                    try:
                        return await self._exchange(connections, kept, request)
                    except _Stale:
                        pass
                return await self._exchange(connections, await self._connect(), request)

    async def _connect(self) -> anyio.abc.ByteStream:
        endpoint = self.service.endpoint
        stream: anyio.abc.ByteStream
        if isinstance(endpoint, tuple):
            stream = await anyio.connect_tcp(*endpoint)
        else:
            stream = await anyio.connect_unix(endpoint)
        return stream

    async def _exchange(
        self, connections: _LoopConnections, stream: anyio.abc.ByteStream, request: bytes
    ) -> PolicyAction:
        reader = PolicyReplyReader()
        try:
            action = await self._converse(stream, reader, request)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        if reader.trailing:
            await anyio.aclose_forcefully(stream)
        else:
            connections.idle.append(stream)
        return action

    @staticmethod
    async def _converse(stream: anyio.abc.ByteStream, reader: PolicyReplyReader, request: bytes) -> PolicyAction:
        heard = False
        try:
            await stream.send(request)
            while True:
                try:
                    data = await stream.receive(_RECEIVE)
                except anyio.EndOfStream:
                    data = b""
                if not data and not heard:
                    raise _Stale("the policy server closed the connection")
                heard = True
                action = reader.receive(data)
                if action is not None:
                    return action
        except (ConnectionError, anyio.BrokenResourceError) as error:
            if heard or isinstance(error, _Stale):
                raise
            raise _Stale(str(error)) from error


class AsyncPolicyHandler(_Policy, AsyncHandler):
    """``PolicyHandler`` for the asyncio and anyio adapters (asyncio or trio); ``store`` may be either kind.

    Hooks at a stage the server is not asked at answer inline, as the
    store's would; the others wait for the policy server.
    """

    def __init__(self, store: Handler | AsyncHandler, service: PolicyService) -> None:
        super().__init__(store, service)
        self.connections = _AsyncConnections(service)

    async def ask(self, session: Session, stage: str, attributes: dict[str, str]) -> PolicyAction:
        try:
            action = await self.connections.ask(policy_request(attributes))
        except _FAILURES as error:
            return self.failed(session, stage, error)
        return self.noted(session, stage, action)

    def mail_from(self, session: Session, address: str, params: Params) -> MaybeAwaitable[Reply | None]:
        self.begin(session)
        return self._checked(session, "MAIL", "mail_from", address, params)

    def rcpt_to(self, session: Session, address: str, params: Params) -> MaybeAwaitable[Reply | None]:
        return self._checked(session, "RCPT", "rcpt_to", address, params)

    def data_start(self, session: Session) -> MaybeAwaitable[Reply | None]:
        return self._checked(session, "DATA", "data_start")

    def _checked(self, session: Session, stage: str, hook: str, *args: Any) -> MaybeAwaitable[Reply | None]:
        if stage not in self.service.stages:
            answer: MaybeAwaitable[Reply | None] = self.store_answer(hook, session, *args)
            return answer
        return self._after_policy(session, stage, hook, *args)

    async def _after_policy(self, session: Session, stage: str, hook: str, *args: Any) -> Reply | None:
        action = await self.ask(session, stage, self.attributes(session, stage, *args))
        refusal = self.refusal(action)
        if refusal is not None:
            return refusal
        try:
            answer = await settled(self.store_answer(hook, session, *args))
        except Reject as refused:
            answer = refused.reply
        return self.concluded(session, action, answer)

    def message(self, session: Session, envelope: Envelope) -> MaybeAwaitable[Reply | None]:
        message, envelope.content = bytes(envelope.content), bytearray()  # the store gets it back at the end
        if "END-OF-MESSAGE" in self.service.stages:
            return self._message_after_policy(session, envelope, message)
        return self._store(session, envelope, message)

    async def _message_after_policy(self, session: Session, envelope: Envelope, message: bytes) -> Reply | None:
        attributes = self.attributes(session, "END-OF-MESSAGE", size=len(message))
        refusal = self.final(session, await self.ask(session, "END-OF-MESSAGE", attributes))
        if refusal is not None:
            await settled(self.store.message_aborted(session, refusal))
            return refusal
        result: Reply | None = await settled(self._store(session, envelope, message))
        return result

    def _store(self, session: Session, envelope: Envelope, message: bytes) -> MaybeAwaitable[Reply | None]:
        """The message handed to the store (inline while its hooks do not wait), or dropped for DISCARD."""
        stored = self.to_store(session, envelope, message)
        if stored is None:
            return _nothing_after(self.store.message_aborted(session, None))
        fed = self.store.data_chunk(session, stored)
        if inspect.isawaitable(fed):
            return then_call(fed, self.store.message, session, envelope)
        return self.store.message(session, envelope)


def _nothing_after(pending: MaybeAwaitable[None]) -> MaybeAwaitable[None]:
    """``None``, once ``pending`` (a hook's answer that may be an awaitable) is done."""
    return _settle_to_none(pending) if inspect.isawaitable(pending) else None


async def _settle_to_none(pending: Any) -> None:
    await settled(pending)
