"""serve's accepted line, written straight through its text handler, is the line logging would have written."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from smtpwire_handler import Envelope, Session
from smtpwire_serve import _logging
from smtpwire_serve._store import log_accepted
from tests.driver import Driver

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """serve's logging set up as ``serve`` does it, into a string; the test's own logging put back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    _logging.configure_logging(verbose=False)
    written = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(written)
    yield written
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    _logging._text_handler = None


def session_and_envelope() -> tuple[Session, Envelope]:
    driver = Driver()
    driver.say("EHLO client.example", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>")
    session = Session(driver.conn, peer=("192.0.2.7", 40000))
    assert session.envelope is not None
    return session, session.envelope


def test_the_direct_line_is_the_line_a_record_would_make(stream: io.StringIO) -> None:
    session, envelope = session_and_envelope()
    log_accepted(session, envelope, 1234, "stored=1.M2P3.host")
    line = stream.getvalue()
    assert line.count("\n") == 1
    (written,) = line.splitlines()
    expected = (
        f"INFO smtpwire.serve: accepted id={session.id} from=<alice@example.org> to=<bob@example.net>"
        " size=1234 tls=none peer=192.0.2.7 stored=1.M2P3.host"
    )
    assert re.fullmatch(f"{STAMP} {re.escape(expected)}", written)
    handler = logging.getLogger().handlers[0]
    record = logging.makeLogRecord({"name": "smtpwire.serve", "levelno": 20, "levelname": "INFO", "msg": expected[21:]})
    assert handler.format(record)[23:] == written[23:]  # the same line as a record through the handler, time aside


def test_the_direct_line_escapes_what_the_client_sent(stream: io.StringIO) -> None:
    session, _ = session_and_envelope()
    log_accepted(session, Envelope("a\u202eb@example.org", {}, ["bob@example.net"]), 1, "discarded")
    (written,) = stream.getvalue().splitlines()
    assert "from=<a\\u202eb@example.org>" in written and "\u202e" not in written


def test_another_handler_gets_the_record_itself(stream: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
    session, envelope = session_and_envelope()
    with caplog.at_level(logging.INFO, logger="smtpwire.serve"):  # a handler on the way: no short cut
        log_accepted(session, envelope, 10, "discarded")
    (record,) = [record for record in caplog.records if record.name == "smtpwire.serve"]
    assert record.getMessage().startswith(f"accepted id={session.id} from=<alice@example.org>")
    assert "accepted id=" in stream.getvalue()  # serve's own handler still wrote it, once
    assert stream.getvalue().count("\n") == 1


def test_above_info_nothing_is_written(stream: io.StringIO) -> None:
    session, envelope = session_and_envelope()
    logging.getLogger("smtpwire.serve").setLevel(logging.WARNING)
    try:
        log_accepted(session, envelope, 10, "discarded")
    finally:
        logging.getLogger("smtpwire.serve").setLevel(logging.NOTSET)
    assert stream.getvalue() == ""


def test_the_json_log_gathers_the_fields_when_it_writes() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    _logging.configure_logging(verbose=False, log_format="json")
    written = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(written)
    try:
        assert _logging._text_handler is None
        session, envelope = session_and_envelope()
        log_accepted(session, envelope, 10, "discarded")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    record = json.loads(written.getvalue())
    assert record["session"] == session.id
    assert record["from"] == "alice@example.org" and record["to"] == ["bob@example.net"]
    assert record["discarded"] is True and record["size"] == 10 and record["tls"] is None
