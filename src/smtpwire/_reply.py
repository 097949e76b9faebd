"""SMTP replies as validated values, and their wire form (RFC 5321 4.2, RFC 2034)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import LocalProtocolError

EnhancedCode = tuple[int, int, int]

# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including the code
# and CRLF; leave room for "NNN-" (4), "5.999.999 " (10) and CRLF (2).
MAX_TEXT_OCTETS = 512 - 4 - 10 - 2
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_WIRE = {True: "_wire_enhanced", False: "_wire_plain"}


@dataclass(frozen=True)
class Reply:
    """A reply the server sends: ``Reply(250, "OK", (2, 1, 0))``.

    ``text`` may be one line or a sequence of lines (a multi-line reply).
    ``enhanced`` is the RFC 3463 status code; when it is ``None`` the class
    default ``X.0.0`` is used.  3xx replies carry no enhanced code.
    """

    code: int
    text: str | Sequence[str] = ""
    enhanced: EnhancedCode | None = None

    def __post_init__(self) -> None:
        lines = _lines_of(self.text)
        object.__setattr__(self, "text", lines)
        if not isinstance(self.code, int) or not 200 <= self.code <= 599 or self.code % 100 // 10 > 5:
            raise LocalProtocolError(f"invalid reply code {self.code!r}")
        if not lines:
            raise LocalProtocolError("a reply needs at least one line")
        for line in lines:
            if not isinstance(line, str):
                raise LocalProtocolError(f"reply lines must be str, not {type(line).__name__}")
            if _CONTROL.search(line):
                raise LocalProtocolError(f"reply line must be text without control characters: {line!r}")
            if len(line.encode()) > MAX_TEXT_OCTETS:
                raise LocalProtocolError(f"reply line longer than {MAX_TEXT_OCTETS} octets")
        if self.enhanced is not None:
            _check_enhanced(self.code, self.enhanced)

    @property
    def lines(self) -> tuple[str, ...]:
        """The text lines of the reply."""
        assert isinstance(self.text, tuple)
        return self.text

    @property
    def is_positive(self) -> bool:
        """True for 2xx and 3xx replies."""
        return self.code < 400

    def to_bytes(self, enhanced_codes: bool = True) -> bytes:
        """Serialise, adding the enhanced status code when the session offers them (worked out once)."""
        cache = self.__dict__  # a frozen value: its wire forms are kept beside its fields
        wire: bytes | None = cache.get(_WIRE[enhanced_codes])
        if wire is None:
            wire = cache[_WIRE[enhanced_codes]] = self._serialise(enhanced_codes)
        return wire

    def _serialise(self, enhanced_codes: bool) -> bytes:
        prefix = ""
        if enhanced_codes and self.code // 100 != 3:
            klass, subject, detail = self.enhanced or (self.code // 100, 0, 0)
            prefix = f"{klass}.{subject}.{detail} "
        last = len(self.lines) - 1
        return "".join(
            f"{self.code}{' ' if i == last else '-'}{prefix}{line}".rstrip(" ") + "\r\n"
            for i, line in enumerate(self.lines)
        ).encode()


def _lines_of(text: str | Sequence[str]) -> tuple[str, ...]:
    """One line or a sequence of them; bytes would read as a sequence of ints, so they are refused."""
    if isinstance(text, str):
        return (text,)
    if not isinstance(text, (bytes, bytearray, memoryview)):
        try:
            return tuple(text)
        except TypeError:
            pass
    raise LocalProtocolError(f"reply text must be a str or a sequence of str, not {type(text).__name__}")


def _check_enhanced(code: int, enhanced: object) -> None:
    """RFC 3463 2: three ints, class.subject.detail; the class is the reply's, subject and detail 0-999."""
    if (
        not isinstance(enhanced, tuple)
        or len(enhanced) != 3
        or not all(isinstance(number, int) and not isinstance(number, bool) for number in enhanced)
    ):
        raise LocalProtocolError(f"enhanced status code must be a tuple of three ints, not {enhanced!r}")
    if code // 100 == 3:
        raise LocalProtocolError("3xx replies carry no enhanced status code")
    klass, subject, detail = enhanced
    if klass != code // 100 or not (0 <= subject <= 999 and 0 <= detail <= 999):
        raise LocalProtocolError(f"enhanced code {enhanced} does not fit reply {code}")


@functools.lru_cache(maxsize=256)
def cached_reply(code: int, text: str | tuple[str, ...], enhanced: EnhancedCode | None = None) -> Reply:
    """A reply the server builds again and again from the same parts (its host name, EHLO keywords).

    Built, checked and serialised once per distinct value instead of once per
    connection; replies are immutable, so sharing them is safe.
    """
    return Reply(code, text, enhanced)


# -- replies the core and the adapters both send, each written once --------------

OK = Reply(250, "OK", (2, 0, 0))
MESSAGE_TOO_BIG = Reply(552, "Message size exceeds fixed maximum message size", (5, 3, 4))
AUTHENTICATED = Reply(235, "Authentication successful", (2, 7, 0))
TLS_REQUIRED = Reply(530, "Must issue a STARTTLS command first", (5, 7, 0))
BAD_CREDENTIALS = Reply(535, "Authentication credentials invalid", (5, 7, 8))
