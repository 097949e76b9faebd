"""smtpwire on asyncio's Protocol API: the fastest server path, on uvloop when it is installed.

No stream, task or timer per command: transport callbacks feed the shared
driver, and TLS (STARTTLS and implicit) goes through ``loop.start_tls``.
Handler hooks may be plain (run inline) or ``async def`` (awaited as a task,
reading from that client paused until it answers).
"""

from smtpwire_handler import (
    Address,
    AsyncHandler,
    EmailHandler,
    Envelope,
    Handler,
    HostPort,
    MaildirStore,
    MboxStore,
    Params,
    PrintHandler,
    Reject,
    ServerOptions,
    Session,
    TLSInfo,
)

from ._loop import LOOPS, loop_factory, loop_name, run, uvloop_available
from ._protocol import SMTPProtocol
from ._server import Server, serve

__all__ = [
    "LOOPS",
    "Address",
    "AsyncHandler",
    "EmailHandler",
    "Envelope",
    "Handler",
    "HostPort",
    "MaildirStore",
    "MboxStore",
    "Params",
    "PrintHandler",
    "Reject",
    "SMTPProtocol",
    "Server",
    "ServerOptions",
    "Session",
    "TLSInfo",
    "loop_factory",
    "loop_name",
    "run",
    "serve",
    "uvloop_available",
]
