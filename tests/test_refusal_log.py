"""Every refusal leaves a log line naming what was refused and the reply the client got."""

from __future__ import annotations

import logging
import re

import pytest

import smtpwire
from smtpwire import Reply
from smtpwire_handler import Envelope, Handler, ServerOptions, Session
from smtpwire_handler._driver import PROBLEM_LINES
from tests.test_driver import new_driver, run

ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"


class Picky(Handler):
    def rcpt_to(self, session: Session, address: str, params: object) -> Reply | None:
        return Reply(550, "No such user", (5, 1, 1)) if address.startswith("nobody@") else None

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        return Reply(554, "Spam", (5, 7, 1)) if b"spam" in envelope.content else None


def refusals(caplog: pytest.LogCaptureFixture, data: bytes, options: ServerOptions | None = None) -> list[str]:
    caplog.set_level(logging.INFO, logger="test")
    driver = new_driver(Picky(), options)
    run(driver)
    run(driver, data)
    return [record.getMessage().split(": ", 1)[1] for record in caplog.records if "refused" in record.getMessage()]


def test_refusals_by_the_core_and_the_application_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    data = ENVELOPE + b"RCPT TO:<nobody@example.net>\r\nDATA\r\nspam\r\n.\r\nXYZZY\r\n"
    data += b"NOOP " + b"x" * 600 + b"\r\n"
    assert refusals(caplog, data) == [
        "refused RCPT TO:<nobody@example.net>: 550 5.1.1 No such user",
        "refused the message: 554 5.7.1 Spam",
        "refused XYZZY: 500 5.5.2 Command unrecognized",
        "refused a command: 500 5.5.2 Line too long",
    ]


def test_a_message_the_core_refuses_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    options = ServerOptions(config=smtpwire.ServerConfig(max_message_size=10))
    data = ENVELOPE + b"DATA\r\n" + b"x" * 20 + b"\r\n.\r\nBDAT 50 LAST\r\n" + b"y" * 50
    assert refusals(caplog, data, options) == [
        "refused the message: 552 5.3.4 Message size exceeds fixed maximum message size",
        "refused BDAT: 503 5.5.1 Need MAIL command",
    ]


def test_lmtp_refusals_name_the_recipient(caplog: pytest.LogCaptureFixture) -> None:
    options = ServerOptions(config=smtpwire.ServerConfig(lmtp=True))
    data = ENVELOPE.replace(b"EHLO", b"LHLO") + b"DATA\r\nspam\r\n.\r\n"
    assert refusals(caplog, data, options) == ["refused the message for <bob@example.net>: 554 5.7.1 Spam"]


def test_a_session_logs_a_bounded_number_of_lines_whatever_the_client_sends(caplog: pytest.LogCaptureFixture) -> None:
    """Refused commands are logged up to PROBLEM_LINES, then counted; every message keeps its own line."""
    caplog.set_level(logging.INFO, logger="test")
    driver = new_driver(
        Picky(), ServerOptions(config=smtpwire.ServerConfig(max_recipients=10_000, max_errors=1_000_000))
    )
    run(driver)
    flood = ENVELOPE + b"RCPT TO:<nobody@example.net>\r\n" * 2_000 + b"\r\n" * 2_000
    spam = b"RSET\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\nspam\r\n.\r\n"
    for _ in range(10):
        run(driver, flood)
        run(driver, spam * 3)
    run(driver, b"QUIT\r\n")
    lines = [record.getMessage() for record in caplog.records]
    messages = [line for line in lines if "refused the message" in line]
    assert len(messages) == 30  # one line for each refused message, however many
    others = [line for line in lines if line not in messages]
    assert len(others) <= PROBLEM_LINES + 2, others[PROBLEM_LINES:]
    assert sum(map(len, others)) < 3_000
    (closing,) = [line for line in lines if " closed (" in line]
    assert re.search(r"closed \(0 message\(s\), \d{5} more problem\(s\) not logged, peer ", closing), closing


def test_a_log_line_shows_a_client_text_cut_short(caplog: pytest.LogCaptureFixture) -> None:
    long_address = "nobody@" + ".".join(["x" * 60] * 3) + ".example"  # 197 octets: under the path limit
    (line,) = refusals(caplog, ENVELOPE + f"RCPT TO:<{long_address}>\r\n".encode())
    assert len(line) < 300 and line.endswith(": 550 5.1.1 No such user") and "characters)" in line
