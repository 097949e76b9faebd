"""The names an application's handler uses, which every adapter re-exports as its own.

An adapter's ``__init__`` says ``from smtpwire_handler.api import *`` and
adds these names to its ``__all__``, so ``smtpwire_blocking.Handler`` and
``smtpwire_asyncio.Handler`` are the same class, listed once, here.  The
async adapters add ``AsyncHandler``, ``AsyncComposite`` and ``AsyncMaildirStore``.
"""

from ._compose import Composite
from ._handler import Handler, Params, Reject
from ._options import ServerOptions
from ._printing import EmailHandler, PrintHandler
from ._session import Address, Envelope, Session, TLSInfo, TransactionSlot
from ._stores import MaildirStore, MboxStore

__all__ = [
    "Address",
    "Composite",
    "EmailHandler",
    "Envelope",
    "Handler",
    "MaildirStore",
    "MboxStore",
    "Params",
    "PrintHandler",
    "Reject",
    "ServerOptions",
    "Session",
    "TLSInfo",
    "TransactionSlot",
]
