"""smtpwire over ssl.MemoryBIO: SMTP with STARTTLS and implicit TLS as a bytes-in, bytes-out object.

For any event loop that hands you bytes (asyncio.Protocol, selectors,
Twisted): ``MemoryBIOSession`` takes what the transport received and returns what
to write.  docs/examples/memorybio_asyncio.py is a whole server on asyncio's Protocol API.
"""

from smtpwire_handler.api import *  # noqa: F403  (the handler API, re-exported)
from smtpwire_handler.api import __all__ as _handler_api

from ._session import MemoryBIOSession

__all__ = [*_handler_api, "MemoryBIOSession"]
