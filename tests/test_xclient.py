"""Postfix's XCLIENT and XFORWARD in the core: attributes parsed and checked, the session started over, trust.

The drivers and real peers (swaks, nginx's mail proxy) are in
``tests/test_xclient_adapters.py`` and ``tests/test_xclient_interop.py``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import smtpwire
from smtpwire import (
    TEMPUNAVAIL,
    UNAVAILABLE,
    ForwardedClient,
    Reply,
    ServerConfig,
    State,
    Verb,
    Xclient,
    XclientAttributes,
    Xforward,
    parse_xclient,
    parse_xforward,
)
from tests.driver import Driver

EHLO_XCLIENT = "250-XCLIENT ADDR NAME PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n"
EHLO_XFORWARD = "250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\r\n"
GREETING = "220 mx.test ESMTP smtpwire\r\n"
#: Pieces of attributes, right and wrong, for the property test to combine.
PIECES = [
    "ADDR=192.0.2.1",
    "ADDR=IPV6:::1",
    "NAME=a.example",
    "PORT=25",
    "HELO=[1.2.3.4]",
    "LOGIN=a+2Bb",
    "X=1",
    "IDENT=+41",
    "SOURCE=LOCAL",
    "PROTO=SMTP",
    "NAME=[UNAVAILABLE]",
    "LOGIN=+0D+0A",
    "=",
    "ADDR==",
    "DESTPORT=+3525",
]
SAFE = re.compile("[\\x21-\\x7e]{1,255}")


def driver(*extensions: smtpwire.Extension, **kwargs: Any) -> Driver:
    config = ServerConfig(hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, *extensions), **kwargs)
    return Driver(config)


def bad(text: str) -> Reply:
    return Reply(501, text, (5, 5, 4))


# -- parsing --------------------------------------------------------------------


def test_every_xclient_attribute_decoded_and_made_canonical() -> None:
    argument = (
        "ADDR=IPV6:2001:DB8:0:0::9 name=client.example PORT=025 PROTO=esmtp HELO=[192.0.2.9]"
        " LOGIN=alice+40example.org DESTADDR=192.0.2.1 DESTPORT=587"
    )
    assert parse_xclient(argument) == XclientAttributes(
        name="client.example",
        addr="2001:db8::9",
        port="25",
        proto="ESMTP",
        helo="[192.0.2.9]",
        login="alice@example.org",
        destaddr="192.0.2.1",
        destport="587",
    )


def test_unavailable_values_and_a_repeated_attribute() -> None:
    assert parse_xclient("NAME=[TEMPUNAVAIL] ADDR=[UNAVAILABLE]  PORT=1 PORT=2") == XclientAttributes(
        name=TEMPUNAVAIL, addr=UNAVAILABLE, port="2"
    )
    assert parse_xclient("LOGIN=[UNAVAILABLE] HELO=[UNAVAILABLE]") == XclientAttributes(
        login=UNAVAILABLE, helo=UNAVAILABLE
    )


@pytest.mark.parametrize(
    ("argument", "reply"),
    [
        ("FOO=bar", bad("Bad XCLIENT attribute name")),
        ("IDENT=q1", bad("Bad XCLIENT attribute name")),  # XFORWARD's, not XCLIENT's
        ("ADDR", bad("Bad XCLIENT attribute syntax: ADDR")),
        ("ADDR=", bad("Bad XCLIENT attribute syntax: ADDR")),
        ("LOGIN=a+4", bad("Bad XCLIENT attribute syntax: LOGIN")),  # not xtext
        ("LOGIN=a+C3+A9", bad("Bad XCLIENT attribute syntax: LOGIN")),  # octets beyond ASCII
        ("LOGIN=a+20b", bad("Bad XCLIENT LOGIN value")),  # decodes to a space
        ("NAME=" + "a" * 256, bad("Bad XCLIENT attribute syntax: NAME")),  # too long
        ("ADDR=192.0.2.300", bad("Bad XCLIENT ADDR value")),
        ("ADDR=client.example", bad("Bad XCLIENT ADDR value")),
        ("DESTADDR=IPV6:192.0.2", bad("Bad XCLIENT DESTADDR value")),
        ("PORT=65536", bad("Bad XCLIENT PORT value")),
        ("DESTPORT=-1", bad("Bad XCLIENT DESTPORT value")),
        ("PROTO=LMTP", bad("Bad XCLIENT PROTO value")),
        ("NAME=[192.0.2.9]", bad("Bad XCLIENT NAME value")),  # a name, not an address
        ("NAME=bad_name.example", bad("Bad XCLIENT NAME value")),
        ("HELO=-x-", bad("Bad XCLIENT HELO value")),
        ("ADDR=[TEMPUNAVAIL]", bad("Bad XCLIENT ADDR value")),  # only NAME may be temporarily unknown
        ("NAME=ok.example ADDR=x", bad("Bad XCLIENT ADDR value")),
        ("  ", bad("Syntax: XCLIENT attribute=value ...")),
    ],
)
def test_a_wrong_xclient_attribute_is_refused_with_501_5_5_4(argument: str, reply: Reply) -> None:
    assert parse_xclient(argument) == reply


def test_every_xforward_attribute() -> None:
    argument = "NAME=relay.example ADDR=192.0.2.7 PORT=40000 PROTO=esmtpa HELO=relay.example IDENT=4Xyz SOURCE=remote"
    assert parse_xforward(argument) == ForwardedClient(
        name="relay.example",
        addr="192.0.2.7",
        port="40000",
        proto="ESMTPA",
        helo="relay.example",
        ident="4Xyz",
        source="REMOTE",
    )
    assert parse_xforward("SOURCE=elsewhere") == bad("Bad XFORWARD SOURCE value")
    assert parse_xforward("PROTO=E-SMTP") == bad("Bad XFORWARD PROTO value")
    assert parse_xforward("LOGIN=a") == bad("Bad XFORWARD attribute name")


def test_later_attributes_update_earlier_ones() -> None:
    first = XclientAttributes(addr="192.0.2.1", port="25", name="a.example")
    assert first.updated_by(XclientAttributes(addr="192.0.2.2", login="u")) == XclientAttributes(
        addr="192.0.2.2", port="25", name="a.example", login="u"
    )
    forwarded = ForwardedClient(addr="192.0.2.1").updated_by(ForwardedClient(ident="Q1"))
    assert forwarded == ForwardedClient(addr="192.0.2.1", ident="Q1")


# -- in a session ------------------------------------------------------------------


def test_ehlo_lists_the_attribute_names_as_postfix_does() -> None:
    reply = driver(Xclient(), Xforward()).say("EHLO proxy.test")
    assert reply.endswith("250-CHUNKING\r\n" + EHLO_XCLIENT + EHLO_XFORWARD), reply


def test_an_accepted_xclient_greets_again_and_the_session_starts_over() -> None:
    d = driver(smtpwire.Auth(require_tls=False), Xclient())
    auth = "AUTH PLAIN AHVzZXIAcGVuY2ls"
    assert d.codes("EHLO proxy.test", auth) == [250, 235]
    assert d.conn.authenticated is not None and d.conn.helo_name == "proxy.test"
    assert d.say("XCLIENT ADDR=192.0.2.9 NAME=client.example") == GREETING
    assert d.conn.state is State.GREETED
    assert d.conn.helo_name is None and not d.conn.esmtp and d.conn.authenticated is None
    assert smtpwire.ExtensionCommand("XCLIENT", "ADDR=192.0.2.9 NAME=client.example") in d.events
    assert d.codes("MAIL FROM:<a@example.org>", "XCLIENT LOGIN=u", "HELO client.example") == [503, 220, 250]
    assert d.conn.state is State.READY


def test_xclient_before_any_hello_and_never_in_a_transaction() -> None:
    d = driver(Xclient())
    assert d.say("XCLIENT ADDR=192.0.2.9") == GREETING
    assert d.codes("EHLO c.example", "MAIL FROM:<a@example.org>", "XCLIENT ADDR=192.0.2.9") == [250, 250, 503]
    assert d.conn.state is State.MAIL


def test_a_wrong_xclient_changes_nothing() -> None:
    d = driver(Xclient())
    d.say("EHLO proxy.test")
    assert d.say("XCLIENT ADDR=nowhere", "XCLIENT", "XCLIENT FOO=1") == (
        "501 5.5.4 Bad XCLIENT ADDR value\r\n"
        "501 5.5.4 Syntax: XCLIENT argument\r\n"
        "501 5.5.4 Bad XCLIENT attribute name\r\n"
    )
    assert d.conn.state is State.READY and d.conn.helo_name == "proxy.test"


def test_in_lmtp_the_new_greeting_says_lmtp() -> None:
    d = driver(Xclient(), lmtp=True)
    assert d.say("XCLIENT ADDR=192.0.2.9") == "220 mx.test LMTP smtpwire\r\n"


def test_an_untrusted_client_is_refused_with_550_5_7_0_and_nothing_is_advertised() -> None:
    d = driver(Xclient(allowed=False), Xforward(allowed=False))
    assert d.say("EHLO c.example").endswith("250 CHUNKING\r\n")
    refusal = "550 5.7.0 Error: insufficient authorization\r\n"
    assert d.say("XCLIENT ADDR=192.0.2.9", "XFORWARD ADDR=192.0.2.9") == refusal * 2
    assert d.conn.state is State.READY and d.conn.helo_name == "c.example"


def test_xforward_answers_250_and_the_session_stays() -> None:
    d = driver(Xforward())
    d.say("EHLO relay.test")
    assert d.say("XFORWARD ADDR=192.0.2.7 NAME=[UNAVAILABLE]", "XFORWARD PORT=x") == (
        "250 2.0.0 OK\r\n501 5.5.4 Bad XFORWARD PORT value\r\n"
    )
    assert d.conn.state is State.READY and d.conn.helo_name == "relay.test"
    assert d.codes("MAIL FROM:<a@example.org>", "XFORWARD ADDR=192.0.2.7") == [250, 503]


def test_the_application_may_refuse_an_xclient_and_nothing_changes() -> None:
    config = ServerConfig(hostname="mx.test", extensions=(Xclient(),))
    d = Driver(
        config, answer=lambda e: Reply(454, "Not now", (4, 7, 0)) if isinstance(e, smtpwire.ExtensionCommand) else None
    )
    d.say("EHLO proxy.test")
    assert d.say("XCLIENT ADDR=192.0.2.9") == "454 Not now\r\n"
    assert d.conn.state is State.READY and d.conn.helo_name == "proxy.test"


def test_a_verb_that_starts_over_removed_before_its_answer_starts_nothing_over() -> None:
    d = driver(Xclient())
    d.say("EHLO proxy.test")
    d.conn.receive_data(b"XCLIENT ADDR=192.0.2.9\r\n")
    event = d.conn.next_event()
    assert isinstance(event, smtpwire.ExtensionCommand)
    d.conn.extensions.remove("XCLIENT")
    d.conn.accept()
    assert d.conn.data_to_send() == GREETING.encode()
    assert d.conn.state is State.READY and d.conn.helo_name == "proxy.test"


def test_only_a_verb_outside_transactions_may_start_the_session_over() -> None:
    assert Verb("XRESET", Verb.BEFORE_TRANSACTION, starts_over=True).starts_over
    with pytest.raises(ValueError, match="cannot be used in a transaction"):
        Verb("XRESET", Verb.ANY_TIME, starts_over=True)


@given(st.text(max_size=600) | st.lists(st.sampled_from(PIECES), max_size=12).map(" ".join))
def test_any_argument_is_attributes_of_safe_text_or_a_501(argument: str) -> None:
    """Nothing a proxy sends raises; what is taken is printable ASCII a header or log line can carry."""
    for parsed in (parse_xclient(argument), parse_xforward(argument)):
        if isinstance(parsed, Reply):
            assert (parsed.code, parsed.enhanced) == (501, (5, 5, 4))
            continue
        values = [value for value in dataclasses.astuple(parsed) if value is not None]
        assert values and all(SAFE.fullmatch(value) for value in values), parsed
