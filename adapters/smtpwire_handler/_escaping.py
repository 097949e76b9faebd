"""Client text made safe for a terminal or a log: what could forge a line or reorder a display, escaped."""

from __future__ import annotations

import re

#: Unicode 14 categories Cc, Cf, Zl, Zp and Cs (lone surrogates come from surrogateescape).
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
    "\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escaped(text: str, keep: str = "") -> str:
    """``text`` with every character of ``UNSAFE`` but those in ``keep`` written as a Python escape.

    ``\\n``, ``\\r``, ``\\t``, else as Python writes the code point:
    ``\\x1b``, ``\\u2028``, ``\\U000e0041``.
    """
    if text.isprintable():  # nearly always: no Cc, Cf, Zl, Zp or Cs (a C-speed check)
        return text
    return UNSAFE.sub(lambda match: match[0] if match[0] in keep else _escape(match[0]), text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
