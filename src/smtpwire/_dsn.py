"""Delivery Status Notifications (RFC 3461): the DSN extension and its parameters, decoded.

MAIL may say what a notification returns (``RET``) and an envelope id to
quote in it (``ENVID``); RCPT may say when to notify (``NOTIFY``) and the
recipient as first given (``ORCPT``).  The extension validates each as the
command arrives (501 5.5.4 on bad syntax); ``MailDsn.from_params`` and
``RcptDsn.from_params`` decode the accepted parameters for the application,
with the same parsers, so what was accepted always decodes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._extensions import Extension
from ._grammar import FORBIDDEN_IN_COMMAND
from ._reply import Reply

if TYPE_CHECKING:  # pragma: no cover
    from ._connection import ServerConnection

#: RFC 3461 4: ``xtext = *( xchar / hexchar )``; xchar is "!".."~" but "+" and "=", hexchar "+" and
#: two upper-case hex digits.
_XTEXT = re.compile("(?:[\\x21-\\x2a\\x2c-\\x3c\\x3e-\\x7e]|\\+[0-9A-F]{2})*")
_HEXCHAR = re.compile(b"\\+([0-9A-F]{2})")
_XCHARS = frozenset(range(0x21, 0x7F)) - {ord("+"), ord("=")}
#: RFC 3461 4.4: an envelope id is printable US-ASCII of at most 100 characters.
_PRINTABLE = re.compile("[\\x20-\\x7e]*")
MAX_ENVID = 100
#: RFC 3461 4.2: ``ORCPT=addr-type ";" xtext``, at most 500 characters (octets, for RFC 6533's UTF-8);
#: addr-type an RFC 822 atom.
MAX_ORCPT = 500
_ORCPT = re.compile("(?P<type>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+);(?P<address>.+)", re.DOTALL)
#: RFC 6533 3: the utf-8 address type, ``\\x{HEX}`` for what xtext cannot hold; with SMTPUTF8
#: (utf-8-addr-unitext) UTF-8 as it is.
_EMBEDDED = re.compile("\\\\x\\{(?P<hex>[0-9A-F]{2,6})\\}")
_QCHAR = "\\x21-\\x2a\\x2c-\\x3c\\x3e-\\x5b\\x5d-\\x7e"
_UTF8_ADDR_XTEXT = re.compile(f"(?:[{_QCHAR}]|\\\\x\\{{[0-9A-F]{{2,6}}\\}})+")
_UTF8_ADDR_UNITEXT = re.compile(f"(?:[{_QCHAR}\\u0080-\\U0010ffff]|\\\\x\\{{[0-9A-F]{{2,6}}\\}})+")
#: What no decoded utf-8 address may hold, besides what no command may (``FORBIDDEN_IN_COMMAND``).
_CONTROL = re.compile("[\\x09\\ud800-\\udfff]")
#: RFC 3461 4.1: NEVER alone, or a list of these (in this order when decoded).
NOTIFY_CONDITIONS = ("SUCCESS", "FAILURE", "DELAY")


def xtext_decode(text: str) -> bytes:
    """The octets an RFC 3461 xtext stands for; ``ValueError`` when ``text`` is not xtext."""
    if not _XTEXT.fullmatch(text):
        raise ValueError(f"not RFC 3461 xtext: {text!r}")
    return _HEXCHAR.sub(lambda match: bytes([int(match[1], 16)]), text.encode("ascii"))


def xtext_encode(data: bytes) -> str:
    """``data`` as RFC 3461 xtext: printable ASCII as it is, "+", "=" and every other octet as ``+XX``."""
    return "".join(chr(octet) if octet in _XCHARS else f"+{octet:02X}" for octet in data)


def parse_ret(value: str | None) -> str:
    """``RET=FULL|HDRS``, upper-cased."""
    ret = (value or "").upper()
    if ret not in ("FULL", "HDRS"):
        raise ValueError("RET must be FULL or HDRS")
    return ret


def parse_envid(value: str | None) -> str:
    """``ENVID=xtext``: at most 100 characters, decoding to printable US-ASCII."""
    if not value or len(value) > MAX_ENVID:
        raise ValueError(f"ENVID must be 1 to {MAX_ENVID} characters of xtext")
    envid = xtext_decode(value).decode("ascii", errors="replace")
    if not _PRINTABLE.fullmatch(envid):
        raise ValueError("ENVID must decode to printable US-ASCII")
    return envid


def parse_notify(value: str | None) -> tuple[str, ...]:
    """``NOTIFY=NEVER`` or a comma list of SUCCESS, FAILURE, DELAY (any case, any order)."""
    words = (value or "").upper().split(",")
    if words == ["NEVER"]:
        return ("NEVER",)
    if not set(words) <= set(NOTIFY_CONDITIONS):
        raise ValueError("NOTIFY must be NEVER or a list of SUCCESS, FAILURE and DELAY")
    return tuple(condition for condition in NOTIFY_CONDITIONS if condition in words)


def parse_orcpt(value: str | None, smtputf8: bool = False) -> OriginalRecipient:
    """``ORCPT=addr-type;address``: xtext, or for ``utf-8`` RFC 6533's form (raw UTF-8 only with SMTPUTF8)."""
    match = _ORCPT.fullmatch(value or "")
    if value is None or len(value.encode()) > MAX_ORCPT or match is None:  # octets: UTF-8 counts as sent
        raise ValueError(f"ORCPT must be addr-type;address of at most {MAX_ORCPT} characters")
    addr_type, encoded = match["type"].lower(), match["address"]
    if addr_type != "utf-8":
        address = xtext_decode(encoded).decode("ascii", errors="replace")
        if not _PRINTABLE.fullmatch(address):
            raise ValueError("ORCPT must decode to printable US-ASCII")
        return OriginalRecipient(addr_type, address)
    if not (_UTF8_ADDR_UNITEXT if smtputf8 else _UTF8_ADDR_XTEXT).fullmatch(encoded):
        raise ValueError("ORCPT=utf-8;... must be RFC 6533 utf-8-addr-xtext (unitext with SMTPUTF8)")
    address = _EMBEDDED.sub(_code_point, encoded)
    if _CONTROL.search(address) or FORBIDDEN_IN_COMMAND.search(address):
        raise ValueError("ORCPT=utf-8;... must not hold controls, line separators or bidi controls")
    return OriginalRecipient(addr_type, address)


def _code_point(match: re.Match[str]) -> str:
    value = int(match["hex"], 16)
    return chr(value) if value <= 0x10FFFF else "\x00"  # past Unicode: refused as a control


@dataclass(frozen=True)
class OriginalRecipient:
    """RCPT's ``ORCPT``: the address type (lower-cased, e.g. ``rfc822``) and the decoded address."""

    addr_type: str
    address: str


@dataclass(frozen=True)
class MailDsn:
    """What MAIL asked of delivery status notifications; ``None`` where it said nothing."""

    #: ``"FULL"`` (return the whole message) or ``"HDRS"`` (only its headers).
    ret: str | None = None
    #: The envelope id to quote in notifications, xtext-decoded (printable US-ASCII).
    envid: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str | None]) -> MailDsn:
        """Decode MAIL's parameters as the core accepted them; ``ValueError`` for ones it did not."""
        return cls(
            ret=parse_ret(params["RET"]) if "RET" in params else None,
            envid=parse_envid(params["ENVID"]) if "ENVID" in params else None,
        )


@dataclass(frozen=True)
class RcptDsn:
    """What one RCPT asked; ``None`` where it said nothing (the server then decides, RFC 3461 4.1)."""

    #: ``("NEVER",)`` or some of ``("SUCCESS", "FAILURE", "DELAY")``, in that order.
    notify: tuple[str, ...] | None = None
    orcpt: OriginalRecipient | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str | None], smtputf8: bool = False) -> RcptDsn:
        """Decode RCPT's parameters as the core accepted them; ``ValueError`` for ones it did not."""
        return cls(
            notify=parse_notify(params["NOTIFY"]) if "NOTIFY" in params else None,
            orcpt=parse_orcpt(params["ORCPT"], smtputf8) if "ORCPT" in params else None,
        )


_SYNTAX = {
    "RET": "RET=FULL|HDRS",
    "ENVID": "ENVID=xtext (at most 100 characters)",
    "NOTIFY": "NOTIFY=NEVER|SUCCESS,FAILURE,DELAY",
    "ORCPT": "ORCPT=addr-type;xtext (at most 500 characters)",
}
_REFUSALS = {name: Reply(501, f"Syntax: {usage}", (5, 5, 4)) for name, usage in _SYNTAX.items()}


class Dsn(Extension):
    """RFC 3461: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT, each checked as it arrives.

    Offering DSN is a promise to send the notifications asked for (or to pass
    the request on when relaying): the application does that, from
    ``MailDsn.from_params`` and ``RcptDsn.from_params``.  A parameter given
    twice is refused by the core's parser (501 5.5.4), as RFC 3461 4 asks.
    """

    keyword = "DSN"
    #: RFC 3461 4: MAIL grows by up to 110 characters, RCPT by up to 500; one allowance serves both.
    line_allowance = 500
    mail_parameters = frozenset({"RET", "ENVID"})
    rcpt_parameters = frozenset({"NOTIFY", "ORCPT"})

    def check_parameter(self, conn: ServerConnection, name: str, value: str | None) -> Reply | None:
        try:
            if name == "ORCPT":  # raw UTF-8 only in a transaction that said SMTPUTF8 (RFC 6533 3)
                parse_orcpt(value, conn.transaction is not None and conn.transaction.smtputf8)
            else:
                _PARSERS[name](value)
        except ValueError:
            return _REFUSALS[name]
        return None


_PARSERS: dict[str, Callable[[str | None], object]] = {
    "RET": parse_ret,
    "ENVID": parse_envid,
    "NOTIFY": parse_notify,
}
