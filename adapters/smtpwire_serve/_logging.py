"""serve's log lines: one record a line, client text escaped, as text or as JSON."""

from __future__ import annotations

import datetime
import json
import logging
import re
import time

from smtpwire_handler._escaping import UNSAFE, escaped
from smtpwire_handler._transcript import folded, readable

#: The record attribute (``extra=``) holding fields of its own for the JSON log.
JSON_FIELDS = "json_fields"


class TextFormatter(logging.Formatter):
    """One record, one line: client text escaped; logging's time stamps, the date part made once a second.

    Whatever logger wrote it, a record cannot forge another record or
    reorder a terminal's display: C0 and C1 controls (newlines, escape
    sequences), the Unicode line and paragraph separators and the format
    characters (bidi overrides, zero-width and other invisible ones) are
    shown as Python escapes (``\\n``, ``\\x85``, ``\\u202e``).  A traceback
    keeps its newlines, each of its lines escaped and indented, so a line
    that starts in column 0 always starts a record.
    """

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime(self.default_time_format, self.converter(second))
        return f"{self._stamp},{int(record.msecs):03d}"  # logging's default_msec_format

    def format(self, record: logging.LogRecord) -> str:
        """The record's line escaped (a ``-v`` transcript record: its readable lines); any traceback indented."""
        if is_transcript(record):
            return "\n".join(self._format_one(line) for line in readable_records(record))
        return self._format_one(record)

    def _format_one(self, record: logging.LogRecord) -> str:
        """The record's line escaped; then logging's own newline and the traceback, if any, indented."""
        text = super().format(record)
        if text.isprintable():  # nearly every record: one line, no Cc, Cf, Zl, Zp or Cs (a C-speed check)
            return text
        line = self.formatMessage(record)  # as format() made it: message and time are set on the record
        traceback = text[len(line) :].removeprefix("\n")
        return self.escape(line) + ("\n" + self._indented(traceback) if traceback else "")

    @staticmethod
    def escape(text: str) -> str:
        return escaped(text)

    @classmethod
    def _indented(cls, text: str) -> str:
        return "\n".join("    " + cls.escape(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC), ``level``, ``logger``, ``session`` (when there is one), ``message``.

    The session id is a field of its own, taken from the records that name it
    (the driver's ``session %s: ...``, the transcript's ``session %s <<< ...``
    and the store's ``accepted id=%s ...``), so nobody parses it out of the
    text.  The guarantees of the text format hold: ``json.dumps`` escapes C0
    controls, and the other characters ``TextFormatter`` escapes (C1 controls,
    U+2028/U+2029, format characters, lone surrogates) are written as JSON
    ``\\uXXXX`` escapes, so a record is always one line and never reorders a
    terminal's display; other printable text, UTF-8 included, stays as it is.
    A traceback is the ``exception`` field.  A record logged with
    ``extra={JSON_FIELDS: {...}}`` (the accepted-message line) has those
    fields too, after ``message``; they never replace the ones above.
    """

    _SESSION_PREFIXES = ("session %s: ", "session %s ")

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        fields = {"time": created.isoformat(timespec="milliseconds"), "level": record.levelname, "logger": record.name}
        session, message = self._session_and_message(record)
        if session is not None:
            fields["session"] = session
        fields["message"] = message
        fields |= {key: value for key, value in getattr(record, JSON_FIELDS, {}).items() if key not in fields}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        text = json.dumps(fields, ensure_ascii=False)
        return text if text.isprintable() else UNSAFE.sub(self._escaped, text)

    @classmethod
    def _session_and_message(cls, record: logging.LogRecord) -> tuple[str | None, str]:
        args, msg = record.args, record.msg
        if isinstance(args, tuple) and args and isinstance(msg, str):
            for prefix in cls._SESSION_PREFIXES:
                if msg.startswith(prefix):
                    return str(args[0]), msg[len(prefix) :] % args[1:]
            if msg.startswith("accepted id=%s "):
                return str(args[0]), record.getMessage()
        return None, record.getMessage()

    @staticmethod
    def _escaped(match: re.Match[str]) -> str:
        """A JSON escape: ``\\u0085``, or a surrogate pair for a code point beyond U+FFFF."""
        code = ord(match[0])
        if code < 0x10000:
            return f"\\u{code:04x}"
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


#: How the handler's ``Transcript`` logs: session id, direction (``<<<``, ``>>>``), ``repr`` of the bytes.
TRANSCRIPT_LINE = "session %s %s %s"
_SIDES = {"<<<": "C:", ">>>": "S:"}


def is_transcript(record: logging.LogRecord) -> bool:
    args = record.args
    return (
        record.msg == TRANSCRIPT_LINE
        and isinstance(args, tuple)
        and len(args) == 3
        and args[1] in _SIDES
        and isinstance(args[2], str)
    )


def readable_records(record: logging.LogRecord) -> list[logging.LogRecord]:
    """A transcript record as ``C:``/``S:`` records, one a line (a reply's continuation lines folded into it).

    The record itself is left as it is: other handlers may see it too.
    """
    session, direction, shown = record.args  # type: ignore[misc]  # is_transcript() checked the shape
    lines = readable(str(shown)) if direction == "<<<" else folded(readable(str(shown)))
    side = _SIDES[str(direction)]
    return [logging.makeLogRecord(record.__dict__ | {"args": (session, side, line)}) for line in lines]


#: The choices of --log-format.
LOG_FORMATS = ("text", "json")


def configure_logging(verbose: bool, log_format: str = "text") -> None:
    """One line per record on stderr; what the format does not show is not gathered (logging's own advice)."""
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # no stack walk for a file name nobody prints
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("smtpwire.transcript").setLevel(logging.DEBUG if verbose else logging.INFO)
