"""DATA streaming: dot-unstuffing, the one true end of data, smuggling, SIZE."""

import pytest

import smtpwire
from smtpwire import ServerConfig
from tests.driver import Driver


def stream(d: Driver, *chunks: bytes) -> bytes:
    return b"".join(d.feed(chunk) for chunk in chunks)


def test_message_is_streamed_not_buffered() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    for i in range(3):
        assert d.feed(b"line %d\r\n" % i) == b""
        # Only the CRLF that might precede the end marker is held back.
        assert d.events[-1] == smtpwire.MessageData(b"line %d" % i if i == 0 else b"\r\nline %d" % i)
        assert len(d.conn._buffer) == 0
    assert d.feed(b".\r\n") == b"250 2.0.0 OK\r\n"
    assert isinstance(d.events[-1], smtpwire.EndOfMessage)


def test_dot_unstuffing() -> None:
    d = Driver()
    d.send_message(b"..leading\r\n.x\r\n...\r\nmid.dle\r\n. \r\n")
    assert d.message_bytes() == b".leading\r\nx\r\n..\r\nmid.dle\r\n \r\n"


def test_empty_message() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    assert d.feed(b".\r\n") == b"250 2.0.0 OK\r\n"
    assert d.message_bytes() == b""
    assert not any(isinstance(e, smtpwire.MessageData) for e in d.events)


def test_message_that_starts_with_a_dot() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    stream(d, b".", b".hidden\r\n.\r", b"\n")
    assert d.message_bytes() == b".hidden\r\n"


@pytest.mark.parametrize("split", range(1, 12))
def test_end_of_data_split_anywhere(split: int) -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    wire = b"ab\r\n..c\r\n.\r\nNOOP\r\n"
    out = stream(d, wire[:split], wire[split:])
    assert out == b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n"
    assert d.message_bytes() == b"ab\r\n.c\r\n"


def test_byte_at_a_time() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    wire = b"\r\n.a\r\n\r\n..\r\n.\r\nQUIT\r\n"
    out = stream(d, *(wire[i : i + 1] for i in range(len(wire))))
    assert out.endswith(b"250 2.0.0 OK\r\n221 2.0.0 mx.test Service closing transmission channel\r\n")
    assert d.message_bytes() == b"\r\na\r\n\r\n.\r\n"


def test_pipelined_commands_after_the_message() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    out = d.feed(b"hi\r\n.\r\nMAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\n")
    assert out == b"250 2.0.0 OK\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"


@pytest.mark.parametrize(
    "smuggled",
    [
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\n.\r",
        b"\r\n\r.\r\n",
        b"\n",
        b"\r",
        b"\r\r\n",
        b"\n\n",
    ],
)
def test_smuggling_lookalikes_never_end_data_and_are_refused(smuggled: bytes) -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    out = d.feed(b"first" + smuggled + b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n")
    assert out == b""  # still inside the first message
    assert d.feed(b".\r\nNOOP\r\n") == (
        b"550 5.6.0 Message refused: bare CR or LF in data (RFC 5321 2.3.8)\r\n250 2.0.0 OK\r\n"
    )
    assert isinstance(d.events[-2], smtpwire.MessageRejected)
    assert not any(isinstance(e, (smtpwire.EndOfMessage, smtpwire.MailFrom)) for e in d.events[3:])
    assert d.conn.state is smtpwire.State.READY


def test_bare_line_endings_split_across_feeds_are_seen() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    assert stream(d, b"a\r", b"b\r\n.\r\n") == b"550 5.6.0 Message refused: bare CR or LF in data (RFC 5321 2.3.8)\r\n"


def test_crlf_split_across_feeds_is_not_bare() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    assert stream(d, b"a\r", b"\nb\r", b"\n.", b"\r", b"\n") == b"250 2.0.0 OK\r\n"


def test_accept_policy_passes_bare_line_endings_through() -> None:
    d = Driver(ServerConfig(bare_line_endings="accept"))
    assert d.send_message(b"a\nb\rc\n.\nd\r\n") == "250 2.0.0 OK\r\n"
    assert d.message_bytes() == b"a\nb\rc\n.\nd\r\n"


def test_message_size_limit_stops_streaming() -> None:
    d = Driver(ServerConfig(max_message_size=10))
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    assert d.feed(b"12345678") == b""
    assert d.feed(b"\r\nmore than allowed\r\n" * 100) == b""
    assert d.message_bytes() == b"12345678"  # nothing past the limit is passed on
    assert d.feed(b".\r\n") == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    assert isinstance(d.events[-1], smtpwire.MessageRejected)
    assert d.say("MAIL FROM:<a@b>") == "250 2.1.0 OK\r\n"


def test_size_exceeded_in_the_same_feed_as_the_end() -> None:
    d = Driver(ServerConfig(max_message_size=3))
    assert d.send_message(b"abcdef\r\n") == "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    assert d.message_bytes() == b""


def test_size_checked_before_bare_line_endings() -> None:
    d = Driver(ServerConfig(max_message_size=3))
    assert d.send_message(b"a\nbcdef\r\n").startswith("552")


def test_peer_closes_mid_message() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    d.feed(b"partial\r\n")
    d.conn.receive_data(b"")
    assert d.pump() == [smtpwire.ConnectionClosed()]


def test_peer_closes_mid_message_with_end_pending() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA")
    d.conn.receive_data(b"x\r\n.\r\n")
    d.conn.receive_data(b"")
    assert [type(e) for e in d.pump()] == [smtpwire.MessageData, smtpwire.EndOfMessage, smtpwire.ConnectionClosed]
    assert d.conn.data_to_send() == b"250 2.0.0 OK\r\n"  # an acknowledged message is never lost to the close


def test_binary_content_passes_through() -> None:
    body = bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
    d = Driver()
    d.send_message(body)
    assert d.message_bytes() == body
