"""The blocking adapter on its own: the context manager, serve_forever, bad settings."""

from __future__ import annotations

import smtplib
import socket
import threading

import pytest

import smtpwire_blocking
from smtpwire_handler import ServerOptions
from tests.servers import Recorder
from tests.test_interop import MESSAGE, TIMEOUT


def test_the_context_manager_starts_and_stops() -> None:
    recorder = Recorder()
    with smtpwire_blocking.Server(recorder, listen=[("127.0.0.1", 0)]) as server:
        with smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        assert server.sessions in (0, 1)
    assert recorder.messages[0].content == MESSAGE
    with pytest.raises(OSError):
        socket.create_connection(server.addresses[0], timeout=TIMEOUT).close()


def test_serve_forever_returns_after_shutdown_from_another_thread() -> None:
    server = smtpwire_blocking.Server(Recorder(), listen=[("127.0.0.1", 0)]).start()
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    with smtplib.SMTP(*server.addresses[0], timeout=TIMEOUT) as client:
        assert client.noop()[0] == 250
        server.shutdown(grace=TIMEOUT)  # the idle session is told 421 and closed
        assert client.noop() == (421, b"4.3.2 localhost Service shutting down")
    runner.join(TIMEOUT)
    assert not runner.is_alive()


def test_bad_settings_are_explained() -> None:
    with pytest.raises(ValueError, match="implicit TLS listeners need a TLS certificate"):
        smtpwire_blocking.Server(tls_listen=[("127.0.0.1", 0)])
    with pytest.raises(ValueError, match="at least one listener"):
        smtpwire_blocking.Server(listen=[])
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            smtpwire_blocking.Server(listen=[("127.0.0.1", port)], options=ServerOptions()).start()
