"""What every smtpwire adapter shares: the handler API, the session and the event-to-hook driver.

Applications import these names from the adapter they run on
(``smtpwire_anyio``, ``smtpwire_blocking``, ``smtpwire_memorybio``).
"""

from ._driver import (
    AUTH_UNAVAILABLE,
    BAD_CREDENTIALS,
    LOCAL_ERROR,
    HookCall,
    SessionDriver,
    run_async_hook,
    run_hook,
    too_many_sessions,
)
from ._handler import AsyncHandler, Handler, Params, Reject
from ._options import ServerOptions
from ._session import Address, Envelope, Session, TLSInfo, tls_info

__all__ = [
    "AUTH_UNAVAILABLE",
    "BAD_CREDENTIALS",
    "LOCAL_ERROR",
    "Address",
    "AsyncHandler",
    "Envelope",
    "Handler",
    "HookCall",
    "Params",
    "Reject",
    "ServerOptions",
    "Session",
    "SessionDriver",
    "TLSInfo",
    "run_async_hook",
    "run_hook",
    "tls_info",
    "too_many_sessions",
]
