"""ESMTP service extensions as registered objects (the Net::Server::Mail ``register()`` idea).

An extension contributes an EHLO keyword line, the MAIL/RCPT parameters it
owns (with their validation), the verbs it adds and an allowance to the
command line length; ``offered`` says whether all of that is in force right
now.  The registry is per connection and may change while the session runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from . import _state
from ._reply import MESSAGE_TOO_BIG, OK, Reply
from ._state import State

if TYPE_CHECKING:  # pragma: no cover
    from ._connection import ServerConnection

_DIGITS = re.compile("[0-9]{1,20}")
#: RFC 5321 2.2.2 and 4.1.1: a verb is letters (X-verbs are local), here also digits and "-" after the first.
_VERB_NAME = re.compile("[A-Za-z][A-Za-z0-9-]{0,19}")
_ARGUMENT = ("none", "optional", "required")


@dataclass(frozen=True)
class Verb:
    """A command an extension adds: ``Verb("XSTATS", Verb.ANY_TIME, argument="none")``.

    ``states`` are where it may be used (one of the presets below, or a set
    of command states); elsewhere the core answers 503 5.5.1.  ``argument``
    is ``"none"``, ``"optional"`` or ``"required"``; a wrong one gets 501
    5.5.4.  The name is matched without regard to case.  ``starts_over``:
    a positive answer starts the session over, as after STARTTLS (no HELO,
    no transaction, no AUTH), like Postfix's XCLIENT; such a verb is used
    only outside a transaction (within ``BEFORE_TRANSACTION``).
    """

    name: str
    states: frozenset[State] = _state.OUTSIDE_TRANSACTION
    argument: Literal["none", "optional", "required"] = "optional"
    starts_over: bool = False

    #: Like NOOP: before or after HELO/EHLO, in a transaction or not.
    ANY_TIME: ClassVar[frozenset[State]] = _state.ANY_TIME
    #: After HELO/EHLO, in a transaction or not.
    AFTER_HELLO: ClassVar[frozenset[State]] = _state.AFTER_HELLO
    #: Like AUTH and STARTTLS: after HELO/EHLO, before MAIL (the default).
    OUTSIDE_TRANSACTION: ClassVar[frozenset[State]] = _state.OUTSIDE_TRANSACTION
    #: Like RCPT: after MAIL, before DATA.
    IN_TRANSACTION: ClassVar[frozenset[State]] = _state.IN_TRANSACTION
    #: Like XCLIENT: before or after HELO/EHLO, not in a transaction.
    BEFORE_TRANSACTION: ClassVar[frozenset[State]] = _state.BEFORE_TRANSACTION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _VERB_NAME.fullmatch(self.name):
            raise ValueError(f"a verb is a letter, then up to 19 letters, digits or '-', not {self.name!r}")
        object.__setattr__(self, "name", self.name.upper())
        if self.name in _state.CORE_VERBS:
            raise ValueError(f"{self.name} is a verb of the core, which an extension cannot replace")
        if not isinstance(self.states, frozenset) or not self.states or not self.states <= _state.ANY_TIME:
            raise ValueError(f"states must be a non-empty frozenset of {sorted(s.name for s in _state.ANY_TIME)}")
        if self.argument not in _ARGUMENT:
            raise ValueError(f"argument must be one of {_ARGUMENT}, not {self.argument!r}")
        if self.starts_over and not self.states <= _state.BEFORE_TRANSACTION:
            raise ValueError("a verb that starts the session over cannot be used in a transaction")

    def refuses(self, argument: str) -> Reply | None:
        """The 501 for an argument this verb does not take (or a missing one it needs)."""
        if argument and self.argument == "none":
            return Reply(501, f"Syntax: {self.name} (no argument)", (5, 5, 4))
        if not argument and self.argument == "required":
            return Reply(501, f"Syntax: {self.name} argument", (5, 5, 4))
        return None


class Extension:
    """Base class: subclasses set ``keyword`` and override what they add."""

    keyword: ClassVar[str]
    #: Octets this extension adds to the command line limit (its RFC says how many).
    line_allowance: ClassVar[int] = 0
    mail_parameters: ClassVar[frozenset[str]] = frozenset()
    rcpt_parameters: ClassVar[frozenset[str]] = frozenset()
    #: The commands this extension adds (its ``line_allowance`` covers their lines too).
    verbs: ClassVar[tuple[Verb, ...]] = ()

    def offered(self, conn: ServerConnection) -> bool:
        """Whether the extension is in force right now: its EHLO line, parameters and verbs.

        The one answer the core asks everywhere; by default, while
        ``ehlo_line`` gives a line.  Override it to offer an extension only
        over TLS, or only to some clients.
        """
        return self.ehlo_line(conn) is not None

    def ehlo_line(self, conn: ServerConnection) -> str | None:
        """The EHLO keyword line while offered (``None``: in force but not advertised)."""
        return self.keyword

    def answer(self, conn: ServerConnection, verb: str, argument: str) -> Reply:
        """What ``accept()`` answers one of this extension's verbs with; the application may send another."""
        return OK

    def check_parameter(self, conn: ServerConnection, name: str, value: str | None) -> Reply | None:
        """Validate one of our MAIL/RCPT parameters; a reply refuses the command."""
        return None  # pragma: no cover - only extensions with parameters are asked

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.keyword}>"


class Pipelining(Extension):
    """RFC 2920: the core always answers in order, so offering it is free."""

    keyword = "PIPELINING"


class EnhancedStatusCodes(Extension):
    """RFC 2034: while registered, every reply carries its RFC 3463 code."""

    keyword = "ENHANCEDSTATUSCODES"


class Size(Extension):
    """RFC 1870: advertise ``max_message_size`` and refuse larger declared sizes."""

    keyword = "SIZE"
    line_allowance = 26
    mail_parameters = frozenset({"SIZE"})

    def ehlo_line(self, conn: ServerConnection) -> str:
        return f"SIZE {conn.config.max_message_size}"

    def check_parameter(self, conn: ServerConnection, name: str, value: str | None) -> Reply | None:
        if value is None or not _DIGITS.fullmatch(value):
            return Reply(501, "Syntax: SIZE=<octets>", (5, 5, 4))
        if int(value) > conn.config.max_message_size:
            return MESSAGE_TOO_BIG
        return None


class EightBitMime(Extension):
    """RFC 6152: BODY=7BIT or BODY=8BITMIME (the body is passed on as bytes either way)."""

    keyword = "8BITMIME"
    line_allowance = 16
    mail_parameters = frozenset({"BODY"})

    def check_parameter(self, conn: ServerConnection, name: str, value: str | None) -> Reply | None:
        body = value.upper() if value is not None else None
        if body in ("7BIT", "8BITMIME") or (body == "BINARYMIME" and conn.extensions.offered("BINARYMIME", conn)):
            return None
        return Reply(501, "Syntax: BODY=7BIT|8BITMIME", (5, 5, 4))


class SmtpUtf8(Extension):
    """RFC 6531: UTF-8 addresses, only in transactions that say SMTPUTF8."""

    keyword = "SMTPUTF8"
    line_allowance = 10
    mail_parameters = frozenset({"SMTPUTF8"})

    def check_parameter(self, conn: ServerConnection, name: str, value: str | None) -> Reply | None:
        if value is not None:
            return Reply(501, "SMTPUTF8 takes no value", (5, 5, 4))
        return None


class StartTLS(Extension):
    """RFC 3207: offered while TLS is available and not yet active.

    The STARTTLS command itself is handled by the core, which enforces the
    RFC's rules (drop pipelined plaintext, reset the session after the
    handshake); registering this object is what makes TLS available.
    """

    keyword = "STARTTLS"

    def offered(self, conn: ServerConnection) -> bool:
        return not conn.tls_active


class Chunking(Extension):
    """RFC 3030: BDAT, the message in chunks of declared length.

    The core reads the chunks itself (exactly the declared octets, no dot
    processing), answers each one, and asks the application at the LAST
    chunk as it does at the end of DATA; registering this offers it.
    """

    keyword = "CHUNKING"


class BinaryMime(Extension):
    """RFC 3030 3: BODY=BINARYMIME (taken by 8BITMIME's BODY), only while CHUNKING is offered.

    Such a message may only come by BDAT: DATA in its transaction gets 503
    5.5.1.  Opt-in: whoever relays the message on must be able to send it
    to a server that offers BINARYMIME too, or convert it.
    """

    keyword = "BINARYMIME"

    def ehlo_line(self, conn: ServerConnection) -> str | None:
        return self.keyword if conn.extensions.offered("CHUNKING", conn) else None


STANDARD_EXTENSIONS = (Pipelining(), Size(), EightBitMime(), SmtpUtf8(), EnhancedStatusCodes(), Chunking())


class Extensions:
    """The extensions registered on one connection, in EHLO order."""

    def __init__(self, extensions: tuple[Extension, ...]) -> None:
        self._by_keyword: dict[str, Extension] = {}
        self._verbs: dict[str, tuple[Extension, Verb]] = {}
        self._line_allowance = 0
        for extension in extensions:
            self._register(extension)
        self._changed()  # once, not once per extension: a registry is made for every connection

    def add(self, extension: Extension) -> None:
        """Register (or replace) the extension with this keyword; ``ValueError`` if another owns one of its verbs."""
        self._register(extension)
        self._changed()

    def _register(self, extension: Extension) -> None:
        """Register the extension, its verbs checked against the other registered extensions'; tables left stale."""
        keyword = extension.keyword.upper()
        for verb in extension.verbs:
            for other_keyword, other in self._by_keyword.items():
                if other_keyword != keyword and any(declared.name == verb.name for declared in other.verbs):
                    raise ValueError(f"{verb.name} is already a verb of {other!r}")
        self._by_keyword[keyword] = extension

    def remove(self, keyword: str) -> None:
        """Stop offering an extension; unknown keywords are ignored."""
        self._by_keyword.pop(keyword.upper(), None)
        self._changed()

    def verb(self, name: str) -> tuple[Extension, Verb] | None:
        """The extension that declares the (upper-case) verb ``name``, and its declaration."""
        return self._verbs.get(name)

    def get(self, keyword: str) -> Extension | None:
        """The extension registered under ``keyword``, if any."""
        return self._by_keyword.get(keyword.upper())

    def offered(self, keyword: str, conn: ServerConnection) -> Extension | None:
        """The extension registered under ``keyword``, if it is offered right now."""
        extension = self._by_keyword.get(keyword.upper())
        return extension if extension is not None and extension.offered(conn) else None

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and keyword.upper() in self._by_keyword

    def __iter__(self) -> Iterator[Extension]:
        return iter(list(self._by_keyword.values()))

    @property
    def line_allowance(self) -> int:
        """What the registered extensions add to the 512-octet command line."""
        return self._line_allowance

    def _changed(self) -> None:
        """Worked out when the set changes, not for every command line."""
        registered = self._by_keyword.values()
        self._line_allowance = sum(extension.line_allowance for extension in registered)
        self._verbs = {verb.name: (extension, verb) for extension in registered for verb in extension.verbs}
