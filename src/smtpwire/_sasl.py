"""Server side of SASL for SMTP AUTH (RFC 4954), one small object per attempt.

A mechanism never sees base64 or the wire: the connection decodes each
client line and hands over bytes, and the mechanism answers with a ``Step``.
Checks that need the application's user store (a password, SCRAM keys) are
steps too, so nothing here blocks or knows how users are stored.

Peer mistakes become ``Failure`` steps; only calls in the wrong order raise
``LocalProtocolError``, as everywhere in the core.  Passwords and keys are
kept out of every repr and exception message.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Literal, NoReturn, TypeVar, cast

from ._errors import LocalProtocolError

#: Mechanisms ``sasl_mechanism()`` creates by default, strongest first (EHLO order).
MECHANISMS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")

#: Octets one decoded client message may have (RFC 4954 lines carry up to 9216).
MAX_MESSAGE = 4096
#: RFC 4616: authzid, authcid and passwd are each at most 255 octets.
MAX_FIELD = 255
# Bounds that keep SCRAM's server-first 334 within a 512-octet reply line:
# 2 + 200 + 64 (nonces) + 3 + 88 (salt) + 3 + 10 (iterations) = 370 octets, 494 in base64.
MAX_CLIENT_NONCE = 200
MAX_SERVER_NONCE = 64
MAX_SALT = 64
MAX_ITERATIONS = 2**31 - 1
#: RFC 7677 4: the iteration count SHOULD be at least 4096.
MIN_ITERATIONS = 4096

FailureKind = Literal["malformed", "credentials", "cancelled"]
_FAILURE_KINDS = ("malformed", "credentials", "cancelled")


@dataclass(frozen=True)
class Challenge:
    """Send ``334 base64(data)`` and hand the client's next line to ``respond()``."""

    data: bytes


@dataclass(frozen=True)
class CheckPassword:
    """Verify the password (and whether ``username`` may act as ``authzid``), then call ``verified()``.

    ``authzid`` is ``""`` when the client asked for no other identity.  The
    strings are as the client sent them; RFC 4616 suggests comparing them
    after ``saslprep()``.
    """

    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class LookupScram:
    """Find the user's stored ``ScramCredentials`` and call ``found()``; asked twice per attempt.

    First with ``authzid`` ``""``, for the salt: ``None`` means no such user
    (the client is answered as if there were one and fails on the proof).
    Then, only once the client has proved it knows the password, with the
    ``authzid`` it asked for (``""``: none): the credentials again let it in,
    ``None`` refuses (535), as for "``username`` may not act as ``authzid``".
    The salt never depends on the authzid, or a refused authzid would show
    that the user exists.
    """

    authzid: str
    username: str


@dataclass(frozen=True)
class LookupPassword:
    """CRAM-MD5 needs the plaintext password: call ``found()`` with it (``None``: no such user)."""

    username: str


@dataclass(frozen=True)
class Success:
    """Authenticated: answer ``235 2.7.0``.

    SCRAM's server-final message went out as a ``Challenge`` before this, as
    RFC 4954 carries no data with the 235.
    """

    authzid: str
    username: str


@dataclass(frozen=True)
class Failure:
    """The attempt is over without success.

    ``"malformed"``: answer ``501 5.5.2`` (the client broke the mechanism's
    syntax); ``"credentials"``: ``535 5.7.8``; ``"cancelled"`` is never
    produced by a mechanism, it is for the connection when the client sends
    ``*`` (``501 5.0.0``).
    """

    kind: FailureKind

    def __post_init__(self) -> None:
        if self.kind not in _FAILURE_KINDS:
            raise LocalProtocolError(f"failure kind must be one of {_FAILURE_KINDS}, not {self.kind!r}")


Step = Challenge | CheckPassword | LookupScram | LookupPassword | Success | Failure

# The method the application must call next, by the step it was last given.
_NEXT_CALL: dict[type, str] = {
    Challenge: "respond",
    CheckPassword: "verified",
    LookupScram: "found",
    LookupPassword: "found",
}
_OVER = "nothing (the attempt is over)"


@dataclass(frozen=True)
class ScramCredentials:
    """What a server stores for SCRAM-SHA-256 instead of the password (RFC 5802 3)."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.salt, bytes) or not 0 < len(self.salt) <= MAX_SALT:
            raise ValueError(f"salt must be 1 to {MAX_SALT} bytes")
        check_iterations(self.iterations, 1)
        if not all(isinstance(key, bytes) and len(key) == 32 for key in (self.stored_key, self.server_key)):
            raise ValueError("stored_key and server_key must be 32 bytes (SHA-256)")

    def verify(self, password: str) -> bool:
        """Whether ``password`` derives these keys: PLAIN and LOGIN checked against a SCRAM store."""
        try:
            prepared = saslprep(password)
        except ValueError:
            return False
        salted = hashlib.pbkdf2_hmac("sha256", prepared.encode(), self.salt, self.iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key)


def scram_credentials(
    password: str, *, salt: bytes | None = None, iterations: int = MIN_ITERATIONS
) -> ScramCredentials:
    """Derive the SCRAM-SHA-256 keys to store for a password (``ValueError`` if unusable)."""
    check_iterations(iterations, MIN_ITERATIONS)
    prepared = saslprep(password)  # RFC 5802 2.2 Normalize(): a stored string
    if not prepared:
        raise ValueError("the password is empty after SASLprep")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", prepared.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return ScramCredentials(salt, iterations, hashlib.sha256(client_key).digest(), server_key)


def check_iterations(iterations: object, minimum: int = MIN_ITERATIONS) -> None:
    """``ValueError`` unless ``iterations`` is a usable PBKDF2 count (RFC 7677 asks for 4096 or more)."""
    if not isinstance(iterations, int) or isinstance(iterations, bool) or not minimum <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be an integer from {minimum} to {MAX_ITERATIONS} (RFC 7677: 4096 or more)")


def saslprep(text: str, *, allow_unassigned: bool = False) -> str:
    """RFC 4013 SASLprep, complete, on the stdlib's Unicode 3.2 stringprep tables.

    Maps non-ASCII spaces to SPACE and drops the "mapped to nothing"
    characters, applies NFKC, then refuses the prohibited characters, strings
    breaking the bidi rules and (unless ``allow_unassigned``, the "query"
    profile) unassigned code points, with ``ValueError``.  The message never
    quotes the text, as it may be a password.
    """
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c))
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if any(_prohibited(c) for c in prepared):
        raise ValueError("SASLprep: prohibited character")
    if not allow_unassigned and any(stringprep.in_table_a1(c) for c in prepared):
        raise ValueError("SASLprep: unassigned code point")
    if any(stringprep.in_table_d1(c) for c in prepared) and (
        any(stringprep.in_table_d2(c) for c in prepared)
        or not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1]))
    ):
        raise ValueError("SASLprep: right-to-left text breaks the bidi rules")
    return prepared


def _prohibited(c: str) -> bool:
    """RFC 4013 2.3: tables C.1.2, C.2.1, C.2.2 and C.3 to C.9 of RFC 3454."""
    return (
        stringprep.in_table_c12(c)
        or stringprep.in_table_c21_c22(c)
        or stringprep.in_table_c3(c)
        or stringprep.in_table_c4(c)
        or stringprep.in_table_c5(c)
        or stringprep.in_table_c6(c)
        or stringprep.in_table_c7(c)
        or stringprep.in_table_c8(c)
        or stringprep.in_table_c9(c)
    )


def _text_field(raw: bytes) -> str | None:
    """One PLAIN/LOGIN/CRAM-MD5 field: UTF-8, at most 255 octets, no NUL; ``None`` if not."""
    if len(raw) > MAX_FIELD or b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _identities(*names: str) -> bool:
    """No SASLprep-prohibited character (controls, U+2028, bidi controls, ...) in a user name: they reach logs."""
    return not any(_prohibited(c) for name in names for c in name)


class Mechanism(abc.ABC):
    """One authentication attempt; the connection drives it step by step.

    ``start()`` first, then exactly the call the last step asks for:
    ``respond()`` after a ``Challenge``, ``verified()`` after
    ``CheckPassword``, ``found()`` after ``LookupScram`` or
    ``LookupPassword``; nothing after ``Success`` or ``Failure``.  Any other
    call raises ``LocalProtocolError``.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self._next_call = "start"
        self._check: CheckPassword | None = None

    def start(self, initial_response: bytes | None) -> Step:
        """Begin; ``None`` when AUTH had no initial response, ``b""`` for RFC 4954's ``=``."""
        self._enter("start")
        if initial_response is not None and len(initial_response) > MAX_MESSAGE:
            return self._advance(Failure("malformed"))
        return self._advance(self._start(initial_response))

    def respond(self, data: bytes) -> Step:
        """The client's (decoded) answer to the last ``Challenge``."""
        self._enter("respond")
        if len(data) > MAX_MESSAGE:
            return self._advance(Failure("malformed"))
        return self._advance(self._respond(data))

    def verified(self, ok: bool) -> Step:
        """The application's verdict on the last ``CheckPassword``: ``True`` or ``False``, nothing truthy."""
        if not isinstance(ok, bool):
            raise LocalProtocolError(f"verified() takes a bool, not {type(ok).__name__}")
        self._enter("verified")
        assert self._check is not None
        check, self._check = self._check, None
        return self._advance(Success(check.authzid, check.username) if ok else Failure("credentials"))

    def found(self, secret: ScramCredentials | str | None) -> Step:
        """The answer to a lookup: ``ScramCredentials`` for ``LookupScram``, the password for ``LookupPassword``.

        ``None`` means no such user; a secret of the wrong type raises ``LocalProtocolError``.
        """
        self._out_of_order("found")

    @abc.abstractmethod
    def _start(self, initial_response: bytes | None) -> Step:
        """The mechanism's first step."""

    @abc.abstractmethod
    def _respond(self, data: bytes) -> Step:
        """The step after a client message."""

    def _expect(self, call: str) -> None:
        if call != self._next_call:
            self._out_of_order(call)

    def _enter(self, call: str) -> None:
        self._expect(call)
        self._next_call = _OVER  # until _advance() knows better

    def _out_of_order(self, call: str) -> NoReturn:
        raise LocalProtocolError(f"{self.name}: {call}() called out of order; expected {self._next_call}")

    def _advance(self, step: Step) -> Step:
        self._next_call = _NEXT_CALL.get(type(step), _OVER)
        if isinstance(step, CheckPassword):
            self._check = step
        return step


class Plain(Mechanism):
    """RFC 4616: ``[authzid] NUL authcid NUL passwd`` in one message."""

    name = "PLAIN"

    def _start(self, initial_response: bytes | None) -> Step:
        return Challenge(b"") if initial_response is None else self._respond(initial_response)

    def _respond(self, data: bytes) -> Step:
        fields = [_text_field(part) for part in data.split(b"\0")]
        if len(fields) != 3:
            return Failure("malformed")
        authzid, username, password = fields
        if authzid is None or not username or not password or not _identities(authzid, username):
            return Failure("malformed")
        return CheckPassword(authzid, username, password)


class Login(Mechanism):
    """The obsolete but common LOGIN: ``Username:`` then ``Password:`` challenges."""

    name = "LOGIN"

    def __init__(self) -> None:
        super().__init__()
        self._username: str | None = None

    def _start(self, initial_response: bytes | None) -> Step:
        return Challenge(b"Username:") if initial_response is None else self._respond(initial_response)

    def _respond(self, data: bytes) -> Step:
        value = _text_field(data)
        if not value:
            return Failure("malformed")
        if self._username is None:
            if not _identities(value):
                return Failure("malformed")
            self._username = value
            return Challenge(b"Password:")
        return CheckPassword("", self._username, value)


#: Octets a key for unknown users' salts needs at least (``scram_salt_key``).
MIN_SALT_KEY = 16
# Without a key from the application, unknown users' salts are stable only
# within this process: another process or a restart gives them other salts.
_PROCESS_SALT_KEY = secrets.token_bytes(32)


def check_salt_key(key: object) -> None:
    """``ValueError`` unless ``key`` can derive unknown users' salts: random bytes, at least 16 of them."""
    if not isinstance(key, bytes) or len(key) < MIN_SALT_KEY:
        raise ValueError(f"scram_salt_key must be at least {MIN_SALT_KEY} random bytes")


def decoy_salt(key: bytes, username: str) -> bytes:
    """The salt an unknown SCRAM user is answered with: stable per name and key, unguessable without the key."""
    return hmac.digest(key, b"smtpwire decoy salt\0" + username.encode(), "sha256")[:16]


SecretT = TypeVar("SecretT", ScramCredentials, str)


class _LookupMechanism(Mechanism, Generic[SecretT]):
    """A mechanism that needs the application's stored secret of one type, handed over with ``found()``."""

    _secret_type: ClassVar[type]
    _secret_described: ClassVar[str]

    def found(self, secret: ScramCredentials | str | None) -> Step:
        self._expect("found")
        if secret is not None and not isinstance(secret, self._secret_type):
            raise LocalProtocolError(f"{self.name}: found() takes {self._secret_described} or None")
        self._enter("found")
        return self._advance(self._found(cast("SecretT | None", secret)))  # its type was checked just above

    @abc.abstractmethod
    def _found(self, secret: SecretT | None) -> Step:
        """The step after the lookup (``None``: no such user)."""


class ScramSha256(_LookupMechanism[ScramCredentials]):
    """RFC 5802 and RFC 7677, without channel binding (no -PLUS variant is offered).

    The user name goes through SASLprep as a query string (RFC 5802 5.1).
    An unknown user is answered like a known one and fails only on the proof:
    ``unknown_iterations`` should be the count the store uses, and its salt
    comes from ``salt_key`` and the name, so it stays the same, like a real
    user's, wherever the same key is given (all processes, every restart);
    without one, a key random to this process.
    """

    name = "SCRAM-SHA-256"
    _secret_type = ScramCredentials
    _secret_described = "ScramCredentials"

    def __init__(self, nonce: str, unknown_iterations: int = MIN_ITERATIONS, salt_key: bytes | None = None) -> None:
        super().__init__()
        self._server_nonce = nonce
        self._unknown_iterations = unknown_iterations
        self._salt_key = _PROCESS_SALT_KEY if salt_key is None else salt_key
        self._phase = "client-first"
        self._gs2_header = ""
        self._authzid = ""
        self._username = ""
        self._client_first_bare = ""
        self._nonce = ""
        self._server_first = ""
        self._auth_message = b""
        self._credentials: ScramCredentials | None = None
        self._unknown = False

    def _start(self, initial_response: bytes | None) -> Step:
        return Challenge(b"") if initial_response is None else self._respond(initial_response)

    def _respond(self, data: bytes) -> Step:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return Failure("malformed")
        if self._phase == "client-first":
            return self._client_first(text)
        if self._phase == "client-final":
            return self._client_final(text)
        # After server-final, RFC 4954 has the client answer with an empty line.
        return Success(self._authzid, self._username) if not text else Failure("malformed")

    def _client_first(self, text: str) -> Step:
        flag, _, rest = text.partition(",")
        authz, comma, bare = rest.partition(",")
        if flag not in ("n", "y") or not comma:  # "p=..." asks for channel binding
            return Failure("malformed")
        authzid = _saslname(authz[2:]) if authz.startswith("a=") else ("" if not authz else None)
        attributes = bare.split(",")
        if authzid is None or len(attributes) < 2 or not all(map(_is_extension, attributes[2:])):
            return Failure("malformed")
        user, nonce = attributes[0], attributes[1]
        username = _saslname(user[2:]) if user.startswith("n=") else None
        if username is None or not nonce.startswith("r=") or not _is_nonce(nonce[2:]):
            return Failure("malformed")
        if len(nonce) > 2 + MAX_CLIENT_NONCE:
            return Failure("malformed")
        try:
            username = saslprep(username, allow_unassigned=True)
        except ValueError:
            return Failure("malformed")
        if not username:
            return Failure("malformed")
        self._gs2_header = f"{flag},{authz},"
        self._authzid, self._username = authzid, username
        self._client_first_bare = bare
        self._nonce = nonce[2:] + self._server_nonce
        return LookupScram("", username)

    def _found(self, credentials: ScramCredentials | None) -> Step:
        if self._phase == "authorize":
            return self._authorized(credentials is not None)
        if credentials is None:
            self._unknown = True
            salt = decoy_salt(self._salt_key, self._username)
            fake_key = secrets.token_bytes(32)
            credentials = ScramCredentials(salt, self._unknown_iterations, fake_key, fake_key)
        self._credentials = credentials
        salt_b64 = base64.b64encode(credentials.salt).decode()
        self._server_first = f"r={self._nonce},s={salt_b64},i={credentials.iterations}"
        self._phase = "client-final"
        return Challenge(self._server_first.encode())

    def _client_final(self, text: str) -> Step:
        without_proof, _, proof = text.rpartition(",")
        attributes = without_proof.split(",")
        if len(attributes) < 2 or not all(map(_is_extension, attributes[2:])):
            return Failure("malformed")
        binding, nonce = attributes[0], attributes[1]
        if not (binding.startswith("c=") and proof.startswith("p=")):
            return Failure("malformed")
        header, client_proof = _b64(binding[2:]), _b64(proof[2:])
        if header != self._gs2_header.encode() or nonce != f"r={self._nonce}" or len(client_proof or b"") != 32:
            return Failure("malformed")
        assert self._credentials is not None and client_proof is not None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = hmac.digest(self._credentials.stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(client_proof, signature, strict=True))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), self._credentials.stored_key)
        if not ok or self._unknown:
            return Failure("credentials")
        self._auth_message = auth_message
        self._phase = "authorize"
        return LookupScram(self._authzid, self._username)

    def _authorized(self, ok: bool) -> Step:
        """The second lookup's answer: the proof was right; may the user act as the authzid?"""
        if not ok:
            return Failure("credentials")
        assert self._credentials is not None
        server_signature = hmac.digest(self._credentials.server_key, self._auth_message, "sha256")
        self._phase = "acknowledge"
        return Challenge(b"v=" + base64.b64encode(server_signature))


def _saslname(value: str) -> str | None:
    """RFC 5802 saslname: ``=2C`` and ``=3D`` stand for ``,`` and ``=``; any other ``=`` is an error."""
    if not value or "\0" in value:
        return None
    head, *escaped = value.split("=")
    parts = [head]
    for part in escaped:
        if part[:2] not in ("2C", "3D"):
            return None
        parts.append(("," if part[:2] == "2C" else "=") + part[2:])
    return "".join(parts)


def _is_nonce(value: str) -> bool:
    """RFC 5802 printable: ``%x21-2B / %x2D-7E``, at least one."""
    return bool(value) and all("!" <= c <= "~" and c != "," for c in value)


def _is_extension(attribute: str) -> bool:
    """An RFC 5802 extension ``ALPHA "=" 1*value-char``; ``m=`` is reserved and must fail."""
    key = attribute[:1]
    return len(attribute) > 2 and key.isascii() and key.isalpha() and key != "m" and attribute[1] == "="


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


class CramMd5(_LookupMechanism[str]):
    """RFC 2195: a challenge, then ``user SP hex(HMAC-MD5(password, challenge))``.

    Needs the plaintext password on the server, so it is off unless asked for.
    """

    name = "CRAM-MD5"
    _secret_type = str
    _secret_described = "the password as str,"

    def __init__(self, challenge: bytes) -> None:
        super().__init__()
        self._challenge = challenge
        self._username = ""
        self._digest = b""

    def _start(self, initial_response: bytes | None) -> Step:
        # The server speaks first, so an initial response cannot be valid (RFC 4422 3.3).
        return Challenge(self._challenge) if initial_response is None else Failure("malformed")

    def _respond(self, data: bytes) -> Step:
        user, _, digest = data.rpartition(b" ")
        username = _text_field(user)
        if not username or len(digest) != 32 or not all(c in b"0123456789abcdefABCDEF" for c in digest):
            return Failure("malformed")
        self._username, self._digest = username, digest.lower()
        return LookupPassword(username)

    def _found(self, password: str | None) -> Step:
        if password is None:
            return Failure("credentials")
        expected = hmac.new(password.encode(), self._challenge, "md5").hexdigest().encode()
        ok = hmac.compare_digest(expected, self._digest)
        return Success("", self._username) if ok else Failure("credentials")


def sasl_mechanism(
    name: str,
    *,
    nonce: str | None = None,
    allow_cram_md5: bool = False,
    scram_iterations: int = MIN_ITERATIONS,
    scram_salt_key: bytes | None = None,
) -> Mechanism | None:
    """A fresh mechanism for the name the client asked for (any case); ``None`` if not offered.

    ``nonce`` is the server's share of the SCRAM nonce and the CRAM-MD5
    challenge (``<nonce@smtpwire>``); by default 18 random bytes, URL-safe.
    CRAM-MD5 needs stored plaintext passwords, so only ``allow_cram_md5``
    creates it.  ``scram_iterations`` is what an unknown SCRAM user is
    answered with: the count the store uses, so users cannot be told apart.
    ``scram_salt_key`` (16 random bytes or more, kept secret and unchanged)
    makes an unknown user's salt the same in every process and after a
    restart, as a real user's is; without it, the salt is stable only
    within this process.
    """
    if nonce is not None and not (_is_nonce(nonce) and len(nonce) <= MAX_SERVER_NONCE):
        raise ValueError(f"nonce must be 1 to {MAX_SERVER_NONCE} printable ASCII characters without commas")
    check_iterations(scram_iterations, MIN_ITERATIONS)
    if scram_salt_key is not None:
        check_salt_key(scram_salt_key)
    key = name.upper() if name.isascii() else ""  # no "login" from a dotless i
    if key == "PLAIN":
        return Plain()
    if key == "LOGIN":
        return Login()
    server_nonce = secrets.token_urlsafe(18) if nonce is None else nonce
    if key == "SCRAM-SHA-256":
        return ScramSha256(server_nonce, scram_iterations, scram_salt_key)
    if key == "CRAM-MD5" and allow_cram_md5:
        return CramMd5(f"<{server_nonce}@smtpwire>".encode())
    return None
