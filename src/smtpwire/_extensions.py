"""ESMTP service extensions as registered objects (the Net::Server::Mail ``register()`` idea).

An extension contributes an EHLO keyword line, the MAIL/RCPT parameters it
owns (with their validation) and an allowance to the command line length.
The registry is per connection and may change while the session runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

from ._reply import Reply

if TYPE_CHECKING:  # pragma: no cover
    from ._connection import ServerConnection

_DIGITS = re.compile("[0-9]{1,20}")


class Extension:
    """Base class: subclasses set ``keyword`` and override what they add."""

    keyword: ClassVar[str]
    #: Octets this extension adds to the command line limit (its RFC says how many).
    line_allowance: ClassVar[int] = 0
    mail_parameters: ClassVar[frozenset[str]] = frozenset()
    rcpt_parameters: ClassVar[frozenset[str]] = frozenset()

    def ehlo_line(self, conn: ServerConnection) -> str | None:
        """The EHLO keyword line, or ``None`` when not offered right now."""
        return self.keyword

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
            return Reply(552, "Message size exceeds fixed maximum message size", (5, 3, 4))
        return None


class EightBitMime(Extension):
    """RFC 6152: BODY=7BIT or BODY=8BITMIME (the body is passed on as bytes either way)."""

    keyword = "8BITMIME"
    line_allowance = 16
    mail_parameters = frozenset({"BODY"})

    def check_parameter(self, conn: ServerConnection, name: str, value: str | None) -> Reply | None:
        if value is None or value.upper() not in ("7BIT", "8BITMIME"):
            return Reply(501, "Syntax: BODY=7BIT|8BITMIME", (5, 5, 4))
        return None


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

    def ehlo_line(self, conn: ServerConnection) -> str | None:
        return None if conn.tls_active else self.keyword


STANDARD_EXTENSIONS = (Pipelining(), Size(), EightBitMime(), SmtpUtf8(), EnhancedStatusCodes())


class Extensions:
    """The extensions registered on one connection, in EHLO order."""

    def __init__(self, extensions: tuple[Extension, ...]) -> None:
        self._by_keyword: dict[str, Extension] = {}
        self._line_allowance = 0
        for extension in extensions:
            self.add(extension)

    def add(self, extension: Extension) -> None:
        """Register (or replace) the extension with this keyword."""
        self._by_keyword[extension.keyword.upper()] = extension
        self._count_allowance()

    def remove(self, keyword: str) -> None:
        """Stop offering an extension; unknown keywords are ignored."""
        self._by_keyword.pop(keyword.upper(), None)
        self._count_allowance()

    def get(self, keyword: str) -> Extension | None:
        """The extension registered under ``keyword``, if any."""
        return self._by_keyword.get(keyword.upper())

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and keyword.upper() in self._by_keyword

    def __iter__(self) -> Iterator[Extension]:
        return iter(list(self._by_keyword.values()))

    @property
    def line_allowance(self) -> int:
        """What the registered extensions add to the 512-octet command line."""
        return self._line_allowance

    def _count_allowance(self) -> None:
        """Worked out when the set changes, not for every command line."""
        self._line_allowance = sum(extension.line_allowance for extension in self._by_keyword.values())
