"""Session states and the RFC 5321 4.1.4 command-order rules, as data."""

from __future__ import annotations

import enum

from ._reply import Reply


class State(enum.Enum):
    GREETING = "waiting for the application's greeting"
    REFUSED = "greeted with 554; only QUIT is served"
    GREETED = "no HELO/EHLO yet"
    READY = "greeted, no transaction"
    MAIL = "MAIL accepted"
    RCPT = "at least one RCPT accepted"
    DATA = "reading the message"
    AUTH = "reading the client's SASL responses"
    TLS_HANDSHAKE = "STARTTLS accepted; waiting for the adapter's handshake"
    CLOSED = "closed"

    #: Members are singletons compared by identity, so the identity hash is the right one; Enum's own
    #: hashes the name in Python, and the connection looks its reader up by state for every event.
    __hash__ = object.__hash__


_SESSION = frozenset({State.GREETED, State.READY, State.MAIL, State.RCPT})

#: Where each verb may be used; anywhere else gets a sequence error.
ALLOWED_STATES: dict[str, frozenset[State]] = {
    "HELO": _SESSION,
    "EHLO": _SESSION,
    "RSET": _SESSION,
    "NOOP": _SESSION,
    "VRFY": _SESSION,
    "HELP": _SESSION,
    "QUIT": _SESSION | {State.REFUSED},
    "MAIL": frozenset({State.READY}),
    "RCPT": frozenset({State.MAIL, State.RCPT}),
    "DATA": frozenset({State.RCPT}),
    "STARTTLS": frozenset({State.READY}),
    "AUTH": frozenset({State.READY}),
}

_BAD_SEQUENCE = (5, 5, 1)

#: The sequence error for a verb used in the wrong state, when more specific than the default.
SEQUENCE_ERRORS: dict[tuple[str, State], Reply] = {
    ("MAIL", State.GREETED): Reply(503, "Send HELO/EHLO first", _BAD_SEQUENCE),
    ("MAIL", State.MAIL): Reply(503, "Nested MAIL command", _BAD_SEQUENCE),
    ("MAIL", State.RCPT): Reply(503, "Nested MAIL command", _BAD_SEQUENCE),
    ("RCPT", State.GREETED): Reply(503, "Need MAIL before RCPT", _BAD_SEQUENCE),
    ("RCPT", State.READY): Reply(503, "Need MAIL before RCPT", _BAD_SEQUENCE),
    ("DATA", State.GREETED): Reply(503, "Need MAIL command", _BAD_SEQUENCE),
    ("DATA", State.READY): Reply(503, "Need MAIL command", _BAD_SEQUENCE),
    ("DATA", State.MAIL): Reply(554, "No valid recipients", _BAD_SEQUENCE),
    ("STARTTLS", State.GREETED): Reply(503, "Send EHLO first", _BAD_SEQUENCE),
    ("STARTTLS", State.MAIL): Reply(503, "Transaction in progress", _BAD_SEQUENCE),
    ("STARTTLS", State.RCPT): Reply(503, "Transaction in progress", _BAD_SEQUENCE),
    ("AUTH", State.GREETED): Reply(503, "Send EHLO first", _BAD_SEQUENCE),
    ("AUTH", State.MAIL): Reply(503, "AUTH is not allowed during a mail transaction", _BAD_SEQUENCE),
    ("AUTH", State.RCPT): Reply(503, "AUTH is not allowed during a mail transaction", _BAD_SEQUENCE),
}
DEFAULT_SEQUENCE_ERROR = Reply(503, "Bad sequence of commands", _BAD_SEQUENCE)

#: Verbs of RFC 5321 and its ancestors that this server knowingly does not implement.
NOT_IMPLEMENTED = frozenset({"EXPN", "SEND", "SOML", "SAML", "TURN"})
