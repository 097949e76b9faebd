"""A certificate authority made once per process (trustme), the server's certificate and the client's context."""

from __future__ import annotations

import functools
import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trustme

#: What the server's certificate is valid for: clients may connect by name or by address.
IDENTITIES = ("localhost", "127.0.0.1", "::1")


@functools.cache
def test_ca() -> trustme.CA:
    """The process's one test CA (making an RSA key costs tens of milliseconds: once is enough)."""
    try:
        import trustme
    except ImportError:  # pragma: no cover - the [testing] extra installs it
        raise RuntimeError("TLS in smtpwire_testing needs trustme: pip install 'smtpwire[testing]'") from None
    return trustme.CA()


@functools.cache
def _issued(ca: Any, hostname: str) -> Any:
    return ca.issue_cert(*dict.fromkeys((hostname, *IDENTITIES)))


def server_context(ca: trustme.CA, hostname: str) -> ssl.SSLContext:
    """The server's context: a certificate for ``hostname``, localhost and the loopback addresses."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _issued(ca, hostname).configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the test CA and nothing else, verifying names as a real client does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name; trusts nothing yet
    ca.configure_trust(context)
    return context
