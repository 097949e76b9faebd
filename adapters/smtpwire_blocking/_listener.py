"""One listening socket and the thread that accepts on it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from smtpwire_handler.kit import ACCEPT_RETRY, AcceptErrors, Listening

from ._log import log
from ._wait import readable
from ._wakeup import Wakeup

#: What the server does with an accepted socket, in the accept thread: (socket, implicit TLS).
OnAccept = Callable[[socket.socket, bool], None]


class Listener:
    """Accepts connections on ``listening`` in its own daemon thread and hands each to ``on_accept``.

    The wait is a ``poll`` on the socket and the server's ``stopping``
    wake-up, so ``Server.shutdown()`` ends it at once; the accept thread does
    no TLS and no SMTP beyond the bounded refusal the server may do in it.
    """

    def __init__(self, listening: Listening, *, on_accept: OnAccept, stopping: Wakeup) -> None:
        self.listening = listening
        self._on_accept = on_accept
        self._stopping = stopping
        self._errors = AcceptErrors(log)  # out of descriptors, say: logged once, retried after a pause
        kind = "tls" if listening.implicit_tls else "plain"
        self._thread = threading.Thread(target=self._loop, name=f"smtpwire-accept-{kind}-{listening.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        """Wait for the accept thread to see ``stopping`` and end (the caller sets it first)."""
        if self._thread.ident is not None:
            self._thread.join()

    def _loop(self) -> None:
        sock = self.listening.sock
        while True:
            ready = readable([sock, self._stopping.readable])
            if self._stopping.readable in ready:
                return  # never cleared: every listener sees it
            try:
                client, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as error:
                self._errors.failed(self.listening.name, error)
                readable([self._stopping.readable], ACCEPT_RETRY)
                continue
            self._errors.accepted()
            try:
                self._on_accept(client, self.listening.implicit_tls)
            except Exception:
                log.exception("cannot serve a connection accepted on %s", self.listening.name)
                client.close()
