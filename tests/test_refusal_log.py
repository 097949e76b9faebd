"""Every refusal leaves a log line naming what was refused and the reply the client got."""

from __future__ import annotations

import logging

import pytest

import smtpwire
from smtpwire import Reply
from smtpwire_handler import Envelope, Handler, ServerOptions, Session
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
