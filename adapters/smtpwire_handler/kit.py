"""The pieces for building an adapter: what every smtpwire server is made of, written once.

An application never needs these: it imports its handler API from the
adapter it runs on.  An adapter is its I/O around two of them:

- ``SessionDriver`` runs one connection (the core, the hooks, input pacing,
  the STARTTLS rules, deadlines, the transcript and the log lines) and says
  what to do next: ``NEED_DATA``, ``FLUSH``, ``START_TLS``, ``CLOSED`` or a
  ``HookWait``; see ``_driver``'s docstring for the loop.
- ``ServerBase`` holds the server-running rules: one bind (``tcp_sockets``,
  ``BACKLOG``), one ``Admission`` (the session limits) with its bounded
  ``Refusals``, and one ``shutdown_plan``.
"""

from ._admission import REFUSALS_AT_ONCE, Admission, ClientCounter, Refusals, too_many_connections
from ._checks import check_handler
from ._driver import (
    AUTH_UNAVAILABLE,
    BAD_CREDENTIALS,
    CLOSED,
    FLUSH,
    LOCAL_ERROR,
    NEED_DATA,
    START_TLS,
    AdapterStep,
    HookWait,
    Phase,
    SessionDriver,
    overridden_hooks,
)
from ._handler import DEFAULT_OUTCOMES
from ._listen import ACCEPT_RETRY, BACKLOG, AcceptErrors, HostPort, Listening, tcp_sockets
from ._options import client_key
from ._server import ServerBase
from ._session import tls_info
from ._shutdown import ABORT_AFTER, ShutdownStep, shutdown_plan
from ._unix import DEFAULT_MODE, UnixListener

__all__ = [
    "ABORT_AFTER",
    "ACCEPT_RETRY",
    "AUTH_UNAVAILABLE",
    "BACKLOG",
    "BAD_CREDENTIALS",
    "CLOSED",
    "DEFAULT_MODE",
    "DEFAULT_OUTCOMES",
    "FLUSH",
    "LOCAL_ERROR",
    "NEED_DATA",
    "REFUSALS_AT_ONCE",
    "START_TLS",
    "AcceptErrors",
    "AdapterStep",
    "Admission",
    "ClientCounter",
    "HookWait",
    "HostPort",
    "Listening",
    "Phase",
    "Refusals",
    "ServerBase",
    "SessionDriver",
    "ShutdownStep",
    "UnixListener",
    "check_handler",
    "client_key",
    "overridden_hooks",
    "shutdown_plan",
    "tcp_sockets",
    "tls_info",
    "too_many_connections",
]
