"""The tag=value lists of DKIM and ARC (RFC 6376 3.2): signature header fields and key records.

Strict where the RFC is strict (a tag name is ALPHA *(ALPHA / DIGIT / "_"),
a tag appears once, a value has no ";" and no control characters) and
bounded by the caller: it is only ever given a header field or a TXT
record already held under a size limit.
"""

from __future__ import annotations

import re

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
#: Outside tag values' VALCHARs (%x21-3A / %x3C-7E), the ";" between them and folding white space.
_FOREIGN = re.compile(r"[^\x21-\x7e \t\r\n]")
_FWS = " \t\r\n"


def parse_tag_list(text: str) -> dict[str, str] | None:
    """The tags of ``text`` with their values (surrounding white space removed), or ``None`` if it is malformed."""
    if _FOREIGN.search(text):
        return None
    specs = text.split(";")
    if not specs[-1].strip(_FWS):
        specs.pop()  # a trailing ";" is allowed
    tags: dict[str, str] = {}
    for spec in specs:
        name, equals, value = spec.partition("=")
        name, value = name.strip(_FWS), value.strip(_FWS)
        if not equals or not _TAG_NAME.match(name) or name in tags:
            return None
        tags[name] = value
    return tags


def without_fws(value: str) -> str:
    """``value`` with all folding white space taken out (``b=``, ``bh=``, ``p=`` and ``h=`` may be folded)."""
    return "".join(value.split())
