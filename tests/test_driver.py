"""The shared SessionDriver's contract, without sockets: steps, hooks, TLS, shutdown.

Each test plays the adapter's loop by hand: ``next_step()``, ``data_to_send()``,
``receive()``, and for a ``HookWait`` runs the awaitable, then ``resolve()`` or
``reject()``.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import inspect
import logging
import warnings
from collections.abc import Awaitable, Coroutine
from typing import Any

import pytest

import smtpwire
from smtpwire import Reply
from smtpwire_handler import AsyncHandler, Envelope, Handler, Params, Reject, ServerOptions, Session, TLSInfo
from smtpwire_handler.kit import (
    CLOSED,
    FLUSH,
    NEED_DATA,
    START_TLS,
    AdapterStep,
    HookWait,
    SessionDriver,
    overridden_hooks,
)
from tests import certs
from tests.servers import HOOKS
from tests.test_interop import MESSAGE, ON_THE_WIRE

log = logging.getLogger("test")
PEER = ("192.0.2.7", 40000)
TLS = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
GREETING = b"220 localhost ESMTP smtpwire\r\n"
TRANSACTION = b"EHLO c.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
LOCAL_ERROR = b"451 4.3.0 Requested action aborted: local error in processing\r\n"
TIMED_OUT = b"421 4.4.2 localhost Timeout, closing connection\r\n"
SHUTTING_DOWN = b"421 4.3.2 localhost Service shutting down\r\n"


class Clock:
    """A clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_driver(handler: Handler | AsyncHandler, options: ServerOptions | None = None, **kwargs: Any) -> SessionDriver:
    kwargs.setdefault("clock", Clock())
    return SessionDriver(handler, options or ServerOptions(), log=log, peer=PEER, **kwargs)


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable


def run(
    driver: SessionDriver, data: bytes | None = None, *, await_hooks: bool = True, max_steps: int = 1000
) -> tuple[bytes, AdapterStep]:
    """Feed ``data``, then play the adapter until the driver needs data, TLS or closes.

    Every ``HookWait`` is awaited (with ``asyncio.run``) and resolved, or
    rejected with what it raised; a ``FLUSH`` goes on at once (the client
    here takes everything).  Returns what was sent and the step.
    """
    if data is not None:
        driver.receive(data)
    sent = b""
    for _ in range(max_steps):
        step = driver.next_step()
        sent += driver.data_to_send()
        if step is FLUSH:
            continue
        if not isinstance(step, HookWait):
            return sent, step
        assert await_hooks, f"a HookWait for {step.hook}"
        try:
            result = asyncio.run(_awaited(step.awaitable))
        except Exception as error:
            driver.reject(step, error)
        else:
            driver.resolve(step, result)
    raise AssertionError("the driver never stopped")


def greeted(handler: Handler | AsyncHandler, options: ServerOptions | None = None, **kwargs: Any) -> SessionDriver:
    driver = new_driver(handler, options, **kwargs)
    sent, step = run(driver)
    assert (sent, step) == (GREETING, NEED_DATA)
    return driver


def replies(sent: bytes) -> list[bytes]:
    """The last line of each reply (``250-`` continuation lines dropped)."""
    return [line for line in sent.split(b"\r\n") if line[3:4] == b" "]


class Spy(Handler):
    """Records every hook call (name and arguments after the session) in ``calls``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Closing(Spy):
    """Spies on the hooks around a message's end and the session's."""

    def message(self, session: Session, envelope: Envelope) -> None:
        self.record("message", envelope.size, bytes(envelope.content))

    def message_aborted(self, session: Session, reply: Reply | None) -> None:
        self.record("message_aborted", reply)

    def disconnect(self, session: Session) -> None:
        self.record("disconnect")

    def tls_started(self, session: Session) -> None:
        self.record("tls_started", session.tls)


# -- hooks nobody overrode ------------------------------------------------------------


def test_hooks_not_overridden_are_never_called_and_the_defaults_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    for name in HOOKS:
        if name != "message":

            def spy(self: Handler, *args: object, _name: str = name) -> None:
                called.append(_name)

            monkeypatch.setattr(Handler, name, spy)  # the defaults themselves now record a call

    class OnlyMessage(Handler):
        def __init__(self) -> None:
            self.envelopes: list[Envelope] = []

        def message(self, session: Session, envelope: Envelope) -> None:
            self.envelopes.append(envelope)

    handler = OnlyMessage()
    assert overridden_hooks(handler) == {"message"}
    config = smtpwire.ServerConfig(extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.Auth(require_tls=False)))
    driver = greeted(handler, ServerOptions(config=config))
    sent, step = run(driver, TRANSACTION + ON_THE_WIRE)
    assert step is NEED_DATA
    assert replies(sent) == [
        b"250 AUTH SCRAM-SHA-256 PLAIN LOGIN",
        b"250 2.1.0 OK",
        b"250 2.1.5 OK",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"250 2.0.0 OK",
    ]
    (envelope,) = handler.envelopes
    assert envelope.content == MESSAGE  # the default data_chunk's doing, with no call
    assert (envelope.mail_from, envelope.rcpt_tos) == ("alice@example.org", ["bob@example.net"])
    plain = base64.b64encode(b"\0alice\0secret")
    sent, step = run(driver, b"VRFY bob\r\nRSET\r\nAUTH PLAIN " + plain + b"\r\nFOO\r\nQUIT\r\n")
    assert replies(sent)[:3] == [
        b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
        b"250 2.0.0 OK",
        b"535 5.7.8 Authentication credentials invalid",  # authenticate's default: nobody gets in
    ]
    assert replies(sent)[3].startswith(b"500 ") and replies(sent)[4].startswith(b"221 ")
    assert step is CLOSED
    assert called == []


def test_overridden_hooks_sees_classes_and_instances() -> None:
    class Mixed(AsyncHandler):
        async def rcpt_to(self, session: Session, address: str, params: Params) -> None:
            return None

        def quit(self, session: Session) -> None:
            pass

    handler = Mixed()
    assert overridden_hooks(handler) == {"rcpt_to", "quit"}
    handler.helo = lambda session, name: None  # type: ignore[method-assign]
    assert overridden_hooks(handler) == {"rcpt_to", "quit", "helo"}
    assert overridden_hooks(Handler()) == overridden_hooks(AsyncHandler()) == frozenset()


# -- plain and async hooks ---------------------------------------------------------------


class PlainAndAsync(AsyncHandler):
    def __init__(self) -> None:
        self.order: list[str] = []

    def mail_from(self, session: Session, address: str, params: Params) -> Reply | None:
        self.order.append(f"mail_from {address}")
        return Reply(550, "no such sender", (5, 1, 8)) if address == "nobody@example.org" else None

    async def rcpt_to(self, session: Session, address: str, params: Params) -> Reply | None:
        await asyncio.sleep(0)
        self.order.append(f"rcpt_to {address}")
        if address == "reject@example.net":
            raise Reject(Reply(550, "mailbox unavailable", (5, 1, 1)))
        if address == "broken@example.net":
            raise ValueError("the database is gone")
        return Reply(251, "forwarding", (2, 1, 5)) if address == "away@example.net" else None


def test_a_plain_hook_runs_inline() -> None:
    handler = PlainAndAsync()
    driver = greeted(handler)
    driver.receive(b"EHLO c.example\r\nMAIL FROM:<nobody@example.org>\r\nMAIL FROM:<alice@example.org>\r\n")
    assert driver.next_step() is NEED_DATA  # no HookWait: both calls happened inside next_step()
    assert replies(driver.data_to_send())[1:] == [b"550 5.1.8 no such sender", b"250 2.1.0 OK"]
    assert handler.order == ["mail_from nobody@example.org", "mail_from alice@example.org"]


def test_an_async_hook_is_a_hook_wait_the_adapter_awaits() -> None:
    handler = PlainAndAsync()
    driver = greeted(handler)
    run(driver, b"EHLO c.example\r\nMAIL FROM:<alice@example.org>\r\n")
    driver.receive(b"RCPT TO:<away@example.net>\r\nNOOP\r\n")
    step = driver.next_step()
    assert isinstance(step, HookWait)
    assert step.hook == "rcpt_to" and isinstance(step.event, smtpwire.RcptTo)
    assert step.event.address == "away@example.net"
    assert driver.data_to_send() == b""  # nothing is answered before the hook is
    assert handler.order == ["mail_from alice@example.org"]  # the coroutine has not run yet
    with pytest.raises(RuntimeError, match="still being awaited"):
        driver.next_step()
    driver.resolve(step, asyncio.run(_awaited(step.awaitable)))
    assert driver.next_step() is NEED_DATA
    assert driver.data_to_send() == b"251 2.1.5 forwarding\r\n250 2.0.0 OK\r\n"  # then the pipelined NOOP
    assert handler.order[-1] == "rcpt_to away@example.net"
    assert driver.session.envelope is not None and driver.session.envelope.rcpt_tos == ["away@example.net"]


def test_reject_answers_with_the_reply_and_other_errors_give_451(caplog: pytest.LogCaptureFixture) -> None:
    driver = greeted(PlainAndAsync())
    run(driver, b"EHLO c.example\r\nMAIL FROM:<alice@example.org>\r\n")
    sent: list[bytes] = []
    for address, error in (
        (b"reject@example.net", Reject(Reply(550, "mailbox unavailable", (5, 1, 1)))),
        (b"broken@example.net", ValueError("the database is gone")),
    ):
        driver.receive(b"RCPT TO:<" + address + b">\r\n")
        step = driver.next_step()
        assert isinstance(step, HookWait)
        coroutine = step.awaitable
        assert inspect.iscoroutine(coroutine)
        coroutine.close()  # the adapter reports what the hook raised, here without running it
        driver.reject(step, error)
        assert driver.next_step() is NEED_DATA
        sent.append(driver.data_to_send())
    assert sent == [b"550 5.1.1 mailbox unavailable\r\n", LOCAL_ERROR]
    failures = [r for r in caplog.records if r.name == "test" and r.levelno == logging.ERROR]
    assert len(failures) == 1  # a Reject is an answer, not a failure
    assert "rcpt_to" in failures[0].getMessage() and isinstance(failures[0].exc_info[1], ValueError)  # type: ignore[index]
    assert driver.session.envelope is not None and driver.session.envelope.rcpt_tos == []


def test_async_hooks_resolved_by_the_loop_helper() -> None:
    driver = greeted(PlainAndAsync())
    sent, step = run(
        driver,
        b"EHLO c.example\r\nMAIL FROM:<alice@example.org>\r\n"
        b"RCPT TO:<reject@example.net>\r\nRCPT TO:<broken@example.net>\r\nRCPT TO:<bob@example.net>\r\n",
    )
    assert step is NEED_DATA
    assert replies(sent)[1:] == [
        b"250 2.1.0 OK",
        b"550 5.1.1 mailbox unavailable",
        LOCAL_ERROR.rstrip(),
        b"250 2.1.5 OK",
    ]


def test_a_plain_hook_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Raising(Handler):
        def helo(self, session: Session, name: str) -> Reply | None:
            raise Reject(Reply(550, "go away", (5, 7, 1)))

        def ehlo(self, session: Session, name: str) -> Reply | None:
            raise KeyError(name)

    driver = greeted(Raising())
    sent, _ = run(driver, b"HELO a.example\r\nEHLO b.example\r\nNOOP\r\n")
    # replies to HELO and EHLO carry no enhanced status code (RFC 2034)
    assert sent == b"550 go away\r\n451 Requested action aborted: local error in processing\r\n250 2.0.0 OK\r\n"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"session {driver.session.id}: hook ehlo failed"
    ]


def test_without_can_await_an_async_hook_gives_451_and_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    made: list[Coroutine[Any, Any, None]] = []

    class Async(AsyncHandler):
        async def vrfy(self, session: Session, argument: str) -> None:
            raise AssertionError("never run")

        def rcpt_to(self, session: Session, address: str, params: Params) -> Awaitable[None]:
            coroutine = self._later()
            made.append(coroutine)
            return coroutine

        async def _later(self) -> None:
            raise AssertionError("never run")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        driver = greeted(Async(), can_await=False)
        sent, step = run(
            driver,
            await_hooks=False,
            data=b"EHLO c.example\r\nVRFY bob\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n",
        )
        del driver
        gc.collect()
    assert step is NEED_DATA
    assert replies(sent)[1:] == [LOCAL_ERROR.rstrip(), b"250 2.1.0 OK", LOCAL_ERROR.rstrip()]
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []  # no "never awaited"
    (coroutine,) = made
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "vrfy failed" in errors[0] and "rcpt_to failed" in errors[1]


def test_hooks_set_on_the_instance_are_called() -> None:
    handler = Handler()
    seen: list[tuple[str, bytes]] = []

    def message(session: Session, envelope: Envelope) -> None:
        seen.append((envelope.mail_from, bytes(envelope.content)))

    def rcpt_to(session: Session, address: str, params: Params) -> Reply | None:
        return Reply(550, "unknown", (5, 1, 1)) if address.startswith("x@") else None

    handler.message = message  # type: ignore[method-assign]
    handler.rcpt_to = rcpt_to  # type: ignore[method-assign]
    driver = greeted(handler)
    sent, _ = run(
        driver,
        b"EHLO c.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<x@example.net>\r\n"
        b"RCPT TO:<bob@example.net>\r\nDATA\r\n" + ON_THE_WIRE,
    )
    assert replies(sent)[2:] == [
        b"550 5.1.1 unknown",
        b"250 2.1.5 OK",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"250 2.0.0 OK",
    ]
    assert seen == [("alice@example.org", MESSAGE)]


def test_an_async_hook_set_on_the_instance_is_awaited() -> None:
    handler = AsyncHandler()

    async def vrfy(session: Session, argument: str) -> Reply:
        return Reply(250, f"<{argument}@example.net>", (2, 1, 5))

    handler.vrfy = vrfy  # type: ignore[method-assign]
    driver = greeted(handler)
    driver.receive(b"VRFY bob\r\n")
    step = driver.next_step()
    assert isinstance(step, HookWait) and step.hook == "vrfy"
    driver.resolve(step, asyncio.run(_awaited(step.awaitable)))
    assert driver.next_step() is NEED_DATA
    assert driver.data_to_send() == b"250 2.1.5 <bob@example.net>\r\n"


def test_a_class_with_a_custom_getattribute_has_its_hooks_called() -> None:
    looked_up: list[str] = []

    class Dynamic(Handler):
        def __getattribute__(self, name: str) -> Any:
            if name in HOOKS:
                looked_up.append(name)
            if name == "rcpt_to":
                return lambda session, address, params: Reply(550, "decided at lookup", (5, 1, 1))
            return super().__getattribute__(name)

    driver = greeted(Dynamic())
    sent, _ = run(driver, b"EHLO c.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n")
    assert replies(sent)[-1] == b"550 5.1.1 decided at lookup"
    assert looked_up == ["connect", "ehlo", "mail_from", "rcpt_to"]


# -- the message and the end of the session ----------------------------------------------


def test_envelope_size_counts_unstuffed_octets() -> None:
    class Streaming(Closing):
        def data_chunk(self, session: Session, data: bytes) -> None:
            self.record("data_chunk", data)

    for handler, kept in ((Closing(), MESSAGE), (Streaming(), b"")):
        driver = greeted(handler)
        sent, _ = run(driver, TRANSACTION + ON_THE_WIRE)
        assert replies(sent)[-1] == b"250 2.0.0 OK"
        assert len(ON_THE_WIRE) - len(b".\r\n") > len(MESSAGE)  # there was stuffing to undo
        assert ("message", (len(MESSAGE), kept)) in handler.calls
    chunks = b"".join(args[0] for name, args in handler.calls if name == "data_chunk")
    assert chunks == MESSAGE


def test_connection_lost_mid_data_aborts_the_message_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test")
    handler = Closing()
    driver = greeted(handler)
    run(driver, TRANSACTION + b"Subject: cut short\r\n")
    driver.connection_lost(ConnectionResetError("gone"))
    assert driver.next_step() is CLOSED
    assert driver.data_to_send() == b""
    assert driver.closed
    assert handler.calls == [("message_aborted", (None,)), ("disconnect", ())]
    assert driver.next_step() is CLOSED  # and nothing is called again
    driver.connection_lost()
    assert driver.next_step() is CLOSED
    assert handler.names() == ["message_aborted", "disconnect"]
    messages = [r.getMessage() for r in caplog.records if r.name == "test"]
    assert f"session {driver.session.id}: closed (0 message(s), peer 192.0.2.7)" in messages


def test_a_data_timeout_gives_421_and_aborts_the_message_once() -> None:
    handler = Closing()
    options = ServerOptions(command_timeout=7, data_timeout=11)
    driver = greeted(handler, options)
    assert driver.timeout == 7
    run(driver, TRANSACTION + b"Subject: slow\r\n")
    assert driver.timeout == 11  # inside DATA: the data timeout
    driver.timed_out()
    sent, step = run(driver)
    assert (sent, step) == (TIMED_OUT, CLOSED)
    assert handler.names() == ["message_aborted", "disconnect"]


def test_a_message_refused_by_data_chunk_is_aborted_once() -> None:
    class Refusing(Closing):
        def data_chunk(self, session: Session, data: bytes) -> None:
            raise Reject(Reply(554, "no thanks", (5, 7, 1)))

    handler = Refusing()
    driver = greeted(handler)
    sent, _ = run(driver, TRANSACTION + ON_THE_WIRE + b"QUIT\r\n")
    assert replies(sent)[-2:] == [b"554 5.7.1 no thanks", b"221 2.0.0 localhost Service closing transmission channel"]
    refused = Reply(554, "no thanks", (5, 7, 1))
    assert handler.calls == [("message_aborted", (refused,)), ("disconnect", ())]


def test_disconnect_once_and_the_closing_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test")
    handler = Closing()
    driver = greeted(handler)
    second = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n" + ON_THE_WIRE
    sent, step = run(driver, TRANSACTION + ON_THE_WIRE + second + b"QUIT\r\n")
    assert step is CLOSED
    assert replies(sent)[-1].startswith(b"221 ")
    assert handler.names() == ["message", "message", "disconnect"]
    driver.connection_lost()  # the transport's own callback, after the close
    assert driver.next_step() is CLOSED
    assert handler.names().count("disconnect") == 1
    closed = [r.getMessage() for r in caplog.records if "closed (" in r.getMessage()]
    assert closed == [f"session {driver.session.id}: closed (2 message(s), peer 192.0.2.7)"]


# -- TLS ----------------------------------------------------------------------------------


def tls_options() -> ServerOptions:
    return ServerOptions(tls_context=certs.server_context(), tls_handshake_timeout=3, command_timeout=9)


def test_starttls_is_a_start_tls_step() -> None:
    handler = Closing()
    driver = greeted(handler, tls_options())
    sent, _ = run(driver, b"EHLO c.example\r\n")
    assert sent.endswith(b"250 STARTTLS\r\n")
    sent, step = run(driver, b"STARTTLS\r\nNOOP\r\n")
    assert (sent, step) == (b"220 2.0.0 Ready to start TLS\r\n", START_TLS)
    assert driver.timeout == 3  # the handshake's timeout
    assert handler.calls == []


def test_tls_failed_ends_the_session(caplog: pytest.LogCaptureFixture) -> None:
    handler = Closing()
    driver = greeted(handler, tls_options())
    run(driver, b"EHLO c.example\r\n")
    assert run(driver, b"STARTTLS\r\n")[1] is START_TLS
    driver.tls_failed("bad record mac")
    assert driver.next_step() is CLOSED
    assert driver.data_to_send() == b""  # nothing in plaintext, nothing in TLS
    assert handler.names() == ["disconnect"]
    assert any("bad record mac" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    driver.tls_failed("again")  # no handshake is due any more: nothing happens
    assert driver.next_step() is CLOSED and handler.names() == ["disconnect"]


def test_a_handshake_timeout_ends_the_session() -> None:
    handler = Closing()
    driver = greeted(handler, tls_options())
    run(driver, b"EHLO c.example\r\nSTARTTLS\r\n")
    driver.timed_out()
    assert run(driver) == (b"", CLOSED)
    assert handler.names() == ["disconnect"]


def test_tls_started_after_starttls() -> None:
    handler = Closing()
    driver = greeted(handler, tls_options())
    run(driver, b"EHLO c.example\r\nSTARTTLS\r\n")
    driver.tls_started(TLS)
    sent, step = run(driver)
    assert (sent, step) == (b"", NEED_DATA)  # no new greeting after STARTTLS
    assert handler.calls == [("tls_started", (TLS,))]
    assert driver.session.tls == TLS and not driver.session.implicit_tls
    assert driver.timeout == 9
    sent, _ = run(driver, b"MAIL FROM:<alice@example.org>\r\n")
    assert sent.startswith(b"503 ")  # the EHLO before TLS is forgotten
    sent, _ = run(driver, b"EHLO c.example\r\n")
    assert sent.startswith(b"250-") and b"STARTTLS" not in sent
    with pytest.raises(RuntimeError, match="no TLS handshake was due"):
        driver.tls_started(TLS)


def test_implicit_tls_handshakes_before_the_greeting() -> None:
    handler = Closing()
    driver = new_driver(handler, tls_options(), implicit_tls=True)
    assert driver.next_step() is START_TLS
    assert driver.data_to_send() == b""
    assert driver.timeout == 3
    driver.tls_started(TLS)
    sent, step = run(driver)
    assert (sent, step) == (GREETING, NEED_DATA)
    assert handler.calls == []  # nothing to reset: tls_started is not called
    assert driver.session.tls == TLS and driver.session.implicit_tls
    sent, _ = run(driver, b"EHLO c.example\r\n")
    assert sent.startswith(b"250-") and b"STARTTLS" not in sent


def test_implicit_tls_failed_closes_without_a_greeting() -> None:
    handler = Closing()
    driver = new_driver(handler, tls_options(), implicit_tls=True)
    assert driver.next_step() is START_TLS
    driver.tls_failed("no shared cipher")
    assert run(driver) == (b"", CLOSED)
    assert handler.names() == ["disconnect"]  # no greeting, no tls_started; disconnect as for every session


# -- a graceful shutdown ---------------------------------------------------------------------


def test_request_stop_when_idle_says_421_at_once() -> None:
    handler = Closing()
    driver = greeted(handler)
    run(driver, b"EHLO c.example\r\n")
    assert driver.idle
    assert driver.request_stop() is True
    assert run(driver) == (SHUTTING_DOWN, CLOSED)
    assert handler.names() == ["disconnect"]


def test_request_stop_in_a_transaction_waits_for_its_end() -> None:
    handler = Closing()
    driver = greeted(handler)
    run(driver, b"EHLO c.example\r\nMAIL FROM:<alice@example.org>\r\n")
    assert not driver.idle
    assert driver.request_stop() is False
    sent, step = run(driver, b"RCPT TO:<bob@example.net>\r\nDATA\r\n" + ON_THE_WIRE[:30])
    assert step is NEED_DATA and replies(sent) == [b"250 2.1.5 OK", b"354 End data with <CR><LF>.<CR><LF>"]
    assert driver.request_stop() is False  # asked twice: still when idle
    sent, step = run(driver, ON_THE_WIRE[30:])
    assert (sent, step) == (b"250 2.0.0 OK\r\n" + SHUTTING_DOWN, CLOSED)
    assert handler.names() == ["message", "disconnect"]


def test_request_stop_forced_says_421_even_in_a_transaction() -> None:
    handler = Closing()
    driver = greeted(handler)
    run(driver, TRANSACTION + b"Subject: x\r\n")
    assert driver.request_stop() is False
    assert run(driver, b"more\r\n") == (b"", NEED_DATA)
    assert driver.request_stop(force=True) is True
    assert run(driver) == (SHUTTING_DOWN, CLOSED)
    assert handler.names() == ["message_aborted", "disconnect"]


@pytest.mark.parametrize("command", [b"RSET", b"EHLO again.example", b"HELO again.example"])
def test_rset_helo_or_ehlo_between_bdat_chunks_abort_the_message(command: bytes) -> None:
    """RFC 3030 lets a client end a chunked message with RSET (or start over with HELO/EHLO) between chunks."""

    class Chunks(Spy):
        def data_start(self, session: Session) -> None:
            self.record("data_start")

        def message_aborted(self, session: Session, reply: smtpwire.Reply | None) -> None:
            self.record("message_aborted", reply)

        def message(self, session: Session, envelope: Any) -> None:
            self.record("message", bytes(envelope.content))

    handler = Chunks()
    driver = greeted(handler)
    chunk = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 6\r\nHello!"
    sent, step = run(driver, chunk + command + b"\r\n")
    assert step is NEED_DATA and replies(sent)[-2] == b"250 2.0.0 6 octets received"
    assert replies(sent)[-1].startswith(b"250 ")  # RSET, HELO or EHLO answered, the session goes on
    assert handler.names() == ["data_start", "message_aborted"]
    sent, step = run(driver, b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 3 LAST\r\nNew")
    assert replies(sent) == [b"250 2.1.0 OK", b"250 2.1.5 OK", b"250 2.0.0 OK"]
    assert handler.calls[-1] == ("message", (b"New",))  # the first message's chunk is gone with it
