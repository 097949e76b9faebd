"""smtpwire_testing: a real SMTP server for test suites, to catch (and refuse) the mail your code sends.

``MailServer`` runs in a background thread on 127.0.0.1 and a free port;
the pytest plugin (``smtpwire_testing.pytest_plugin``, registered by the
``pytest11`` entry point) hands it to tests as the ``mail_server`` fixture.
The names load on first use, so that pytest loading the plugin in a run
that never asks for a server costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._content import Attachment
    from ._faults import POINTS, Fault, Point
    from ._outbox import Outbox, ReceivedMessage, SessionInfo
    from ._server import POSTFIX_MESSAGE_SIZE_LIMIT, MailServer, MailServerView
    from ._tls import test_ca

_WHERE = {
    "Attachment": "._content",
    "POINTS": "._faults",
    "Fault": "._faults",
    "Point": "._faults",
    "Outbox": "._outbox",
    "ReceivedMessage": "._outbox",
    "SessionInfo": "._outbox",
    "POSTFIX_MESSAGE_SIZE_LIMIT": "._server",
    "MailServer": "._server",
    "MailServerView": "._server",
    "test_ca": "._tls",
}

__all__ = [
    "POINTS",
    "POSTFIX_MESSAGE_SIZE_LIMIT",
    "Attachment",
    "Fault",
    "MailServer",
    "MailServerView",
    "Outbox",
    "Point",
    "ReceivedMessage",
    "SessionInfo",
    "serve_in_thread",
    "test_ca",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


def serve_in_thread(**options: Any) -> MailServer:
    """A started ``MailServer`` (the same options); stop it with ``stop()`` or use it in a ``with`` block."""
    from ._server import MailServer

    return MailServer(**options).start()
