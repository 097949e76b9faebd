"""One SMTP session on a blocking socket, run by one thread from greeting to close."""

from __future__ import annotations

import socket
import ssl
import time

from smtpwire_handler import Address, Handler, ServerOptions
from smtpwire_handler.kit import CLOSED, NEED_DATA, START_TLS, SessionDriver, tls_info

from ._log import log
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
    Writes are ``sendall`` bounded by the command timeout, so the driver's
    ``FLUSH`` needs nothing more: a client that never reads cannot make us
    hold many times a read's size in replies.
    """

    def __init__(
        self, sock: socket.socket, handler: Handler, options: ServerOptions, *, implicit_tls: bool = False
    ) -> None:
        self.sock = sock
        self.options = options
        peer, local = _addresses(sock)
        self.driver = SessionDriver(
            handler, options, log=log, peer=peer, local=local, implicit_tls=implicit_tls, can_await=False
        )
        self.session = self.driver.session
        self._wakeup = Wakeup()

    def stop(self, *, force: bool = False) -> None:
        """Say 421 4.3.2 and close as soon as no transaction is open (with ``force``: now); thread-safe."""
        if self.driver.request_stop(force=force):
            self._wakeup.set()

    def run(self) -> None:
        """Serve the connection; never raises (an error is logged by the driver and ends this session only)."""
        try:
            self._converse()
        finally:
            self.sock.close()
            self._wakeup.close()

    def discard(self) -> None:
        """Close without serving (no thread could be started for it); no hook is called."""
        self.sock.close()
        self._wakeup.close()

    # -- the conversation ----------------------------------------------------------

    def _converse(self) -> None:
        driver = self.driver
        while True:
            try:
                step = driver.next_step()
                self._send(driver.data_to_send())  # sendall: a FLUSH is done with it
                if step is NEED_DATA:
                    self._receive()
                elif step is START_TLS:
                    self._start_tls()
                elif step is CLOSED:
                    return
            except Exception as error:  # a bug: the driver ends the session; the closing hooks still run
                if not driver.fail(error):
                    return

    def _receive(self) -> None:
        """Give the driver the client's next bytes, or tell it why there are none."""
        try:
            data = self._read(self.driver.timeout)
        except _Stopped:
            return  # the driver says 421 4.3.2 at the next step
        except TimeoutError:
            self.driver.timed_out()
        except OSError as error:  # reset, or TLS broken mid-session (ssl.SSLError is an OSError)
            self.driver.connection_lost(error)
        else:
            self.driver.receive(data)

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

    def _send(self, data: bytes) -> None:
        """Send what the core queued within the command timeout; a client that does not take it is gone."""
        if not data:
            return
        try:
            self.sock.settimeout(self.options.command_timeout)
            self.sock.sendall(data)
        except OSError as error:  # TimeoutError included: a client that never reads
            log.info("session %s: cannot send, closing: %r", self.session.id, error)
            self.driver.connection_lost(error)

    # -- TLS -------------------------------------------------------------------------

    def _start_tls(self) -> None:
        """Handshake on the live socket (after the 220, or before the greeting)."""
        context = self.options.tls_context
        assert context is not None  # new_connection() offers STARTTLS only with a context; Server checks tls_listen
        try:
            tls = handshake(self.sock, context, self.driver.timeout)
        except HandshakeFailed as failure:
            self.driver.tls_failed(str(failure))
            return
        self.sock = tls
        self.driver.tls_started(tls_info(tls))


def _addresses(sock: socket.socket) -> tuple[Address | None, Address | None]:
    """The peer's and our address; a peer that already left has none."""
    try:
        return sock.getpeername(), sock.getsockname()
    except OSError:
        return None, None
