"""What every smtpwire adapter shares: the handler API, the session and the session driver.

Applications import these names from the adapter they run on
(``smtpwire_asyncio``, ``smtpwire_anyio``, ``smtpwire_blocking``, ``smtpwire_memorybio``).
"""

from ._checks import check_handler
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
from ._options import ServerOptions, client_key
from ._server import (
    ACCEPT_RETRY,
    FEED_SIZE,
    AcceptErrors,
    ClientCounter,
    HostPort,
    PendingInput,
    ServerBase,
)
from ._session import Address, Envelope, Session, TLSInfo, tls_info
from ._unix import DEFAULT_MODE, UnixListener

__all__ = [
    "ACCEPT_RETRY",
    "AUTH_UNAVAILABLE",
    "BAD_CREDENTIALS",
    "CLOSED",
    "DEFAULT_MODE",
    "FEED_SIZE",
    "LOCAL_ERROR",
    "NEED_DATA",
    "START_TLS",
    "AcceptErrors",
    "Address",
    "AsyncHandler",
    "ClientCounter",
    "Envelope",
    "Handler",
    "HookWait",
    "HostPort",
    "MaybeAwaitable",
    "Params",
    "PendingInput",
    "Reject",
    "ServerBase",
    "ServerOptions",
    "Session",
    "SessionDriver",
    "Step",
    "TLSInfo",
    "UnixListener",
    "check_handler",
    "client_key",
    "overridden_hooks",
    "tls_info",
    "too_many_sessions",
]
