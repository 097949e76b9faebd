"""What every server shares: its checked settings, its listeners, who it admits, and the steps it stops in.

An adapter's ``Server`` subclasses ``ServerBase``: ``_listen_all()`` binds
every listener the one way (see ``_listen``), ``_admit``/``_release`` count
sessions against the limits (see ``_admission``), and ``_take(step)`` runs a
step of the shutdown plan (see ``_shutdown``).  The adapter does the I/O:
accepting, refusing, waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

from ._admission import Admission
from ._checks import check_handler
from ._handler import AsyncHandler, Handler
from ._listen import HostPort, Listening, address_text, tcp_sockets
from ._options import ServerOptions
from ._shutdown import ShutdownStep
from ._unix import DEFAULT_MODE, UnixListener, split_listen


def listeners_text(plain: Sequence[HostPort], implicit_tls: Sequence[HostPort], unix: Sequence[str]) -> str:
    """Every bound listener in one phrase, implicit-TLS ones marked (no Python reprs in a log line)."""
    shown = [address_text(a) for a in plain] + [f"{address_text(a)} (implicit TLS)" for a in implicit_tls]
    return ", ".join(shown + [address_text(path) for path in unix])


class Stoppable(Protocol):
    """A session as the server sees it: it can be asked to close (see ``SessionDriver.request_stop``)."""

    def stop(self, *, force: bool = False) -> None: ...


S = TypeVar("S", bound=Stoppable)


class ServerBase(Generic[S]):
    """Checked once at construction; ``addresses`` and ``tls_addresses`` hold the real ports once bound.

    A ``listen`` entry that is a ``str`` is the path of a Unix socket, made
    with ``unix_mode``, a stale one replaced, removed at shutdown (see
    ``_unix``); ``unix_addresses`` holds the paths once bound.  A name is
    bound on every address it resolves to; ``reuse_port`` sets SO_REUSEPORT.
    """

    #: Whether hooks may be ``async def`` (not on a server that calls them in its own threads).
    hooks_may_await: ClassVar[bool] = True
    #: Where the server says what it listens on.
    log: ClassVar[logging.Logger] = logging.getLogger("smtpwire")

    def __init__(
        self,
        handler: AsyncHandler | Handler | None = None,
        options: ServerOptions | None = None,
        *,
        listen: Sequence[HostPort | str] = (("127.0.0.1", 8025),),
        tls_listen: Sequence[HostPort] = (),
        reuse_port: bool = False,
        unix_mode: int = DEFAULT_MODE,
    ) -> None:
        if options is not None and not isinstance(options, ServerOptions):
            raise ValueError(f"options must be a ServerOptions, not {type(options).__name__}")
        self.handler: AsyncHandler | Handler = handler or AsyncHandler()
        check_handler(self.handler, can_await=self.hooks_may_await)
        self.options = options or ServerOptions()
        self.options.check_listeners(listen, tls_listen)
        for address in listen:
            _check_address("listen", address, path_too=True)
        for address in tls_listen:
            _check_address("tls_listen", address, path_too=False)
        tcp, self.unix_listen = split_listen(listen)  # Unix sockets' paths apart
        self.listen = [(host, port) for host, port in tcp]
        self.unix_mode = unix_mode
        self.unix_addresses: list[str] = []
        self.tls_listen = [(host, port) for host, port in tls_listen]
        self.reuse_port = reuse_port
        self.addresses: list[HostPort] = []
        self.tls_addresses: list[HostPort] = []
        self._admission: Admission[S] = Admission(self.options)
        self._prepare()

    def _prepare(self) -> None:
        """The adapter's own state, set up at the end of construction."""

    @property
    def stopping(self) -> bool:
        return self._admission.closed

    @property
    def sessions(self) -> int:
        """How many sessions are open now."""
        return len(self._admission)

    def _admit(self, session: S, peer: object) -> str | None:
        """Count ``session`` in; ``None`` when admitted, else why it is refused (for the log)."""
        return self._admission.admit(session, peer)

    def _release(self, session: S) -> None:
        """``session`` ended: it no longer counts."""
        self._admission.release(session)

    def _listen_all(self) -> list[Listening]:
        """Bind every listener (plain, implicit TLS, Unix); on an error close those bound, and raise it."""
        listening: list[Listening] = []
        try:
            for wanted, implicit_tls in ((self.listen, False), (self.tls_listen, True)):
                for host, port in wanted:
                    socks = tcp_sockets(host, port, reuse_port=self.reuse_port)
                    listening += [Listening.tcp(sock, implicit_tls=implicit_tls) for sock in socks]
            for path in self.unix_listen:
                unix = UnixListener(path, self.unix_mode)
                listening.append(Listening(unix.socket, path, unix=unix))
        except BaseException:
            for each in listening:
                each.close()
            raise
        for each in listening:
            if isinstance(each.address, str):
                self.unix_addresses.append(each.address)
            else:
                (self.tls_addresses if each.implicit_tls else self.addresses).append(each.address)
        self.log.debug("listening on %s", listeners_text(self.addresses, self.tls_addresses, self.unix_addresses))
        return listening

    def _take(self, step: ShutdownStep) -> None:
        """Take one step of the shutdown plan on every open session."""
        if step is not ShutdownStep.IDLE and self.sessions:
            self.log.info("shutting down: %d sessions still open: %s", self.sessions, step.value)
        if step is ShutdownStep.DROP:
            self._drop_connections()
            return
        for session in self._open_sessions():
            session.stop(force=step is ShutdownStep.FORCE)

    def _open_sessions(self) -> list[S]:
        return self._admission.sessions()

    def _drop_connections(self) -> None:
        """Close every connection still open, without a word (the adapter's way)."""
        raise NotImplementedError


def _check_address(what: str, address: object, *, path_too: bool) -> None:
    if path_too and isinstance(address, str):
        return
    if (
        not isinstance(address, tuple | list)
        or len(address) != 2
        or not isinstance(address[0], str)
        or isinstance(address[1], bool)
        or not isinstance(address[1], int)
        or not 0 <= address[1] <= 65535
    ):
        paths = " (or a Unix socket's path)" if path_too else ""
        raise ValueError(f"{what} takes (host, port) pairs{paths} with a port from 0 to 65535, not {address!r}")
