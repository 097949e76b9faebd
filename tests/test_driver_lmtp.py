"""The driver's side of LMTP and BDAT: one answer per recipient, chunks through the usual hooks."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import smtpwire
from smtpwire import Reply
from smtpwire_handler import AsyncHandler, Envelope, Handler, Reject, ServerOptions, Session
from smtpwire_handler.kit import CLOSED, NEED_DATA
from tests.test_driver import new_driver, replies, run

LMTP = ServerOptions(config=smtpwire.ServerConfig(lmtp=True))
FULL = Reply(452, "Mailbox full", (4, 2, 2))
TRANSACTION = (
    b"LHLO c.example\r\nMAIL FROM:<alice@example.org>\r\n"
    b"RCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.net>\r\nRCPT TO:<dan@example.net>\r\n"
)
ACCEPTED = [b"250 2.1.0 OK", b"250 2.1.5 OK", b"250 2.1.5 OK", b"250 2.1.5 OK"]


def lmtp_session(handler: Handler | AsyncHandler, data: bytes) -> tuple[list[bytes], Any]:
    driver = new_driver(handler, LMTP)
    sent, step = run(driver)
    assert sent == b"220 localhost LMTP smtpwire\r\n"
    sent, step = run(driver, TRANSACTION + data)
    return replies(sent), step


class PerRecipient(Handler):
    """Delivers to each recipient on its own: dan's mailbox is full."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, bytes]] = []

    def deliver(self, session: Session, envelope: Envelope, recipient: str) -> Reply | None:
        if recipient.startswith("dan@"):
            return FULL
        self.delivered.append((recipient, bytes(envelope.content)))
        return None


def test_deliver_answers_each_recipient_in_rcpt_order() -> None:
    handler = PerRecipient()
    lines, step = lmtp_session(handler, b"DATA\r\nhello\r\n.\r\n")
    ends = [b"250 2.0.0 OK", b"250 2.0.0 OK", b"452 4.2.2 Mailbox full"]
    assert lines[1:] == [*ACCEPTED, b"354 End data with <CR><LF>.<CR><LF>", *ends]
    assert step is NEED_DATA
    assert handler.delivered == [("bob@example.net", b"hello\r\n"), ("carol@example.net", b"hello\r\n")]


class OneAnswer(Handler):
    """No deliver hook: message is called once and answers for everybody."""

    def __init__(self, answer: Reply | None) -> None:
        self.answer = answer
        self.calls = 0

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        self.calls += 1
        return self.answer


def test_without_deliver_the_message_hook_answers_once_for_every_recipient() -> None:
    handler = OneAnswer(Reply(550, "Policy refusal", (5, 7, 1)))
    lines, _ = lmtp_session(handler, b"DATA\r\nhello\r\n.\r\nNOOP\r\n")
    assert lines[-4:] == [b"550 5.7.1 Policy refusal"] * 3 + [b"250 2.0.0 OK"]
    assert handler.calls == 1


class AsyncPerRecipient(AsyncHandler):
    async def deliver(self, session: Session, envelope: Envelope, recipient: str) -> Reply | None:
        return FULL if recipient.startswith("carol@") else None


def test_an_async_deliver_hook_is_awaited_per_recipient_with_bdat() -> None:
    lines, _ = lmtp_session(AsyncPerRecipient(), b"BDAT 3\r\nabcBDAT 2 LAST\r\nde")
    assert lines[-4:] == [b"250 2.0.0 3 octets received", b"250 2.0.0 OK", b"452 4.2.2 Mailbox full", b"250 2.0.0 OK"]


class FailingChunk(Handler):
    def data_chunk(self, session: Session, data: bytes) -> None:
        raise Reject(Reply(554, "Content refused", (5, 6, 0)))

    def deliver(self, session: Session, envelope: Envelope, recipient: str) -> Reply | None:
        raise AssertionError("a refused message is not delivered")


def test_a_refusal_from_data_chunk_answers_every_recipient() -> None:
    lines, _ = lmtp_session(FailingChunk(), b"DATA\r\nhello\r\n.\r\nNOOP\r\n")
    assert lines[-4:] == [b"554 5.6.0 Content refused"] * 3 + [b"250 2.0.0 OK"]


class Chunks(Handler):
    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.messages: list[bytes] = []

    def data_chunk(self, session: Session, data: bytes) -> None:
        self.pieces.append(data)

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        self.messages.append(b"".join(self.pieces))
        return None


def test_bdat_chunks_reach_data_chunk_and_message_like_data() -> None:
    handler = Chunks()
    driver = new_driver(handler)
    run(driver)
    sent, _ = run(
        driver,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 5\r\n\r\n.\r\nBDAT 3 LAST\r\nxyzRSET\r\n",
    )
    assert replies(sent)[-4:] == [b"250 2.1.5 OK", b"250 2.0.0 5 octets received", b"250 2.0.0 OK", b"250 2.0.0 OK"]
    assert handler.messages == [b"\r\n.\r\nxyz"]
    assert not driver.reading_message


class RefusesData(Handler):
    def data_start(self, session: Session) -> Reply | None:
        return Reply(452, "Try later", (4, 3, 1))


def test_a_refused_first_chunk_is_discarded_and_the_session_goes_on() -> None:
    driver = new_driver(RefusesData())
    run(driver)
    sent, _ = run(driver, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 6\r\nQUIT\r\nRSET\r\n")
    assert replies(sent)[-2:] == [b"452 4.3.1 Try later", b"250 2.0.0 OK"]


def test_the_driver_counts_a_chunk_being_read_as_reading_the_message() -> None:
    driver = new_driver(Chunks())
    run(driver)
    run(driver, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 10\r\nabc")
    assert driver.reading_message and not driver.idle
    run(driver, b"defghij")
    assert not driver.reading_message and not driver.idle  # between chunks: a command is due


def test_an_lmtp_message_counts_once_however_many_recipients_took_it(caplog: pytest.LogCaptureFixture) -> None:
    """The closing line counts messages, not deliveries: a deliver hook answering 3 recipients is 1 message."""
    caplog.set_level(logging.INFO, logger="test")
    lmtp_session(PerRecipient(), b"DATA\r\none\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<dan@example.net>\r\n")
    closed = lmtp_session(PerRecipient(), b"DATA\r\none\r\n.\r\nQUIT\r\n")
    assert closed[1] is CLOSED
    lines = [record.getMessage() for record in caplog.records if "closed (" in record.getMessage()]
    assert len(lines) == 1 and "closed (1 message(s)" in lines[0]
