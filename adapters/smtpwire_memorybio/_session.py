"""One SMTP session as a bytes-in, bytes-out object: the core, the hooks and the TLS layer."""

from __future__ import annotations

import logging
import ssl

import smtpwire
from smtpwire_handler import Address, Handler, ServerOptions, Session, SessionDriver, run_hook, tls_info

from ._tls import TLSChannel

log = logging.getLogger("smtpwire.memorybio")
transcript = logging.getLogger("smtpwire.transcript")


class SMTPSession:
    """The server side of one SMTP connection, TLS included, with no I/O.

    Hand it the bytes the transport received (``receive``), and write what
    every method returns to the transport, in order: plaintext SMTP before
    TLS, TLS records once TLS is on.  When ``closed`` becomes true, write the
    last bytes and close the transport.  Arm a timer of ``timeout`` seconds
    after each call and call ``timed_out()`` when it fires.
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
        self.handler = handler
        self.options = options or ServerOptions()
        if implicit_tls and self.options.tls_context is None:
            raise ValueError("implicit TLS needs options.tls_context")
        self.implicit_tls = implicit_tls
        self.conn = self.options.new_connection(implicit_tls=implicit_tls)
        self.session = Session(self.conn, peer=peer, local=local)
        self.driver = SessionDriver(self.session, log)
        self._tls: TLSChannel | None = None
        self._out: list[bytes] = []
        self._started = False
        self._closed = False

    # -- what the event loop looks at -----------------------------------------

    @property
    def closed(self) -> bool:
        """True once the transport should be closed (after writing the bytes just returned)."""
        return self._closed

    @property
    def timeout(self) -> float:
        """Seconds to wait for the peer's next bytes before calling ``timed_out()``."""
        if self._handshaking:
            return self.options.tls_handshake_timeout
        return self.options.read_timeout(self.conn)

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
        log.info("session %s: connection from %s", self.session.id, self.session.peer)
        if self.implicit_tls:
            self._begin_tls()
        else:
            self._converse()
        return self._output()

    def receive(self, data: bytes) -> bytes:
        """Bytes from the peer (``b""``: it closed its side); returns the bytes to write."""
        if not self._started:
            raise RuntimeError("call start() first")
        if self._closed:
            return b""
        if self._handshaking:
            self._handshake(data)
        elif self._tls is not None:
            self._from_tls(data)
        else:
            self._from_peer(data)
        return self._output()

    def timed_out(self) -> bytes:
        """The loop's timer fired: 421 4.4.2 and close (a stalled handshake just closes)."""
        if not self._closed:
            if self._handshaking:
                self._handshake_ended(logging.WARNING, f"timed out after {self.timeout} s")
            else:
                log.info("session %s: timed out after %s s", self.session.id, self.timeout)
                self.conn.timed_out()
                self._converse()
        return self._output()

    def shutdown(self) -> bytes:
        """The server is going away: 421 4.3.2 and close (during a handshake: just close)."""
        if not self._closed:
            if self._handshaking:
                self._handshake_ended(logging.INFO, "the server is shutting down")
            else:
                self.conn.shutdown()
                self._converse()
        return self._output()

    # -- plaintext SMTP ----------------------------------------------------------

    def _from_peer(self, plaintext: bytes) -> None:
        if plaintext:
            transcript.debug("session %s <<< %s", self.session.id, self.driver.shown(plaintext))
        self.conn.receive_data(plaintext)
        self._converse()

    def _converse(self) -> None:
        """Run the core until it needs bytes, wants TLS or closes; answer decisions with the hooks."""
        while not self._closed:
            event = self.conn.next_event()
            if event is smtpwire.NEED_DATA:
                break
            if isinstance(event, smtpwire.StartTLSRequested):
                self._flush()  # the 220 goes out in plaintext; the core dropped what followed STARTTLS
                self._begin_tls()
                return
            if isinstance(event, smtpwire.ConnectionClosed):
                self._close()
            elif isinstance(event, smtpwire.Sentinel):  # PAUSED: run_hook answers every decision
                raise RuntimeError("the connection waits for a decision nobody will make")
            else:
                run_hook(self.driver, self.handler, self.driver.hook_for(event))
        self._flush()

    def _flush(self) -> None:
        """Move what the core queued to the output, encrypted once TLS is established."""
        data = self.conn.data_to_send()
        if not data:
            return
        transcript.debug("session %s >>> %r", self.session.id, data[:1024])
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
        """The conversation is over: close_notify, then the closing hooks, exactly once."""
        if self._closed:
            return
        self._closed = True
        self._flush()
        if self._tls is not None and self._tls.established:
            self._tls.close()
        for call in self.driver.closing_calls():
            run_hook(self.driver, self.handler, call)
        log.info("session %s: closed", self.session.id)

    # -- TLS ---------------------------------------------------------------------

    @property
    def _handshaking(self) -> bool:
        return self._tls is not None and not self._tls.established

    def _begin_tls(self) -> None:
        context = self.options.tls_context
        if context is None:  # STARTTLS offered through config.extensions, but no certificate
            log.error("session %s: STARTTLS requested but options.tls_context is not set", self.session.id)
            self.conn.tls_failed()
            self._close()
            return
        self._tls = TLSChannel(context)

    def _handshake(self, data: bytes) -> None:
        tls = self._tls
        assert tls is not None
        if not data:
            self._handshake_ended(logging.WARNING, "the peer closed the connection")
            return
        tls.feed(data)
        try:
            if not tls.handshake():
                return
        except ssl.SSLError as error:  # the alert it produced still goes out
            self._handshake_ended(logging.WARNING, repr(error))
            return
        info = tls_info(tls.ssl_object)
        log.info("session %s: TLS established: %s %s", self.session.id, info.version, info.cipher)
        run_hook(self.driver, self.handler, self.driver.tls_started(info))
        self._decrypt()  # records the client sent right behind its last handshake flight

    def _handshake_ended(self, level: int, reason: str) -> None:
        log.log(level, "session %s: TLS handshake with %s failed: %s", self.session.id, self.session.peer, reason)
        if not self.implicit_tls:
            self.conn.tls_failed()
        self._close()

    def _from_tls(self, records: bytes) -> None:
        if records:
            assert self._tls is not None
            self._tls.feed(records)
            self._decrypt()
        else:  # the peer closed the TCP connection without close_notify
            self._from_peer(b"")

    def _decrypt(self) -> None:
        """Feed the core the plaintext of every whole record received, then converse."""
        tls = self._tls
        assert tls is not None
        try:
            plaintext = tls.read()
        except ssl.SSLError as error:  # a corrupt or forged record: the TLS connection is dead
            log.info("session %s: TLS error: %r", self.session.id, error)
            self._close()
            return
        if plaintext:
            transcript.debug("session %s <<< %s", self.session.id, self.driver.shown(plaintext))
            self.conn.receive_data(plaintext)
        if tls.peer_closed:
            self.conn.receive_data(b"")
        self._converse()
