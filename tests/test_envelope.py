"""One record of each transaction: the envelope is a view of the core's, handlers keep typed values per
transaction, composites route each hook to the part that defines it, and one table says what hooks left
alone do."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import smtpwire
from smtpwire import Reply
from smtpwire_handler import (
    AsyncComposite,
    AsyncHandler,
    Composite,
    Envelope,
    Handler,
    MaildirStore,
    MboxStore,
    Reject,
    ServerOptions,
    Session,
    TransactionSlot,
)
from smtpwire_handler.kit import DEFAULT_OUTCOMES
from tests.driver import Driver
from tests.test_driver import greeted, replies, run

MAIL = b"EHLO c.example\r\nMAIL FROM:<alice@example.org> SMTPUTF8\r\n"
TWO_RCPTS = b"RCPT TO:<bob@example.net> NOTIFY=NEVER\r\nRCPT TO:<carol@example.net>\r\n"
DATA = b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"
#: DSN registered, so that RCPT may say NOTIFY.
WITH_DSN = smtpwire.ServerConfig(extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.Dsn()))


# -- the envelope is the core's transaction --------------------------------------------


def test_the_core_records_each_recipient_with_its_parameters() -> None:
    driver = Driver(WITH_DSN)
    driver.say("EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net> NOTIFY=NEVER")
    driver.say("RCPT TO:<c@example.net>")
    transaction = driver.conn.transaction
    assert transaction is not None
    assert transaction.recipients == ("b@example.net", "c@example.net")
    assert transaction.recipient_params == ({"NOTIFY": "NEVER"}, {})
    assert transaction.number == 1
    driver.say("RSET", "MAIL FROM:<a@example.org>")
    assert driver.conn.transaction is not None and driver.conn.transaction.number == 2


def test_a_sessions_envelope_follows_its_transaction_and_a_new_one_starts_with_the_next_mail() -> None:
    driver = Driver(WITH_DSN)
    session = Session(driver.conn)
    assert session.envelope is None
    driver.say("EHLO c.example", "MAIL FROM:<a@example.org>")
    first = session.envelope
    assert first is not None and (first.mail_from, first.rcpt_tos) == ("a@example.org", [])
    first.content += b"kept"
    driver.say("RCPT TO:<b@example.net> NOTIFY=NEVER")
    assert session.envelope is first  # one envelope per transaction, whatever RCPT added
    assert (first.rcpt_tos, first.rcpt_params, first.content) == (["b@example.net"], [{"NOTIFY": "NEVER"}], b"kept")
    driver.say("RSET")
    assert session.envelope is None
    assert first.rcpt_tos == ["b@example.net"]  # as it stood when it ended
    driver.say("MAIL FROM:<x@example.org>")
    second = session.envelope
    assert second is not None and second is not first
    assert (second.mail_from, second.rcpt_tos, second.content, second.size) == ("x@example.org", [], b"", 0)
    assert first.mail_from == "a@example.org"


class Keeper(Handler):
    """Keeps every envelope the message hook is given."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    def message(self, session: Session, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


def test_the_envelope_given_to_message_stays_whole_after_its_transaction() -> None:
    handler = Keeper()
    driver = greeted(handler, ServerOptions(config=WITH_DSN))
    sent, _ = run(driver, MAIL + TWO_RCPTS + DATA + b"MAIL FROM:<z@example.org>\r\nRCPT TO:<y@example.net>\r\n")
    assert replies(sent)[-2:] == [b"250 2.1.0 OK", b"250 2.1.5 OK"]
    [envelope] = handler.envelopes
    assert envelope.mail_from == "alice@example.org" and envelope.mail_params == {"SMTPUTF8": None}
    assert envelope.rcpt_tos == ["bob@example.net", "carol@example.net"]
    assert envelope.rcpt_params == [{"NOTIFY": "NEVER"}, {}]
    assert [dsn.notify for dsn in envelope.rcpt_dsn] == [("NEVER",), None]
    assert envelope.content == b"Subject: hi\r\n\r\nbody\r\n" and envelope.size == len(envelope.content)
    assert driver.session.envelope is not None and driver.session.envelope.rcpt_tos == ["y@example.net"]


def test_an_envelope_of_ones_own_for_a_handlers_unit_test() -> None:
    envelope = Envelope("a@example.org", {"REQUIRETLS": None}, ["b@example.net"])
    assert (envelope.rcpt_tos, envelope.rcpt_params, envelope.require_tls) == (["b@example.net"], [{}], True)
    envelope.rcpt_tos.append("c@example.net")  # a copy: the envelope is the transaction's record
    assert envelope.rcpt_tos == ["b@example.net"]
    with pytest.raises(ValueError, match="1 recipients but 2 sets of recipient parameters"):
        Envelope("a@example.org", {}, ["b@example.net"], [{}, {}])


# -- typed values per transaction ----------------------------------------------------------


class Counting(Handler):
    """Counts each transaction's chunks in a slot; what message and message_aborted found is recorded."""

    def __init__(self) -> None:
        self.chunks = TransactionSlot[int]("chunks")
        self.seen: list[tuple[str, int | None]] = []

    def data_start(self, session: Session) -> None:
        self.seen.append(("data_start", self.chunks.get(session, None)))  # never the last transaction's
        self.chunks.set(session, 0)

    def data_chunk(self, session: Session, data: bytes) -> None:
        self.chunks.set(session, self.chunks.get(session) + 1)
        if b"refuse" in data:
            raise Reject(Reply(554, "No", (5, 6, 0)))

    def message(self, session: Session, envelope: Envelope) -> None:
        self.seen.append(("message", self.chunks.get(session)))

    def message_aborted(self, session: Session, reply: Reply | None) -> None:
        self.seen.append(("message_aborted", self.chunks.pop(session)))  # the transaction is over by now


def test_a_slot_holds_one_value_per_transaction_until_its_last_hook() -> None:
    handler = Counting()
    driver = greeted(handler)
    one = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nBDAT 3\r\nabcBDAT 2 LAST\r\nde"
    refused = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nBDAT 6 LAST\r\nrefuse"
    sent, _ = run(driver, b"EHLO c.example\r\n" + one + refused + DATA.replace(b"DATA", b"MAIL FROM:<a@b.example>"))
    assert b"554 5.6.0 No" in sent
    assert handler.seen == [
        ("data_start", None),
        ("message", 2),
        ("data_start", None),
        ("message_aborted", 1),
    ]


def test_slots_are_each_their_own_key_and_say_what_is_missing() -> None:
    driver = Driver()
    session = Session(driver.conn)
    first, second = TransactionSlot[str]("first"), TransactionSlot[str]("second")
    with pytest.raises(RuntimeError, match="first is kept per mail transaction, and none has begun"):
        first.set(session, "x")
    assert first.get(session, "none") == "none" and first.pop(session) is None
    driver.say("EHLO c.example", "MAIL FROM:<a@example.org>")
    first.set(session, "one")
    assert (first.get(session), second.get(session, None)) == ("one", None)
    with pytest.raises(LookupError, match="second was not set in this transaction"):
        second.get(session)
    assert first.pop(session) == "one" and first.pop(session) is None


# -- composites ---------------------------------------------------------------------------------


class Policy(Handler):
    """Refuses one recipient and notes what it observes."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def rcpt_to(self, session: Session, address: str, params: Any) -> Reply | None:
        return Reply(550, "No such user", (5, 1, 1)) if address.startswith("nobody@") else None

    def rset(self, session: Session) -> None:
        self.calls.append("policy rset")
        raise RuntimeError("the policy's rset failed")

    def disconnect(self, session: Session) -> None:
        self.calls.append("policy disconnect")


class Audit(Handler):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def rset(self, session: Session) -> None:
        self.calls.append("audit rset")

    def disconnect(self, session: Session) -> None:
        self.calls.append("audit disconnect")


def test_a_composite_gives_each_hook_to_its_part_and_every_observer_its_call(tmp_path: Any) -> None:
    calls: list[str] = []
    store = MaildirStore(tmp_path / "Maildir", hostname="mx.test")
    handler = Composite(Policy(calls), store, Audit(calls))
    assert handler.data_start == store.data_start  # one part's hook: called as it is, nothing in between
    driver = greeted(handler)
    rcpts = b"RCPT TO:<nobody@example.net>\r\nRCPT TO:<bob@example.net>\r\n"
    sent, _ = run(driver, MAIL + rcpts + DATA + b"RSET\r\nQUIT\r\n")
    assert replies(sent)[2:] == [
        b"550 5.1.1 No such user",
        b"250 2.1.5 OK",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"250 2.0.0 OK",
        b"250 2.0.0 OK",
        b"221 2.0.0 localhost Service closing transmission channel",
    ]
    [stored] = (tmp_path / "Maildir" / "new").iterdir()
    assert stored.read_bytes().endswith(b"Subject: hi\r\n\r\nbody\r\n")
    # the policy's rset raised: the audit's still ran, and the error was the driver's to log
    assert calls == ["policy rset", "audit rset", "policy disconnect", "audit disconnect"]


def test_two_parts_that_answer_the_same_hook_are_refused_when_built(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="data_start is defined by MaildirStore and MboxStore: only one part"):
        Composite(MaildirStore(tmp_path / "Maildir"), MboxStore(tmp_path / "mbox"))

    class Mine(Composite):
        def rcpt_to(self, session: Session, address: str, params: Any) -> None:
            pass

    with pytest.raises(ValueError, match="rcpt_to is defined by Mine and Policy"):
        Mine(Policy([]))
    with pytest.raises(ValueError, match="a part must be a Handler or AsyncHandler, not str"):
        Composite("MaildirStore")  # type: ignore[arg-type]


def test_a_subclass_of_composite_has_its_own_hooks_first() -> None:
    calls: list[str] = []

    class Mine(Composite):
        def rset(self, session: Session) -> None:
            calls.append("mine rset")

        def vrfy(self, session: Session, argument: str) -> Reply:
            return Reply(550, "No", (5, 1, 1))

    driver = greeted(Mine(Audit(calls)))
    sent, _ = run(driver, b"EHLO c.example\r\nRSET\r\nVRFY bob\r\nQUIT\r\n")
    assert replies(sent)[-2:] == [b"550 5.1.1 No", b"221 2.0.0 localhost Service closing transmission channel"]
    assert calls == ["mine rset", "audit rset", "audit disconnect"]


class AsyncObserver(AsyncHandler):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    async def data_chunk(self, session: Session, data: bytes) -> None:
        self.calls.append(f"{self.name} {data!r}")
        if data == b"bad":
            raise Reject(Reply(552, "Too much", (5, 3, 4)))

    def message(self, session: Session, envelope: Envelope) -> None:
        self.calls.append(f"{self.name} message")


class PlainObserver(Handler):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def data_chunk(self, session: Session, data: bytes) -> None:
        self.calls.append(f"plain {data!r}")


def test_an_async_composite_awaits_each_part_before_the_next() -> None:
    calls: list[str] = []
    handler = AsyncComposite(AsyncObserver("first", calls), PlainObserver(calls))
    assert inspect.iscoroutinefunction(AsyncObserver.data_chunk)
    driver = greeted(handler)
    bdat = b"BDAT 2\r\nokBDAT 3\r\nbadBDAT 4 LAST\r\nmore"
    sent, _ = run(driver, b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n" + bdat)
    assert replies(sent)[-1] == b"552 5.3.4 Too much"  # the first part refused the data; the plain one still ran
    assert calls == ["first b'ok'", "plain b'ok'", "first b'bad'", "plain b'bad'"]


# -- one table of default outcomes ---------------------------------------------------------------


@pytest.mark.parametrize("base", [Handler, AsyncHandler])
def test_every_default_hook_returns_what_the_table_says(base: type[Handler] | type[AsyncHandler]) -> None:
    """The driver never calls a hook left as it is; calling it anyway gives the table's outcome."""
    driver = Driver()
    driver.say("EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
    session = Session(driver.conn)
    hooks = [name for name in vars(Handler) if not name.startswith("_")]
    assert sorted(DEFAULT_OUTCOMES) == sorted(hooks)
    handler = base()
    for hook in hooks:
        arguments = len(inspect.signature(getattr(Handler, hook)).parameters) - 2
        args = [b"data" if hook == "data_chunk" else None] * arguments
        assert getattr(handler, hook)(session, *args) is DEFAULT_OUTCOMES[hook], hook
    assert session.envelope is not None and session.envelope.content == b"data"  # data_chunk kept it
    assert DEFAULT_OUTCOMES["authenticate"] is False
