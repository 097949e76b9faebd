"""The TLS handshake on a live socket, bounded in time, for STARTTLS and implicit TLS alike."""

from __future__ import annotations

import socket
import ssl


class HandshakeFailed(Exception):
    """The client could not or would not complete the handshake; the socket is closed."""


def handshake(sock: socket.socket, context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """Upgrade ``sock`` in place, as the server; the whole handshake must end within ``timeout`` seconds.

    Every way it can go wrong (garbage instead of a ClientHello, no common
    protocol version or cipher, the client leaving, a stalled peer) raises
    ``HandshakeFailed`` with the reason; the socket is closed by then.
    """
    sock.settimeout(timeout)
    try:
        return context.wrap_socket(sock, server_side=True)
    except (OSError, ValueError) as error:  # ssl.SSLError and TimeoutError are OSErrors
        sock.close()  # already detached by wrap_socket, which closed the descriptor; this is for the odd path
        raise HandshakeFailed(_reason(error)) from error


def _reason(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError) and error.reason:
        return f"{error.library or 'SSL'}: {error.reason}"
    return str(error) or type(error).__name__
