"""SPF macro strings (RFC 7208 7): parsed once into tokens, expanded later from values the evaluator supplies.

Expansion is pure: the evaluator looks up what ``%{p}`` needs before it
expands, so nothing here asks DNS.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

#: Letters any macro string may use, and those only explanation text may (RFC 7208 7.3).
DOMAIN_LETTERS = frozenset("slodiphv")
EXPLANATION_LETTERS = DOMAIN_LETTERS | frozenset("crt")
#: More parts than any name has: a transformer this large (or larger) keeps them all.
_ALL_PARTS = 1000

_EXPAND = re.compile(r"\{([a-zA-Z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")
_ESCAPES = {"%": "%", "_": " ", "-": "%20"}


class SPFSyntaxError(ValueError):
    """An SPF record (or a macro string in one) that RFC 7208's grammar does not allow."""


@dataclass(frozen=True, slots=True)
class Macro:
    """One ``%{...}``: ``letter`` as written (upper case asks for URL escaping), then its transformers."""

    letter: str
    parts: int | None = None
    reverse: bool = False
    delimiters: str = ""


Token = str | Macro
MacroString = tuple[Token, ...]


def parse_macro_string(text: str, *, explanation: bool = False) -> MacroString:
    """The tokens of ``text``; explanation text may hold spaces and the letters c, r and t."""
    return _tokens(text, explanation)[0]


def parse_domain_spec(text: str) -> MacroString:
    """A ``domain-spec``: a macro string ending in a macro or in ``.toplabel`` (RFC 7208 7.1)."""
    tokens, tail = _tokens(text, False)
    if not tokens or (tail and not _DOMAIN_END.fullmatch(tail)):
        raise SPFSyntaxError(f"not a domain-spec: {text!r}")
    return tokens


_TOPLABEL = r"(?:[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9-]*[a-z0-9])"
_DOMAIN_END = re.compile(rf".*\.{_TOPLABEL}\.?", re.IGNORECASE | re.DOTALL)


def _tokens(text: str, explanation: bool) -> tuple[MacroString, str]:
    """The tokens, and the literal text after the last macro (what ``domain-end`` is checked on)."""
    lowest = " " if explanation else "!"
    letters = EXPLANATION_LETTERS if explanation else DOMAIN_LETTERS
    tokens: list[Token] = []
    literal: list[str] = []
    tail_start = 0
    position = 0
    while position < len(text):
        char = text[position]
        if char != "%":
            if not lowest <= char <= "~":
                raise SPFSyntaxError(f"character {char!r} not allowed in {text!r}")
            literal.append(char)
            position += 1
            continue
        token, position = _macro_at(text, position + 1, letters)
        if isinstance(token, Macro):
            if literal:
                tokens.append("".join(literal))
                literal = []
            tokens.append(token)
        else:
            literal.append(token)
        tail_start = position
    if literal:
        tokens.append("".join(literal))
    return tuple(tokens), text[tail_start:]


def _macro_at(text: str, position: int, letters: frozenset[str]) -> tuple[Token, int]:
    """The macro (or escape) after a ``%`` at ``position - 1``, and where the text goes on."""
    escape = text[position : position + 1]
    if escape in _ESCAPES:
        return _ESCAPES[escape], position + 1
    found = _EXPAND.match(text, position)
    if found is None or found[1].lower() not in letters:
        raise SPFSyntaxError(f"bad macro at {text[position - 1 : position + 12]!r}")
    letter, digits, reverse, delimiters = found.groups()
    return Macro(letter, _parts(digits), bool(reverse), delimiters), found.end()


def _parts(digits: str) -> int | None:
    if not digits:
        return None
    significant = digits.lstrip("0")
    if not significant:
        raise SPFSyntaxError("a macro transformer must not be zero")
    return _ALL_PARTS if len(significant) > 3 else min(int(significant), _ALL_PARTS)


def letters_used(tokens: MacroString) -> frozenset[str]:
    """The macro letters (lower case) ``tokens`` will need values for."""
    return frozenset(token.letter.lower() for token in tokens if isinstance(token, Macro))


def expand(tokens: MacroString, value: Callable[[str], str], *, limit: int, keep_right: bool = False) -> str:
    """``tokens`` with each macro replaced by ``value(letter)``, cut to ``limit`` characters.

    A domain keeps its right end (RFC 7208 7.3 drops labels from the left),
    an explanation its left: either way a record full of ``%{s}`` costs at
    most ``limit`` plus one macro's value, however long it is.
    """
    pieces: list[str] = []
    size = 0
    for token in reversed(tokens) if keep_right else tokens:
        piece = token if isinstance(token, str) else _expand_one(token, value(token.letter.lower()))
        pieces.append(piece)
        size += len(piece)
        if size >= limit:
            break
    if keep_right:
        return "".join(reversed(pieces))[-limit:]
    return "".join(pieces)[:limit]


def _expand_one(macro: Macro, value: str) -> str:
    if macro.parts is not None or macro.reverse or macro.delimiters:
        parts = re.split(f"[{re.escape(macro.delimiters or '.')}]", value)
        if macro.reverse:
            parts.reverse()
        if macro.parts is not None:
            parts = parts[-macro.parts :]
        value = ".".join(parts)
    return quote(value, safe="") if macro.letter.isupper() else value
