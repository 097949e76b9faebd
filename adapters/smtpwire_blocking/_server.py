"""Listeners, one thread per session, the session limit and graceful shutdown."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

from smtpwire_handler import Handler, ServerOptions, too_many_sessions

from ._session import BlockingSession, log

HostPort = tuple[str, int]
_REFUSAL_TIMEOUT = 1.0


class Server:
    """A threaded SMTP server on plain (STARTTLS) and implicit-TLS listeners.

    ``with Server(handler, options, listen=[...]) as server:`` starts it and
    shuts it down gracefully at the end of the block; ``serve_forever()``
    blocks until ``shutdown()`` is called from another thread or Ctrl-C.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        options: ServerOptions | None = None,
        *,
        listen: Sequence[HostPort] = (("127.0.0.1", 8025),),
        tls_listen: Sequence[HostPort] = (),
    ) -> None:
        self.handler = handler or Handler()
        self.options = options or ServerOptions()
        self.options.check_listeners(listen, tls_listen)
        self.listen = list(listen)
        self.tls_listen = list(tls_listen)
        self.addresses: list[HostPort] = []
        self.tls_addresses: list[HostPort] = []
        self._listeners: dict[socket.socket, bool] = {}  # socket -> implicit TLS
        self._sessions: dict[BlockingSession, threading.Thread] = {}
        self._lock = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()
        self._wake_read, self._wake_write = socket.socketpair()
        self._acceptor: threading.Thread | None = None

    @property
    def sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def start(self) -> Server:
        """Bind every listener and start accepting in a background thread."""
        for addresses, implicit_tls in ((self.listen, False), (self.tls_listen, True)):
            for host, port in addresses:
                listener = _bind(host, port)
                self._listeners[listener] = implicit_tls
                bound = listener.getsockname()
                (self.tls_addresses if implicit_tls else self.addresses).append((bound[0], bound[1]))
        log.info("serving SMTP on %s, implicit TLS on %s", self.addresses, self.tls_addresses)
        self._acceptor = threading.Thread(target=self._accept_loop, name="smtpwire-accept", daemon=True)
        self._acceptor.start()
        return self

    def serve_forever(self) -> None:
        if self._acceptor is None:
            self.start()
        try:
            self._stopped.wait()
        except KeyboardInterrupt:
            self.shutdown()

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; idle sessions get 421 4.3.2 now, the others when their transaction ends.

        After ``grace`` seconds (default ``options.shutdown_grace``) every
        remaining session gets 421 4.3.2.  Returns once every session ended.
        """
        if self._stopping:
            return
        self._stopping = True
        self._wake_write.send(b"!")
        if self._acceptor is not None:
            self._acceptor.join()
        for listener in self._listeners:
            listener.close()
        deadline = time.monotonic() + (self.options.shutdown_grace if grace is None else grace)
        with self._lock:
            for session in self._sessions:
                session.stop()
            self._lock.wait_for(lambda: not self._sessions, max(deadline - time.monotonic(), 0))
            for session in self._sessions:
                session.stop(force=True)
            threads = list(self._sessions.values())
        end = time.monotonic() + self.options.command_timeout  # a hook may still be running
        for thread in threads:
            thread.join(timeout=max(end - time.monotonic(), 0))
        self._wake_read.close()
        self._wake_write.close()
        self._stopped.set()

    def __enter__(self) -> Server:
        return self.start() if self._acceptor is None else self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()

    def _accept_loop(self) -> None:
        while True:
            readable, _, _ = select.select([*self._listeners, self._wake_read], [], [])
            if self._stopping:
                return
            for listener in readable:
                if listener is self._wake_read:
                    continue
                try:
                    sock, _ = listener.accept()
                except OSError as error:  # e.g. the peer reset before accept, or out of descriptors
                    log.warning("accept failed: %r", error)
                    continue
                self._start_session(sock, self._listeners[listener])

    def _start_session(self, sock: socket.socket, implicit_tls: bool) -> None:
        with self._lock:
            if len(self._sessions) >= self.options.max_sessions:
                full = True
            else:
                full = False
                session = BlockingSession(sock, self.handler, self.options, implicit_tls=implicit_tls)
                thread = threading.Thread(target=self._run, args=(session,), daemon=True, name="smtpwire-session")
                self._sessions[session] = thread
        if full:
            log.warning("refusing a connection: %d sessions already", self.options.max_sessions)
            threading.Thread(target=self._refuse, args=(sock, implicit_tls), daemon=True).start()
        else:
            thread.start()

    def _run(self, session: BlockingSession) -> None:
        try:
            session.run()
        finally:
            with self._lock:
                del self._sessions[session]
                self._lock.notify_all()

    def _refuse(self, sock: socket.socket, implicit_tls: bool) -> None:
        """Over the session limit: 421 4.7.0 (after the handshake on a TLS listener), then close."""
        refusal = self.options.new_connection(implicit_tls=implicit_tls)
        too_many_sessions(refusal)
        try:
            sock.settimeout(self.options.tls_handshake_timeout if implicit_tls else _REFUSAL_TIMEOUT)
            if implicit_tls:
                assert self.options.tls_context is not None
                sock = self.options.tls_context.wrap_socket(sock, server_side=True)
            sock.sendall(refusal.data_to_send())
        except OSError:
            pass  # the client left or could not speak TLS; it was going to be refused anyway
        finally:
            sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024, dualstack_ipv6=False)
    except OSError as error:
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from error
