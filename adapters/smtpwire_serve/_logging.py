"""serve's log lines: one record a line, client text escaped, as text or as JSON."""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from typing import TextIO

from smtpwire_handler._escaping import UNSAFE, escaped
from smtpwire_handler._transcript import folded, readable

#: The record attribute (``extra=``) holding fields of its own for the JSON log: a dict, or a function making one.
JSON_FIELDS = "json_fields"
#: serve's text line: time, level, logger, message.
TEXT_LAYOUT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._layout_is_serves = fmt == TEXT_LAYOUT  # then made by ``_escaped_line``

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created, int(record.msecs))

    def stamp(self, created: float, msecs: int) -> str:
        """logging's default time stamp (``default_msec_format``), the strftime part made once a second."""
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime(self.default_time_format, self.converter(second))
        return f"{self._stamp},{msecs:03d}"

    def line(self, level: str, logger: str, message: str) -> str:
        """The line of a record without traceback, made from its parts (``info_line``'s way, no record)."""
        now = time.time()
        return self._escaped_line(self.stamp(now, int(now * 1000) % 1000), level, logger, message)

    def _escaped_line(self, stamp: str, level: str, logger: str, message: str) -> str:
        """serve's layout made by an f-string, not logging's %-style machinery; escaped if it must be."""
        text = f"{stamp} {level} {logger}: {message}"
        return text if text.isprintable() else self.escape(text)

    def format(self, record: logging.LogRecord) -> str:
        """The record's line escaped (a ``-v`` transcript record: its readable lines); any traceback indented."""
        if is_transcript(record):
            return "\n".join(self._format_one(line) for line in readable_records(record))
        return self._format_one(record)

    def _format_one(self, record: logging.LogRecord) -> str:
        """The record's line escaped; then logging's own newline and the traceback, if any, indented."""
        if self._layout_is_serves and not (record.exc_info or record.exc_text or record.stack_info):
            return self._escaped_line(self.formatTime(record), record.levelname, record.name, record.getMessage())
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
        own = getattr(record, JSON_FIELDS, {})
        fields |= {key: value for key, value in (own() if callable(own) else own).items() if key not in fields}
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


#: serve's text handler, while it is the root logger's: ``info_line`` writes through it.
_text_handler: logging.StreamHandler[TextIO] | None = None


def configure_logging(verbose: bool, log_format: str = "text") -> None:
    """One line per record on stderr; what the format does not show is not gathered (logging's own advice)."""
    global _text_handler
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # no stack walk for a file name nobody prints
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(TEXT_LAYOUT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    _text_handler = handler if log_format == "text" else None
    logging.getLogger("smtpwire.transcript").setLevel(logging.DEBUG if verbose else logging.INFO)


def info_line(logger: logging.Logger, message: str) -> bool:
    """Write ``message`` as an INFO line of ``logger`` straight through serve's text handler; False if it cannot.

    For the lines written per message (the accepted line), where logging's
    per-record work (a ``LogRecord``, the walk up the loggers, the handler's
    filters) cost more than everything else the line does.  It writes only
    while what the record would reach is exactly serve's text handler: the
    root logger's only one, with no filters, and ``logger`` without handlers
    or filters of its own, propagating, at INFO.  Otherwise (a JSON log, a
    library user's logging, a test's capture) the caller logs the record.
    """
    handler = _text_handler
    if handler is None or logging.root.handlers != [handler] or handler.filters or logger.filters:
        return False
    if not logger.isEnabledFor(logging.INFO) or not _only_root_handles(logger):
        return False
    formatter, lock = handler.formatter, handler.lock
    assert isinstance(formatter, TextFormatter) and lock is not None
    text = formatter.line("INFO", logger.name, message)
    with lock:
        try:
            handler.stream.write(text + handler.terminator)
            handler.stream.flush()
        except Exception:  # as logging does: a broken stderr must not fail the delivery
            handler.handleError(logging.makeLogRecord({"msg": message}))
    return True


def _only_root_handles(logger: logging.Logger) -> bool:
    """Whether the records of ``logger`` reach the root logger and no other handler on the way."""
    current: logging.Logger | None = logger
    while current is not None and current is not logging.root:
        if current.handlers or not current.propagate:
            return False
        current = current.parent
    return current is logging.root
