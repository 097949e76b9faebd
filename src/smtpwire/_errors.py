"""Errors the core raises: only for the application's mistakes.

Peer misbehaviour never raises; it becomes a reply plus a ``CommandRejected``
event, because a server must answer bad input, not crash on it.
"""


class LocalProtocolError(Exception):
    """The application misused the connection (a bug in the caller, not the peer)."""
