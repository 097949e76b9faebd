"""What every smtpwire adapter shares: the handler API, the session, and the stock stores and handlers.

Applications import these names from the adapter they run on
(``smtpwire_asyncio``, ``smtpwire_anyio``, ``smtpwire_blocking``, ``smtpwire_memorybio``).
The stock handlers (``MaildirStore``, ``MboxStore``, ``AsyncMaildirStore``,
``PrintHandler``, ``EmailHandler``), their composition and the Maildir they
build on are in docs/stores.md.  The pieces for building an adapter are in
``smtpwire_handler.kit``.
"""

from ._async_maildir import AsyncMaildirStore
from ._compose import AsyncComposite, Composite
from ._handler import DEFAULT_OUTCOMES, AsyncHandler, Handler, MaybeAwaitable, Params, Reject
from ._maildir import STORAGE_FAILED, STORAGE_FULL, Delivery, DirectorySync, Maildir, storage_reply
from ._options import ServerOptions
from ._printing import EmailHandler, PrintHandler
from ._session import Address, Envelope, Session, TLSInfo, TransactionSlot
from ._stores import MaildirStore, MboxStore
from ._trace import trace_headers

__all__ = [
    "DEFAULT_OUTCOMES",
    "STORAGE_FAILED",
    "STORAGE_FULL",
    "Address",
    "AsyncComposite",
    "AsyncHandler",
    "AsyncMaildirStore",
    "Composite",
    "Delivery",
    "DirectorySync",
    "EmailHandler",
    "Envelope",
    "Handler",
    "Maildir",
    "MaildirStore",
    "MaybeAwaitable",
    "MboxStore",
    "Params",
    "PrintHandler",
    "Reject",
    "ServerOptions",
    "Session",
    "TLSInfo",
    "TransactionSlot",
    "storage_reply",
    "trace_headers",
]
