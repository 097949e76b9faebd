"""One SMTP session on a blocking socket, in its own thread."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import time

import smtpwire
from smtpwire_handler import Address, Handler, ServerOptions, Session, SessionDriver, run_hook, tls_info

log = logging.getLogger("smtpwire.blocking")
transcript = logging.getLogger("smtpwire.transcript")

_GONE = (ConnectionError, ssl.SSLError, OSError)


class Stopped(Exception):
    """``stop()`` interrupted the wait for the client."""


class BlockingSession:
    """Runs one connection until it closes; ``stop()`` (from any thread) asks it to say 421 4.3.2.

    The session reads only when the core needs bytes, so after STARTTLS no
    byte of the client's handshake is read as plaintext.  Waiting for the
    client is a ``select`` on the socket and a wake-up pipe, so ``stop()``
    interrupts it without polling.
    """

    def __init__(
        self, sock: socket.socket, handler: Handler, options: ServerOptions, *, implicit_tls: bool = False
    ) -> None:
        self.sock = sock
        self.handler = handler
        self.options = options
        self.implicit_tls = implicit_tls
        self.conn = options.new_connection(implicit_tls=implicit_tls)
        peer, local = _addresses(sock)
        self.session = Session(self.conn, peer=peer, local=local)
        self.driver = SessionDriver(self.session, log)
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_write.setblocking(False)

    def stop(self, *, force: bool = False) -> None:
        """Close at the next moment the session is idle (or at once with ``force``); any thread may call it."""
        if self.driver.request_stop(force=force):
            with contextlib.suppress(OSError):  # already woken, or the session already ended
                self._wake_write.send(b"!")

    def run(self) -> None:
        log.info("session %s: connection from %s", self.session.id, self.session.peer)
        try:
            if not self.implicit_tls or self._start_tls():
                self._converse()
        except Exception:
            log.exception("session %s: unexpected error", self.session.id)
        finally:
            for call in self.driver.closing_calls():
                run_hook(self.driver, self.handler, call)
            self.sock.close()
            self._wake_read.close()
            self._wake_write.close()
            log.info("session %s: closed", self.session.id)

    def _converse(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is smtpwire.NEED_DATA:
                if not self._flush() or not self._receive():
                    return
            elif isinstance(event, smtpwire.StartTLSRequested):
                if not self._flush() or not self._start_tls():
                    return
            elif isinstance(event, smtpwire.ConnectionClosed):
                self._flush()
                return
            elif isinstance(event, smtpwire.Sentinel):  # PAUSED: the driver answers every decision
                raise RuntimeError("the connection waits for a decision nobody will make")
            else:
                run_hook(self.driver, self.handler, self.driver.hook_for(event))

    def _receive(self) -> bool:
        """Feed the core the next bytes; False when the socket is gone."""
        timeout = self.options.read_timeout(self.conn)
        try:
            data = self._recv(timeout)
        except Stopped:
            self.conn.shutdown()
            return True
        except TimeoutError:
            log.info("session %s: timed out after %s s", self.session.id, timeout)
            self.conn.timed_out()
            return True
        except _GONE as error:
            log.info("session %s: connection lost: %r", self.session.id, error)
            return False
        if data:
            transcript.debug("session %s <<< %r", self.session.id, data[:1024])
        self.conn.receive_data(data)
        return True

    def _recv(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            if self.driver.should_stop:
                raise Stopped
            if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                break  # decrypted bytes are already waiting
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            readable, _, _ = select.select([self.sock, self._wake_read], [], [], remaining)
            if self._wake_read in readable:
                self._wake_read.recv(64)
            if self.sock in readable:
                break
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))  # a partial TLS record must not hang
        return self.sock.recv(65536)

    def _flush(self) -> bool:
        """Write what the core queued; False when the peer does not take it in time."""
        data = self.conn.data_to_send()
        if not data:
            return True
        transcript.debug("session %s >>> %r", self.session.id, data[:1024])
        try:
            self.sock.settimeout(self.options.command_timeout)
            self.sock.sendall(data)
        except _GONE as error:
            log.info("session %s: cannot send: %r", self.session.id, error)
            return False
        return True

    def _start_tls(self) -> bool:
        """Upgrade the live socket; on failure tell the core and end only this session."""
        context = self.options.tls_context
        assert context is not None
        try:
            tls = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
            self.sock = tls
            tls.settimeout(self.options.tls_handshake_timeout)
            tls.do_handshake()
        except _GONE as error:
            log.warning("session %s: TLS handshake with %s failed: %r", self.session.id, self.session.peer, error)
            if not self.implicit_tls:
                self.conn.tls_failed()
            return False
        info = tls_info(tls)
        log.info("session %s: TLS established: %s %s", self.session.id, info.version, info.cipher)
        run_hook(self.driver, self.handler, self.driver.tls_started(info))
        return True


def _addresses(sock: socket.socket) -> tuple[Address | None, Address | None]:
    """The peer's and our address; a peer that already left has none."""
    try:
        return sock.getpeername(), sock.getsockname()
    except OSError:
        return None, None
