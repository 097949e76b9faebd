"""smtpwire on anyio: an async SMTP server for asyncio and trio, with STARTTLS and implicit TLS."""

from smtpwire_handler import AsyncComposite, AsyncHandler, AsyncMaildirStore
from smtpwire_handler.api import *  # noqa: F403  (the handler API, re-exported)
from smtpwire_handler.api import __all__ as _handler_api

from ._server import Server, serve
from ._session import AnyioSession, handle_stream

__all__ = [
    *_handler_api,
    "AsyncComposite",
    "AsyncHandler",
    "AsyncMaildirStore",
    "AnyioSession",
    "Server",
    "handle_stream",
    "serve",
]
