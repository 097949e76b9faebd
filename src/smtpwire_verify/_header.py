"""The Authentication-Results header field (RFC 8601): written with authres, and forged copies of ours removed.

authres formats each ``method=result``, ``reason=`` and ``ptype.property=value``;
two parts are done here because authres does them in a way a receiver
cannot use as is: it writes every result on one line (we fold one result
per line, RFC 5322 2.2.3), and its quoting leaves any value holding an
``@`` unquoted, so ``a b@c; dkim=pass`` would become a forged result.
Values are therefore cleaned and quoted by ``_Text`` and ``_Pvalue`` before authres
writes them.  And authres's parser (which dkimpy's ARC sealing uses on our
field) reads a quoted property value only as the last of its result, so
properties that need quoting are written after the others: their order
has no meaning (RFC 8601 2.2), and the usual one (``header.b``) then
reads back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from authres.core import (  # type: ignore[import-untyped]  # authres ships no type hints
    AuthenticationResult,
    AuthenticationResultProperty,
    QuotableValue,
)

from ._results import MethodResult

FIELD_NAME = b"authentication-results"
#: No legitimate value (a domain, a mailbox, a selector, a reason) is longer; longer ones are cut.
MAX_VALUE = 256
#: Where a result line is folded between its properties (RFC 5322 2.1.1's 78 characters).
LINE_WIDTH = 78

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+\Z")  # RFC 2045 token
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LDH_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
#: ``[local-part] "@" domain-name`` (RFC 8601 2.2's pvalue, RFC 6376's domain-name), written unquoted.
_MAILBOX = re.compile(rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*|{_QUOTED})?@{_LDH_LABEL}(?:\.{_LDH_LABEL})+\Z")
_KEY = re.compile(r"[A-Za-z0-9!#$%&'*+?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+?^_`{|}~-]+)*\Z")
_PROPERTY = re.compile(r"(smtp|header|body|policy)\.([A-Za-z0-9!#$%&'*+?^_`{|}~.-]+)\Z", re.IGNORECASE)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_CONTINUATION = "\r\n\t  "


class _Text(QuotableValue):  # type: ignore[misc]  # QuotableValue is an untyped str
    """RFC 8601's ``value`` (a ``reason=``): a token as is, anything else a quoted-string."""

    def needs_quoting(self) -> bool:
        return not _TOKEN.match(str.__str__(self))

    def quote_if_needed(self) -> str:
        text: str = str.__str__(self)
        if not self.needs_quoting():
            return text
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Pvalue(_Text):
    """RFC 8601's ``pvalue`` (a property's): a ``local-part@domain-name`` may also go unquoted."""

    def needs_quoting(self) -> bool:
        return super().needs_quoting() and not _MAILBOX.match(str.__str__(self))


def _cleaned(text: str) -> str:
    """``text`` fit for a header: every character outside printable ASCII becomes ``?``, cut at ``MAX_VALUE``."""
    return _UNPRINTABLE.sub("?", text[:MAX_VALUE])


def authentication_results(authserv_id: str, results: Sequence[MethodResult]) -> bytes:
    """The whole ``Authentication-Results:`` field, one result per folded line, ending in CRLF.

    ``authserv_id`` is this server's (a dot-atom, RFC 8601 2.5) and
    ``ValueError`` names a bad one, as it does a method, result or
    property name that is not ours to write; values are the senders' and
    are always made safe instead.  No results is ``<authserv-id>; none``.
    """
    if not _DOT_ATOM.match(authserv_id):
        raise ValueError(f"authserv-id {authserv_id!r} is not a dot-atom")
    if not results:
        return f"Authentication-Results: {authserv_id}; none\r\n".encode("ascii")
    clauses = [_clause(result) for result in results]
    return ";\r\n\t".join([f"Authentication-Results: {authserv_id}", *clauses]).encode("ascii") + b"\r\n"


def _clause(result: MethodResult) -> str:
    """``method=result reason="..." ptype.property=value ...``, folded between words when long."""
    if not (_KEY.match(result.method) and _DOT_ATOM.match(result.result)):
        raise ValueError(f"{result.method}={result.result} is not a method and a result RFC 8601 can carry")
    head = AuthenticationResult(result.method, result=result.result)
    if result.reason is not None:
        head.reason = _Text(_cleaned(result.reason))
    properties = sorted((_property(name, value) for name, value in result.properties), key=_quoted_last)
    return "".join(_fold([str(head), *map(str, properties)]))


def _quoted_last(written: AuthenticationResultProperty) -> bool:
    """Sort key: authres's parser reads a quoted property value only at the end of a result, so put those last."""
    return bool(written.value.needs_quoting())


def _property(name: str, value: str) -> AuthenticationResultProperty:
    match = _PROPERTY.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a ptype.property of RFC 8601 2.3")
    written = AuthenticationResultProperty(match[1], match[2])
    written.value = _Pvalue(_cleaned(value))
    return written


def _fold(words: list[str]) -> Iterator[str]:
    """The words with a space between them, or a fold where the line (and its ``;``) would pass ``LINE_WIDTH``.

    A result's first line starts with a tab (8 columns), the lines it is
    folded onto with a tab and two spaces (10), so a reader sees where
    each result starts.
    """
    width = 8 + len(words[0])
    yield words[0]
    for word in words[1:]:
        if width + 1 + len(word) >= LINE_WIDTH:
            yield _CONTINUATION + word
            width = 10 + len(word)
        else:
            yield " " + word
            width += 1 + len(word)


# -- removing forged claims (RFC 8601 5) -------------------------------------------------------


def split_header(message: bytes) -> tuple[list[bytes], bytes]:
    """The header block's fields (each with its continuation lines and line ends) and the rest.

    The rest is the empty line and the body, or ``b""`` when the message
    has no empty line; ``b"".join(fields) + rest == message`` always.
    A continuation line with no field before it stands as a field of its own.
    """
    starts: list[int] = []
    start = 0
    while start < len(message):
        end = message.find(b"\n", start)
        end = len(message) if end < 0 else end + 1
        if message[start:end] in (b"\r\n", b"\n"):
            break
        if message[start : start + 1] not in (b" ", b"\t") or not starts:
            starts.append(start)
        start = end
    ends = [*starts[1:], start] if starts else []
    return [message[first:last] for first, last in zip(starts, ends, strict=True)], message[start:]


def field_name(field: bytes) -> bytes | None:
    """The lowercased name of ``field``, or ``None`` when it has no colon."""
    name, colon, _ = field.partition(b":")
    return name.rstrip(b" \t").lower() if colon else None


def remove_claims(message: bytes, authserv_id: str) -> bytes:
    """``message`` without the Authentication-Results fields that claim ``authserv_id`` (RFC 8601 5).

    Such a field arriving from outside is forged: only this server writes
    ours.  A field whose authserv-id cannot be read (an unclosed comment,
    comments nested past ``MAX_COMMENT_DEPTH``) goes too, since a laxer
    reader might find ours in it (RFC 8601 5 allows removing any).  Every
    other byte is kept as it was; the work is linear in the header block
    and nothing in the message makes it raise.
    """
    claims = (authserv_id.lower(), None)
    fields, rest = split_header(message)
    kept = [field for field in fields if not (field_name(field) == FIELD_NAME and _claimed_id(field) in claims)]
    return message if len(kept) == len(fields) else b"".join(kept) + rest


#: How deep comments may nest before the field is taken as unreadable (RFC 5322 sets no limit; we must).
MAX_COMMENT_DEPTH = 64
_ID = re.compile(rb'"((?:[^"\\]|\\.)*)"|([^\s;()"]+)', re.DOTALL)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)
_WSP = re.compile(rb"[ \t\r\n]*")
_COMMENT_PART = re.compile(rb"[^()\\]+|\\.?|[()]", re.DOTALL)


def _claimed_id(field: bytes) -> str | None:
    """The authserv-id an Authentication-Results field names, lowercased (comments skipped, quotes undone)."""
    value = field.partition(b":")[2]
    start = _after_cfws(value)
    found = _ID.match(value, start) if start is not None else None
    if found is None:
        return None
    text = _QUOTED_PAIR.sub(rb"\1", found[1]) if found[1] is not None else found[2]
    return text.decode("latin-1").lower()


def _after_cfws(value: bytes) -> int | None:
    """Where the white space and (nested) comments at the start of ``value`` end; ``None`` if a comment never does."""
    index = depth = 0
    while True:
        if not depth:
            index = _WSP.match(value, index).end()  # type: ignore[union-attr]  # it matches the empty string
            if value[index : index + 1] != b"(":
                return index
        token = _COMMENT_PART.match(value, index)
        if token is None:
            return None
        index = token.end()
        depth += {b"(": 1, b")": -1}.get(token[0], 0)
        if depth > MAX_COMMENT_DEPTH:
            return None
