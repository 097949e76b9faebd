"""Postfix's policy delegation: the codec on bytes, and the handlers against a scripted policy server on 127.0.0.1.

The real peer (postgrey) is test_policy_interop's.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import re
import smtplib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import smtpwire
from smtpwire import Reply
from smtpwire_filters._policy import (
    MAX_ATTRIBUTES,
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    MAX_VALUE,
    PolicyAction,
    PolicyKind,
    PolicyReplyError,
    PolicyReplyReader,
    parse_policy_reply,
    policy_request,
)
from smtpwire_handler import AsyncMaildirStore, Handler, Maildir, MaildirStore, Params, Reject, ServerOptions, Session
from smtpwire_handler._policy import AsyncPolicyHandler, PolicyHandler, PolicyService, policy_endpoint
from tests.fuzzing import load_target
from tests.servers import running
from tests.test_maildir import stored

KINDS = ("blocking", "asyncio", "anyio-trio")
CONFIG = smtpwire.ServerConfig(hostname="mx.test")
TIMEOUT = 10
SLACK = 1.0
TRACE = re.compile(rb"Return-Path: <[^>]*>\r\nReceived: [^\r\n]+\r\n(?:[ \t][^\r\n]*\r\n)*")
MESSAGE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nHello.\r\n"
ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus-policy"

# --- the codec ------------------------------------------------------------------------------------


def test_a_request_is_name_value_lines_and_an_empty_line() -> None:
    request = policy_request({"request": "smtpd_access_policy", "sender": "", "recipient": "bob@example.net"})
    assert request == b"request=smtpd_access_policy\nsender=\nrecipient=bob@example.net\n\n"


def test_a_request_value_cannot_break_a_line_and_is_bounded() -> None:
    assert policy_request({"helo_name": "a\r\nb\0c"}) == b"helo_name=a??b?c\n\n"
    assert policy_request({"x": "é" * (MAX_VALUE + 10)}) == b"x=" + "é".encode() * MAX_VALUE + b"\n\n"


@pytest.mark.parametrize("attributes", [{"a=b": "x"}, {"": "x"}, {"a\nb": "x"}, {f"a{i}": "" for i in range(65)}])
def test_a_bad_request_is_the_callers_mistake(attributes: dict[str, str]) -> None:
    assert len(attributes) != MAX_ATTRIBUTES
    with pytest.raises(ValueError):
        policy_request(attributes)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("OK", PolicyAction(PolicyKind.OK)),
        ("dunno", PolicyAction(PolicyKind.DUNNO)),
        ("REJECT", PolicyAction(PolicyKind.REJECT)),
        ("REJECT 5.7.0 go away", PolicyAction(PolicyKind.REJECT, "go away", enhanced=(5, 7, 0))),
        ("Defer  come back", PolicyAction(PolicyKind.DEFER, "come back")),
        (
            "DEFER_IF_PERMIT 4.2.0 Greylisted",
            PolicyAction(PolicyKind.DEFER_IF_PERMIT, "Greylisted", enhanced=(4, 2, 0)),
        ),
        ("DEFER_IF_REJECT maybe", PolicyAction(PolicyKind.DEFER_IF_REJECT, "maybe")),
        ("554 no way", PolicyAction(PolicyKind.REPLY, "no way", code=554)),
        ("450 2.1.1 later", PolicyAction(PolicyKind.REPLY, "later", code=450, enhanced=(4, 1, 1))),  # class fixed
        ("PREPEND X-Policy: yes", PolicyAction(PolicyKind.PREPEND, "X-Policy: yes")),
        ("PREPEND no colon", PolicyAction(PolicyKind.DUNNO, "no colon", ignored="PREPEND")),
        ("PREPEND X-Bad: a\x01b", PolicyAction(PolicyKind.DUNNO, "X-Bad: a\x01b", ignored="PREPEND")),
        ("WARN careful", PolicyAction(PolicyKind.WARN, "careful")),
        ("HOLD", PolicyAction(PolicyKind.HOLD)),
        ("DISCARD spam", PolicyAction(PolicyKind.DISCARD, "spam")),
        ("FILTER smtp:[127.0.0.1]:10025", PolicyAction(PolicyKind.DUNNO, "smtp:[127.0.0.1]:10025", ignored="FILTER")),
        ("REDIRECT x@example.org", PolicyAction(PolicyKind.DUNNO, "x@example.org", ignored="REDIRECT")),
        ("BCC x@example.org", PolicyAction(PolicyKind.DUNNO, "x@example.org", ignored="BCC")),
    ],
)
def test_each_action_reads_as_postfix_reads_it(action: str, expected: PolicyAction) -> None:
    assert parse_policy_reply(f"other=1\naction={action}\nmore=2\n\n".encode()) == expected


def test_a_reply_dripped_one_octet_at_a_time_reads_the_same_and_keeps_what_follows() -> None:
    reply = b"action=REJECT 5.7.1 no\r\n\r\nextra"
    reader = PolicyReplyReader()
    results = [reader.receive(reply[i : i + 1]) for i in range(len(reply))]
    assert results[-1] == PolicyAction(PolicyKind.REJECT, "no", enhanced=(5, 7, 1))
    assert results.count(None) == len(b"action=REJECT 5.7.1 no\r\n\r")
    assert reader.trailing == b"extra"


@pytest.mark.parametrize(
    "reply",
    [
        b"x=y\n\n",  # no action
        b"action=OK\naction=REJECT\n\n",
        b"garbage\n\n",
        b"action=permit_mynetworks\n\n",
        b"action=" + b"x" * MAX_REPLY_LINE + b"\n\n",
        b"a=b\n" * MAX_REPLY_LINES + b"action=OK\n\n",
        b"action=OK\n",  # cut short
        b"",
    ],
)
def test_a_reply_that_is_not_the_protocols_is_an_error(reply: bytes) -> None:
    with pytest.raises(PolicyReplyError):
        parse_policy_reply(reply)


def test_an_endless_line_is_refused_before_it_is_whole() -> None:
    reader = PolicyReplyReader()
    with pytest.raises(PolicyReplyError):
        for _ in range(MAX_REPLY_LINE):
            reader.receive(b"x" * 64)


def test_the_server_closing_before_the_end_is_an_error() -> None:
    reader = PolicyReplyReader()
    assert reader.receive(b"action=OK\n") is None
    with pytest.raises(PolicyReplyError):
        reader.receive(b"")


def fuzz_target() -> ModuleType:
    return load_target("fuzz_policy")


@pytest.mark.parametrize("seed", sorted(CORPUS.iterdir()), ids=lambda path: path.name)
def test_the_policy_fuzz_corpus_replays(seed: pathlib.Path) -> None:
    target = fuzz_target()
    assert seed.name not in target.SEEDS or seed.read_bytes() == target.SEEDS[seed.name]
    target.TestOneInput(seed.read_bytes())


# --- the settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "endpoint"),
    [
        ("inet:127.0.0.1:10023", ("127.0.0.1", 10023)),
        ("inet:[::1]:10023", ("::1", 10023)),
        ("inet:policy.example:1", ("policy.example", 1)),
        ("unix:/run/postgrey.sock", "/run/postgrey.sock"),
    ],
)
def test_a_policy_service_address_is_inet_or_unix(address: str, endpoint: tuple[str, int] | str) -> None:
    assert policy_endpoint(address) == endpoint == PolicyService(address).endpoint


@pytest.mark.parametrize(
    "address", ["127.0.0.1:10023", "inet:127.0.0.1", "inet::10023", "inet:h:0", "inet:h:65536", "inet:h:x", "unix:", ""]
)
def test_a_bad_policy_service_address_says_what_it_should_be(address: str) -> None:
    with pytest.raises(ValueError, match="inet:HOST:PORT or unix:PATH"):
        PolicyService(address)


@pytest.mark.parametrize(
    "settings",
    [
        {"timeout": 0},
        {"connections": 0},
        {"stages": frozenset({"CONNECT"})},
        {"stages": frozenset()},
        {"default_action": "permit"},
    ],
)
def test_bad_policy_settings_are_refused_when_made(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PolicyService("inet:127.0.0.1:10023", **settings)  # type: ignore[arg-type]


def test_the_defaults_are_postfixs() -> None:
    service = PolicyService("unix:/run/policy")
    assert (service.timeout, service.default_action, service.stages) == (
        100.0,
        "451 4.3.5 Server configuration problem",
        frozenset({"RCPT"}),
    )


# --- a scripted policy server ---------------------------------------------------------------------

#: What the scripted server does instead of answering: close the connection, or say nothing.
CLOSE, SILENT = b"<close>", b"<silent>"
Answer = Callable[[dict[str, str]], bytes]


def action(text: str) -> Answer:
    """A server that answers every request with ``text``."""
    return lambda attributes: f"action={text}\n\n".encode()


class PolicyServer:
    """A policy server on 127.0.0.1 in threads: records each request's attributes and answers as ``answer`` says."""

    def __init__(self, answer: Answer, *, one_request_per_connection: bool = False, unix: str | None = None) -> None:
        self.answer = answer
        self.one_request = one_request_per_connection
        self.requests: list[dict[str, str]] = []
        self.connections = 0
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0)) if unix is None else unix_listener(unix)
        self._listener.settimeout(0.1)
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def address(self) -> str:
        name = self._listener.getsockname()
        return f"unix:{name}" if isinstance(name, str) else f"inet:127.0.0.1:{name[1]}"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._converse, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _converse(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buffer = b""
        with conn:
            while not self._stopping.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                buffer += data
                while b"\n\n" in buffer:
                    request, buffer = buffer.split(b"\n\n", 1)
                    if not self._answer(conn, request):
                        return

    def _answer(self, conn: socket.socket, request: bytes) -> bool:
        """Answer one request; False when the conversation is over."""
        attributes = dict(line.split("=", 1) for line in request.decode().split("\n"))
        self.requests.append(attributes)
        reply = self.answer(attributes)
        if reply == SILENT:
            self._stopping.wait(TIMEOUT)
            return False
        if reply != CLOSE:
            conn.sendall(reply)
        return reply != CLOSE and not self.one_request

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()


def unix_listener(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    return listener


@contextlib.contextmanager
def policy_server(answer: Answer, **kwargs: Any) -> Iterator[PolicyServer]:
    server = PolicyServer(answer, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def handler_for(kind: str, maildir: pathlib.Path, service: PolicyService) -> PolicyHandler | AsyncPolicyHandler:
    if kind == "blocking":
        return PolicyHandler(MaildirStore(maildir), service)
    return AsyncPolicyHandler(AsyncMaildirStore(maildir), service)


@contextlib.contextmanager
def client_of(address: tuple[str, int]) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        yield client


@contextlib.contextmanager
def smtp_client(kind: str, handler: Handler | PolicyHandler | AsyncPolicyHandler) -> Iterator[smtplib.SMTP]:
    with running(kind, handler, ServerOptions(config=CONFIG)) as server, client_of(server.address) as client:
        yield client


def transaction(client: smtplib.SMTP, recipient: str = "bob@example.net") -> tuple[bytes, bytes | None]:
    """MAIL, RCPT, and DATA if RCPT was accepted: the replies to RCPT and to the end of data, as code and text."""
    assert client.mail("alice@example.org", ["SIZE=100"])[0] == 250
    code, text = client.rcpt(recipient)
    if code != 250:
        client.rset()
        return b"%d %s" % (code, text), None
    data_code, data_text = client.data(MESSAGE)
    return b"%d %s" % (code, text), b"%d %s" % (data_code, data_text)


def in_folder(maildir: pathlib.Path, folder: str = "") -> list[bytes]:
    return stored(Maildir(maildir).folder(folder) if folder else Maildir(maildir))


def after_trace(message: bytes) -> bytes:
    """The message below the store's trace headers (Return-Path, then one folded Received field)."""
    trace = TRACE.match(message)
    assert trace, message[:300]
    return message[trace.end() :]


# --- every action over the adapters ---------------------------------------------------------------

REFUSALS = [
    ("REJECT", b"550 5.7.1 Access denied"),
    ("REJECT 5.7.0 go away", b"550 5.7.0 go away"),
    ("DEFER", b"450 4.7.1 Access denied"),
    ("DEFER come back later", b"450 4.7.1 come back later"),
    ("DEFER_IF_PERMIT Greylisted", b"450 4.7.1 Greylisted"),
    ("554 no way", b"554 5.7.1 no way"),
    ("451 4.7.25 later", b"451 4.7.25 later"),
    ("550 2.1.1 unknown", b"550 5.1.1 unknown"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("answer", "reply"), REFUSALS, ids=[answer for answer, _ in REFUSALS])
def test_a_refusing_action_refuses_the_recipient_and_nothing_is_stored(
    kind: str, answer: str, reply: bytes, tmp_path: pathlib.Path
) -> None:
    with policy_server(action(answer)) as policy:
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address))
        with smtp_client(kind, handler) as client:
            assert transaction(client) == (reply, None)
    assert in_folder(tmp_path / "maildir") == []


PASSING = ["OK", "DUNNO", "DEFER_IF_REJECT maybe", "WARN careful", "FILTER smtp:[127.0.0.1]:10025", "BCC x@example.org"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("answer", PASSING)
def test_a_passing_action_lets_the_store_decide_and_the_message_is_stored_as_sent(
    kind: str, answer: str, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with policy_server(action(answer)) as policy:
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address))
        with caplog.at_level(logging.INFO, logger="smtpwire.policy"), smtp_client(kind, handler) as client:
            rcpt, data = transaction(client)
    assert rcpt.startswith(b"250 ") and data is not None and data.startswith(b"250 ")
    [message] = in_folder(tmp_path / "maildir")
    assert after_trace(message) == MESSAGE
    if answer.startswith("WARN"):
        assert "policy server warns at RCPT: careful" in caplog.text
    if answer.startswith(("FILTER", "BCC")):
        assert f"policy action {answer.split()[0]} at RCPT is not applied here" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_prepend_puts_the_header_on_top_of_the_stored_message(kind: str, tmp_path: pathlib.Path) -> None:
    with policy_server(action("PREPEND X-Policy: checked by the test")) as policy:
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address))
        with smtp_client(kind, handler) as client:
            assert transaction(client)[1] == b"250 2.0.0 OK"
    [message] = in_folder(tmp_path / "maildir")
    assert after_trace(message) == b"X-Policy: checked by the test\r\n" + MESSAGE


@pytest.mark.parametrize("kind", KINDS)
def test_hold_files_the_message_into_the_hold_folder(kind: str, tmp_path: pathlib.Path) -> None:
    with policy_server(action("HOLD look at it")) as policy:
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address))
        with smtp_client(kind, handler) as client:
            assert transaction(client)[1] == b"250 2.0.0 OK"
    assert in_folder(tmp_path / "maildir") == []
    [held] = in_folder(tmp_path / "maildir", "Hold")
    assert after_trace(held) == MESSAGE


@pytest.mark.parametrize("kind", KINDS)
def test_discard_accepts_the_message_and_stores_nothing(kind: str, tmp_path: pathlib.Path) -> None:
    with policy_server(action("DISCARD")) as policy:
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address))
        with smtp_client(kind, handler) as client:
            assert transaction(client) == (b"250 2.1.5 OK", b"250 2.0.0 OK")
    assert in_folder(tmp_path / "maildir") == []  # no file left in tmp/ either


# --- a server that is down, silent, closing or garbled: the default action -------------------------


def closed_port() -> str:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return f"inet:127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("answer", [CLOSE, b"garbage\n\n", b"action=OK\n", b"action=permit\n\n"])
def test_a_policy_server_that_breaks_the_protocol_gets_the_default_action(
    kind: str, answer: bytes, tmp_path: pathlib.Path
) -> None:
    with policy_server(lambda attributes: answer) as policy:
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address, timeout=2))
        with smtp_client(kind, handler) as client:
            assert transaction(client) == (b"451 4.3.5 Server configuration problem", None)


@pytest.mark.parametrize("kind", KINDS)
def test_a_policy_server_that_is_down_gets_the_default_action(kind: str, tmp_path: pathlib.Path) -> None:
    handler = handler_for(kind, tmp_path / "maildir", PolicyService(closed_port(), default_action="DUNNO"))
    with smtp_client(kind, handler) as client:
        assert transaction(client)[1] == b"250 2.0.0 OK"


@pytest.mark.parametrize("kind", KINDS)
def test_a_silent_policy_server_gets_the_default_action_after_the_timeout(kind: str, tmp_path: pathlib.Path) -> None:
    with policy_server(lambda attributes: SILENT) as policy:
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address, timeout=0.5))
        with smtp_client(kind, handler) as client:
            started = time.monotonic()
            assert transaction(client) == (b"451 4.3.5 Server configuration problem", None)
            assert 0.5 <= time.monotonic() - started < 0.5 + SLACK


# --- connections ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_one_connection_serves_two_sessions_and_each_transaction_is_an_instance(
    kind: str, tmp_path: pathlib.Path
) -> None:
    with policy_server(action("DUNNO")) as policy:
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address))
        with running(kind, handler, ServerOptions(config=CONFIG)) as server:
            for _ in range(2):
                with client_of(server.address) as client:
                    assert client.mail("alice@example.org")[0] == 250
                    assert client.rcpt("bob@example.net")[0] == 250
                    assert client.rcpt("carol@example.net")[0] == 250
                    assert client.data(MESSAGE)[0] == 250
    assert policy.connections == 1 and len(policy.requests) == 4
    instances = [request["instance"] for request in policy.requests]
    assert instances[0] == instances[1] != instances[2] == instances[3]


@pytest.mark.parametrize("kind", KINDS)
def test_a_connection_the_server_closed_is_replaced_and_the_request_answered(kind: str, tmp_path: pathlib.Path) -> None:
    with policy_server(action("REJECT no"), one_request_per_connection=True) as policy:
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address))
        with smtp_client(kind, handler) as client:
            assert transaction(client) == (b"550 5.7.1 no", None)
            time.sleep(0.2)  # the server has closed the kept connection by now
            assert transaction(client) == (b"550 5.7.1 no", None)
    assert policy.connections == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_policy_server_on_a_unix_socket_is_asked_there(kind: str, tmp_path: pathlib.Path) -> None:
    with (
        tempfile.TemporaryDirectory() as directory,
        policy_server(action("REJECT 5.7.1 via unix"), unix=f"{directory}/p") as policy,
    ):
        assert policy.address == f"unix:{directory}/p"
        handler = handler_for(kind, tmp_path / "maildir", PolicyService(policy.address))
        with smtp_client(kind, handler) as client:
            assert transaction(client) == (b"550 5.7.1 via unix", None)
    assert policy.connections == 1


# --- what is sent, at which stage -----------------------------------------------------------------

POSTFIX_ATTRIBUTES = {
    "request", "protocol_state", "protocol_name", "helo_name", "queue_id", "sender", "recipient", "recipient_count",
    "client_address", "client_name", "reverse_client_name", "instance", "sasl_method", "sasl_username", "sasl_sender",
    "size", "ccert_subject", "ccert_issuer", "ccert_fingerprint", "ccert_pubkey_fingerprint", "encryption_protocol",
    "encryption_cipher", "encryption_keysize", "etrn_domain", "stress", "client_port", "server_address",
    "server_port", "policy_context",
}  # fmt: skip


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_every_stage_asked_gets_postfixs_attributes(kind: str, tmp_path: pathlib.Path) -> None:
    service_stages = frozenset({"MAIL", "RCPT", "DATA", "END-OF-MESSAGE"})
    with policy_server(action("DUNNO")) as policy:
        service = PolicyService(policy.address, stages=service_stages, context="inbound")
        with smtp_client(kind, handler_for(kind, tmp_path / "maildir", service)) as client:
            assert transaction(client)[1] == b"250 2.0.0 OK"
            assert client.sock is not None
            local_port = client.sock.getsockname()[1]
    mail, rcpt, data, end = policy.requests
    assert all(request.keys() == POSTFIX_ATTRIBUTES for request in policy.requests)
    assert [request["protocol_state"] for request in policy.requests] == ["MAIL", "RCPT", "DATA", "END-OF-MESSAGE"]
    assert len({request["instance"] for request in policy.requests}) == 1
    assert rcpt | {"instance": "", "server_port": ""} == {
        **dict.fromkeys(POSTFIX_ATTRIBUTES, ""),
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "helo_name": "client.example",
        "sender": "alice@example.org",
        "recipient": "bob@example.net",
        "recipient_count": "0",
        "client_address": "127.0.0.1",
        "client_port": str(local_port),
        "client_name": "unknown",
        "reverse_client_name": "unknown",
        "server_address": "127.0.0.1",
        "size": "100",
        "encryption_keysize": "0",
        "policy_context": "inbound",
    }
    assert (mail["sender"], mail["recipient"], mail["size"]) == ("alice@example.org", "", "100")
    assert (data["recipient"], data["recipient_count"], data["size"]) == ("bob@example.net", "1", "100")
    assert (end["recipient_count"], end["size"]) == ("1", str(len(MESSAGE)))


def stage_answers(answers: dict[str, str]) -> Answer:
    """A server answering by ``protocol_state``, DUNNO where ``answers`` says nothing."""
    return lambda attributes: f"action={answers.get(attributes['protocol_state'], 'DUNNO')}\n\n".encode()


ALL_STAGES = frozenset({"MAIL", "RCPT", "DATA", "END-OF-MESSAGE"})


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
@pytest.mark.parametrize(
    ("answers", "replies"),
    [
        ({"MAIL": "REJECT 5.7.1 not you"}, "MAIL 550 5.7.1 not you"),
        ({"DATA": "DEFER later"}, "DATA 450 4.7.1 later"),
        ({"END-OF-MESSAGE": "REJECT 5.7.1 spam"}, "END 550 5.7.1 spam"),
        ({"END-OF-MESSAGE": "DEFER_IF_PERMIT wait"}, "END 450 4.7.1 wait"),
        ({"END-OF-MESSAGE": "DEFER_IF_REJECT wait"}, "END 250 2.0.0 OK"),
    ],
)
def test_a_stage_other_than_rcpt_answers_its_own_command(
    kind: str, answers: dict[str, str], replies: str, tmp_path: pathlib.Path
) -> None:
    with policy_server(stage_answers(answers)) as policy:
        service = PolicyService(policy.address, stages=ALL_STAGES)
        with smtp_client(kind, handler_for(kind, tmp_path / "maildir", service)) as client:
            mail = client.mail("alice@example.org")
            if mail[0] != 250:
                outcome = b"MAIL %d %s" % mail
            else:
                assert client.rcpt("bob@example.net")[0] == 250
                code, text = client.docmd("DATA")
                outcome = b"DATA %d %s" % (code, text)
                if code == 354:
                    client.send(MESSAGE + b".\r\n")
                    outcome = b"END %d %s" % client.getreply()
    assert outcome.decode() == replies
    assert len(in_folder(tmp_path / "maildir")) == (1 if replies.endswith("250 2.0.0 OK") else 0)


# --- the store's own answer -----------------------------------------------------------------------


class Picky(MaildirStore):
    """Refuses nobody@ with a 550 and raises for ghost@ (a ``Reject``), as a store that knows its users."""

    def rcpt_to(self, session: Session, address: str, params: Params) -> Reply | None:
        if address.startswith("ghost@"):
            raise Reject(Reply(550, "No such ghost", (5, 1, 1)))
        return Reply(550, "No such user", (5, 1, 1)) if address.startswith("nobody@") else None


@pytest.mark.parametrize(
    ("answer", "recipient", "reply"),
    [
        ("DEFER_IF_PERMIT grey", "bob@example.net", b"450 4.7.1 grey"),
        ("DEFER_IF_PERMIT grey", "nobody@example.net", b"550 5.1.1 No such user"),
        ("DEFER_IF_REJECT unsure", "nobody@example.net", b"450 4.7.1 unsure"),
        ("DEFER_IF_REJECT unsure", "ghost@example.net", b"450 4.7.1 unsure"),
        ("DEFER_IF_REJECT unsure", "bob@example.net", b"250 2.1.5 OK"),
        ("OK", "nobody@example.net", b"550 5.1.1 No such user"),
        ("REJECT no", "bob@example.net", b"550 5.7.1 no"),
    ],
)
def test_the_deferrals_that_depend_on_the_store_ask_it(
    answer: str, recipient: str, reply: bytes, tmp_path: pathlib.Path
) -> None:
    with policy_server(action(answer)) as policy:
        handler = PolicyHandler(Picky(tmp_path / "maildir"), PolicyService(policy.address))
        with smtp_client("blocking", handler) as client:
            assert transaction(client, recipient)[0] == reply


def test_a_prepend_for_a_refused_recipient_is_not_kept(tmp_path: pathlib.Path) -> None:
    answer: Answer = lambda attributes: f"action=PREPEND X-For: {attributes['recipient']}\n\n".encode()  # noqa: E731
    with policy_server(answer) as policy:
        handler = PolicyHandler(Picky(tmp_path / "maildir"), PolicyService(policy.address))
        with smtp_client("blocking", handler) as client:
            assert client.mail("alice@example.org")[0] == 250
            assert client.rcpt("nobody@example.net")[0] == 550
            assert client.rcpt("bob@example.net")[0] == 250
            assert client.rcpt("carol@example.net")[0] == 250
            assert client.data(MESSAGE)[0] == 250
    [message] = in_folder(tmp_path / "maildir")
    assert after_trace(message) == b"X-For: bob@example.net\r\nX-For: carol@example.net\r\n" + MESSAGE
