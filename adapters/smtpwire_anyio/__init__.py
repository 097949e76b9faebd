"""smtpwire on anyio: an async SMTP server for asyncio and trio, with STARTTLS and implicit TLS."""

from smtpwire_handler import (
    Address,
    AsyncHandler,
    EmailHandler,
    Envelope,
    Handler,
    MaildirStore,
    MboxStore,
    Params,
    PrintHandler,
    Reject,
    ServerOptions,
    Session,
    TLSInfo,
)

from ._maildir_store import AsyncMaildirStore
from ._server import Server, serve
from ._session import SessionRunner, handle_stream

__all__ = [
    "Address",
    "AsyncHandler",
    "AsyncMaildirStore",
    "EmailHandler",
    "Envelope",
    "Handler",
    "MaildirStore",
    "MboxStore",
    "Params",
    "PrintHandler",
    "Reject",
    "Server",
    "ServerOptions",
    "Session",
    "SessionRunner",
    "TLSInfo",
    "handle_stream",
    "serve",
]
