"""smtpwire on anyio: an async SMTP server for asyncio and trio, with STARTTLS and implicit TLS."""

from smtpwire_handler import AsyncHandler
from smtpwire_handler.api import *  # noqa: F403  (the handler API, re-exported)
from smtpwire_handler.api import __all__ as _handler_api

from ._maildir_store import AsyncMaildirStore
from ._server import Server, serve
from ._session import SessionRunner, handle_stream

__all__ = [*_handler_api, "AsyncHandler", "AsyncMaildirStore", "Server", "SessionRunner", "handle_stream", "serve"]
