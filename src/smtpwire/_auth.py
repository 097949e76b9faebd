"""The AUTH extension (RFC 4954): what is offered when, and the exchange's wire form.

The SASL mechanisms themselves live in ``_sasl`` and never see base64; the
connection runs the exchange with the helpers here.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ._extensions import Extension
from ._reply import BAD_CREDENTIALS, Reply
from ._sasl import (
    MECHANISMS,
    MIN_ITERATIONS,
    Failure,
    FailureKind,
    Mechanism,
    check_iterations,
    check_salt_key,
    sasl_mechanism,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._connection import ServerConnection

#: Every mechanism ``Auth`` can offer; CRAM-MD5 only when listed explicitly.
KNOWN_MECHANISMS = (*MECHANISMS, "CRAM-MD5")

#: RFC 4954 4: a server must accept client responses of 12288 octets (plus CRLF).
MAX_RESPONSE_LINE = 12288 + 2

# RFC 3461 4: xtext is printable ASCII but "+" and "=", with "+XX" hex escapes.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")

FAILURE_REPLIES: dict[FailureKind, Reply] = {
    "malformed": Reply(501, "Malformed authentication response", (5, 5, 2)),
    "credentials": BAD_CREDENTIALS,
    "cancelled": Reply(501, "Authentication cancelled", (5, 7, 0)),
}
RESPONSE_TOO_LONG = Reply(500, "Authentication exchange line is too long", (5, 5, 6))
ENCRYPTION_REQUIRED = Reply(538, "Encryption required for requested authentication mechanism", (5, 7, 11))
UNKNOWN_MECHANISM = Reply(504, "Unrecognized authentication type", (5, 5, 4))
ALREADY_AUTHENTICATED = Reply(503, "Already authenticated", (5, 5, 1))
AUTH_REQUIRED = Reply(530, "Authentication required", (5, 7, 0))
AUTH_SYNTAX = Reply(501, "Syntax: AUTH mechanism [initial-response]", (5, 5, 4))


def too_many_failures(hostname: str) -> Reply:
    return Reply(421, f"{hostname} Too many authentication failures, closing connection", (4, 7, 0))


class Auth(Extension):
    """RFC 4954 AUTH: register it to offer ``mechanisms`` (default SCRAM-SHA-256, PLAIN, LOGIN).

    With ``require_tls`` (the default) AUTH is advertised only once TLS is
    active and an attempt before gets 538 5.7.11, so no password crosses the
    network in clear.  CRAM-MD5 needs plaintext passwords on the server and
    is offered only when named.  ``nonce`` makes the server's SCRAM nonce and
    CRAM-MD5 challenge (default: 18 random bytes per attempt).
    ``scram_iterations`` is the count an unknown SCRAM user is answered with:
    make it the count your stored credentials use, so users cannot be told apart.
    ``scram_salt_key`` (at least 16 random bytes, secret, never changed)
    derives an unknown user's salt: give every process and every restart the
    same key, so that salt never changes, as a real user's does not; without
    one it changes from process to process, which tells the two apart.
    """

    keyword = "AUTH"
    line_allowance = 500  # RFC 4954 5: the AUTH= parameter of MAIL
    mail_parameters = frozenset({"AUTH"})

    def __init__(
        self,
        mechanisms: Iterable[str] = MECHANISMS,
        *,
        require_tls: bool = True,
        nonce: Callable[[], str] | None = None,
        scram_iterations: int = MIN_ITERATIONS,
        scram_salt_key: bytes | None = None,
    ) -> None:
        requested = tuple(mechanisms)
        names = tuple(name.upper() for name in requested if isinstance(name, str) and name.isascii())
        if not names or len(set(names)) != len(requested) or not set(names) <= set(KNOWN_MECHANISMS):
            raise ValueError(f"mechanisms must be distinct names out of {KNOWN_MECHANISMS}")
        self.mechanisms = names
        self.require_tls = require_tls
        self._nonce = nonce
        check_iterations(scram_iterations)
        self.scram_iterations = scram_iterations
        if scram_salt_key is not None:
            check_salt_key(scram_salt_key)
        self._scram_salt_key = scram_salt_key  # secret: in no repr

    def offered(self, conn: ServerConnection) -> bool:
        """Whether AUTH may be used right now (``require_tls`` is met)."""
        return conn.tls_active or not self.require_tls

    def ehlo_line(self, conn: ServerConnection) -> str:
        return f"AUTH {' '.join(self.mechanisms)}"

    def check_parameter(self, conn: ServerConnection, name: str, value: str | None) -> Reply | None:
        if value is None or not (value == "<>" or _XTEXT.fullmatch(value)):
            return Reply(501, "Syntax: AUTH=<> or AUTH=xtext-mailbox", (5, 5, 4))
        return None

    def mechanism(self, name: str) -> Mechanism | None:
        """A fresh mechanism for the client's choice (any case), or ``None`` if it is not offered."""
        if not name.isascii() or name.upper() not in self.mechanisms:
            return None
        nonce = None if self._nonce is None else self._nonce()
        return sasl_mechanism(
            name,
            nonce=nonce,
            allow_cram_md5=True,
            scram_iterations=self.scram_iterations,
            scram_salt_key=self._scram_salt_key,
        )

    def __repr__(self) -> str:
        return f"<Auth {' '.join(self.mechanisms)} require_tls={self.require_tls}>"


def decode_response(text: bytes, *, initial: bool = False) -> bytes | Failure:
    """One client response: base64, ``=`` for empty in an initial response, ``*`` to cancel otherwise."""
    if initial and text == b"=":
        return b""
    if not initial and text == b"*":
        return Failure("cancelled")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return Failure("malformed")


def challenge_line(data: bytes) -> bytes:
    """``334 base64`` (RFC 4954 4): a continuation carries no enhanced code."""
    return b"334 " + base64.b64encode(data) + b"\r\n"
