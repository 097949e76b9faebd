"""What every adapter promises beyond the conversation: limits, timeouts, shutdown, hook failures."""

from __future__ import annotations

import smtplib
import socket
import threading
import time

import pytest

from smtpwire import Reply
from smtpwire_handler import Reject, ServerOptions, Session
from tests import certs
from tests.servers import KINDS, Recorder, running
from tests.test_interop import MESSAGE, ON_THE_WIRE, TIMEOUT, assert_closed, read_reply

pytestmark = pytest.mark.parametrize("kind", KINDS)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=TIMEOUT)
    assert read_reply(sock).startswith(b"220 ")
    return sock


def command(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return read_reply(sock)


def test_sessions_over_the_limit_get_421(kind: str) -> None:
    with running(kind, Recorder(), ServerOptions(max_sessions=2)) as server:
        first, second = connect(server.address), connect(server.address)
        with socket.create_connection(server.address, timeout=TIMEOUT) as third:
            assert read_reply(third) == b"421 4.7.0 localhost Too many connections, try again later\r\n"
            assert_closed(third)
        first.close()
        second.sendall(b"QUIT\r\n")
        assert read_reply(second).startswith(b"221 ")
        second.close()
        deadline = time.monotonic() + TIMEOUT  # the freed places are served again
        while time.monotonic() < deadline:
            with socket.create_connection(server.address, timeout=TIMEOUT) as again:
                if read_reply(again).startswith(b"220 "):
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("the server never served again after sessions ended")


def test_command_timeout_gives_421_and_closes(kind: str) -> None:
    options = ServerOptions(command_timeout=0.5, data_timeout=5)
    with running(kind, Recorder(), options) as server, connect(server.address) as sock:
        started = time.monotonic()
        assert read_reply(sock) == b"421 4.4.2 localhost Timeout, closing connection\r\n"
        assert 0.3 < time.monotonic() - started < TIMEOUT
        assert_closed(sock)


def test_data_timeout_gives_421_and_the_message_is_aborted(kind: str) -> None:
    recorder = Recorder()
    options = ServerOptions(command_timeout=5, data_timeout=0.5)
    with running(kind, recorder, options) as server, connect(server.address) as sock:
        for line in (b"EHLO c.example", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>", b"DATA"):
            command(sock, line)
        sock.sendall(b"Subject: never finished\r\n")
        assert read_reply(sock) == b"421 4.4.2 localhost Timeout, closing connection\r\n"
        assert_closed(sock)
    assert recorder.messages == []
    assert "message_aborted" in recorder.calls and recorder.calls[-1] == "disconnect"


def test_stalled_tls_handshake_is_bounded(kind: str) -> None:
    options = ServerOptions(tls_context=certs.server_context(), tls_handshake_timeout=0.5)
    with running(kind, Recorder(), options) as server, connect(server.address) as sock:
        command(sock, b"EHLO c.example")
        assert command(sock, b"STARTTLS").startswith(b"220 ")
        started = time.monotonic()
        assert_closed(sock)  # never sent a ClientHello
        assert time.monotonic() - started < TIMEOUT


def test_graceful_shutdown_lets_a_transaction_finish(kind: str) -> None:
    recorder = Recorder()
    with running(kind, recorder, ServerOptions()) as server:
        idle = connect(server.address)
        command(idle, b"EHLO idle.example")
        busy = connect(server.address)
        for line in (b"EHLO busy.example", b"MAIL FROM:<alice@example.org>", b"RCPT TO:<bob@example.net>"):
            assert command(busy, line).startswith(b"250")
        assert command(busy, b"DATA").startswith(b"354")
        busy.sendall(ON_THE_WIRE[:20])
        stopper = threading.Thread(target=server.stop, args=(TIMEOUT,))
        stopper.start()
        assert read_reply(idle) == b"421 4.3.2 localhost Service shutting down\r\n"
        assert_closed(idle)
        busy.sendall(ON_THE_WIRE[20:])
        replies = read_reply(busy)
        if replies.count(b"\r\n") < 2:
            replies += read_reply(busy)
        assert replies == b"250 2.0.0 OK\r\n421 4.3.2 localhost Service shutting down\r\n"
        assert_closed(busy)
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
        with pytest.raises(OSError):
            socket.create_connection(server.address, timeout=TIMEOUT).close()
    assert recorder.messages[0].content == MESSAGE


class Picky(Recorder):
    """Refuses from inside the stream and answers with things that are not replies."""

    def data_chunk(self, session: Session, data: bytes) -> None:
        if b"VIRUS" in data:
            raise Reject(Reply(554, "Message refused: it carries a virus", (5, 7, 1)))
        super().data_chunk(session, data)

    def vrfy(self, session: Session, argument: str) -> Reply | None:
        return "yes, of course" if argument == "text" else Reply(354, "not an answer to VRFY")  # type: ignore[return-value]


def test_reject_from_data_chunk_answers_at_the_end_of_data(kind: str) -> None:
    recorder = Picky()
    with running(kind, recorder, ServerOptions()) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@example.org", ["bob@example.net"], b"Subject: x\r\n\r\nVIRUS\r\n")
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            554,
            b"5.7.1 Message refused: it carries a virus",
        )
        assert "message_aborted" in recorder.calls
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)  # the session goes on
    assert [m.content for m in recorder.messages] == [MESSAGE]


def test_a_hook_answer_that_is_not_a_valid_reply_gives_451(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    with running(kind, Picky(), ServerOptions()) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        assert client.verify("text")[0] == 451
        assert client.verify("other")[0] == 451
        assert client.noop()[0] == 250
    assert sum("vrfy" in record.getMessage() for record in caplog.records) == 2


def test_a_failing_greeting_hook_gives_421(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    recorder.fail_on.add("connect")
    with running(kind, recorder, ServerOptions()) as server:
        with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
            assert read_reply(sock) == b"421 4.3.0 localhost Service not available, local error\r\n"
            assert_closed(sock)
        recorder.fail_on.clear()
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            assert client.noop()[0] == 250
    assert any("connect" in record.getMessage() for record in caplog.records)


def test_ipv6_loopback(kind: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    recorder = Recorder()
    with running(kind, recorder, ServerOptions(), host="::1") as server:
        assert server.address[0] == "::1"
        with smtplib.SMTP(server.address[0], server.address[1], timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert recorder.messages[0].content == MESSAGE
