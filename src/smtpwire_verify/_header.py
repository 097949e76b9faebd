"""The Authentication-Results header field (RFC 8601): written, and forged copies of ours removed.

Written here rather than by authres (whose parser the tests read it back
with), for three reasons: authres writes every result on one line (we
fold one result per line, RFC 5322 2.2.3); its quoting leaves any value
holding an ``@`` unquoted, so ``a b@c; dkim=pass`` would become a forged
result (values are cleaned and quoted by ``_value`` and ``_pvalue``); and
building its objects cost more than the rest of a message's checks but
DKIM.  Its parser (which dkimpy's ARC sealing uses on our field) reads a
quoted property value only as the last of its result, so properties that
need quoting are written after the others: their order has no meaning
(RFC 8601 2.2), and the usual one (``header.b``) then reads back.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence

from ._dkim import body_start
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


def _value(text: str) -> str:
    """RFC 8601's ``value`` (a ``reason=``): a token as is, anything else a quoted-string."""
    return text if _TOKEN.match(text) else _quoted(text)


def _pvalue(text: str) -> str:
    """RFC 8601's ``pvalue`` (a property's): a token or a ``local-part@domain-name`` as is, else quoted."""
    return text if _TOKEN.match(text) or _MAILBOX.match(text) else _quoted(text)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cleaned(text: str) -> str:
    """``text`` fit for a header: every character outside printable ASCII becomes ``?``, cut at ``MAX_VALUE``."""
    text = text[:MAX_VALUE]
    return text if text.isascii() and text.isprintable() else _UNPRINTABLE.sub("?", text)


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
    head = _checked_head(result.method, result.result)
    if result.reason is not None:
        head += f" reason={_value(_cleaned(result.reason))}"
    plain: list[str] = []
    quoted: list[str] = []  # a parser such as authres's reads a quoted value only as its result's last
    for name, value in result.properties:
        _check_property(name)
        written = _pvalue(_cleaned(value))
        (quoted if written.startswith('"') else plain).append(f"{name}={written}")
    return "".join(_fold([head, *plain, *quoted]))


@functools.lru_cache(maxsize=256)  # our own few names: checked once each
def _checked_head(method: str, result: str) -> str:
    if not (_KEY.match(method) and _DOT_ATOM.match(result)):
        raise ValueError(f"{method}={result} is not a method and a result RFC 8601 can carry")
    return f"{method}={result}"


@functools.lru_cache(maxsize=256)
def _check_property(name: str) -> None:
    if _PROPERTY.match(name) is None:
        raise ValueError(f"{name!r} is not a ptype.property of RFC 8601 2.3")


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
    end = body_start(message)
    if end is not None and not _RESULTS_FIELD.search(message, 0, end):  # most mail: nothing to look at
        return message
    claims = (authserv_id.lower(), None)
    fields, rest = split_header(message)
    kept = [field for field in fields if not (field_name(field) == FIELD_NAME and _claimed_id(field) in claims)]
    return message if len(kept) == len(fields) else b"".join(kept) + rest


#: A line that may start an Authentication-Results field (``split_header`` and ``field_name`` decide).
_RESULTS_FIELD = re.compile(rb"(?im)^[ \t]*authentication-results[ \t]*:")
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
