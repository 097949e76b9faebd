"""smtpwire over ssl.MemoryBIO: SMTP with STARTTLS and implicit TLS as a bytes-in, bytes-out object.

For any event loop that hands you bytes (asyncio.Protocol, selectors,
Twisted): ``SMTPSession`` takes what the transport received and returns what
to write.  ``asyncio_example`` shows a whole server on asyncio's Protocol API.
"""

from smtpwire_handler import (
    FEED_SIZE,
    Address,
    ClientCounter,
    EmailHandler,
    Envelope,
    Handler,
    MaildirStore,
    MboxStore,
    Params,
    PendingInput,
    PrintHandler,
    Reject,
    ServerOptions,
    Session,
    TLSInfo,
)
from smtpwire_handler import too_many_sessions as too_many

from ._session import SMTPSession

__all__ = [
    "FEED_SIZE",
    "Address",
    "ClientCounter",
    "EmailHandler",
    "Envelope",
    "Handler",
    "MaildirStore",
    "MboxStore",
    "Params",
    "PendingInput",
    "PrintHandler",
    "Reject",
    "SMTPSession",
    "ServerOptions",
    "Session",
    "TLSInfo",
    "too_many",
]
