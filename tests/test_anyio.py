"""The anyio adapter on its own: many sessions at once, a stream you own, bad settings."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

import smtpwire
import smtpwire_anyio
from smtpwire_handler import ServerOptions
from tests.servers import Recorder, as_async
from tests.test_interop import MESSAGE, ON_THE_WIRE

SESSIONS = 500
BACKENDS = ["asyncio", "trio"]


class Client:
    """A bare SMTP client on an anyio stream: one line out, one reply in."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)

    async def reply(self) -> bytes:
        lines = []
        while True:
            line = await self.reader.receive_until(b"\r\n", 1024)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\r\n".join(lines)

    async def command(self, line: bytes) -> bytes:
        await self.stream.send(line + b"\r\n")
        return await self.reply()


@pytest.mark.parametrize("backend", BACKENDS)
def test_five_hundred_concurrent_sessions(backend: str) -> None:
    recorder = Recorder()
    server = smtpwire_anyio.Server(
        as_async(recorder),
        ServerOptions(max_sessions=SESSIONS, max_sessions_per_client=None),
        listen=[("127.0.0.1", 0)],
    )
    all_connected = anyio.Event()
    connected = 0
    peak = 0

    async def client(number: int) -> None:
        nonlocal connected, peak
        async with await anyio.connect_tcp(*server.addresses[0]) as stream:
            smtp = Client(stream)
            assert (await smtp.reply()).startswith(b"220 ")
            assert (await smtp.command(b"EHLO c%d.example" % number)).startswith(b"250-")
            connected += 1
            if connected == SESSIONS:
                peak = server.sessions
                all_connected.set()
            await all_connected.wait()  # every session is open at the same time
            assert await smtp.command(b"MAIL FROM:<s%d@example.org>" % number) == b"250 2.1.0 OK"
            assert await smtp.command(b"RCPT TO:<bob@example.net>") == b"250 2.1.5 OK"
            assert (await smtp.command(b"DATA")).startswith(b"354 ")
            await stream.send(ON_THE_WIRE)
            assert await smtp.reply() == b"250 2.0.0 OK"
            assert (await smtp.command(b"QUIT")).startswith(b"221 ")

    async def main() -> None:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                await group.start(server.serve)
                async with anyio.create_task_group() as clients:
                    for number in range(SESSIONS):
                        clients.start_soon(client, number)
                await server.shutdown(grace=5)

    anyio.run(main, backend=backend)
    assert peak == SESSIONS
    assert len(recorder.messages) == SESSIONS
    assert {m.mail_from for m in recorder.messages} == {f"s{n}@example.org" for n in range(SESSIONS)}
    assert all(m.content == MESSAGE for m in recorder.messages)


class Inbox(smtpwire_anyio.AsyncHandler):
    """A native coroutine handler relying on the default hooks (data_chunk keeps the message)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bool, bytes]] = []
        self.disconnected = False

    async def message(self, session: smtpwire_anyio.Session, envelope: smtpwire_anyio.Envelope) -> None:
        self.messages.append((session.peer_host, session.esmtp, bytes(envelope.content)))

    async def disconnect(self, session: smtpwire_anyio.Session) -> None:
        self.disconnected = True


@pytest.mark.parametrize("backend", BACKENDS)
def test_handle_stream_serves_a_stream_you_own(backend: str) -> None:
    inbox = Inbox()

    async def main() -> None:
        with anyio.fail_after(30):
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as group:

                async def serve_one(stream: SocketStream) -> None:
                    await smtpwire_anyio.handle_stream(stream, inbox)
                    group.cancel_scope.cancel()

                group.start_soon(listener.serve, serve_one)
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    smtp = Client(stream)
                    await smtp.reply()
                    for line in (b"HELO c.example", b"MAIL FROM:<alice@example.org>", b"RCPT TO:<bob@example.net>"):
                        assert (await smtp.command(line)).startswith(b"250 ")
                    assert (await smtp.command(b"DATA")).startswith(b"354 ")
                    await stream.send(ON_THE_WIRE)
                    assert await smtp.reply() == b"250 2.0.0 OK"
                    assert (await smtp.command(b"QUIT")).startswith(b"221 ")
                    with pytest.raises(anyio.EndOfStream):
                        await stream.receive()  # the server closed its side

    anyio.run(main, backend=backend)
    assert inbox.messages == [("127.0.0.1", False, MESSAGE)]  # HELO: not ESMTP
    assert inbox.disconnected


def test_bad_settings_are_explained() -> None:
    with pytest.raises(ValueError, match="implicit TLS listeners need a TLS certificate"):
        smtpwire_anyio.Server(listen=[], tls_listen=[("127.0.0.1", 0)])
    with pytest.raises(ValueError, match="at least one listener"):
        smtpwire_anyio.Server(listen=[])
    with pytest.raises(ValueError, match="command_timeout must be a number of seconds"):
        ServerOptions(command_timeout=0)
    with pytest.raises(ValueError, match="max_sessions must be an integer of at least 1"):
        ServerOptions(max_sessions=0)
    with pytest.raises(ValueError, match="require_tls needs a tls_context"):
        ServerOptions(config=smtpwire.ServerConfig(require_tls=True))
    auth = (*smtpwire.STANDARD_EXTENSIONS, smtpwire.Auth())
    with pytest.raises(ValueError, match="the Auth extension is offered only over TLS and needs a tls_context"):
        ServerOptions(config=smtpwire.ServerConfig(extensions=auth))
    with pytest.raises(ValueError, match="require_auth needs the Auth extension"):
        ServerOptions(config=smtpwire.ServerConfig(require_auth=True))
    in_clear = smtpwire.ServerConfig(extensions=(smtpwire.Auth(require_tls=False),), require_auth=True)
    assert ServerOptions(config=in_clear).config is in_clear


def test_a_port_in_use_is_a_clear_error() -> None:
    async def main() -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await smtpwire_anyio.Server(listen=[("127.0.0.1", port)]).serve()
        await listener.aclose()

    anyio.run(main)
