"""The credentials file of ``smtpwire serve --auth-file``: SCRAM-SHA-256 keys, never passwords.

One user a line, in the RFC 5803 layout PostgreSQL also uses::

    # comment
    alice:SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>

(base64 fields).  User names are stored after SASLprep.  PLAIN and LOGIN
passwords are checked against the same keys, so the file never holds
anything a password can be read back from; it does hold what a SCRAM server
needs, so it stays readable by its owner (and at most a group) only.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from smtpwire import AuthCredentials, CredentialsLookup, ScramCredentials, saslprep
from smtpwire_handler import AsyncHandler, Session

SCHEME = "SCRAM-SHA-256"
#: RFC 7677 4: at least 4096 iterations.
MIN_ITERATIONS = 4096
MAX_USERNAME = 255  # octets, as RFC 4616 bounds authcid
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_ENTRY = re.compile(
    rf"SCRAM-SHA-256\$(?P<iterations>[0-9]{{1,10}}):(?P<salt>{_B64})\$(?P<stored>{_B64}):(?P<server>{_B64})"
)
_LAYOUT = "expected USER:SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY"


class AuthFileError(ValueError):
    """The credentials file cannot be used; the message names the file and line, never a key."""


def prepare_username(name: str) -> str:
    """The stored form of a user name (SASLprep), or ``ValueError`` saying why it cannot be one."""
    prepared = saslprep(name)  # refuses control characters, among others
    if not prepared:
        raise ValueError("the user name is empty")
    if ":" in prepared:
        raise ValueError("a user name cannot contain ':'")
    if prepared != prepared.strip(" ") or prepared.startswith("#"):
        raise ValueError("a user name cannot start or end with a space, nor start with '#'")
    if len(prepared.encode()) > MAX_USERNAME:
        raise ValueError(f"a user name has at most {MAX_USERNAME} octets (UTF-8)")
    return prepared


def format_entry(username: str, credentials: ScramCredentials) -> str:
    """One line of the file (without the newline)."""
    b64 = [base64.b64encode(value).decode() for value in (credentials.salt, credentials.stored_key)]
    server_key = base64.b64encode(credentials.server_key).decode()
    return f"{prepare_username(username)}:{SCHEME}${credentials.iterations}:{b64[0]}${b64[1]}:{server_key}"


def parse_entry(line: str) -> tuple[str, ScramCredentials]:
    """A user and their keys from one line; ``ValueError`` with a reason that quotes nothing of the line."""
    name, colon, secret = line.partition(":")
    if not colon:
        raise ValueError(f"{_LAYOUT} (no ':')")
    try:
        username = prepare_username(name)
    except ValueError as error:
        raise ValueError(f"bad user name: {error}") from None
    match = _ENTRY.fullmatch(secret)
    if match is None:
        if not secret.startswith(f"{SCHEME}$"):
            raise ValueError(f"unknown scheme: only {SCHEME} (RFC 5803) is supported")
        raise ValueError(_LAYOUT)
    try:
        salt, stored_key, server_key = (base64.b64decode(match[k], validate=True) for k in ("salt", "stored", "server"))
    except binascii.Error:
        raise ValueError(f"{_LAYOUT} (bad base64)") from None
    iterations = int(match["iterations"])
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"iterations must be at least {MIN_ITERATIONS} (RFC 7677)")
    try:
        return username, ScramCredentials(salt, iterations, stored_key, server_key)
    except ValueError as error:  # sizes and bounds; the message names no value
        raise ValueError(str(error)) from None


def _lines(data: bytes, path: Path) -> Iterator[tuple[int, str, str | None, ScramCredentials | None]]:
    """(line number, text, user, keys) for every line; comments and blank lines have no user."""
    chunks = data.split(b"\n")
    if chunks[-1] == b"":
        chunks.pop()
    seen: dict[str, int] = {}
    for number, chunk in enumerate(chunks, 1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthFileError(f"{path}, line {number}: not UTF-8") from None
        entry = text.strip(" \t\r")
        if not entry or entry.startswith("#"):
            yield number, text, None, None
            continue
        try:
            username, credentials = parse_entry(entry)
        except ValueError as error:
            raise AuthFileError(f"{path}, line {number}: {error}") from None
        if username in seen:
            raise AuthFileError(f"{path}, line {number}: user {username!r} is already on line {seen[username]}")
        seen[username] = number
        yield number, text, username, credentials


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise AuthFileError(f"cannot read the auth file {path}: {error.strerror or error}") from None


def load(path: str | os.PathLike[str]) -> dict[str, ScramCredentials]:
    """Every user of the file, by SASLprepped name; ``AuthFileError`` for an unreadable file or a bad line."""
    path = Path(path)
    return {user: keys for _, _, user, keys in _lines(_read(path), path) if user is not None and keys is not None}


def loose_permissions(path: str | os.PathLike[str]) -> str | None:
    """A warning if users other than the owner and the file's group may read or write it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & 0o007:
        return None
    return f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}): run chmod o= {path}"


@dataclass(frozen=True)
class Saved:
    """What ``set_user`` did."""

    replaced: bool  # the user was there before
    mode: int  # permission bits of the file now
    previous_mode: int | None  # None: the file is new


@contextlib.contextmanager
def _locked_directory(directory: Path) -> Iterator[int]:
    """The directory, open and flock()ed: two ``set_user`` on one file never lose an update."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def set_user(path: str | os.PathLike[str], username: str, credentials: ScramCredentials) -> Saved:
    """Add a user or replace their keys, atomically: a temporary file, fsync, rename, fsync of the directory.

    A new file is created with mode 0600.  A rewritten one keeps its owner,
    group and group read permission, and loses any permission for others.
    Comments and other lines are kept.  A malformed file is not rewritten.
    """
    entry = format_entry(username, credentials)
    user = prepare_username(username)
    target = Path(path).resolve()  # through a symlink: replace what it points to
    with _locked_directory(target.parent) as directory:
        try:
            before = os.stat(target)
        except FileNotFoundError:
            before, data = None, b""
        else:
            data = _read(target)
        lines, replaced = [], False
        for _, text, name, _ in _lines(data, target):
            if name == user:
                lines.append(entry)
                replaced = True
            else:
                lines.append(text)
        if not replaced:
            lines.append(entry)
        content = ("\n".join(lines) + "\n").encode()
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # mode 0600
        try:
            mode = 0o600
            if before is not None:
                mode = stat.S_IMODE(before.st_mode) & 0o640
                mode = _keep_owner(fd, before, mode)
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        os.fsync(directory)
    return Saved(replaced, mode, None if before is None else stat.S_IMODE(before.st_mode))


def _keep_owner(fd: int, before: os.stat_result, mode: int) -> int:
    """Give the new file the old one's owner and group where allowed; without the group, no group bits."""
    current = os.fstat(fd)
    uid = before.st_uid if os.geteuid() == 0 else -1
    if uid in (-1, current.st_uid) and before.st_gid == current.st_gid:
        return mode
    try:
        os.fchown(fd, uid, before.st_gid)
    except OSError:
        return mode & 0o600
    return mode


def usual_iterations(users: Mapping[str, ScramCredentials]) -> int:
    """The iteration count most users have: what an unknown user is made to look like."""
    counts = collections.Counter(keys.iterations for keys in users.values())
    return counts.most_common(1)[0][0] if counts else MIN_ITERATIONS


class Accounts:
    """The users of a credentials file, as the serve handlers check AUTH against them.

    Names are compared after SASLprep.  ``authzid`` must be empty or the user
    themself: nobody may act as someone else.
    """

    def __init__(self, users: Mapping[str, ScramCredentials]) -> None:
        self.users = dict(users)
        # An unknown user costs as much as a wrong password, so timing does not tell them apart.
        self._decoy = ScramCredentials(b"\0" * 16, usual_iterations(self.users), b"\0" * 32, b"\0" * 32)

    def __len__(self) -> int:
        return len(self.users)

    def find(self, authzid: str, username: str) -> ScramCredentials | None:
        """The user's keys, or ``None`` (no such user, or an authzid other than the user)."""
        try:
            user = saslprep(username, allow_unassigned=True)
            acting_as = saslprep(authzid, allow_unassigned=True)
        except ValueError:
            return None
        if acting_as and acting_as != user:
            return None
        return self.users.get(user)

    async def check(self, credentials: AuthCredentials) -> bool:
        """PLAIN or LOGIN: whether the password derives the stored keys (PBKDF2, in a worker thread)."""
        keys = self.find(credentials.authzid, credentials.username)
        ok = await anyio.to_thread.run_sync((keys or self._decoy).verify, credentials.password)
        return ok and keys is not None


class AuthFileHandler(AsyncHandler):
    """The AUTH hooks of the ``smtpwire serve`` handlers: users from ``accounts``, or nobody."""

    accounts: Accounts | None = None

    async def authenticate(self, session: Session, credentials: AuthCredentials) -> bool:
        return self.accounts is not None and await self.accounts.check(credentials)

    async def credentials(self, session: Session, lookup: CredentialsLookup) -> ScramCredentials | None:
        if self.accounts is None or lookup.mechanism != SCHEME:
            return None
        return self.accounts.find(lookup.authzid, lookup.username)
