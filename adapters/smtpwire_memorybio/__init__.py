"""smtpwire over ssl.MemoryBIO: SMTP with STARTTLS and implicit TLS as a bytes-in, bytes-out object.

For any event loop that hands you bytes (asyncio.Protocol, selectors,
Twisted): ``SMTPSession`` takes what the transport received and returns what
to write.  ``asyncio_example`` shows a whole server on asyncio's Protocol API.
"""

from smtpwire_handler import FEED_SIZE, ClientCounter, PendingInput
from smtpwire_handler import too_many_sessions as too_many
from smtpwire_handler.api import *  # noqa: F403  (the handler API, re-exported)
from smtpwire_handler.api import __all__ as _handler_api

from ._session import SMTPSession

__all__ = [*_handler_api, "FEED_SIZE", "ClientCounter", "PendingInput", "SMTPSession", "too_many"]
