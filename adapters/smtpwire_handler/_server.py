"""What the async adapters' servers share: handler, options, listeners and the open sessions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from ._handler import AsyncHandler, Handler
from ._options import ServerOptions

HostPort = tuple[str, int]
S = TypeVar("S")


class ServerBase(Generic[S]):
    """Checked once at construction; ``addresses`` and ``tls_addresses`` hold the real ports once bound."""

    def __init__(
        self,
        handler: AsyncHandler | Handler | None = None,
        options: ServerOptions | None = None,
        *,
        listen: Sequence[HostPort] = (("127.0.0.1", 8025),),
        tls_listen: Sequence[HostPort] = (),
        reuse_port: bool = False,
    ) -> None:
        self.handler: AsyncHandler | Handler = handler or AsyncHandler()
        self.options = options or ServerOptions()
        self.options.check_listeners(listen, tls_listen)
        self.listen = list(listen)
        self.tls_listen = list(tls_listen)
        self.reuse_port = reuse_port
        self.addresses: list[HostPort] = []
        self.tls_addresses: list[HostPort] = []
        self._sessions: set[S] = set()
        self._stopping = False
        self._prepare()

    def _prepare(self) -> None:
        """The adapter's own state, set up at the end of construction."""

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def sessions(self) -> int:
        return len(self._sessions)
