"""What every smtpwire adapter shares: the handler API, the session and the session driver.

Applications import these names from the adapter they run on
(``smtpwire_asyncio``, ``smtpwire_anyio``, ``smtpwire_blocking``, ``smtpwire_memorybio``).
"""

from ._driver import (
    AUTH_UNAVAILABLE,
    BAD_CREDENTIALS,
    CLOSED,
    LOCAL_ERROR,
    NEED_DATA,
    START_TLS,
    HookWait,
    SessionDriver,
    Step,
    overridden_hooks,
    too_many_sessions,
)
from ._handler import AsyncHandler, Handler, MaybeAwaitable, Params, Reject
from ._options import ServerOptions
from ._server import HostPort, ServerBase
from ._session import Address, Envelope, Session, TLSInfo, tls_info

__all__ = [
    "AUTH_UNAVAILABLE",
    "BAD_CREDENTIALS",
    "CLOSED",
    "LOCAL_ERROR",
    "NEED_DATA",
    "START_TLS",
    "Address",
    "AsyncHandler",
    "Envelope",
    "Handler",
    "HookWait",
    "HostPort",
    "MaybeAwaitable",
    "Params",
    "Reject",
    "ServerBase",
    "ServerOptions",
    "Session",
    "SessionDriver",
    "Step",
    "TLSInfo",
    "overridden_hooks",
    "tls_info",
    "too_many_sessions",
]
