"""One listening socket and the thread that accepts on it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from smtpwire_handler import ACCEPT_RETRY, AcceptErrors

from ._log import log
from ._wait import readable
from ._wakeup import Wakeup

HostPort = tuple[str, int]

#: What the server does with an accepted socket, in the accept thread: (socket, implicit TLS).
OnAccept = Callable[[socket.socket, bool], None]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host`` (an IPv4 or IPv6 address or a name) and ``port`` (0: any free one)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(address, family=family, dualstack_ipv6=False)
    except OSError as error:  # socket.gaierror included
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror or error}") from error


class Listener:
    """Accepts connections in its own daemon thread and hands each to ``on_accept``.

    The wait is a ``poll`` on the socket and the server's ``stopping``
    wake-up, so ``Server.shutdown()`` ends it at once; the accept thread does
    no TLS and no SMTP beyond the bounded refusal the server may do in it.
    """

    def __init__(self, host: str, port: int, *, implicit_tls: bool, on_accept: OnAccept, stopping: Wakeup) -> None:
        self.sock = bind(host, port)
        self.sock.setblocking(False)  # a connection gone between poll and accept must not block us
        bound = self.sock.getsockname()
        self.address: HostPort = (bound[0], bound[1])
        self.implicit_tls = implicit_tls
        self._on_accept = on_accept
        self._stopping = stopping
        self._errors = AcceptErrors(log)  # out of descriptors, say: logged once, retried after a pause
        kind = "tls" if implicit_tls else "plain"
        self._thread = threading.Thread(
            target=self._loop, name=f"smtpwire-accept-{kind}-{_show(self.address)}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        """Wait for the accept thread to see ``stopping`` and end (the caller sets it first)."""
        if self._thread.ident is not None:
            self._thread.join()

    def close(self) -> None:
        self.sock.close()

    def _loop(self) -> None:
        while True:
            ready = readable([self.sock, self._stopping.readable])
            if self._stopping.readable in ready:
                return  # never cleared: every listener sees it
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as error:
                self._errors.failed(_show(self.address), error)
                readable([self._stopping.readable], ACCEPT_RETRY)
                continue
            self._errors.accepted()
            try:
                self._on_accept(client, self.implicit_tls)
            except Exception:
                log.exception("cannot serve a connection accepted on %s", _show(self.address))
                client.close()


def _show(address: HostPort) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
