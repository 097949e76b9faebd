"""Coverage-guided fuzz target for ``smtpwire.ServerConnection`` (atheris / libFuzzer).

Fuzz (new inputs go to the first directory, ``fuzz/corpus`` is only read)::

    python fuzz/fuzz_connection.py -atheris_runs=20000 -max_len=4096 "$(mktemp -d)" fuzz/corpus

Rewrite the named seeds of the corpus after changing the input format::

    python fuzz/fuzz_connection.py --write-seeds fuzz/corpus

``TestOneInput`` decodes the raw input itself (no ``FuzzedDataProvider``), so
it also runs in plain Python without atheris: ``tests/test_fuzz_corpus.py``
replays the corpus through it.

Input format (a byte past the end of the input reads as 0)::

    input  := flags extra mode op*
    flags  := bit 0 StartTLS registered, 1 require_tls, 2 small limits,
              3 bare_line_endings="accept", 4 tls_active from the start,
              5 auto-accept every decision while draining,
              6-7 extension set (standard with DSN, REQUIRETLS, LIMITS; none; that without
                  ENHANCEDSTATUSCODES; reversed)
    extra  := bits 0-1 hostname, bits 2-3 max_command_line,
              4 AUTH registered (all KNOWN_MECHANISMS, require_tls=False),
              5 require_auth, 6 that AUTH is instead Auth() with require_tls=True,
              7 max_auth_failures=1 (else 2 with small limits, else 3)
    mode   := bit 0 LMTP (LHLO, one answer per recipient), 1 BINARYMIME registered
    op     := one byte, taken modulo 16:
      0-3  FEED     n:u8 data[n]              receive_data(data)
      4    FEED     n:u16be data[n]
      5    REPEAT   reps:u8 m:u8 pattern[m%32+1]   receive_data(pattern * (reps+1) * 8)
      6    EOF                                receive_data(b"")
      7-8  ACCEPT                             accept(); supply() the user table's secret
                                              (or None) for a CredentialsLookup
      9    REPLY    code:u8 text:u8 enh:u8    send() a valid reply for the pending decision
      10   INVALID  kind:u8 sel:u8            a deliberately wrong call: must raise LocalProtocolError
                                              (kind % 5; kind 2 also covers receive_data() of
                                              something not bytes, kind 3 accept() on a
                                              CredentialsLookup and wrong or unexpected supply())
      11   TLS      ok:u8                     tls_established() (ok odd) or tls_failed()
      12   TIMEOUT                            timed_out()
      13   SHUTDOWN                           shutdown()
      14   EXT      i:u8                      add or remove EXTENSIONS[i % len] (CHUNKING, BINARYMIME too)
      15   CANNED   i:u8                      receive_data(CANNED[i % len])

The AUTH extension uses RFC 7677's server nonce, so the canned SCRAM-SHA-256
lines replay RFC 7677's example exchange, which succeeds against the user
table ("user"/"pencil" with the RFC's salt; CRAM-MD5: "tim"/"tanstaaftanstaaf").

After every operation the events are drained (bounded) and these invariants
are asserted:

- only ``LocalProtocolError`` is raised, exactly for the deliberately invalid
  calls (ACCEPT/REPLY with nothing pending, INVALID, TLS outside a handshake,
  a positive EHLO answer while the broken extension is registered), and a
  call that raised changed nothing and queued nothing (an EHLO answered 250
  then gets the 451 an adapter falls back to);
- every output line matches ``[2-5]\\d\\d[ -]`` (or is a bare code: an empty
  text is RFC 5321's ``Reply-code CRLF``), ends with CRLF, holds no other
  CR or LF and is at most 512 octets; a multi-line reply keeps one code;
  nothing is sent once the connection is closed;
- replies and events stay proportional to the input (no amplification, no
  loop that makes events without consuming bytes);
- while waiting for data the receive buffer holds at most one partial
  command line, no complete one (or at most 4 held bytes in DATA);
- every message matches a reference dot-unstuffer: its content, its size
  verdict and its bare CR/LF verdict;
- BDAT (RFC 3030): a chunk's octets come out only in state CHUNK, never more
  than its declared size, each chunk without LAST is reported as
  ``ChunkReceived`` of exactly the octets that came out; the message ends only
  once its LAST chunk is whole, never over ``max_message_size``, and is only
  refused as too big; accepting its first chunk sends nothing; the octets of
  every refused chunk (declined, out of sequence, not offered, 530, 552) are
  never read as commands: the harness counts them off the BDAT line itself;
  a refused line whose first word is BDAT for some reader (words ending at
  any octet no verb holds: HTAB, NBSP...) has its chunk discarded or closes;
- LMTP (RFC 2033): LHLO is the greeting (no ``Helo``), the end of a message
  asks once per accepted recipient, in RCPT order, each answer alone on the
  wire, and the transaction ends with the last;
- HELO/EHLO names are a domain or an address literal of at most 255 octets;
  no command argument in an event (names, addresses, parameters, VRFY, HELP)
  holds a control, line separator or bidi control; local parts are at most
  64 octets, domains 255 and paths 256 (RFC 5321 4.5.3.1.1-3);
- the state machine moves as RFC 5321 / RFC 3207 say after each answer, no
  MAIL/RCPT/DATA decision is ever asked for without TLS under require_tls,
  and plaintext sent before the TLS handshake is never executed after it;
- AUTH (RFC 4954): while waiting in the exchange the buffer holds at most one
  response line (12290 octets); AuthCredentials and CredentialsLookup appear
  only in READY (initial response) or AUTH, while not authenticated; accepting
  AuthCredentials answers 235 and the next event is the matching
  ``Authenticated``; supply() answers exactly 334 (state AUTH), 235 (the
  next event is ``Authenticated``), or 535 [+ 421] (the next event is that
  refusal); every ``Authenticated`` equals ``conn.authenticated`` and what the
  application approved last (no success without the application's yes);
  failed attempts (501/535/500 exchange failures and declines) leave the
  state READY until the max_auth_failures-th, which is followed by 421 and
  CLOSED; a MailFrom carries AUTH= only while AUTH is offered, and ``<>``
  unless authenticated; under require_auth no MailFrom decision comes before
  AUTH succeeded; a TLS handshake forgets the authentication;
- extension verbs (``ExtensionVerbs``, added and removed by EXT): an
  ``ExtensionCommand`` names the verb of its line, comes only from an offered
  extension's declared verb, in one of its states, with the argument it takes
  (and not before TLS under require_tls); answering it leaves the state as it was,
  but a positive answer to a verb that ``starts_over`` (XCLIENT) starts the
  session over: GREETED, no HELO, no transaction, no AUTH.
"""

from __future__ import annotations

import base64
import hmac
import re
import unicodedata

try:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # replaying the corpus needs no atheris
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["smtpwire"]):
        import smtpwire
else:
    import smtpwire

from smtpwire import LocalProtocolError, Reply, State

MAX_OPS = 400
#: RFC 4954 4: a client response line holds up to 12288 octets, plus CRLF.
MAX_RESPONSE_LINE = 12288 + 2
#: RFC 5321 4.2: Reply-code [ SP textstring ] CRLF, or Reply-code "-" [ textstring ] CRLF.
REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])[^\r\n]*)?\r\n")

#: RFC 5321 4.1.1.1 ``Domain / address-literal`` (the literal's inside is the core's to check).
LABEL = "[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
HELLO_NAME = re.compile(rf"{LABEL}(\.{LABEL})*|\[[!-Z^-~]+\]")
#: Bidi classes of the embeddings, overrides and isolates; the marks (LRM, RLM, ALM) are listed.
BIDI_CONTROLS = frozenset({"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"})
BIDI_MARKS = frozenset("\u200e\u200f\u061c")


def unsafe(text: str) -> bool:
    """Whether ``text`` holds what would break or disguise a header field or log line."""
    return any(
        (unicodedata.category(c) in ("Cc", "Zl", "Zp") and c != "\t")
        or c in BIDI_MARKS
        or unicodedata.bidirectional(c) in BIDI_CONTROLS
        for c in text
        if not " " <= c <= "~"
    )


def octets(text: str) -> int:
    return len(text.encode())


COMMAND_STATES = frozenset({State.REFUSED, State.GREETED, State.READY, State.MAIL, State.RCPT, State.BDAT})
#: The verb of the line each command event comes from.
VERBS = {
    smtpwire.Helo: b"HELO",
    smtpwire.Ehlo: b"EHLO",
    smtpwire.MailFrom: b"MAIL",
    smtpwire.RcptTo: b"RCPT",
    smtpwire.DataRequested: b"DATA",
    smtpwire.Rset: b"RSET",
    smtpwire.Noop: b"NOOP",
    smtpwire.Vrfy: b"VRFY",
    smtpwire.Help: b"HELP",
    smtpwire.Quit: b"QUIT",
    smtpwire.StartTLSRequested: b"STARTTLS",
}

# -- configuration -------------------------------------------------------------

STARTTLS, REQUIRE_TLS, SMALL, BARE_ACCEPT, TLS_ACTIVE, AUTO = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
#: Bits 4-7 of the extra byte.
AUTH_ON, REQUIRE_AUTH, AUTH_NEEDS_TLS, ONE_AUTH_FAILURE = 0x10, 0x20, 0x40, 0x80
#: Bits of the mode byte.
LMTP, BINARYMIME = 0x01, 0x02
HOSTNAMES = ("mx.test", "localhost", "h" * 255, "[192.0.2.1]")
COMMAND_LINES = (512, 513, 1000, 4096)

#: RFC 7677 5's nonces: with this server nonce its example SCRAM-SHA-256 exchange succeeds.
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"


def server_nonce() -> str:
    return SERVER_NONCE


#: AUTH with every mechanism, also in plaintext, and the default one that waits for TLS.
AUTH_OPEN = smtpwire.Auth(smtpwire.KNOWN_MECHANISMS, require_tls=False, nonce=server_nonce)
AUTH_TLS = smtpwire.Auth(nonce=server_nonce)

#: The application's user store: SCRAM keys of RFC 7677's user, CRAM-MD5 plaintext passwords.
SCRAM_USERS = {"user": smtpwire.scram_credentials("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))}
CRAM_USERS = {"tim": "tanstaaftanstaaf"}
#: Secrets of every type, for the wrong-type supply() calls.
ANY_SECRETS: tuple[object, ...] = (None, "pencil", SCRAM_USERS["user"], b"pencil", 42)


class BrokenEhloLine(smtpwire.Extension):
    """An application's extension whose keyword line would inject a reply into the EHLO answer."""

    keyword = "X-BROKEN"

    def ehlo_line(self, conn: smtpwire.ServerConnection) -> str:
        return "X-BROKEN\r\n250 INJECTED"


#: What the adapters answer when the application's answer raised LocalProtocolError.
FALLBACK = Reply(451, "Requested action aborted: local error in processing", (4, 3, 0))


#: RFC 3461 DSN, RFC 8689 REQUIRETLS and RFC 9422 LIMITS, registered in every non-empty extension set.
REQUEST_EXTENSIONS = (smtpwire.Dsn(), smtpwire.RequireTls(), smtpwire.Limits())


def extension_sets() -> tuple[tuple[smtpwire.Extension, ...], ...]:
    standard = (*smtpwire.STANDARD_EXTENSIONS, *REQUEST_EXTENSIONS)
    return (
        standard,
        (),
        tuple(e for e in standard if e.keyword != "ENHANCEDSTATUSCODES"),
        tuple(reversed(standard)),
    )


def make_config(flags: int, extra: int, mode: int = 0) -> smtpwire.ServerConfig:
    extensions = extension_sets()[flags >> 6]
    if mode & BINARYMIME:
        extensions = (*extensions, smtpwire.BinaryMime())
    if flags & STARTTLS:
        extensions = (*extensions, smtpwire.StartTLS())
    if extra & AUTH_ON:
        extensions = (*extensions, AUTH_TLS if extra & AUTH_NEEDS_TLS else AUTH_OPEN)
    small = bool(flags & SMALL)
    return smtpwire.ServerConfig(
        hostname=HOSTNAMES[extra & 3],
        extensions=extensions,
        max_message_size=64 if small else 32 * 1024 * 1024,
        max_recipients=2 if small else 100,
        max_errors=3 if small else 20,
        max_command_line=COMMAND_LINES[(extra >> 2) & 3],
        require_tls=bool(flags & REQUIRE_TLS),
        bare_line_endings="accept" if flags & BARE_ACCEPT else "reject",
        require_auth=bool(extra & REQUIRE_AUTH),
        max_auth_failures=1 if extra & ONE_AUTH_FAILURE else 2 if small else 3,
        lmtp=bool(mode & LMTP),
    )


class ExtensionVerbs(smtpwire.Extension):
    """An application's verbs, one per preset: offered before any hello and after EHLO, not after HELO."""

    keyword = "X-VERBS"
    line_allowance = 64
    verbs = (
        smtpwire.Verb("XSTATS", smtpwire.Verb.ANY_TIME, argument="none"),
        smtpwire.Verb("XCLIENT", argument="required"),
        smtpwire.Verb("XPEEK", smtpwire.Verb.IN_TRANSACTION),
        smtpwire.Verb("XPOKE", smtpwire.Verb.AFTER_HELLO),
        smtpwire.Verb("XRESTART", smtpwire.Verb.BEFORE_TRANSACTION, argument="none", starts_over=True),
    )

    def offered(self, conn: smtpwire.ServerConnection) -> bool:
        return conn.helo_name is None or conn.esmtp

    def answer(self, conn: smtpwire.ServerConnection, verb: str, argument: str) -> Reply:
        return Reply(250, f"{verb} in {conn.state.name}", (2, 0, 0))


def starts_over(conn: smtpwire.ServerConnection, event: smtpwire.ExtensionCommand) -> bool:
    """Whether the command's verb starts the session over when answered positively (as XCLIENT)."""
    declared = conn.extensions.verb(event.verb)
    return declared is not None and declared[1].starts_over


#: What the EXT operation adds or removes.
EXTENSIONS = (
    smtpwire.StartTLS(),
    smtpwire.Size(),
    smtpwire.EightBitMime(),
    smtpwire.SmtpUtf8(),
    smtpwire.EnhancedStatusCodes(),
    smtpwire.Pipelining(),
    AUTH_OPEN,
    AUTH_TLS,
    BrokenEhloLine(),
    ExtensionVerbs(),
    smtpwire.Chunking(),
    smtpwire.BinaryMime(),
)


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


#: RFC 7677 5: client-first and client-final messages (the proof is for "pencil").
SCRAM_CLIENT_FIRST = f"n,,n=user,r={CLIENT_NONCE}"
SCRAM_CLIENT_FINAL = f"c=biws,r={CLIENT_NONCE}{SERVER_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#: RFC 2195: the challenge is ``<nonce@smtpwire>`` (sasl_mechanism()), the answer "user hex(HMAC-MD5)".
CRAM_DIGEST = hmac.new(b"tanstaaftanstaaf", f"<{SERVER_NONCE}@smtpwire>".encode(), "md5").hexdigest()
CRAM_RESPONSE = f"tim {CRAM_DIGEST}"

#: Whole commands and message pieces, so that short inputs reach deep states.
CANNED = (
    b"EHLO client.example\r\n",
    b"HELO client.example\r\n",
    b"MAIL FROM:<alice@example.org>\r\n",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n",
    "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode(),
    b"RCPT TO:<bob@example.net>\r\n",
    b"RCPT TO:<@relay.example,@b.example:bob@example.net>\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"RCPT TO:<x@[IPv6:2001:db8::1]>\r\n",
    "RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>\r\n".encode(),
    b"DATA\r\n",
    b"Subject: hi\r\n\r\nbody\r\n",
    b"..stuffed line\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY bob\r\n",
    b"HELP\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"EXPN staff\r\n",
    b"BDAT 10 LAST\r\n",
    b"MAIL FROM:<a@b> SIZE=99999999999\r\n",
    b"\r\n",
    b"\n",
    b"\x00\xff\xfe\r\n",
    b"MAIL FROM:<a@b> SMTPUTF8=yes FOO=bar\r\n",
    # AUTH (RFC 4954) commands and SASL response lines
    b"AUTH PLAIN " + b64("\0tim\0tanstaaf") + b"\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b64("tim") + b"\r\n",
    b64("tanstaaf") + b"\r\n",
    b"*\r\n",
    b"AUTH CRAM-MD5\r\n",
    b64(CRAM_RESPONSE) + b"\r\n",
    b"AUTH SCRAM-SHA-256 " + b64(SCRAM_CLIENT_FIRST) + b"\r\n",
    b64(SCRAM_CLIENT_FINAL) + b"\r\n",
    b"MAIL FROM:<a@b> AUTH=<>\r\n",
    b"MAIL FROM:<a@b> AUTH=tim+2Bx@b\r\n",
    b"AUTH SCRAM-SHA-256\r\n",
    b64(SCRAM_CLIENT_FIRST) + b"\r\n",
    b64("\0tim\0tanstaaf") + b"\r\n",
    b"AUTH LOGIN " + b64("tim") + b"\r\n",
    b"AUTH PLAIN =\r\n",
    b"AUTH PLAIN not*base64\r\n",
    b"AUTH X-UNKNOWN\r\n",
    b"AUTH PLAIN " + b64("user\0user\0pencil") + b"\r\n",
    b"EHLO [1.2.3.4])(by.trusted.example\r\n",
    b"EHLO [IPv6:2001:db8::1]\r\n",
    "MAIL FROM:<jo\u0085rg@example.org> SMTPUTF8\r\n".encode(),
    "RCPT TO:<\u202egpj.exe@example.org>\r\n".encode(),
    b"MAIL FROM:<" + b"l" * 65 + b"@example.org>\r\n",
    b"RCPT TO:<a@" + b"d" * 253 + b">\r\n",
    # the verbs of ExtensionVerbs (registered with EXT)
    b"XSTATS\r\n",
    b"XCLIENT ADDR=192.0.2.1\r\n",
    b"XPEEK\r\n",
    b"XPOKE " + b"p" * 560 + b"\r\n",
    # CHUNKING, BINARYMIME and LMTP
    b"BDAT 5\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT x\r\n",
    b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n",
    b"LHLO client.example\r\n",
)

# -- the reply model (RFC 5321 4.3.2), written independently of the core ------

POSITIVE = {
    smtpwire.ConnectionOpened: (220,),
    smtpwire.Helo: (250,),
    smtpwire.Ehlo: (250,),
    smtpwire.MailFrom: (250,),
    smtpwire.RcptTo: (250, 251),
    smtpwire.DataRequested: (354,),
    smtpwire.EndOfMessage: (250,),
    smtpwire.Vrfy: (250, 251, 252),
    smtpwire.AuthCredentials: (235,),
    smtpwire.CredentialsLookup: (),  # answered with supply(), or declined
    smtpwire.ExtensionCommand: tuple(range(200, 260)),  # any completion, no intermediate 3xx
}
AUTH_DECISIONS = (smtpwire.AuthCredentials, smtpwire.CredentialsLookup)
#: RFC 4954 failed exchanges (code, enhanced): malformed or bad base64, bad credentials, "*", line too long.
#: Refusals before an exchange starts (502, 503, 504, 538, 501 5.5.4 syntax, 500 5.5.2) are no attempt.
AUTH_FAILURES = frozenset({(501, (5, 5, 2)), (535, (5, 7, 8)), (501, (5, 7, 0)), (500, (5, 5, 6))})
#: Every well-formed 4xx and 5xx code (the second digit is 0-5).
DECLINES = tuple(c for c in range(400, 600) if c % 100 // 10 <= 5)
#: Codes tried by INVALID kind 0; the model says which do not fit the event.
CANDIDATE_CODES = (220, 221, 250, 251, 252, 354, 450, 550)


def valid_codes(event: smtpwire.Decision) -> tuple[int, ...]:
    if isinstance(event, smtpwire.ConnectionOpened):
        return (220, 421, 554)
    return POSITIVE[type(event)] + DECLINES


TEXTS: tuple[str | tuple[str, ...], ...] = (
    "OK",
    "",
    ("first", "second", "third"),
    "x" * 496,
    "ünïcødé ✓ 郵便",
    "trailing spaces   ",
    ("y" * 496, "z" * 496),
    "Requested action taken",
)

#: Reply constructions that must raise LocalProtocolError.
BAD_REPLIES: tuple[tuple[object, ...], ...] = (
    (199, "x"),
    (600, "x"),
    (265, "second digit over 5"),
    (250, "injected\r\n250 OK"),
    (250, "nul\x00"),
    (250, "tab\tinside"),
    (250, "x" * 497),
    (250, "é" * 249),
    (250, ()),
    (354, "go", (3, 0, 0)),
    (250, "OK", (5, 0, 0)),
    (250, "OK", (2, 1000, 0)),
    (True, "bool code"),
    (250, ("fine", 7)),
    (250, b"bytes"),
    (250, 7),
    (250, "OK", (2, 0)),
    (250, "OK", [2, 0, 0]),
    (250, "OK", (2, True, 0)),
)
#: What receive_data() must refuse: not bytes (None and "" must not read as the end of the stream).
NOT_BYTES: tuple[object, ...] = (None, "", "EHLO x\r\n", 0, [b"x"])


# -- the application's side ------------------------------------------------------


def snapshot(conn: smtpwire.ServerConnection) -> tuple[object, ...]:
    """What a call that raised must leave unchanged."""
    return (
        conn.state,
        conn.pending,
        conn.transaction,
        conn.tls_active,
        conn.helo_name,
        conn.authenticated,
        buffered(conn),
        conn._peer_closed,
    )


def secret_for(event: smtpwire.CredentialsLookup) -> smtpwire.ScramCredentials | str | None:
    """The user table's answer; None also when the user may not act as the authzid."""
    if event.authzid not in ("", event.username):
        return None
    if event.mechanism == "SCRAM-SHA-256":
        return SCRAM_USERS.get(event.username)
    return CRAM_USERS.get(event.username)


def fits(event: smtpwire.CredentialsLookup, secret: object) -> bool:
    """Whether supply(secret) is a valid answer to this lookup."""
    wanted = smtpwire.ScramCredentials if event.mechanism == "SCRAM-SHA-256" else str
    return secret is None or isinstance(secret, wanted)


# -- reading the input ---------------------------------------------------------


class ByteSource:
    """The fuzz input read front to back; reads past the end give zeros or nothing."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def remaining(self) -> int:
        return len(self.data) - self.position

    def byte(self) -> int:
        if self.position >= len(self.data):
            return 0
        self.position += 1
        return self.data[self.position - 1]

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def take(self, n: int) -> bytes:
        chunk = self.data[self.position : self.position + n]
        self.position += len(chunk)
        return chunk


# -- white-box peeks, kept in one place -----------------------------------------


def buffered(conn: smtpwire.ServerConnection) -> bytes:
    """The bytes received but not yet consumed."""
    return bytes(conn._buffer)


def held_by_dot_reader(conn: smtpwire.ServerConnection) -> int:
    return len(conn._dot._held)


def chunk_declared(line: bytes) -> int:
    """The chunk-size of a BDAT line the core parsed (RFC 3030 2)."""
    match = re.match(rb"[Bb][Dd][Aa][Tt] +([0-9]+)", line)
    assert match is not None, line
    return int(match[1])


#: RFC 3030 2 as any reader could take it: the first word is BDAT, words ending at any octet no verb holds.
MISREAD_BDAT = re.compile(rb"[^A-Za-z0-9\-]*[Bb][Dd][Aa][Tt](?![A-Za-z0-9\-])")


def chunk_size(conn: smtpwire.ServerConnection) -> int:
    """The declared size of the BDAT chunk being read (or last read)."""
    return conn._chunk_size


def next_command_line(conn: smtpwire.ServerConnection, skip: int) -> bytes | None:
    """The line the next command event will be read from, when it is complete.

    ``skip`` octets go first: what is left of refused BDAT chunks, as the harness counts them.
    """
    data = bytes(conn._buffer[skip:])
    start = 0
    if conn._discarding_line:  # the rest of an over-long line goes first
        start = data.find(b"\n") + 1
        if not start:
            return None
    end = data.find(b"\n", start)
    return bytes(data[start : end + 1]) if end >= 0 else None


def reference_message(stream: bytes, check_line_endings: bool) -> tuple[bytes, bool] | None:
    """RFC 5321 4.1.1.4 / 4.5.2 done the simple way: (content, bare CR/LF seen) or None if unfinished.

    ``stream`` starts with the CRLF that ended the DATA command: it may start the end sequence.
    """
    end = stream.find(b"\r\n.\r\n")
    if end < 0:
        return None
    content = stream[: end + 2].replace(b"\r\n.", b"\r\n")[2:]
    region = stream[: end + 5]
    pairs = region.count(b"\r\n")
    bare = check_line_endings and (region.count(b"\r") != pairs or region.count(b"\n") != pairs)
    return content, bare


# -- the harness ----------------------------------------------------------------


class Harness:
    def __init__(self, data: bytes) -> None:
        self.src = ByteSource(data)
        flags, extra, mode = self.src.byte(), self.src.byte(), self.src.byte()
        self.config = make_config(flags, extra, mode)
        self.conn = smtpwire.ServerConnection(self.config, tls_active=bool(flags & TLS_ACTIVE))
        self.auto = bool(flags & AUTO)
        self.fed = 0  # bytes the core took in
        self.line_feeds = 0
        self.ops = 0
        self.events = 0
        self.replies = 0
        self.eof = False
        self.message: list[bytes] = []
        self.raw: bytearray | None = None  # the DATA stream as the reader sees it, for the reference
        self.raw_scanned = 0  # how far the raw stream is known to hold no end of data
        self.chunked = False  # the message is coming by BDAT
        self.chunk_octets = 0  # octets of the current BDAT chunk that came out so far
        self.due: list[str | None] | None = None  # whose end-of-message answer is still due (SMTP: [None])
        self.skip_end = 0  # where the octets of the refused BDAT chunks end, counted in bytes fed
        self.first_chunk = 0  # the declared size of the chunk a DataRequested(chunked=True) asks about
        self.seen: list[str] = []  # event names, for the tests
        self.auth_failures = 0  # failed AUTH attempts, counted from the events and the declines
        self.approved: smtpwire.Authenticated | None = None  # what the application said yes to last
        self.report: smtpwire.Authenticated | int | None = None  # the next event: this, or AUTH refused with this code

    # -- the run --------------------------------------------------------------

    def run(self) -> Harness:
        self.settle()
        for _ in range(MAX_OPS):
            if not self.src.remaining():
                break
            self.ops += 1
            was_closed = self.conn.state is State.CLOSED
            self.step(self.src.byte() % 16)
            self.settle(was_closed)
        return self

    def step(self, op: int) -> None:
        if op <= 3:
            self.feed(self.src.take(self.src.byte()))
        elif op == 4:
            self.feed(self.src.take(self.src.u16()))
        elif op == 5:
            reps = (self.src.byte() + 1) * 8
            self.feed(self.src.take(self.src.byte() % 32 + 1) * reps)
        elif op == 6:
            self.conn.receive_data(b"")
            self.eof = True
        elif op in (7, 8):
            self.answer(None)
        elif op == 9:
            self.reply_op()
        elif op == 10:
            self.invalid_op()
        elif op == 11:
            self.tls_op(self.src.byte() & 1 == 1)
        elif op in (12, 13):
            self.close_op(op == 12)
        elif op == 14:
            self.toggle_extension(EXTENSIONS[self.src.byte() % len(EXTENSIONS)])
        else:
            self.feed(CANNED[self.src.byte() % len(CANNED)])

    # -- operations -------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        state = self.conn.state
        self.conn.receive_data(chunk)
        if state in (State.TLS_HANDSHAKE, State.CLOSED):
            return  # dropped by the core
        self.fed += len(chunk)
        self.line_feeds += chunk.count(b"\n")
        if self.raw is not None:
            self.raw += chunk

    def answer(self, reply: Reply | None) -> None:
        """accept() (reply None) or send(reply); a valid call unless nothing is pending."""
        conn = self.conn
        event = conn.pending
        if event is None:
            self.expect_error(conn.accept if reply is None else lambda: conn.send(reply))
            return
        if reply is None and isinstance(event, smtpwire.CredentialsLookup):
            self.supply(event)
            return
        if isinstance(event, smtpwire.Ehlo) and "X-BROKEN" in conn.extensions and (reply is None or reply.code == 250):
            positive = reply
            self.expect_error(conn.accept if positive is None else lambda: conn.send(positive))
            reply = FALLBACK  # what an adapter answers instead; the decision is still pending
        before = conn.state
        try:
            if reply is None:
                code = event.default_reply(self.config.hostname).code
                conn.accept()
            else:
                code = reply.code
                conn.send(reply)
        except LocalProtocolError as error:
            what = "accept()" if reply is None else f"send({reply!r})"
            raise AssertionError(f"valid answer {what} to {event!r} raised {error!r}"[:600]) from error
        replies = self.take_output()
        expected = [] if isinstance(event, smtpwire.DataRequested) and event.chunked and code == 354 else [code]
        if isinstance(event, smtpwire.EndOfMessage):
            assert self.due, f"{event!r} answered but no answer is due"
            assert event.recipient == self.due.pop(0), (event, self.due)
        if isinstance(event, AUTH_DECISIONS) and code >= 400 and code != 421:  # a declined attempt
            self.auth_failures += 1
            if self.auth_failures >= self.config.max_auth_failures:
                expected.append(421)
        assert [c for c, _ in replies] == expected, (event, code, replies)
        if reply is not None and replies and not isinstance(event, smtpwire.Ehlo):
            assert replies[0][1] == len(reply.lines), (reply, replies)
        self.check_transition(event, code, before)

    def check_transition(self, event: smtpwire.Decision, code: int, before: State) -> None:
        conn = self.conn
        state = conn.state
        if isinstance(event, smtpwire.EndOfMessage) and self.due and code != 421:
            # LMTP: the next recipient's answer is asked for at once, in RCPT order (RFC 2033 4.2)
            assert state is before and conn.pending == smtpwire.EndOfMessage(self.due[0]), (state, conn.pending)
            return
        assert conn.pending is None
        if code == 421:
            assert state is State.CLOSED
            self.due = None
        elif isinstance(event, smtpwire.ConnectionOpened):
            assert state is (State.GREETED if code == 220 else State.REFUSED)
        elif isinstance(event, AUTH_DECISIONS):
            if code == 235:
                assert isinstance(event, smtpwire.AuthCredentials)
                approved = smtpwire.Authenticated(event.mechanism, event.authzid, event.username)
                assert state is State.READY and conn.authenticated == approved, (state, conn.authenticated)
                self.approved = self.report = approved
            else:
                closed = self.auth_failures >= self.config.max_auth_failures
                assert state is (State.CLOSED if closed else State.READY), (state, self.auth_failures)
                assert conn.authenticated is None
        elif isinstance(event, smtpwire.EndOfMessage):
            assert state is State.READY and conn.transaction is None
            self.due = None
        elif isinstance(event, smtpwire.ExtensionCommand) and code < 400 and starts_over(conn, event):
            assert state is State.GREETED and conn.transaction is None, (event, state)
            assert conn.helo_name is None and conn.authenticated is None, event
        elif code >= 400 or isinstance(event, (smtpwire.Vrfy, smtpwire.ExtensionCommand)):
            if isinstance(event, smtpwire.DataRequested) and event.chunked:  # its octets follow all the same
                self.skip_end = self.consumed() + self.first_chunk
            assert state is before, (event, code, before, state)
        elif isinstance(event, (smtpwire.Helo, smtpwire.Ehlo)):
            assert state is State.READY and conn.helo_name == event.name
            assert conn.esmtp is isinstance(event, smtpwire.Ehlo) and conn.transaction is None
        elif isinstance(event, smtpwire.MailFrom):
            assert state is State.MAIL and conn.transaction is not None
            assert conn.transaction.mail_from == event.address and conn.transaction.recipients == ()
        elif isinstance(event, smtpwire.RcptTo):
            assert state is State.RCPT and conn.transaction is not None
            assert conn.transaction.recipients[-1] == event.address
            assert len(conn.transaction.recipients) <= self.config.max_recipients
        elif isinstance(event, smtpwire.DataRequested) and event.chunked:
            assert state is State.CHUNK, state
            self.chunked, self.chunk_octets, self.message = True, 0, []
        else:
            assert isinstance(event, smtpwire.DataRequested) and state is State.DATA
            self.chunked = False
            self.raw = bytearray(b"\r\n" + buffered(conn))  # DATA's CRLF may start the end
            self.raw_scanned = 0
            self.message = []

    def supply(self, event: smtpwire.CredentialsLookup) -> None:
        """Answer a lookup from the user table: 334 (SCRAM goes on), 235, or 535 (+ 421 at the limit)."""
        conn = self.conn
        secret = secret_for(event)
        try:
            conn.supply(secret)
        except LocalProtocolError as error:
            raise AssertionError(f"valid supply() for {event!r} raised {error!r}"[:600]) from error
        codes = [c for c, _ in self.take_output()]
        state = conn.state
        assert conn.pending is None
        if secret is not None:
            self.approved = smtpwire.Authenticated(event.mechanism, event.authzid, event.username)
        if codes == [334]:
            assert event.mechanism == "SCRAM-SHA-256" and state is State.AUTH, (event, state)
            assert conn.authenticated is None
        elif codes == [235]:
            assert secret is not None and state is State.READY, (event, state)
            assert conn.authenticated == self.approved, (conn.authenticated, self.approved)
            self.report = conn.authenticated
        else:
            closing = self.auth_failures + 1 >= self.config.max_auth_failures
            assert codes == ([535, 421] if closing else [535]), (event, codes, self.auth_failures)
            assert conn.authenticated is None
            self.report = 535  # the refusal is counted when it comes out as the next event

    def reply_op(self) -> None:
        code_selector, text_selector, enhanced_selector = self.src.byte(), self.src.byte(), self.src.byte()
        event = self.conn.pending
        if event is None:
            self.answer(Reply(250, "OK"))  # nothing to answer: must raise
            return
        codes = valid_codes(event)
        code = codes[code_selector % len(codes)]
        enhanced = None
        if enhanced_selector and code // 100 != 3:
            enhanced = (code // 100, enhanced_selector * 37 % 1000, enhanced_selector * 101 % 1000)
        self.answer(Reply(code, TEXTS[text_selector % len(TEXTS)], enhanced))

    def invalid_op(self) -> None:
        kind, selector = self.src.byte() % 5, self.src.byte()
        conn = self.conn
        event = conn.pending
        if kind == 1:
            arguments = BAD_REPLIES[selector % len(BAD_REPLIES)]
            self.expect_error(lambda: Reply(*arguments))  # type: ignore[arg-type]
        elif kind == 2 and selector & 1:
            data = NOT_BYTES[(selector >> 1) % len(NOT_BYTES)]
            self.expect_error(lambda: conn.receive_data(data))  # type: ignore[arg-type]
        elif kind == 2:
            self.expect_error(lambda: conn.send("250 OK"))  # type: ignore[arg-type]
        elif kind == 3 and isinstance(event, smtpwire.CredentialsLookup):
            if selector & 1:  # a secret of the wrong type for the mechanism
                wrong = [s for s in ANY_SECRETS if s is not None and not fits(event, s)]
                secret = wrong[(selector >> 1) % len(wrong)]
                self.expect_error(lambda: conn.supply(secret))  # type: ignore[arg-type]
            else:
                self.expect_error(conn.accept)  # a lookup is answered with supply()
        elif kind == 3 and event is None and not selector & 1:
            self.expect_error(conn.accept)
        elif kind == 3 and (event is None or selector & 1):  # supply() with no lookup pending
            secret = ANY_SECRETS[(selector >> 1) % len(ANY_SECRETS)]
            self.expect_error(lambda: conn.supply(secret))  # type: ignore[arg-type]
        elif kind == 4 and conn.state is not State.TLS_HANDSHAKE:
            self.expect_error(conn.tls_established if selector & 1 else conn.tls_failed)
        elif event is None:
            self.expect_error(lambda: conn.send(Reply(250, "OK")))
        else:
            codes = [c for c in CANDIDATE_CODES if c not in valid_codes(event)]
            reply = Reply(codes[selector % len(codes)], "does not fit")
            self.expect_error(lambda: conn.send(reply))

    def expect_error(self, call: object) -> None:
        conn = self.conn
        before = snapshot(conn)
        try:
            call()  # type: ignore[operator]
        except LocalProtocolError:
            pass
        else:
            raise AssertionError(f"invalid call {call!r} did not raise LocalProtocolError")
        assert snapshot(conn) == before
        assert self.take_output() == []

    def tls_op(self, ok: bool) -> None:
        conn = self.conn
        handshake_due = conn.state is State.TLS_HANDSHAKE  # (not narrowing conn.state for what follows)
        if not handshake_due:
            self.expect_error(conn.tls_established if ok else conn.tls_failed)
            return
        if ok:
            conn.tls_established()
            assert conn.state is State.GREETED and conn.tls_active
            assert conn.helo_name is None and not conn.esmtp and conn.transaction is None
            assert conn.authenticated is None  # RFC 4954 4: the TLS session starts unauthenticated
            # RFC 3207 4.2: nothing sent in plaintext before the handshake survives it.
            assert buffered(conn) == b""
        else:
            conn.tls_failed()
            assert conn.state is State.CLOSED
        assert self.take_output() == []

    def close_op(self, timeout: bool) -> None:
        conn = self.conn
        was_closed = conn.state is State.CLOSED
        conn.timed_out() if timeout else conn.shutdown()
        assert conn.state is State.CLOSED and conn.pending is None
        replies = self.take_output()
        assert replies == ([] if was_closed else [(421, 1)]), replies
        self.raw, self.due = None, None

    def toggle_extension(self, extension: smtpwire.Extension) -> None:
        """Remove the extension with this keyword, or add it; the other AUTH instance is replaced."""
        current = self.conn.extensions.get(extension.keyword)
        if current is not None and (current is extension or not isinstance(extension, smtpwire.Auth)):
            self.conn.extensions.remove(extension.keyword)
        else:
            self.conn.extensions.add(extension)
        assert self.take_output() == []

    # -- draining and checking --------------------------------------------------

    def settle(self, was_closed: bool = False) -> None:
        conn = self.conn
        while True:
            self.events += 1
            assert self.events <= self.fed + 3 * self.ops + 8, "events without input: a loop?"
            reading_commands = conn.state in COMMAND_STATES and conn.pending is None
            line = next_command_line(conn, self.skip_left()) if reading_commands else None
            from_line = line is not None and conn._event_from_answer is None  # the event will be read from that line
            event = conn.next_event()
            if self.report is not None:  # the outcome of the last answer comes first
                self.check_report(event)
            if type(event) in VERBS or type(event) is smtpwire.ExtensionCommand:
                self.check_command(event, line)
            if event is smtpwire.NEED_DATA:
                self.check_idle()
                break
            if event is smtpwire.PAUSED:
                assert conn.pending is not None or conn.state is State.TLS_HANDSHAKE
                break
            assert isinstance(event, smtpwire.Event), event
            self.seen.append(type(event).__name__)
            discarding = self.discards_chunk(event)  # (before observe() ends a chunked message)
            self.observe(event)
            if discarding:
                self.discard_chunk(line)
            if from_line and isinstance(event, smtpwire.CommandRejected):
                self.check_bdat_trusted(event, line, discarding)
            if isinstance(event, smtpwire.ConnectionClosed):
                assert conn.state is State.CLOSED
                self.raw = None
                break
            if self.auto and isinstance(event, smtpwire.Decision):
                self.take_output_checked(was_closed)
                self.ops += 1
                self.answer(None)
        self.take_output_checked(was_closed)

    def check_command(self, event: object, line: bytes | None) -> None:
        """RFC 5321 2.4: verbs are ASCII, case-insensitive; the event names the verb of its line."""
        assert line is not None, f"{event!r} without a command line"
        verb, _, argument = line.rstrip(b"\r\n").partition(b" ")
        expected = self.verb_of(event)
        assert verb.upper() == expected, f"{event!r} read from {line[:80]!r}"
        if expected == b"BDAT":
            self.first_chunk = chunk_declared(line)
        argument = argument.lstrip(b" ")
        if isinstance(event, smtpwire.MailFrom):
            assert argument[:5].upper() == b"FROM:", line[:80]
        elif isinstance(event, smtpwire.RcptTo):
            assert argument[:3].upper() == b"TO:", line[:80]
        elif isinstance(event, (smtpwire.Helo, smtpwire.Ehlo)):
            assert argument.rstrip(b" ") == event.name.encode(), line[:80]
        limit = self.config.max_command_line + self.conn.extensions.line_allowance
        assert len(line) <= limit, (len(line), limit)

    def consumed(self) -> int:
        """Octets the core has taken out of its buffer (read, discarded or dropped)."""
        return self.fed - len(self.conn._buffer)

    def skip_left(self) -> int:
        return max(0, self.skip_end - self.consumed())

    def discards_chunk(self, event: object) -> bool:
        """A BDAT the core refused (503, 500, 530, 552; 501 or an over-long line closes), or too big between chunks."""
        if isinstance(event, smtpwire.CommandRejected):
            lost = event.reply.code == 501 or event.reply.text == ("Line too long",)
            return event.command == "BDAT" and not lost
        return isinstance(event, smtpwire.MessageRejected) and event.reply.code == 552 and self.chunked

    def check_bdat_trusted(self, event: smtpwire.CommandRejected, line: bytes | None, discarding: bool) -> None:
        """A refused line some reader takes for BDAT: its chunk is discarded by its size, or the connection closes."""
        assert line is not None
        limit = self.config.max_command_line + self.conn.extensions.line_allowance  # what the core reads of it
        if MISREAD_BDAT.match(line[:limit]):
            assert discarding or self.conn.state is State.CLOSED, (event, line[:80])

    def discard_chunk(self, line: bytes | None) -> None:
        """The next octets, as many as the BDAT line declared, must never be read as commands (RFC 3030 2)."""
        assert line is not None and self.skip_left() == 0, (line, self.skip_left())
        self.skip_end = self.consumed() + chunk_declared(line)

    def verb_of(self, event: object) -> bytes:
        if isinstance(event, smtpwire.ExtensionCommand):
            return event.verb.encode()
        if isinstance(event, smtpwire.DataRequested) and event.chunked:
            return b"BDAT"
        if isinstance(event, smtpwire.Ehlo) and self.config.lmtp:
            return b"LHLO"
        return VERBS[type(event)]

    def check_idle(self) -> None:
        """Waiting for bytes: the core keeps at most one partial line (or a few DATA bytes)."""
        conn = self.conn
        waiting = len(conn._buffer)
        left = conn._refused_chunks_left  # the refused chunks' octets
        assert self.skip_left() == left, (self.skip_left(), left)
        if conn.state is State.CHUNK:  # every octet that came is passed on at once
            assert waiting == 0 and self.chunk_octets < chunk_size(conn), (waiting, self.chunk_octets)
        elif conn.state is State.DATA:
            assert waiting == 0 and held_by_dot_reader(conn) <= 4
            if self.raw is not None:  # liveness: the core did not miss the end of data
                missed = self.raw.find(b"\r\n.\r\n", max(0, self.raw_scanned - 4)) >= 0
                assert not missed, "the message ended but the core waits for more data"
                self.raw_scanned = len(self.raw)
        else:
            # liveness: no complete command or response line is left waiting
            assert b"\n" not in buffered(conn), "a whole line is buffered but the core waits for more"
            if conn.state is State.AUTH:  # one partial response line
                assert waiting <= MAX_RESPONSE_LINE, waiting
            else:
                limit = self.config.max_command_line + conn.extensions.line_allowance
                assert waiting <= limit, (waiting, limit)
                assert conn.state in COMMAND_STATES

    def observe(self, event: smtpwire.Event) -> None:
        conn = self.conn
        if isinstance(event, smtpwire.Decision):
            assert conn.pending is event
            if isinstance(event, (smtpwire.MailFrom, smtpwire.RcptTo, smtpwire.DataRequested)):
                assert conn.tls_active or not self.config.require_tls, f"{event!r} without TLS"
            if isinstance(event, smtpwire.MailFrom):
                assert event.address.isascii() or "SMTPUTF8" in event.params
                self.check_mail_auth(event)
                smtpwire.MailDsn.from_params(event.params)  # what DSN accepted decodes (else ValueError)
                assert conn.tls_active or "REQUIRETLS" not in event.params, event
            if isinstance(event, AUTH_DECISIONS):
                assert conn.state in (State.READY, State.AUTH) and conn.authenticated is None, conn.state
                assert event.username and event.mechanism in smtpwire.KNOWN_MECHANISMS, event
                kind = smtpwire.AuthCredentials if event.mechanism in ("PLAIN", "LOGIN") else smtpwire.CredentialsLookup
                assert isinstance(event, kind), event
                self.approved = None  # a new question: only its answer may authenticate
            if isinstance(event, smtpwire.RcptTo):
                assert conn.transaction is not None
                smtpwire.RcptDsn.from_params(event.params, conn.transaction.smtputf8)
                assert len(conn.transaction.recipients) < self.config.max_recipients
                assert event.address.isascii() or conn.transaction.smtputf8
            if isinstance(event, (smtpwire.Helo, smtpwire.Ehlo)):
                assert HELLO_NAME.fullmatch(event.name) and len(event.name) <= 255, event
                assert not (self.config.lmtp and isinstance(event, smtpwire.Helo)), "HELO in LMTP"
            if isinstance(event, (smtpwire.MailFrom, smtpwire.RcptTo)):
                self.check_address(event)
            if isinstance(event, smtpwire.Vrfy):
                assert not unsafe(event.argument), event
            if isinstance(event, smtpwire.ExtensionCommand):
                self.check_extension_command(event)
        elif isinstance(event, smtpwire.Help):
            assert not unsafe(event.topic), event
        elif isinstance(event, smtpwire.StartTLSRequested):
            assert conn.state is State.TLS_HANDSHAKE and not conn.tls_active
            assert "STARTTLS" in conn.extensions
        elif isinstance(event, smtpwire.MessageData):
            assert conn.state is (State.CHUNK if self.chunked else State.DATA) and event.data, (conn.state, event)
            self.message.append(event.data)
            assert sum(map(len, self.message)) <= self.config.max_message_size
            if self.chunked:
                self.chunk_octets += len(event.data)
                assert self.chunk_octets <= chunk_size(conn), (self.chunk_octets, chunk_size(conn))
        elif isinstance(event, smtpwire.ChunkReceived):
            assert self.chunked and conn.state is State.BDAT, (self.chunked, conn.state)
            assert event.size == self.chunk_octets == chunk_size(conn), (event, self.chunk_octets)
            self.chunk_octets = 0
        elif isinstance(event, smtpwire.CommandRejected):
            assert event.reply.code >= 400
            if event.command == "AUTH" and (event.reply.code, event.reply.enhanced) in AUTH_FAILURES:
                self.auth_failures += 1
                closed = self.auth_failures >= self.config.max_auth_failures
                assert conn.state is (State.CLOSED if closed else State.READY), (conn.state, self.auth_failures)
                assert conn.authenticated is None
        elif isinstance(event, smtpwire.Authenticated):
            # RFC 4954 6: success only when the application accepted these credentials
            assert event == conn.authenticated == self.approved, (event, conn.authenticated, self.approved)
            self.approved = None
        if isinstance(event, smtpwire.EndOfMessage) and self.due:  # LMTP: the next recipient's question
            assert event == smtpwire.EndOfMessage(self.due[0]), (event, self.due)
        elif isinstance(event, (smtpwire.EndOfMessage, smtpwire.MessageRejected)):
            self.check_message(event)

    def check_extension_command(self, event: smtpwire.ExtensionCommand) -> None:
        """An offered extension's verb, where its declaration allows it, with the argument it takes."""
        conn = self.conn
        declared = conn.extensions.verb(event.verb)
        assert declared is not None and declared[0].offered(conn), event
        verb = declared[1]
        assert conn.state in verb.states, (event, conn.state)
        assert bool(event.argument) is not (verb.argument == "none") or verb.argument == "optional", event
        assert not unsafe(event.argument), event
        assert conn.tls_active or not self.config.require_tls, f"{event!r} without TLS"

    def check_address(self, event: smtpwire.MailFrom | smtpwire.RcptTo) -> None:
        """RFC 5321 4.5.3.1.1-3 and nothing that breaks a header field or log line."""
        address = event.address
        assert not unsafe(address) and not any(unsafe(f"{k}={v}") for k, v in event.params.items()), event
        local_part, _, domain = address.rpartition("@")
        assert octets(local_part) <= 64 and octets(domain) <= 255 and octets(address) + 2 <= 256, event

    def check_report(self, event: object) -> None:
        """After supply() or an accepted AuthCredentials the outcome is the very next event."""
        expected, self.report = self.report, None
        if isinstance(expected, smtpwire.Authenticated):
            assert event == expected, (event, expected)
        else:
            assert isinstance(event, smtpwire.CommandRejected), (event, expected)
            assert event.command == "AUTH" and event.reply.code == expected, (event, expected)

    def check_mail_auth(self, event: smtpwire.MailFrom) -> None:
        """RFC 4954 5: AUTH= only while AUTH is offered, and "<>" from an unauthenticated client."""
        conn = self.conn
        if self.config.require_auth:
            assert conn.authenticated is not None, f"{event!r} before AUTH under require_auth"
        if "AUTH" in event.params:
            auth = conn.extensions.get("AUTH")
            assert isinstance(auth, smtpwire.Auth) and conn.esmtp, event
            assert conn.tls_active or not auth.require_tls, event
            assert conn.authenticated is not None or event.params["AUTH"] == "<>", event

    def check_message(self, event: smtpwire.EndOfMessage | smtpwire.MessageRejected) -> None:
        if isinstance(event, smtpwire.EndOfMessage):
            transaction = self.conn.transaction
            assert transaction is not None and transaction.recipients, event
            recipients = list(transaction.recipients) if self.config.lmtp else [None]
            assert event.recipient == recipients[0], (event, recipients)
            self.due = list(recipients)
        if self.chunked:
            self.check_chunked_message(event)
            return
        assert self.raw is not None
        reference = reference_message(bytes(self.raw), self.config.bare_line_endings == "reject")
        assert reference is not None, "the core ended a message the reference has not seen end"
        content, bare = reference
        got = b"".join(self.message)
        if len(content) > self.config.max_message_size:
            assert isinstance(event, smtpwire.MessageRejected) and event.reply.code == 552, event
            assert content.startswith(got)
        else:
            assert got == content, (got[:200], content[:200])
            if bare:
                assert isinstance(event, smtpwire.MessageRejected) and event.reply.code == 550, event
            else:
                assert isinstance(event, smtpwire.EndOfMessage), event
        self.raw = None
        self.message = []

    def check_chunked_message(self, event: smtpwire.EndOfMessage | smtpwire.MessageRejected) -> None:
        """BDAT: the LAST chunk came whole, or a chunk was refused as too big before any of its octets."""
        size = sum(map(len, self.message))
        if isinstance(event, smtpwire.EndOfMessage):
            assert self.chunk_octets == chunk_size(self.conn) and size <= self.config.max_message_size
        else:
            assert event.reply.code == 552 and self.chunk_octets == 0, event
            assert size + chunk_size(self.conn) > self.config.max_message_size
        self.chunked, self.message = False, []

    def take_output_checked(self, was_closed: bool) -> None:
        replies = self.take_output()
        assert not (was_closed and replies), f"sent {replies} after the connection closed"

    def take_output(self) -> list[tuple[int, int]]:
        """Drain and check the output; returns (code, line count) per reply."""
        out = self.conn.data_to_send()
        replies: list[tuple[int, int]] = []
        position, lines, code = 0, 0, None
        while position < len(out):
            match = REPLY_LINE.match(out, position)
            assert match is not None, f"malformed output {out[position : position + 80]!r}"
            assert match.end() - position <= 512, f"reply line of {match.end() - position} octets"
            assert code is None or int(match[1]) == code, "multi-line reply changed code"
            code, lines, position = int(match[1]), lines + 1, match.end()
            if match[2] != b"-":
                replies.append((code, lines))
                code, lines = None, 0
        assert code is None, "output ends inside a multi-line reply"
        self.replies += len(replies)
        assert self.replies <= self.line_feeds + self.fed // 512 + self.ops + 3, "reply amplification"
        return replies


def TestOneInput(data: bytes) -> None:
    Harness(data).run()


# -- seeds ------------------------------------------------------------------------


def feed(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    out = bytearray()
    for start in range(0, max(len(raw), 1), 255):
        chunk = raw[start : start + 255]
        out += bytes([0, len(chunk)]) + chunk
    return bytes(out)


def lines(*commands: str) -> bytes:
    return feed("".join(c + "\r\n" for c in commands))


def drip(data: bytes) -> bytes:
    return b"".join(bytes([1, 1, b]) for b in data)


def repeat(pattern: bytes, times_eight: int) -> bytes:
    return bytes([5, times_eight - 1, len(pattern) - 1]) + pattern


def canned(command: bytes) -> bytes:
    return bytes([15, CANNED.index(command)])


EOF, ACCEPT, TIMEOUT, SHUTDOWN = b"\x06", b"\x07", b"\x0c", b"\x0d"


def reply(event: type[smtpwire.Decision], code: int, text: int = 0, enhanced: int = 0) -> bytes:
    codes = (220, 421, 554) if event is smtpwire.ConnectionOpened else POSITIVE[event] + DECLINES
    return bytes([9, codes.index(code), text, enhanced])


def invalid(kind: int, selector: int = 0) -> bytes:
    return bytes([10, kind, selector])


def tls(ok: bool) -> bytes:
    return bytes([11, int(ok)])


def toggle(extension: str | smtpwire.Extension) -> bytes:
    """EXT for this instance, or for the first one with this keyword."""
    if isinstance(extension, str):
        extension = next(e for e in EXTENSIONS if e.keyword == extension)
    return bytes([14, EXTENSIONS.index(extension)])


def config(flags: int = 0, hostname: int = 0, command_line: int = 0, auth: int = 0, mode: int = 0) -> bytes:
    return bytes([flags, hostname | command_line << 2 | auth, mode])


BODY = b"From: a@example.org\r\nSubject: test\r\n\r\nHello.\r\n"
EHLO_TO_DATA = ("EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")


AUTH_PLAIN = "AUTH PLAIN " + b64("\0tim\0tanstaaf").decode()
SCRAM_LINES = ("AUTH SCRAM-SHA-256 " + b64(SCRAM_CLIENT_FIRST).decode(), b64(SCRAM_CLIENT_FINAL).decode(), "")
LOGIN_LINES = ("AUTH LOGIN", b64("tim").decode(), b64("tanstaaf").decode())


def body_seed(body: bytes, flags: int = AUTO) -> bytes:
    """A transaction whose DATA section is exactly ``body`` (which holds its own end or not)."""
    return config(flags) + lines(*EHLO_TO_DATA) + feed(body) + lines("MAIL FROM:<c@example.org>", "QUIT")


SEEDS: dict[str, bytes] = {
    "session-basic": config(AUTO) + lines(*EHLO_TO_DATA) + feed(BODY + b".\r\n") + lines("QUIT") + EOF,
    "session-pipelined-manual": config()
    + ACCEPT
    + feed(b"EHLO c.example\r\nMAIL FROM:<a@example.org> BODY=8BITMIME SIZE=120\r\n")
    + ACCEPT
    + ACCEPT
    + feed(b"RCPT TO:<b@example.net>\r\nRCPT TO:<nobody@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
    + ACCEPT
    + reply(smtpwire.RcptTo, 550, 0, 1)
    + reply(smtpwire.RcptTo, 251, 2)
    + ACCEPT
    + feed(BODY + b".\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    + reply(smtpwire.EndOfMessage, 451, 4, 9),
    "session-helo-params-refused": config(AUTO)
    + lines("HELO old.example", "MAIL FROM:<a@example.org> SIZE=10", "MAIL FROM:<a@example.org>")
    + lines("RCPT TO:<b@example.net>", "DATA now", "DATA")
    + feed(b"x\r\n.\r\n")
    + lines("QUIT"),
    "greeting-refused": config()
    + reply(smtpwire.ConnectionOpened, 554)
    + lines("EHLO c.example", "MAIL FROM:<a@b.example>", "QUIT"),
    "greeting-421": config() + reply(smtpwire.ConnectionOpened, 421) + lines("EHLO c.example"),
    "starttls-injected-noop": config(STARTTLS | AUTO)
    + lines("EHLO c.example", "STARTTLS", "NOOP")
    + feed(b"MAIL FROM:<evil@example.org>\r\n")
    + tls(True)
    + lines("EHLO c.example", "STARTTLS", "MAIL FROM:<a@example.org>", "QUIT"),
    "starttls-injected-mail-failed": config(STARTTLS | AUTO)
    + lines("EHLO c.example", "STARTTLS", "MAIL FROM:<evil@example.org>", "RCPT TO:<x@example.org>")
    + tls(False)
    + lines("NOOP"),
    "starttls-required": config(STARTTLS | REQUIRE_TLS | AUTO)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")
    + lines("STARTTLS")
    + tls(True)
    + lines(*EHLO_TO_DATA)
    + feed(BODY + b".\r\n")
    + lines("STARTTLS", "QUIT"),
    "starttls-unavailable-and-implicit": config(TLS_ACTIVE | STARTTLS | AUTO)
    + lines("EHLO c.example", "STARTTLS", "STARTTLS now")
    + toggle("STARTTLS")
    + lines("EHLO c.example", "STARTTLS"),
    "data-dot-stuffed-split": config(AUTO)
    + lines(*EHLO_TO_DATA)
    + drip(b".leading dot\r\n..two dots\r\n")
    + feed(b"...\r\nlast line\r")
    + feed(b"\n.")
    + feed(b"\r")
    + feed(b"\n")
    + lines("QUIT"),
    "data-empty-message": config(AUTO) + lines(*EHLO_TO_DATA) + feed(b".\r\n") + lines("QUIT"),
    "smuggle-lf-dot-lf": body_seed(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<smuggled@example.org>\r\n.\r\n"),
    "smuggle-cr-dot-cr": body_seed(b"Subject: x\r\n\r\nhi\r.\rMAIL FROM:<smuggled@example.org>\r\n.\r\n"),
    "smuggle-lf-dot-crlf": body_seed(b"Subject: x\r\n\r\nhi\n.\r\nRCPT TO:<smuggled@example.org>\r\n.\r\n"),
    "smuggle-crlf-dot-lf-accept": body_seed(
        b"Subject: x\r\n\r\nhi\r\n.\nDATA\r\nbare\rcr\r\n.\r\n", AUTO | BARE_ACCEPT
    ),
    "data-too-big-small-limits": body_seed(b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\n", AUTO | SMALL),
    "data-at-limit-small-limits": body_seed(b"z" * 62 + b"\r\n.\r\n", AUTO | SMALL),
    "small-limits-recipients-errors": config(AUTO | SMALL)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>")
    + lines("RCPT TO:<d@example.net>", "RCPT TO:bad", "FOO", "BAR", "BAZ"),
    "line-too-long": config(AUTO)
    + lines("EHLO c.example")
    + feed(b"NOOP ")
    + repeat(b"A", 80)
    + feed(b"\r\nNOOP\r\n")
    + repeat(b"MAIL FROM:<a@b> ", 8)
    + lines("NOOP"),
    "line-too-long-then-eof": config(AUTO, command_line=2) + repeat(b"x", 200) + repeat(b"y", 200) + EOF,
    "regress-ehlo-long-name": config(AUTO) + feed(b"EHLO ") + repeat(b"n", 61) + feed(b"\r\n"),
    "regress-non-ascii-verb": config(STARTTLS | AUTO) + lines("EHLO c.example", "\ufb06ARTTLS", "NOOP"),
    "smtputf8-addresses": config(AUTO)
    + lines("EHLO c.example", "MAIL FROM:<jörg@bücher.example>", "MAIL FROM:<jörg@bücher.example> SMTPUTF8")
    + lines("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>", 'RCPT TO:<"quoted local"@例え.jp>', "DATA")
    + feed("Subject: ünïcødé\r\n\r\n本文\r\n.\r\n")
    + lines("MAIL FROM:<a@example.org>", "RCPT TO:<ü@example.org>"),
    "address-literals-source-routes": config(AUTO)
    + lines("EHLO [192.0.2.1]", "MAIL FROM:<a@[127.0.0.1]>", "RCPT TO:<b@[IPv6:2001:db8::1]>")
    + lines("RCPT TO:<c@[300.1.1.1]>", "RCPT TO:<d@[IPv6:fe80::1%eth0]>", "RCPT TO:<e@[tag:foo]>")
    + lines("RCPT TO:<@relay.example,@b.example:f@example.net>", "RCPT TO:<@bad:g@example.net>")
    + lines("RCPT TO:<postmaster>", "RCPT TO:<>", "RCPT TO: <h@example.net>", "RSET", "MAIL FROM:<postmaster>"),
    "bad-params": config(AUTO)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org> SIZE=abc", "MAIL FROM:<a@example.org> SIZE=99999999999")
    + lines("MAIL FROM:<a@example.org> BODY=9BIT", "MAIL FROM:<a@example.org> SMTPUTF8=yes")
    + lines("MAIL FROM:<a@example.org> FOO=bar", "MAIL FROM:<a@example.org> SIZE=1 SIZE=2")
    + lines("MAIL FROM:<a@example.org> =x", "MAIL FROM:<a@example.org>x", "MAIL FROM:a@example.org")
    + lines("MAIL FROM:<a@example.org> SIZE=10", "RCPT TO:<b@example.net> NOTIFY=NEVER"),
    "dsn-transaction": config(AUTO)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B314159")
    + lines("RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.net")
    + lines("RCPT TO:<c@example.net> NOTIFY=never ORCPT=utf-8;j\\x{F6}rg@example.net", "DATA")
    + feed(BODY + b".\r\n")
    + lines("MAIL FROM:<j\u00f6rg@example.org> SMTPUTF8 RET=FULL", "RCPT TO:<d@example.net> ORCPT=utf-8;j\u00f6rg@x")
    + lines("QUIT"),
    "dsn-bad-parameters": config(AUTO)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org> RET=ALL", "MAIL FROM:<a@example.org> ENVID=a+0D+0Ab")
    + lines("MAIL FROM:<a@example.org> ENVID=" + "x" * 101, "MAIL FROM:<a@example.org> RET=FULL RET=HDRS")
    + lines("MAIL FROM:<a@example.org> NOTIFY=NEVER", "MAIL FROM:<a@example.org>")
    + lines("RCPT TO:<b@example.net> NOTIFY=NEVER,DELAY", "RCPT TO:<b@example.net> ORCPT=rfc822")
    + lines("RCPT TO:<b@example.net> ORCPT=utf-8;j\u00f6rg@x", "RCPT TO:<b@example.net> ORCPT=utf-8;a\\x{110000}")
    + lines("RCPT TO:<b@example.net> RET=FULL", "QUIT"),
    "requiretls-and-limits": config(STARTTLS | SMALL | AUTO)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org> REQUIRETLS", "STARTTLS")
    + tls(True)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org> REQUIRETLS=yes", "MAIL FROM:<a@example.org> REQUIRETLS")
    + lines("RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>", "RCPT TO:<d@example.net>", "QUIT"),
    "odd-commands": config(AUTO)
    + lines("", "ehlo c.example", "HELP", "HELP mail", "VRFY", "VRFY bob", "EXPN staff", "TURN", "BDAT 1")
    + feed(b"NOOP\x00\r\n\xff\xfe\r\nEHLO bare.lf\nmail from:<a@b.example>\nRSET extra\r\nQUIT now\r\n")
    + lines("DATA extra", "QUIT"),
    "timeout-mid-data": config(AUTO) + lines(*EHLO_TO_DATA) + feed(b"partial message\r\n") + TIMEOUT + lines("NOOP"),
    "shutdown-pending-decision": config() + ACCEPT + lines("EHLO c.example") + SHUTDOWN + ACCEPT + EOF,
    "eof-mid-data": config(AUTO) + lines(*EHLO_TO_DATA) + feed(b"partial\r\n.") + EOF,
    "invalid-app-calls": config()
    + invalid(3)
    + invalid(0)
    + invalid(1, 3)
    + invalid(1, 9)
    + invalid(2)
    + invalid(0, 1)
    + ACCEPT
    + invalid(4, 1)
    + lines("EHLO c.example")
    + invalid(0, 3)
    + reply(smtpwire.Ehlo, 250, 6)
    + toggle("ENHANCEDSTATUSCODES")
    + lines("VRFY x")
    + reply(smtpwire.Vrfy, 553, 2, 7)
    + tls(True),
    # -- AUTH (RFC 4954) --
    "auth-plain-success": config(AUTO, auth=AUTH_ON)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org> AUTH=tim+2Bx@b", "RSET", AUTH_PLAIN, AUTH_PLAIN)
    + lines("MAIL FROM:<a@example.org> AUTH=tim+2Bx@b", "RCPT TO:<b@example.net>", "DATA")
    + feed(BODY + b".\r\n")
    + lines("HELP", "QUIT"),
    "auth-login-pipelined": config(auth=AUTH_ON)
    + ACCEPT
    + lines("EHLO c.example", *LOGIN_LINES, "MAIL FROM:<a@example.org> AUTH=<>", "QUIT")
    + ACCEPT
    + invalid(3, 1)  # supply() while AuthCredentials is pending
    + reply(smtpwire.AuthCredentials, 235, 0, 7)
    + ACCEPT,
    "auth-scram-rfc7677": config(AUTO, auth=AUTH_ON)
    + lines("EHLO c.example", *SCRAM_LINES, "MAIL FROM:<a@example.org> AUTH=<>", "QUIT"),
    "auth-scram-manual-invalid-calls": config(auth=AUTH_ON)
    + ACCEPT
    + invalid(3, 1)  # supply() with nothing pending
    + lines("EHLO c.example")
    + ACCEPT
    + lines("AUTH SCRAM-SHA-256", b64(SCRAM_CLIENT_FIRST).decode())
    + invalid(3, 0)  # accept() on a CredentialsLookup
    + invalid(3, 1)  # supply() of a str for SCRAM
    + invalid(3, 3)
    + invalid(0, 2)
    + ACCEPT
    + lines(*SCRAM_LINES[1:], "AUTH LOGIN"),
    "auth-cram-md5-success": config(AUTO, auth=AUTH_ON)
    + lines("EHLO c.example", "AUTH CRAM-MD5", b64(CRAM_RESPONSE).decode(), "NOOP", "QUIT"),
    "auth-cancel": config(AUTO, auth=AUTH_ON)
    + lines("EHLO c.example", "AUTH LOGIN", "*", "AUTH SCRAM-SHA-256", "*", "AUTH X-UNKNOWN", AUTH_PLAIN, "QUIT"),
    "auth-response-too-long": config(AUTO, auth=AUTH_ON)
    + lines("EHLO c.example", "AUTH PLAIN")
    + repeat(b"QUFB" * 8, 48)  # 12288 octets: still one partial response line
    + feed(b"QUF\r\nNOOP\r\n")  # a complete line of 12293 octets
    + lines("AUTH LOGIN")
    + repeat(b"QUFB" * 8, 64)  # past the limit without an LF: the rest is dropped as it comes
    + feed(b"QUFB\r\nNOOP\r\n")
    + lines(AUTH_PLAIN, "QUIT"),
    "auth-response-at-limit": config(AUTO, auth=AUTH_ON)
    + lines("EHLO c.example", "AUTH LOGIN")
    + repeat(b"QUFB" * 8, 48)
    + feed(b"\r\n")  # exactly 12290 octets: read, but too big for the mechanism
    + lines("NOOP", "QUIT"),
    "auth-failure-limit-421": config(SMALL, auth=AUTH_ON)
    + ACCEPT
    + lines("EHLO c.example", "AUTH PLAIN not*base64", "AUTH X-UNKNOWN", AUTH_PLAIN)
    + ACCEPT
    + reply(smtpwire.AuthCredentials, 535, 0, 1)
    + lines("NOOP"),
    "auth-lookup-declined-one-failure": config(auth=AUTH_ON | ONE_AUTH_FAILURE)
    + ACCEPT
    + lines("EHLO c.example", "AUTH CRAM-MD5", b64("tim 0123456789abcdef0123456789abcdef").decode())
    + ACCEPT
    + reply(smtpwire.CredentialsLookup, 454, 0, 9)
    + lines("NOOP"),
    "auth-unknown-users-limit": config(AUTO, auth=AUTH_ON)
    + lines("EHLO c.example", "AUTH CRAM-MD5", b64("nobody 0123456789abcdef0123456789abcdef").decode())
    + lines("AUTH SCRAM-SHA-256 " + b64("n,,n=nobody,r=abc").decode(), b64(SCRAM_CLIENT_FINAL).decode())
    + lines("AUTH SCRAM-SHA-256 " + b64(SCRAM_CLIENT_FIRST).decode(), "AUTH LOGIN", "NOOP"),
    "auth-require-auth-530": config(AUTO, auth=AUTH_ON | REQUIRE_AUTH)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org>", "MAIL FROM:<a@example.org> AUTH=<>", *LOGIN_LINES)
    + lines("MAIL FROM:<a@example.org> AUTH=tim+2Bx@b", "RCPT TO:<b@example.net>", "DATA")
    + feed(BODY + b".\r\n")
    + lines("QUIT"),
    "auth-needs-tls": config(STARTTLS | AUTO, auth=AUTH_ON | AUTH_NEEDS_TLS)
    + lines("EHLO c.example", AUTH_PLAIN, "MAIL FROM:<a@example.org> AUTH=<>", "RSET", "STARTTLS")
    + tls(True)
    + lines("EHLO c.example", "AUTH CRAM-MD5", AUTH_PLAIN, "MAIL FROM:<a@example.org> AUTH=tim+2Bx@b", "RSET")
    + toggle(AUTH_OPEN)  # replaces AUTH_TLS
    + lines("AUTH PLAIN", "STARTTLS")
    + toggle(AUTH_OPEN)  # removes it
    + lines("MAIL FROM:<a@example.org> AUTH=<>", "AUTH LOGIN"),
    "auth-forgotten-after-starttls": config(STARTTLS | AUTO, auth=AUTH_ON)
    + lines("EHLO c.example", *SCRAM_LINES, "MAIL FROM:<a@example.org> AUTH=tim+2Bx@b", "RSET", "STARTTLS")
    + tls(True)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org> AUTH=tim+2Bx@b", "RSET", "AUTH CRAM-MD5")
    + lines(b64(CRAM_RESPONSE).decode(), "MAIL FROM:<a@example.org> AUTH=tim+2Bx@b")
    + toggle(AUTH_TLS)  # replaces AUTH_OPEN
    + lines("QUIT"),
    "auth-toggled-mid-exchange": config(AUTO)
    + lines("EHLO c.example", "AUTH LOGIN")
    + toggle(AUTH_OPEN)
    + lines("EHLO c.example", *LOGIN_LINES[:2])
    + toggle(AUTH_OPEN)
    + lines(LOGIN_LINES[2], "MAIL FROM:<a@example.org> AUTH=<>", "QUIT"),
    # -- what reaches header fields and log lines (RFC 5321 4.1.1.1, 4.5.3.1) --
    "hello-names": config(AUTO)
    + lines("EHLO [1.2.3.4])(by.trusted.example", "EHLO a_b.example", "EHLO host.example.", "EHLO -a", "EHLO a..b")
    + lines("EHLO [300.1.1.1]", "EHLO [IPv6:zz::1]", "EHLO [tag:x]y", "EHLO " + ".".join(["h" * 63] * 4) + "h")
    + lines("HELO myhost", "HELO [127.0.0.1]", "EHLO [IPv6:2001:db8::1]", "EHLO [x-tag:opaque]")
    + lines("EHLO " + ".".join(["h" * 63] * 4), "EHLO localhost", "QUIT"),
    "regress-ehlo-unclosed-literal": config(AUTO) + lines("EHLO [192.0.2.12", "HELO [IPv6:::1", "EHLO [192.0.2.1]"),
    "address-length-limits": config(AUTO, command_line=3)
    + lines("EHLO c.example", "MAIL FROM:<" + "l" * 1030 + "@example.org>", "MAIL FROM:<" + "l" * 65 + "@b.example>")
    + lines("MAIL FROM:<a@" + "d" * 256 + ">", "MAIL FROM:<ab@" + "d" * 252 + ">", "MAIL FROM:<a@" + "d" * 252 + ">")
    + lines("RCPT TO:<" + "l" * 64 + "@b.example>", "RCPT TO:<" + "l" * 65 + "@b.example>")
    + lines("RCPT TO:<@" + "r" * 250 + ":a@b.example>", 'RCPT TO:<"' + "\u00fc" * 32 + '"@b.example>')
    + lines("RSET", "MAIL FROM:<\u00fc@b.example> SMTPUTF8", 'RCPT TO:<"' + "\u00fc" * 31 + '"@b.example>', "QUIT"),
    "unsafe-characters": config(AUTO)
    + lines("EHLO c.example", "MAIL FROM:<jo\u0085rg@example.org> SMTPUTF8")
    + lines("MAIL FROM:<a\u2028b@example.org> SMTPUTF8")
    + lines("MAIL FROM:<j\u00f6rg@example.org> SMTPUTF8", "RCPT TO:<\u202egpj.exe@example.org>")
    + lines("RCPT TO:<a@\u2066b.example>", "RCPT TO:<b@example.org> X=\u200f", "VRFY \u061cbob", "HELP \u2029")
    + lines("VRFY b\u0080ob", "RCPT TO:<\u0645\u062d\u0645\u062f@example.org>", "QUIT"),
    "ehlo-broken-extension": config()
    + ACCEPT
    + toggle(BrokenEhloLine.keyword)
    + lines("EHLO c.example")
    + ACCEPT  # raises, changes nothing; 451 instead
    + lines("HELO c.example", "EHLO again.example")
    + ACCEPT
    + reply(smtpwire.Helo, 250)
    + reply(smtpwire.Ehlo, 250)  # raises, changes nothing; 451 instead
    + toggle(BrokenEhloLine.keyword)
    + lines("EHLO c.example")
    + ACCEPT
    + lines("QUIT"),
    # -- verbs an extension declares --
    "extension-verbs": config(AUTO)
    + toggle(ExtensionVerbs.keyword)
    + lines("XSTATS", "XPOKE", "EHLO c.example", "xstats", "XSTATS now", "XCLIENT", "XCLIENT ADDR=192.0.2.1")
    + lines("XPEEK", "XPOKE", "MAIL FROM:<a@example.org>", "XPEEK x", "XCLIENT NAME=x", "XPOKE", "HELP")
    + canned(b"XPOKE " + b"p" * 560 + b"\r\n")
    + lines("HELO c.example", "XSTATS", "HELP", "EHLO c.example")
    + toggle(ExtensionVerbs.keyword)
    + lines("XSTATS", "HELP", "QUIT"),
    "extension-verbs-answered": config()
    + ACCEPT
    + toggle(ExtensionVerbs.keyword)
    + lines("EHLO c.example", "XSTATS")
    + ACCEPT
    + invalid(0, 5)  # a 354 does not answer an extension's verb
    + reply(smtpwire.ExtensionCommand, 252, 2, 7)
    + lines("XCLIENT ADDR=192.0.2.1")
    + reply(smtpwire.ExtensionCommand, 550, 0, 1)
    + lines("XPOKE")
    + SHUTDOWN,
    "extension-verbs-start-over": config(AUTO, auth=AUTH_ON)
    + toggle(ExtensionVerbs.keyword)
    + lines("XRESTART", "EHLO c.example", f"AUTH PLAIN {b64(chr(0) + 'user' + chr(0) + 'pencil').decode()}")
    + lines("XRESTART", "MAIL FROM:<a@example.org>", "EHLO c.example", "MAIL FROM:<a@example.org>", "XRESTART")
    + lines("RSET", "XRESTART", "QUIT"),
    "extension-verbs-require-tls": config(STARTTLS | REQUIRE_TLS | AUTO)
    + toggle(ExtensionVerbs.keyword)
    + lines("EHLO c.example", "XSTATS", "STARTTLS")
    + tls(True)
    + lines("EHLO c.example", "XSTATS", "QUIT"),
    "state-table-corners": config(AUTO, auth=AUTH_ON)
    + lines("RSET", "EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "EHLO d.example")
    + lines("AUTH LOGIN")
    + EOF,
    "misuse-receive-data": config()
    + invalid(2, 1)
    + invalid(2, 3)
    + ACCEPT
    + invalid(2, 5)
    + invalid(1, 14)
    + invalid(1, 15)
    + invalid(1, 16)
    + lines("EHLO c.example")
    + invalid(2, 7)
    + invalid(2, 9)
    + invalid(1, 17)
    + invalid(1, 18)
    + ACCEPT
    + lines("QUIT"),
    # -- CHUNKING (RFC 3030), BINARYMIME and LMTP (RFC 2033) --
    "bdat-chunks": config(AUTO)
    + lines(*EHLO_TO_DATA[:3])
    + feed(b"BDAT 6\r\nchunk1BDAT 0\r\nBDAT 11 LAST\r\n\r\n.\r\nQUIT\r\n")
    + lines("NOOP", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
    + feed(b"bdat 4 last\r\n\x00\n\r\xff")
    + feed(b"BDAT 6 LAST\r\nQUIT\r\n")  # out of sequence: discarded
    + lines("QUIT"),
    "bdat-drip": config(AUTO) + lines(*EHLO_TO_DATA[:3]) + drip(b"BDAT 3\r\na\r\nBDAT 2 LAST\r\n.\nNOOP\r\n"),
    "bdat-pipelined-manual": config()
    + ACCEPT
    + feed(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    + ACCEPT
    + ACCEPT
    + ACCEPT
    + feed(b"BDAT 6\r\nRSET\r\nBDAT 4\r\nabcdBDAT 3 LAST\r\nefgNOOP\r\n")
    + reply(smtpwire.DataRequested, 452, 0, 3)  # refused: its 6 octets are discarded
    + ACCEPT  # the next BDAT asks again
    + reply(smtpwire.EndOfMessage, 554, 2, 7)
    + feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nBDAT 2 LAST\r\nhiQUIT\r\n")
    + ACCEPT
    + ACCEPT
    + reply(smtpwire.DataRequested, 421, 0, 1),
    "bdat-too-big-small-limits": config(SMALL | AUTO)
    + lines(*EHLO_TO_DATA[:3])
    + feed(b"BDAT 65 LAST\r\n" + b"x" * 65)
    + lines("NOOP", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
    + feed(b"BDAT 40\r\n" + b"y" * 40 + b"BDAT 25\r\n" + b"z" * 25 + b"BDAT 1 LAST\r\n!")
    + lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
    + feed(b"BDAT 64 LAST\r\n" + b"w" * 64)
    + lines("QUIT"),
    "bdat-refusals": config(AUTO)
    + feed(b"BDAT 6\r\nQUIT\r\n")
    + lines("EHLO c.example")
    + feed(b"BDAT 6 LAST\r\nQUIT\r\n")
    + lines("MAIL FROM:<a@example.org>")
    + feed(b"BDAT 6 LAST\r\nQUIT\r\n")
    + lines("RCPT TO:<b@example.net>")
    + toggle("CHUNKING")
    + feed(b"BDAT 6 LAST\r\nQUIT\r\n")
    + lines("HELP")
    + toggle("CHUNKING")
    + lines("HELP", "DATA")
    + feed(b"x\r\n.\r\n")
    + lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "BDAT 1")
    + feed(b"xDATA\r\nRSET\r\n")
    + feed(b"BDAT 10 LAST\r\nRSET")
    + EOF,
    # a BDAT line with a NUL was refused without discarding its chunk, whose octets then ran as commands
    "regress-bdat-bad-characters": config(AUTO)
    + lines(*EHLO_TO_DATA[:3])
    + feed(b"BDAT \x00\x0b\r\n\r\n.\r\nQUIT\r\n"),
    "regress-bdat-over-long-line": config(AUTO)
    + lines(*EHLO_TO_DATA[:3])
    + feed(b"BDAT 6" + b" " * 600 + b"LAST\r\nRSET\r\nQUIT\r\n"),
    # a line "BDAT<TAB>6" was an unknown verb, and the 6 octets after it ran as commands
    "regress-bdat-tab-separated": config(AUTO) + lines(*EHLO_TO_DATA[:3]) + feed(b"BDAT\t6\r\nRSET\r\nQUIT\r\n"),
    "bdat-quit-between-chunks": config(AUTO) + lines(*EHLO_TO_DATA[:3]) + feed(b"BDAT 2\r\nabQUIT\r\n"),
    "bdat-lost-size": config(AUTO) + lines(*EHLO_TO_DATA[:3], "BDAT 5 NOTLAST", "NOOP"),
    "bdat-require-tls": config(STARTTLS | REQUIRE_TLS | AUTO)
    + lines("EHLO c.example")
    + feed(b"BDAT 6 LAST\r\nQUIT\r\nSTARTTLS\r\n")
    + tls(True)
    + lines(*EHLO_TO_DATA[:3])
    + feed(b"BDAT 2 LAST\r\nokQUIT\r\n"),
    "bdat-between-chunks": config(AUTO)
    + toggle(ExtensionVerbs.keyword)
    + lines(*EHLO_TO_DATA[:3])
    + feed(b"BDAT 2\r\nab")
    + lines(
        "NOOP", "HELP", "VRFY b", "XSTATS", "XPOKE", "XPEEK", "MAIL FROM:<c@example.org>", "RCPT TO:<c@example.net>"
    )
    + lines("DATA", "AUTH PLAIN", "EHLO again.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
    + feed(b"BDAT 2\r\nabRSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nBDAT 9 LAST\r\nabc")
    + EOF,
    "binarymime": config(AUTO, mode=BINARYMIME)
    + lines("EHLO c.example", "MAIL FROM:<a@example.org> BODY=BINARYMIME", "RCPT TO:<b@example.net>", "DATA")
    + feed(b"BDAT 8 LAST\r\n\x00\x01\xfe\xff\r\n.\r")
    + toggle("CHUNKING")
    + lines("EHLO c.example", "MAIL FROM:<a@example.org> BODY=BINARYMIME", "QUIT"),
    "lmtp-session": config(AUTO, mode=LMTP)
    + lines("HELO c.example", "EHLO c.example", "MAIL FROM:<a@example.org>", "LHLO", "LHLO c.example", "HELP")
    + lines(
        "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>", "RCPT TO:<b@example.net>"
    )
    + lines("DATA")
    + feed(BODY + b".\r\n")
    + lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>")
    + feed(b"BDAT 3\r\nabcBDAT 2 LAST\r\ndeQUIT\r\n"),
    "lmtp-manual-answers": config(mode=LMTP)
    + ACCEPT
    + lines("LHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
    + ACCEPT
    + ACCEPT
    + ACCEPT
    + lines("RCPT TO:<c@example.net>")
    + ACCEPT
    + lines("RCPT TO:<d@example.net>")
    + ACCEPT
    + lines("DATA")
    + ACCEPT
    + feed(BODY + b".\r\nNOOP\r\n")
    + reply(smtpwire.EndOfMessage, 250, 0, 1)
    + reply(smtpwire.EndOfMessage, 452, 1, 2)
    + reply(smtpwire.EndOfMessage, 550, 2, 3)
    + lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>")
    + ACCEPT
    + ACCEPT
    + ACCEPT
    + feed(b"BDAT 1 LAST\r\nx")
    + ACCEPT
    + ACCEPT
    + reply(smtpwire.EndOfMessage, 421, 0, 1),
    "lmtp-shutdown-mid-answers": config(mode=LMTP)
    + ACCEPT
    + lines("LHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>")
    + ACCEPT * 4
    + feed(b"BDAT 2 LAST\r\nhi")
    + ACCEPT
    + ACCEPT
    + SHUTDOWN
    + ACCEPT,
    "lmtp-refused-messages": config(SMALL | AUTO, mode=LMTP)
    + lines("LHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>", "DATA")
    + feed(b"x" * 70 + b"\r\n.\r\n")
    + lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>", "DATA")
    + feed(b"bare\nlf\r\n.\r\n")
    + lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>")
    + feed(b"BDAT 40\r\n" + b"y" * 40 + b"BDAT 30 LAST\r\n" + b"z" * 30)
    + lines("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>")
    + feed(b"BDAT 65\r\n" + b"w" * 65)
    + lines("QUIT"),
}


if __name__ == "__main__":
    from _cli import main

    main(TestOneInput, SEEDS, atheris)
