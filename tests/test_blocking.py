"""The blocking adapter against smtplib and raw sockets on 127.0.0.1 (and ::1).

Every socket has a timeout and every test has a time limit; messages are
checked byte for byte as the handler's ``message`` hook received them.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import signal
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import smtpwire
import smtpwire_blocking
from smtpwire_blocking import Envelope, Server, ServerOptions, Session
from smtpwire_handler import AsyncHandler
from tests import certs
from tests.servers import Recorder
from tests.test_interop import MESSAGE, assert_closed, read_reply

TIMEOUT = 10.0  # every socket operation of a client
TEST_LIMIT = 60  # seconds, a whole test including the server's shutdown
LOCALHOST = "127.0.0.1"

SHUTTING_DOWN = b"421 4.3.2 localhost Service shutting down\r\n"


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    """Fail a test that hangs instead of hanging the run (SIGALRM interrupts a blocked recv)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"the test took more than {TEST_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, TEST_LIMIT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def tls_options(**changes: Any) -> ServerOptions:
    return ServerOptions(tls_context=certs.server_context(), **changes)


@contextlib.contextmanager
def serving(
    handler: smtpwire_blocking.Handler,
    options: ServerOptions | None = None,
    *,
    host: str = LOCALHOST,
    implicit_tls: bool = False,
) -> Iterator[Server]:
    """A started server on free ports; shut down (grace 1 s) when the block ends."""
    tls_listen: Sequence[tuple[str, int]] = [(host, 0)] if implicit_tls else []
    server = Server(handler, options, listen=[(host, 0)], tls_listen=tls_listen).start()
    try:
        yield server
    finally:
        server.shutdown(grace=1.0)


def command(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return read_reply(sock)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=TIMEOUT)
    assert read_reply(sock).startswith(b"220 ")
    return sock


def eventually(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.01)


def starttls_raw(address: tuple[str, int]) -> socket.socket:
    """A raw client that said EHLO and STARTTLS and got the 220; the handshake is the test's."""
    sock = connect(address)
    assert b"STARTTLS" in command(sock, b"EHLO client.example")
    assert command(sock, b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
    return sock


def blocking_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "smtpwire.blocking" and r.levelno == logging.WARNING]


def delivers(address: tuple[str, int], recorder: Recorder) -> None:
    """A fresh client can still send a message (the server survived whatever came before)."""
    before = len(recorder.messages)
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert recorder.messages[before].content == MESSAGE


class Tracker(Recorder):
    """Also keeps what the session looked like when each message arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: list[tuple[bool, object]] = []

    def message(self, session: Session, envelope: Envelope) -> None:
        self.sessions.append((session.implicit_tls, session.peer))
        super().message(session, envelope)


# -- plain, STARTTLS, implicit TLS ------------------------------------------------------


def test_a_plain_session_delivers_the_message_byte_for_byte() -> None:
    tracker = Tracker()
    with serving(tracker) as server, smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
        code, features = client.ehlo("client.example")
        assert code == 250 and b"STARTTLS" not in features.upper()  # no TLS context, no STARTTLS
        assert client.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"], MESSAGE) == {}
        assert client.sock is not None
        local = client.sock.getsockname()
    (message,) = tracker.messages
    assert message.content == MESSAGE
    assert (message.mail_from, message.rcpt_tos) == ("alice@example.org", ("bob@example.net", "carol@example.net"))
    assert message.helo_name == "client.example" and message.tls is None
    assert tracker.sessions == [(False, local)]
    eventually(lambda: "disconnect" in tracker.calls)
    assert tracker.calls[0] == "connect" and tracker.calls.count("disconnect") == 1


def test_starttls_delivers_byte_for_byte_and_the_handler_sees_the_tls_facts(recorder: Recorder) -> None:
    with serving(recorder, tls_options()) as server, smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls")
        assert client.starttls(context=certs.client_context())[0] == 220
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        tls_socket = client.sock
        assert isinstance(tls_socket, ssl.SSLSocket)
        version, cipher = tls_socket.version(), tls_socket.cipher()
    (message,) = recorder.messages
    assert message.content == MESSAGE
    assert message.tls is not None
    assert message.tls.version == version and message.tls.version in ("TLSv1.2", "TLSv1.3")
    assert cipher is not None and message.tls.cipher == cipher[0] and message.tls.bits == cipher[2]
    assert message.tls.peer_certificate is None  # the client sent none
    assert "tls_started" in recorder.calls


def test_ehlo_after_tls_no_longer_offers_starttls(recorder: Recorder) -> None:
    with serving(recorder, tls_options()) as server, smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
        client.starttls(context=certs.client_context())
        code, features = client.ehlo("client.example")
        assert code == 250 and b"STARTTLS" not in features.upper()
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")


def test_the_session_starts_over_after_tls(recorder: Recorder) -> None:
    with serving(recorder, tls_options()) as server, smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
        client.ehlo("before.example")
        client.starttls(context=certs.client_context())
        assert client.docmd("MAIL", "FROM:<alice@example.org>")[0] == 503  # no EHLO since the handshake
        assert client.ehlo("after.example")[0] == 250
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert recorder.messages[0].helo_name == "after.example"


def test_smtp_ssl_on_an_implicit_tls_listener() -> None:
    tracker = Tracker()
    with serving(tracker, tls_options(), implicit_tls=True) as server:
        (address,) = server.tls_addresses
        assert address != server.addresses[0]
        with smtplib.SMTP_SSL(*address, timeout=TIMEOUT, context=certs.client_context()) as client:
            code, features = client.ehlo("client.example")
            assert code == 250 and b"STARTTLS" not in features.upper()
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    (message,) = tracker.messages
    assert message.content == MESSAGE
    assert message.tls is not None and message.tls.version in ("TLSv1.2", "TLSv1.3")
    assert tracker.sessions[0][0] is True  # session.implicit_tls
    assert "tls_started" not in tracker.calls  # nothing was reset: TLS came before the greeting


def test_plaintext_pipelined_behind_starttls_is_never_executed(recorder: Recorder) -> None:
    """CVE-2011-0411: ``STARTTLS\\r\\nNOOP\\r\\n`` in one send; the first reply over TLS answers the new EHLO."""
    with serving(recorder, tls_options()) as server, connect(server.addresses[0]) as raw:
        assert b"STARTTLS" in command(raw, b"EHLO client.example")
        raw.sendall(b"STARTTLS\r\nNOOP\r\n")
        assert read_reply(raw) == b"220 2.0.0 Ready to start TLS\r\n"
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"EHLO client.example\r\n")
            ehlo = read_reply(tls)
            assert ehlo.startswith(b"250-localhost\r\n"), ehlo  # not the NOOP's 250 2.0.0 OK
            assert b"STARTTLS" not in ehlo
            assert command(tls, b"QUIT").startswith(b"221 ")


# -- failures ----------------------------------------------------------------------------

FAILURES = ("garbage", "client-abort", "wrong-version", "stalled")


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_handshake_is_one_warning_and_the_server_goes_on(
    failure: str, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    context = certs.server_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    options = ServerOptions(tls_context=context, tls_handshake_timeout=0.5)
    with serving(recorder, options) as server:
        raw = starttls_raw(server.addresses[0])
        if failure == "garbage":
            raw.sendall(b"this is not a TLS ClientHello\r\n" * 4)
            assert_closed(raw)
        elif failure == "client-abort":
            raw.close()
        elif failure == "wrong-version":
            old = certs.client_context()
            old.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(ssl.SSLError):
                old.wrap_socket(raw, server_hostname="localhost")
        else:
            started = time.monotonic()
            assert_closed(raw)  # never sends a ClientHello
            assert time.monotonic() - started < TIMEOUT
        raw.close()
        eventually(lambda: bool(blocking_warnings(caplog)))
        eventually(lambda: "disconnect" in recorder.calls)
        delivers(server.addresses[0], recorder)
    (warning,) = blocking_warnings(caplog)
    assert "TLS handshake" in warning.getMessage() and "\n" not in warning.getMessage()
    assert warning.exc_info is None  # one line, no traceback


def test_a_failed_implicit_tls_handshake_is_one_warning(recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    with serving(recorder, tls_options(), implicit_tls=True) as server:
        with socket.create_connection(server.tls_addresses[0], timeout=TIMEOUT) as raw:
            raw.sendall(b"\x16\x03\x01\x00\x05hello, not TLS at all")
            assert_closed(raw)
        eventually(lambda: bool(blocking_warnings(caplog)))
        with smtplib.SMTP_SSL(*server.tls_addresses[0], timeout=TIMEOUT, context=certs.client_context()) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert len(blocking_warnings(caplog)) == 1
    assert recorder.messages[0].content == MESSAGE


def test_an_adapter_error_ends_that_session_only_and_is_logged_once(
    recorder: Recorder, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smtpwire_blocking._session

    def broken(tls: object) -> object:
        raise RuntimeError("tls_info broke")

    monkeypatch.setattr(smtpwire_blocking._session, "tls_info", broken)
    with serving(recorder, tls_options()) as server:
        raw = starttls_raw(server.addresses[0])
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            assert_closed(tls)
        eventually(lambda: "disconnect" in recorder.calls)
        delivers(server.addresses[0], recorder)
    (error,) = [r for r in caplog.records if r.name == "smtpwire.blocking" and r.levelno >= logging.ERROR]
    assert error.exc_info is not None and "tls_info broke" in str(error.exc_info[1])


# -- limits and timeouts ---------------------------------------------------------------------

TOO_MANY = b"421 4.7.0 localhost Too many connections, try again later\r\n"


def test_a_client_over_max_sessions_gets_421_and_a_freed_place_is_served_again(recorder: Recorder) -> None:
    with serving(recorder, ServerOptions(max_sessions=2)) as server:
        address = server.addresses[0]
        first, second = connect(address), connect(address)
        with socket.create_connection(address, timeout=TIMEOUT) as third:
            assert read_reply(third) == TOO_MANY
            assert_closed(third)
        assert server.sessions == 2
        assert command(first, b"QUIT").startswith(b"221 ")
        first.close()
        eventually(lambda: server.sessions == 1)
        with connect(address) as again:
            assert command(again, b"QUIT").startswith(b"221 ")
        second.close()


def test_a_tls_client_over_max_sessions_gets_421_after_the_handshake(recorder: Recorder) -> None:
    with serving(recorder, tls_options(max_sessions=1), implicit_tls=True) as server, connect(server.addresses[0]):
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP_SSL(*server.tls_addresses[0], timeout=TIMEOUT, context=certs.client_context())
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            421,
            b"4.7.0 localhost Too many connections, try again later",
        )


def test_a_silent_client_gets_421_4_4_2_after_the_command_timeout(recorder: Recorder) -> None:
    with serving(recorder, ServerOptions(command_timeout=0.5, data_timeout=5)) as server:
        with connect(server.addresses[0]) as sock:
            started = time.monotonic()
            assert read_reply(sock) == b"421 4.4.2 localhost Timeout, closing connection\r\n"
            assert 0.4 < time.monotonic() - started < TIMEOUT
            assert_closed(sock)
        eventually(lambda: "disconnect" in recorder.calls)


def test_a_stalled_message_gets_421_after_the_data_timeout_and_is_aborted(recorder: Recorder) -> None:
    with serving(recorder, ServerOptions(command_timeout=5, data_timeout=0.5)) as server:
        with connect(server.addresses[0]) as sock:
            for line in (b"EHLO c.example", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>", b"DATA"):
                command(sock, line)
            sock.sendall(b"Subject: never finished\r\n")
            assert read_reply(sock) == b"421 4.4.2 localhost Timeout, closing connection\r\n"
            assert_closed(sock)
        eventually(lambda: "disconnect" in recorder.calls)
    assert recorder.messages == [] and "message_aborted" in recorder.calls


def test_a_client_that_never_reads_does_not_pin_its_thread(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpwire.blocking")
    with serving(recorder, ServerOptions(command_timeout=1.0)) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2.0)
        with sock:
            sock.connect(server.addresses[0])
            burst = b"EHLO client.example\r\n" * 5000  # each answered by a multi-line 250
            with contextlib.suppress(OSError):  # the server stops reading, then closes
                for _ in range(200):
                    sock.sendall(burst)
            eventually(lambda: server.sessions == 0, timeout=20)
    assert "disconnect" in recorder.calls
    assert any("cannot send" in r.getMessage() and "timed out" in r.getMessage() for r in caplog.records)


# -- shutdown ---------------------------------------------------------------------------------


def test_the_context_manager_starts_and_shuts_down(recorder: Recorder) -> None:
    with Server(recorder, listen=[(LOCALHOST, 0)]) as server:
        host, port = server.addresses[0]
        (acceptor,) = [t for t in threading.enumerate() if t.name == f"smtpwire-accept-plain-{host}:{port}"]
        assert acceptor.daemon
        with smtplib.SMTP(host, port, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            (session,) = [t for t in threading.enumerate() if t.name.startswith("smtpwire-session-")]
            assert session.daemon
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert recorder.messages[0].content == MESSAGE
    assert not acceptor.is_alive() and not session.is_alive()
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=TIMEOUT).close()


def test_serve_forever_returns_after_shutdown_from_another_thread(recorder: Recorder) -> None:
    server = Server(recorder, listen=[(LOCALHOST, 0)]).start()
    runner = threading.Thread(target=server.serve_forever, name="test-serve-forever")
    runner.start()
    with smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
        assert client.noop()[0] == 250
        server.shutdown(grace=TIMEOUT)  # the idle session is told 421 and closed
        assert client.noop() == (421, b"4.3.2 localhost Service shutting down")
    runner.join(TIMEOUT)
    assert not runner.is_alive()
    server.shutdown()  # again: nothing left to do


def test_ctrl_c_in_serve_forever_shuts_down_gracefully(recorder: Recorder) -> None:
    server = Server(recorder, listen=[(LOCALHOST, 0)])
    threading.Timer(0.3, _thread.interrupt_main).start()
    server.serve_forever()  # starts it; returns after the KeyboardInterrupt's graceful shutdown
    with pytest.raises(OSError):
        socket.create_connection(server.addresses[0], timeout=TIMEOUT).close()


# -- addresses and settings -----------------------------------------------------------------


def has_ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return socket.has_ipv6


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback_plain_and_implicit_tls(recorder: Recorder) -> None:
    with serving(recorder, tls_options(), host="::1", implicit_tls=True) as server:
        assert server.addresses[0][0] == "::1" and server.tls_addresses[0][0] == "::1"
        with smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
            client.starttls(context=certs.client_context())
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        with smtplib.SMTP_SSL(*server.tls_addresses[0], timeout=TIMEOUT, context=certs.client_context()) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert [m.content for m in recorder.messages] == [MESSAGE, MESSAGE]
    assert all(m.tls is not None for m in recorder.messages)


def test_bad_settings_are_explained(recorder: Recorder) -> None:
    with pytest.raises(ValueError, match=r"implicit TLS listeners need a TLS certificate \(options.tls_context\)"):
        Server(recorder, tls_listen=[(LOCALHOST, 0)])
    with pytest.raises(ValueError, match="at least one listener"):
        Server(recorder, listen=[])
    with pytest.raises(ValueError, match="port from 0 to 65535"):
        Server(recorder, listen=[(LOCALHOST, 70000)])
    with pytest.raises(ValueError, match=r"\(host, port\) pairs"):
        Server(recorder, listen=[(LOCALHOST,)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="plain hooks"):
        Server(AsyncHandler())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="handler must be"):
        Server(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="options must be"):
        Server(recorder, {"max_sessions": 2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_sessions must be an integer of at least 1"):
        ServerOptions(max_sessions=0)
    with pytest.raises(ValueError, match="require_tls needs a tls_context"):
        ServerOptions(config=smtpwire.ServerConfig(require_tls=True))
    with socket.create_server((LOCALHOST, 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            Server(recorder, listen=[(LOCALHOST, 0), (LOCALHOST, port)]).start()


class AsyncMessage(smtpwire_blocking.Handler):
    async def message(self, session: Session, envelope: Envelope) -> None:  # type: ignore[override]
        pass


def test_a_coroutine_hook_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="plain hooks"):
        Server(AsyncMessage())


def test_a_server_starts_once(recorder: Recorder) -> None:
    with serving(recorder) as server, pytest.raises(RuntimeError, match="starts once"):
        server.start()


class StopsFromAHook(Recorder):
    server: Server

    def vrfy(self, session: Session, argument: str) -> None:
        self.server.shutdown()


def test_shutdown_from_a_hook_is_refused_instead_of_deadlocking(caplog: pytest.LogCaptureFixture) -> None:
    handler = StopsFromAHook()
    with serving(handler) as server, smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
        handler.server = server
        assert client.verify("someone")[0] == 451
        assert client.noop()[0] == 250
    (error,) = [r for r in caplog.records if r.name == "smtpwire.blocking" and r.levelno == logging.ERROR]
    assert error.exc_info is not None and "another thread" in str(error.exc_info[1])


def test_descriptors_above_fd_setsize_are_served(recorder: Recorder) -> None:
    """A busy server's sockets get numbers above 1024, where ``select.select`` would refuse them."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200 and (hard == resource.RLIM_INFINITY or hard >= 1200):
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    elif soft < 1200:
        pytest.skip("the descriptor limit is too low")
    filler: list[socket.socket] = []
    try:
        while not filler or filler[-1].fileno() < 1030:
            filler.append(socket.socket())
        with serving(recorder, tls_options()) as server, smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
            client.starttls(context=certs.client_context())
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    finally:
        for sock in filler:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert recorder.messages[0].content == MESSAGE
