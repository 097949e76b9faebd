"""What the server asks of the transport and promises about its limits: REQUIRETLS and LIMITS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._extensions import Extension
from ._reply import TLS_REQUIRED, Reply

if TYPE_CHECKING:  # pragma: no cover
    from ._connection import ServerConnection

REQUIRETLS_TAKES_NO_VALUE = Reply(501, "REQUIRETLS takes no value", (5, 5, 4))


class RequireTls(Extension):
    """RFC 8689: a sender may require TLS on every hop of its message.

    Offered only while TLS is active (RFC 8689 4: the option is only valid in
    a TLS session); the MAIL parameter takes no value.  The application finds
    it in the transaction's ``mail_params`` and must tag the message with it:
    relaying it onwards only over verified TLS to servers that offer
    REQUIRETLS, or bouncing it (5.7.30).
    """

    keyword = "REQUIRETLS"
    line_allowance = 11  # RFC 8689 3: " REQUIRETLS"
    mail_parameters = frozenset({"REQUIRETLS"})

    def ehlo_line(self, conn: ServerConnection) -> str | None:
        return self.keyword if conn.tls_active else None

    def check_parameter(self, conn: ServerConnection, name: str, value: str | None) -> Reply | None:
        if not conn.tls_active:  # holds whatever decides when the core asks (never offered then: 555 comes first)
            return TLS_REQUIRED
        if value is not None:
            return REQUIRETLS_TAKES_NO_VALUE
        return None


class Limits(Extension):
    """RFC 9422: tell the client the recipients a transaction may have (``RCPTMAX``).

    The value is ``config.max_recipients``, which the core enforces (452
    4.5.3).  ``MAILMAX`` is not advertised: the core does not limit the
    transactions of a session, and a limit is only advertised where it is kept.
    """

    keyword = "LIMITS"

    def ehlo_line(self, conn: ServerConnection) -> str:
        return f"LIMITS RCPTMAX={conn.config.max_recipients}"
