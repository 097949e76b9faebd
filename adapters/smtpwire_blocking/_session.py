"""One SMTP session on a blocking socket, run by one thread from greeting to close."""

from __future__ import annotations

import socket
import ssl
import time

import smtpwire
from smtpwire_handler import Address, Handler, ServerOptions, Session, SessionDriver, run_hook, tls_info

from ._log import log, transcript
from ._tls import HandshakeFailed, handshake
from ._wait import readable
from ._wakeup import Wakeup

_READ_SIZE = 65536


class _Stopped(Exception):
    """A graceful shutdown asked the session to close while it waited for the client."""


class BlockingSession:
    """Runs one accepted connection until it closes: call ``run()`` in the thread that owns it.

    The session reads only when the core asks for bytes, so after STARTTLS no
    byte of the client's handshake is ever read as plaintext.  Waiting for the
    client is a ``poll`` on the socket and a wake-up socket pair, bounded by
    the command or data timeout; ``stop()`` (from any thread) interrupts it.
    Writes are ``sendall`` bounded by the command timeout.
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
        self.session = Session(self.conn, peer, local, None)
        self.driver = SessionDriver(self.session, log)
        self._wakeup = Wakeup()

    def stop(self, *, force: bool = False) -> None:
        """Say 421 4.3.2 and close as soon as no transaction is open (with ``force``: now); thread-safe."""
        if self.driver.request_stop(force=force):
            self._wakeup.set()

    def run(self) -> None:
        """Serve the connection; never raises (an error is logged once and ends this session only)."""
        log.info("session %s: connection from %s", self.session.id, self.session.peer)
        try:
            if not self.implicit_tls or self._start_tls():
                self._converse()
        except Exception:
            log.exception("session %s: unexpected error, closing the connection", self.session.id)
        finally:
            self._close()

    def discard(self) -> None:
        """Close without serving (no thread could be started for it); no hook is called."""
        self.sock.close()
        self._wakeup.close()

    # -- the conversation ----------------------------------------------------------

    def _converse(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is smtpwire.NEED_DATA:
                if not self._flush() or not self._receive():
                    return
            elif isinstance(event, smtpwire.StartTLSRequested):
                if not self._flush() or not self._start_tls():  # the 220 goes out before the handshake
                    return
            elif isinstance(event, smtpwire.ConnectionClosed):
                self._flush()
                return
            elif isinstance(event, smtpwire.Sentinel):  # PAUSED: run_hook answers every decision
                raise RuntimeError(f"the core waits for a decision nobody will make: {conn.pending!r}")
            else:
                run_hook(self.driver, self.handler, self.driver.hook_for(event))

    def _receive(self) -> bool:
        """Give the core the client's next bytes, or tell it why there are none; False: the socket is gone."""
        timeout = self.options.read_timeout(self.conn)
        try:
            data = self._read(timeout)
        except _Stopped:
            self.conn.shutdown()
            return True
        except TimeoutError:
            log.info("session %s: no data for %s s, closing", self.session.id, timeout)
            self.conn.timed_out()
            return True
        except OSError as error:  # reset, or TLS broken mid-session (ssl.SSLError is an OSError)
            log.info("session %s: connection lost: %r", self.session.id, error)
            return False
        if data:
            transcript.debug("session %s <<< %s", self.session.id, self.driver.shown(data))
        self.conn.receive_data(data)
        return True

    def _read(self, timeout: float) -> bytes:
        """One ``recv`` of what the client sent (``b""``: it closed), waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        sock = self.sock
        sock.settimeout(0.0)  # the wait is the poll below, so a partial TLS record cannot pin the thread
        while True:
            if self.driver.should_stop:
                raise _Stopped
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):  # decrypted bytes need no wait
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                ready = readable([sock, self._wakeup.readable], remaining)
                if self._wakeup.readable in ready:
                    self._wakeup.clear()
                if sock not in ready:
                    continue
            try:
                return sock.recv(_READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue  # half a TLS record, or nothing after all: wait again

    def _flush(self) -> bool:
        """Send what the core queued; False when the client does not take it within the command timeout."""
        data = self.conn.data_to_send()
        if not data:
            return True
        transcript.debug("session %s >>> %r", self.session.id, data[:1024])
        try:
            self.sock.settimeout(self.options.command_timeout)
            self.sock.sendall(data)
        except OSError as error:  # TimeoutError included: a client that never reads
            log.info("session %s: cannot send, closing: %r", self.session.id, error)
            return False
        return True

    # -- TLS -------------------------------------------------------------------------

    def _start_tls(self) -> bool:
        """Handshake on the live socket (after the 220, or before the greeting); False: close this session."""
        context = self.options.tls_context
        assert context is not None  # new_connection() offers STARTTLS only with a context; Server checks tls_listen
        try:
            tls = handshake(self.sock, context, self.options.tls_handshake_timeout)
        except HandshakeFailed as failure:
            log.warning("session %s: TLS handshake with %s failed: %s", self.session.id, self.session.peer, failure)
            if self.conn.state is smtpwire.State.TLS_HANDSHAKE:
                self.conn.tls_failed()
            return False
        self.sock = tls
        info = tls_info(tls)
        log.info("session %s: TLS established: %s %s", self.session.id, info.version, info.cipher)
        run_hook(self.driver, self.handler, self.driver.tls_started(info))
        return True

    # -- the end ---------------------------------------------------------------------

    def _close(self) -> None:
        try:
            for call in self.driver.closing_calls():
                run_hook(self.driver, self.handler, call)
        except Exception:
            log.exception("session %s: unexpected error while closing", self.session.id)
        finally:
            self.sock.close()
            self._wakeup.close()
            log.info("session %s: closed", self.session.id)


def _addresses(sock: socket.socket) -> tuple[Address | None, Address | None]:
    """The peer's and our address; a peer that already left has none."""
    try:
        return sock.getpeername(), sock.getsockname()
    except OSError:
        return None, None
