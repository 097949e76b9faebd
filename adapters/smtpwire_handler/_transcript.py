"""The ``-v`` wire transcript: what the core was doing decides what is withheld, never the bytes.

Received bytes are logged a line at a time, once the core has read those
lines and so knows what they were: lines read while a SASL exchange ran (the
core in its AUTH state, or an AUTH command, its credentials or its outcome
among the events they produced) are withheld, all but the ``AUTH`` verb and
the mechanism that open them.  A line still arriving is
never shown, whatever way it is split, as nobody knows yet what it is.  Sent
bytes are withheld the same way, but for the exchange's outcome (``235``,
``535``, ``421``): the server's 334 challenges (a SCRAM salt and nonce, its
signature) would allow an offline attack on the password.
"""

from __future__ import annotations

import ast
import logging
import re

import smtpwire

log = logging.getLogger("smtpwire.transcript")

#: What a transcript line shows of the bytes at most (the rest is counted).
SHOWN = 1024
_AUTH_EVENTS = (smtpwire.AuthCredentials, smtpwire.CredentialsLookup, smtpwire.Authenticated)


class Transcript:
    """One session's DEBUG lines ``<<<`` (received) and ``>>>`` (sent), in bounded memory."""

    __slots__ = (
        "_auth",
        "_conn",
        "_finished",
        "_head",
        "_heard_auth",
        "_heard_secret",
        "_pending",
        "_said_auth",
        "_session_id",
        "_unfinished_head",
    )

    def __init__(self, conn: smtpwire.ServerConnection, session_id: str) -> None:
        self._conn = conn
        self._session_id = session_id
        self._pending = 0  # received bytes not yet shown
        self._finished = 0  # ... of them, those up to the last line end
        self._head = b""  # the first SHOWN pending bytes
        self._unfinished_head = b""  # the first SHOWN bytes after the last line end
        self._auth = 0  # SASL exchanges seen (AUTH events, or the core in its AUTH state)
        self._heard_auth = 0  # ... when received bytes were last shown
        self._said_auth = 0  # ... when sent bytes were last shown
        self._heard_secret = False  # bytes arrived while the core read SASL responses

    @staticmethod
    def enabled() -> bool:
        return log.isEnabledFor(logging.DEBUG)

    def heard(self, data: bytes) -> None:
        """The client's bytes, before the core reads them."""
        if self._in_auth():
            self._heard_secret = True
        if len(self._head) < SHOWN:
            self._head += data[: SHOWN - len(self._head)]
        end = data.rfind(b"\n") + 1
        if end:
            self._finished = self._pending + end
            self._unfinished_head = data[end : end + SHOWN]
        elif len(self._unfinished_head) < SHOWN:
            self._unfinished_head += data[: SHOWN - len(self._unfinished_head)]
        self._pending += len(data)

    def saw(self, event: smtpwire.Event) -> None:
        """An event from the core: AUTH ones make the lines that produced them secret."""
        if isinstance(event, _AUTH_EVENTS) or (
            isinstance(event, smtpwire.CommandRejected) and event.command.upper() == "AUTH"
        ):
            self._auth += 1

    def said(self, data: bytes) -> None:
        """The server's bytes, as they go out: during AUTH, its 334 challenges withheld, its outcome shown."""
        if self._in_auth() or self._said_auth != self._auth:
            self._said_auth = self._auth
            challenges = b"".join(line for line in data.splitlines(keepends=True) if line.startswith(b"334"))
            if challenges:
                self._log(">>>", f"[{len(challenges)} bytes of an AUTH exchange withheld]")
            if len(challenges) < len(data):
                outcome = b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"334"))
                self._log(">>>", _shown(outcome[:SHOWN], len(outcome)))
        else:
            self._log(">>>", _shown(data[:SHOWN], len(data)))

    def read_up(self, *, ended: bool = False) -> None:
        """The core has read every finished line (``ended``: and nothing more will come): show them."""
        size = self._pending if ended else self._finished
        if size == 0:
            return
        secret = self._heard_secret or self._heard_auth != self._auth or self._in_auth()
        unfinished = ended and size > self._finished  # an unfinished line may have been anything
        if secret and (command := _auth_command(self._head[:size])):
            self._log("<<<", f"{command!r} [{size - len(command)} bytes of an AUTH exchange withheld]")
        elif secret or unfinished:
            what = "an AUTH exchange" if secret else "an unfinished line"
            self._log("<<<", f"[{size} bytes of {what} withheld]")
        else:
            self._log("<<<", _shown(self._head[:size], size))
        self._heard_auth, self._heard_secret = self._auth, False
        self._pending -= size
        self._finished = 0
        self._head = self._unfinished_head if self._pending else b""
        if not self._pending:
            self._unfinished_head = b""

    def _in_auth(self) -> bool:
        return self._conn.state is smtpwire.State.AUTH

    def _log(self, direction: str, shown: str) -> None:
        log.debug("session %s %s %s", self._session_id, direction, shown)


_AUTH_COMMAND = re.compile(rb"(AUTH) ([A-Z0-9_-]{1,20})(?=[ \r\n])", re.IGNORECASE)
#: SASL mechanisms (IANA's registry, the common ones) a transcript names; another word after AUTH could be a
#: secret typed in the wrong place, so it is withheld with the rest.
_MECHANISMS = frozenset(
    b"PLAIN LOGIN CRAM-MD5 DIGEST-MD5 SCRAM-SHA-1 SCRAM-SHA-256 SCRAM-SHA-1-PLUS SCRAM-SHA-256-PLUS "
    b"XOAUTH2 OAUTHBEARER GSSAPI GS2-KRB5 NTLM EXTERNAL ANONYMOUS".split()
)


def _auth_command(head: bytes) -> bytes:
    """``AUTH`` and its mechanism when the bytes start with them (never the initial response), else ``b""``."""
    match = _AUTH_COMMAND.match(head)
    if match is None:
        return b""
    verb, mechanism = match.groups()
    return match.group() if mechanism.upper() in _MECHANISMS else verb


def _shown(head: bytes, size: int) -> str:
    return repr(head) if len(head) == size else f"{head!r} (+{size - len(head)} bytes)"


# -- the transcript's lines as people read them (serve's -v, the test fixture's report) ------------

_WITHHELD = re.compile(r"(b'.*'|b\".*\") (\[\d+ bytes of an AUTH exchange withheld\])")
_SHOWN_BYTES = re.compile(r"(b'.*'|b\".*\")(?: \(\+(\d+) bytes\))?", re.DOTALL)
#: How ``readable`` says that a transcript line's bytes were cut.
CUT_NOTE = "[..."


def readable(shown: str) -> list[str]:
    """The transcript's ``repr(bytes)`` made into text lines (a withheld or cut note stays as it is).

    The bytes are the ones a transcript line shows (at most ``_transcript.SHOWN``); ``\r`` and ``\n``
    other than CRLF line ends are shown as escapes, the formatter escapes the rest.
    """
    withheld = _WITHHELD.fullmatch(shown)  # b'AUTH PLAIN' [N bytes of an AUTH exchange withheld]
    if withheld:
        return [f"{readable(withheld[1])[0]} {withheld[2]}"]
    shown_bytes = _SHOWN_BYTES.fullmatch(shown)  # b'...' or b'...' (+N bytes)
    if shown_bytes is None:
        return [shown]
    try:
        data = ast.literal_eval(shown_bytes[1])
    except (ValueError, SyntaxError):
        return [shown]
    lines = data.decode("utf-8", "backslashreplace").split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    if shown_bytes[2]:
        lines.append(f"{CUT_NOTE} {shown_bytes[2]} bytes more]")
    return [line.replace("\r", "\\r").replace("\n", "\\n") for line in lines]


def folded(lines: list[str]) -> list[str]:
    """Each multi-line reply (``250-a``, ``250-b``, ``250 c``) as one line: ``250 a | b | c``."""
    replies: list[str] = []
    continued = False
    for line in lines:
        if continued:
            replies[-1] += f" | {line[4:]}"
        else:
            replies.append(line[:3] + " " + line[4:] if line[3:4] == "-" else line)
        continued = line[3:4] == "-"
    return replies
