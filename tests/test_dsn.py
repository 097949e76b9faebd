"""DSN (RFC 3461): xtext, RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT, over the core."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

import smtpwire
from smtpwire import MailDsn, OriginalRecipient, RcptDsn, xtext_decode, xtext_encode
from tests.driver import Driver

DSN_CONFIG = smtpwire.ServerConfig(hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.Dsn()))
MAIL = "MAIL FROM:<a@example.org>"
RCPT = "RCPT TO:<b@example.net>"


def dsn_driver() -> Driver:
    d = Driver(DSN_CONFIG)
    d.say("EHLO client.test")
    d.events.clear()
    return d


@given(st.binary(max_size=300))
def test_xtext_round_trips_any_octets(data: bytes) -> None:
    encoded = xtext_encode(data)
    assert xtext_decode(encoded) == data
    assert all(0x21 <= ord(c) <= 0x7E and c != "=" for c in encoded)  # printable, no space: one ESMTP value


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+="), max_size=50))
def test_xtext_of_plain_characters_is_the_text_itself(text: str) -> None:
    assert xtext_encode(text.encode()) == text
    assert xtext_decode(text) == text.encode()


@pytest.mark.parametrize(
    ("text", "octets"), [("", b""), ("QQ+2B314159", b"QQ+314159"), ("a+3Db", b"a=b"), ("+0D+0A", b"\r\n")]
)
def test_xtext_decodes_hexchars(text: str, octets: bytes) -> None:
    assert xtext_decode(text) == octets


@pytest.mark.parametrize("text", ["a+", "a+2", "a+2b", "a+G0", "a=b", "a b", "j\u00f6rg", "+ 20"])
def test_not_xtext_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="xtext"):
        xtext_decode(text)


def test_ehlo_offers_dsn() -> None:
    assert Driver(DSN_CONFIG).say("EHLO client.test").endswith("250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n")


def test_a_whole_dsn_transaction_reaches_the_application() -> None:
    d = dsn_driver()
    replies = d.say(
        f"{MAIL} RET=hdrs ENVID=QQ+2B314159",
        f"{RCPT} NOTIFY=failure,Success ORCPT=rfc822;b+2Bx@example.net",
        "RCPT TO:<c@example.net> NOTIFY=NEVER",
        "RCPT TO:<d@example.net>",
    )
    assert replies == "250 2.1.0 OK\r\n" + "250 2.1.5 OK\r\n" * 3
    mail, *rcpts = d.events
    assert isinstance(mail, smtpwire.MailFrom)
    assert MailDsn.from_params(mail.params) == MailDsn(ret="HDRS", envid="QQ+314159")
    assert [RcptDsn.from_params(event.params) for event in rcpts if isinstance(event, smtpwire.RcptTo)] == [
        RcptDsn(("SUCCESS", "FAILURE"), OriginalRecipient("rfc822", "b+x@example.net")),
        RcptDsn(("NEVER",)),
        RcptDsn(),
    ]


@pytest.mark.parametrize(
    ("params", "usage"),
    [
        ("RET=ALL", "RET=FULL|HDRS"),
        ("RET", "RET=FULL|HDRS"),
        ("ENVID", "ENVID=xtext"),
        ("ENVID=a+2", "ENVID=xtext"),
        ("ENVID=" + "x" * 101, "ENVID=xtext"),
        ("ENVID=id+0D+0AX-Injected:+20yes", "ENVID=xtext"),  # decodes to CR LF: no printable ASCII
        ("ENVID=+FF", "ENVID=xtext"),
    ],
)
def test_bad_mail_parameters_are_501(params: str, usage: str) -> None:
    d = dsn_driver()
    assert d.say(f"{MAIL} {params}").startswith(f"501 5.5.4 Syntax: {usage}")
    assert d.conn.transaction is None


@pytest.mark.parametrize(
    ("params", "usage"),
    [
        ("NOTIFY", "NOTIFY="),
        ("NOTIFY=NEVER,SUCCESS", "NOTIFY="),
        ("NOTIFY=SUCCESS,,FAILURE", "NOTIFY="),
        ("NOTIFY=SOMETIMES", "NOTIFY="),
        ("ORCPT", "ORCPT="),
        ("ORCPT=rfc822", "ORCPT="),
        ("ORCPT=;b@example.net", "ORCPT="),
        ("ORCPT=rfc822;", "ORCPT="),
        ("ORCPT=rfc(822);b@example.net", "ORCPT="),
        ("ORCPT=rfc822;b+40example.net+0A", "ORCPT="),
        ("ORCPT=rfc822;b+4", "ORCPT="),
        ("ORCPT=rfc822;" + "b" * 494, "ORCPT="),  # 501 characters
        ("ORCPT=rfc822;j\u00f6rg@example.net", "ORCPT="),  # raw UTF-8 is no xtext
        ("ORCPT=utf-8;j\u00f6rg@example.net", "ORCPT="),  # unitext needs SMTPUTF8
        ("ORCPT=utf-8;a+b@example.net", "ORCPT="),  # "+" is no QCHAR
        ("ORCPT=utf-8;a\\x{0A}b@example.net", "ORCPT="),  # a control, spelled out
        ("ORCPT=utf-8;a\\x{09}b@example.net", "ORCPT="),  # a tab
        ("ORCPT=utf-8;a\\x{202E}b@example.net", "ORCPT="),  # a bidi control
        ("ORCPT=utf-8;a\\x{2028}b@example.net", "ORCPT="),  # a line separator
        ("ORCPT=utf-8;a\\x{D800}@example.net", "ORCPT="),  # a surrogate
        ("ORCPT=utf-8;a\\x{110000}@example.net", "ORCPT="),  # past Unicode
        ("ORCPT=utf-8;a\\x{f6}@example.net", "ORCPT="),  # lower-case hex
    ],
)
def test_bad_rcpt_parameters_are_501(params: str, usage: str) -> None:
    d = dsn_driver()
    d.say(MAIL)
    assert d.say(f"{RCPT} {params}").startswith(f"501 5.5.4 Syntax: {usage}")
    assert d.conn.transaction is not None and d.conn.transaction.recipients == ()


def test_orcpt_of_500_characters_is_taken() -> None:
    d = dsn_driver()
    d.say(MAIL)
    assert d.say(f"{RCPT} ORCPT=rfc822;{'b' * 493}") == "250 2.1.5 OK\r\n"


def test_orcpt_in_utf8_counts_octets() -> None:
    """So a stored header line stays within RFC 5322's 998 octets, whatever the script."""
    d = dsn_driver()
    d.say(f"{MAIL} SMTPUTF8")
    assert d.say(f"{RCPT} ORCPT=utf-8;{chr(0xF6) * 246}@x").startswith("250 ")  # 6 + 492 + 2 octets
    assert d.say(f"{RCPT} ORCPT=utf-8;{chr(0xF6) * 247}@x").startswith("501 5.5.4 Syntax: ORCPT=")


@pytest.mark.parametrize(
    ("mail", "orcpt", "address"),
    [
        (MAIL, "utf-8;j\\x{F6}rg@b\\x{FC}cher.example", "j\u00f6rg@b\u00fccher.example"),
        (MAIL, "UTF-8;a\\x{2B}b\\x{3D}c\\x{5C}@example.net", "a+b=c\\@example.net"),
        (f"{MAIL} SMTPUTF8", "utf-8;j\u00f6rg@b\\x{FC}cher.example", "j\u00f6rg@b\u00fccher.example"),
    ],
)
def test_orcpt_utf8_address_type_rfc6533(mail: str, orcpt: str, address: str) -> None:
    d = dsn_driver()
    d.say(mail)
    assert d.say(f"{RCPT} ORCPT={orcpt}") == "250 2.1.5 OK\r\n"
    event = d.events[-1]
    assert isinstance(event, smtpwire.RcptTo)
    utf8 = "SMTPUTF8" in mail
    assert RcptDsn.from_params(event.params, smtputf8=utf8).orcpt == OriginalRecipient("utf-8", address)


def test_other_address_types_are_xtext_decoded() -> None:
    d = dsn_driver()
    d.say(MAIL)
    assert d.say(f"{RCPT} ORCPT=x400;c+3Dus+3Ba+3Dx") == "250 2.1.5 OK\r\n"
    event = d.events[-1]
    assert isinstance(event, smtpwire.RcptTo)
    assert RcptDsn.from_params(event.params).orcpt == OriginalRecipient("x400", "c=us;a=x")


@pytest.mark.parametrize(
    "command",
    [f"{MAIL} RET=FULL RET=HDRS", f"{MAIL} ENVID=a envid=b", f"{RCPT} NOTIFY=NEVER NOTIFY=DELAY"],
)
def test_a_parameter_given_twice_is_501(command: str) -> None:
    d = dsn_driver()
    if command.startswith("RCPT"):
        d.say(MAIL)
    assert d.say(command).startswith("501 5.5.4 Syntax:")


@pytest.mark.parametrize("command", [f"{MAIL} NOTIFY=NEVER", f"{MAIL} ORCPT=rfc822;a@example.org"])
def test_rcpt_parameters_on_mail_are_unsupported(command: str) -> None:
    assert dsn_driver().say(command) == "555 5.5.4 Unsupported parameter\r\n"


def test_mail_parameters_on_rcpt_are_unsupported() -> None:
    d = dsn_driver()
    d.say(MAIL)
    assert d.say(f"{RCPT} RET=FULL") == "555 5.5.4 Unsupported parameter\r\n"


def test_without_the_extension_dsn_parameters_are_unsupported() -> None:
    d = Driver()
    assert "DSN" not in d.say("EHLO client.test")
    assert d.say(f"{MAIL} RET=FULL") == "555 5.5.4 Unsupported parameter\r\n"


def test_a_long_dsn_command_line_fits_the_allowance() -> None:
    d = dsn_driver()
    d.say(MAIL)
    line = f"{RCPT} NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;{'b' * 493}"
    assert len(line) > 512
    assert d.say(line) == "250 2.1.5 OK\r\n"


def test_from_params_refuses_what_the_core_would_refuse() -> None:
    with pytest.raises(ValueError, match="RET"):
        MailDsn.from_params({"RET": "SOME"})
    with pytest.raises(ValueError, match="ORCPT"):
        RcptDsn.from_params({"ORCPT": None})
    assert MailDsn.from_params({}) == MailDsn(None, None)
