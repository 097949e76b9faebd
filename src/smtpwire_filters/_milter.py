"""One milter's conversation as the MTA holds it, sans-IO: commands to send, replies in, each stage's outcome out.

The I/O layer runs every stage the same way::

    step = milter.mail(macros, address, params)
    while True:
        send(step.data)
        if step.outcome is not None:
            break
        step = milter.receive(recv())  # b"" when the filter closed the connection

Commands go one at a time, each awaiting its reply (as Postfix does), so a
filter that answers early (a reject at the first header) is heard before more
is sent, and neither side can block writing while the other writes too.
After the negotiation the session skips the stages the filter declined and
awaits no reply where it said it sends none.  Whatever the filter sends that
the stage does not allow is an ``Outcome`` whose ``final`` is a
``MilterError``: the caller applies the milter's default action.

``MilterMessage`` is the message as the filters see and change it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from . import _milter_codec as codec
from ._milter_codec import (
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    Continue,
    DeleteRecipient,
    Final,
    InsertHeader,
    MilterError,
    Modification,
    Negotiated,
    Progress,
    Quarantine,
    ReplaceBody,
    Skip,
)

#: Per stage: the protocol flag that skips it and the one that says the filter sends no reply to it.
_STAGE_FLAGS: Mapping[bytes, tuple[int, int]] = {
    codec.CONNECT: (codec.NOCONNECT, codec.NR_CONN),
    codec.HELO: (codec.NOHELO, codec.NR_HELO),
    codec.MAIL: (codec.NOMAIL, codec.NR_MAIL),
    codec.RCPT: (codec.NORCPT, codec.NR_RCPT),
    codec.DATA: (codec.NODATA, codec.NR_DATA),
    codec.HEADER: (codec.NOHDRS, codec.NR_HDR),
    codec.EOH: (codec.NOEOH, codec.NR_EOH),
    codec.BODY: (codec.NOBODY, codec.NR_BODY),
    codec.BODYEOB: (0, 0),
}
_FINALS = (codec.Continue, codec.Accept, codec.Reject, codec.Tempfail, codec.Discard, codec.ReplyCode)


@dataclass(frozen=True)
class Outcome:
    """How a stage ended: the filter's last word, and at the end of the message what it changed, in its order."""

    final: Final | MilterError
    modifications: tuple[Modification, ...] = ()


@dataclass(frozen=True)
class Step:
    """``data`` to send now; then ``outcome`` if the stage is over, else read and ``receive`` the reply.

    ``progress``: the filter said it is still working, so its time limit starts afresh.
    """

    data: bytes
    outcome: Outcome | None = None
    progress: bool = False


CONTINUE = Outcome(Continue())


@dataclass
class _Command:
    data: bytes
    stage: bytes
    awaits_reply: bool


class MilterSession:
    """The MTA's side of one milter connection.

    ``max_changes`` bounds the modifications of one message and
    ``max_octets`` the octets they carry in all (a replaced body, header
    fields: the message held in memory stays bounded); ``max_progress`` the
    "still working" replies one stage may take.  Beyond them, or after any
    error, the session is broken: every later stage's outcome is that error.
    """

    def __init__(self, max_changes: int = 1000, max_octets: int = 64 * 1024 * 1024, max_progress: int = 100) -> None:
        self.max_changes = max_changes
        self.max_octets = max_octets
        self.max_progress = max_progress
        self.negotiated: Negotiated | None = None
        self.error: MilterError | None = None
        self._reader = codec.PacketReader()
        self._queue: list[_Command] = []
        self._awaiting: _Command | None = None
        self._changes: list[Modification] = []
        self._change_octets = 0
        self._progress = 0

    # -- the stages ------------------------------------------------------------------------------

    def negotiate(self, actions: int = codec.ALL_ACTIONS) -> Step:
        """The option negotiation, which opens every connection; ``actions`` the modifications this MTA allows."""
        return self._start([_Command(codec.optneg(actions), codec.OPTNEG, True)])

    def connect(self, macros: Mapping[str, str], hostname: str, family: str, port: int, address: str) -> Step:
        """The client connected; ``family`` ``"4"``, ``"6"``, ``"L"`` (Unix socket) or ``"U"``."""
        return self._stage(codec.CONNECT, macros, codec.connect(hostname, family, port, address))

    def helo(self, macros: Mapping[str, str], name: str) -> Step:
        return self._stage(codec.HELO, macros, codec.helo(name))

    def mail(self, macros: Mapping[str, str], address: str, params: Iterable[str] = ()) -> Step:
        return self._stage(codec.MAIL, macros, codec.mail(address, params))

    def rcpt(self, macros: Mapping[str, str], address: str, params: Iterable[str] = ()) -> Step:
        return self._stage(codec.RCPT, macros, codec.rcpt(address, params))

    def data(self, macros: Mapping[str, str]) -> Step:
        return self._stage(codec.DATA, macros, codec.empty(codec.DATA))

    def message(self, macros: Mapping[str, str], headers: Sequence[tuple[str, str]], body: bytes) -> Step:
        """The message: its header fields, the end of headers, the body in chunks, and the end of the message.

        ``macros`` go with the end of headers and the end of the message (``i``, as Postfix).
        """
        if self.error is not None or self.negotiated is None:
            return self._broken()
        self._changes.clear()
        self._change_octets = 0
        commands = [self._command(codec.HEADER, codec.header(name, value)) for name, value in headers]
        commands += self._with_macros(codec.EOH, macros, codec.empty(codec.EOH))
        chunks = range(0, len(body), codec.BODY_CHUNK)
        commands += [self._command(codec.BODY, codec.body(body[at : at + codec.BODY_CHUNK])) for at in chunks]
        commands += self._with_macros(codec.BODYEOB, macros, codec.empty(codec.BODYEOB))
        return self._start([command for command in commands if command.data])

    def abort(self) -> bytes:
        """What to send when the transaction ends without a message (RSET, a new MAIL): the filter forgets it."""
        return codec.empty(codec.ABORT) if self.error is None and self.negotiated is not None else b""

    def quit(self) -> bytes:
        """What to send as the session ends."""
        return codec.empty(codec.QUIT) if self.error is None else b""

    def broken(self, reason: str) -> Outcome:
        """The I/O failed (a timeout, a broken connection): the session is over, with this error as its outcome."""
        step = self._fail(reason)
        assert step.outcome is not None
        return step.outcome

    def skips(self, stage: bytes) -> bool:
        """Whether the filter declined ``stage`` (``codec.HELO``...) in the negotiation."""
        return self.negotiated is not None and bool(self.negotiated.protocol & _STAGE_FLAGS[stage][0])

    # -- the replies -----------------------------------------------------------------------------

    def receive(self, data: bytes) -> Step:
        """Bytes from the filter (``b""``: it closed the connection); the next step of the stage."""
        if self._awaiting is None:
            return self._fail("the filter spoke out of turn") if data else self._broken()
        if not data:
            return self._fail("the filter closed the connection")
        self._reader.feed(data)
        return self._replies()

    def _replies(self) -> Step:
        """Every whole reply received, up to the one that calls for the next command.

        Bytes after it answer a command the filter has not been sent yet: a
        filter out of step (one that also answered the macros, say) would
        otherwise have its stray ``continue`` taken for the next stage's
        verdict, so that is an error.
        """
        progress = False
        while True:
            packet = self._reader.next_packet()
            if packet is None:
                return Step(b"", None, progress)
            if isinstance(packet, MilterError):
                return self._fail(packet.reason)
            step = self._reply(*packet)
            if step is None:
                continue
            progress |= step.progress
            if step.outcome is not None or step.data:
                if self._reader.pending:
                    return self._fail("the filter spoke out of turn")
                return Step(step.data, step.outcome, progress)

    def _reply(self, command: bytes, payload: bytes) -> Step | None:
        """The step a reply packet leads to; ``None`` to read on (a modification at the end of the message)."""
        awaiting = self._awaiting
        assert awaiting is not None
        if awaiting.stage == codec.OPTNEG:
            return self._negotiated(codec.decode_negotiation(command, payload))
        event = codec.decode_reply(command, payload)
        if isinstance(event, MilterError):
            return self._fail(event.reason)
        if isinstance(event, Progress):
            self._progress += 1
            return (
                self._fail("too many progress replies") if self._progress > self.max_progress else Step(b"", None, True)
            )
        if isinstance(event, Skip) and awaiting.stage == codec.BODY:
            self._queue = [command for command in self._queue if command.stage != codec.BODY]
            return self._advance()
        if isinstance(event, _FINALS):
            return self._final(event)
        if awaiting.stage == codec.BODYEOB and not isinstance(event, Skip):
            return self._modification(event, len(payload))
        return self._fail(f"{type(event).__name__} at the {awaiting.stage.decode()} stage")

    def _negotiated(self, event: Negotiated | MilterError) -> Step:
        if isinstance(event, MilterError):
            return self._fail(event.reason)
        self.negotiated = event
        self._awaiting = None
        return Step(b"", CONTINUE)

    def _final(self, event: Final) -> Step:
        """A stage's answer: anything but "continue" ends it, with the commands not yet sent dropped."""
        if isinstance(event, Continue) and self._queue:
            return self._advance()
        self._queue.clear()
        self._awaiting = None
        changes, self._changes = tuple(self._changes), []
        return Step(b"", Outcome(event, changes))

    def _modification(self, event: Modification, octets: int) -> Step | None:
        assert self.negotiated is not None
        if not self.negotiated.actions & codec.NEEDS_ACTION[type(event)]:
            return self._fail(f"{type(event).__name__}, which the negotiation did not allow")
        self._change_octets += octets
        if self._change_octets > self.max_octets:
            return self._fail(f"modifications over {self.max_octets} octets")
        if len(self._changes) >= self.max_changes:
            return self._fail(f"more than {self.max_changes} modifications")
        self._changes.append(event)
        return None

    # -- the machinery ---------------------------------------------------------------------------

    def _stage(self, stage: bytes, macros: Mapping[str, str], data: bytes) -> Step:
        if self.error is not None or self.negotiated is None:
            return self._broken()
        if self.skips(stage):
            return Step(b"", CONTINUE)
        return self._start(self._with_macros(stage, macros, data))

    def _with_macros(self, stage: bytes, macros: Mapping[str, str], data: bytes) -> list[_Command]:
        """The stage's command, after its macros (those the filter asked for, when it named them)."""
        command = self._command(stage, data)
        if not command.data:
            return []
        assert self.negotiated is not None
        wanted = self.negotiated.macros.get(stage)
        chosen = {name: value for name, value in macros.items() if wanted is None or name in wanted}
        return [_Command(codec.macros(stage, chosen), codec.MACRO, False), command] if chosen else [command]

    def _command(self, stage: bytes, data: bytes) -> _Command:
        """``data`` for ``stage``; nothing when the filter skips that stage."""
        skip, no_reply = _STAGE_FLAGS[stage]
        assert self.negotiated is not None
        if self.negotiated.protocol & skip:
            return _Command(b"", stage, False)
        return _Command(data, stage, not self.negotiated.protocol & no_reply)

    def _start(self, commands: list[_Command]) -> Step:
        self._queue = commands
        self._progress = 0
        return self._advance()

    def _advance(self) -> Step:
        """Every command up to and including the next that awaits a reply; "continue" if none does."""
        sent = bytearray()
        while self._queue:
            command = self._queue.pop(0)
            sent += command.data
            if command.awaits_reply:
                self._awaiting = command
                return Step(bytes(sent))
        self._awaiting = None
        return Step(bytes(sent), CONTINUE)

    def _fail(self, reason: str) -> Step:
        self.error = MilterError(reason)
        self._queue.clear()
        self._awaiting = None
        return self._broken()

    def _broken(self) -> Step:
        return Step(b"", Outcome(self.error or MilterError("the negotiation has not happened")))


# -- the message the filters see and change ----------------------------------------------------

_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


@dataclass
class _Field:
    name: str
    raw: bytes  # the whole field as stored, with its CRLF
    fixed: bool = False  # a trace field the store writes itself: seen by the filters, changed by none

    @property
    def value(self) -> str:
        """The value as a filter gets it: leading white space and the final CRLF removed, folds as LF (as Postfix)."""
        text = self.raw.split(b":", 1)[1].decode("utf-8", "surrogateescape")
        return text.removesuffix("\r\n").removesuffix("\n").replace("\r\n", "\n").lstrip(" \t")


@dataclass
class EnvelopeChanges:
    """What the filters changed in the envelope, in their order: for the store to deliver by and the log to say."""

    sender: tuple[str, str | None] | None = None
    added: list[tuple[str, str | None]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    quarantine: str | None = None


@dataclass
class MilterMessage:
    """A message as filters see it: the trace fields (fixed), its own header fields, and its body."""

    fields: list[_Field]
    body: bytes
    separator: bytes  # the empty line between header and body, as the message had it
    envelope: EnvelopeChanges = field(default_factory=EnvelopeChanges)
    ignored: list[str] = field(default_factory=list)  # changes to the fixed trace fields, not made

    @classmethod
    def parse(cls, trace: bytes, message: bytes) -> MilterMessage:
        """``trace``: the fields the store writes on top; ``message``: the message as the client sent it."""
        fixed, _, _ = _split_fields(trace)
        fields, separator, body = _split_fields(message)
        for item in fixed:
            item.fixed = True
        return cls(fixed + fields, body, separator)

    def headers(self) -> list[tuple[str, str]]:
        """The header fields as filters get them, trace fields first, as ``(name, value)``."""
        return [(item.name, item.value) for item in self.fields]

    def stored(self) -> bytes:
        """The message to hand the store, below the trace fields it writes itself."""
        own = b"".join(item.raw for item in self.fields if not item.fixed)
        separator = self.separator or (b"\r\n" if own and self.body else b"")
        return own + separator + self.body

    def apply(self, modifications: Iterable[Modification]) -> None:
        """One filter's changes, in the order it sent them, as Postfix applies them."""
        replaced: list[bytes] = []
        for change in modifications:
            if isinstance(change, ReplaceBody):
                replaced.append(change.chunk)
            else:
                self._apply(change)
        if replaced:
            self.body = re.sub(rb"(?<!\r)\n", b"\r\n", b"".join(replaced))

    def _apply(self, change: Modification) -> None:
        envelope = self.envelope
        if isinstance(change, AddHeader):
            self.fields.append(_new_field(change.name, change.value))
        elif isinstance(change, InsertHeader):
            top = sum(1 for item in self.fields if item.fixed)  # nothing goes above the store's trace fields
            self.fields.insert(max(top, min(change.index, len(self.fields))), _new_field(change.name, change.value))
        elif isinstance(change, ChangeHeader):
            self._change(change)
        elif isinstance(change, ChangeSender):
            envelope.sender = (change.address, change.params)
        elif isinstance(change, AddRecipient):
            envelope.added.append((change.address, change.params))
        elif isinstance(change, DeleteRecipient):
            envelope.deleted.append(change.address)
        elif isinstance(change, Quarantine):
            envelope.quarantine = change.reason

    def _change(self, change: ChangeHeader) -> None:
        """Change or delete the ``index``-th field so named (0 counts as 1); add it if there is none."""
        named = [at for at, item in enumerate(self.fields) if item.name.lower() == change.name.lower()]
        index = max(change.index, 1)
        if index > len(named):
            if change.value:
                self.fields.append(_new_field(change.name, change.value))
            return
        at = named[index - 1]
        if self.fields[at].fixed:
            self.ignored.append(f"{change.name} #{index}")
        elif change.value:
            self.fields[at] = _new_field(change.name, change.value)
        else:
            del self.fields[at]


def _new_field(name: str, value: str) -> _Field:
    """A field a filter wrote: its line breaks made CRLF, ``Name: value``."""
    text = value.replace("\r\n", "\n").replace("\n", "\r\n")
    return _Field(name, f"{name}: {text}\r\n".encode("utf-8", "surrogateescape"))


def _split_fields(message: bytes) -> tuple[list[_Field], bytes, bytes]:
    """The header fields, the empty line after them (if any) and the body.

    The header ends at the empty line, or at the first line that is neither
    a field nor its continuation (that line starts the body, as Postfix reads it).
    """
    fields: list[_Field] = []
    at = 0
    while at < len(message):
        end = message.find(b"\n", at)
        end = len(message) if end < 0 else end + 1
        line = message[at:end]
        if line in (b"\r\n", b"\n"):
            return fields, line, message[end:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].raw += line
        else:
            match = _FIELD_NAME.match(line)
            if match is None:
                break
            fields.append(_Field(match.group(1).decode("ascii"), line))
        at = end
    return fields, b"", message[at:]
