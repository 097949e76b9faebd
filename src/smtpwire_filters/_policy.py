"""Postfix's policy delegation protocol (SMTPD_POLICY_README), the client's side, without I/O.

A request is ``name=value`` lines and an empty line; so is the reply, of
which only ``action`` counts.  The action is read as Postfix's access(5)
actions read, keeping those that mean something to a server that stores
mail and does not relay; the ones about forwarding (FILTER, REDIRECT, BCC)
come back as DUNNO with the keyword noted, for the caller to log.  Whatever
else a policy server sends is a ``PolicyReplyError``, after which the
caller applies its default action, as Postfix does.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

#: Attributes one request may carry (Postfix sends about 35).
MAX_ATTRIBUTES = 64
#: Characters of a value sent; longer ones are cut (no attribute Postfix sends comes near).
MAX_VALUE = 2048
#: Octets of one reply line, its newline included.
MAX_REPLY_LINE = 4096
#: Lines of one reply, the empty line included.
MAX_REPLY_LINES = 32
#: Octets of one PREPEND header field (RFC 5322's line limit, as one unfolded line).
MAX_HEADER = 998

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_UNSAFE = re.compile(r"[\r\n\0]")
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_NUMERIC = re.compile(r"([45])(\d\d)(?:\s+|$)")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but the colon
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a field's one line: no control but HT


class PolicyKind(enum.Enum):
    """What a policy server told the server to do."""

    OK = "OK"
    DUNNO = "DUNNO"
    REJECT = "REJECT"
    DEFER = "DEFER"
    DEFER_IF_PERMIT = "DEFER_IF_PERMIT"
    DEFER_IF_REJECT = "DEFER_IF_REJECT"
    #: A numeric reply: ``code`` 4xx or 5xx with ``text``.
    REPLY = "REPLY"
    #: Add the header field ``text`` on top of the message.
    PREPEND = "PREPEND"
    WARN = "WARN"
    HOLD = "HOLD"
    DISCARD = "DISCARD"


@dataclass(frozen=True)
class PolicyAction:
    """One parsed action: its kind, its text, and for refusals the reply code and enhanced code the text gave.

    ``code`` is set for ``REPLY`` only; ``enhanced`` when the text began with
    an enhanced status code (removed from ``text``).  ``ignored`` names an
    action Postfix knows that this server does not apply (``"FILTER"``): the
    action is then DUNNO.
    """

    kind: PolicyKind
    text: str = ""
    code: int | None = None
    enhanced: tuple[int, int, int] | None = None
    ignored: str | None = None


class PolicyReplyError(ValueError):
    """A reply (or an action) that is not the protocol's: the caller applies its default action."""


#: Postfix's actions about delivering elsewhere or logging only, which change nothing here.
_NOT_APPLIED = frozenset({"FILTER", "REDIRECT", "BCC", "INFO"})
_WITH_CODE = frozenset({PolicyKind.REJECT, PolicyKind.DEFER, PolicyKind.DEFER_IF_PERMIT, PolicyKind.DEFER_IF_REJECT})
_KINDS = {kind.value: kind for kind in PolicyKind if kind is not PolicyKind.REPLY}


def policy_request(attributes: Mapping[str, str]) -> bytes:
    """The request for ``attributes``: a ``name=value`` line each, then an empty line.

    Values lose their CR, LF and NUL (each becomes ``?``, as Postfix prints
    what it cannot send) and are cut to ``MAX_VALUE`` characters.  A bad
    name, or too many, is the caller's mistake: ``ValueError``.
    """
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"{len(attributes)} attributes; a policy request carries at most {MAX_ATTRIBUTES}")
    lines = []
    for name, value in attributes.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a policy attribute name")
        lines.append(f"{name}={_UNSAFE.sub('?', value[:MAX_VALUE])}\n")
    lines.append("\n")
    return "".join(lines).encode("utf-8", "replace")


def parse_action(text: str) -> PolicyAction:
    """The action ``text`` (``"REJECT no thanks"``, ``"450 4.7.1 later"``) means, as Postfix reads it."""
    text = _UNSAFE.sub("?", text).strip(" \t")  # no line break reaches a reply or a header
    keyword, _, rest = text.partition(" ")
    rest = rest.strip(" \t")
    numeric = _NUMERIC.match(text)
    if numeric is not None:
        code = int(numeric[1] + numeric[2])
        enhanced, why = _enhanced(text[numeric.end() :], code // 100)
        return PolicyAction(PolicyKind.REPLY, why, code=code, enhanced=enhanced)
    upper = keyword.upper()
    if upper in _NOT_APPLIED:
        return PolicyAction(PolicyKind.DUNNO, rest, ignored=upper)
    kind = _KINDS.get(upper)
    if kind is None:
        raise PolicyReplyError(f"unknown policy action {text[:60]!r}")
    if kind is PolicyKind.PREPEND:
        return _prepend(rest)
    if kind in _WITH_CODE:
        klass = 5 if kind is PolicyKind.REJECT else 4
        enhanced, why = _enhanced(rest, klass)
        return PolicyAction(kind, why, enhanced=enhanced)
    return PolicyAction(kind, rest)


def _enhanced(text: str, klass: int) -> tuple[tuple[int, int, int] | None, str]:
    """The enhanced status code ``text`` starts with (its class made the reply's, as Postfix does) and the rest."""
    match = _ENHANCED.match(text)
    if match is None:
        return None, text.strip(" \t")
    return (klass, int(match[2]), int(match[3])), text[match.end() :].strip(" \t")


def _prepend(header: str) -> PolicyAction:
    """PREPEND with a header field that would be one (Postfix ignores the action otherwise; so is it here)."""
    name, colon, _ = header.partition(":")
    too_long = len(header.encode("utf-8", "replace")) > MAX_HEADER
    if not colon or not _HEADER_NAME.fullmatch(name) or _HEADER_CONTROL.search(header) or too_long:
        return PolicyAction(PolicyKind.DUNNO, header[:80], ignored="PREPEND")
    return PolicyAction(PolicyKind.PREPEND, header)


class PolicyReplyReader:
    """Reads one reply as its bytes arrive: ``receive(data)`` is ``None`` until the empty line that ends it.

    Memory stays bounded by ``MAX_REPLY_LINE`` and ``MAX_REPLY_LINES``.
    ``trailing`` holds what came after the reply's end: a server that sent
    it is not in step, and its connection is no longer to be used.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._searched = 0
        self._lines = 0
        self._action: str | None = None
        self.result: PolicyAction | None = None
        self.trailing = b""

    def receive(self, data: bytes) -> PolicyAction | None:
        """The action, once the reply is complete; ``PolicyReplyError`` if it is not the protocol's.

        ``b""`` is the server closing: before the reply's end, an error.
        """
        if self.result is not None:
            self.trailing += data[: MAX_REPLY_LINE - len(self.trailing)]
            return self.result
        if not data:
            raise PolicyReplyError("the policy server closed the connection before its reply ended")
        self._buffer += data
        while self.result is None:
            end = self._buffer.find(b"\n", self._searched)
            if end < 0:
                self._searched = len(self._buffer)
                if len(self._buffer) >= MAX_REPLY_LINE:
                    raise PolicyReplyError(f"a reply line longer than {MAX_REPLY_LINE} octets")
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._searched = 0
            self._line(line)
        self.trailing = bytes(self._buffer[:MAX_REPLY_LINE])
        return self.result

    def _line(self, line: bytes) -> None:
        if len(line) >= MAX_REPLY_LINE:
            raise PolicyReplyError(f"a reply line longer than {MAX_REPLY_LINE} octets")
        self._lines += 1
        if self._lines > MAX_REPLY_LINES:
            raise PolicyReplyError(f"a reply of more than {MAX_REPLY_LINES} lines")
        text = line.removesuffix(b"\r").decode("utf-8", "replace")
        if not text:
            if self._action is None:
                raise PolicyReplyError("a reply without an action")
            self.result = parse_action(self._action)
            return
        name, equals, value = text.partition("=")
        if not equals:
            raise PolicyReplyError(f"a reply line that is not name=value: {text[:60]!r}")
        if name == "action":
            if self._action is not None:
                raise PolicyReplyError("a reply with two actions")
            self._action = value


def parse_policy_reply(data: bytes) -> PolicyAction:
    """The action of the whole reply ``data`` (nothing after its empty line); ``PolicyReplyError`` otherwise."""
    reader = PolicyReplyReader()
    action = reader.receive(data)
    if action is None:
        raise PolicyReplyError("the reply did not end with an empty line")
    if reader.trailing:
        raise PolicyReplyError("data after the reply's end")
    return action
