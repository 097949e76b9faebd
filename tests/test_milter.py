"""The milter client: the codec against hand-built bytes, and the handlers over real sockets with a scripted milter."""

from __future__ import annotations

import contextlib
import pathlib
import smtplib
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import ModuleType

import pytest

from smtpwire import Reply
from smtpwire_filters import _milter_codec as codec
from smtpwire_filters._milter import CONTINUE, EnvelopeChanges, MilterMessage, MilterSession, Outcome, Step
from smtpwire_handler import AsyncMaildirStore, Envelope, Maildir, MaildirStore, ServerOptions, Session
from smtpwire_handler._milter import AsyncMilterHandler, MilterHandler, MilterSpec, parse_milter_address
from tests.fuzzing import load_target
from tests.servers import running
from tests.test_maildir import stored

TIMEOUT = 10.0
KINDS = ("blocking", "asyncio")


def reply(command: bytes, payload: bytes = b"") -> bytes:
    return codec.packet(command, payload)


def negotiated(protocol: int = 0, actions: int = codec.ALL_ACTIONS, lists: bytes = b"") -> MilterSession:
    session = MilterSession(max_changes=5, max_octets=100, max_progress=3)
    assert session.negotiate().data == b"\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\x0f\xf7\xff"
    step = session.receive(reply(b"O", struct.pack("!III", 6, actions, protocol) + lists))
    assert step.outcome == CONTINUE
    return session


def frame(body: bytes) -> bytes:
    """A packet as libmilter reads it: the length of what follows (4 octets, big-endian), then it."""
    return struct.pack("!I", len(body)) + body


# -- the codec: commands ------------------------------------------------------------------------


def test_each_command_is_encoded_as_libmilter_reads_it() -> None:
    assert codec.macros(b"C", {"j": "mx", "{client_addr}": "192.0.2.1"}) == frame(
        b"DCj\0mx\0{client_addr}\x00192.0.2.1\0"
    )
    assert codec.connect("host.example", "4", 2525, "192.0.2.1") == frame(b"Chost.example\x004\x09\xdd192.0.2.1\0")
    assert codec.connect("unknown", "U", 0, "") == frame(b"Cunknown\0U")
    assert codec.helo("client.example") == frame(b"Hclient.example\0")
    assert codec.mail("a@b.example", ["SIZE=10", "BODY=8BITMIME"]) == frame(b"M<a@b.example>\0SIZE=10\0BODY=8BITMIME\0")
    assert codec.rcpt("c@d.example") == frame(b"R<c@d.example>\0")
    assert codec.header("Subject", "hi\n there") == frame(b"LSubject\0hi\n there\0")
    assert codec.body(b"x" * 3) == frame(b"Bxxx")
    assert [codec.empty(command) for command in (codec.DATA, codec.EOH, codec.BODYEOB, codec.ABORT, codec.QUIT)] == [
        b"\0\0\0\x01T",
        b"\0\0\0\x01N",
        b"\0\0\0\x01E",
        b"\0\0\0\x01A",
        b"\0\0\0\x01Q",
    ]
    assert codec.smtp_params({"SIZE": "10", "SMTPUTF8": None}) == ["SIZE=10", "SMTPUTF8"]


def test_a_stage_sends_its_macros_first_and_awaits_the_reply() -> None:
    session = negotiated()
    step = session.mail({"i": "ABC", "{mail_addr}": "a@b.example"}, "a@b.example")
    assert step.outcome is None
    assert step.data == codec.macros(b"M", {"i": "ABC", "{mail_addr}": "a@b.example"}) + codec.mail("a@b.example")
    assert session.receive(reply(b"c")[:3]) == Step(b"")  # half a reply: read on
    assert session.receive(reply(b"c")[3:]) == Step(b"", CONTINUE)


def test_a_reply_ahead_of_its_command_is_an_error_not_the_next_verdict() -> None:
    """A filter out of step (it answered the macros too) must not have its stray reply taken for the next stage's."""
    session = negotiated()
    session.mail({"i": "ABC"}, "a@b.example")
    step = session.receive(reply(b"c") + reply(b"c"))
    assert step == Step(b"", Outcome(codec.MilterError("the filter spoke out of turn")))
    assert session.rcpt({}, "c@d.example") == step  # broken for the rest of the session: its default action


def test_the_macros_a_filter_names_are_the_only_ones_it_gets() -> None:
    session = negotiated(lists=b"\0\0\0\x02{mail_addr}\0")
    step = session.mail({"i": "ABC", "{mail_addr}": "a@b.example"}, "a@b.example")
    assert step.data.startswith(codec.macros(b"M", {"{mail_addr}": "a@b.example"}) + b"\0")


def test_skipped_stages_send_nothing_and_no_reply_stages_are_not_awaited() -> None:
    session = negotiated(protocol=codec.NOHELO | codec.NR_RCPT | codec.NOHDRS | codec.NR_BODY)
    assert session.helo({"{cipher}": "x"}, "client.example") == Step(b"", CONTINUE)
    assert session.rcpt({}, "c@d.example") == Step(codec.rcpt("c@d.example"), CONTINUE)
    step = session.message({}, [("Subject", "hi")], b"x" * 70000)
    assert step.data == codec.empty(codec.EOH) and step.outcome is None  # no header; EOH awaits its reply
    step = session.receive(reply(b"c"))
    assert step.data == codec.body(b"x" * 65535) + codec.body(b"x" * 4465) + codec.empty(codec.BODYEOB)


def test_the_body_goes_in_chunks_until_the_filter_says_skip() -> None:
    session = negotiated(protocol=codec.NOHDRS | codec.NOEOH)
    step = session.message({}, [], b"y" * 150000)
    assert step.data == codec.body(b"y" * 65535)
    step = session.receive(reply(b"s"))
    assert step.data == codec.empty(codec.BODYEOB)
    assert session.receive(reply(b"c")).outcome == CONTINUE


# -- the codec: replies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "payload", "event"),
    [
        (b"c", b"", codec.Continue()),
        (b"a", b"", codec.Accept()),
        (b"r", b"", codec.Reject()),
        (b"t", b"", codec.Tempfail()),
        (b"d", b"", codec.Discard()),
        (b"s", b"", codec.Skip()),
        (b"p", b"", codec.Progress()),
        (b"y", b"554 5.7.1 Gtube pattern\0", codec.ReplyCode(554, (5, 7, 1), ("Gtube pattern",))),
        (b"y", b"450-4.2.0 wait\r\n450 4.2.0 more\0", codec.ReplyCode(450, (4, 2, 0), ("wait", "more"))),
        (b"y", b"421 go away\0", codec.ReplyCode(421, None, ("go away",))),
        (b"h", b"X-Spam\0yes\n\tindeed\0", codec.AddHeader("X-Spam", "yes\n\tindeed")),
        (b"i", b"\0\0\0\x02X-Top\0v\0", codec.InsertHeader(2, "X-Top", "v")),
        (b"m", b"\0\0\0\x01Subject\0\0", codec.ChangeHeader(1, "Subject", "")),
        (b"+", b"<c@d.example>\0", codec.AddRecipient("c@d.example")),
        (b"2", b"<c@d.example>\0NOTIFY=NEVER\0", codec.AddRecipient("c@d.example", "NOTIFY=NEVER")),
        (b"-", b"<c@d.example>\0", codec.DeleteRecipient("c@d.example")),
        (b"e", b"<new@d.example>\0", codec.ChangeSender("new@d.example")),
        (b"b", b"new body\r\n", codec.ReplaceBody(b"new body\r\n")),
        (b"q", b"virus\0", codec.Quarantine("virus")),
    ],
)
def test_each_reply_decodes_to_its_event(command: bytes, payload: bytes, event: codec.Event) -> None:
    assert codec.decode_reply(command, payload) == event


@pytest.mark.parametrize(
    ("command", "payload"),
    [
        (b"Z", b""),  # no such reply
        (b"y", b"250 2.0.0 fine\0"),  # a reply code must refuse
        (b"y", b"554 4.7.1 mismatch\0"),  # class of the enhanced code differs
        (b"y", b"554 5.7.1 a\x07bell\0"),
        (b"h", b"X-Bad\0a\r\nTo: evil@example\0"),  # a second field smuggled in
        (b"h", b"Bad Name\0v\0"),
        (b"h", b"X-Unterminated\0v"),
        (b"i", b"\0\0"),
        (b"+", b"<a@b>\0extra\0"),
        (b"e", b"\xff\xfe\0"),  # not UTF-8
    ],
)
def test_malformed_replies_decode_to_errors(command: bytes, payload: bytes) -> None:
    assert isinstance(codec.decode_reply(command, payload), codec.MilterError)


def test_impossible_packet_lengths_are_errors_not_waits() -> None:
    for data in (b"\0\0\0\0", struct.pack("!I", codec.MAX_PACKET + 1) + b"c"):
        session = negotiated()
        session.mail({}, "a@b.example")
        outcome = session.receive(data).outcome
        assert outcome is not None and isinstance(outcome.final, codec.MilterError)
        assert session.rcpt({}, "c@d.example") == Step(b"", outcome)  # broken for good, sending nothing


@pytest.mark.parametrize(
    ("actions", "protocol", "reply_data"),
    [
        (codec.ALL_ACTIONS, 0, reply(b"h", b"X\0v\0")),  # a modification before the end of the message
        (codec.ALL_ACTIONS, 0, reply(b"s")),  # skip outside the body
        (codec.ALL_ACTIONS, 0, reply(b"p") * 4),  # more progress than allowed
        (codec.ALL_ACTIONS, 0, reply(b"O", struct.pack("!III", 6, 0, 0))),  # a negotiation out of place
    ],
)
def test_replies_a_stage_does_not_allow_are_errors(actions: int, protocol: int, reply_data: bytes) -> None:
    session = negotiated(protocol, actions)
    session.mail({}, "a@b.example")
    outcome = session.receive(reply_data).outcome
    assert outcome is not None and isinstance(outcome.final, codec.MilterError)


def test_negotiations_beyond_the_offer_are_errors() -> None:
    for payload in (struct.pack("!III", 6, 0x200, 0), struct.pack("!III", 6, 0, codec.RCPT_REJ), b"short"):
        session = MilterSession()
        session.negotiate()
        outcome = session.receive(reply(b"O", payload)).outcome
        assert outcome is not None and isinstance(outcome.final, codec.MilterError)


def test_the_end_of_message_collects_the_allowed_modifications_within_bounds() -> None:
    session = negotiated(protocol=codec.NOHDRS | codec.NOEOH | codec.NOBODY, actions=codec.ADDHDRS)
    assert session.message({}, [], b"").data == codec.empty(codec.BODYEOB)
    step = session.receive(reply(b"p") + reply(b"h", b"X-A\0one\0") + reply(b"i", b"\0\0\0\0X-B\0two\0") + reply(b"a"))
    assert step.outcome == Outcome(codec.Accept(), (codec.AddHeader("X-A", "one"), codec.InsertHeader(0, "X-B", "two")))
    session.message({}, [], b"")
    outcome = session.receive(reply(b"m", b"\0\0\0\x01X-A\0\0")).outcome  # CHGHDRS was not negotiated
    assert outcome is not None and isinstance(outcome.final, codec.MilterError)
    many = negotiated(protocol=codec.NOHDRS | codec.NOEOH | codec.NOBODY)
    many.message({}, [], b"")
    outcome = many.receive(reply(b"h", b"X\0v\0") * 6).outcome
    assert outcome is not None and isinstance(outcome.final, codec.MilterError)  # over max_changes
    big = negotiated(protocol=codec.NOHDRS | codec.NOEOH | codec.NOBODY)
    big.message({}, [], b"")
    outcome = big.receive(reply(b"b", b"z" * 101)).outcome
    assert outcome is not None and isinstance(outcome.final, codec.MilterError)  # over max_octets


# -- the message the filters change ----------------------------------------------------------------

TRACE = b"Received: from c.example ([192.0.2.1])\r\n\tby mx.example (smtpwire) with ESMTP id 1\r\n"
MESSAGE = b"From: a@b.example\r\nSubject:no space\r\nX-Old: 1\r\n\r\nbody\r\n"


def test_an_unchanged_message_is_stored_as_it_came() -> None:
    message = MilterMessage.parse(TRACE, MESSAGE)
    assert message.headers()[:3] == [
        ("Received", "from c.example ([192.0.2.1])\n\tby mx.example (smtpwire) with ESMTP id 1"),
        ("From", "a@b.example"),
        ("Subject", "no space"),
    ]
    assert message.stored() == MESSAGE


def test_changes_apply_in_order_below_the_trace_fields() -> None:
    message = MilterMessage.parse(TRACE, MESSAGE)
    message.apply(
        [
            codec.InsertHeader(0, "X-Top", "first"),
            codec.ChangeHeader(1, "subject", "new\n\tfolded"),
            codec.ChangeHeader(1, "X-Old", ""),
            codec.ChangeHeader(1, "Received", "forged"),
            codec.ChangeHeader(3, "X-Missing", "added"),
            codec.AddHeader("X-End", "last"),
            codec.ReplaceBody(b"new\n"),
            codec.ReplaceBody(b"body\r\n"),
            codec.AddRecipient("c@d.example", "NOTIFY=NEVER"),
            codec.DeleteRecipient("b@d.example"),
            codec.ChangeSender("new@b.example"),
            codec.Quarantine("virus"),
        ]
    )
    assert message.stored() == (
        b"X-Top: first\r\nFrom: a@b.example\r\nsubject: new\r\n\tfolded\r\nX-Missing: added\r\nX-End: last\r\n"
        b"\r\nnew\r\nbody\r\n"
    )
    assert message.ignored == ["Received #1"]
    assert message.envelope == EnvelopeChanges(
        ("new@b.example", None), [("c@d.example", "NOTIFY=NEVER")], ["b@d.example"], "virus"
    )


def test_a_message_without_header_gets_a_separator_once_a_field_is_added() -> None:
    message = MilterMessage.parse(TRACE, b"not a header line\r\n")
    message.apply([codec.AddHeader("X-A", "1")])
    assert message.stored() == b"X-A: 1\r\n\r\nnot a header line\r\n"


# -- the fuzz corpus ------------------------------------------------------------------------------

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "corpus-milter"


def fuzz_target() -> ModuleType:
    return load_target("fuzz_milter")


@pytest.mark.parametrize("seed", sorted(CORPUS.iterdir()), ids=lambda path: path.name)
def test_the_milter_fuzz_corpus_replays(seed: pathlib.Path) -> None:
    target = fuzz_target()
    assert seed.name not in target.SEEDS or seed.read_bytes() == target.SEEDS[seed.name]
    target.TestOneInput(seed.read_bytes())


# -- addresses ----------------------------------------------------------------------------------


def test_milter_addresses_parse_or_say_why_not() -> None:
    assert parse_milter_address("inet:127.0.0.1:8891") == ("127.0.0.1", 8891)
    assert parse_milter_address("inet:[::1]:11332") == ("::1", 11332)
    assert parse_milter_address("unix:/run/milter.sock") == "/run/milter.sock"
    for bad in ("127.0.0.1:8891", "inet:host", "inet:host:0", "inet::25", "unix:", "tcp:h:1"):
        with pytest.raises(ValueError, match="milter address"):
            parse_milter_address(bad)
    with pytest.raises(ValueError, match="default action"):
        MilterSpec("inet:h:1", default_action="bounce")  # type: ignore[arg-type]
    assert MilterSpec("unix:/s").content_timeout == 300.0


# -- over real sockets: a scripted milter ---------------------------------------------------------

#: What the fake milter does with a command: the packets to answer (a float: pause so long), or "hang" or "close".
Script = Mapping[bytes, Sequence[bytes | float] | str]


class FakeMilter:
    """A milter on 127.0.0.1 answering each command as ``script`` says (else "continue"); it records what it heard."""

    def __init__(self, script: Script | None = None, protocol: int = 0, unix: pathlib.Path | None = None) -> None:
        self.script = dict(script or {})
        self.protocol = protocol
        self.heard: list[tuple[bytes, bytes]] = []
        self.unix = unix
        if unix is None:
            self.listener = socket.create_server(("127.0.0.1", 0))
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(unix))
            self.listener.listen()
        self.listener.settimeout(0.1)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"unix:{self.unix}" if self.unix else f"inet:127.0.0.1:{self.listener.getsockname()[1]}"

    def commands(self) -> bytes:
        return b"".join(command for command, _ in self.heard if command != codec.MACRO)

    def payloads(self, command: bytes) -> list[bytes]:
        return [payload for heard, payload in self.heard if heard == command]

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=TIMEOUT)
        self.listener.close()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        reader = codec.PacketReader()
        with conn, contextlib.suppress(OSError):
            for _ in range(10000):  # bounded: a session is far fewer packets
                data = conn.recv(70000)
                if not data:
                    return
                reader.feed(data)
                while isinstance(packet := reader.next_packet(), tuple):
                    self.heard.append(packet)
                    answer = self._answer(*packet)
                    if isinstance(answer, str):  # "hang" or "close"
                        if answer == "hang":
                            self.stopped.wait(TIMEOUT)
                        return
                    for item in answer:
                        if isinstance(item, float):
                            self.stopped.wait(item)
                        else:
                            conn.sendall(item)

    def _answer(self, command: bytes, payload: bytes) -> Sequence[bytes | float] | str:
        if command in self.script:
            return self.script[command]
        if command == codec.OPTNEG:
            return [reply(b"O", struct.pack("!III", 6, codec.ALL_ACTIONS, self.protocol))]
        if command in (codec.MACRO, codec.ABORT, codec.QUIT):
            return "close" if command == codec.QUIT else []
        return [reply(b"c")]


class KeepingStore(MaildirStore):
    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(path, hostname="mx.example")
        self.envelopes: list[Envelope] = []

    def message(self, session: Session, envelope: Envelope) -> Reply | None:
        self.envelopes.append(envelope)
        return super().message(session, envelope)


class AsyncKeepingStore(AsyncMaildirStore):
    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(path, hostname="mx.example")
        self.envelopes: list[Envelope] = []

    async def message(self, session: Session, envelope: Envelope) -> Reply | None:
        self.envelopes.append(envelope)
        return await super().message(session, envelope)


@contextlib.contextmanager
def milters(*scripts: Script, protocol: int = 0) -> Iterator[list[FakeMilter]]:
    fakes = [FakeMilter(script, protocol) for script in scripts]
    try:
        yield fakes
    finally:
        for fake in fakes:
            fake.close()


@contextlib.contextmanager
def served(
    kind: str, maildir: pathlib.Path, specs: list[MilterSpec]
) -> Iterator[tuple[smtplib.SMTP, KeepingStore | AsyncKeepingStore]]:
    store: KeepingStore | AsyncKeepingStore
    if kind == "blocking":
        store = KeepingStore(maildir)
        handler: MilterHandler | AsyncMilterHandler = MilterHandler(store, specs)
    else:
        store = AsyncKeepingStore(maildir)
        handler = AsyncMilterHandler(store, specs)
    with running(kind, handler, ServerOptions()) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        yield client, store


def spec(fake: FakeMilter, **options: object) -> MilterSpec:
    return MilterSpec(fake.address, **options)  # type: ignore[arg-type]


BODY = b"From: a@b.example\r\nSubject: hello\r\nX-Old: yes\r\n\r\nHello.\r\n"


def send(client: smtplib.SMTP, rcpts: tuple[str, ...] = ("b@d.example",)) -> tuple[int, bytes]:
    """MAIL, RCPT(s), DATA; the first refusal, or the reply to the end of data."""
    code, text = client.mail("a@b.example")
    if code != 250:
        return code, text
    for rcpt in rcpts:
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text
    return client.data(BODY)


def messages(maildir: pathlib.Path, folder: str = "") -> list[bytes]:
    return stored(Maildir(maildir).folder(folder) if folder else Maildir(maildir))


@pytest.mark.parametrize("kind", [*KINDS, "anyio-trio"])
def test_an_accepting_milter_hears_every_stage_and_the_stored_received_field(kind: str, tmp_path: pathlib.Path) -> None:
    with milters({}) as (fake,), served(kind, tmp_path / "md", [spec(fake)]) as (client, _):
        assert send(client)[0] == 250
        client.quit()
    wait_for(lambda: fake.commands().endswith(b"Q"))
    assert fake.commands() == b"OCHMRTLLLLNBEQ"
    (message,) = messages(tmp_path / "md")
    received = fake.payloads(codec.HEADER)[0]
    name, value, _ = received.split(b"\0")
    assert name == b"Received" and (b"Received: " + value.replace(b"\n", b"\r\n") + b"\r\n") in message
    assert message.endswith(BODY)
    connect_macros = fake.payloads(codec.MACRO)[0]
    assert connect_macros.startswith(b"C") and b"{client_addr}\x00127.0.0.1\x00" in connect_macros
    assert b"Ri\x00" not in b"".join(fake.payloads(codec.MACRO))  # no "i" at RCPT: Postfix sends {rcpt_addr}
    assert b"R{rcpt_addr}\x00b@d.example\x00" in fake.payloads(codec.MACRO)


@pytest.mark.parametrize("kind", KINDS)
def test_refusals_at_each_stage(kind: str, tmp_path: pathlib.Path) -> None:
    gtube: list[bytes | float] = [reply(b"y", b"554 5.7.1 Gtube pattern\0")]
    scripts: list[tuple[Script, tuple[int, bytes]]] = [
        ({codec.RCPT: [reply(b"r")]}, (550, b"5.7.1 Command rejected")),
        ({codec.MAIL: [reply(b"t")]}, (451, b"4.7.1 Service unavailable - try again later")),
        ({codec.BODYEOB: gtube}, (554, b"5.7.1 Gtube pattern")),
    ]
    for script, expected in scripts:
        with milters(script) as (fake,), served(kind, tmp_path / "md", [spec(fake)]) as (client, _):
            assert send(client) == expected
            assert client.rset()[0] == 250
    assert messages(tmp_path / "md") == []


@pytest.mark.parametrize("kind", KINDS)
def test_changes_reach_the_stored_message_and_the_envelope(kind: str, tmp_path: pathlib.Path) -> None:
    eob: list[bytes | float] = [
        reply(b"h", b"X-Spam\0no\0"),
        reply(b"i", b"\0\0\0\0X-Top\0first\0"),
        reply(b"m", b"\0\0\0\x01Subject\0changed\0"),
        reply(b"m", b"\0\0\0\x01X-Old\0\0"),
        reply(b"b", b"Replaced.\r\n"),
        reply(b"+", b"<c@d.example>\0"),
        reply(b"-", b"<b@d.example>\0"),
        reply(b"e", b"<new@b.example>\0"),
        reply(b"c"),
    ]
    with milters({codec.BODYEOB: eob}) as (fake,), served(kind, tmp_path / "md", [spec(fake)]) as (client, store):
        assert send(client)[0] == 250
    (message,) = messages(tmp_path / "md")
    header, body = message.split(b"\r\n\r\n", 1)
    assert header.split(b"\r\n")[-4:] == [b"X-Top: first", b"From: a@b.example", b"Subject: changed", b"X-Spam: no"]
    assert header.startswith(b"Return-Path: <a@b.example>\r\nReceived: ") and body == b"Replaced.\r\n"
    (envelope,) = store.envelopes
    assert envelope.milter_changes == EnvelopeChanges(("new@b.example", None), [("c@d.example", None)], ["b@d.example"])


@pytest.mark.parametrize("kind", KINDS)
def test_discard_and_quarantine(kind: str, tmp_path: pathlib.Path) -> None:
    with milters({codec.DATA: [reply(b"d")]}) as (fake,), served(kind, tmp_path / "md", [spec(fake)]) as (client, _):
        assert send(client)[0] == 250
    assert b"E" not in fake.commands() and messages(tmp_path / "md") == []
    quarantine = {codec.BODYEOB: [reply(b"q", b"suspect\0"), reply(b"c")]}
    with milters(quarantine) as (fake,), served(kind, tmp_path / "md", [spec(fake)]) as (client, _):
        assert send(client)[0] == 250
    assert messages(tmp_path / "md") == [] and len(messages(tmp_path / "md", "Quarantine")) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("action", "expected"),
    [("tempfail", 451), ("reject", 550), ("accept", 250)],
)
def test_a_milter_that_never_answers_gets_its_default_action(
    kind: str, action: str, expected: int, tmp_path: pathlib.Path
) -> None:
    with milters({codec.MAIL: "hang"}) as (fake,):
        options = {"command_timeout": 0.3, "default_action": action}
        with served(kind, tmp_path / "md", [spec(fake, **options)]) as (client, _):
            assert send(client)[0] == expected
            assert send(client)[0] == expected  # for the rest of the session
    assert len(messages(tmp_path / "md")) == (2 if action == "accept" else 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "script",
    [{codec.BODY: "close"}, {codec.HEADER: [b"\xff\xff\xff\xffgarbage"]}, {codec.BODYEOB: "hang"}],
    ids=["closes-mid-body", "garbage", "silent-at-end"],
)
def test_a_broken_milter_tempfails_the_message_and_loses_nothing_acknowledged(
    kind: str, script: Script, tmp_path: pathlib.Path
) -> None:
    with milters(script) as (fake,), served(kind, tmp_path / "md", [spec(fake, content_timeout=0.3)]) as (client, _):
        assert send(client) == (451, b"4.7.1 Service unavailable - try again later")
        assert client.noop()[0] == 250
    assert messages(tmp_path / "md") == []


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreachable_milter_refuses_every_mail_or_is_left_out(kind: str, tmp_path: pathlib.Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        address = f"inet:127.0.0.1:{closed.getsockname()[1]}"
    for action, expected in (("tempfail", 451), ("reject", 550), ("accept", 250)):
        with served(kind, tmp_path / "md", [MilterSpec(address, default_action=action)]) as (client, _):  # type: ignore[arg-type]
            assert send(client)[0] == expected


@pytest.mark.parametrize("kind", KINDS)
def test_two_milters_in_a_chain_each_see_the_changes_before_them(kind: str, tmp_path: pathlib.Path) -> None:
    first = {codec.BODYEOB: [reply(b"h", b"X-First\0one\0"), reply(b"c")]}
    second = {codec.BODYEOB: [reply(b"h", b"X-Second\0two\0"), reply(b"a")]}
    with milters(first, second) as fakes, served(kind, tmp_path / "md", [spec(fake) for fake in fakes]) as (client, _):
        assert send(client)[0] == 250
        assert client.rset()[0] == 250
    (message,) = messages(tmp_path / "md")
    assert b"X-First: one\r\nX-Second: two\r\n\r\nHello." in message
    assert fakes[1].payloads(codec.HEADER)[-1] == b"X-First\0one\0"


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_mail_or_rset_aborts_the_milters_transaction(kind: str, tmp_path: pathlib.Path) -> None:
    with milters({}) as (fake,), served(kind, tmp_path / "md", [spec(fake)]) as (client, _):
        assert client.mail("a@b.example")[0] == 250
        assert client.rset()[0] == 250
        assert client.mail("a@b.example")[0] == 250
        assert client.mail("a@b.example")[0] == 503  # the core refuses a nested MAIL: nothing to abort
        client.quit()
    wait_for(lambda: fake.commands().endswith(b"Q"))
    assert fake.commands() == b"OCHMAMQ"


def wait_for(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` for a bounded while (the milter thread records after the server moves on)."""
    for _ in range(100):
        if condition():
            return
        threading.Event().wait(0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_a_milter_on_a_unix_socket(kind: str, tmp_path: pathlib.Path) -> None:
    fake = FakeMilter({codec.BODYEOB: [reply(b"h", b"X-Unix\0yes\0"), reply(b"c")]}, unix=tmp_path / "milter.sock")
    try:
        with served(kind, tmp_path / "md", [spec(fake)]) as (client, _):
            assert send(client)[0] == 250
    finally:
        fake.close()
    (message,) = messages(tmp_path / "md")
    assert b"X-Unix: yes\r\n\r\nHello." in message
    connect = fake.payloads(codec.CONNECT)[0]  # the client came over TCP, whatever the milter's socket
    assert connect.startswith(b"unknown\x004") and connect.endswith(b"127.0.0.1\0")


@pytest.mark.parametrize("kind", KINDS)
def test_progress_replies_give_a_slow_milter_more_time(kind: str, tmp_path: pathlib.Path) -> None:
    slow: Script = {codec.BODYEOB: [0.25, reply(b"p"), 0.25, reply(b"p"), 0.25, reply(b"c")]}
    with milters(slow) as (fake,), served(kind, tmp_path / "md", [spec(fake, content_timeout=0.45)]) as (client, _):
        assert send(client)[0] == 250  # 0.75 s in all, never 0.45 s without a word
    assert len(messages(tmp_path / "md")) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_verdicts_at_connect_hold_for_the_whole_session(kind: str, tmp_path: pathlib.Path) -> None:
    with milters({codec.CONNECT: [reply(b"a")]}) as (fake,), served(kind, tmp_path / "md", [spec(fake)]) as (client, _):
        assert send(client)[0] == 250
        assert send(client)[0] == 250
        client.quit()
    wait_for(lambda: fake.commands().endswith(b"Q"))
    assert fake.commands() == b"OCQ"  # accepted: asked nothing more
    refusing: Script = {codec.CONNECT: [reply(b"y", b"550 5.7.1 Go away\0")]}
    with milters(refusing) as (fake,), served(kind, tmp_path / "md", [spec(fake)]) as (client, _):
        assert send(client) == (550, b"5.7.1 Go away")
        assert send(client) == (550, b"5.7.1 Go away")
    assert len(messages(tmp_path / "md")) == 2
