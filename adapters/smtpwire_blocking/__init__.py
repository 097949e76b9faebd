"""smtpwire on blocking sockets: one thread per session, STARTTLS with ``SSLContext.wrap_socket``."""

from smtpwire_handler import Envelope, Handler, Reject, ServerOptions, Session, TLSInfo

from ._server import Server
from ._session import BlockingSession

__all__ = ["BlockingSession", "Envelope", "Handler", "Reject", "Server", "ServerOptions", "Session", "TLSInfo"]
