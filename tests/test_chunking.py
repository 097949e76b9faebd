"""CHUNKING (RFC 3030): BDAT chunks read by length, answered per chunk, refused chunks discarded; BINARYMIME."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import smtpwire
from smtpwire import (
    ChunkReceived,
    CommandRejected,
    ConnectionClosed,
    DataRequested,
    EndOfMessage,
    MessageData,
    MessageRejected,
    Reply,
    ServerConfig,
    State,
)
from tests.driver import Answer, Driver

HOST = "mx.test"
ENVELOPE = ("EHLO client.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
MESSAGE_OK = b"250 2.0.0 OK\r\n"
NOOP_OK = b"250 2.0.0 OK\r\n"
TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
DATA_AFTER_BDAT = b"503 5.5.1 DATA cannot follow BDAT (RFC 3030 2)\r\n"
BDAT_LOST = (
    b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
    b"421 4.5.0 Cannot find the end of the BDAT chunk, closing connection\r\n"
)
#: Octets that would be commands if the core ever read a chunk as command lines.
DANGEROUS = b"RSET\r\nQUIT\r\n"
MESSAGE_TOO_BIG = Reply(552, "Message size exceeds fixed maximum message size", (5, 3, 4))


def received(size: int) -> bytes:
    return b"250 2.0.0 %d octets received\r\n" % size


def with_extensions(*extensions: smtpwire.Extension, **options: object) -> ServerConfig:
    return ServerConfig(hostname=HOST, extensions=extensions, **options)  # type: ignore[arg-type]


def in_transaction(config: ServerConfig | None = None, *, answer: Answer | None = None) -> Driver:
    d = Driver(config, answer=answer)
    d.say(*ENVELOPE)
    d.events.clear()
    return d


def refuse(event_type: type, reply: Reply) -> Answer:
    return lambda event: reply if isinstance(event, event_type) else None


def of_type(d: Driver, event_type: type) -> list[smtpwire.Event]:
    return [e for e in d.events if isinstance(e, event_type)]


# -- happy paths -----------------------------------------------------------------


def test_one_last_chunk_is_the_whole_message() -> None:
    d = in_transaction()
    assert d.feed(b"BDAT 5 LAST\r\nhello") == MESSAGE_OK
    assert d.events == [DataRequested(chunked=True), MessageData(b"hello"), EndOfMessage()]
    assert d.conn.state is State.READY and d.conn.transaction is None


def test_several_chunks_are_answered_one_by_one() -> None:
    d = in_transaction()
    assert d.feed(b"BDAT 6\r\nfirst ") == received(6)
    assert d.conn.state is State.BDAT
    assert d.feed(b"BDAT 7\r\nsecond ") == received(7)
    assert d.feed(b"BDAT 4 LAST\r\nlast") == MESSAGE_OK
    assert d.message_bytes() == b"first second last"
    assert of_type(d, ChunkReceived) == [ChunkReceived(6), ChunkReceived(7)]
    assert len(of_type(d, DataRequested)) == 1  # asked once, at the first chunk
    assert isinstance(d.events[-1], EndOfMessage)


def test_a_second_message_after_a_chunked_one() -> None:
    d = in_transaction()
    out = d.feed(b"BDAT 1 LAST\r\nx" + b"MAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.net>\r\nBDAT 2 LAST\r\nyz")
    assert out == MESSAGE_OK + b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n" + MESSAGE_OK
    assert [e.data for e in of_type(d, MessageData)] == [b"x", b"yz"]  # type: ignore[attr-defined]


def test_bdat_0_last_is_an_empty_message() -> None:
    d = in_transaction()
    assert d.feed(b"BDAT 0 LAST\r\n") == MESSAGE_OK
    assert d.events == [DataRequested(chunked=True), EndOfMessage()]


def test_an_empty_chunk_before_last() -> None:
    d = in_transaction()
    assert d.feed(b"BDAT 0\r\nBDAT 2 last\r\nok") == received(0) + MESSAGE_OK
    assert d.message_bytes() == b"ok"
    assert of_type(d, ChunkReceived) == [ChunkReceived(0)]


def test_verb_and_last_are_case_insensitive() -> None:
    d = in_transaction()
    assert d.feed(b"bdat 3 Last\r\nabc") == MESSAGE_OK
    assert d.message_bytes() == b"abc"


@pytest.mark.parametrize(
    "content",
    [
        b"line\r\n.\r\nMAIL FROM:<evil@example.org>\r\n",  # DATA's end marker means nothing here
        b"bare\nLF and bare\rCR\n.\n",
        b"\x00NUL\x00\xff\xfe binary",
        b".\r\n",
        b"..dot stuffing is not undone\r\n",
        DANGEROUS,
    ],
)
def test_chunk_octets_are_passed_through_as_they_are(content: bytes) -> None:
    d = in_transaction()
    out = d.feed(b"BDAT %d LAST\r\n" % len(content) + content + b"NOOP\r\n")
    assert out == MESSAGE_OK + NOOP_OK
    assert d.message_bytes() == content
    assert not any(isinstance(e, (smtpwire.MailFrom, smtpwire.Rset, smtpwire.Quit)) for e in d.events)


def test_chunk_and_command_split_a_byte_at_a_time() -> None:
    d = in_transaction()
    wire = b"BDAT 4\r\na\r\nbBDAT 3 LAST\r\n.\r\nNOOP\r\n"
    out = b"".join(d.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert out == received(4) + MESSAGE_OK + NOOP_OK
    assert d.message_bytes() == b"a\r\nb.\r\n"
    assert len(d.conn._buffer) == 0


def test_a_chunk_is_streamed_as_it_arrives() -> None:
    d = in_transaction()
    assert d.feed(b"BDAT 10 LAST\r\nabc") == b""
    assert d.events[-1] == MessageData(b"abc") and d.conn.state is State.CHUNK
    assert len(d.conn._buffer) == 0
    assert d.feed(b"defghij") == MESSAGE_OK
    assert d.message_bytes() == b"abcdefghij"


def test_chunk_replies_without_enhanced_codes() -> None:
    d = in_transaction(with_extensions(smtpwire.Chunking()))
    assert d.feed(b"BDAT 2\r\nabBDAT 1 LAST\r\nc") == b"250 2 octets received\r\n250 OK\r\n"


def test_pipelined_chunks_and_commands_after_last() -> None:
    d = in_transaction()
    out = d.feed(b"BDAT 3\r\nabcBDAT 3 LAST\r\ndefRSET\r\nNOOP\r\nQUIT\r\n")
    assert out == received(3) + MESSAGE_OK + b"250 2.0.0 OK\r\n" + NOOP_OK + (
        b"221 2.0.0 mx.test Service closing transmission channel\r\n"
    )
    assert d.message_bytes() == b"abcdef"


# -- the decisions: data_start and the end of the message ------------------------


def test_accepting_the_first_chunk_sends_nothing() -> None:
    d = in_transaction()
    d.conn.receive_data(b"BDAT 3 LAST\r\n")
    assert d.conn.next_event() == DataRequested(chunked=True)
    assert d.conn.next_event() is smtpwire.PAUSED
    d.conn.accept()
    assert d.conn.data_to_send() == b""
    assert d.conn.state is State.CHUNK
    assert d.conn.next_event() is smtpwire.NEED_DATA


def test_refusing_the_first_chunk_discards_exactly_its_octets() -> None:
    d = in_transaction(answer=refuse(DataRequested, Reply(452, "No room", (4, 3, 1))))
    out = d.feed(b"BDAT 12\r\n" + DANGEROUS + b"NOOP\r\n")
    assert out == b"452 4.3.1 No room\r\n" + NOOP_OK
    assert [type(e) for e in d.events] == [DataRequested, smtpwire.Noop]
    assert d.conn.state is State.RCPT and d.conn.transaction is not None  # the envelope stands


def test_refused_chunk_octets_arriving_later_are_discarded_too() -> None:
    d = in_transaction(answer=refuse(DataRequested, Reply(554, "No")))
    assert d.feed(b"BDAT 12 LAST\r\nRSET\r\n") == b"554 5.0.0 No\r\n"
    assert d.feed(b"QUIT\r") == b""
    assert d.feed(b"\nNOOP\r\n") == NOOP_OK
    assert not any(isinstance(e, (smtpwire.Rset, smtpwire.Quit)) for e in d.events)


def test_after_a_refused_first_chunk_the_next_bdat_asks_again() -> None:
    answers = iter([Reply(451, "Try later"), None])
    d = in_transaction(answer=lambda event: next(answers) if isinstance(event, DataRequested) else None)
    out = d.feed(b"BDAT 2\r\nxxBDAT 2 LAST\r\nok")
    assert out == b"451 4.0.0 Try later\r\n" + MESSAGE_OK
    assert of_type(d, DataRequested) == [DataRequested(chunked=True)] * 2
    assert d.message_bytes() == b"ok"


def test_a_421_to_the_first_chunk_closes() -> None:
    d = in_transaction(answer=refuse(DataRequested, Reply(421, "Bye", (4, 3, 2))))
    assert d.feed(b"BDAT 4 LAST\r\nNOOP") == b"421 4.3.2 Bye\r\n"
    assert d.conn.state is State.CLOSED


def test_the_end_of_message_answer_goes_on_the_wire() -> None:
    d = in_transaction(answer=refuse(EndOfMessage, Reply(554, "Spam", (5, 7, 1))))
    assert d.feed(b"BDAT 2\r\nabBDAT 2 LAST\r\ncdNOOP\r\n") == received(2) + b"554 5.7.1 Spam\r\n" + NOOP_OK
    assert d.conn.state is State.READY and d.conn.transaction is None


def test_commands_pipelined_after_last_wait_for_the_answer() -> None:
    d = in_transaction()
    d.conn.receive_data(b"BDAT 1 LAST\r\nxNOOP\r\n")
    events = [d.conn.next_event() for _ in range(3)]
    assert events == [DataRequested(chunked=True), smtpwire.PAUSED, smtpwire.PAUSED]
    d.conn.accept()
    assert d.conn.next_event() == MessageData(b"x")
    assert d.conn.next_event() == EndOfMessage()
    assert d.conn.next_event() is smtpwire.PAUSED
    d.conn.send(Reply(250, "Queued", (2, 0, 0)))
    assert d.conn.next_event() == smtpwire.Noop()
    assert d.conn.data_to_send() == b"250 2.0.0 Queued\r\n" + NOOP_OK


# -- refusals: the chunk's octets follow all the same and are discarded --------------


@pytest.mark.parametrize(
    ("commands", "reply"),
    [
        ((), b"503 5.5.1 Need MAIL command\r\n"),
        (("EHLO client.test",), b"503 5.5.1 Need MAIL command\r\n"),
        (("EHLO client.test", "MAIL FROM:<a@example.org>"), b"554 5.5.1 No valid recipients\r\n"),
    ],
    ids=["before-ehlo", "no-transaction", "no-recipient"],
)
def test_a_bdat_out_of_sequence_discards_its_chunk(commands: tuple[str, ...], reply: bytes) -> None:
    d = Driver()
    for command in commands:
        d.say(command)
    assert d.feed(b"BDAT 12 LAST\r\n" + DANGEROUS + b"NOOP\r\n") == reply + NOOP_OK
    assert not any(isinstance(e, (smtpwire.Rset, smtpwire.Quit, DataRequested)) for e in d.events)


def test_after_a_554_greeting_a_bdat_chunk_is_discarded() -> None:
    d = Driver(answer=refuse(smtpwire.ConnectionOpened, Reply(554, "Go away")), greet=False)
    d.pump()
    d.conn.data_to_send()
    assert d.feed(b"BDAT 6\r\nQUIT\r\nNOOP\r\n") == b"503 5.5.1 Bad sequence of commands\r\n" * 2  # BDAT, NOOP
    assert d.conn.state is State.REFUSED


def test_bdat_without_chunking_is_unrecognized_and_discarded() -> None:
    d = in_transaction(with_extensions(smtpwire.EnhancedStatusCodes()))
    assert d.feed(b"BDAT 12 LAST\r\n" + DANGEROUS + b"NOOP\r\n") == b"500 5.5.2 Command unrecognized\r\n" + NOOP_OK
    assert d.conn.state is State.RCPT


def test_bdat_after_chunking_was_removed_is_discarded() -> None:
    d = in_transaction()
    assert d.feed(b"BDAT 2\r\nab") == received(2)
    d.conn.extensions.remove("CHUNKING")
    assert d.feed(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n") == b"500 5.5.2 Command unrecognized\r\n" + NOOP_OK


def test_bdat_before_tls_gets_530_and_is_discarded() -> None:
    d = Driver(ServerConfig(hostname=HOST, require_tls=True))
    d.say("EHLO client.test")
    assert d.feed(b"BDAT 12 LAST\r\n" + DANGEROUS + b"NOOP\r\n") == (
        b"530 5.7.0 Must issue a STARTTLS command first\r\n" + NOOP_OK
    )


def test_refused_chunks_count_as_errors() -> None:
    d = Driver(ServerConfig(hostname=HOST, max_errors=2))
    d.say("EHLO client.test")
    out = d.feed(b"BDAT 4\r\nNOOPBDAT 4\r\nNOOPNOOP\r\n")
    assert out == b"503 5.5.1 Need MAIL command\r\n" * 2 + b"421 4.7.0 mx.test Too many errors, closing connection\r\n"
    assert d.conn.state is State.CLOSED


@pytest.mark.parametrize(
    "argument",
    [b"", b"x", b"-1", b"+5", b"1e3", b"5 NOTLAST", b"5 LAST X", b"5  LAST", b"\xd9\xa3", b"9" * 21, b"5\tLAST"],
)
def test_an_unparsable_size_closes_the_connection(argument: bytes) -> None:
    d = in_transaction()
    assert d.feed(b"BDAT " + argument + b"\r\nNOOP\r\n") == BDAT_LOST
    assert d.conn.state is State.CLOSED
    assert isinstance(d.events[-1], ConnectionClosed)
    assert d.events[0] == CommandRejected("BDAT", Reply(501, "Syntax: BDAT chunk-size [LAST]", (5, 5, 4)))


@pytest.mark.parametrize(
    "line", [b"BDAT 6\x00", b"bdat 6 LAST\x7f", b"BDAT 6\xff", b"BDAT \xe2\x80\xae6", b"BDAT 6\r\x00"]
)
def test_a_bdat_line_with_bad_characters_closes_the_connection(line: bytes) -> None:
    """Its chunk follows, but its size cannot be trusted: reading on could run the chunk as commands."""
    d = in_transaction()
    assert d.feed(line + b"\r\nQUIT\r\n") == BDAT_LOST
    assert d.conn.state is State.CLOSED and not of_type(d, smtpwire.Quit)


@pytest.mark.parametrize("split", [False, True])
def test_an_over_long_bdat_line_closes_the_connection(split: bool) -> None:
    """Whether the long line arrives whole or its end comes later, the chunk after it has no known end."""
    d = in_transaction()
    line = b"bdat 6" + b" " * 2000 + b"LAST\r\n"
    sent = d.feed(line[:1000]) + d.feed(line[1000:] + DANGEROUS) if split else d.feed(line + DANGEROUS)
    assert sent == b"500 5.5.2 Line too long\r\n" + BDAT_LOST.split(b"\r\n")[1] + b"\r\n"
    assert d.conn.state is State.CLOSED and not of_type(d, smtpwire.Quit)


def test_an_over_long_bdat_line_right_after_another_over_long_line_closes_too() -> None:
    """The first long line is still being dropped when the BDAT line starts: its start is what counts."""
    d = in_transaction()
    sent = d.feed(b"NOOP" + b" " * 2000) + d.feed(b"\r\nBDAT 6" + b" " * 2000 + b"LAST\r\n" + DANGEROUS)
    assert sent == b"500 5.5.2 Line too long\r\n" * 2 + BDAT_LOST.split(b"\r\n")[1] + b"\r\n"
    assert d.conn.state is State.CLOSED and not of_type(d, smtpwire.Quit)


def test_other_over_long_lines_are_only_refused() -> None:
    d = in_transaction()
    assert d.feed(b"NOOP" + b" " * 600 + b"\r\nNOOP\r\n") == b"500 5.5.2 Line too long\r\n" + NOOP_OK


def test_other_lines_with_bad_characters_are_only_refused() -> None:
    d = in_transaction()
    assert (
        d.feed(b"NOOP \x00\r\nBDATX \xff\r\nNOOP\r\n") == b"500 5.5.2 Invalid characters in command\r\n" * 2 + NOOP_OK
    )


BDAT_SYNTAX = Reply(501, "Syntax: BDAT chunk-size [LAST]", (5, 5, 4))
#: Ways to end a word other than one SP: ASCII and Unicode whitespace, as octets on the wire.
OTHER_SEPARATORS = [b"\t", b"\x0b", b"\x0c", b"\r", b"\x1f", b"\xc2\x85", b"\xc2\xa0", b"\xe2\x80\x83", b"\xe3\x80\x80"]


@pytest.mark.parametrize(
    "line",
    [
        b"BDAT\t6",
        b"bdat\t6\tLAST",
        b"BdAt\x0b6",
        b"BDAT\xc2\xa06 LAST",
        b"BDAT\xe3\x80\x806",
        b"BDAT\r6",
        b"BDAT:6",
        b"BDAT\t",
        b" BDAT 6",
        b"\tBDAT\t6",
        b"\xc2\xa0bdat 6 LAST",
    ],
)
def test_a_bdat_split_off_otherwise_than_by_sp_closes_the_connection(line: bytes) -> None:
    """A reader splitting words at that separator sees a chunk: its octets must never run as commands here."""
    d = in_transaction()
    assert d.feed(line + b"\r\n" + DANGEROUS) == BDAT_LOST
    assert d.events == [CommandRejected("BDAT", BDAT_SYNTAX), ConnectionClosed()]
    assert d.conn.state is State.CLOSED


@pytest.mark.parametrize("before", [b"", b"HELO client.test\r\n"])
def test_a_tab_split_bdat_closes_out_of_sequence_and_without_chunking(before: bytes) -> None:
    d = Driver(with_extensions(smtpwire.EnhancedStatusCodes()))
    assert d.feed(before + b"BDAT\t6\r\n" + DANGEROUS).endswith(BDAT_LOST)
    assert d.conn.state is State.CLOSED and not of_type(d, smtpwire.Rset)


@pytest.mark.parametrize(
    "line", [b"BDAT\t6" + b" " * 2000, b"\t" * 10 + b"BDAT 6" + b" " * 2000], ids=["tab-after", "tabs-before"]
)
def test_an_over_long_line_whose_first_word_is_bdat_closes_the_connection(line: bytes) -> None:
    d = in_transaction()
    sent = d.feed(line + b"\r\n" + DANGEROUS)
    assert sent == b"500 5.5.2 Line too long\r\n" + BDAT_LOST.split(b"\r\n")[1] + b"\r\n"
    assert d.conn.state is State.CLOSED and not of_type(d, smtpwire.Quit)


@pytest.mark.parametrize("line", [b"BDATX\t6", b"BDAT-X 6", b"XBDAT 6", b"BDAT6", b"NOOP\tBDAT 6", b"B DAT 6"])
def test_lines_whose_first_word_is_not_bdat_are_only_refused(line: bytes) -> None:
    d = in_transaction()
    assert d.feed(line + b"\r\nNOOP\r\n") == b"500 5.5.2 Command unrecognized\r\n" + NOOP_OK
    assert d.conn.state is State.RCPT


def test_an_unparsable_size_closes_even_out_of_sequence() -> None:
    d = Driver()
    d.say("EHLO client.test")
    assert d.feed(b"BDAT LAST\r\nNOOP\r\n") == BDAT_LOST
    assert d.conn.state is State.CLOSED


def test_an_unparsable_size_at_the_error_limit_says_421_once() -> None:
    d = in_transaction(ServerConfig(hostname=HOST, max_errors=1))
    out = d.feed(b"BDAT x\r\n")
    assert (
        out == b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n421 4.7.0 mx.test Too many errors, closing connection\r\n"
    )


def test_twenty_digit_sizes_parse() -> None:
    d = in_transaction()
    assert d.feed(b"BDAT 00000000000000000003 LAST\r\nabc") == MESSAGE_OK


# -- the size limit ----------------------------------------------------------------


def small(**options: object) -> ServerConfig:
    return ServerConfig(hostname=HOST, max_message_size=10, **options)  # type: ignore[arg-type]


def test_a_first_chunk_over_the_limit_is_refused_before_any_octet() -> None:
    d = in_transaction(small())
    assert d.feed(b"BDAT 12 LAST\r\n") == TOO_BIG
    assert d.conn.state is State.READY and d.conn.transaction is None
    assert d.events == [CommandRejected("BDAT", MESSAGE_TOO_BIG)]  # the application is not asked
    assert d.feed(DANGEROUS + b"NOOP\r\n") == NOOP_OK  # its 12 octets are discarded


def test_a_later_chunk_over_the_limit_rejects_the_message() -> None:
    d = in_transaction(small())
    out = d.feed(b"BDAT 6\r\n123456BDAT 5\r\nQUIT\r" + b"BDAT 1 LAST\r\nxNOOP\r\n")
    assert out == received(6) + TOO_BIG + b"503 5.5.1 Need MAIL command\r\n" + NOOP_OK
    assert d.message_bytes() == b"123456"
    assert of_type(d, MessageRejected) == [MessageRejected(MESSAGE_TOO_BIG)]
    assert not of_type(d, EndOfMessage) and not of_type(d, smtpwire.Quit)


def test_chunks_exactly_at_the_limit_are_fine() -> None:
    d = in_transaction(small())
    assert d.feed(b"BDAT 4\r\n1234BDAT 6 LAST\r\n567890") == received(4) + MESSAGE_OK
    assert d.message_bytes() == b"1234567890"


def test_the_limit_counts_again_in_the_next_transaction() -> None:
    d = in_transaction(small())
    d.feed(b"BDAT 10 LAST\r\n0123456789")
    d.say("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
    assert d.feed(b"BDAT 10 LAST\r\n0123456789") == MESSAGE_OK


# -- DATA and BDAT in one transaction (RFC 3030 2) ------------------------------------


def test_data_after_bdat_is_a_sequence_error() -> None:
    d = in_transaction()
    assert d.feed(b"BDAT 2\r\nabDATA\r\n") == received(2) + DATA_AFTER_BDAT
    assert d.conn.state is State.BDAT
    assert d.feed(b"BDAT 1 LAST\r\nc") == MESSAGE_OK
    assert d.message_bytes() == b"abc"


def test_data_after_a_refused_bdat_is_a_sequence_error() -> None:
    d = in_transaction(answer=refuse(DataRequested, Reply(451, "Later")))
    assert d.feed(b"BDAT 2\r\nabDATA\r\n") == b"451 4.0.0 Later\r\n" + DATA_AFTER_BDAT


def test_bdat_after_a_declined_data_is_a_sequence_error_and_discarded() -> None:
    d = in_transaction(answer=refuse(DataRequested, Reply(451, "Later")))
    out = d.feed(b"DATA\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert out == b"451 4.0.0 Later\r\n503 5.5.1 BDAT cannot follow DATA (RFC 3030 2)\r\n" + NOOP_OK
    assert d.conn.state is State.RCPT


# -- commands between chunks ---------------------------------------------------------


def test_noop_help_and_vrfy_between_chunks_keep_the_message() -> None:
    d = in_transaction()
    assert d.feed(b"BDAT 2\r\nab") == received(2)
    assert d.codes("NOOP", "HELP", "VRFY b") == [250, 214, 252]
    assert d.conn.state is State.BDAT
    assert d.feed(b"BDAT 1 LAST\r\nc") == MESSAGE_OK
    assert d.message_bytes() == b"abc"


def test_rset_between_chunks_ends_the_transaction() -> None:
    d = in_transaction()
    out = d.feed(b"BDAT 2\r\nabRSET\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert out == received(2) + b"250 2.0.0 OK\r\n503 5.5.1 Need MAIL command\r\n" + NOOP_OK
    assert d.conn.state is State.READY and d.conn.transaction is None
    assert not of_type(d, EndOfMessage)


def test_ehlo_between_chunks_ends_the_transaction() -> None:
    d = in_transaction()
    d.feed(b"BDAT 2\r\nab")
    assert d.say("EHLO again.test").startswith("250-mx.test\r\n")
    assert d.conn.state is State.READY and d.conn.transaction is None


def test_quit_between_chunks_closes() -> None:
    d = in_transaction()
    out = d.feed(b"BDAT 2\r\nabQUIT\r\n")
    assert out == received(2) + b"221 2.0.0 mx.test Service closing transmission channel\r\n"
    assert d.conn.state is State.CLOSED
    assert not of_type(d, EndOfMessage)


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:<c@example.org>", "503 5.5.1 Nested MAIL command"),
        ("RCPT TO:<c@example.net>", "503 5.5.1 Bad sequence of commands"),
        ("AUTH PLAIN", "503 5.5.1 AUTH is not allowed during a mail transaction"),
    ],
)
def test_transaction_commands_between_chunks_are_sequence_errors(command: str, reply: str) -> None:
    d = in_transaction()
    d.feed(b"BDAT 2\r\nab")
    assert d.say(command) == reply + "\r\n"
    assert d.conn.state is State.BDAT


def test_starttls_between_chunks_is_refused() -> None:
    d = in_transaction(ServerConfig(hostname=HOST, extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.StartTLS())))
    d.feed(b"BDAT 2\r\nab")
    assert d.say("STARTTLS") == "503 5.5.1 Transaction in progress\r\n"


def test_the_peer_closing_mid_chunk_ends_the_connection() -> None:
    d = in_transaction()
    d.feed(b"BDAT 10 LAST\r\nabc")
    assert d.feed(b"") == b""
    assert isinstance(d.events[-1], ConnectionClosed)
    assert d.conn.state is State.CLOSED and not of_type(d, EndOfMessage)


def test_the_peer_closing_inside_a_refused_chunk_ends_the_connection() -> None:
    d = Driver()
    d.say("EHLO client.test")
    d.feed(b"BDAT 10 LAST\r\nNOOP\r\n")
    assert d.feed(b"") == b""
    assert isinstance(d.events[-1], ConnectionClosed) and not of_type(d, smtpwire.Noop)


def test_timeout_mid_chunk() -> None:
    d = in_transaction()
    d.feed(b"BDAT 10\r\nabc")
    d.conn.timed_out()
    assert d.conn.data_to_send() == b"421 4.4.2 mx.test Timeout, closing connection\r\n"
    assert d.conn.state is State.CLOSED


# -- BINARYMIME (RFC 3030 3) ---------------------------------------------------------

BINARY = with_extensions(
    smtpwire.EightBitMime(), smtpwire.EnhancedStatusCodes(), smtpwire.Chunking(), smtpwire.BinaryMime()
)
BINARY_MAIL = "MAIL FROM:<a@example.org> BODY=BINARYMIME"
BODY_SYNTAX = "501 5.5.4 Syntax: BODY=7BIT|8BITMIME\r\n"


def ehlo_keywords(d: Driver) -> list[str]:
    return [line[4:] for line in d.say("EHLO client.test").splitlines()[1:]]


def test_binarymime_is_offered_with_chunking() -> None:
    assert ehlo_keywords(Driver(BINARY)) == ["8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING", "BINARYMIME"]


def test_binarymime_is_not_offered_without_chunking() -> None:
    d = Driver(with_extensions(smtpwire.EightBitMime(), smtpwire.BinaryMime()))
    assert ehlo_keywords(d) == ["8BITMIME"]
    assert d.say(BINARY_MAIL) == "501 Syntax: BODY=7BIT|8BITMIME\r\n"


def test_binarymime_goes_when_chunking_goes() -> None:
    d = Driver(BINARY)
    d.conn.extensions.remove("CHUNKING")
    assert ehlo_keywords(d) == ["8BITMIME", "ENHANCEDSTATUSCODES"]
    assert d.say(BINARY_MAIL) == BODY_SYNTAX


def test_body_binarymime_is_refused_when_not_registered() -> None:
    d = Driver()
    d.say("EHLO client.test")
    assert d.say(BINARY_MAIL) == BODY_SYNTAX
    assert d.conn.transaction is None


def test_data_in_a_binarymime_transaction_is_refused() -> None:
    d = Driver(BINARY)
    d.say("EHLO client.test", BINARY_MAIL.replace("BINARYMIME", "binarymime"), "RCPT TO:<b@example.net>")
    assert d.say("DATA") == "503 5.5.1 BODY=BINARYMIME needs BDAT, not DATA (RFC 3030 3)\r\n"
    assert d.conn.state is State.RCPT
    content = bytes(range(256))
    assert d.feed(b"BDAT 256 LAST\r\n" + content) == MESSAGE_OK
    assert d.message_bytes() == content


# -- HELP ------------------------------------------------------------------------------


def help_verbs(d: Driver) -> list[str]:
    return d.say("HELP").removeprefix("214 2.0.0 Supported commands: ").split()


def test_help_lists_bdat_only_while_chunking_is_offered() -> None:
    d = Driver()
    assert "BDAT" in help_verbs(d)
    d.conn.extensions.remove("CHUNKING")
    assert "BDAT" not in help_verbs(d)
    assert "BDAT" not in help_verbs(Driver(with_extensions(smtpwire.EnhancedStatusCodes())))


# -- properties --------------------------------------------------------------------------

EHLO_REPLY = (
    b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
)
ENVELOPE_REPLIES = EHLO_REPLY + b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n"
CLOSING = NOOP_OK + b"221 2.0.0 mx.test Service closing transmission channel\r\n"


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A message of any bytes and the sizes of the chunks it is cut into (empty chunks too)."""
    message = draw(st.binary(max_size=400))
    cuts = sorted(draw(st.lists(st.integers(0, len(message)), max_size=6)))
    bounds = [0, *cuts, len(message)]
    return message, [end - start for start, end in itertools.pairwise(bounds)]


def split_anywhere(data: st.DataObject, wire: bytes) -> list[bytes]:
    """The byte stream cut into pieces at random places, each fed with its own receive_data()."""
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=12))))
    bounds = [0, *cuts, len(wire)]
    return [wire[start:end] for start, end in itertools.pairwise(bounds)]


def bdat_wire(message: bytes, sizes: list[int]) -> bytes:
    wire, position = bytearray(), 0
    for index, size in enumerate(sizes):
        last = b" LAST" if index == len(sizes) - 1 else b""
        wire += b"BDAT %d%s\r\n" % (size, last) + message[position : position + size]
        position += size
    return bytes(wire)


@settings(max_examples=200, deadline=None)
@given(chunked(), st.data())
def test_any_chunking_of_any_message_split_anywhere_round_trips(
    message_and_sizes: tuple[bytes, list[int]], data: st.DataObject
) -> None:
    message, sizes = message_and_sizes
    wire = "".join(line + "\r\n" for line in ENVELOPE).encode() + bdat_wire(message, sizes) + b"NOOP\r\nQUIT\r\n"
    d = Driver()
    out = b"".join(d.feed(piece) for piece in split_anywhere(data, wire))
    expected = ENVELOPE_REPLIES + b"".join(received(size) for size in sizes[:-1]) + MESSAGE_OK + CLOSING
    assert out == expected
    assert d.message_bytes() == message
    assert of_type(d, ChunkReceived) == [ChunkReceived(size) for size in sizes[:-1]]
    assert len(of_type(d, EndOfMessage)) == 1 and d.conn.state is State.CLOSED


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_a_refused_chunk_of_any_bytes_is_never_executed(content: bytes, data: st.DataObject) -> None:
    wire = b"EHLO client.test\r\nBDAT %d LAST\r\n" % len(content) + content + b"NOOP\r\n"
    d = Driver()
    out = b"".join(d.feed(piece) for piece in split_anywhere(data, wire))
    assert out == EHLO_REPLY + b"503 5.5.1 Need MAIL command\r\n" + NOOP_OK
    assert [type(e) for e in d.events] == [smtpwire.Ehlo, CommandRejected, smtpwire.Noop]


def bdat_separators() -> st.SearchStrategy[bytes]:
    """What could end a word for some reader: SP, whitespace of any kind, any octet no verb holds (not LF)."""
    non_verb = st.integers(0, 255).filter(lambda octet: not (chr(octet).isalnum() or chr(octet) in "-\n"))
    return st.one_of(st.sampled_from([b" ", *OTHER_SEPARATORS]), non_verb.map(lambda octet: bytes([octet])))


@st.composite
def misread_bdat_lines(draw: st.DrawFn) -> bytes:
    """A line whose first word is BDAT, in any case, for a reader splitting at some separator, yet no BDAT command."""
    leading = b"".join(draw(st.lists(bdat_separators(), max_size=3)))
    verb = bytes(draw(st.sampled_from([octet, octet | 0x20])) for octet in b"BDAT")
    after = draw(bdat_separators().filter(lambda separator: bool(leading) or separator != b" "))
    return leading + verb + after + draw(st.sampled_from([b"6", b"", b"6 LAST", after + b"6"]))


@settings(max_examples=300, deadline=None)
@given(misread_bdat_lines(), st.binary(max_size=40), st.data())
def test_a_chunk_after_a_misread_bdat_line_is_never_executed(line: bytes, chunk: bytes, data: st.DataObject) -> None:
    """However the verb is split off, the chunk after it is no command: 501 and 421, whatever arrives after."""
    wire = b"".join(line + b"\r\n" for line in map(str.encode, ENVELOPE)) + line + b"\r\n" + chunk + DANGEROUS
    d = Driver()
    out = b"".join(d.feed(piece) for piece in split_anywhere(data, wire))
    assert out == ENVELOPE_REPLIES + BDAT_LOST
    rejected, *after = d.events[3:]  # once closed, the core says so to every next_event()
    assert rejected == CommandRejected("BDAT", BDAT_SYNTAX) and set(after) == {ConnectionClosed()}
