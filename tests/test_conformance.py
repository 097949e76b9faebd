"""Conformance found by other servers' test suites: invisible characters in UTF-8 addresses, HTTP request lines."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import smtpwire
from smtpwire import ServerConfig, State, Verb
from smtpwire._grammar import FORBIDDEN_IN_COMMAND
from tests.driver import Driver

BAD_RCPT_DOMAIN = "501 5.1.3 Domain holds characters no U-label may hold (RFC 6531 3.3, RFC 5892)\r\n"
BAD_MAIL_DOMAIN = "501 5.1.7 Domain holds characters no U-label may hold (RFC 6531 3.3, RFC 5892)\r\n"
BAD_RCPT_LOCAL_PART = "501 5.1.3 Local part holds invisible, private-use or unassigned characters\r\n"
BAD_MAIL_LOCAL_PART = "501 5.1.7 Local part holds invisible, private-use or unassigned characters\r\n"
HTTP_REFUSED = b"421 4.7.0 mx.test HTTP request refused, closing connection\r\n"

#: ZERO WIDTH SPACE, WORD JOINER, ZERO WIDTH NO-BREAK SPACE (BOM), SOFT HYPHEN, ZERO WIDTH JOINER.
INVISIBLE = ["\u200b", "\u2060", "\ufeff", "\u00ad", "\u200d"]


def in_transaction() -> Driver:
    d = Driver()
    d.say("EHLO client.test", "MAIL FROM:<a@example.org> SMTPUTF8")
    d.events.clear()
    return d


def ehloed() -> Driver:
    d = Driver()
    d.say("EHLO client.test")
    return d


def sendable(character: str) -> bool:
    """Characters a client can send in a command at all (the rest get 500 5.5.2 before any grammar)."""
    return not FORBIDDEN_IN_COMMAND.search(character) and unicodedata.category(character) != "Cs"


# -- invisible and IDNA2008-disallowed characters in addresses --------------------------------------


@pytest.mark.parametrize("character", INVISIBLE)
def test_rcpt_domain_with_an_invisible_character_is_refused(character: str) -> None:
    d = in_transaction()
    assert d.say(f"RCPT TO:<test@exam{character}ple.com>") == BAD_RCPT_DOMAIN
    assert [type(e) for e in d.events] == [smtpwire.CommandRejected]
    assert d.conn.transaction is not None and d.conn.transaction.recipients == ()


@pytest.mark.parametrize("character", INVISIBLE)
def test_mail_domain_with_an_invisible_character_is_refused(character: str) -> None:
    d = ehloed()
    assert d.say(f"MAIL FROM:<test@exam{character}ple.com> SMTPUTF8") == BAD_MAIL_DOMAIN
    assert d.conn.state is State.READY


@pytest.mark.parametrize("character", INVISIBLE)
def test_local_part_with_an_invisible_character_is_refused(character: str) -> None:
    assert in_transaction().say(f"RCPT TO:<te{character}st@example.com>") == BAD_RCPT_LOCAL_PART
    assert ehloed().say(f"MAIL FROM:<te{character}st@example.com> SMTPUTF8") == BAD_MAIL_LOCAL_PART


@pytest.mark.parametrize("joiner", ["\u200c", "\u200d"])
def test_a_joiner_after_a_virama_is_accepted(joiner: str) -> None:
    """RFC 5892 A.1, A.2 (CONTEXTJ): Devanagari KA, VIRAMA, joiner, SSA is a real word."""
    word = f"\u0915\u094d{joiner}\u0937"
    assert in_transaction().say(f"RCPT TO:<{word}@{word}.example>") == "250 2.1.5 OK\r\n"


@pytest.mark.parametrize(
    ("address", "reply"),
    [
        ("\u200dab@example.com", BAD_RCPT_LOCAL_PART),
        ("a\u200db@example.com", BAD_RCPT_LOCAL_PART),
        ("ab@\u0915\u200d\u0937.example", BAD_RCPT_DOMAIN),
        ("ab@\u200c\u0937.example", BAD_RCPT_DOMAIN),
    ],
)
def test_a_joiner_after_anything_but_a_virama_is_refused(address: str, reply: str) -> None:
    assert in_transaction().say(f"RCPT TO:<{address}>") == reply


def test_quoted_local_part_with_an_invisible_character_is_refused() -> None:
    assert in_transaction().say('RCPT TO:<"te\u200bst"@example.com>') == BAD_RCPT_LOCAL_PART


def test_source_route_with_an_invisible_character_is_refused() -> None:
    assert in_transaction().say("RCPT TO:<@rel\u200bay.example:test@example.com>") == BAD_RCPT_DOMAIN


def test_a_domain_not_in_nfc_is_refused() -> None:
    decomposed = "exa\u0301mple.com"  # "a" + COMBINING ACUTE ACCENT; NFC makes it U+00E1
    assert in_transaction().say(f"RCPT TO:<test@{decomposed}>") == BAD_RCPT_DOMAIN
    assert in_transaction().say(f"RCPT TO:<test@{unicodedata.normalize('NFC', decomposed)}>") == "250 2.1.5 OK\r\n"


def test_a_decomposed_local_part_is_the_receivers_business() -> None:
    assert in_transaction().say("RCPT TO:<exa\u0301mple@example.com>") == "250 2.1.5 OK\r\n"


@pytest.mark.parametrize("character", ["\u00a0", "\u3000"])
def test_a_space_character_is_refused_in_a_domain_only(character: str) -> None:
    assert in_transaction().say(f"RCPT TO:<test@exam{character}ple.com>") == BAD_RCPT_DOMAIN
    assert in_transaction().say(f"RCPT TO:<te{character}st@example.com>") == "250 2.1.5 OK\r\n"


def test_the_refused_character_never_reaches_a_message() -> None:
    d = in_transaction()
    d.say("RCPT TO:<test@exam\u200bple.com>", "RCPT TO:<test@example.com>")
    assert d.conn.transaction is not None and d.conn.transaction.recipients == ("test@example.com",)
    d2 = ehloed()
    d2.say("MAIL FROM:<test@exam\u200bple.com> SMTPUTF8")
    assert d2.conn.transaction is None


@settings(max_examples=200, deadline=None)
@given(
    st.characters(categories=["Cf", "Co", "Cn", "Zs"], min_codepoint=0x80).filter(sendable),
    st.sampled_from(["RCPT", "MAIL"]),
)
def test_domain_characters_of_disallowed_categories_are_refused(character: str, verb: str) -> None:
    if verb == "RCPT":
        assert in_transaction().say(f"RCPT TO:<u@a{character}b.example>") == BAD_RCPT_DOMAIN
    else:
        assert ehloed().say(f"MAIL FROM:<u@a{character}b.example> SMTPUTF8") == BAD_MAIL_DOMAIN


@settings(max_examples=200, deadline=None)
@given(st.characters(categories=["Cf", "Co", "Cn"], min_codepoint=0x80).filter(sendable))
def test_local_part_characters_of_disallowed_categories_are_refused(character: str) -> None:
    assert in_transaction().say(f"RCPT TO:<u{character}v@example.com>") == BAD_RCPT_LOCAL_PART


@settings(max_examples=200, deadline=None)
@given(st.characters(categories=["Lu", "Ll", "Lo", "Nd"], min_codepoint=0x80))
def test_letters_and_digits_are_accepted_in_both_parts(character: str) -> None:
    label = unicodedata.normalize("NFC", character)
    assert in_transaction().say(f"RCPT TO:<u{character}@a{label}.example>") == "250 2.1.5 OK\r\n"


@pytest.mark.parametrize(
    "address", ["用户@例子.广告", "δοκιμή@παράδειγμα.δοκιμή", "ñandú@año.example", "अजय@डाटा.भारत", "ü@müller.de"]
)
def test_ordinary_u_labels_are_accepted(address: str) -> None:
    d = ehloed()
    assert d.say(f"MAIL FROM:<{address}> SMTPUTF8", f"RCPT TO:<{address}>") == "250 2.1.0 OK\r\n250 2.1.5 OK\r\n"
    assert d.conn.transaction is not None and d.conn.transaction.recipients == (address,)


def test_ascii_addresses_are_untouched() -> None:
    assert in_transaction().say("RCPT TO:<a.b+c@sub-domain.example>") == "250 2.1.5 OK\r\n"


# -- HTTP request lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"GET / HTTP/1.1",
        b"POST /submit HTTP/1.1",
        b"HEAD / HTTP/1.0",
        b"PUT /x HTTP/1.1",
        b"DELETE /x HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"CONNECT mx.example:25 HTTP/1.1",
        b"PATCH /x HTTP/1.1",
        b"TRACE / HTTP/1.1",
    ],
)
def test_an_http_request_line_gets_421_and_the_connection_closes(line: bytes) -> None:
    d = Driver()
    assert d.feed(line + b"\r\nHost: mx.example\r\nUser-Agent: x\r\n\r\n") == HTTP_REFUSED
    assert d.conn.state is State.CLOSED
    method = line.split()[0].decode()
    assert [(type(e), getattr(e, "command", None)) for e in d.events] == [
        (smtpwire.CommandRejected, method),
        (smtpwire.ConnectionClosed, None),
    ]


def test_an_http_request_mid_session_closes_too() -> None:
    d = ehloed()
    assert d.feed(b"MAIL FROM:<a@example.org>\r\nPOST / HTTP/1.1\r\nRCPT TO:<b@example.net>\r\n") == (
        b"250 2.1.0 OK\r\n" + HTTP_REFUSED
    )
    assert d.conn.state is State.CLOSED


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"get / HTTP/1.1", b"500 5.5.2 Command unrecognized\r\n"),  # HTTP methods are case-sensitive
        (b"GET", b"500 5.5.2 Command unrecognized\r\n"),
        (b"GET ", b"500 5.5.2 Command unrecognized\r\n"),
        (b"GETS / HTTP/1.1", b"500 5.5.2 Command unrecognized\r\n"),
        (b"HELO client.test", b"250 mx.test\r\n"),
        (b"HELP", b"214 2.0.0 Supported commands: DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY\r\n"),
    ],
)
def test_what_is_not_an_http_request_line_is_answered_as_smtp(line: bytes, reply: bytes) -> None:
    d = Driver(ServerConfig(hostname="mx.test", extensions=(smtpwire.EnhancedStatusCodes(),)))
    assert d.feed(line + b"\r\n") == reply
    assert d.conn.state is not State.CLOSED


class Patch(smtpwire.Extension):
    """An extension whose verb happens to be an HTTP method: its own verbs are never HTTP."""

    keyword = "XPATCH"
    verbs = (Verb("PATCH", Verb.ANY_TIME),)


def test_an_extension_verb_named_like_an_http_method_is_served() -> None:
    d = Driver(ServerConfig(hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, Patch())))
    assert d.feed(b"EHLO client.test\r\nPATCH /x\r\n").endswith(b"250 2.0.0 OK\r\n")
    assert d.conn.state is not State.CLOSED
