"""``MailServer``: a real SMTP server on 127.0.0.1, a port of its own, in a background thread, for tests.

It binds port 0 (the system picks a free port: safe when tests run in
parallel) and reports the real one, never looks its own name up in DNS, and
``stop()`` may be called any number of times and always frees the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias

import smtpwire
from smtpwire_asyncio import ServerOptions, Session

from ._faults import Delay, Disconnect, Fail, Fault, Faults, Match, Point, RateLimit, Throttle, injected_reply
from ._handler import RecordingHandler
from ._listener import DroppingServer, FaultyStartTLS
from ._outbox import Mailbag, Outbox
from ._thread import LoopThread
from ._tls import client_context, server_context, test_ca
from ._transcript import TranscriptRecorder

TLSMode: TypeAlias = Literal["starttls", "implicit", "both"] | None
TLS_MODES = (None, "starttls", "implicit", "both")
#: Postfix's default ``message_size_limit`` (postconf(5)): what strict mode refuses beyond, 552 5.3.4.
POSTFIX_MESSAGE_SIZE_LIMIT = 10_240_000
#: What ``smtpwire serve`` offers by default. Not CRAM-MD5: smtplib tries it first, so with it offered one
#: wrong password costs three failures (CRAM-MD5, PLAIN, LOGIN), the third ends the session with 421, and the
#: application's PLAIN/LOGIN path is never exercised. Ask for it with ``auth_mechanisms=``.
DEFAULT_AUTH_MECHANISMS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_names = itertools.count(1)


class MailServerView:
    """What one test sees of a server: the messages since it began, faults it set, its sessions' transcript.

    A ``MailServer`` is its own first view; ``server.view()`` makes more (the
    pytest plugin gives each test one of a shared server), and ``close()``
    lifts the view's faults.
    """

    def __init__(self, server: MailServer) -> None:
        self.server = server
        self.outbox = Outbox(server.mailbag)
        self._faults: list[Fault | Throttle] = []
        self._transcript_mark = server.transcript_recorder.mark()

    # -- where it is ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.server._host

    @property
    def port(self) -> int:
        """The plain (or, with ``tls="implicit"``, the implicit-TLS) port."""
        return self.server._port

    @property
    def tls_port(self) -> int | None:
        """The implicit-TLS port (``tls="implicit"`` or ``"both"``), else ``None``."""
        return self.server._tls_port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def hostname(self) -> str:
        return self.server._hostname

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the test CA (hostname checked: connect to 127.0.0.1 or localhost)."""
        return self.server.client_ssl_context

    # -- faults --------------------------------------------------------------------------

    def fail(
        self,
        point: Point,
        reply: smtpwire.Reply | int | None = None,
        *,
        match: Match = None,
        times: int | None = None,
        probability: float | None = None,
        seed: int | None = None,
    ) -> Fault:
        """Answer the command at ``point`` with ``reply`` (a ``Reply``, or a bare 4xx/5xx code; default 451,
        554 at ``"connect"``, 454 at ``"starttls"``): every time, ``times`` times, or with ``probability``
        drawn from ``random.Random(seed)``; only for commands naming ``match`` (an address, EHLO name or user,
        or a predicate on them; at ``"data"``/``"end_of_data"``: any recipient)."""
        action = Fail(injected_reply(point, reply))
        return self._add(Fault(point, action, match=match, times=times, probability=probability, seed=seed))

    def disconnect_at(
        self,
        point: Point,
        *,
        abrupt: bool = True,
        match: Match = None,
        times: int | None = None,
        probability: float | None = None,
        seed: int | None = None,
    ) -> Fault:
        """Drop the connection at ``point`` without a reply (``abrupt=False``: say 421 4.4.2 and close).
        At ``"end_of_data"`` the message is then not recorded: the client cannot know it was not delivered."""
        if point == "starttls" and not abrupt:
            raise ValueError("the core answers STARTTLS itself: a disconnect there can only be abrupt")
        action = Disconnect(abrupt)
        return self._add(Fault(point, action, match=match, times=times, probability=probability, seed=seed))

    def delay(
        self,
        point: Point,
        seconds: float,
        *,
        match: Match = None,
        times: int | None = None,
        probability: float | None = None,
        seed: int | None = None,
    ) -> Fault:
        """Wait ``seconds`` before answering the command at ``point`` (to test the client's timeouts)."""
        if point == "starttls":
            raise ValueError("the core answers STARTTLS itself: it cannot be delayed")
        if not seconds >= 0:
            raise ValueError(f"seconds must be at least 0, not {seconds!r}")
        action = Delay(seconds)
        return self._add(Fault(point, action, match=match, times=times, probability=probability, seed=seed))

    def rate_limit(self, messages: int, per: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> Fault:
        """Accept ``messages`` MAIL commands in any ``per`` seconds (the server's, all clients together), and
        answer those past it ``421 4.7.0`` and close, as Postfix's ``smtpd_client_message_rate_limit`` does;
        ``clock`` (``time.monotonic``) may be a test's own, to move time on without waiting."""
        return self._add(RateLimit(messages, per, clock))

    def throttle(self, bytes_per_second: float) -> Throttle:
        """Read every connection at ``bytes_per_second`` at most (the slowest throttle wins), as over a slow
        link: the client's sending takes as long as its bytes do at that rate, and its write timeouts can fire."""
        if not bytes_per_second > 0:
            raise ValueError(f"bytes_per_second must be positive, not {bytes_per_second!r}")
        throttle = Throttle(bytes_per_second)
        self._faults.append(throttle)
        return self.server.faults.add_throttle(throttle)

    def clear_faults(self) -> None:
        """Lift every fault this view set."""
        self.server.faults.remove(self._faults)
        self._faults.clear()

    def _add(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        return self.server.faults.add(fault)

    # -- what happened -------------------------------------------------------------------

    @property
    def transcript(self) -> str:
        """The wire transcript of the sessions since this view began (AUTH exchanges withheld)."""
        return self.server.transcript_recorder.text(since=self._transcript_mark)

    def close(self) -> None:
        self.clear_faults()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} {len(self.outbox)} message(s)>"


class MailServer(MailServerView):
    """A test SMTP server: ``with MailServer() as server:`` (or ``start()``/``stop()``).

    ``tls``: ``"starttls"`` offers STARTTLS on ``port``; ``"implicit"`` makes
    ``port`` an implicit-TLS port (RFC 8314); ``"both"`` offers STARTTLS on
    ``port`` and implicit TLS on ``tls_port``.  ``users`` (name to password)
    turns AUTH on (also without TLS unless ``auth_requires_tls``);
    ``require_auth`` / ``require_tls`` refuse mail until then.  ``strict``
    refuses what Postfix refuses (see the docs).  ``lmtp`` speaks LMTP
    (RFC 2033): each recipient gets its own reply, and its own copy in the
    outbox.  ``discard`` answers 250 and keeps nothing (the outbox stays
    empty).  ``config`` is the core's ``ServerConfig`` to start from.
    """

    def __init__(
        self,
        *,
        hostname: str = "localhost",
        host: str = "127.0.0.1",
        tls: TLSMode = None,
        users: Mapping[str, str] | None = None,
        auth_mechanisms: Sequence[str] = DEFAULT_AUTH_MECHANISMS,
        auth_requires_tls: bool = False,
        require_auth: bool = False,
        require_tls: bool = False,
        strict: bool = False,
        lmtp: bool = False,
        discard: bool = False,
        config: smtpwire.ServerConfig | None = None,
        ca: Any = None,
        loop: str = "asyncio",
    ) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, not {tls!r}")
        self._hostname = hostname
        self._host = host
        self.tls = tls
        self.users = dict(users or {})
        self.strict = strict
        self.lmtp = lmtp
        self.mailbag = Mailbag()
        self.faults = Faults()
        self.transcript_recorder = TranscriptRecorder()
        self._port = 0
        self._tls_port: int | None = None
        self._state = "new"
        self._ca = ca
        self._loop_name = loop
        self._thread: LoopThread | None = None
        self._listener = DroppingServer(
            RecordingHandler(
                bag=self.mailbag,
                faults=self.faults,
                transcript=self.transcript_recorder,
                users=self.users,
                drop=self._drop,
                hostname=hostname,
                discard=discard,
            ),
            self._options(config, auth_mechanisms, auth_requires_tls, require_auth, require_tls),
            listen=[(host, 0)] if tls != "implicit" else [],
            tls_listen=[(host, 0)] if tls in ("implicit", "both") else [],
            faults=self.faults,
        )
        self.mailbag.in_transaction = self._listener.in_transaction
        super().__init__(self)

    @property
    def client_ssl_context(self) -> ssl.SSLContext:
        if self.tls is None:
            raise AttributeError("this server has no TLS: start it with tls='starttls', 'implicit' or 'both'")
        return client_context(self.ca)

    @property
    def ca(self) -> Any:
        """The ``trustme.CA`` the server's certificate comes from (one per process unless given)."""
        if self._ca is None:
            self._ca = test_ca()
        return self._ca

    def view(self) -> MailServerView:
        """A fresh view: an empty outbox and no faults of its own."""
        return MailServerView(self)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve; returns once the server listens (``port`` then holds the real port)."""
        if self._state != "new":
            raise RuntimeError(f"this MailServer is {self._state}: make a new one")
        self._state = "running"
        self._thread = LoopThread(f"smtpwire-testing-{next(_names)}", self._loop_name)
        self._thread.start(_START_TIMEOUT)
        self.transcript_recorder.attach()
        try:
            self._thread.call(self._listener.start(), _START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        if self._listener.addresses:
            self._port = self._listener.addresses[0][1]
        if self._listener.tls_addresses:
            self._tls_port = self._listener.tls_addresses[0][1]
            self._port = self._port or self._tls_port
        return self

    def stop(self) -> None:
        """Close the listeners and every connection now, and end the thread; idempotent."""
        thread, self._thread = self._thread, None
        self._state = "stopped"
        if thread is None:
            return
        try:
            with contextlib.suppress(Exception):
                thread.call(_shut_down(self._listener), _STOP_TIMEOUT)
        finally:
            thread.stop(_STOP_TIMEOUT)
            self.transcript_recorder.detach()
            self.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------

    def _options(
        self,
        config: smtpwire.ServerConfig | None,
        mechanisms: Sequence[str],
        auth_requires_tls: bool,
        require_auth: bool,
        require_tls: bool,
    ) -> ServerOptions:
        base = config or smtpwire.ServerConfig()
        extensions = tuple(e for e in base.extensions if not isinstance(e, smtpwire.StartTLS | smtpwire.Auth))
        if self.tls is not None:
            extensions = (*extensions, FaultyStartTLS(self.faults, self._drop_connection))
        if not any(isinstance(e, smtpwire.Dsn) for e in extensions):
            extensions = (*extensions, smtpwire.Dsn())  # so a client's NOTIFY=, RET= ... reach the envelope
        if self.users:
            extensions = (*extensions, smtpwire.Auth(tuple(mechanisms), require_tls=auth_requires_tls))
        changes: dict[str, Any] = {"hostname": self._hostname, "extensions": extensions}
        changes.update({"require_auth": True} if require_auth else {})
        changes.update({"require_tls": True} if require_tls else {})
        changes.update({"lmtp": True} if self.lmtp else {})
        if self.strict:
            changes.update(strict_changes(base))
        context = server_context(self.ca, self._hostname) if self.tls is not None else None
        return ServerOptions(config=dataclasses.replace(base, **changes), tls_context=context)

    def _drop(self, session: Session) -> None:
        self.transcript_recorder.dropped(session.id)
        self._listener.drop(session)

    def _drop_connection(self, conn: smtpwire.ServerConnection) -> None:
        session = self._listener.drop_connection(conn)
        if session is not None:
            self.transcript_recorder.dropped(session.id)

    def __repr__(self) -> str:
        return f"<MailServer {self.host}:{self.port} {self._state} {len(self.mailbag.messages)} message(s)>"


def strict_changes(base: smtpwire.ServerConfig) -> dict[str, Any]:
    """What strict mode changes in the core's config (each line a refusal Postfix makes by default)."""
    return {
        "bare_line_endings": "reject",
        "max_message_size": min(base.max_message_size, POSTFIX_MESSAGE_SIZE_LIMIT),
    }


async def _shut_down(listener: DroppingServer) -> None:
    """Drop everything at once (a test server owes no grace), then end whatever tasks are left."""
    listener.abort()
    await asyncio.sleep(0)
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
