"""The RFC 5321 4.1 grammar (paths, HELO/EHLO names), with RFC 6531 UTF-8, as anchored regexes.

Each regex is built piece by piece from the ABNF it names, so the grammar can
be read against the RFC; nothing here is a loose "looks like an address" test.
What is accepted ends up in Received: and Return-Path: header fields and in
log lines, so the grammar is also the server's defence against injection.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from typing import NamedTuple

from ._reply import MAX_TEXT_OCTETS

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

# HELO/EHLO names are ASCII: the client cannot know yet whether a transaction will say SMTPUTF8.
ASCII_SUB_DOMAIN = "[A-Za-z0-9](?:[A-Za-z0-9\\-]*[A-Za-z0-9])?"
ASCII_DOMAIN = re.compile(f"{ASCII_SUB_DOMAIN}(?:\\.{ASCII_SUB_DOMAIN})*")
BRACKETED = re.compile(ADDRESS_LITERAL)
GENERAL_ADDRESS_LITERAL = re.compile("\\[[A-Za-z0-9\\-]*[A-Za-z0-9]:[\\x21-\\x5a\\x5e-\\x7e]+\\]")
#: RFC 5321 4.1.1.1 ``ehlo-line = ehlo-keyword *( SP ehlo-param )``, what an extension may advertise.
EHLO_LINE = re.compile("[A-Za-z0-9][A-Za-z0-9\\-]*(?: [\\x21-\\x7e]+)*")

# RFC 5321 4.5.3.1.1-3, in octets: the sizes every server must take, enforced as maxima. Anything
# longer is no real mailbox, and a path of 1000 octets makes a Return-Path: line longer than
# RFC 5322 2.1.1 allows.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256  # "<" and ">" (and any source route) included

#: What no command line may hold: C0 controls but HTAB, DEL, the C1 controls (U+0085 NEL among
#: them), the line and paragraph separators and the bidi controls. Arguments reach header fields
#: and log lines as they are; these would end a line there (str.splitlines() splits on NEL and
#: U+2028) or make it read differently from what it holds (CVE-2021-42574, "Trojan Source").
FORBIDDEN_IN_COMMAND = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")

#: Unicode general categories no U-label holds (RFC 6531 3.3; RFC 5892 2.1-2.6 make them DISALLOWED or
#: UNASSIGNED): format characters (U+200B, U+2060, U+FEFF, U+00AD...), controls, surrogates, private
#: use, unassigned code points, spaces and separators. Invisible, they make one domain look like another.
NOT_IN_DOMAIN = frozenset({"Cf", "Cc", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
#: What a local part may not hold although RFC 6532 3.2 allows UTF-8 there: what no one can see or type.
NOT_IN_LOCAL_PART = frozenset({"Cf", "Cc", "Cs", "Co", "Cn"})
#: ZERO WIDTH NON-JOINER and ZERO WIDTH JOINER, format characters that Indic scripts need after a
#: virama (RFC 5892 A.1, A.2: CONTEXTJ); anywhere else they are as invisible as the rest.
JOINERS = frozenset("\u200c\u200d")
_VIRAMA = 9  # the canonical combining class of a virama


class GrammarError(ValueError):
    """The argument does not match the grammar; ``what`` says which part."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class PathArgument(NamedTuple):
    """A parsed ``FROM:<path> params`` or ``TO:<path> params`` argument (a tuple: made quicker than a dataclass)."""

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


def valid_hello_name(name: str) -> bool:
    """RFC 5321 4.1.1.1: HELO/EHLO name a ``Domain`` or an ``address-literal``, of at most 255 octets.

    A General-address-literal (``[tag:content]``) is taken as the ABNF has it,
    bar the IPv6 tag, whose content must be an IPv6 address; it stays one
    RFC 5322 domain-literal wherever it is written.
    """
    if len(name) > MAX_DOMAIN:
        return False
    if name[:1] != "[":
        return ASCII_DOMAIN.fullmatch(name) is not None
    if not BRACKETED.fullmatch(name):  # valid_address_literal() looks only between the brackets
        return False
    if valid_address_literal(name):
        return True
    return name[1:6].lower() != "ipv6:" and GENERAL_ADDRESS_LITERAL.fullmatch(name) is not None


@functools.lru_cache(maxsize=256)
def valid_ehlo_line(line: str) -> bool:
    """An RFC 5321 4.1.1.1 ehlo-line that fits a reply line; remembered, as every EHLO asks again."""
    return len(line) <= MAX_TEXT_OCTETS and EHLO_LINE.fullmatch(line) is not None


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
        check_lengths(argument[position:end], address)
        if not argument[position:end].isascii():  # most paths: nothing to look up
            check_characters(argument[position + 1 : match.start("mailbox")], address)
    rest = argument[end:]
    if rest and rest[0] != " ":
        raise GrammarError("address")
    return PathArgument(address, parse_parameters(rest) if rest else {})  # most paths have no parameters


def check_lengths(path: str, mailbox: str) -> None:
    """RFC 5321 4.5.3.1.1-3: local part, domain and the whole path, in octets as sent."""
    if len(path) <= MAX_LOCAL_PART and path.isascii():
        return  # no part of it can be too long: most paths, without encoding anything
    local_part, _, domain = mailbox.rpartition("@")  # a quoted local part may hold "@"; a domain never
    if len(local_part.encode()) > MAX_LOCAL_PART:
        raise GrammarError("local part")
    if len(domain.encode()) > MAX_DOMAIN:
        raise GrammarError("domain")
    if len(path.encode()) > MAX_PATH:
        raise GrammarError("path")


def check_characters(route: str, mailbox: str) -> None:
    """RFC 6531 3.3: domains (the source route's too) hold U-labels only, so no invisible characters.

    A U-label is also in Unicode Normalization Form C (RFC 5891 5.3); no such check is made on the
    local part, which the receiving system alone interprets (RFC 5321 2.4).
    """
    local_part, _, domain = mailbox.rpartition("@")
    domains = route + domain
    if not domains.isascii() and (not unicodedata.is_normalized("NFC", domains) or _holds(domains, NOT_IN_DOMAIN)):
        raise GrammarError("domain characters")
    if not local_part.isascii() and _holds(local_part, NOT_IN_LOCAL_PART):
        raise GrammarError("local part characters")


def _holds(text: str, categories: frozenset[str]) -> bool:
    """Whether any non-ASCII character of ``text`` is of one of the Unicode general ``categories``."""
    return any(
        unicodedata.category(character) in categories and not _joiner_after_virama(text, index)
        for index, character in enumerate(text)
        if not character.isascii()
    )


def _joiner_after_virama(text: str, index: int) -> bool:
    """RFC 5892 A.1, A.2: a joiner right after a virama shapes the letters around it (as in क्‍ष)."""
    return text[index] in JOINERS and index > 0 and unicodedata.combining(text[index - 1]) == _VIRAMA


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
