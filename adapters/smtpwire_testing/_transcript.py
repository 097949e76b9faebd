"""The wire transcript of a server's sessions, from the adapters' own ``smtpwire.transcript`` log lines.

The driver writes those lines only while that logger is enabled for DEBUG,
so a running ``MailServer`` enables it (and puts the level back when the
last one stops); each server keeps the lines of its own sessions only, and
the lines only it wanted go no further.  AUTH exchanges are withheld there
already (all but ``AUTH``, the mechanism and the outcome), so no password
is shown.
Made for a failure report: a multi-line reply (EHLO's keywords) is folded
to one line, and of a message's data only the first lines are shown.
"""

from __future__ import annotations

import logging
import threading

from smtpwire_handler._transcript import CUT_NOTE, folded, readable

_log = logging.getLogger("smtpwire.transcript")

#: Lines kept per server at most (the oldest are dropped): a runaway test must not eat the memory.
MAX_LINES = 10_000
#: Lines of a message's data shown (about its headers); the rest is counted.
DATA_LINES_SHOWN = 12


_SIDES = {"<<<": "C:", ">>>": "S:"}


class _MessageData:
    """A session's message data while it arrives: the first lines are shown, the others counted."""

    def __init__(self) -> None:
        self.shown = 0
        self.cut = 0

    def keep(self, line: str) -> bool:
        if line.startswith(CUT_NOTE) or self.shown < DATA_LINES_SHOWN:
            self.shown += 1
            return True
        self.cut += 1
        return False

    def note(self) -> list[str]:
        return [f"C: {CUT_NOTE} {self.cut} more lines of message data not shown]"] if self.cut else []


class TranscriptRecorder:
    """Keeps the transcript lines of the sessions ``watch()`` was told about."""

    def __init__(self) -> None:
        self._sessions: set[str] = set()
        self._data: dict[str, _MessageData] = {}  # the sessions whose message data is arriving
        self._lines: list[tuple[int, str]] = []  # (sequence number, line)
        self._count = 0
        self._guard = threading.Lock()

    def watch(self, session_id: str) -> None:
        with self._guard:
            self._sessions.add(session_id)

    def dropped(self, session_id: str) -> None:
        """An injected fault dropped the session: what the server queued after it never went out."""
        with self._guard:
            self._sessions.discard(session_id)
            self._data.pop(session_id, None)
            self._count += 1
            self._lines.append((self._count, f"{session_id} -- connection dropped (injected fault)"))

    def take(self, record: logging.LogRecord) -> None:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 3 and args[0] in self._sessions):
            return
        session_id, direction, shown = args
        side = _SIDES.get(str(direction), str(direction))
        with self._guard:
            self._count += 1
            for line in self._shortened(str(session_id), side, readable(str(shown))):
                self._lines.append((self._count, f"{session_id} {line}"))
            del self._lines[:-MAX_LINES]

    def _shortened(self, session_id: str, side: str, lines: list[str]) -> list[str]:
        """The lines as the report shows them, each after its side: replies folded, message data cut.

        The data ends at its lone dot, or at the server's next reply if the dot was past what the
        driver showed."""
        data = self._data.get(session_id)
        if side == "S:":
            if data is not None:
                del self._data[session_id]
            if lines and lines[-1].startswith("354"):
                self._data[session_id] = _MessageData()
            replies = [f"S: {line}" for line in folded(lines)]
            return replies if data is None else [*data.note(), *replies]
        if data is None:
            return [f"{side} {line}" for line in lines]
        kept: list[str] = []
        for at, line in enumerate(lines):
            if line == ".":
                del self._data[session_id]
                return [*kept, *data.note(), *(f"C: {rest}" for rest in lines[at:])]
            if data.keep(line):
                kept.append(f"C: {line}")
        return kept

    def mark(self) -> int:
        """A point in the transcript: ``text(since=mark)`` shows what came after."""
        return self._count

    def text(self, since: int = 0) -> str:
        with self._guard:
            return "\n".join(line for number, line in self._lines if number > since)

    def attach(self) -> None:
        with _tap_lock:
            if not _recorders:
                _tap.saved_level = _log.level
                _log.setLevel(logging.DEBUG)
                _log.addFilter(_tap)
            _recorders.add(self)

    def detach(self) -> None:
        with _tap_lock:
            _recorders.discard(self)
            if not _recorders:
                _log.removeFilter(_tap)
                _log.setLevel(_tap.saved_level)


class _Tap(logging.Filter):
    """Hands every transcript line to the recorders, then lets through only what the logger's own level would.

    A filter on the logger, not a handler: what we enabled for ourselves
    never reaches the application's handlers (nor pytest's captured log).
    """

    saved_level = logging.NOTSET

    def filter(self, record: logging.LogRecord) -> bool:
        for recorder in list(_recorders):
            recorder.take(record)
        level = self.saved_level or (_log.parent.getEffectiveLevel() if _log.parent else logging.WARNING)
        return record.levelno >= level


_tap = _Tap()
_tap_lock = threading.Lock()
_recorders: set[TranscriptRecorder] = set()
