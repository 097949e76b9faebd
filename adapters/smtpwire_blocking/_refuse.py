"""Connections over a session limit: 421 4.7.0 and close, never a silent close or a hang.

A plain connection is answered in the accept thread: the reply is one short
line into an empty socket buffer, with a one-second bound.  An implicit-TLS
connection needs a handshake first, which never runs in the accept thread:
a short-lived refusal thread does it, one of at most ``REFUSALS_AT_ONCE``
(the server's ``Admission.refusals``); beyond them the connection is
closed at once, so a flood of clients cannot make the refusals unbounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from smtpwire_handler import ServerOptions
from smtpwire_handler.kit import Refusals, too_many_connections

from ._log import log
from ._tls import HandshakeFailed, handshake

_SEND_TIMEOUT = 1.0


class Refuser:
    """Refuses connections over the limit for one server; ``lock`` guards its ``refusals``."""

    def __init__(self, options: ServerOptions, refusals: Refusals, lock: threading.Condition) -> None:
        self.options = options
        self._refusals = refusals
        self._lock = lock

    def refuse(self, sock: socket.socket, implicit_tls: bool, reason: str) -> None:
        """Called in the accept thread for a connection over a limit (``reason`` says which)."""
        peer = _peer(sock)
        if not implicit_tls:
            log.warning("refusing a connection from %s: %s", peer, reason)
            self._send(sock)
            return
        with self._lock:
            may_refuse = self._refusals.start()
        if not may_refuse:
            log.warning("closing a connection from %s: %s, and too many refusals under way", peer, reason)
            sock.close()
            return
        log.warning("refusing a connection from %s: %s", peer, reason)
        thread = threading.Thread(target=self._refuse_tls, args=(sock,), name="smtpwire-refuse-tls", daemon=True)
        try:
            thread.start()
        except BaseException:
            self._done()
            raise

    def _refuse_tls(self, sock: socket.socket) -> None:
        try:
            assert self.options.tls_context is not None  # the server checked it for its TLS listeners
            try:
                tls = handshake(sock, self.options.tls_context, self.options.tls_handshake_timeout)
            except HandshakeFailed as failure:
                log.info("could not refuse a TLS client politely: %s", failure)
                return
            self._send(tls)
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._refusals.done()

    def _send(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(_SEND_TIMEOUT)
            sock.sendall(too_many_connections(self.options))
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:  # the client left already; it was going to be refused anyway
            log.info("could not refuse a client: %r", error)
        finally:
            sock.close()


def _peer(sock: socket.socket) -> object:
    with contextlib.suppress(OSError):
        return sock.getpeername()
    return None
