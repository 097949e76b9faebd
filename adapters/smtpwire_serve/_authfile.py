"""The credentials file of ``smtpwire serve --auth-file``: SCRAM-SHA-256 keys, never passwords.

One user a line, in the RFC 5803 layout PostgreSQL also uses::

    # comment
    alice:SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>

(base64 fields).  User names are stored after SASLprep.  PLAIN and LOGIN
passwords are checked against the same keys, so the file never holds
anything a password can be read back from; it does hold what a SCRAM server
needs, so it stays readable by its owner (and at most a group) only.

Next to it, ``FILE.saltkey`` holds the key unknown users' SCRAM salts are
derived from (see ``salt_key``), with the same protection.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from smtpwire import AuthCredentials, CredentialsLookup, Reply, ScramCredentials, saslprep
from smtpwire_handler import AsyncHandler, Reject, Session

from ._authlimit import Attempt, FailureBudget

SCHEME = "SCRAM-SHA-256"
#: RFC 7677 4: at least 4096 iterations.
MIN_ITERATIONS = 4096
MAX_USERNAME = 255  # octets, as RFC 4616 bounds authcid
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_ENTRY = re.compile(
    rf"SCRAM-SHA-256\$(?P<iterations>[0-9]{{1,10}}):(?P<salt>{_B64})\$(?P<stored>{_B64}):(?P<server>{_B64})"
)
_LAYOUT = "expected USER:SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY"
SALT_KEY_SUFFIX = ".saltkey"
SALT_KEY_SIZE = 32  # octets; 16 at least are accepted
#: PBKDF2 runs at once, in threads of their own: guessing cannot take the Maildir's threads.
PBKDF2_THREADS = min(4, os.cpu_count() or 1)
#: RFC 4954 6: the budget of failed attempts of this client is spent (``_authlimit``).
TOO_MANY_FAILURES = Reply(454, "Too many failed authentication attempts, try again later", (4, 7, 0))
_ATTEMPT = "smtpwire_serve.auth_attempt"  # session.state: a SCRAM attempt between its two lookups


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
    if os.path.lexists(salt_key_path(path)):  # first, so that a failure changes nothing
        _refuse_planted_salt_key(salt_key_path(path), _stat_or_none(target))
    else:
        _create_salt_key(salt_key_path(path), _stat_or_none(target))
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
        temporary, mode = _written_aside(target, content, before)
        try:
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        os.fsync(directory)
    return Saved(replaced, mode, None if before is None else stat.S_IMODE(before.st_mode))


def _refuse_planted_salt_key(path: Path, auth_file: os.stat_result | None) -> None:
    """``AuthFileError`` for a salt key someone else may have chosen, so knows: never kept, never silently replaced.

    It must be a regular file (not a symlink), owned by this user, root or
    the auth file's owner, and not writable by others.  Replacing it would
    change every unknown user's salt behind the running servers' back, and
    hide what the operator should look into.
    """
    info = os.lstat(path)
    trusted = {os.geteuid(), 0} | ({auth_file.st_uid} if auth_file is not None else set())
    again = "remove it and run passwd again to make a new key"
    if not stat.S_ISREG(info.st_mode):
        raise AuthFileError(f"{path} is not a regular file: {again}")
    if info.st_uid not in trusted:
        raise AuthFileError(f"{path} belongs to another user (uid {info.st_uid}), who may know the key: {again}")
    if info.st_mode & 0o002:
        mode = stat.S_IMODE(info.st_mode)
        raise AuthFileError(f"{path} is writable by other users (mode {mode:04o}), who may know the key: {again}")


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _written_aside(target: Path, content: bytes, like: os.stat_result | None) -> tuple[str, int]:
    """A temporary file next to ``target`` holding ``content``, fsynced, protected like ``like`` (new: 0600).

    Only the owner's and the group's read and write bits are kept, the owner and group where allowed.
    """
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            mode = 0o600 if like is None else _keep_owner(fd, like, stat.S_IMODE(like.st_mode) & 0o640)
            os.fchmod(fd, mode)
            file.write(content)
            file.flush()
            os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return temporary, mode


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


def salt_key_path(auth_file: str | os.PathLike[str]) -> Path:
    """Where the key of unknown users' salts lives: next to the auth file, named after it."""
    path = Path(auth_file)
    return path.with_name(path.name + SALT_KEY_SUFFIX)


@dataclass(frozen=True)
class SaltKey:
    """The key of unknown users' SCRAM salts, and what the operator should hear about it."""

    key: bytes = field(repr=False)
    note: str | None = None
    warning: bool = False  # the note is a warning: the key is not as stable or as secret as it should be


def salt_key(auth_file: str | os.PathLike[str], users: Mapping[str, ScramCredentials]) -> SaltKey:
    """The key ``serve`` derives unknown users' SCRAM salts from: ``FILE.saltkey``, made now if missing.

    An unknown user must get the same salt from every worker and after every
    restart, as a real user does, so the key is kept; and it is kept apart
    from the users' lines, so adding a user or changing a password changes
    no other name's salt.  Whoever can read it could tell unknown names from
    real ones, which the auth file itself tells them: it gets the file's
    protection, and a key others may read or write is warned about as the
    file is.  Where it cannot be written, the key is derived from the
    users' keys: stable while the file is unchanged (with a note saying so).
    """
    path = salt_key_path(auth_file)
    try:
        key = _read_salt_key(path)
    except FileNotFoundError:
        pass
    else:
        loose = loose_permissions(path)
        return SaltKey(key, loose, warning=loose is not None)
    try:
        key = _create_salt_key(path, _stat_or_none(Path(auth_file)))
    except OSError as error:
        note = (
            f"cannot create {path} ({error.strerror or error}): unknown users' SCRAM salts will change"
            f" whenever {auth_file} changes, which tells them from real users; 'smtpwire passwd' creates it"
        )
        return SaltKey(derived_salt_key(users), note, warning=True)
    return SaltKey(key, f"created {path}: the secret key of unknown users' SCRAM salts; keep it with {auth_file}")


def derived_salt_key(users: Mapping[str, ScramCredentials]) -> bytes:
    """A key from the users' secrets: as stable and as secret as the file, changing with it."""
    digest = hashlib.sha256(b"smtpwire salt key\0")
    for name in sorted(users):
        keys = users[name]
        digest.update(b"\0".join((name.encode(), keys.salt, keys.stored_key, keys.server_key, b"")))
    return digest.digest()


def _read_salt_key(path: Path) -> bytes:
    """The key in ``path`` (``FileNotFoundError`` if there is none); ``AuthFileError`` if it is unusable."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise AuthFileError(f"cannot read the salt key file {path}: {error.strerror or error}") from None
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) < 16:
        raise AuthFileError(f"{path}: expected {SALT_KEY_SIZE} random bytes in base64 (remove it to get a new one)")
    return key


def _create_salt_key(path: Path, like: os.stat_result | None) -> bytes:
    """A new random key in ``path``, protected like the auth file; if another process made one first, that one."""
    key = secrets.token_bytes(SALT_KEY_SIZE)
    temporary, _ = _written_aside(path, base64.b64encode(key) + b"\n", like)
    try:
        os.link(temporary, path)  # never replaces a key: every worker and restart must see the same one
    except FileExistsError:
        return _read_salt_key(path)
    finally:
        os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return key


class Accounts:
    """The users of a credentials file, as the serve handlers check AUTH against them.

    Names are compared after SASLprep.  ``authzid`` must be empty or the user
    themself: nobody may act as someone else.  ``budget`` counts failed
    attempts per client (default: ``FailureBudget()``); PBKDF2 runs in at
    most ``pbkdf2_threads`` threads of its own.
    """

    def __init__(
        self,
        users: Mapping[str, ScramCredentials],
        *,
        budget: FailureBudget | None = None,
        pbkdf2_threads: int = PBKDF2_THREADS,
    ) -> None:
        self.budget = FailureBudget() if budget is None else budget
        self.pbkdf2 = anyio.CapacityLimiter(pbkdf2_threads)  # not anyio.to_thread's: the Maildir's
        self.replace(users)

    def replace(self, users: Mapping[str, ScramCredentials]) -> None:
        """Take the users of a reloaded file; attempts under way finish against the keys they started with."""
        self.users: dict[str, ScramCredentials] = dict(users)
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
        """PLAIN or LOGIN: whether the password derives the stored keys (PBKDF2, in a thread of ``pbkdf2``).

        Unknown users and refused authzids run PBKDF2 too, with the usual
        iteration count, so the time taken does not tell them from a wrong password.
        """
        keys = self.find(credentials.authzid, credentials.username)
        verify = (keys or self._decoy).verify
        ok = await anyio.to_thread.run_sync(verify, credentials.password, limiter=self.pbkdf2)
        return ok and keys is not None

    async def begin(self, session: Session) -> Attempt:
        """An attempt from this client starts: wait as its failures ask, or refuse it with 454 4.7.0."""
        attempt = self.budget.begin(session.peer_host)
        try:
            if attempt.delay:
                await anyio.sleep(attempt.delay)  # the session waits, the event loop does not
        except BaseException:
            self.budget.end(attempt, failed=False)
            raise
        if attempt.refused:
            raise Reject(TOO_MANY_FAILURES)
        return attempt


class AuthFileHandler(AsyncHandler):
    """The AUTH hooks of the ``smtpwire serve`` handlers: users from ``accounts``, or nobody.

    Every attempt goes through the accounts' failure budget.  PLAIN and LOGIN
    are checked in ``authenticate``; SCRAM-SHA-256 is checked by the core
    between two lookups, so its outcome arrives as the second lookup (the
    proof was right), an ``error`` (535: it was wrong) or the end of the session.
    """

    accounts: Accounts | None = None

    async def authenticate(self, session: Session, credentials: AuthCredentials) -> bool:
        if self.accounts is None:
            return False
        attempt = await self.accounts.begin(session)
        ok = False
        try:
            ok = await self.accounts.check(credentials)
        finally:
            self.accounts.budget.end(attempt, failed=not ok)
        return ok

    async def credentials(self, session: Session, lookup: CredentialsLookup) -> ScramCredentials | None:
        if self.accounts is None or lookup.mechanism != SCHEME:
            return None
        attempt: Attempt | None = session.state.pop(_ATTEMPT, None)
        if attempt is not None:  # the second lookup: the proof was right; may the user act as the authzid?
            keys = self.accounts.find(lookup.authzid, lookup.username)
            self.accounts.budget.end(attempt, failed=keys is None)
            return keys
        session.state[_ATTEMPT] = await self.accounts.begin(session)
        return self.accounts.find(lookup.authzid, lookup.username)

    def error(self, session: Session, command: str, reply: Reply) -> None:
        """A SCRAM attempt that ends here failed on its proof (535) or was given up (501, 500)."""
        attempt: Attempt | None = session.state.pop(_ATTEMPT, None) if command == "AUTH" else None
        if attempt is not None and self.accounts is not None:
            self.accounts.budget.end(attempt, failed=reply.code == 535)

    def disconnect(self, session: Session) -> None:
        """A SCRAM attempt cut off by the end of the session made no guess."""
        attempt: Attempt | None = session.state.pop(_ATTEMPT, None)
        if attempt is not None and self.accounts is not None:
            self.accounts.budget.end(attempt, failed=False)
