"""One SMTP session as a bytes-in, bytes-out object: the core, the hooks and the TLS layer."""

from __future__ import annotations

import logging
import ssl

from smtpwire_handler import Address, Handler, ServerOptions
from smtpwire_handler.kit import CLOSED, FLUSH, NEED_DATA, START_TLS, SessionDriver, check_handler, tls_info

from ._tls import TLSChannel

log = logging.getLogger("smtpwire.memorybio")


class MemoryBIOSession:
    """The server side of one SMTP connection, TLS included, with no I/O.

    Hand it the bytes the transport received (``receive``), and write what
    every method returns to the transport, in order: plaintext SMTP before
    TLS, TLS records once TLS is on.  When ``closed`` becomes true, write the
    last bytes and close the transport.  Arm a timer of ``timeout`` seconds
    after each call and call ``timed_out()`` when it fires.

    A large read of pipelined commands is answered a slice at a time: when
    ``flushing`` is true, the session holds the rest of what it received
    until the transport has taken what was returned; then call ``resume()``
    (and stop reading meanwhile).  So a client that never reads its
    replies cannot make the session hold many times a read's size in them.
    """

    def __init__(
        self,
        handler: Handler,
        options: ServerOptions | None = None,
        *,
        implicit_tls: bool = False,
        peer: Address | None = None,
        local: Address | None = None,
    ) -> None:
        check_handler(handler, can_await=False)
        self.options = options or ServerOptions()
        if implicit_tls and self.options.tls_context is None:
            raise ValueError("implicit TLS needs options.tls_context")
        self.driver = SessionDriver(
            handler, self.options, log=log, peer=peer, local=local, implicit_tls=implicit_tls, can_await=False
        )
        self.session = self.driver.session
        self.conn = self.driver.conn
        self._tls: TLSChannel | None = None
        self._out: list[bytes] = []
        self._started = False
        self._closed = False
        self._flushing = False

    # -- what the event loop looks at -----------------------------------------

    @property
    def closed(self) -> bool:
        """True once the transport should be closed (after writing the bytes just returned)."""
        return self._closed

    @property
    def flushing(self) -> bool:
        """Received bytes wait until what was returned is written: ``resume()`` once the transport takes more."""
        return self._flushing

    @property
    def timeout(self) -> float:
        """Seconds to wait for the peer's next bytes before calling ``timed_out()``."""
        return self.driver.timeout

    @property
    def idle(self) -> bool:
        """No transaction open and not inside DATA: a graceful shutdown may close it now."""
        return self.driver.idle

    # -- what the event loop calls ---------------------------------------------

    def start(self) -> bytes:
        """The greeting (with implicit TLS: nothing yet, it follows the handshake)."""
        if self._started:
            raise RuntimeError("start() was already called")
        self._started = True
        self._advance()
        return self._output()

    def receive(self, data: bytes) -> bytes:
        """Bytes from the peer (``b""``: it closed its side); returns the bytes to write."""
        if not self._started:
            raise RuntimeError("call start() first")
        if self._closed:
            return b""
        if self._handshaking:
            self._handshake(data)
        elif self._tls is not None and data:
            self._tls.feed(data)
            self._decrypt()
        else:  # plaintext, or the peer closed the TCP connection (without close_notify)
            self.driver.receive(data)
        self._advance()
        return self._output()

    def resume(self) -> bytes:
        """Go on after a flush (see ``flushing``); returns the bytes to write."""
        if self._flushing and not self._closed:
            self._flushing = False
            self._advance()
        return self._output()

    def timed_out(self) -> bytes:
        """The loop's timer fired: 421 4.4.2 and close (a stalled handshake just closes)."""
        if not self._closed:
            self.driver.timed_out()
            self._advance()
        return self._output()

    def shutdown(self) -> bytes:
        """The server is going away: 421 4.3.2 and close (during a handshake: just close)."""
        if not self._closed:
            if self._handshaking:
                self.driver.connection_lost(ConnectionAbortedError("the server is shutting down"))
            else:
                self.driver.request_stop(force=True)
            self._advance()
        return self._output()

    # -- the conversation ----------------------------------------------------------

    def _advance(self) -> None:
        """Run the driver until it needs the peer's bytes, a flush, a handshake, or the end."""
        driver = self.driver
        self._flushing = False
        while not self._closed:
            step = driver.next_step()
            self._write(driver.data_to_send())
            if step is NEED_DATA:
                return
            if step is FLUSH:
                self._flushing = True
                return
            if step is START_TLS:
                if self._tls is None:
                    self._begin_tls()
                if self._tls is not None:  # wait for the handshake's records
                    return
            if step is CLOSED:
                self._close()

    def _write(self, data: bytes) -> None:
        """Queue plaintext for the peer, encrypted once TLS is established."""
        if not data:
            return
        if self._tls is None:
            self._out.append(data)
            return
        try:
            self._tls.write(data)
        except ssl.SSLError as error:  # the TLS connection already broke: nothing can be said
            log.info("session %s: cannot encrypt the reply: %r", self.session.id, error)

    def _output(self) -> bytes:
        if self._tls is not None:
            self._out.append(self._tls.records())
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _close(self) -> None:
        """The conversation is over (the closing hooks ran): close_notify, once."""
        self._closed = True
        if self._tls is not None and self._tls.established:
            self._tls.close()

    # -- TLS ---------------------------------------------------------------------

    @property
    def _handshaking(self) -> bool:
        return self._tls is not None and not self._tls.established

    def _begin_tls(self) -> None:
        context = self.options.tls_context
        if context is None:  # STARTTLS offered through config.extensions, but no certificate
            log.error("session %s: STARTTLS requested but options.tls_context is not set", self.session.id)
            self.driver.tls_failed("no TLS certificate (options.tls_context)")
            return
        self._tls = TLSChannel(context)

    def _handshake(self, data: bytes) -> None:
        tls = self._tls
        assert tls is not None
        if not data:
            self.driver.tls_failed("the peer closed the connection")
            return
        tls.feed(data)
        try:
            if not tls.handshake():
                return
        except ssl.SSLError as error:  # the alert it produced still goes out
            self.driver.tls_failed(repr(error))
            return
        self.driver.tls_started(tls_info(tls.ssl_object))
        self._decrypt()  # records the client sent right behind its last handshake flight

    def _decrypt(self) -> None:
        """Feed the driver the plaintext of every whole record received."""
        tls = self._tls
        assert tls is not None
        try:
            plaintext = tls.read()
        except ssl.SSLError as error:  # a corrupt or forged record: the TLS connection is dead
            self.driver.connection_lost(error)
            return
        if plaintext:
            self.driver.receive(plaintext)
        if tls.peer_closed:
            self.driver.receive(b"")
