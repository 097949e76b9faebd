"""An SMTP server on asyncio's Protocol API (no streams, no asyncio ssl=): MemoryBIOSession does SMTP and TLS.

Run it: python memorybio_asyncio.py --port 8025 --cert cert.pem --key key.pem
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import ssl

from smtpwire_handler.kit import ClientCounter, too_many_connections
from smtpwire_memorybio import Envelope, Handler, MemoryBIOSession, ServerOptions, Session

log = logging.getLogger("smtpwire.memorybio")
READ_SIZE = 64 * 1024


@dataclasses.dataclass
class Sessions:
    """The open sessions of one server: for the session limits and the graceful shutdown."""

    clients: ClientCounter
    open: set[SMTPProtocol] = dataclasses.field(default_factory=set)
    stopping: bool = False
    all_closed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    buffer: bytearray = dataclasses.field(default_factory=lambda: bytearray(READ_SIZE))


_servers: dict[asyncio.Server, Sessions] = {}


class SMTPProtocol(asyncio.BufferedProtocol):
    """One connection: received bytes go into the MemoryBIOSession, what it returns goes out.

    Reads go into one ``READ_SIZE`` buffer the server's sessions share (the
    loop runs one callback at a time); asyncio's plain Protocol would read
    up to 256 KiB at a time, each read a new object of that size.

    Flow control keeps memory bounded: while the session is ``flushing`` (it
    holds received bytes until its replies are written) and while the
    transport's buffer is over its high-water mark (``pause_writing``),
    nothing more is read, so a client that sends without reading its
    replies is held back.
    """

    smtp: MemoryBIOSession
    transport: asyncio.Transport

    def __init__(self, handler: Handler, options: ServerOptions, sessions: Sessions, tls: bool) -> None:
        self.handler, self.options, self.sessions, self.tls = handler, options, sessions, tls
        self.timer: asyncio.TimerHandle | None = None
        self.writing = True  # no pause_writing in force
        self.client: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sessions, peer = self.sessions, transport.get_extra_info("peername")
        if sessions.stopping or len(sessions.open) >= self.options.max_sessions:
            self.refuse(peer, f"{len(sessions.open)} sessions already")
            return
        self.client = self.options.counted_client(peer)
        if not sessions.clients.add(self.client):
            self.refuse(peer, f"{self.options.max_sessions_per_client} sessions from {self.client} already")
            return
        sessions.open.add(self)
        sessions.all_closed.clear()
        self.smtp = MemoryBIOSession(
            self.handler, self.options, implicit_tls=self.tls, peer=peer, local=transport.get_extra_info("sockname")
        )
        self.write(self.smtp.start())

    def refuse(self, peer: object, reason: str) -> None:
        log.warning("refusing a connection from %s: %s", peer, reason)
        if not self.tls:  # on a TLS port a plaintext 421 would be noise: just close
            self.transport.write(too_many_connections(self.options))
        self.transport.close()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.sessions.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.write(self.smtp.receive(bytes(self.sessions.buffer[:nbytes])))
        self.go_on()

    def eof_received(self) -> None:
        self.write(self.smtp.receive(b""))  # after what the session still holds

    def go_on(self) -> None:
        """Let the session answer what it holds while the client takes the replies; read again after that."""
        while self.smtp.flushing and self.writing:
            self.write(self.smtp.resume())
        if self.smtp.flushing:
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        self.writing = False
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing = True
        self.go_on()
        if not self.smtp.flushing and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self not in self.sessions.open:  # refused in connection_made
            return
        if self.timer is not None:
            self.timer.cancel()
        if not self.smtp.closed:  # the peer vanished: the session still ends (closing hooks)
            self.smtp.receive(b"")
        self.sessions.open.discard(self)
        self.sessions.clients.remove(self.client)
        if not self.sessions.open:
            self.sessions.all_closed.set()

    def stop(self) -> None:
        """421 4.3.2 and close."""
        self.write(self.smtp.shutdown())

    def write(self, data: bytes) -> None:
        """Write what the session returned, then close, or stop, or rearm the read timer."""
        if data:
            self.transport.write(data)
        if self.timer is not None:
            self.timer.cancel()
        if self.smtp.closed:
            self.transport.close()
        elif self.sessions.stopping and self.smtp.idle:
            self.stop()
        else:
            self.timer = asyncio.get_running_loop().call_later(self.smtp.timeout, self.timed_out)

    def timed_out(self) -> None:
        if not self.writing:  # the client does not take its replies: a 421 would never reach it
            log.info("session %s: the client does not take its replies, dropping it", self.smtp.session.id)
            self.transport.abort()
            return
        self.write(self.smtp.timed_out())


async def start_server(
    handler: Handler, options: ServerOptions, host: str, port: int, *, tls: bool = False
) -> asyncio.Server:
    """Listen on ``host:port``; ``tls=True`` serves implicit TLS (RFC 8314) through MemoryBIOSession."""
    if tls and options.tls_context is None:
        raise ValueError("tls=True needs options.tls_context")
    sessions = Sessions(ClientCounter(options.max_sessions_per_client))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTPProtocol(handler, options, sessions, tls), host, port)
    _servers[server] = sessions
    return server


async def shutdown(server: asyncio.Server, grace: float) -> None:
    """Stop accepting; idle sessions get 421 4.3.2 now, the others when idle or after ``grace`` seconds."""
    sessions = _servers.pop(server)
    sessions.stopping = True
    server.close()
    for protocol in [p for p in sessions.open if p.smtp.idle]:
        protocol.stop()
    if sessions.open:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(sessions.all_closed.wait(), grace)
    for protocol in list(sessions.open):
        protocol.stop()


class Printer(Handler):
    def message(self, session: Session, envelope: Envelope) -> None:
        print(f"From {envelope.mail_from} to {', '.join(envelope.rcpt_tos)} via {session.peer_host}:", flush=True)
        print(envelope.content.decode(errors="replace"), flush=True)


async def serve(options: ServerOptions, host: str, port: int) -> None:
    server = await start_server(Printer(), options, host, port)
    print("serving SMTP on", *(s.getsockname()[:2] for s in server.sockets), flush=True)
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        await shutdown(server, options.shutdown_grace)


def main() -> None:
    parser = argparse.ArgumentParser(description="A MemoryBIO SMTP server on asyncio that prints every message.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--cert", help="PEM certificate chain: offer STARTTLS")
    parser.add_argument("--key", help="PEM private key (default: inside --cert)")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(ServerOptions(tls_context=context), args.host, args.port))


if __name__ == "__main__":
    main()
