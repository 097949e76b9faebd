"""What happened on the connection, as small frozen values.

``Decision`` events pause the connection until the application answers with
``send(reply)`` or ``accept()``; the others are already answered by the core
(or need no answer) and are reported so the application can log or react.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ._errors import LocalProtocolError
from ._reply import AUTHENTICATED, BAD_CREDENTIALS, OK, Reply, cached_reply

#: The standard positive answers that name no host: built (and serialised) once.
_SENDER_OK = Reply(250, "OK", (2, 1, 0))
_RECIPIENT_OK = Reply(250, "OK", (2, 1, 5))
_START_INPUT = Reply(354, "End data with <CR><LF>.<CR><LF>")

Parameters = Mapping[str, str | None]


class Event:
    """Base class of everything ``next_event()`` returns besides the sentinels."""

    __slots__ = ()


class Decision(Event):
    """An event the application must answer before the connection goes on.

    ``accepts`` lists the positive reply codes; any 4xx or 5xx reply declines.
    ``default_reply`` is what ``accept()`` sends.
    """

    __slots__ = ()
    accepts: ClassVar[frozenset[int]]
    #: RFC 2034: the greeting and the HELO/EHLO answers carry no enhanced code.
    enhanced_codes: ClassVar[bool] = True

    def default_reply(self, hostname: str) -> Reply:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    def answered_by(self, code: int) -> bool:
        """Whether a reply with this code is a valid answer (RFC 5321 4.3.2)."""
        return code in self.accepts or code >= 400

    def carries_enhanced_code(self, code: int) -> bool:
        """Whether the reply with this code gets an RFC 3463 code (when the server offers them)."""
        return self.enhanced_codes


@dataclass(frozen=True)
class ConnectionOpened(Decision):
    """Before the greeting: answer 220 to serve, 554 to refuse, 421 to go away.

    RFC 2034 leaves the greeting without an enhanced code; a refusal carries
    one anyway (``421 4.7.0``), as it is the only reply that client will get.
    """

    #: What the greeting names: ``"ESMTP"``, or ``"LMTP"`` when the server speaks LMTP.
    protocol: str = "ESMTP"
    accepts: ClassVar[frozenset[int]] = frozenset({220})

    def default_reply(self, hostname: str) -> Reply:
        return cached_reply(220, f"{hostname} {self.protocol} smtpwire")

    def answered_by(self, code: int) -> bool:
        return code in (220, 421, 554)

    def carries_enhanced_code(self, code: int) -> bool:
        return code != 220


@dataclass(frozen=True)
class Helo(Decision):
    """HELO: the client greeted without asking for extensions.

    ``name`` is a domain or an address literal of at most 255 octets (RFC 5321
    4.1.1.1, 4.5.3.1.2), so it can go into a ``Received:`` field as it is.
    """

    name: str
    accepts: ClassVar[frozenset[int]] = frozenset({250})
    enhanced_codes: ClassVar[bool] = False

    def default_reply(self, hostname: str) -> Reply:
        return cached_reply(250, hostname)


@dataclass(frozen=True)
class Ehlo(Decision):
    """EHLO (LHLO in LMTP): a positive answer gets the extension keywords appended by the core.

    ``name`` as for HELO.
    """

    name: str
    accepts: ClassVar[frozenset[int]] = frozenset({250})
    enhanced_codes: ClassVar[bool] = False

    def default_reply(self, hostname: str) -> Reply:
        return cached_reply(250, hostname)  # echoing the client's name could overflow the line


@dataclass(frozen=True)
class MailFrom(Decision):
    """MAIL FROM: ``address`` is ``""`` for the null reverse-path ``<>``.

    ``params`` maps upper-cased ESMTP keywords to their values (``None`` for a
    keyword without ``=value``), already validated by the extensions.
    """

    address: str
    params: Parameters = field(default_factory=dict, hash=False)
    accepts: ClassVar[frozenset[int]] = frozenset({250})

    def default_reply(self, hostname: str) -> Reply:
        return _SENDER_OK


@dataclass(frozen=True)
class RcptTo(Decision):
    """RCPT TO: one recipient; source routes are already dropped."""

    address: str
    params: Parameters = field(default_factory=dict, hash=False)
    accepts: ClassVar[frozenset[int]] = frozenset({250, 251})

    def default_reply(self, hostname: str) -> Reply:
        return _RECIPIENT_OK


@dataclass(frozen=True)
class DataRequested(Decision):
    """DATA with at least one accepted recipient: 354 starts the message.

    ``chunked`` when the message starts with a BDAT chunk instead (RFC
    3030): accepting sends nothing, as the chunk follows at once and is
    answered when read; a 4xx/5xx refuses it, and the core discards its
    octets.
    """

    chunked: bool = False
    accepts: ClassVar[frozenset[int]] = frozenset({354})

    def default_reply(self, hostname: str) -> Reply:
        return _START_INPUT


@dataclass(frozen=True)
class EndOfMessage(Decision):
    """The whole message arrived intact; answer 250 only once it is stored.

    In LMTP there is one per accepted recipient, in RCPT order, each with its
    ``recipient`` and each answered on its own (RFC 2033 4.2); the
    transaction ends with the last.  In SMTP ``recipient`` is ``None``.
    """

    recipient: str | None = None
    accepts: ClassVar[frozenset[int]] = frozenset({250})

    def default_reply(self, hostname: str) -> Reply:
        return OK


@dataclass(frozen=True)
class Vrfy(Decision):
    """VRFY: the default answer neither confirms nor denies (RFC 5321 3.5.3)."""

    argument: str
    accepts: ClassVar[frozenset[int]] = frozenset({250, 251, 252})

    def default_reply(self, hostname: str) -> Reply:
        return Reply(252, "Cannot VRFY user, but will accept message and attempt delivery", (2, 5, 0))


@dataclass(frozen=True)
class AuthCredentials(Decision):
    """AUTH PLAIN or LOGIN: check the password, and that ``username`` may act as ``authzid``.

    ``authzid`` is ``""`` when the client asked for no other identity.  235
    authenticates; 535 5.7.8 refuses (a failed attempt); 454 4.7.0 says the
    check itself failed.  The password is left out of the repr.
    """

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)
    accepts: ClassVar[frozenset[int]] = frozenset({235})
    #: The answer to a wrong password (RFC 4954 6): what the core also sends when SCRAM or CRAM-MD5 fails.
    refusal: ClassVar[Reply] = BAD_CREDENTIALS

    def default_reply(self, hostname: str) -> Reply:
        return AUTHENTICATED


@dataclass(frozen=True)
class CredentialsLookup(Decision):
    """SCRAM-SHA-256 (or CRAM-MD5) needs the stored secret: answer with ``supply()``.

    Supply the user's ``ScramCredentials`` (for CRAM-MD5: the password), or
    ``None`` when there is no such user or ``username`` may not act as
    ``authzid``: the attempt then fails without telling the client which.
    ``send()`` with a 4xx/5xx reply (454 4.7.0) ends the attempt instead.
    """

    mechanism: str
    authzid: str
    username: str
    accepts: ClassVar[frozenset[int]] = frozenset()

    def default_reply(self, hostname: str) -> Reply:
        raise LocalProtocolError("a CredentialsLookup is answered with supply(), not accept()")


@dataclass(frozen=True)
class ExtensionCommand(Decision):
    """A verb an extension declared, used where its ``Verb`` allows and with a valid argument.

    ``accept()`` sends ``default``, the extension's own ``answer``
    (250 2.0.0 OK unless it says otherwise); ``send()`` any 2xx, 4xx or 5xx
    reply instead.  The session stays where it was, unless the verb ``starts_over``
    and the answer is positive: then it starts over (Postfix's XCLIENT).
    """

    verb: str
    argument: str
    default: Reply = field(default=OK, repr=False, compare=False)
    #: Any completion: an intermediate 3xx would leave the client waiting for a second answer.
    accepts: ClassVar[frozenset[int]] = frozenset(range(200, 260))

    def default_reply(self, hostname: str) -> Reply:
        return self.default

    def carries_enhanced_code(self, code: int) -> bool:
        """A 220 is a new greeting (XCLIENT's), which RFC 2034 leaves without an enhanced code."""
        return code != 220


@dataclass(frozen=True)
class Authenticated(Event):
    """The client authenticated (235 sent): until STARTTLS or the end it acts as ``username``."""

    mechanism: str
    authzid: str
    username: str


@dataclass(frozen=True)
class MessageData(Event):
    """A dot-unstuffed piece of the message body, in arrival order."""

    data: bytes


@dataclass(frozen=True)
class ChunkReceived(Event):
    """A BDAT chunk without LAST was read whole and answered 250; the next chunk is due."""

    size: int


@dataclass(frozen=True)
class MessageRejected(Event):
    """The message ended but the core refused it (too big, bare CR or LF); discard it."""

    reply: Reply


@dataclass(frozen=True)
class CommandRejected(Event):
    """The core answered a command with an error (syntax, sequence, limits)."""

    command: str
    reply: Reply


@dataclass(frozen=True)
class Rset(Event):
    """RSET: the transaction was aborted and answered 250."""


@dataclass(frozen=True)
class Noop(Event):
    """NOOP: answered 250."""


@dataclass(frozen=True)
class Help(Event):
    """HELP: answered 214."""

    topic: str


@dataclass(frozen=True)
class Quit(Event):
    """QUIT: answered 221; the connection is closing."""


@dataclass(frozen=True)
class StartTLSRequested(Event):
    """STARTTLS accepted: flush, upgrade, then call ``tls_established()`` or ``tls_failed()``."""


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The conversation is over (peer hung up, QUIT, 421); flush and close."""
