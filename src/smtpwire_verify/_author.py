"""The RFC5322.From domains DMARC evaluates (RFC 7489 3.1, 6.6.1): a small bounded parser of the From fields.

The address grammar of RFC 5322 3.4 (display names, comments, quoted
local parts, groups, obsolete routes) is read by a tokenizer and a
loop over its tokens, with no recursion and no backtracking, so its cost
is linear in the header block, which is read up to ``MAX_HEADER`` octets.
Encoded words (RFC 2047) are only ever display-name words, so they are
kept whole and never decoded; an internationalized domain (RFC 6532)
becomes A-labels (IDNA 2008 with the UTS 46 mapping, through ``idna``).
"""

from __future__ import annotations

import re

import idna

from ._header import field_name, split_header

#: The header block is read up to here; one that does not end by then cannot be told to have a single From.
MAX_HEADER = 64 * 1024
#: More addresses than this in the From fields is taken as unparsable.
MAX_ADDRESSES = 64
#: RFC 1035's limit on a name, in characters without the root's dot.
MAX_DOMAIN = 253
#: How deep comments may nest.
MAX_COMMENT_DEPTH = 32

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\n]+)
      | (?P<encoded>=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)
      | (?P<quoted>"(?:[^"\\]|\\.)*")
      | (?P<literal>\[(?:[^\[\]\\]|\\.)*\])
      | (?P<special>[<>@,;:.])
      | (?P<atom>[^\s"()<>\[\]@,;:.\\]+)
      | (?P<comment>\()""",
    re.VERBOSE | re.DOTALL,
)
_COMMENT_PART = re.compile(r"[^()\\]+|\\.?|[()]", re.DOTALL)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


class _Unparsable(Exception):
    """The From field does not follow RFC 5322's address grammar."""


def author_domains(message: bytes) -> tuple[str, ...] | None:
    """The domains of every address in the message's From field(s), lowercased A-labels, in order.

    ``()`` when there is no From field (or only empty groups), ``None``
    when one cannot be parsed, holds a domain that is not a host name
    (a domain literal, a bad label), more than ``MAX_ADDRESSES``
    addresses, or the header block runs past ``MAX_HEADER`` octets.
    Several From fields all count (RFC 7489 6.6.1 leaves them to the
    receiver; the DMARC check decides).
    """
    fields, rest = split_header(message[:MAX_HEADER])
    if not rest and len(message) > MAX_HEADER:
        return None
    domains: list[str] = []
    try:
        for field in fields:
            if field_name(field) == b"from":
                value = field.partition(b":")[2].decode("utf-8", "surrogateescape")
                domains.extend(_domains(_tokens(value)))
    except _Unparsable:
        return None
    return tuple(domains) if len(domains) <= MAX_ADDRESSES else None


def _tokens(value: str) -> list[tuple[str, str]]:
    """``(kind, text)`` for each word and special of ``value``, white space and comments dropped."""
    tokens: list[tuple[str, str]] = []
    index = 0
    while index < len(value):
        match = _TOKEN.match(value, index)
        if match is None:
            raise _Unparsable(f"unexpected {value[index]!r}")
        kind = match.lastgroup or ""
        index = _after_comment(value, index) if kind == "comment" else match.end()
        if kind not in ("space", "comment"):
            tokens.append((kind, match[0]))
    return tokens


def _after_comment(value: str, index: int) -> int:
    """Where the (nested) comment that starts at ``index`` ends."""
    depth = 0
    while True:
        part = _COMMENT_PART.match(value, index)
        if part is None:
            raise _Unparsable("a comment is not closed")
        index = part.end()
        depth += {"(": 1, ")": -1}.get(part[0], 0)
        if depth > MAX_COMMENT_DEPTH:
            raise _Unparsable("comments nest too deep")
        if not depth:
            return index


def _domains(tokens: list[tuple[str, str]]) -> list[str]:
    """The domain of each mailbox in an address-list (RFC 5322 3.4), groups included."""
    domains: list[str] = []
    in_group = False
    index = 0
    while index < len(tokens):
        text = tokens[index][1]
        if text == "," or (text == ";" and in_group):
            in_group = in_group and text != ";"
            index += 1
            continue
        words = _skip_words(tokens, index)
        following = tokens[words][1] if words < len(tokens) else None
        if following == ":" and words > index and not in_group:
            in_group, index = True, words + 1
            continue
        if following == "<":
            domain, index = _angle_address(tokens, words + 1)
        elif following == "@" and words > index:
            domain, index = _domain(tokens, words + 1)
        else:
            raise _Unparsable("expected an address")
        domains.append(domain)
        if index < len(tokens) and tokens[index][1] not in (",", ";"):
            raise _Unparsable("expected , or ; after an address")
        if len(domains) > MAX_ADDRESSES:
            raise _Unparsable("too many addresses")
    return domains


def _skip_words(tokens: list[tuple[str, str]], index: int) -> int:
    """Past the words (atoms, quoted strings, encoded words, dots of obs-phrase) starting at ``index``."""
    while index < len(tokens) and (tokens[index][0] in ("atom", "quoted", "encoded") or tokens[index][1] == "."):
        index += 1
    return index


def _angle_address(tokens: list[tuple[str, str]], index: int) -> tuple[str, int]:
    """The domain of ``[obs-route] addr-spec ">"`` starting at ``index``, and where it ends."""
    if index < len(tokens) and tokens[index][1] == "@":  # obs-route: "@a,@b:" before the address
        while index < len(tokens) and tokens[index][1] != ":":
            index += 1
        index += 1
    local_end = _skip_words(tokens, index)
    if local_end == index or local_end >= len(tokens) or tokens[local_end][1] != "@":
        raise _Unparsable("expected local-part@domain in <>")
    domain, index = _domain(tokens, local_end + 1)
    if index >= len(tokens) or tokens[index][1] != ">":
        raise _Unparsable("expected >")
    return domain, index + 1


def _domain(tokens: list[tuple[str, str]], index: int) -> tuple[str, int]:
    """The dot-atom domain starting at ``index`` as lowercased A-labels, and where it ends."""
    labels: list[str] = []
    while True:
        if index >= len(tokens) or tokens[index][0] != "atom":
            raise _Unparsable("expected a domain (a domain literal is not one DMARC can use)")
        labels.append(tokens[index][1])
        index += 1
        if index >= len(tokens) or tokens[index][1] != ".":
            break
        index += 1
    return _a_labels(".".join(labels)), index


def _a_labels(domain: str) -> str:
    """``domain`` as lowercased A-labels, checked to be a host name DNS can hold."""
    if len(domain) > MAX_DOMAIN:
        raise _Unparsable("the domain is too long")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as error:
            raise _Unparsable(f"not an internationalized domain name: {error}") from None
    domain = domain.lower()
    if len(domain) > MAX_DOMAIN or not all(_LABEL.match(label) for label in domain.split(".")):
        raise _Unparsable(f"{domain!r} is not a host name")
    return domain
