"""The Sendmail milter protocol, version 6, as the MTA speaks it: packets, commands and the replies decoded.

Why not a library: kilter.protocol, the maintained Python codec, implements
the filter's side (it decodes commands and encodes replies); the MTA's side
needs the converse, with every reply a filter may send checked against what
the negotiation allowed.  libmilter's protocol is small and stable (a 4-octet
big-endian length, a command octet, a payload), so it is written here, with
no I/O, no clock, and a bound on every size a peer chooses.

Every malformed reply decodes to ``MilterError`` rather than raising: the
I/O layer maps it to the milter's default action.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

VERSION = 6
#: The largest packet a filter may send: a 65535-octet body chunk (libmilter's MILTER_CHUNK_SIZE) and a little.
MAX_PACKET = 65535 + 1024
#: Body chunks sent to a filter (SMFIC_BODY) hold at most this many octets.
BODY_CHUNK = 65535

# Commands (MTA to filter).
OPTNEG, MACRO, CONNECT, HELO, MAIL, RCPT, DATA = b"O", b"D", b"C", b"H", b"M", b"R", b"T"
HEADER, EOH, BODY, BODYEOB, ABORT, QUIT = b"L", b"N", b"B", b"E", b"A", b"Q"

# Actions a filter may take at the end of the message (SMFIF_*), offered in the negotiation.
ADDHDRS, CHGBODY, ADDRCPT, DELRCPT, CHGHDRS, QUARANTINE, CHGFROM, ADDRCPT_PAR, SETSYMLIST = (
    0x01,
    0x02,
    0x04,
    0x08,
    0x10,
    0x20,
    0x40,
    0x80,
    0x100,
)
ALL_ACTIONS = 0x1FF

# Protocol flags (SMFIP_*): stages a filter skips (NO*) and stages it will not answer (NR_*).
NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH, NR_HDR = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80
NOUNKNOWN, NODATA, SKIP, RCPT_REJ = 0x100, 0x200, 0x400, 0x800
NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA, NR_UNKN, NR_EOH, NR_BODY = (
    0x1000,
    0x2000,
    0x4000,
    0x8000,
    0x10000,
    0x20000,
    0x40000,
    0x80000,
)
#: What this MTA can honour: every skip and no-reply flag; not RCPT_REJ, HDR_LEADSPC nor the larger body chunks.
OFFERED_PROTOCOL = 0xFF7FF

#: The macro stages of a SETSYMLIST (SMFIM_*), by the command whose macros they name.
SYMLIST_STAGES = {0: CONNECT, 1: HELO, 2: MAIL, 3: RCPT, 4: DATA, 5: BODYEOB, 6: EOH}

_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]{1,200}")
_REPLY_LINE = re.compile(r"([45][0-5][0-9])([ -])(?:([45])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$))?(.*)", re.DOTALL)
_MAX_REPLY_LINES = 10


# -- events: what a filter's reply means ------------------------------------------------------


@dataclass(frozen=True)
class Negotiated:
    """The filter's answer to the option negotiation: what it will do, skip, not answer, and which macros it wants."""

    version: int
    actions: int
    protocol: int
    macros: Mapping[bytes, tuple[str, ...]]


@dataclass(frozen=True)
class Continue:
    """Go on with the next stage."""


@dataclass(frozen=True)
class Accept:
    """Accept: at connect or HELO, the whole session; at a later stage, this message; no more filtering of it."""


@dataclass(frozen=True)
class Reject:
    """Refuse (at RCPT: that recipient) with the MTA's standard 5xx."""


@dataclass(frozen=True)
class Tempfail:
    """Refuse for now (at RCPT: that recipient) with the MTA's standard 4xx."""


@dataclass(frozen=True)
class Discard:
    """Accept the message and throw it away."""


@dataclass(frozen=True)
class ReplyCode:
    """Refuse with the filter's own reply: ``code``, its enhanced code if any, and its text lines."""

    code: int
    enhanced: tuple[int, int, int] | None
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Skip:
    """No more body chunks, please (SMFIR_SKIP)."""


@dataclass(frozen=True)
class Progress:
    """Still working: wait on (SMFIR_PROGRESS)."""


@dataclass(frozen=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True)
class InsertHeader:
    """Insert at ``index`` (0: on top) among all the header fields."""

    index: int
    name: str
    value: str


@dataclass(frozen=True)
class ChangeHeader:
    """Change the ``index``-th (from 1) field called ``name``; an empty ``value`` deletes it."""

    index: int
    name: str
    value: str


@dataclass(frozen=True)
class AddRecipient:
    address: str
    params: str | None = None


@dataclass(frozen=True)
class DeleteRecipient:
    address: str


@dataclass(frozen=True)
class ChangeSender:
    address: str
    params: str | None = None


@dataclass(frozen=True)
class ReplaceBody:
    """One chunk of the new body; the chunks of one message's replies make the body, in order."""

    chunk: bytes


@dataclass(frozen=True)
class Quarantine:
    reason: str


@dataclass(frozen=True)
class MilterError:
    """The filter said something this MTA cannot take: the milter's default action applies."""

    reason: str


Final = Continue | Accept | Reject | Tempfail | Discard | ReplyCode
Modification = (
    AddHeader | InsertHeader | ChangeHeader | AddRecipient | DeleteRecipient | ChangeSender | ReplaceBody | Quarantine
)
#: What a reply packet decodes to.
ReplyEvent = Final | Skip | Progress | Modification | MilterError
Event = ReplyEvent | Negotiated

#: The negotiated action flag each modification needs.
NEEDS_ACTION: Mapping[type, int] = {
    AddHeader: ADDHDRS,
    InsertHeader: ADDHDRS,
    ChangeHeader: CHGHDRS,
    AddRecipient: ADDRCPT,
    DeleteRecipient: DELRCPT,
    ChangeSender: CHGFROM,
    ReplaceBody: CHGBODY,
    Quarantine: QUARANTINE,
}


# -- framing ------------------------------------------------------------------------------------


def packet(command: bytes, payload: bytes = b"") -> bytes:
    """One packet: the length of command and payload (4 octets, big-endian), the command, the payload."""
    return struct.pack("!I", len(payload) + 1) + command + payload


class PacketReader:
    """Cuts a filter's byte stream into ``(command, payload)`` packets, refusing any longer than ``MAX_PACKET``."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_packet(self) -> tuple[bytes, bytes] | MilterError | None:
        """The next whole packet, an error if its length is impossible, ``None`` until it has all arrived."""
        if len(self._buffer) < 4:
            return None
        (length,) = struct.unpack_from("!I", self._buffer)
        if length == 0 or length > MAX_PACKET:
            return MilterError(f"a packet of {length} octets")
        if len(self._buffer) < 4 + length:
            return None
        command, payload = bytes(self._buffer[4:5]), bytes(self._buffer[5 : 4 + length])
        del self._buffer[: 4 + length]
        return command, payload

    @property
    def pending(self) -> int:
        """Octets received that are not yet a whole packet."""
        return len(self._buffer)


# -- commands -----------------------------------------------------------------------------------


def _strings(*values: str) -> bytes:
    """Each value NUL-terminated; a NUL inside one (never in an SMTP value) would cut it, so it is dropped."""
    return b"".join(value.encode("utf-8", "surrogateescape").replace(b"\0", b"") + b"\0" for value in values)


def optneg(actions: int = ALL_ACTIONS, protocol: int = OFFERED_PROTOCOL) -> bytes:
    return packet(OPTNEG, struct.pack("!III", VERSION, actions, protocol))


def macros(stage: bytes, values: Mapping[str, str]) -> bytes:
    """The macros for ``stage`` (``MAIL``...), names as Postfix sends them: ``j``, ``{client_addr}``."""
    pairs = [part for name, value in values.items() for part in (name, value)]
    return packet(MACRO, stage + _strings(*pairs))


def connect(hostname: str, family: str, port: int, address: str) -> bytes:
    """``family``: ``"4"``, ``"6"``, ``"L"`` (a Unix socket: ``address`` its path) or ``"U"`` (unknown)."""
    if family == "U":
        return packet(CONNECT, _strings(hostname) + b"U")
    return packet(CONNECT, _strings(hostname) + family.encode() + struct.pack("!H", port & 0xFFFF) + _strings(address))


def helo(name: str) -> bytes:
    return packet(HELO, _strings(name))


def mail(address: str, params: Iterable[str] = ()) -> bytes:
    return packet(MAIL, _strings(f"<{address}>", *params))


def rcpt(address: str, params: Iterable[str] = ()) -> bytes:
    return packet(RCPT, _strings(f"<{address}>", *params))


def header(name: str, value: str) -> bytes:
    return packet(HEADER, _strings(name, value))


def body(chunk: bytes) -> bytes:
    return packet(BODY, chunk)


def empty(command: bytes) -> bytes:
    """DATA, EOH, BODYEOB, ABORT or QUIT: a command with no payload."""
    return packet(command)


def smtp_params(params: Mapping[str, str | None]) -> list[str]:
    """ESMTP parameters as MAIL and RCPT carry them to a filter: ``KEY=value`` or ``KEY``."""
    return [key if value is None else f"{key}={value}" for key, value in params.items()]


# -- replies ------------------------------------------------------------------------------------


def decode_negotiation(command: bytes, payload: bytes) -> Negotiated | MilterError:
    """The filter's SMFIC_OPTNEG reply, with its SETSYMLIST macro lists; anything else is an error."""
    if command != OPTNEG or len(payload) < 12:
        return MilterError(f"the negotiation was answered with {command!r} and {len(payload)} octets")
    version, actions, protocol = struct.unpack_from("!III", payload)
    if not 2 <= version <= VERSION:
        return MilterError(f"milter protocol version {version}")
    if actions & ~ALL_ACTIONS or protocol & ~OFFERED_PROTOCOL:
        return MilterError(f"actions {actions:#x} or protocol {protocol:#x} beyond what was offered")
    symlists = _symlists(payload[12:]) if actions & SETSYMLIST else {}
    if isinstance(symlists, MilterError):
        return symlists
    return Negotiated(version, actions, protocol, symlists)


def _symlists(data: bytes) -> dict[bytes, tuple[str, ...]] | MilterError:
    lists: dict[bytes, tuple[str, ...]] = {}
    while data:
        if len(data) < 5 or b"\0" not in data[4:]:
            return MilterError("a truncated macro list")
        (index,) = struct.unpack_from("!I", data)
        names, _, data = data[4:].partition(b"\0")
        if index not in SYMLIST_STAGES:
            return MilterError(f"a macro list for stage {index}")
        lists[SYMLIST_STAGES[index]] = tuple(names.decode("latin-1").split())
    return lists


_SIMPLE: Mapping[bytes, ReplyEvent] = {
    b"c": Continue(),
    b"a": Accept(),
    b"r": Reject(),
    b"t": Tempfail(),
    b"d": Discard(),
    b"s": Skip(),
    b"p": Progress(),
}


def decode_reply(command: bytes, payload: bytes) -> ReplyEvent:
    """A reply packet as an event; an unknown command or a malformed payload is a ``MilterError``."""
    simple = _SIMPLE.get(command)
    if simple is not None:
        return simple
    if command == b"b":
        return ReplaceBody(payload)
    if command in (b"i", b"m"):
        if len(payload) < 5:
            return MilterError(f"a truncated {command!r} reply")
        (index,) = struct.unpack_from("!I", payload)
        kind = InsertHeader if command == b"i" else ChangeHeader
        fields = _fields(payload[4:])
        return _checked_header(fields, lambda name, value: kind(index, name, value))
    decode = _DECODERS.get(command)
    if decode is None:
        return MilterError(f"unknown reply {command!r}")
    fields = _fields(payload)
    return decode(fields) if fields is not None else MilterError(f"a {command!r} reply that is not NUL-terminated text")


def _fields(payload: bytes) -> list[str] | None:
    """The NUL-terminated strings of ``payload`` (UTF-8, SMTPUTF8 addresses included); ``None`` if it is not that."""
    if not payload.endswith(b"\0"):
        return None
    try:
        return payload[:-1].decode("utf-8").split("\0")
    except UnicodeDecodeError:
        return None


def _checked_header(fields: list[str] | None, make: Callable[[str, str], ReplyEvent]) -> ReplyEvent:
    if fields is None or len(fields) != 2 or not _HEADER_NAME.fullmatch(fields[0].encode()):
        return MilterError("a header change without a valid field name and value")
    if not header_value_is_safe(fields[1]):
        return MilterError(f"header {fields[0]!r} with a line that does not continue the field")
    return make(fields[0], fields[1])


def header_value_is_safe(value: str) -> bool:
    """Every line break in ``value`` starts a continuation line (white space next), so it stays one field."""
    lines = value.replace("\r\n", "\n").split("\n")
    if any("\r" in line or "\0" in line for line in lines):
        return False
    return all(line[:1] in (" ", "\t") and line.strip() for line in lines[1:])


def _address(fields: list[str], count: int) -> str | None:
    """The address of an envelope change, angle brackets removed; ``None`` if the fields do not fit."""
    if not 1 <= len(fields) <= count or len(fields[0]) > 1024 or any(c in fields[0] for c in "\r\n"):
        return None
    address = fields[0].strip()
    return address[1:-1] if address.startswith("<") and address.endswith(">") else address


def _envelope(fields: list[str], kind: type[AddRecipient] | type[ChangeSender], count: int = 2) -> ReplyEvent:
    address = _address(fields, count)
    if address is None:
        return MilterError(f"a malformed {kind.__name__}")
    params = fields[1] if len(fields) == 2 and fields[1] else None
    if params is not None and any(c in params for c in "\r\n"):
        return MilterError(f"{kind.__name__} parameters with a line break")
    return kind(address, params)


def _delete_recipient(fields: list[str]) -> ReplyEvent:
    address = _address(fields, 1)
    return DeleteRecipient(address) if address is not None else MilterError("a malformed DeleteRecipient")


def decode_reply_code(text: str) -> ReplyCode | MilterError:
    """SMFIR_REPLYCODE's text, ``554 5.7.1 Gtube pattern`` (lines joined by CRLF), kept as the filter wrote it."""
    lines = text.split("\r\n")
    if len(lines) > _MAX_REPLY_LINES or len(text) > 4000:
        return MilterError("a reply code of too many lines")
    parsed = [_REPLY_LINE.fullmatch(line) for line in lines]
    if any(match is None for match in parsed):
        return MilterError(f"a reply code that is not a 4xx or 5xx reply: {text[:80]!r}")
    matches = [match for match in parsed if match is not None]
    code = matches[0].group(1)
    if any(m.group(1) != code or any(ord(c) < 32 or ord(c) == 127 for c in m.group(6)) for m in matches):
        return MilterError(f"a reply code with lines that disagree or control characters: {text[:80]!r}")
    first = matches[0]
    enhanced = None
    if first.group(3) is not None:
        if first.group(3) != code[0]:
            return MilterError(f"an enhanced code that disagrees with {code}")
        enhanced = (int(first.group(3)), int(first.group(4)), int(first.group(5)))
    return ReplyCode(int(code), enhanced, tuple(m.group(6) for m in matches))


_DECODERS: Mapping[bytes, Callable[[list[str]], ReplyEvent]] = {
    b"y": lambda fields: decode_reply_code(fields[0]) if len(fields) == 1 else MilterError("a malformed reply code"),
    b"h": lambda fields: _checked_header(fields, AddHeader),
    b"+": lambda fields: _envelope(fields, AddRecipient, 1),
    b"2": lambda fields: _envelope(fields, AddRecipient),
    b"-": _delete_recipient,
    b"e": lambda fields: _envelope(fields, ChangeSender),
    b"q": lambda fields: Quarantine(fields[0][:200]) if len(fields) == 1 else MilterError("a malformed quarantine"),
}
