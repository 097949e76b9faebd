"""Everything that affects the state machine lives here, as data (as in h11).

``TRANSITIONS`` says where each session outcome leads from each state;
``ALLOWED_STATES`` and ``SEQUENCE_ERRORS`` say where each verb may be used
(RFC 5321 4.1.4) and what a verb used elsewhere is answered.  The connection
only looks these up.
"""

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
    CHUNK = "reading the octets of an accepted BDAT chunk"
    BDAT = "between the BDAT chunks of a message"
    AUTH = "reading the client's SASL responses"
    TLS_HANDSHAKE = "STARTTLS accepted; waiting for the adapter's handshake"
    CLOSED = "closed"

    #: Members are singletons compared by identity, so the identity hash is the right one; Enum's own
    #: hashes the name in Python, and the connection looks its reader up by state for every event.
    __hash__ = object.__hash__


class Outcome(enum.Enum):
    """What happened that moves the session on (an answer, a command, the adapter's report)."""

    GREETING_SENT = "the application greeted with 220"
    GREETING_REFUSED = "the application greeted with 554"
    HELLO_ACCEPTED = "HELO or EHLO answered 250"
    MAIL_ACCEPTED = "MAIL answered 250"
    RCPT_ACCEPTED = "RCPT answered 250 or 251"
    DATA_ACCEPTED = "DATA answered 354"
    CHUNK_ACCEPTED = "a BDAT chunk is to be read"
    CHUNK_ENDED = "a chunk without LAST was read and answered 250"
    MESSAGE_ENDED = "the end of data was answered, whatever the answer"
    RESET = "RSET"
    STARTTLS_ACCEPTED = "STARTTLS answered 220"
    TLS_ESTABLISHED = "the adapter's handshake succeeded"
    AUTH_CHALLENGED = "the server sent a SASL challenge"
    AUTH_ENDED = "the AUTH exchange ended, either way"
    SESSION_RESTARTED = "a verb that starts the session over (XCLIENT) was answered positively"
    CLOSED = "QUIT, 421, the peer's end of stream or a failed handshake"

    __hash__ = object.__hash__


_SESSION = frozenset({State.GREETED, State.READY, State.MAIL, State.RCPT, State.BDAT})
_GREETED = frozenset({State.READY, State.MAIL, State.RCPT, State.BDAT})
_TRANSACTION = frozenset({State.MAIL, State.RCPT})
_BEFORE_TRANSACTION = frozenset({State.GREETED, State.READY})


def _table(*rows: tuple[Outcome, dict[State, State]]) -> dict[State, dict[Outcome, State]]:
    """Rows per outcome, read as ``{state: {outcome: next state}}`` (two lookups, nothing built per move)."""
    table: dict[State, dict[Outcome, State]] = {state: {Outcome.CLOSED: State.CLOSED} for state in State}
    for outcome, moves in rows:
        for state, after in moves.items():
            table[state][outcome] = after
    return table


#: From each state, where each outcome leads; an outcome missing for a state cannot happen there.
TRANSITIONS = _table(
    (Outcome.GREETING_SENT, {State.GREETING: State.GREETED}),
    (Outcome.GREETING_REFUSED, {State.GREETING: State.REFUSED}),
    (Outcome.HELLO_ACCEPTED, dict.fromkeys(_SESSION, State.READY)),
    (Outcome.MAIL_ACCEPTED, {State.READY: State.MAIL}),
    (Outcome.RCPT_ACCEPTED, dict.fromkeys(_TRANSACTION, State.RCPT)),
    (Outcome.DATA_ACCEPTED, {State.RCPT: State.DATA}),
    (Outcome.CHUNK_ACCEPTED, {State.RCPT: State.CHUNK, State.BDAT: State.CHUNK}),
    (Outcome.CHUNK_ENDED, {State.CHUNK: State.BDAT}),
    # answered, or refused as too big before or between BDAT chunks
    (Outcome.MESSAGE_ENDED, dict.fromkeys((State.DATA, State.CHUNK, State.RCPT, State.BDAT), State.READY)),
    (Outcome.RESET, {State.GREETED: State.GREETED, **dict.fromkeys(_GREETED, State.READY)}),
    (Outcome.STARTTLS_ACCEPTED, {State.READY: State.TLS_HANDSHAKE}),
    (Outcome.TLS_ESTABLISHED, {State.TLS_HANDSHAKE: State.GREETED}),  # RFC 3207 4.2: start over
    (Outcome.AUTH_CHALLENGED, {State.READY: State.AUTH, State.AUTH: State.AUTH}),
    (Outcome.AUTH_ENDED, {State.READY: State.READY, State.AUTH: State.READY}),
    # Postfix's XCLIENT: a new greeting, and the session starts over as after STARTTLS
    (Outcome.SESSION_RESTARTED, dict.fromkeys(_BEFORE_TRANSACTION, State.GREETED)),
)

#: Where each verb may be used; anywhere else gets a sequence error.
ALLOWED_STATES: dict[str, frozenset[State]] = {
    "HELO": _SESSION,
    "EHLO": _SESSION,
    "LHLO": _SESSION,
    "RSET": _SESSION,
    "NOOP": _SESSION,
    "VRFY": _SESSION,
    "HELP": _SESSION,
    "QUIT": _SESSION | {State.REFUSED},
    "MAIL": frozenset({State.READY}),
    "RCPT": _TRANSACTION,
    "DATA": frozenset({State.RCPT}),
    "BDAT": frozenset({State.RCPT, State.BDAT}),
    "STARTTLS": frozenset({State.READY}),
    "AUTH": frozenset({State.READY}),
}

#: Where an extension's verb may be used (``Verb.states``): the sets the standard verbs use.
ANY_TIME = _SESSION  # like NOOP: before or after HELO/EHLO, in a transaction or not
AFTER_HELLO = _GREETED  # after HELO/EHLO, in a transaction or not
OUTSIDE_TRANSACTION = ALLOWED_STATES["MAIL"]  # like AUTH and STARTTLS: after HELO/EHLO, before MAIL
IN_TRANSACTION = _TRANSACTION  # like RCPT: after MAIL, before DATA
BEFORE_TRANSACTION = _BEFORE_TRANSACTION  # like XCLIENT: before or after HELO/EHLO, not in a transaction

_BAD_SEQUENCE = (5, 5, 1)

#: Also AUTH's answer after HELO: its extensions need EHLO.
SEND_EHLO_FIRST = Reply(503, "Send EHLO first", _BAD_SEQUENCE)
_SEND_HELLO_FIRST = Reply(503, "Send HELO/EHLO first", _BAD_SEQUENCE)
_NESTED_MAIL = Reply(503, "Nested MAIL command", _BAD_SEQUENCE)
_NEED_MAIL = Reply(503, "Need MAIL before RCPT", _BAD_SEQUENCE)
_NO_TRANSACTION = Reply(503, "Need MAIL command", _BAD_SEQUENCE)
_NO_RECIPIENTS = Reply(554, "No valid recipients", _BAD_SEQUENCE)
_IN_TRANSACTION = Reply(503, "Transaction in progress", _BAD_SEQUENCE)
_IN_MESSAGE = Reply(503, "DATA cannot follow BDAT (RFC 3030 2)", _BAD_SEQUENCE)
_AUTH_IN_TRANSACTION = Reply(503, "AUTH is not allowed during a mail transaction", _BAD_SEQUENCE)

#: The sequence error for a verb used in the wrong state, when more specific than the default.
SEQUENCE_ERRORS: dict[tuple[str, State], Reply] = {
    ("MAIL", State.GREETED): _SEND_HELLO_FIRST,
    ("MAIL", State.MAIL): _NESTED_MAIL,
    ("MAIL", State.RCPT): _NESTED_MAIL,
    ("RCPT", State.GREETED): _NEED_MAIL,
    ("RCPT", State.READY): _NEED_MAIL,
    ("DATA", State.GREETED): _NO_TRANSACTION,
    ("DATA", State.READY): _NO_TRANSACTION,
    ("DATA", State.MAIL): _NO_RECIPIENTS,
    ("DATA", State.BDAT): _IN_MESSAGE,
    ("BDAT", State.GREETED): _NO_TRANSACTION,
    ("BDAT", State.READY): _NO_TRANSACTION,
    ("BDAT", State.MAIL): _NO_RECIPIENTS,
    ("MAIL", State.BDAT): _NESTED_MAIL,
    ("STARTTLS", State.GREETED): SEND_EHLO_FIRST,
    ("STARTTLS", State.MAIL): _IN_TRANSACTION,
    ("STARTTLS", State.RCPT): _IN_TRANSACTION,
    ("STARTTLS", State.BDAT): _IN_TRANSACTION,
    ("AUTH", State.GREETED): SEND_EHLO_FIRST,
    ("AUTH", State.MAIL): _AUTH_IN_TRANSACTION,
    ("AUTH", State.RCPT): _AUTH_IN_TRANSACTION,
    ("AUTH", State.BDAT): _AUTH_IN_TRANSACTION,
}
#: In LMTP the greeting command is LHLO (RFC 2033 4.1).
SEND_LHLO_FIRST = Reply(503, "Send LHLO first", _BAD_SEQUENCE)
LMTP_SEQUENCE_ERRORS = {
    key: SEND_LHLO_FIRST if reply in (_SEND_HELLO_FIRST, SEND_EHLO_FIRST) else reply
    for key, reply in SEQUENCE_ERRORS.items()
}
DEFAULT_SEQUENCE_ERROR = Reply(503, "Bad sequence of commands", _BAD_SEQUENCE)

#: Verbs of RFC 5321 and its ancestors that this server knowingly does not implement.
NOT_IMPLEMENTED = frozenset({"EXPN", "SEND", "SOML", "SAML", "TURN"})

#: What may still be said before TLS when the configuration requires it (RFC 3207 4); the rest gets 530.
#: HELO and RSET are not among them: the RFC lists only NOOP, EHLO (LHLO in LMTP), STARTTLS and QUIT.
BEFORE_TLS = frozenset({"EHLO", "LHLO", "STARTTLS", "NOOP", "QUIT"})

#: Verbs the core implements itself: an extension cannot declare them (it may declare EXPN or TURN).
CORE_VERBS = frozenset(ALLOWED_STATES)
