"""Wait until one of a few sockets is readable, for any descriptor number.

``select.select`` refuses descriptors at or above ``FD_SETSIZE`` (1024 on
Linux), which a server with hundreds of sessions reaches quickly; ``poll``
has no such limit.  ``select`` remains for platforms without ``poll``
(Windows, where the limit is on the number of sockets, not their value).
"""

from __future__ import annotations

import math
import select
import socket
from collections.abc import Sequence

_EVENTS = getattr(select, "POLLIN", 1)  # HUP and ERR are always reported too


def readable(socks: Sequence[socket.socket], timeout: float | None = None) -> list[socket.socket]:
    """Those of ``socks`` with something to read (data, EOF or an error), waiting at most ``timeout`` seconds."""
    if not hasattr(select, "poll"):
        return select.select(list(socks), [], [], timeout)[0]
    poller = select.poll()
    for sock in socks:
        poller.register(sock, _EVENTS)
    ready = {fd for fd, _ in poller.poll(None if timeout is None else math.ceil(max(timeout, 0) * 1000))}
    return [sock for sock in socks if sock.fileno() in ready]
