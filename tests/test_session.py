"""Every command, reply code and state of the core (RFC 5321, 1870, 2034, 6152, 6531)."""

import pytest

import smtpwire
from smtpwire import Reply, ServerConfig, State
from tests.driver import Driver


def test_greeting_is_the_applications_decision() -> None:
    d = Driver(greet=False)
    event = d.conn.next_event()
    assert isinstance(event, smtpwire.ConnectionOpened)
    assert d.conn.next_event() is smtpwire.PAUSED
    d.conn.accept()
    assert d.conn.data_to_send() == b"220 mx.test ESMTP smtpwire\r\n"
    assert d.conn.state is State.GREETED


def test_greeting_554_serves_only_quit() -> None:
    d = Driver(greet=False, answer=lambda e: Reply(554, "no service here", (5, 7, 1)))
    d.pump()
    assert d.conn.data_to_send() == b"554 5.7.1 no service here\r\n"
    assert d.conn.state is State.REFUSED
    assert d.say("EHLO x", "MAIL FROM:<a@b>", "QUIT") == (
        "503 5.5.1 Bad sequence of commands\r\n503 5.5.1 Bad sequence of commands\r\n"
        "221 2.0.0 mx.test Service closing transmission channel\r\n"
    )


def test_greeting_421_closes() -> None:
    d = Driver(greet=False, answer=lambda e: Reply(421, "busy", (4, 7, 0)))
    d.pump()
    assert d.conn.data_to_send() == b"421 4.7.0 busy\r\n"  # a refusal carries its enhanced code
    assert isinstance(d.conn.next_event(), smtpwire.ConnectionClosed)


def test_the_greeting_itself_carries_no_enhanced_code() -> None:
    d = Driver(greet=False, answer=lambda e: Reply(220, "welcome", (2, 0, 0)))
    d.pump()
    assert d.conn.data_to_send() == b"220 welcome\r\n"  # RFC 2034: not in the greeting


def test_ehlo_lists_extensions_without_enhanced_codes() -> None:
    assert Driver().say("EHLO client.test") == (
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 33554432\r\n"
        "250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
    )


def test_helo() -> None:
    d = Driver()
    assert d.say("HELO client.test") == "250 mx.test\r\n"
    assert d.conn.helo_name == "client.test" and not d.conn.esmtp
    assert d.events == [smtpwire.Helo("client.test")]


@pytest.mark.parametrize("verb", ["HELO", "EHLO", "helo", "eHlO"])
def test_hello_needs_a_name(verb: str) -> None:
    assert Driver().say(verb).startswith("501 5.5.4 Syntax:")


def test_verbs_are_case_insensitive() -> None:
    d = Driver()
    assert d.codes("ehlo x", "mail from:<a@b>", "rcpt to:<c@d>", "rset", "noop", "quit") == [250] * 5 + [221]


def test_a_declined_ehlo_keeps_the_transaction() -> None:
    d = Driver(answer=lambda e: Reply(550, "go away", (5, 7, 1)) if e == smtpwire.Ehlo("bad") else None)
    assert d.codes("EHLO good", "MAIL FROM:<a@b>", "EHLO bad", "RCPT TO:<c@d>") == [250, 250, 550, 250]


def test_second_ehlo_aborts_the_transaction() -> None:
    d = Driver()
    assert d.codes("EHLO x", "MAIL FROM:<a@b>", "EHLO y", "RCPT TO:<c@d>") == [250, 250, 250, 503]
    assert d.conn.transaction is None and d.conn.helo_name == "y"


def test_unknown_and_unimplemented_verbs() -> None:
    assert Driver().say("FROB", "EXPN list", "TURN") == (
        "500 5.5.2 Command unrecognized\r\n502 5.5.1 Command not implemented\r\n502 5.5.1 Command not implemented\r\n"
    )


def test_empty_line_is_unrecognized() -> None:
    d = Driver()
    assert d.say("") == "500 5.5.2 Command unrecognized\r\n"
    assert d.events == [smtpwire.CommandRejected("", Reply(500, "Command unrecognized", (5, 5, 2)))]


@pytest.mark.parametrize(
    ("commands", "last"),
    [
        (["MAIL FROM:<a@b>"], "503 5.5.1 Send HELO/EHLO first"),
        (["EHLO x", "RCPT TO:<a@b>"], "503 5.5.1 Need MAIL before RCPT"),
        (["RCPT TO:<a@b>"], "503 5.5.1 Need MAIL before RCPT"),
        (["EHLO x", "DATA"], "503 5.5.1 Need MAIL command"),
        (["DATA"], "503 5.5.1 Need MAIL command"),
        (["EHLO x", "MAIL FROM:<a@b>", "DATA"], "554 5.5.1 No valid recipients"),
        (["EHLO x", "MAIL FROM:<a@b>", "MAIL FROM:<a@b>"], "503 5.5.1 Nested MAIL command"),
        (["EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "MAIL FROM:<a@b>"], "503 5.5.1 Nested MAIL command"),
    ],
)
def test_command_order(commands: list[str], last: str) -> None:
    assert Driver().say(*commands).splitlines()[-1] == last


def test_full_transaction_and_envelope() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@example.org> BODY=8BITMIME", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>")
    transaction = d.conn.transaction
    assert transaction is not None
    assert transaction.mail_from == "a@example.org"
    assert transaction.mail_params == {"BODY": "8BITMIME"}
    assert transaction.recipients == ("b@example.net", "c@example.net")
    assert d.say("DATA") == "354 End data with <CR><LF>.<CR><LF>\r\n"
    assert d.feed(b"Subject: hi\r\n\r\nbody\r\n.\r\n") == b"250 2.0.0 OK\r\n"
    assert d.message_bytes() == b"Subject: hi\r\n\r\nbody\r\n"
    assert d.conn.transaction is None and d.conn.state is State.READY


def test_declined_recipient_is_not_in_the_envelope() -> None:
    d = Driver(answer=lambda e: Reply(550, "no such user", (5, 1, 1)) if isinstance(e, smtpwire.RcptTo) else None)
    assert d.codes("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA") == [250, 250, 550, 554]


def test_declined_mail_stays_ready() -> None:
    d = Driver(answer=lambda e: Reply(550, "no", (5, 7, 1)) if isinstance(e, smtpwire.MailFrom) else None)
    assert d.codes("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>") == [250, 550, 503]
    assert d.conn.state is State.READY


def test_declined_data_stays_in_transaction() -> None:
    d = Driver(answer=lambda e: Reply(451, "later") if isinstance(e, smtpwire.DataRequested) else None)
    assert d.codes("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA", "RCPT TO:<e@f>") == [250, 250, 250, 451, 250]


def test_declined_message_ends_the_transaction() -> None:
    d = Driver(answer=lambda e: Reply(554, "spam", (5, 7, 1)) if isinstance(e, smtpwire.EndOfMessage) else None)
    assert d.send_message(b"x\r\n") == "554 5.7.1 spam\r\n"
    assert d.conn.state is State.READY and d.conn.transaction is None


def test_application_can_add_text_to_ehlo() -> None:
    d = Driver(answer=lambda e: Reply(250, ["mx.test hello", "extra"]) if isinstance(e, smtpwire.Ehlo) else None)
    assert d.say("EHLO x").splitlines()[:3] == ["250-mx.test hello", "250-extra", "250-PIPELINING"]


def test_rset_noop_help_vrfy_quit() -> None:
    d = Driver()
    assert d.say("RSET", "NOOP anything", "HELP mail", "VRFY postmaster", "QUIT") == (
        "250 2.0.0 OK\r\n250 2.0.0 OK\r\n"
        "214 2.0.0 Supported commands: BDAT DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY\r\n"
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
        "221 2.0.0 mx.test Service closing transmission channel\r\n"
    )
    assert d.events[:5] == [
        smtpwire.Rset(),
        smtpwire.Noop(),
        smtpwire.Help("mail"),
        smtpwire.Vrfy("postmaster"),
        smtpwire.Quit(),
    ]
    assert isinstance(d.events[-1], smtpwire.ConnectionClosed)
    assert d.conn.state is State.CLOSED


def test_rset_aborts_transaction() -> None:
    d = Driver()
    assert d.codes("EHLO x", "MAIL FROM:<a@b>", "RSET", "RCPT TO:<c@d>", "MAIL FROM:<a@b>") == [250, 250, 250, 503, 250]


def test_rset_before_helo_keeps_needing_helo() -> None:
    d = Driver()
    assert d.codes("RSET", "MAIL FROM:<a@b>") == [250, 503]


@pytest.mark.parametrize("command", ["RSET x", "QUIT now", "DATA x", "VRFY"])
def test_commands_without_or_with_required_arguments(command: str) -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>")
    assert d.say(command).startswith("501 5.5.4 Syntax:")


def test_commands_after_quit_are_ignored() -> None:
    d = Driver()
    assert d.say("QUIT", "NOOP") == "221 2.0.0 mx.test Service closing transmission channel\r\n"
    d.conn.receive_data(b"NOOP\r\n")
    assert isinstance(d.conn.next_event(), smtpwire.ConnectionClosed)
    assert d.conn.data_to_send() == b""


def test_peer_close_gives_connection_closed() -> None:
    d = Driver()
    d.conn.receive_data(b"NOOP\r\nEHLO unfinished")
    d.conn.receive_data(b"")
    assert d.pump() == [smtpwire.Noop(), smtpwire.ConnectionClosed()]


def test_enhanced_codes_follow_the_extension() -> None:
    config = ServerConfig(extensions=(smtpwire.Pipelining(),))
    assert Driver(config).say("NOOP", "FROB") == "250 OK\r\n500 Command unrecognized\r\n"


def test_extensions_can_change_during_the_session() -> None:
    d = Driver()
    d.conn.extensions.remove("smtputf8")
    d.conn.extensions.remove("nonexistent")
    assert "SMTPUTF8" not in d.conn.extensions and 8 not in d.conn.extensions
    assert "SMTPUTF8" not in d.say("EHLO x")
    assert d.say("MAIL FROM:<a@b> SMTPUTF8") == "555 5.5.4 Unsupported parameter\r\n"
    d.conn.extensions.add(smtpwire.SmtpUtf8())
    assert d.say("EHLO x").splitlines()[-1] == "250 SMTPUTF8"
    assert [repr(e) for e in d.conn.extensions][-1] == "<SmtpUtf8 SMTPUTF8>"


def test_pending_decision() -> None:
    d = Driver(greet=False)
    assert d.conn.pending is None
    d.conn.next_event()
    assert d.conn.pending == smtpwire.ConnectionOpened()


# -- MAIL / RCPT parameters and addresses ---------------------------------------


@pytest.mark.parametrize(
    ("argument", "address"),
    [
        ("FROM:<>", ""),
        ("FROM:<a@example.org>", "a@example.org"),
        ("from:<a@example.org>", "a@example.org"),
        ("FROM: <a@example.org>", "a@example.org"),
        ('FROM:<"john smith"@example.org>', '"john smith"@example.org'),
        ('FROM:<"a\\"b"@example.org>', '"a\\"b"@example.org'),
        ("FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]"),
        ("FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
        ("FROM:<a@[ipv6:::ffff:192.0.2.1]>", "a@[ipv6:::ffff:192.0.2.1]"),
        ("FROM:<@relay.example,@other.example:a@example.org>", "a@example.org"),
        ("FROM:<first.last+tag@sub-domain.example.org>", "first.last+tag@sub-domain.example.org"),
    ],
)
def test_mail_paths(argument: str, address: str) -> None:
    d = Driver()
    d.say("EHLO x")
    assert d.say(f"MAIL {argument}") == "250 2.1.0 OK\r\n"
    assert d.events[-1] == smtpwire.MailFrom(address, {})


@pytest.mark.parametrize(
    "argument",
    [
        "FROM:<a@b",
        "FROM:a@b",
        "FROM:<a@>",
        "FROM:<@b>",
        "FROM:<a.@b>",
        "FROM:<.a@b>",
        "FROM:<a..b@c>",
        "FROM:<a@-b>",
        "FROM:<a@b->",
        "FROM:<a@b..c>",
        "FROM:<a b@c>",
        "FROM:<a@[300.0.0.1]>",
        "FROM:<a@[1.2.3]>",
        "FROM:<a@[IPv6:zz::1]>",
        "FROM:<a@[IPv6:fe80::1%eth0]>",
        "FROM:<a@[tag:content]>",
        "FROM:<a@b>junk",
        "FROM:<a@[x@y]>",
        "FROM:<Postmaster>",
        "FROM:<@a:b@c",
    ],
)
def test_bad_mail_paths(argument: str) -> None:
    d = Driver()
    d.say("EHLO x")
    assert d.say(f"MAIL {argument}") == "501 5.1.7 Bad address syntax\r\n"


@pytest.mark.parametrize("argument", ["<a@b>", "TO:<a@b>", "FROM", ""])
def test_mail_syntax(argument: str) -> None:
    d = Driver()
    d.say("EHLO x")
    assert d.say(f"MAIL {argument}") == "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]\r\n"


@pytest.mark.parametrize("path", ["<Postmaster>", "<postmaster>", "<POSTMASTER>", "<a@b>", "<@x.y:a@b>"])
def test_rcpt_paths(path: str) -> None:
    d = Driver()
    assert d.codes("EHLO x", "MAIL FROM:<>", f"RCPT TO:{path}") == [250, 250, 250]


@pytest.mark.parametrize(
    ("argument", "reply"),
    [
        ("TO:<>", "501 5.1.3 Bad address syntax"),
        ("TO:<a@b", "501 5.1.3 Bad address syntax"),
        ("FROM:<a@b>", "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"),
    ],
)
def test_bad_rcpt(argument: str, reply: str) -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<>")
    assert d.say(f"RCPT {argument}") == reply + "\r\n"


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        ("SIZE=1000", "250 2.1.0 OK"),
        ("size=1000 body=7bit", "250 2.1.0 OK"),
        ("SIZE=33554432", "250 2.1.0 OK"),
        ("SIZE=33554433", "552 5.3.4 Message size exceeds fixed maximum message size"),
        ("SIZE=99999999999999999999", "552 5.3.4 Message size exceeds fixed maximum message size"),
        ("SIZE=999999999999999999999", "501 5.5.4 Syntax: SIZE=<octets>"),
        ("SIZE=", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("SIZE", "501 5.5.4 Syntax: SIZE=<octets>"),
        ("SIZE=12x", "501 5.5.4 Syntax: SIZE=<octets>"),
        ("SIZE=\u00b2", "501 5.5.4 Syntax: SIZE=<octets>"),
        ("BODY=8BITMIME", "250 2.1.0 OK"),
        ("BODY=BINARYMIME", "501 5.5.4 Syntax: BODY=7BIT|8BITMIME"),
        ("BODY", "501 5.5.4 Syntax: BODY=7BIT|8BITMIME"),
        ("SMTPUTF8", "250 2.1.0 OK"),
        ("SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 takes no value"),
        ("FROB=1", "555 5.5.4 Unsupported parameter"),
        ("SIZE=1 SIZE=2", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("-bad", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("A=b=c", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
    ],
)
def test_mail_parameters(params: str, reply: str) -> None:
    d = Driver()
    d.say("EHLO x")
    assert d.say(f"MAIL FROM:<a@b> {params}") == reply + "\r\n"


def test_parameters_are_passed_on_upper_cased() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b> size=10 Body=8bitmime SMTPUTF8")
    assert d.events[-1] == smtpwire.MailFrom("a@b", {"SIZE": "10", "BODY": "8bitmime", "SMTPUTF8": None})


def test_no_parameters_after_helo() -> None:
    d = Driver()
    assert d.codes("HELO x", "MAIL FROM:<a@b> SIZE=10", "MAIL FROM:<a@b>") == [250, 555, 250]


def test_no_rcpt_parameters_are_built_in() -> None:
    d = Driver()
    assert d.codes("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d> NOTIFY=NEVER") == [250, 250, 555]


def test_smtputf8_addresses_need_the_parameter() -> None:
    d = Driver()
    assert (
        d.say("EHLO x", "MAIL FROM:<jös@exämple.de>").splitlines()[-1] == "553 5.6.7 Non-ASCII address needs SMTPUTF8"
    )
    assert d.codes("MAIL FROM:<a@b>", "RCPT TO:<ü@b>") == [250, 553]
    assert d.codes("RSET", "MAIL FROM:<jös@exämple.de> SMTPUTF8", "RCPT TO:<ü@b>") == [250, 250, 250]
    assert d.conn.transaction is not None and d.conn.transaction.recipients == ("ü@b",)


def test_invalid_utf8_and_control_characters_in_commands() -> None:
    d = Driver()
    assert d.feed(b"EHLO \xff\xfe\r\nNOOP\x00\r\nNOOP a\rb\r\n") == (b"500 5.5.2 Invalid characters in command\r\n" * 3)


def test_bare_lf_ends_a_command_line() -> None:
    assert Driver().feed(b"NOOP\nNOOP\r\n") == b"250 2.0.0 OK\r\n" * 2


def test_recipient_limit() -> None:
    d = Driver(ServerConfig(max_recipients=2))
    assert d.codes("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<1@b>", "RCPT TO:<2@b>", "RCPT TO:<3@b>") == [
        250,
        250,
        250,
        250,
        452,
    ]
    assert d.say("RCPT TO:<4@b>") == "452 4.5.3 Too many recipients\r\n"


def test_default_accepts_100_recipients() -> None:
    d = Driver()
    d.say("EHLO x", "MAIL FROM:<a@b>")
    codes = d.codes(*[f"RCPT TO:<r{i}@b>" for i in range(101)])
    assert codes == [250] * 100 + [452]


# -- limits ------------------------------------------------------------------------


def test_command_line_limit_includes_extension_allowances() -> None:
    d = Driver()
    d.say("EHLO x")
    allowance = 26 + 16 + 10
    longest = "VRFY " + "a" * (512 + allowance - len("VRFY \r\n"))  # no path may be this long (RFC 5321 4.5.3.1.3)
    assert d.say(longest).startswith("252 2.5.0 ")
    assert d.say("NOOP", longest + "a") == "250 2.0.0 OK\r\n500 5.5.2 Line too long\r\n"


def test_megabytes_without_a_line_end_stay_bounded() -> None:
    d = Driver()
    reply = d.feed(b"A" * 100_000)
    assert reply == b"500 5.5.2 Line too long\r\n"
    for _ in range(50):
        assert d.feed(b"B" * 100_000) == b""
        assert len(d.conn._buffer) == 0
    assert d.feed(b"still the same line\r\nNOOP\r\n") == b"250 2.0.0 OK\r\n"


def test_peer_closing_during_an_overlong_line() -> None:
    d = Driver()
    d.feed(b"A" * 10_000)
    d.conn.receive_data(b"")
    assert d.pump() == [smtpwire.ConnectionClosed()]


def test_too_many_errors_closes_with_421() -> None:
    d = Driver(ServerConfig(hostname="mx.test", max_errors=3))
    assert d.say("FROB", "FROB", "FROB", "NOOP") == (
        "500 5.5.2 Command unrecognized\r\n" * 3 + "421 4.7.0 mx.test Too many errors, closing connection\r\n"
    )
    assert isinstance(d.events[-1], smtpwire.ConnectionClosed)


def test_4xx_rejections_are_not_errors() -> None:
    d = Driver(ServerConfig(max_recipients=1, max_errors=2))
    d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>")
    assert d.codes(*["RCPT TO:<e@f>"] * 5) == [452] * 5


def test_require_tls() -> None:
    d = Driver(ServerConfig(require_tls=True))
    assert (
        d.say("EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<a@b>", "DATA").splitlines()[-3:]
        == ["530 5.7.0 Must issue a STARTTLS command first"] * 3
    )
    assert Driver(ServerConfig(require_tls=True), tls_active=True).codes("EHLO x", "MAIL FROM:<a@b>") == [250, 250]


def test_timeout_and_shutdown_replies() -> None:
    d = Driver()
    d.conn.timed_out()
    assert d.conn.data_to_send() == b"421 4.4.2 mx.test Timeout, closing connection\r\n"
    d.conn.shutdown()  # already closed: nothing more is said
    assert d.conn.data_to_send() == b""
    e = Driver()
    e.say("EHLO x", "MAIL FROM:<a@b>")
    e.conn.shutdown()
    assert e.conn.data_to_send() == b"421 4.3.2 mx.test Service shutting down\r\n"
    assert isinstance(e.conn.next_event(), smtpwire.ConnectionClosed)


def test_timeout_while_a_decision_is_pending_cancels_it() -> None:
    d = Driver(greet=False)
    d.conn.next_event()
    d.conn.timed_out()
    assert d.conn.pending is None
    with pytest.raises(smtpwire.LocalProtocolError):
        d.conn.accept()


# -- misuse by the application ------------------------------------------------------


def test_send_without_pending_decision() -> None:
    d = Driver()
    with pytest.raises(smtpwire.LocalProtocolError, match="no event is waiting"):
        d.conn.send(Reply(250))
    with pytest.raises(smtpwire.LocalProtocolError, match="no event is waiting"):
        d.conn.accept()


@pytest.mark.parametrize(
    ("commands", "code"),
    [
        ([], 250),
        ([], 354),
        ([], 450),
        (["EHLO x"], 220),
        (["EHLO x"], 354),
        (["EHLO x", "MAIL FROM:<a@b>"], 251),
        (["EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA"], 250),
    ],
)
def test_reply_must_fit_the_decision(commands: list[str], code: int) -> None:
    d = Driver(greet=False)
    d.conn.next_event()
    if commands:
        d.conn.accept()
        d.conn.receive_data("".join(c + "\r\n" for c in commands).encode())
        for _ in commands[:-1]:
            d.conn.next_event()
            d.conn.accept()
        d.conn.next_event()
    with pytest.raises(smtpwire.LocalProtocolError, match="is not an answer"):
        d.conn.send(Reply(code))


def test_send_takes_a_reply() -> None:
    d = Driver(greet=False)
    d.conn.next_event()
    with pytest.raises(smtpwire.LocalProtocolError, match="takes a Reply"):
        d.conn.send("220 hi")  # type: ignore[arg-type]


def test_421_answer_closes() -> None:
    d = Driver(answer=lambda e: Reply(421, "shutting down", (4, 3, 2)) if isinstance(e, smtpwire.MailFrom) else None)
    assert d.say("EHLO x", "MAIL FROM:<a@b>", "NOOP").splitlines()[-1] == "421 4.3.2 shutting down"
    assert isinstance(d.events[-1], smtpwire.ConnectionClosed)


@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
def test_hello_name_is_at_most_255_octets(verb: str) -> None:
    d = Driver(ServerConfig(hostname="h" * 255))
    assert d.say(f"{verb} {'a' * 256}").startswith("501 5.5.4")
    assert d.codes(f"{verb} {'a' * 255}") == [250]


def test_verbs_and_prefixes_are_ascii_only() -> None:
    d = Driver()
    d.say("EHLO x")
    assert d.say("\ufb06ARTTLS", "MAIL \ufb00ROM:<a@b>", "MAIL FROM:<a@b>", "RCPT \u0131O:<c@d>") == (
        "500 5.5.2 Command unrecognized\r\n501 5.5.4 Syntax: MAIL FROM:<address> [parameters]\r\n"
        "250 2.1.0 OK\r\n501 5.5.4 Syntax: RCPT TO:<address> [parameters]\r\n"
    )
