"""What every smtpwire adapter shares: the handler API, the session, the session driver and the stock handlers.

Applications import these names from the adapter they run on
(``smtpwire_asyncio``, ``smtpwire_anyio``, ``smtpwire_blocking``, ``smtpwire_memorybio``).
The stock handlers (``MaildirStore``, ``MboxStore``, ``PrintHandler``,
``EmailHandler``) and the Maildir they build on are in docs/stores.md.
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
from ._maildir import STORAGE_FAILED, STORAGE_FULL, Delivery, DirectorySync, Maildir, storage_reply
from ._options import ServerOptions, client_key
from ._printing import EmailHandler, PrintHandler
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
from ._stores import MaildirStore, MboxStore
from ._trace import trace_headers
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
    "STORAGE_FAILED",
    "STORAGE_FULL",
    "AcceptErrors",
    "Address",
    "AsyncHandler",
    "ClientCounter",
    "Delivery",
    "DirectorySync",
    "EmailHandler",
    "Envelope",
    "Handler",
    "HookWait",
    "HostPort",
    "Maildir",
    "MaildirStore",
    "MaybeAwaitable",
    "MboxStore",
    "Params",
    "PendingInput",
    "PrintHandler",
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
    "storage_reply",
    "tls_info",
    "too_many_sessions",
    "trace_headers",
]
