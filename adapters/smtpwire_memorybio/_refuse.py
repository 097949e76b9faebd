"""The answer to a connection the server will not serve."""

from __future__ import annotations

from smtpwire_handler import ServerOptions, too_many_sessions


def too_many(options: ServerOptions) -> bytes:
    """The ``421 4.7.0`` greeting for a connection over the session limit (plaintext): write it, then close."""
    conn = options.new_connection()
    too_many_sessions(conn)
    return conn.data_to_send()
