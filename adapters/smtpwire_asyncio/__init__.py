"""smtpwire on asyncio's Protocol API: the fastest server path, on uvloop when it is installed.

No stream, task or timer per command: transport callbacks feed the shared
driver, and TLS (STARTTLS and implicit) goes through ``loop.start_tls``.
Handler hooks may be plain (run inline) or ``async def`` (awaited as a task,
reading from that client paused until it answers).
"""

from smtpwire_handler import AsyncComposite, AsyncHandler, AsyncMaildirStore
from smtpwire_handler.api import *  # noqa: F403  (the handler API, re-exported)
from smtpwire_handler.api import __all__ as _handler_api

from ._loop import LOOPS, loop_factory, loop_name, run, uvloop_available
from ._server import Server, serve
from ._session import AsyncioSession

__all__ = [
    *_handler_api,
    "AsyncComposite",
    "AsyncHandler",
    "AsyncMaildirStore",
    "LOOPS",
    "AsyncioSession",
    "Server",
    "loop_factory",
    "loop_name",
    "run",
    "serve",
    "uvloop_available",
]
