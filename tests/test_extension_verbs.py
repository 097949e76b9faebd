"""Verbs an extension declares: parsed, sequenced and answered by the core, hooked by the driver.

The last test runs the docs' example (docs/handlers.md, "Adding a verb") on a
real asyncio server over 127.0.0.1 and replays its smtplib session.
"""

from __future__ import annotations

import doctest
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import smtpwire
from smtpwire import LocalProtocolError, Reply, ServerConfig, State, Verb
from smtpwire_handler import AsyncHandler, Handler, ServerOptions, Session
from smtpwire_handler._checks import check_handler
from smtpwire_handler.kit import NEED_DATA
from tests.driver import Driver
from tests.servers import running
from tests.test_driver import LOCAL_ERROR, new_driver, run

DOCS = Path(__file__).parent.parent / "docs" / "handlers.md"
TIMEOUT = 10


class XStats(smtpwire.Extension):
    """A private verb answered by the core itself, from the connection."""

    keyword = "XSTATS"
    verbs = (Verb("XSTATS", Verb.ANY_TIME, argument="none"),)

    def answer(self, conn: smtpwire.ServerConnection, verb: str, argument: str) -> Reply:
        return Reply(250, f"helo={conn.helo_name}", (2, 0, 0))


class Etrn(smtpwire.Extension):
    """RFC 1985's shape: ETRN node, outside a transaction, left to the application."""

    keyword = "ETRN"
    verbs = (Verb("etrn", argument="required"),)


class InTransaction(smtpwire.Extension):
    keyword = "X-TXN"
    verbs = (Verb("X-PEEK", Verb.IN_TRANSACTION), Verb("X-POKE", Verb.AFTER_HELLO))
    line_allowance = 100


class Hidden(smtpwire.Extension):
    """In force but not advertised: no EHLO line, the verb still works."""

    keyword = "X-HIDDEN"
    verbs = (Verb("XHIDDEN"),)

    def offered(self, conn: smtpwire.ServerConnection) -> bool:
        return True

    def ehlo_line(self, conn: smtpwire.ServerConnection) -> None:
        return None


class OverTLS(smtpwire.Extension):
    """Offered only once TLS is active."""

    keyword = "X-SECURE"
    mail_parameters = frozenset({"X-SECURE"})
    verbs = (Verb("XSECURE"),)

    def offered(self, conn: smtpwire.ServerConnection) -> bool:
        return conn.tls_active

    def check_parameter(self, conn: smtpwire.ServerConnection, name: str, value: str | None) -> Reply | None:
        return None


def driver(*extensions: smtpwire.Extension, **kwargs: Any) -> Driver:
    config = ServerConfig(hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, *extensions), **kwargs)
    return Driver(config)


# -- the core ---------------------------------------------------------------------


def test_a_declared_verb_is_a_decision_that_accept_answers_with_the_extensions_answer() -> None:
    d = driver(XStats())
    assert d.say("XSTATS", "EHLO client.test", "xstats") == (
        "250 2.0.0 helo=None\r\n"
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        "250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 XSTATS\r\n"
        "250 2.0.0 helo=client.test\r\n"
    )
    assert smtpwire.ExtensionCommand("XSTATS", "") in d.events
    assert repr(d.events[0]) == "ExtensionCommand(verb='XSTATS', argument='')"


def test_the_application_answers_instead_and_the_session_stays_where_it_was() -> None:
    answers = {"ETRN": Reply(458, "Unable to queue messages for node", (4, 0, 0))}
    config = ServerConfig(hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, Etrn()))
    d = Driver(config, answer=lambda e: answers.get(getattr(e, "verb", "")))
    assert d.say("EHLO c", "ETRN @example.org", "ETRN", "MAIL FROM:<a@b>", "ETRN example.org") == (
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        "250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 ETRN\r\n"
        "458 4.0.0 Unable to queue messages for node\r\n"
        "501 5.5.4 Syntax: ETRN argument\r\n"
        "250 2.1.0 OK\r\n"
        "503 5.5.1 Bad sequence of commands\r\n"  # the default: outside a transaction
    )
    assert d.conn.state.name == "MAIL"
    answers["ETRN"] = Reply(250, "Queuing started", (2, 0, 0))
    assert d.say("RSET", "ETRN example.org") == "250 2.0.0 OK\r\n250 2.0.0 Queuing started\r\n"
    assert d.conn.state is State.READY
    assert smtpwire.CommandRejected("ETRN", Reply(501, "Syntax: ETRN argument", (5, 5, 4))) in d.events


def test_states_presets_and_line_allowance() -> None:
    d = driver(InTransaction())
    assert d.codes("X-PEEK", "X-POKE", "EHLO c", "X-PEEK", "X-POKE", "MAIL FROM:<a@b>", "X-PEEK", "X-POKE") == [
        503,
        503,
        250,
        503,
        250,
        250,
        250,
        250,
    ]
    assert d.conn.state is State.MAIL and d.conn.transaction is not None
    long_argument = "x" * (512 - len("X-PEEK \r\n") + 50)  # past 512, within the extension's allowance
    assert d.say(f"X-PEEK {long_argument}") == "250 2.0.0 OK\r\n"
    assert d.conn.pending is None


def test_a_verb_not_offered_is_unknown_and_help_lists_only_offered_verbs() -> None:
    d = Driver(ServerConfig(hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, OverTLS())))
    assert d.say("EHLO c", "XSECURE", "HELP", "MAIL FROM:<a@b> X-SECURE") == (
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        "250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
        "500 5.5.2 Command unrecognized\r\n"
        "214 2.0.0 Supported commands: BDAT DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY\r\n"
        "555 5.5.4 Unsupported parameter\r\n"
    )
    tls = Driver(
        ServerConfig(hostname="mx.test", extensions=(*smtpwire.STANDARD_EXTENSIONS, OverTLS())), tls_active=True
    )
    assert tls.say("EHLO c", "XSECURE", "HELP", "MAIL FROM:<a@b> X-SECURE") == (
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        "250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 X-SECURE\r\n"
        "250 2.0.0 OK\r\n"
        "214 2.0.0 Supported commands: BDAT DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY XSECURE\r\n"
        "250 2.1.0 OK\r\n"
    )


def test_registering_and_removing_an_extension_adds_and_removes_its_verbs() -> None:
    d = Driver()
    assert d.codes("EHLO c", "XSTATS", "XHIDDEN") == [250, 500, 500]
    d.conn.extensions.add(Hidden())
    d.conn.extensions.add(XStats())
    # the hidden one has no line
    assert d.say("EHLO c").endswith("250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 XSTATS\r\n")
    assert d.codes("XHIDDEN now", "XSTATS") == [250, 250]
    assert "XHIDDEN" in d.say("HELP")
    d.conn.extensions.remove("x-hidden")
    assert d.codes("XHIDDEN") == [500]


def test_extension_verbs_need_tls_under_require_tls() -> None:
    d = driver(XStats(), require_tls=True)
    assert d.say("EHLO c", "XSTATS").endswith("530 5.7.0 Must issue a STARTTLS command first\r\n")


def test_core_verbs_win_and_not_implemented_verbs_may_be_declared() -> None:
    class Expn(smtpwire.Extension):
        keyword = "X-EXPN"
        verbs = (Verb("EXPN", Verb.ANY_TIME),)

    assert Driver().say("EXPN staff") == "502 5.5.1 Command not implemented\r\n"
    assert driver(Expn()).say("EXPN staff") == "250 2.0.0 OK\r\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "MAIL"}, "MAIL is a verb of the core"),
        ({"name": "starttls"}, "STARTTLS is a verb of the core"),
        ({"name": "X STATS"}, "a verb is a letter"),
        ({"name": "9X"}, "a verb is a letter"),
        ({"name": "X" * 21}, "a verb is a letter"),
        ({"name": "XSTÄTS"}, "a verb is a letter"),
        ({"name": b"XSTATS"}, "a verb is a letter"),
        ({"name": "XSTATS", "states": frozenset()}, "states must be"),
        ({"name": "XSTATS", "states": {State.READY}}, "states must be"),
        ({"name": "XSTATS", "states": frozenset({State.DATA})}, "states must be"),
        ({"name": "XSTATS", "argument": "some"}, "argument must be one of"),
    ],
)
def test_bad_verb_declarations_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Verb(**kwargs)


def test_two_extensions_cannot_declare_the_same_verb_but_one_can_replace_itself() -> None:
    class Other(smtpwire.Extension):
        keyword = "X-OTHER"
        verbs = (Verb("XSTATS"),)

    registry = smtpwire.Extensions((XStats(),))
    with pytest.raises(ValueError, match="XSTATS is already a verb of <XStats XSTATS>"):
        registry.add(Other())
    with pytest.raises(ValueError, match="already a verb"):
        smtpwire.ServerConnection(ServerConfig(extensions=(XStats(), Other())))
    replacement = XStats()
    registry.add(replacement)
    assert registry.verb("XSTATS") == (replacement, XStats.verbs[0])
    assert "X-OTHER" not in registry


def test_wrong_answers_raise_and_leave_the_command_pending() -> None:
    class Broken(smtpwire.Extension):
        keyword = "X-BROKEN"
        verbs = (Verb("XBROKEN", Verb.ANY_TIME),)

        def answer(self, conn: smtpwire.ServerConnection, verb: str, argument: str) -> Reply:
            return "250 OK"  # type: ignore[return-value]

    conn = smtpwire.ServerConnection(ServerConfig(hostname="mx.test", extensions=(Broken(),)))
    conn.next_event()
    conn.accept()
    conn.data_to_send()
    conn.receive_data(b"XBROKEN\r\n")
    event = conn.next_event()
    assert event == smtpwire.ExtensionCommand("XBROKEN", "", "250 OK")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="send\\(\\) takes a Reply"):
        conn.accept()
    with pytest.raises(LocalProtocolError, match="354 is not an answer to ExtensionCommand"):
        conn.send(Reply(354, "go ahead"))
    assert conn.pending is event and conn.data_to_send() == b""
    conn.send(Reply(252, "maybe", (2, 0, 0)))
    assert conn.data_to_send() == b"252 maybe\r\n" and conn.pending is None


# -- the driver's hook ---------------------------------------------------------------

OPTIONS = ServerOptions(config=ServerConfig(extensions=(*smtpwire.STANDARD_EXTENSIONS, XStats(), Etrn())))


class Commands(Handler):
    """Answers ETRN itself; XSTATS is left to the extension."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def command(self, session: Session, verb: str, argument: str) -> Reply | None:
        self.calls.append((verb, argument))
        if verb == "ETRN":
            return Reply(354, "a 3xx is no answer") if argument == "bad" else Reply(250, f"queuing {argument}")
        return None


def test_the_driver_calls_the_command_hook_and_falls_back_to_the_extensions_answer() -> None:
    handler = Commands()
    driver = new_driver(handler, OPTIONS)
    sent, step = run(driver, b"EHLO c.example\r\nXSTATS\r\nETRN example.org\r\nETRN bad\r\nNOOP\r\n")
    assert step is NEED_DATA
    assert sent.endswith(
        b"250-XSTATS\r\n250 ETRN\r\n250 2.0.0 helo=c.example\r\n250 2.0.0 queuing example.org\r\n"
        + LOCAL_ERROR
        + b"250 2.0.0 OK\r\n"
    )
    assert handler.calls == [("XSTATS", ""), ("ETRN", "example.org"), ("ETRN", "bad")]


def test_without_the_hook_every_verb_gets_its_extensions_answer() -> None:
    sent, _ = run(new_driver(Handler(), OPTIONS), b"EHLO c.example\r\nXSTATS\r\nETRN example.org\r\n")
    assert sent.endswith(b"250 2.0.0 helo=c.example\r\n250 2.0.0 OK\r\n")


def test_check_handler_knows_the_command_hook() -> None:
    class Wrong(Handler):
        def command(self, session: Session) -> None:  # type: ignore[override]
            pass

    class Text(AsyncHandler):
        async def command(self, session: Session, verb: str, argument: str) -> str:  # type: ignore[override]
            return "250 OK"

    with pytest.raises(ValueError, match=r"Wrong.command must take 3 arguments"):
        check_handler(Wrong(), can_await=False)
    with pytest.raises(ValueError, match=r"Text.command is declared to return str"):
        check_handler(Text(), can_await=True)


# -- the docs' example on a real server -------------------------------------------------


def _docs_blocks() -> tuple[str, str]:
    """The two code blocks of the "Adding a verb" section: the server's code and the client's session."""
    section = DOCS.read_text().split("## Adding a verb\n", 1)[1].split("\n## ", 1)[0]
    code, session = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return code, session


@pytest.fixture
def docs_server() -> Iterator[tuple[str, int]]:
    code, _ = _docs_blocks()
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    with running("asyncio", namespace["Handler"](), namespace["options"]) as server:
        yield server.address


def test_the_docs_example_runs_as_shown_on_a_real_server(docs_server: tuple[str, int]) -> None:
    host, port = docs_server
    _, session = _docs_blocks()
    assert '"127.0.0.1", 8025' in session
    session = session.replace('"127.0.0.1", 8025', f'"{host}", {port}')
    test = doctest.DocTestParser().get_doctest(session, {"smtplib": smtplib}, "handlers.md", str(DOCS), 0)
    assert len(test.examples) == 8
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    try:
        results = runner.run(test, out=lambda text: pytest.fail(text))
    finally:
        client = test.globs.get("client")
        if client is not None and client.sock is not None:
            client.close()
    assert results.failed == 0 and results.attempted == 8
