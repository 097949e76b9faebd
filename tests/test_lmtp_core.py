"""LMTP (RFC 2033) in the core: LHLO, and one answer per recipient at the end of the message."""

from __future__ import annotations

import pytest

import smtpwire
from smtpwire import (
    CommandRejected,
    ConnectionOpened,
    Ehlo,
    EndOfMessage,
    MessageRejected,
    Reply,
    ServerConfig,
    State,
)
from tests.driver import Answer, Driver

HOST = "mx.test"
LMTP = ServerConfig(hostname=HOST, lmtp=True)
RECIPIENTS = ("one@example.net", "two@example.net", "three@example.net")
LHLO_REPLY = (
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    "250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
)
OK = b"250 2.0.0 OK\r\n"
NOT_LHLO = "500 5.5.1 This is LMTP: greet with LHLO (RFC 2033 4.1)\r\n"


def lmtp(
    config: ServerConfig = LMTP, *, answer: Answer | None = None, recipients: tuple[str, ...] = RECIPIENTS
) -> Driver:
    """An LMTP session with the recipients accepted (as far as ``answer`` lets them be)."""
    d = Driver(config, answer=answer)
    d.say("LHLO client.test", "MAIL FROM:<a@example.org>", *(f"RCPT TO:<{r}>" for r in recipients))
    d.conn.data_to_send()
    d.events.clear()
    return d


def per_recipient(replies: dict[str, Reply]) -> Answer:
    """Answer each recipient's EndOfMessage as ``replies`` says (accept the others)."""
    return lambda event: replies.get(event.recipient or "") if isinstance(event, EndOfMessage) else None


def ends(d: Driver) -> list[smtpwire.Event]:
    return [e for e in d.events if isinstance(e, EndOfMessage)]


def test_greeting_says_lmtp() -> None:
    d = Driver(LMTP, greet=False)
    assert d.pump() == [ConnectionOpened("LMTP")]
    assert d.conn.data_to_send() == b"220 mx.test LMTP smtpwire\r\n"


def test_lhlo_offers_the_extensions_and_is_an_ehlo_event() -> None:
    d = Driver(LMTP)
    assert d.say("LHLO client.test") == LHLO_REPLY
    assert d.events == [Ehlo("client.test")]
    assert d.conn.esmtp and d.conn.helo_name == "client.test" and d.conn.state is State.READY


def test_lhlo_is_case_insensitive_and_needs_a_name() -> None:
    d = Driver(LMTP)
    assert d.say("LHLO") == "501 5.5.4 Syntax: LHLO domain or [address literal]\r\n"
    assert d.events == [CommandRejected("LHLO", Reply(501, "Syntax: LHLO domain or [address literal]", (5, 5, 4)))]
    assert d.say("lhlo client.test") == LHLO_REPLY


@pytest.mark.parametrize("verb", ["HELO", "EHLO", "helo"])
def test_helo_and_ehlo_are_refused_in_lmtp(verb: str) -> None:
    d = Driver(LMTP)
    assert d.say(f"{verb} client.test") == NOT_LHLO
    assert d.conn.state is State.GREETED and d.conn.helo_name is None


def test_lhlo_is_unknown_in_smtp() -> None:
    d = Driver(ServerConfig(hostname=HOST))
    assert d.say("LHLO client.test") == "500 5.5.2 Command unrecognized\r\n"


@pytest.mark.parametrize("command", ["MAIL FROM:<a@example.org>", "STARTTLS"])
def test_before_lhlo_the_client_is_told_to_send_lhlo(command: str) -> None:
    config = ServerConfig(hostname=HOST, lmtp=True, extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.StartTLS()))
    assert Driver(config).say(command) == "503 5.5.1 Send LHLO first\r\n"


def test_help_lists_lhlo_not_helo_or_ehlo() -> None:
    verbs = Driver(LMTP).say("HELP").removeprefix("214 2.0.0 Supported commands: ").split()
    assert "LHLO" in verbs and "HELO" not in verbs and "EHLO" not in verbs


def test_one_end_of_message_per_recipient_in_rcpt_order() -> None:
    d = lmtp()
    assert d.feed(b"DATA\r\nhello\r\n.\r\n") == b"354 End data with <CR><LF>.<CR><LF>\r\n" + OK * 3
    assert ends(d) == [EndOfMessage(r) for r in RECIPIENTS]
    assert d.message_bytes() == b"hello\r\n"
    assert d.conn.state is State.READY and d.conn.transaction is None


def test_each_recipient_answered_on_its_own_in_order() -> None:
    replies = {
        "one@example.net": Reply(250, "Delivered", (2, 1, 5)),
        "two@example.net": Reply(452, "Mailbox full", (4, 2, 2)),
        "three@example.net": Reply(550, "No such user", (5, 1, 1)),
    }
    d = lmtp(answer=per_recipient(replies))
    out = d.feed(b"DATA\r\nhi\r\n.\r\nNOOP\r\n")
    assert out == (
        b"354 End data with <CR><LF>.<CR><LF>\r\n"
        b"250 2.1.5 Delivered\r\n452 4.2.2 Mailbox full\r\n550 5.1.1 No such user\r\n" + OK
    )
    assert d.conn.state is State.READY


def test_answers_come_one_decision_at_a_time() -> None:
    d = lmtp(recipients=RECIPIENTS[:2])
    d.conn.receive_data(b"DATA\r\n")
    d.conn.next_event()
    d.conn.accept()
    d.conn.receive_data(b"x\r\n.\r\nNOOP\r\n")
    assert d.conn.next_event() == smtpwire.MessageData(b"x\r\n")
    assert d.conn.next_event() == EndOfMessage("one@example.net")
    assert d.conn.next_event() is smtpwire.PAUSED
    d.conn.data_to_send()
    d.conn.send(Reply(451, "Later"))
    assert d.conn.data_to_send() == b"451 4.0.0 Later\r\n"
    assert d.conn.state is State.DATA  # the transaction is not over yet
    assert d.conn.next_event() == EndOfMessage("two@example.net")
    assert d.conn.pending == EndOfMessage("two@example.net")
    d.conn.accept()
    assert d.conn.next_event() == smtpwire.Noop()
    assert d.conn.data_to_send() == OK * 2


def test_refused_recipients_get_no_answer_after_the_data() -> None:
    refused = "two@example.net"
    d = lmtp(answer=lambda e: Reply(550, "No") if isinstance(e, smtpwire.RcptTo) and e.address == refused else None)
    d.feed(b"DATA\r\nx\r\n.\r\n")
    assert ends(d) == [EndOfMessage("one@example.net"), EndOfMessage("three@example.net")]


def test_a_duplicated_recipient_is_answered_twice() -> None:
    d = lmtp(recipients=("one@example.net", "one@example.net"))
    assert d.feed(b"DATA\r\nx\r\n.\r\n").endswith(OK * 2)
    assert ends(d) == [EndOfMessage("one@example.net")] * 2


def test_lmtp_with_bdat() -> None:
    replies = {"two@example.net": Reply(452, "Over quota", (4, 2, 2))}
    d = lmtp(answer=per_recipient(replies))
    out = d.feed(b"BDAT 3\r\nabcBDAT 2 LAST\r\nde")
    assert out == b"250 2.0.0 3 octets received\r\n" + OK + b"452 4.2.2 Over quota\r\n" + OK
    assert ends(d) == [EndOfMessage(r) for r in RECIPIENTS]
    assert d.message_bytes() == b"abcde"
    assert d.conn.state is State.READY


def test_a_message_too_big_is_refused_once_per_recipient() -> None:
    d = lmtp(ServerConfig(hostname=HOST, lmtp=True, max_message_size=4))
    out = d.feed(b"DATA\r\n12345\r\n.\r\n")
    assert out.endswith(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n" * 3)
    assert out.count(b"552") == 3 and not ends(d)
    assert d.conn.state is State.READY


def test_bare_lf_is_refused_once_per_recipient() -> None:
    d = lmtp(recipients=RECIPIENTS[:2])
    out = d.feed(b"DATA\r\na\nb\r\n.\r\n")
    refusal = b"550 5.6.0 Message refused: bare CR or LF in data (RFC 5321 2.3.8)\r\n"
    assert out == b"354 End data with <CR><LF>.<CR><LF>\r\n" + refusal * 2
    assert [type(e) for e in d.events][-1] is MessageRejected


TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
SMALL_LMTP = ServerConfig(hostname=HOST, lmtp=True, max_message_size=4)


def test_a_last_chunk_too_big_is_refused_once_per_recipient() -> None:
    d = lmtp(SMALL_LMTP)
    assert d.feed(b"BDAT 2\r\nabBDAT 3 LAST\r\ncdeNOOP\r\n") == b"250 2.0.0 2 octets received\r\n" + TOO_BIG * 3 + OK


def test_a_first_last_chunk_too_big_is_refused_once_per_recipient() -> None:
    d = lmtp(SMALL_LMTP, recipients=RECIPIENTS[:2])
    assert d.feed(b"BDAT 5 LAST\r\nabcdeNOOP\r\n") == TOO_BIG * 2 + OK


def test_a_chunk_too_big_before_last_gets_one_reply() -> None:
    """Only the end of the message is answered per recipient: a client reads one reply per other BDAT."""
    d = lmtp(SMALL_LMTP)
    assert d.feed(b"BDAT 5\r\nabcdeNOOP\r\n") == TOO_BIG + OK
    d = lmtp(SMALL_LMTP)
    assert d.feed(b"BDAT 2\r\nabBDAT 3\r\ncdeNOOP\r\n") == b"250 2.0.0 2 octets received\r\n" + TOO_BIG + OK
    assert d.conn.state is State.READY and d.conn.transaction is None


def test_421_in_the_middle_of_the_answers_closes() -> None:
    d = lmtp(answer=per_recipient({"two@example.net": Reply(421, "Going down", (4, 3, 2))}))
    out = d.feed(b"DATA\r\nx\r\n.\r\nNOOP\r\n")
    assert out == b"354 End data with <CR><LF>.<CR><LF>\r\n" + OK + b"421 4.3.2 Going down\r\n"
    assert ends(d) == [EndOfMessage("one@example.net"), EndOfMessage("two@example.net")]
    assert isinstance(d.events[-1], smtpwire.ConnectionClosed) and d.conn.state is State.CLOSED


def test_shutdown_while_an_answer_is_due() -> None:
    d = lmtp()
    d.conn.receive_data(b"DATA\r\nx\r\n.\r\n")
    d.conn.next_event()
    d.conn.accept()
    d.conn.data_to_send()
    assert [d.conn.next_event() for _ in range(2)] == [smtpwire.MessageData(b"x\r\n"), EndOfMessage("one@example.net")]
    d.conn.accept()
    d.conn.shutdown()
    assert d.conn.data_to_send() == OK + b"421 4.3.2 mx.test Service shutting down\r\n"
    assert d.conn.pending is None
    assert d.conn.next_event() == smtpwire.ConnectionClosed()


def test_the_next_transaction_starts_fresh() -> None:
    d = lmtp()
    d.feed(b"DATA\r\nx\r\n.\r\n")
    d.say("MAIL FROM:<a@example.org>", "RCPT TO:<four@example.net>")
    d.events.clear()
    assert d.feed(b"DATA\r\ny\r\n.\r\n").endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n" + OK)
    assert ends(d) == [EndOfMessage("four@example.net")]


def test_smtp_end_of_message_names_no_recipient() -> None:
    d = Driver(ServerConfig(hostname=HOST))
    d.send_message(b"x\r\n")
    assert ends(d) == [EndOfMessage(None)]


def test_answers_given_through_pending_are_not_reported_again() -> None:
    """An application may answer ``conn.pending`` without pulling it: it must not come out afterwards."""
    d = lmtp(recipients=RECIPIENTS[:2])
    d.conn.receive_data(b"DATA\r\nx\r\n.\r\nNOOP\r\n")
    d.conn.next_event()
    d.conn.accept()
    assert [d.conn.next_event() for _ in range(2)] == [smtpwire.MessageData(b"x\r\n"), EndOfMessage("one@example.net")]
    d.conn.accept()
    assert d.conn.pending == EndOfMessage("two@example.net")
    d.conn.accept()  # without next_event() giving it out first
    assert d.conn.next_event() == smtpwire.Noop()
    assert d.conn.data_to_send().endswith(OK * 3)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_lmtp_must_be_a_bool(value: object) -> None:
    with pytest.raises(ValueError, match="lmtp must be True or False"):
        ServerConfig(lmtp=value)  # type: ignore[arg-type]
