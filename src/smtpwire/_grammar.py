"""The RFC 5321 4.1.2 path grammar, with RFC 6531 UTF-8, as anchored regexes.

Each regex is built piece by piece from the ABNF it names, so the grammar can
be read against the RFC; nothing here is a loose "looks like an address" test.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

UTF8_NON_ASCII = "\u0080-\U0010ffff"  # RFC 6531 UTF8-non-ascii, as decoded text
ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~\\-" + UTF8_NON_ASCII
ATOM = f"[{ATEXT}]+"
DOT_STRING = f"{ATOM}(?:\\.{ATOM})*"
QTEXT_SMTP = "\\x20\\x21\\x23-\\x5b\\x5d-\\x7e" + UTF8_NON_ASCII
QUOTED_STRING = f'"(?:[{QTEXT_SMTP}]|\\\\[\\x20-\\x7e])*"'
LOCAL_PART = f"(?:{DOT_STRING}|{QUOTED_STRING})"
LET_DIG = f"[A-Za-z0-9{UTF8_NON_ASCII}]"  # U-labels allowed (RFC 6531 3.3)
SUB_DOMAIN = f"{LET_DIG}(?:[A-Za-z0-9\\-{UTF8_NON_ASCII}]*{LET_DIG})?"
DOMAIN = f"{SUB_DOMAIN}(?:\\.{SUB_DOMAIN})*"
ADDRESS_LITERAL = "\\[[\\x21-\\x5a\\x5e-\\x7e]+\\]"  # dcontent; the inside is checked below
MAILBOX = f"{LOCAL_PART}@(?:{DOMAIN}|{ADDRESS_LITERAL})"
A_D_L = f"@{DOMAIN}(?:,@{DOMAIN})*"

PATH = re.compile(f"<(?:{A_D_L}:)?(?P<mailbox>{MAILBOX})>")
POSTMASTER = re.compile("<(?P<mailbox>postmaster)>", re.IGNORECASE)
ESMTP_PARAM = re.compile(
    f"(?P<keyword>[A-Za-z0-9][A-Za-z0-9\\-]*)(?:=(?P<value>[\\x21-\\x3c\\x3e-\\x7e{UTF8_NON_ASCII}]+))?"
)
IPV4_LITERAL = re.compile("[0-9]{1,3}(?:\\.[0-9]{1,3}){3}")


class GrammarError(ValueError):
    """The argument does not match the grammar; ``what`` says which part."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass(frozen=True)
class PathArgument:
    """A parsed ``FROM:<path> params`` or ``TO:<path> params`` argument."""

    address: str
    params: dict[str, str | None]


def valid_address_literal(literal: str) -> bool:
    """IPv4 and IPv6 are the only standardized address literals (RFC 5321 4.1.3)."""
    inner = literal[1:-1]
    if IPV4_LITERAL.fullmatch(inner):
        return all(int(part) <= 255 for part in inner.split("."))
    if inner[:5].lower() == "ipv6:" and "%" not in inner:
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    return False


def parse_path_argument(argument: str, prefix: str, *, null_ok: bool, postmaster_ok: bool) -> PathArgument:
    """Parse ``FROM:<...> params`` (``prefix="FROM:"``) or ``TO:<...> params``."""
    head = argument[: len(prefix)]
    if not head.isascii() or head.upper() != prefix:
        raise GrammarError("syntax")
    position = len(prefix)
    while argument[position : position + 1] == " ":  # "FROM: <a@b>" is common; tolerate it
        position += 1
    if null_ok and argument.startswith("<>", position):
        address, end = "", position + 2
    else:
        match = PATH.match(argument, position) or (POSTMASTER.match(argument, position) if postmaster_ok else None)
        if match is None:
            raise GrammarError("address")
        address, end = match["mailbox"], match.end()
        if address.endswith("]") and not valid_address_literal(address[address.rindex("@") + 1 :]):
            raise GrammarError("address")
    rest = argument[end:]
    if rest and rest[0] != " ":
        raise GrammarError("address")
    return PathArgument(address, parse_parameters(rest))


def parse_parameters(text: str) -> dict[str, str | None]:
    """``esmtp-param *(SP esmtp-param)``; keywords upper-cased, duplicates refused."""
    params: dict[str, str | None] = {}
    for word in text.split():
        match = ESMTP_PARAM.fullmatch(word)
        if match is None:
            raise GrammarError("parameter")
        keyword = match["keyword"].upper()
        if keyword in params:
            raise GrammarError("parameter")
        params[keyword] = match["value"]
    return params
