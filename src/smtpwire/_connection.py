"""One SMTP server conversation: bytes in, events out, replies queued.

The connection only routes: readers are chosen by state, commands by verb
(the core's own, then the extensions'), the order rules and every state
transition live in ``_state``, the grammar in ``_grammar``, DATA in
``_dotreader``.  It never blocks, reads a clock or touches a socket.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _auth
from . import _events as ev
from ._auth import Auth
from ._config import ServerConfig
from ._dotreader import DotReader
from ._errors import LocalProtocolError
from ._extensions import Extension, Extensions
from ._grammar import (
    FORBIDDEN_IN_COMMAND,
    GrammarError,
    PathArgument,
    parse_path_argument,
    valid_ehlo_line,
    valid_hello_name,
)
from ._receivebuffer import ReceiveBuffer
from ._reply import AUTHENTICATED, MESSAGE_TOO_BIG, OK, TLS_REQUIRED, Reply, cached_reply
from ._sasl import (
    Challenge,
    CheckPassword,
    Failure,
    LookupPassword,
    LookupScram,
    Mechanism,
    ScramCredentials,
    Step,
    Success,
)
from ._state import (
    ALLOWED_STATES,
    BEFORE_TLS,
    DEFAULT_SEQUENCE_ERROR,
    LMTP_SEQUENCE_ERRORS,
    NOT_IMPLEMENTED,
    SEND_EHLO_FIRST,
    SEQUENCE_ERRORS,
    TRANSITIONS,
    Outcome,
    State,
)


class Sentinel(enum.Enum):
    NEED_DATA = "feed more bytes with receive_data()"
    PAUSED = "answer the pending decision (or finish the TLS handshake) first"


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED

NextEvent = ev.Event | Sentinel
MessageEnd = ev.EndOfMessage | ev.MessageRejected

#: The core's verbs that belong to an extension: served (and listed by HELP) only while it is offered.
_EXTENSION_VERBS = {"STARTTLS": "STARTTLS", "AUTH": "AUTH", "BDAT": "CHUNKING"}
_RECEIVABLE = (bytes, bytearray, memoryview)
#: Enum members used for every read or message, as constants: in Python 3.11 looking one up (``State.CLOSED``)
#: goes through the Enum metaclass's ``__getattr__`` hook, as slow as a Python call.
_DROPPING_INPUT = frozenset({State.TLS_HANDSHAKE, State.CLOSED})  # states in which received bytes are dropped
_MAIL_ACCEPTED = Outcome.MAIL_ACCEPTED
_RCPT_ACCEPTED = Outcome.RCPT_ACCEPTED
_DATA_ACCEPTED = Outcome.DATA_ACCEPTED
_MESSAGE_ENDED = Outcome.MESSAGE_ENDED


@dataclass(frozen=True, init=False)
class Transaction:
    """The envelope so far: what MAIL and the accepted RCPTs said.

    Each accepted RCPT replaces it with a copy one recipient longer; ``number``
    stays, so a view of the transaction can tell it from the next one.
    """

    mail_from: str
    mail_params: ev.Parameters = field(hash=False)
    recipients: tuple[str, ...] = ()
    #: Each recipient's parameters, in the order of ``recipients``.
    recipient_params: tuple[ev.Parameters, ...] = field(default=(), hash=False)
    #: How the message was sent, once DATA or BDAT was tried: the two may not be mixed (RFC 3030 2).
    body_command: str | None = None
    #: The transaction's place in the connection: 1 for the first MAIL accepted, 2 for the next...
    number: int = 0

    def __init__(
        self,
        mail_from: str,
        mail_params: ev.Parameters,
        recipients: tuple[str, ...] = (),
        recipient_params: tuple[ev.Parameters, ...] = (),
        body_command: str | None = None,
        number: int = 0,
    ) -> None:
        # The fields set in one step: a frozen dataclass's own __init__ calls object.__setattr__ for each,
        # and a transaction is made three times a message (MAIL, RCPT, DATA): 4% of serve's Python work per message.
        vars(self).update(
            mail_from=mail_from,
            mail_params=mail_params,
            recipients=recipients,
            recipient_params=recipient_params,
            body_command=body_command,
            number=number,
        )

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.mail_params

    # Copies made by hand: dataclasses.replace() looks the fields up at every call, once per command.

    def with_recipient(self, address: str, params: ev.Parameters) -> Transaction:
        """The transaction one accepted recipient longer."""
        recipients, recipient_params = (*self.recipients, address), (*self.recipient_params, params)
        return Transaction(
            self.mail_from, self.mail_params, recipients, recipient_params, self.body_command, self.number
        )

    def sent_by(self, body_command: str) -> Transaction:
        """The transaction whose message comes by ``body_command`` (DATA or BDAT)."""
        return Transaction(
            self.mail_from, self.mail_params, self.recipients, self.recipient_params, body_command, self.number
        )

    @property
    def binarymime(self) -> bool:
        """BODY=BINARYMIME: the message may only come by BDAT (RFC 3030 3)."""
        return str(self.mail_params.get("BODY")).upper() == "BINARYMIME"


def _reply(code: int, text: str, enhanced: tuple[int, int, int]) -> Reply:
    return Reply(code, text, enhanced)


LINE_TOO_LONG = _reply(500, "Line too long", (5, 5, 2))
BAD_CHARACTERS = _reply(500, "Invalid characters in command", (5, 5, 2))
UNRECOGNIZED = _reply(500, "Command unrecognized", (5, 5, 2))
NOT_IMPLEMENTED_REPLY = _reply(502, "Command not implemented", (5, 5, 1))
TOO_MANY_RECIPIENTS = _reply(452, "Too many recipients", (4, 5, 3))
BARE_LINE_ENDING = _reply(550, "Message refused: bare CR or LF in data (RFC 5321 2.3.8)", (5, 6, 0))
NON_ASCII_ADDRESS = _reply(553, "Non-ASCII address needs SMTPUTF8", (5, 6, 7))
UNSUPPORTED_PARAMETER = _reply(555, "Unsupported parameter", (5, 5, 4))
TLS_UNAVAILABLE = _reply(454, "TLS not available", (4, 7, 0))
TLS_ACTIVE = _reply(503, "TLS already active", (5, 5, 1))
LMTP_HELLO = _reply(500, "This is LMTP: greet with LHLO (RFC 2033 4.1)", (5, 5, 1))
BDAT_AFTER_DATA = _reply(503, "BDAT cannot follow DATA (RFC 3030 2)", (5, 5, 1))
DATA_AFTER_BDAT = _reply(503, "DATA cannot follow BDAT (RFC 3030 2)", (5, 5, 1))
BINARYMIME_NEEDS_BDAT = _reply(503, "BODY=BINARYMIME needs BDAT, not DATA (RFC 3030 3)", (5, 5, 1))
BDAT_SYNTAX = _reply(501, "Syntax: BDAT chunk-size [LAST]", (5, 5, 4))
#: Without a chunk size the chunk cannot be told from commands: reading on could run its octets as commands.
BDAT_LOST = _reply(421, "Cannot find the end of the BDAT chunk, closing connection", (4, 5, 0))
_MAX_CHUNK_DIGITS = 20
#: RFC 9110 9.3 and RFC 5789 methods, as HTTP sends them: upper case, then a space and the target.
#: No SMTP verb is among them; a line starting so is a web client (or a cross-protocol attack), not SMTP.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
#: What a verb is made of (RFC 5321 4.1.1 Keyword); any other octet (HTAB, VT, NBSP...) ends a word for some reader.
_VERB_OCTETS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
_WORD_SEPARATORS = bytes(octet for octet in range(256) if octet not in _VERB_OCTETS)
#: The first octets of a line whose first word may be BDAT, as one-octet strings.
_MAY_START_BDAT = frozenset(bytes([octet]) for octet in b"Bb" + _WORD_SEPARATORS)
#: RFC 3463: X.1.7 is a bad sender's address, X.1.3 a bad recipient's; 501 as RFC 5321 4.5.3.1.9 has it.
_ADDRESS_STATUS = {"MAIL": (5, 1, 7), "RCPT": (5, 1, 3)}
_ADDRESS_TEXT = {
    "address": "Bad address syntax",
    "local part": "Local part too long (at most 64 octets, RFC 5321 4.5.3.1.1)",
    "domain": "Domain too long (at most 255 octets, RFC 5321 4.5.3.1.2)",
    "path": "Path too long (at most 256 octets, RFC 5321 4.5.3.1.3)",
    "domain characters": "Domain holds characters no U-label may hold (RFC 6531 3.3, RFC 5892)",
    "local part characters": "Local part holds invisible, private-use or unassigned characters",
}
ADDRESS_ERRORS = {
    (verb, what): _reply(501, text, status)
    for verb, status in _ADDRESS_STATUS.items()
    for what, text in _ADDRESS_TEXT.items()
}


def _syntax(usage: str) -> Reply:
    return Reply(501, f"Syntax: {usage}", (5, 5, 4))


HELO_SYNTAX = _syntax("HELO domain or [address literal]")
EHLO_SYNTAX = _syntax("EHLO domain or [address literal]")
LHLO_SYNTAX = _syntax("LHLO domain or [address literal]")
#: Verbs the core knows but does not serve; HELO and EHLO only get here in LMTP, where LHLO replaces them.
_UNSERVED = {**dict.fromkeys(NOT_IMPLEMENTED, NOT_IMPLEMENTED_REPLY), "HELO": LMTP_HELLO, "EHLO": LMTP_HELLO}


class ServerConnection:
    """The server side of one SMTP connection, h11-style.

    Feed received bytes with ``receive_data`` (``b""`` when the peer closed),
    pull events with ``next_event`` until it returns ``NEED_DATA``, answer each
    ``Decision`` event with ``send`` or ``accept``, and write
    ``data_to_send()`` to the peer.
    """

    def __init__(self, config: ServerConfig | None = None, *, tls_active: bool = False) -> None:
        if config is not None and not isinstance(config, ServerConfig):
            raise LocalProtocolError(f"ServerConnection() takes a ServerConfig or None, not {type(config).__name__}")
        self.config = config or ServerConfig()
        self.extensions = Extensions(self.config.extensions)
        self._tls_active = tls_active
        self._state = State.GREETING
        self._buffer = ReceiveBuffer()
        self._outgoing: list[bytes] = []
        self._pending: ev.Decision | None = None
        self._peer_closed = False
        self._discarding_line = False
        self._errors = 0
        self._helo_name: str | None = None
        self._esmtp = False
        self._transaction: Transaction | None = None
        self._transactions = 0  # MAIL commands accepted so far: the next transaction's number, less one
        self._dot = DotReader(check_line_endings=False)
        self._message_size = 0
        self._message_end: MessageEnd | None = None
        self._chunk_size = 0  # the BDAT chunk being read: its size, what is left, whether LAST
        self._chunk_left = 0
        self._chunk_last = False
        self._refused_chunks_left = 0  # octets of refused BDAT chunks still to discard, never commands
        self._long_line_bdat = False  # whether the last line found too long was a BDAT line
        self._recipients_due: tuple[str, ...] = ()  # LMTP: recipients whose end-of-message answer is due
        self._verbs = _LMTP_VERBS if self.config.lmtp else _SMTP_VERBS
        self._sequence_errors = LMTP_SEQUENCE_ERRORS if self.config.lmtp else SEQUENCE_ERRORS
        self._event_from_answer: ev.Event | None = None  # what the last answer led to: the next next_event()
        self._mechanism: Mechanism | None = None
        self._authenticated: ev.Authenticated | None = None
        self._auth_failures = 0

    # -- what the application can look at ----------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def helo_name(self) -> str | None:
        """The name given with HELO/EHLO in this session (forgotten after STARTTLS)."""
        return self._helo_name

    @property
    def esmtp(self) -> bool:
        """True when the client greeted with EHLO (extensions are in force)."""
        return self._esmtp

    @property
    def authenticated(self) -> ev.Authenticated | None:
        """Who the client authenticated as with AUTH (forgotten after STARTTLS)."""
        return self._authenticated

    @property
    def transaction(self) -> Transaction | None:
        return self._transaction

    @property
    def pending(self) -> ev.Decision | None:
        """The decision event waiting for ``send`` or ``accept``, if any."""
        return self._pending

    # -- bytes in, bytes out -------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side.

        Bytes arriving while a TLS handshake is due are plaintext the client
        must not have sent (RFC 3207 4.2), so they are dropped.
        """
        if not isinstance(data, _RECEIVABLE):  # None or "" must not read as the end of the stream
            raise LocalProtocolError(f"receive_data() takes bytes (b'' for end of stream), not {type(data).__name__}")
        if not data:
            self._peer_closed = True
        elif self._state not in _DROPPING_INPUT:
            self._buffer.extend(data)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def next_event(self) -> NextEvent:
        """The next event, ``NEED_DATA`` or ``PAUSED``."""
        if self._event_from_answer is not None:
            event, self._event_from_answer = self._event_from_answer, None
            return event
        if self._pending is not None:
            return PAUSED
        return self._READERS[self._state](self)

    # -- answering decisions ---------------------------------------------

    def send(self, reply: Reply) -> None:
        """Answer the pending decision event with ``reply``.

        Everything that can raise comes before the first change: a call that
        raised leaves the decision pending, to be answered again.
        """
        event = self._pending
        if event is None:
            raise LocalProtocolError("no event is waiting for a reply")
        if not isinstance(reply, Reply):
            raise LocalProtocolError(f"send() takes a Reply, not {type(reply).__name__}")
        accepted = reply.code in event.accepts
        if not accepted and not event.answered_by(reply.code):  # every code ``accepts`` lists answers the event
            raise LocalProtocolError(f"{reply.code} is not an answer to {type(event).__name__}")
        if accepted and isinstance(event, ev.Ehlo):
            reply = cached_reply(reply.code, reply.lines + self._ehlo_keywords())
        self._pending = None
        if self._event_from_answer is event:  # answered (through ``pending``) before next_event() gave it out
            self._event_from_answer = None
        if not (accepted and isinstance(event, ev.DataRequested) and event.chunked):  # no 354 before a chunk
            self._queue(reply, event.carries_enhanced_code(reply.code))
        if reply.code == 421:
            self._move(Outcome.CLOSED)
        elif accepted:
            self._ON_ACCEPT[type(event)](self, event)
        else:
            self._ON_DECLINE.get(type(event), ServerConnection._stay)(self, event)

    def accept(self) -> None:
        """Answer the pending decision event with its standard positive reply."""
        if self._pending is None:
            raise LocalProtocolError("no event is waiting for a reply")
        self.send(self._pending.default_reply(self.config.hostname))

    def supply(self, secret: ScramCredentials | str | None) -> None:
        """Answer the pending ``CredentialsLookup``: the stored secret, or ``None`` for no such user.

        What it leads to (``Authenticated`` or a refusal) is the next event.
        """
        event, mechanism = self._pending, self._mechanism
        if not isinstance(event, ev.CredentialsLookup) or mechanism is None:
            raise LocalProtocolError("no CredentialsLookup is waiting for supply()")
        step = mechanism.found(secret)  # raises on a secret of the wrong type, changing nothing
        self._pending = None
        self._event_from_answer = self._sasl_step(step)

    # -- what the adapter reports ------------------------------------------

    def tls_established(self) -> None:
        """The handshake succeeded: start over as right after the greeting (RFC 3207 4.2)."""
        self._require_handshake()
        self._tls_active = True
        self._buffer.clear()
        self._move(Outcome.TLS_ESTABLISHED)
        self._forget_session()
        self._authenticated = None

    def tls_failed(self) -> None:
        """The handshake failed; nothing more can be said in plaintext or TLS."""
        self._require_handshake()
        self._move(Outcome.CLOSED)

    def timed_out(self) -> None:
        """The adapter's timer fired (RFC 5321 4.5.3.2): 421 and close."""
        self._close_with(Reply(421, f"{self.config.hostname} Timeout, closing connection", (4, 4, 2)))

    def shutdown(self) -> None:
        """The server is going away: 421 and close (RFC 5321 3.8)."""
        self._close_with(Reply(421, f"{self.config.hostname} Service shutting down", (4, 3, 2)))

    # -- internals: output ---------------------------------------------------

    def _queue(self, reply: Reply, enhanced_codes: bool = True) -> None:
        # The registry's own table (the keyword is already upper case), not ``in``'s Python call: once per reply.
        offered = "ENHANCEDSTATUSCODES" in self.extensions._by_keyword
        self._outgoing.append(reply.to_bytes(enhanced_codes and offered))

    def _close_with(self, reply: Reply) -> None:
        if self._state is not State.CLOSED:
            self._pending = None
            if isinstance(self._event_from_answer, ev.Decision):  # the next LMTP recipient's question, now never asked
                self._event_from_answer = None
            self._queue(reply)
            self._move(Outcome.CLOSED)

    def _move(self, outcome: Outcome) -> None:
        """The one place the state changes, as ``_state.TRANSITIONS`` says."""
        self._state = TRANSITIONS[self._state][outcome]

    def _require_handshake(self) -> None:
        if self._state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError(f"no TLS handshake is due in state {self._state.name}")

    def _ehlo_keywords(self) -> tuple[str, ...]:
        """The keyword lines the extensions offer now, each checked: they go on the wire as they are."""
        keywords = []
        for extension in self.extensions:
            if type(extension).offered is Extension.offered:  # offered() asks ehlo_line(): one call answers both
                line = extension.ehlo_line(self)
            else:
                line = extension.ehlo_line(self) if extension.offered(self) else None
            if line is None:
                continue
            if not isinstance(line, str) or not valid_ehlo_line(line):
                raise LocalProtocolError(
                    f"{extension!r}.ehlo_line() must give None or an RFC 5321 4.1.1.1 ehlo-line"
                    f" (a keyword, then printable ASCII parameters after single spaces), not {line!r}"
                )
            keywords.append(line)
        return tuple(keywords)

    def _forget_session(self) -> None:
        self._helo_name = None
        self._esmtp = False
        self._transaction = None

    # -- internals: readers, chosen by state ---------------------------------

    def _read_greeting(self) -> ev.Event:
        self._pending = ev.ConnectionOpened("LMTP" if self.config.lmtp else "ESMTP")
        return self._pending

    def _read_paused(self) -> NextEvent:
        return PAUSED

    def _read_closed(self) -> ev.Event:
        self._move(Outcome.CLOSED)
        return ev.ConnectionClosed()

    def _take_line(self, limit: int) -> bytes | NextEvent | None:
        """The next line without its ending, ``None`` if longer than ``limit``, or what to return instead.

        For a line too long, ``_long_line_bdat`` says whether it was a BDAT line, judged on ``limit`` octets.
        """
        line = self._buffer.extract_line()
        if self._discarding_line:
            if line is None:
                self._buffer.clear()
                return self._read_closed() if self._peer_closed else NEED_DATA
            self._discarding_line = False
            return self._take_line(limit)
        if line is None:
            if len(self._buffer) > limit:
                self._long_line_bdat = _first_word_is_bdat(self._buffer.peek(limit))
                self._buffer.clear()
                self._discarding_line = True  # drop the rest of it as it arrives
                return None
            return self._read_closed() if self._peer_closed else NEED_DATA
        if len(line) > limit:
            self._long_line_bdat = _first_word_is_bdat(line[:limit])
            return None
        return line[: -2 if line.endswith(b"\r\n") else -1]

    def _read_command(self) -> NextEvent:
        if not self._buffer:  # the usual call after a reply: nothing read yet, nothing to parse
            return self._read_closed() if self._peer_closed else NEED_DATA
        if self._refused_chunks_left:  # a refused BDAT chunk's octets are never commands
            self._refused_chunks_left -= len(self._buffer.take(self._refused_chunks_left))
            if self._refused_chunks_left:
                return self._read_closed() if self._peer_closed else NEED_DATA
        # ``line_allowance`` without its property's Python call: once per command line
        line = self._take_line(self.config.max_command_line + self.extensions._line_allowance)
        if line is None:  # an over-long BDAT line has lost its chunk's end too
            if self._long_line_bdat:
                return self._lost_chunk(LINE_TOO_LONG)
            return self._reject("", LINE_TOO_LONG)
        if not isinstance(line, bytes):
            return line
        # A BDAT line the core cannot read loses its chunk's end; nearly every line is told by its first octet,
        # looked at here without the call.
        bdat = line[:1] in _MAY_START_BDAT and _first_word_is_bdat(line)
        try:
            text = line.decode()
        except UnicodeDecodeError:
            return self._lost_chunk() if bdat else self._reject("", BAD_CHARACTERS)
        verb, _, argument = text.partition(" ")
        if bdat and verb.upper() != "BDAT":  # split off by HTAB, NBSP...: a reader splitting there sees a chunk
            return self._lost_chunk()
        if not verb.isascii():  # str.upper() would turn U+FB06 "st" + "ARTTLS" into STARTTLS
            return self._reject("", UNRECOGNIZED)
        if verb in _HTTP_METHODS and argument and self.extensions.verb(verb) is None:
            return self._http_request(verb)
        verb = verb.upper()
        if FORBIDDEN_IN_COMMAND.search(text):  # its octets follow, but how many can't be trusted
            return self._lost_chunk() if bdat else self._reject(verb, BAD_CHARACTERS)
        return self._dispatch(verb, argument.strip(" "))

    def _http_request(self, method: str) -> ev.Event:
        """An HTTP request line: 421 and close at once, as Postfix does, rather than answer its headers too."""
        reply = cached_reply(421, f"{self.config.hostname} HTTP request refused, closing connection", (4, 7, 0))
        self._close_with(reply)
        return ev.CommandRejected(method, reply)

    def _read_response(self) -> NextEvent:
        """A client line inside the AUTH exchange (RFC 4954 4)."""
        line = self._take_line(_auth.MAX_RESPONSE_LINE)
        if line is None:
            return self._auth_failed(_auth.RESPONSE_TOO_LONG)
        if not isinstance(line, bytes):
            return line
        data = _auth.decode_response(line)
        if isinstance(data, Failure):
            return self._auth_failed(_auth.FAILURE_REPLIES[data.kind])
        assert self._mechanism is not None
        return self._sasl_step(self._mechanism.respond(data)) or self.next_event()

    def _read_data(self) -> NextEvent:
        if self._message_end is not None:
            return self._finish_message()
        if not self._buffer:  # the call right after 354, as for commands: nothing read yet
            return self._read_closed() if self._peer_closed else NEED_DATA
        content, rest = self._dot.feed(self._buffer.take_all())
        if self._message_size <= self.config.max_message_size:  # past the limit, stop counting
            self._message_size += len(content)
        if rest is not None:
            self._buffer.extend(rest)
            self._message_end = self._end_of_message()
        if content and self._message_size <= self.config.max_message_size:
            return ev.MessageData(content)
        return self._finish_message() if self._message_end is not None else NEED_DATA

    def _read_chunk(self) -> NextEvent:
        if self._chunk_left:
            data = self._buffer.take(self._chunk_left)
            if not data:
                return self._read_closed() if self._peer_closed else NEED_DATA
            self._chunk_left -= len(data)
            return ev.MessageData(data)
        if self._chunk_last:
            self._message_end = ev.EndOfMessage()
            return self._finish_message()
        self._queue(cached_reply(250, f"{self._chunk_size} octets received", (2, 0, 0)))
        self._move(Outcome.CHUNK_ENDED)
        return ev.ChunkReceived(self._chunk_size)

    def _end_of_message(self) -> MessageEnd:
        if self._message_size > self.config.max_message_size:
            return ev.MessageRejected(MESSAGE_TOO_BIG)
        if self._dot.bare_line_ending:
            return ev.MessageRejected(BARE_LINE_ENDING)
        return ev.EndOfMessage()

    def _finish_message(self) -> ev.Event:
        event, self._message_end = self._message_end, None
        assert event is not None and self._transaction is not None
        if isinstance(event, ev.MessageRejected):
            self._queue_message_end(event.reply)
            self._end_transaction(event)
            return event
        if self.config.lmtp:
            first, *rest = self._transaction.recipients
            event, self._recipients_due = ev.EndOfMessage(first), tuple(rest)
        return self._decide(event)

    def _queue_message_end(self, reply: Reply) -> None:
        """The answer to the end of a message: in LMTP, one per accepted recipient (RFC 2033 4.2)."""
        assert self._transaction is not None
        for _ in range(len(self._transaction.recipients) if self.config.lmtp else 1):
            self._queue(reply)

    # -- internals: commands, chosen by verb ---------------------------------

    def _dispatch(self, verb: str, argument: str) -> NextEvent:
        handler = self._verbs.get(verb)
        if handler is None:
            return self._extension_command(verb, argument)
        if self.config.require_tls and not self._tls_active and verb not in BEFORE_TLS:
            return self._reject_with_chunk(verb, argument, TLS_REQUIRED)
        if self._state not in ALLOWED_STATES[verb]:
            return self._reject_with_chunk(
                verb, argument, self._sequence_errors.get((verb, self._state), DEFAULT_SEQUENCE_ERROR)
            )
        return handler(self, argument)

    def _reject_with_chunk(self, verb: str, argument: str, reply: Reply) -> ev.Event:
        """Reject a command; a rejected BDAT's chunk follows all the same, and is discarded."""
        if verb != "BDAT":
            return self._reject(verb, reply)
        chunk = _chunk_size(argument)
        if chunk is None:
            return self._lost_chunk()
        self._refused_chunks_left += chunk[0]
        return self._reject(verb, reply)

    def _lost_chunk(self, reply: Reply = BDAT_SYNTAX) -> ev.Event:
        rejected = self._reject("BDAT", reply)
        self._close_with(BDAT_LOST)
        return rejected

    def _extension_command(self, verb: str, argument: str) -> ev.Event:
        """A verb the core does not know: an offered extension's, sequenced as its ``Verb`` says, or unknown."""
        declared = self.extensions.verb(verb)
        if declared is None or not declared[0].offered(self):
            return self._reject(verb, _UNSERVED.get(verb, UNRECOGNIZED))
        extension, declaration = declared
        if self.config.require_tls and not self._tls_active:
            return self._reject(verb, TLS_REQUIRED)
        if self._state not in declaration.states:
            return self._reject(verb, DEFAULT_SEQUENCE_ERROR)
        refusal = declaration.refuses(argument)
        if refusal is not None:
            return self._reject(verb, refusal)
        return self._decide(ev.ExtensionCommand(verb, argument, extension.answer(self, verb, argument)))

    def _reject(self, command: str, reply: Reply) -> ev.Event:
        self._queue(reply)
        if reply.code >= 500:
            self._errors += 1
            if self._errors >= self.config.max_errors:
                self._close_with(Reply(421, f"{self.config.hostname} Too many errors, closing connection", (4, 7, 0)))
        return ev.CommandRejected(command, reply)

    def _decide(self, event: ev.Decision) -> ev.Event:
        self._pending = event
        return event

    def _helo(self, argument: str) -> ev.Event:
        if not valid_hello_name(argument):
            return self._reject("HELO", HELO_SYNTAX)
        return self._decide(ev.Helo(argument))

    def _ehlo(self, argument: str) -> ev.Event:
        if not valid_hello_name(argument):
            return self._reject("EHLO", EHLO_SYNTAX)
        return self._decide(ev.Ehlo(argument))

    def _lhlo(self, argument: str) -> ev.Event:
        """LMTP's EHLO (RFC 2033 4.1), reported as an ``Ehlo`` event."""
        if not valid_hello_name(argument):
            return self._reject("LHLO", LHLO_SYNTAX)
        return self._decide(ev.Ehlo(argument))

    def _mail(self, argument: str) -> ev.Event:
        if self.config.require_auth and self._authenticated is None:
            return self._reject("MAIL", _auth.AUTH_REQUIRED)
        parsed = self._parse_path("MAIL", argument, "FROM:", null_ok=True)
        if isinstance(parsed, Reply):
            return self._reject("MAIL", parsed)
        if not parsed.address.isascii() and "SMTPUTF8" not in parsed.params:
            return self._reject("MAIL", NON_ASCII_ADDRESS)
        params = parsed.params
        if "AUTH" in params and self._authenticated is None:
            params = {**params, "AUTH": "<>"}  # RFC 4954 5: an unauthenticated client asserts nobody
        return self._decide(ev.MailFrom(parsed.address, params))

    def _rcpt(self, argument: str) -> ev.Event:
        transaction = self._transaction
        assert transaction is not None
        if len(transaction.recipients) >= self.config.max_recipients:
            return self._reject("RCPT", TOO_MANY_RECIPIENTS)
        parsed = self._parse_path("RCPT", argument, "TO:", null_ok=False)
        if isinstance(parsed, Reply):
            return self._reject("RCPT", parsed)
        if not parsed.address.isascii() and not transaction.smtputf8:
            return self._reject("RCPT", NON_ASCII_ADDRESS)
        return self._decide(ev.RcptTo(parsed.address, parsed.params))

    def _parse_path(self, verb: str, argument: str, prefix: str, *, null_ok: bool) -> PathArgument | Reply:
        """Parse the path and check every parameter with the extension that owns it."""
        try:
            parsed = parse_path_argument(argument, prefix, null_ok=null_ok, postmaster_ok=not null_ok)
        except GrammarError as error:
            return ADDRESS_ERRORS.get((verb, error.what)) or _syntax(f"{verb} {prefix}<address> [parameters]")
        for name, value in parsed.params.items():
            owner = next(
                (
                    extension
                    for extension in self.extensions
                    if name in (extension.mail_parameters if verb == "MAIL" else extension.rcpt_parameters)
                    and extension.offered(self)
                ),
                None,
            )
            if owner is None or not self._esmtp:
                return UNSUPPORTED_PARAMETER
            refusal = owner.check_parameter(self, name, value)
            if refusal is not None:
                return refusal
        return parsed

    def _data(self, argument: str) -> ev.Event:
        if argument:
            return self._reject("DATA", _syntax("DATA"))
        transaction = self._transaction
        assert transaction is not None
        if transaction.body_command == "BDAT":
            return self._reject("DATA", DATA_AFTER_BDAT)
        if transaction.binarymime:
            return self._reject("DATA", BINARYMIME_NEEDS_BDAT)
        self._transaction = transaction.sent_by("DATA")
        return self._decide(ev.DataRequested())

    def _bdat(self, argument: str) -> NextEvent:
        """RFC 3030: exactly the declared octets follow, whatever the answer."""
        chunk = _chunk_size(argument)
        if chunk is None:
            return self._lost_chunk()
        if self.extensions.offered("CHUNKING", self) is None:
            return self._reject_with_chunk("BDAT", argument, UNRECOGNIZED)
        transaction = self._transaction
        assert transaction is not None
        if transaction.body_command == "DATA":
            return self._reject_with_chunk("BDAT", argument, BDAT_AFTER_DATA)
        size, last = chunk
        self._chunk_size, self._chunk_left, self._chunk_last = size, size, last
        starting = self._state is State.RCPT
        if starting:
            self._message_size = 0
        if self._message_size + size > self.config.max_message_size:  # known before a single octet arrives
            self._refused_chunks_left += size
            self._chunk_left = 0
            return self._chunk_too_big(starting, last)
        self._message_size += size
        if starting:
            self._transaction = transaction.sent_by("BDAT")
            return self._decide(ev.DataRequested(chunked=True))
        self._move(Outcome.CHUNK_ACCEPTED)
        return self.next_event()

    def _chunk_too_big(self, starting: bool, last: bool) -> ev.Event:
        """552 and the transaction is over; a message already begun is rejected.

        In LMTP only BDAT LAST, the end of the message, is answered once per recipient (RFC 2033 4.2).
        """
        if last:
            self._queue_message_end(MESSAGE_TOO_BIG)
        else:
            self._queue(MESSAGE_TOO_BIG)
        rejected = ev.MessageRejected(MESSAGE_TOO_BIG)
        self._end_transaction(rejected)
        return ev.CommandRejected("BDAT", MESSAGE_TOO_BIG) if starting else rejected

    def _rset(self, argument: str) -> ev.Event:
        if argument:
            return self._reject("RSET", _syntax("RSET"))
        self._transaction = None
        self._move(Outcome.RESET)
        self._queue(OK)
        return ev.Rset()

    def _noop(self, argument: str) -> ev.Event:
        self._queue(OK)
        return ev.Noop()

    def _vrfy(self, argument: str) -> ev.Event:
        if not argument:
            return self._reject("VRFY", _syntax("VRFY string"))
        return self._decide(ev.Vrfy(argument))

    def _help(self, argument: str) -> ev.Event:
        verbs = [
            verb
            for verb in self._verbs
            if verb not in _EXTENSION_VERBS or self.extensions.offered(_EXTENSION_VERBS[verb], self)
        ]
        verbs += (verb.name for extension in self.extensions if extension.offered(self) for verb in extension.verbs)
        self._queue(Reply(214, f"Supported commands: {' '.join(sorted(verbs))}", (2, 0, 0)))
        return ev.Help(argument)

    def _quit(self, argument: str) -> ev.Event:
        if argument:
            return self._reject("QUIT", _syntax("QUIT"))
        self._queue(cached_reply(221, f"{self.config.hostname} Service closing transmission channel", (2, 0, 0)))
        self._move(Outcome.CLOSED)
        return ev.Quit()

    def _starttls(self, argument: str) -> ev.Event:
        if argument:
            return self._reject("STARTTLS", _syntax("STARTTLS"))
        if self._tls_active:
            return self._reject("STARTTLS", TLS_ACTIVE)
        if self.extensions.offered("STARTTLS", self) is None:
            return self._reject("STARTTLS", TLS_UNAVAILABLE)
        self._queue(cached_reply(220, "Ready to start TLS", (2, 0, 0)))
        self._buffer.clear()  # plaintext pipelined after STARTTLS is never executed
        self._move(Outcome.STARTTLS_ACCEPTED)
        return ev.StartTLSRequested()

    def _auth(self, argument: str) -> NextEvent:
        auth = self.extensions.get("AUTH")
        if not isinstance(auth, Auth):
            return self._reject("AUTH", NOT_IMPLEMENTED_REPLY)
        if not self._esmtp:
            return self._reject("AUTH", SEND_EHLO_FIRST)
        if self._authenticated is not None:
            return self._reject("AUTH", _auth.ALREADY_AUTHENTICATED)
        if not auth.offered(self):
            return self._reject("AUTH", _auth.ENCRYPTION_REQUIRED)
        name, _, initial = argument.partition(" ")
        if not name or " " in initial:
            return self._reject("AUTH", _auth.AUTH_SYNTAX)
        mechanism = auth.mechanism(name)
        if mechanism is None:
            return self._reject("AUTH", _auth.UNKNOWN_MECHANISM)
        response = _auth.decode_response(initial.encode(), initial=True) if initial else None
        if isinstance(response, Failure):
            return self._auth_failed(_auth.FAILURE_REPLIES[response.kind])
        self._mechanism = mechanism
        return self._sasl_step(mechanism.start(response)) or self.next_event()

    def _sasl_step(self, step: Step) -> ev.Event | None:
        """Carry out what the mechanism asks for; ``None`` after a challenge (read the answer next)."""
        mechanism = self._mechanism
        assert mechanism is not None
        if isinstance(step, Challenge):
            self._outgoing.append(_auth.challenge_line(step.data))
            self._move(Outcome.AUTH_CHALLENGED)
            return None
        if isinstance(step, CheckPassword):
            return self._decide(ev.AuthCredentials(mechanism.name, step.authzid, step.username, step.password))
        if isinstance(step, LookupScram):
            return self._decide(ev.CredentialsLookup(mechanism.name, step.authzid, step.username))
        if isinstance(step, LookupPassword):
            return self._decide(ev.CredentialsLookup(mechanism.name, "", step.username))
        if isinstance(step, Failure):
            return self._auth_failed(_auth.FAILURE_REPLIES[step.kind])
        self._queue(AUTHENTICATED)
        return self._succeeded(step)

    def _succeeded(self, success: Success) -> ev.Authenticated:
        """The mechanism said yes (and 235 is queued): the session is authenticated from now on."""
        assert self._mechanism is not None
        self._authenticated = ev.Authenticated(self._mechanism.name, success.authzid, success.username)
        self._auth_over()
        return self._authenticated

    def _auth_failed(self, reply: Reply) -> ev.Event:
        self._queue(reply)
        self._count_auth_failure()
        return ev.CommandRejected("AUTH", reply)

    def _count_auth_failure(self) -> None:
        self._auth_over()
        self._auth_failures += 1
        if self._auth_failures >= self.config.max_auth_failures:
            self._close_with(_auth.too_many_failures(self.config.hostname))

    def _auth_over(self) -> None:
        self._mechanism = None
        self._move(Outcome.AUTH_ENDED)

    # -- internals: what an answer does ----------------------------------------

    def _greeted(self, event: ev.Decision) -> None:
        self._move(Outcome.GREETING_SENT)

    def _greeting_refused(self, event: ev.Decision) -> None:
        self._move(Outcome.GREETING_REFUSED)

    def _hello(self, event: ev.Decision) -> None:
        assert isinstance(event, (ev.Helo, ev.Ehlo))
        self._helo_name = event.name
        self._esmtp = isinstance(event, ev.Ehlo)
        self._transaction = None
        self._move(Outcome.HELLO_ACCEPTED)

    def _mail_accepted(self, event: ev.Decision) -> None:
        assert isinstance(event, ev.MailFrom)
        self._transactions += 1
        self._transaction = Transaction(event.address, event.params, number=self._transactions)
        self._move(_MAIL_ACCEPTED)

    def _rcpt_accepted(self, event: ev.Decision) -> None:
        assert isinstance(event, ev.RcptTo) and self._transaction is not None
        transaction = self._transaction
        self._transaction = transaction.with_recipient(event.address, event.params)
        self._move(_RCPT_ACCEPTED)

    def _data_accepted(self, event: ev.Decision) -> None:
        assert isinstance(event, ev.DataRequested)
        if event.chunked:
            self._move(Outcome.CHUNK_ACCEPTED)
            return
        self._dot = DotReader(check_line_endings=self.config.bare_line_endings == "reject")
        self._message_size = 0
        self._move(_DATA_ACCEPTED)

    def _data_declined(self, event: ev.Decision) -> None:
        assert isinstance(event, ev.DataRequested)
        if event.chunked:  # the refused chunk's octets follow all the same
            self._refused_chunks_left += self._chunk_left
            self._chunk_left = 0

    def _credentials_accepted(self, event: ev.Decision) -> None:
        assert self._mechanism is not None
        step = self._mechanism.verified(True)
        assert isinstance(step, Success)
        self._event_from_answer = self._succeeded(step)

    def _auth_declined(self, event: ev.Decision) -> None:
        self._count_auth_failure()

    def _message_answered(self, event: ev.Decision) -> None:
        """In LMTP the next recipient's answer is due; after the last (or in SMTP), the transaction is over."""
        if not self._recipients_due:
            self._end_transaction(event)
            return
        recipient, *rest = self._recipients_due
        self._recipients_due = tuple(rest)
        self._event_from_answer = self._decide(ev.EndOfMessage(recipient))

    def _end_transaction(self, event: ev.Event) -> None:
        self._transaction = None
        self._move(_MESSAGE_ENDED)

    def _extension_accepted(self, event: ev.Decision) -> None:
        """A positive answer to an extension's verb: the session starts over if its ``Verb`` says so."""
        assert isinstance(event, ev.ExtensionCommand)
        declared = self.extensions.verb(event.verb)
        if declared is not None and declared[1].starts_over:
            self._move(Outcome.SESSION_RESTARTED)
            self._forget_session()
            self._authenticated = None

    def _stay(self, event: ev.Decision) -> None:
        pass

    _READERS: dict[State, Callable[[ServerConnection], NextEvent]] = {
        State.GREETING: _read_greeting,
        State.REFUSED: _read_command,
        State.GREETED: _read_command,
        State.READY: _read_command,
        State.MAIL: _read_command,
        State.RCPT: _read_command,
        State.DATA: _read_data,
        State.CHUNK: _read_chunk,
        State.BDAT: _read_command,
        State.AUTH: _read_response,
        State.TLS_HANDSHAKE: _read_paused,
        State.CLOSED: _read_closed,
    }

    #: The core's verbs, each with the method that serves it; SMTP adds HELO and EHLO, LMTP adds LHLO.
    _VERBS: dict[str, Callable[[ServerConnection, str], NextEvent]] = {
        "MAIL": _mail,
        "RCPT": _rcpt,
        "DATA": _data,
        "BDAT": _bdat,
        "RSET": _rset,
        "NOOP": _noop,
        "VRFY": _vrfy,
        "HELP": _help,
        "QUIT": _quit,
        "STARTTLS": _starttls,
        "AUTH": _auth,
    }

    _ON_ACCEPT: dict[type, Callable[[ServerConnection, ev.Decision], None]] = {
        ev.ConnectionOpened: _greeted,
        ev.Helo: _hello,
        ev.Ehlo: _hello,
        ev.MailFrom: _mail_accepted,
        ev.RcptTo: _rcpt_accepted,
        ev.DataRequested: _data_accepted,
        ev.EndOfMessage: _message_answered,
        ev.Vrfy: _stay,
        ev.ExtensionCommand: _extension_accepted,
        ev.AuthCredentials: _credentials_accepted,
    }

    _ON_DECLINE: dict[type, Callable[[ServerConnection, ev.Decision], None]] = {
        ev.ConnectionOpened: _greeting_refused,
        ev.DataRequested: _data_declined,
        ev.EndOfMessage: _message_answered,
        ev.AuthCredentials: _auth_declined,
        ev.CredentialsLookup: _auth_declined,
    }


_SMTP_VERBS = {"HELO": ServerConnection._helo, "EHLO": ServerConnection._ehlo, **ServerConnection._VERBS}
_LMTP_VERBS = {"LHLO": ServerConnection._lhlo, **ServerConnection._VERBS}


def _first_word_is_bdat(line: bytes) -> bool:
    """Whether any reader could take the line for BDAT, and the octets after it for a chunk (RFC 3030 2).

    Readers split words differently (SP, HTAB, any whitespace), so a word here ends at any octet no verb holds.
    """
    if line[:1] not in _MAY_START_BDAT:  # nearly every line: one look at its first octet
        return False
    word = line.lstrip(_WORD_SEPARATORS)
    return word[:4].upper() == b"BDAT" and (len(word) == 4 or word[4] in _WORD_SEPARATORS)


def _chunk_size(argument: str) -> tuple[int, bool] | None:
    """BDAT's chunk-size and whether LAST follows (RFC 3030 2), or ``None`` when it says neither."""
    size, _, marker = argument.partition(" ")
    if not (size.isascii() and size.isdigit() and len(size) <= _MAX_CHUNK_DIGITS) or marker.upper() not in ("", "LAST"):
        return None
    return int(size), bool(marker)
