"""The application's side: hooks mirroring the Net::Server::Mail callbacks.

A hook that answers a command returns a ``Reply`` (or ``None`` for the
standard positive answer) or raises ``Reject(reply)``; ``authenticate`` and
``credentials`` are the exceptions, as the safe default there is "no".  Any other exception
is a bug in the application: it is logged and the client gets 451 4.3.0 (421
for the greeting), and the session goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from types import MappingProxyType
from typing import TypeAlias, TypeVar

from smtpwire import AuthCredentials, CredentialsLookup, Reply, ScramCredentials

from ._session import Envelope, Session

Params = Mapping[str, str | None]
T = TypeVar("T")
#: What an ``AsyncHandler`` hook returns: the answer itself, or an awaitable of it (``async def``).
MaybeAwaitable: TypeAlias = T | Awaitable[T]


class Reject(Exception):
    """Raise from any hook to answer with ``reply`` (from ``data_chunk``: the end of data)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {' '.join(reply.lines)}")
        self.reply = reply


class Handler:
    """Plain hooks for the blocking and MemoryBIO adapters; every default accepts."""

    def connect(self, session: Session) -> Reply | None:
        """Before the greeting: return 554 to refuse the client politely."""

    def helo(self, session: Session, name: str) -> Reply | None:
        """HELO ``name``."""

    def ehlo(self, session: Session, name: str) -> Reply | None:
        """EHLO ``name``; the core appends the extension keywords to a 250."""

    def mail_from(self, session: Session, address: str, params: Params) -> Reply | None:
        """MAIL FROM; ``address`` is ``""`` for the null reverse-path."""

    def rcpt_to(self, session: Session, address: str, params: Params) -> Reply | None:
        """RCPT TO, one recipient."""

    def data_start(self, session: Session) -> Reply | None:
        """DATA: return a 4xx/5xx to refuse the message before it is sent."""

    def data_chunk(self, session: Session, data: bytes) -> None:
        """A dot-unstuffed piece of the message; the default keeps it in the envelope (``keep_data``)."""
        keep_data(session.envelope, data)

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        """The message ended intact: store it, then return (the 250 goes out after)."""

    def deliver(self, session: Session, envelope: Envelope, recipient: str) -> Reply | None:
        """LMTP only: deliver the message to one accepted ``recipient`` and answer for it (RFC 2033 4.2).

        Called once per recipient, in RCPT order.  Left as it is, ``message``
        is called once and its answer goes to every recipient.
        """

    def message_aborted(self, session: Session, reply: Reply | None) -> None:
        """A message that started will not be delivered (refused with ``reply``, or the peer left)."""

    def vrfy(self, session: Session, argument: str) -> Reply | None:
        """VRFY; the default 252 neither confirms nor denies."""

    def command(self, session: Session, verb: str, argument: str) -> Reply | None:
        """A verb an extension declared (``smtpwire.Verb``); the default is the extension's ``answer`` (250 OK)."""

    def rset(self, session: Session) -> None:
        """RSET (already answered 250)."""

    def quit(self, session: Session) -> None:
        """QUIT (already answered 221)."""

    def authenticate(self, session: Session, credentials: AuthCredentials) -> bool | Reply | None:
        """AUTH PLAIN/LOGIN: True accepts (235), False or None refuses (535 5.7.8); the default refuses.

        Check ``credentials.password`` for ``credentials.username``, and that
        the user may act as ``credentials.authzid`` when it is not empty.
        """
        return DEFAULT_OUTCOMES["authenticate"]

    def credentials(self, session: Session, lookup: CredentialsLookup) -> ScramCredentials | str | Reply | None:
        """AUTH SCRAM-SHA-256: the user's stored ``ScramCredentials`` (CRAM-MD5: the password).

        ``None`` (the default) for no such user, or when ``lookup.username``
        may not act as ``lookup.authzid``: the attempt then fails with 535.
        """

    def tls_started(self, session: Session) -> None:
        """TLS is up and the session was reset (and AUTH, by default, becomes available)."""

    def error(self, session: Session, command: str, reply: Reply) -> None:
        """The core refused a command (syntax, sequence, limits) with ``reply``."""

    def disconnect(self, session: Session) -> None:
        """The connection is gone; called once per session."""


class AsyncHandler:
    """The same hooks for the asyncio and anyio adapters, each either ``async def`` or plain ``def``.

    A plain hook runs inline, at no more cost than a function call: use it
    for hooks that never wait (a sink, a policy check in memory).  An ``async
    def`` hook is awaited, and reading from that client pauses until it
    answers; other sessions go on.  Hooks left as they are here cost nothing.
    """

    def connect(self, session: Session) -> MaybeAwaitable[Reply | None]:
        """Before the greeting."""

    def helo(self, session: Session, name: str) -> MaybeAwaitable[Reply | None]:
        """HELO ``name``."""

    def ehlo(self, session: Session, name: str) -> MaybeAwaitable[Reply | None]:
        """EHLO ``name``."""

    def mail_from(self, session: Session, address: str, params: Params) -> MaybeAwaitable[Reply | None]:
        """MAIL FROM."""

    def rcpt_to(self, session: Session, address: str, params: Params) -> MaybeAwaitable[Reply | None]:
        """RCPT TO."""

    def data_start(self, session: Session) -> MaybeAwaitable[Reply | None]:
        """DATA."""

    def data_chunk(self, session: Session, data: bytes) -> MaybeAwaitable[None]:
        """A piece of the message; the default keeps it in the envelope (``keep_data``)."""
        keep_data(session.envelope, data)
        return None

    def message(self, session: Session, envelope: Envelope) -> MaybeAwaitable[Reply | None]:
        """The message ended intact."""

    def deliver(self, session: Session, envelope: Envelope, recipient: str) -> MaybeAwaitable[Reply | None]:
        """LMTP only: deliver to one accepted ``recipient`` and answer for it; see ``Handler.deliver``."""

    def message_aborted(self, session: Session, reply: Reply | None) -> MaybeAwaitable[None]:
        """A started message will not be delivered."""

    def vrfy(self, session: Session, argument: str) -> MaybeAwaitable[Reply | None]:
        """VRFY."""

    def command(self, session: Session, verb: str, argument: str) -> MaybeAwaitable[Reply | None]:
        """A verb an extension declared; the default is the extension's answer."""

    def rset(self, session: Session) -> MaybeAwaitable[None]:
        """RSET."""

    def quit(self, session: Session) -> MaybeAwaitable[None]:
        """QUIT."""

    def authenticate(self, session: Session, credentials: AuthCredentials) -> MaybeAwaitable[bool | Reply | None]:
        """AUTH PLAIN/LOGIN: True accepts, False or None refuses; the default refuses."""
        return DEFAULT_OUTCOMES["authenticate"]

    def credentials(
        self, session: Session, lookup: CredentialsLookup
    ) -> MaybeAwaitable[ScramCredentials | str | Reply | None]:
        """AUTH SCRAM-SHA-256 (CRAM-MD5): the stored secret, ``None`` for no such user."""

    def tls_started(self, session: Session) -> MaybeAwaitable[None]:
        """TLS is up and the session was reset."""

    def error(self, session: Session, command: str, reply: Reply) -> MaybeAwaitable[None]:
        """The core refused a command."""

    def disconnect(self, session: Session) -> MaybeAwaitable[None]:
        """The connection is gone."""


def keep_data(envelope: Envelope | None, data: bytes) -> None:
    """What ``data_chunk`` does when left as it is: the data goes on ``envelope.content``."""
    assert envelope is not None  # message data only comes inside a transaction
    envelope.content += data


#: What each hook comes to when the handler leaves it as it is, applied by the driver without calling it.
#: ``None`` is the standard answer (for a hook that answers nothing: nothing to do), except that
#: ``authenticate`` refuses, so nobody gets in unless the application says who, and ``data_chunk``
#: keeps the data in the envelope (``keep_data``).
DEFAULT_OUTCOMES: Mapping[str, bool | None] = MappingProxyType(
    {**dict.fromkeys((name for name in vars(Handler) if not name.startswith("_")), None), "authenticate": False}
)
