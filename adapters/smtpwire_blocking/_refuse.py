"""Connections over a session limit: 421 4.7.0 and close, never a silent close or a hang.

A plain connection is answered in the accept thread: the reply is one short
line into an empty socket buffer, with a one-second bound.  An implicit-TLS
connection needs a handshake first, which never runs in the accept thread:
a few short-lived refusal threads do it; when they are all busy the accept
thread waits for one (new clients queue in the listen backlog meanwhile), so
a flood of clients cannot make the refusals themselves unbounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from smtpwire_handler import ServerOptions, too_many_sessions

from ._log import log
from ._tls import HandshakeFailed, handshake

_SEND_TIMEOUT = 1.0
_TLS_REFUSERS = 8
_SLOT_POLL = 0.2


class Refuser:
    """Refuses connections over the limit for one server (see the module's docstring)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self._slots = threading.BoundedSemaphore(_TLS_REFUSERS)
        self._stopped = threading.Event()

    def stop(self) -> None:
        """The server is going away: connections still waiting for a refusal thread are just closed."""
        self._stopped.set()

    def refuse(self, sock: socket.socket, implicit_tls: bool, reason: str) -> None:
        """Called in the accept thread for a connection over a limit (``reason`` says which)."""
        log.warning("refusing a connection from %s: %s", _peer(sock), reason)
        if not implicit_tls:
            self._send(sock)
            return
        while not self._slots.acquire(timeout=_SLOT_POLL):
            if self._stopped.is_set():
                sock.close()
                return
        thread = threading.Thread(target=self._refuse_tls, args=(sock,), name="smtpwire-refuse-tls", daemon=True)
        try:
            thread.start()
        except BaseException:
            self._slots.release()
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
            self._slots.release()

    def _send(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(_SEND_TIMEOUT)
            sock.sendall(too_many_sessions(self.options))
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:  # the client left already; it was going to be refused anyway
            log.info("could not refuse a client: %r", error)
        finally:
            sock.close()


def _peer(sock: socket.socket) -> object:
    with contextlib.suppress(OSError):
        return sock.getpeername()
    return None
