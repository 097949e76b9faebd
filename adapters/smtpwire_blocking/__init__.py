"""smtpwire on blocking sockets: one thread per session, STARTTLS with ``SSLContext.wrap_socket``.

``Server(handler, options, listen=[...], tls_listen=[...])`` serves plain
listeners (offering STARTTLS when ``options.tls_context`` is set) and
implicit-TLS listeners (RFC 8314); the hooks are the plain ``def`` methods
of ``Handler``; ``serve(handler, options, listen=[...])`` runs one until
Ctrl-C.  ``BlockingSession`` serves one socket you accepted yourself.
"""

from smtpwire_handler.api import *  # noqa: F403  (the handler API, re-exported)
from smtpwire_handler.api import __all__ as _handler_api

from ._server import Server, serve
from ._session import BlockingSession

__all__ = [*_handler_api, "BlockingSession", "Server", "serve"]
