"""``BlockingSession`` served on the server kit: its listeners, admission and shutdown steps, in threads."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Sequence
from types import TracebackType

from smtpwire_handler import AsyncHandler, Handler, ServerOptions
from smtpwire_handler.kit import DEFAULT_MODE, HostPort, ServerBase, shutdown_plan

from ._listener import Listener
from ._log import log
from ._refuse import Refuser
from ._session import BlockingSession
from ._wakeup import Wakeup

_SERVE_TICK = 0.5  # how often serve() looks up, so Ctrl-C works on every platform


class Server(ServerBase[BlockingSession]):
    """A threaded SMTP server on plain listeners (STARTTLS when a TLS context is set) and implicit-TLS ones.

    ``start()`` binds and starts accepting in the background; ``with
    Server(...) as server:`` starts it (unless already started) and shuts it
    down gracefully when the block ends; ``serve()`` blocks until
    ``shutdown()`` from another thread or Ctrl-C.  A ``listen`` entry that
    is a ``str`` is the path of a Unix socket (see ``smtpwire_handler._unix``).
    One thread accepts on each listener, one runs each session; the admission
    is counted under one lock.
    """

    hooks_may_await = False
    log = log

    def __init__(
        self,
        handler: Handler,
        options: ServerOptions | None = None,
        *,
        listen: Sequence[HostPort | str] = (("127.0.0.1", 8025),),
        tls_listen: Sequence[HostPort] = (),
        reuse_port: bool = False,
        unix_mode: int = DEFAULT_MODE,
    ) -> None:
        _check_handler(handler)
        super().__init__(
            handler, options, listen=listen, tls_listen=tls_listen, reuse_port=reuse_port, unix_mode=unix_mode
        )
        self.handler: Handler = handler

    def _prepare(self) -> None:
        self._lock = threading.Condition()  # guards the admission, the threads and the life cycle
        self._threads: dict[BlockingSession, threading.Thread] = {}
        self._listeners: list[Listener] = []
        self._stopping = Wakeup()  # set once, never cleared: every accept thread sees it
        self._refuser = Refuser(self.options, self._admission.refusals, self._lock)
        self._started = False
        self._shutting_down = False
        self._stopped = threading.Event()

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Server:
        """Bind every listener, then accept on each in its own thread; returns the server."""
        with self._lock:
            if self._started or self._shutting_down:
                raise RuntimeError("a server starts once: this one was already started or shut down")
            self._started = True
        try:
            listening = self._listen_all()
        except BaseException:
            self._stopping.close()
            self._stopped.set()
            raise
        self._listeners = [Listener(each, on_accept=self._accepted, stopping=self._stopping) for each in listening]
        for listener in self._listeners:
            listener.start()
        return self

    def serve(self) -> None:
        """Start unless started, then block until ``shutdown()`` ends, or shut down gracefully on Ctrl-C."""
        if not self._started:
            self.start()
        try:
            while not self._stopped.wait(_SERVE_TICK):
                pass
        except KeyboardInterrupt:
            log.info("interrupted: shutting down")
            self.shutdown()

    serve_forever = serve  # the name socketserver uses

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting and close every session with 421 4.3.2; returns once every session thread ended.

        Idle sessions (no transaction open, not inside DATA) are told at once.
        A session inside a transaction may finish it for ``grace`` seconds
        (default ``options.shutdown_grace``) and is told when it ends; after
        that every remaining session is told, even in the middle of DATA, and
        ``ABORT_AFTER`` seconds later the connections still open are dropped
        (see ``smtpwire_handler.shutdown_plan``).  Safe to call from any
        thread and more than once (later calls wait).
        """
        with self._lock:
            if threading.current_thread() in self._threads.values():
                raise RuntimeError("shutdown() from a hook would wait for its own session: call it from another thread")
            first = not self._shutting_down
            self._shutting_down = True
            self._admission.close()
        if not first:
            self._stopped.wait()
            return
        try:
            if self._started:
                self._stop_accepting()
                self._stop_sessions(grace)
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
        peer = _peer(sock)
        with self._lock:
            refusal = self._admission.refusal(peer)
            if refusal is None:  # out of descriptors for its wake-up, say: raises, nothing counted
                session = BlockingSession(sock, self.handler, self.options, implicit_tls=implicit_tls)
                self._admit(session, peer)
                thread = threading.Thread(
                    target=self._run, args=(session,), name=f"smtpwire-session-{session.session.id}", daemon=True
                )
                self._threads[session] = thread
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
            self._release(session)
            self._threads.pop(session, None)
            self._lock.notify_all()

    # -- shutting down ------------------------------------------------------------------

    def _stop_accepting(self) -> None:
        self._stopping.set()
        for listener in self._listeners:
            listener.join()
            listener.listening.close()
        log.info("no longer accepting; %d sessions open", self.sessions)

    def _stop_sessions(self, grace: float | None) -> None:
        with self._lock:
            threads = list(self._threads.values())  # complete: nothing is accepted any more
        for step, wait in shutdown_plan(self.options, grace):
            self._take(step)
            with self._lock:
                self._lock.wait_for(lambda: not self.sessions, wait)
        if self.sessions:
            log.warning("shutdown: %d sessions still busy in a hook; leaving them", self.sessions)
            return
        for thread in threads:
            thread.join()  # each has left its session already; this waits for the thread itself to end

    def _open_sessions(self) -> list[BlockingSession]:
        with self._lock:
            return super()._open_sessions()

    def _drop_connections(self) -> None:
        for session in self._open_sessions():
            with contextlib.suppress(OSError):  # closed already: nothing to drop
                # On the descriptor itself, TLS or not: the session's thread wakes to a dead connection.
                socket.socket.shutdown(session.sock, socket.SHUT_RDWR)


def serve(
    handler: Handler,
    options: ServerOptions | None = None,
    *,
    listen: Sequence[HostPort | str] = (("127.0.0.1", 8025),),
    tls_listen: Sequence[HostPort] = (),
) -> None:
    """Serve until Ctrl-C: ``smtpwire_blocking.serve(MyHandler(), options)``; a ``str`` is a Unix socket."""
    Server(handler, options, listen=listen, tls_listen=tls_listen).serve()


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
