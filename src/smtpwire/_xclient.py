"""Postfix's XCLIENT and XFORWARD: a trusted proxy or filter names the client it speaks for.

XCLIENT (Postfix's XCLIENT_README) replaces the client's identity and starts
the session over with a new 220 greeting; XFORWARD (XFORWARD_README) only
records who the next transaction is really from.  The core parses and checks
the attributes; who may use them is the application's decision, made per
connection: ``Xclient(allowed=False)`` answers ``550 5.7.0`` and changes
nothing, and advertises nothing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

from ._dsn import xtext_decode
from ._events import ConnectionOpened
from ._extensions import Extension, Verb
from ._grammar import valid_hello_name
from ._reply import OK, Reply

if TYPE_CHECKING:  # pragma: no cover
    from ._connection import ServerConnection

#: The value a proxy sends for what it does not know.
UNAVAILABLE = "[UNAVAILABLE]"
#: XCLIENT's NAME when the proxy's DNS lookup failed for now.
TEMPUNAVAIL = "[TEMPUNAVAIL]"
#: The longest decoded value (a domain's 255 octets, RFC 5321 4.5.3.1.2).
MAX_VALUE = 255

_BAD_SYNTAX = (5, 5, 4)
_PRINTABLE = re.compile("[\\x21-\\x7e]{1,255}")
_DIGITS = re.compile("[0-9]{1,5}")
_PROTO_WORD = re.compile("[A-Za-z0-9]{1,64}")


def _address(value: str) -> str | None:
    """An IPv4 address, or an IPv6 one with or without Postfix's ``IPV6:`` prefix, in canonical form."""
    text = value[5:] if value[:5].upper() == "IPV6:" else value
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


def _port(value: str) -> str | None:
    return str(int(value)) if _DIGITS.fullmatch(value) and int(value) <= 65535 else None


def _host_name(value: str) -> str | None:
    return value if valid_hello_name(value) and not value.startswith("[") else None


def _hello(value: str) -> str | None:
    return value if valid_hello_name(value) else None


def _smtp_or_esmtp(value: str) -> str | None:
    return value.upper() if value.upper() in ("SMTP", "ESMTP") else None


def _protocol(value: str) -> str | None:
    return value.upper() if _PROTO_WORD.fullmatch(value) else None


def _printable(value: str) -> str | None:
    return value if _PRINTABLE.fullmatch(value) else None


def _source(value: str) -> str | None:
    return value.upper() if value.upper() in ("LOCAL", "REMOTE") else None


_Check = Callable[[str], "str | None"]


@dataclass(frozen=True)
class XclientAttributes:
    """What XCLIENT said, decoded and checked: ``None`` where not sent, else the value or ``UNAVAILABLE``.

    Addresses are canonical (no ``IPV6:`` prefix), ports decimal, PROTO
    ``SMTP`` or ``ESMTP``; NAME may also be ``TEMPUNAVAIL``.
    """

    name: str | None = None
    addr: str | None = None
    port: str | None = None
    proto: str | None = None
    helo: str | None = None
    login: str | None = None
    destaddr: str | None = None
    destport: str | None = None

    #: Each attribute in the order Postfix advertises them, with the check of its value.
    CHECKS: ClassVar[Mapping[str, _Check]] = {
        "ADDR": _address,
        "NAME": _host_name,
        "PORT": _port,
        "PROTO": _smtp_or_esmtp,
        "HELO": _hello,
        "LOGIN": _printable,
        "DESTADDR": _address,
        "DESTPORT": _port,
    }

    def updated_by(self, newer: XclientAttributes) -> XclientAttributes:
        """These attributes with those ``newer`` sent: an attribute not sent again keeps its value (as Postfix)."""
        return _updated(self, newer)


@dataclass(frozen=True)
class ForwardedClient:
    """What XFORWARD said about the client of the next transaction, decoded and checked (``None``: not sent).

    PROTO is a word (SMTP, ESMTP, ...), SOURCE ``LOCAL`` or ``REMOTE``,
    IDENT the upstream's queue id.
    """

    name: str | None = None
    addr: str | None = None
    port: str | None = None
    proto: str | None = None
    helo: str | None = None
    ident: str | None = None
    source: str | None = None

    CHECKS: ClassVar[Mapping[str, _Check]] = {
        "NAME": _host_name,
        "ADDR": _address,
        "PORT": _port,
        "PROTO": _protocol,
        "HELO": _hello,
        "IDENT": _printable,
        "SOURCE": _source,
    }

    def updated_by(self, newer: ForwardedClient) -> ForwardedClient:
        """The attributes of two XFORWARD commands of one transaction together; the later wins."""
        return _updated(self, newer)


_Record = TypeVar("_Record", XclientAttributes, ForwardedClient)


def _updated(older: _Record, newer: _Record) -> _Record:
    sent = {field.name: value for field in dataclasses.fields(newer) if (value := getattr(newer, field.name))}
    return dataclasses.replace(older, **sent)


def _parse(verb: str, record: type[_Record], argument: str) -> _Record | Reply:
    """``NAME=xtext`` items separated by spaces, as ``record`` (the 501 5.5.4 for the first wrong one)."""
    values: dict[str, str] = {}
    for item in filter(None, argument.split(" ")):
        name, equals, encoded = item.partition("=")
        check = record.CHECKS.get(name.upper())
        if check is None:
            return Reply(501, f"Bad {verb} attribute name", _BAD_SYNTAX)
        try:
            value = xtext_decode(encoded).decode("ascii")
        except ValueError:  # not xtext, or (UnicodeDecodeError) octets beyond ASCII
            value = ""
        if not equals or not value or len(value) > MAX_VALUE:
            return Reply(501, f"Bad {verb} attribute syntax: {name.upper()}", _BAD_SYNTAX)
        checked = value if value == UNAVAILABLE or (value == TEMPUNAVAIL and name.upper() == "NAME") else check(value)
        if checked is None:
            return Reply(501, f"Bad {verb} {name.upper()} value", _BAD_SYNTAX)
        values[name.lower()] = checked
    if not values:  # only spaces
        return Reply(501, f"Syntax: {verb} attribute=value ...", _BAD_SYNTAX)
    return record(**values)


def parse_xclient(argument: str) -> XclientAttributes | Reply:
    """XCLIENT's attributes, or the ``501 5.5.4`` for the first unknown name, bad xtext or bad value."""
    return _parse("XCLIENT", XclientAttributes, argument)


def parse_xforward(argument: str) -> ForwardedClient | Reply:
    """XFORWARD's attributes, or the ``501 5.5.4`` for the first unknown name, bad xtext or bad value."""
    return _parse("XFORWARD", ForwardedClient, argument)


#: Postfix's answer to a client not in its authorized hosts: nothing changes.
_UNAUTHORIZED = Reply(550, "Error: insufficient authorization", (5, 7, 0))


class Xclient(Extension):
    """Postfix's XCLIENT, for one connection: ``allowed`` says whether this client may use it.

    Allowed, EHLO lists the attribute names as Postfix does (clients such
    as swaks send only those), and a valid XCLIENT is answered with a new
    220 greeting: the session starts over (no HELO, no transaction, no
    AUTH).  The application takes the attributes from ``parse_xclient`` of
    the command's argument.  Not allowed, it is not advertised and is
    answered ``550 5.7.0``.
    """

    keyword = "XCLIENT"
    verbs = (Verb("XCLIENT", Verb.BEFORE_TRANSACTION, argument="required", starts_over=True),)

    def __init__(self, allowed: bool = True) -> None:
        self.allowed = allowed

    def offered(self, conn: ServerConnection) -> bool:
        return True  # its verb is served either way: refused with 550 when not allowed

    def ehlo_line(self, conn: ServerConnection) -> str | None:
        return "XCLIENT " + " ".join(XclientAttributes.CHECKS) if self.allowed else None

    def answer(self, conn: ServerConnection, verb: str, argument: str) -> Reply:
        if not self.allowed:
            return _UNAUTHORIZED
        parsed = parse_xclient(argument)
        if isinstance(parsed, Reply):
            return parsed
        return ConnectionOpened("LMTP" if conn.config.lmtp else "ESMTP").default_reply(conn.config.hostname)


class Xforward(Extension):
    """Postfix's XFORWARD, for one connection: ``allowed`` says whether this client may use it.

    Allowed, EHLO lists the attribute names as Postfix does, and a valid
    XFORWARD is answered 250; the application takes the attributes from
    ``parse_xforward`` for the next transaction (Postfix forgets them at
    HELO/EHLO).  Not allowed, it is not advertised and is answered ``550 5.7.0``.
    """

    keyword = "XFORWARD"
    verbs = (Verb("XFORWARD", Verb.BEFORE_TRANSACTION, argument="required"),)

    def __init__(self, allowed: bool = True) -> None:
        self.allowed = allowed

    def offered(self, conn: ServerConnection) -> bool:
        return True  # its verb is served either way: refused with 550 when not allowed

    def ehlo_line(self, conn: ServerConnection) -> str | None:
        return "XFORWARD " + " ".join(ForwardedClient.CHECKS) if self.allowed else None

    def answer(self, conn: ServerConnection, verb: str, argument: str) -> Reply:
        if not self.allowed:
            return _UNAUTHORIZED
        parsed = parse_xforward(argument)
        return parsed if isinstance(parsed, Reply) else OK
