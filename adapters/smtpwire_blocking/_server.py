"""The server: listeners, one thread per session, the session limit and graceful shutdown."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

from smtpwire_handler import AsyncHandler, ClientCounter, Handler, ServerOptions, check_handler

from ._listener import HostPort, Listener
from ._log import log
from ._refuse import Refuser
from ._session import BlockingSession
from ._wakeup import Wakeup

_SERVE_FOREVER_TICK = 0.5  # how often serve_forever() looks up, so Ctrl-C works on every platform


class Server:
    """A threaded SMTP server on plain listeners (STARTTLS when a TLS context is set) and implicit-TLS ones.

    ``start()`` binds and starts accepting in the background; ``with
    Server(...) as server:`` starts it (unless already started) and shuts it
    down gracefully when the block ends; ``serve_forever()`` blocks until
    ``shutdown()`` from another thread or Ctrl-C.
    """

    def __init__(
        self,
        handler: Handler,
        options: ServerOptions | None = None,
        *,
        listen: Sequence[HostPort] = (("127.0.0.1", 8025),),
        tls_listen: Sequence[HostPort] = (),
    ) -> None:
        _check_handler(handler)
        if options is not None and not isinstance(options, ServerOptions):
            raise ValueError(f"options must be a smtpwire_blocking.ServerOptions, not {type(options).__name__}")
        self.handler = handler
        self.options = options or ServerOptions()
        self.options.check_listeners(listen, tls_listen)
        self._wanted = [(*_check_address("listen", a), False) for a in listen]
        self._wanted += [(*_check_address("tls_listen", a), True) for a in tls_listen]
        self._listeners: list[Listener] = []
        self._sessions: dict[BlockingSession, threading.Thread] = {}
        self._clients = ClientCounter(self.options.max_sessions_per_client)
        self._client_of: dict[BlockingSession, str | None] = {}  # whom each session counts for
        self._lock = threading.Condition()
        self._stopping = Wakeup()  # set once, never cleared: every accept thread sees it
        self._refuser = Refuser(self.options)
        self._started = False
        self._shutting_down = False
        self._stopped = threading.Event()

    # -- what it looks like from outside -------------------------------------------

    @property
    def addresses(self) -> list[HostPort]:
        """The bound (host, port) of each plain listener, once started (port 0 became a real one)."""
        return [listener.address for listener in self._listeners if not listener.implicit_tls]

    @property
    def tls_addresses(self) -> list[HostPort]:
        """The bound (host, port) of each implicit-TLS listener, once started."""
        return [listener.address for listener in self._listeners if listener.implicit_tls]

    @property
    def sessions(self) -> int:
        """How many sessions are running now."""
        with self._lock:
            return len(self._sessions)

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Server:
        """Bind every listener, then accept on each in its own thread; returns the server."""
        with self._lock:
            if self._started or self._shutting_down:
                raise RuntimeError("a server starts once: this one was already started or shut down")
            self._started = True
        try:
            for host, port, implicit_tls in self._wanted:
                listener = Listener(
                    host, port, implicit_tls=implicit_tls, on_accept=self._accepted, stopping=self._stopping
                )
                self._listeners.append(listener)
        except BaseException:
            for listener in self._listeners:
                listener.close()
            self._listeners.clear()
            self._stopping.close()
            self._stopped.set()
            raise
        for listener in self._listeners:
            listener.start()
        log.info("serving SMTP on %s, implicit TLS on %s", self.addresses, self.tls_addresses)
        return self

    def serve_forever(self) -> None:
        """Start unless started, then block until ``shutdown()`` ends, or shut down gracefully on Ctrl-C."""
        if not self._started:
            self.start()
        try:
            while not self._stopped.wait(_SERVE_FOREVER_TICK):
                pass
        except KeyboardInterrupt:
            log.info("interrupted: shutting down")
            self.shutdown()

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting and close every session with 421 4.3.2; returns once every session thread ended.

        Idle sessions (no transaction open, not inside DATA) are told at once.
        A session inside a transaction may finish it for ``grace`` seconds
        (default ``options.shutdown_grace``) and is told when it ends; after
        that every remaining session is told, even in the middle of DATA.
        Safe to call from any thread and more than once (later calls wait).
        """
        with self._lock:
            if threading.current_thread() in self._sessions.values():
                raise RuntimeError("shutdown() from a hook would wait for its own session: call it from another thread")
            first = not self._shutting_down
            self._shutting_down = True
        if not first:
            self._stopped.wait()
            return
        try:
            if self._started:
                self._stop_accepting()
                self._stop_sessions(self.options.shutdown_grace if grace is None else grace)
        finally:
            self._stopping.close()
            self._stopped.set()
            log.info("server stopped")

    def __enter__(self) -> Server:
        return self if self._started else self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()

    # -- accepting (in the accept threads) -------------------------------------------

    def _accepted(self, sock: socket.socket, implicit_tls: bool) -> None:
        key = self.options.counted_client(_peer(sock))
        with self._lock:
            if len(self._sessions) >= self.options.max_sessions:
                refusal: str | None = f"{len(self._sessions)} sessions already"
            elif not self._clients.add(key):
                refusal = f"{self.options.max_sessions_per_client} sessions from {key} already"
            else:
                refusal = None
                try:
                    session = BlockingSession(sock, self.handler, self.options, implicit_tls=implicit_tls)
                except BaseException:  # out of descriptors for its wake-up, say
                    self._clients.remove(key)
                    raise
                thread = threading.Thread(
                    target=self._run, args=(session,), name=f"smtpwire-session-{session.session.id}", daemon=True
                )
                self._sessions[session] = thread
                self._client_of[session] = key
        if refusal is not None:
            self._refuser.refuse(sock, implicit_tls, refusal)
            return
        try:
            thread.start()
        except BaseException:  # no thread to be had: undo, and let the listener log it
            self._forget(session)
            session.discard()
            raise

    def _run(self, session: BlockingSession) -> None:
        try:
            session.run()
        finally:
            self._forget(session)

    def _forget(self, session: BlockingSession) -> None:
        with self._lock:
            if self._sessions.pop(session, None) is not None:
                self._clients.remove(self._client_of.pop(session))
            self._lock.notify_all()

    # -- shutting down ------------------------------------------------------------------

    def _stop_accepting(self) -> None:
        self._stopping.set()
        self._refuser.stop()
        for listener in self._listeners:
            listener.join()
            listener.close()
        log.info("no longer accepting; %d sessions open", self.sessions)

    def _stop_sessions(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        with self._lock:
            threads = dict(self._sessions)  # complete: nothing is accepted any more
        for session in threads:
            session.stop()  # idle ones say 421 now, the others once their transaction ends
        if not self._wait_for_sessions(deadline - time.monotonic()):
            left = self._running()
            log.info("shutdown grace over: closing %d sessions inside a transaction", len(left))
            for session in left:
                session.stop(force=True)
            # Reads are interrupted at once and writes end within the command timeout; hooks are the application's.
            if not self._wait_for_sessions(self.options.command_timeout + 1):
                log.warning("shutdown: %d sessions still busy in a hook; leaving them", self.sessions)
                return
        for thread in threads.values():
            thread.join()  # each has left its session already; this waits for the thread itself to end

    def _wait_for_sessions(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self._sessions, max(timeout, 0))

    def _running(self) -> list[BlockingSession]:
        with self._lock:
            return list(self._sessions)


def _peer(sock: socket.socket) -> object:
    """The client's address (None when it already left)."""
    try:
        return sock.getpeername()
    except OSError:
        return None


def _check_handler(handler: object) -> None:
    if isinstance(handler, AsyncHandler):
        raise ValueError("the blocking adapter calls plain hooks: use a Handler with def hooks, not async def")
    if not isinstance(handler, Handler):
        raise ValueError(f"handler must be a smtpwire_blocking.Handler, not {type(handler).__name__}")
    check_handler(handler, can_await=False)


def _check_address(what: str, address: object) -> HostPort:
    if (
        not isinstance(address, tuple | list)
        or len(address) != 2
        or not isinstance(address[0], str)
        or isinstance(address[1], bool)
        or not isinstance(address[1], int)
        or not 0 <= address[1] <= 65535
    ):
        raise ValueError(f"{what} takes (host, port) pairs with a port from 0 to 65535, not {address!r}")
    return address[0], address[1]
