"""The credentials file of ``smtpwire serve --auth-file``: format, errors, atomic rewrite, checks."""

from __future__ import annotations

import base64
import logging
import os
import pathlib
import pickle
import stat
import types

import anyio
import pytest

import smtpwire
from smtpwire import AuthCredentials, CredentialsLookup, Reply
from smtpwire_serve import _authfile, _cli
from smtpwire_serve._authfile import Accounts, AuthFileError, AuthFileHandler, load, prepare_username, set_user
from tests.test_cli import passwd
from tests.test_unix_socket import settings as serve_settings

PASSWORD = "correct horse battery staple"
KEYS = smtpwire.scram_credentials(PASSWORD, salt=b"0123456789abcdef")
LINE = (
    "alice:SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"
    + base64.b64encode(KEYS.stored_key).decode()
    + ":"
    + base64.b64encode(KEYS.server_key).decode()
)


SECRET = LINE.partition(":")[2]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


STORED, SERVER = b64(KEYS.stored_key), b64(KEYS.server_key)


def test_the_line_is_rfc_5803() -> None:
    assert _authfile.format_entry("alice", KEYS) == LINE
    assert _authfile.parse_entry(LINE) == ("alice", KEYS)


def test_round_trip_through_a_new_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    assert set_user(path, "alice", KEYS) == _authfile.Saved(replaced=False, mode=0o600, previous_mode=None)
    assert set_user(path, "bob", smtpwire.scram_credentials("other", iterations=5000)).replaced is False
    users = load(path)
    assert list(users) == ["alice", "bob"] and users["alice"] == KEYS
    assert users["alice"].verify(PASSWORD) and not users["alice"].verify("wrong")
    assert users["bob"].iterations == 5000 and users["bob"].verify("other")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PASSWORD not in path.read_text() and "other" not in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users", "users.saltkey"]  # no temporary file left
    assert stat.S_IMODE((tmp_path / "users.saltkey").stat().st_mode) == 0o600


def test_replacing_keeps_every_other_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"# our users\n\n{LINE}\r\n  # bob below\nbob:{SECRET}")  # no final newline
    path.chmod(0o640)
    new = smtpwire.scram_credentials("changed")
    assert set_user(path, "alice", new) == _authfile.Saved(replaced=True, mode=0o640, previous_mode=0o640)
    lines = path.read_text().split("\n")
    assert lines == ["# our users", "", _authfile.format_entry("alice", new), "  # bob below", f"bob:{SECRET}", ""]
    assert load(path) == {"alice": new, "bob": KEYS}


def test_a_rewrite_takes_away_what_others_could_do(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    path.write_text(LINE + "\n")
    path.chmod(0o666)
    assert _authfile.loose_permissions(path) == f"{path} is open to other users (mode 0666): run chmod o= {path}"
    saved = set_user(path, "carol", KEYS)
    assert (saved.previous_mode, saved.mode) == (0o666, 0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert _authfile.loose_permissions(path) is None
    assert _authfile.loose_permissions(tmp_path / "missing") is None


def test_a_symlink_stays_and_its_target_is_rewritten(tmp_path: pathlib.Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "users"
    target.write_text(LINE + "\n")
    link = tmp_path / "users"
    link.symlink_to(target)
    set_user(link, "bob", KEYS)
    assert link.is_symlink() and list(load(target)) == ["alice", "bob"]


def test_a_failed_rewrite_leaves_the_file_as_it_was(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users"
    path.write_text(LINE + "\n")

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        set_user(path, "alice", smtpwire.scram_credentials("changed"))
    assert path.read_text() == LINE + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users", "users.saltkey"]


def test_a_malformed_file_is_not_rewritten(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"{LINE}\nalice\n")
    with pytest.raises(AuthFileError, match=r", line 2: expected USER:SCRAM-SHA-256"):
        set_user(path, "bob", KEYS)
    assert path.read_text() == f"{LINE}\nalice\n"


def test_names_are_stored_after_saslprep(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    set_user(path, "I\u00adX", KEYS)  # a soft hyphen is mapped to nothing
    set_user(path, "\u2168", KEYS)  # ROMAN NUMERAL NINE: NFKC makes it "IX" too
    assert path.read_text().count("\n") == 1 and list(load(path)) == ["IX"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "the user name is empty"),
        ("\u00ad", "the user name is empty"),
        ("a:b", "cannot contain ':'"),
        ("a\nb", "SASLprep: prohibited character"),
        ("a\x7fb", "SASLprep: prohibited character"),
        (" alice", "cannot start or end with a space"),
        ("alice\u00a0", "cannot start or end with a space"),  # NBSP becomes a space
        ("#alice", "nor start with '#'"),
        ("é" * 128, "at most 255 octets"),
    ],
)
def test_bad_user_names(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        prepare_username(name)


def test_the_longest_name() -> None:
    assert prepare_username("é" * 127 + "e") == "é" * 127 + "e"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("alice", "expected USER:SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY (no ':')"),
        ("hunter2 alice:hunter2", "unknown scheme: only SCRAM-SHA-256 (RFC 5803) is supported"),
        (f"alice:SCRAM-SHA-1$4096:{b64(b's')}${STORED}:{SERVER}", "unknown scheme"),
        (f"alice:SCRAM-SHA-256$4096:{b64(b's')}${STORED}", "expected USER:SCRAM-SHA-256$"),
        (f"alice:SCRAM-SHA-256$4096:{b64(b's')}${STORED}:{SERVER} extra", "expected USER:"),
        (f"alice:SCRAM-SHA-256$4096:c2FsdA${STORED}:{SERVER}", "(bad base64)"),
        (f"alice:SCRAM-SHA-256$1000:{b64(b's')}${STORED}:{SERVER}", "iterations must be at least 4096 (RFC 7677)"),
        (f"alice:SCRAM-SHA-256$99999999999:{b64(b's')}${STORED}:{SERVER}", "expected USER:"),
        (f"alice:SCRAM-SHA-256$9999999999:{b64(b's')}${STORED}:{SERVER}", "iterations must be an integer from 1"),
        (f"alice:SCRAM-SHA-256$4096:{b64(b's' * 65)}${STORED}:{SERVER}", "salt must be 1 to 64 bytes"),
        (f"alice:SCRAM-SHA-256$4096:{b64(b's')}${b64(b'short')}:{SERVER}", "must be 32 bytes"),
        (f":{SECRET}", "bad user name: the user name is empty"),
        (f"a\x01b:{SECRET}", "bad user name: SASLprep: prohibited character"),
    ],
)
def test_a_bad_line_is_named_and_not_quoted(tmp_path: pathlib.Path, line: str, reason: str) -> None:
    path = tmp_path / "users"
    path.write_text(f"# users\n\n{LINE}\n{line}\n")
    with pytest.raises(AuthFileError) as error:
        load(path)
    message = str(error.value)
    assert message.startswith(f"{path}, line 4: ") and reason in message
    assert "hunter2" not in message and STORED not in message and SERVER not in message and "c2Fsd" not in message


def test_duplicates_and_bytes_that_are_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"{LINE}\n\nI\u00adX:{SECRET}\nalice:{SECRET}\n")
    with pytest.raises(AuthFileError, match=r"line 4: user 'alice' is already on line 1$"):
        load(path)
    path.write_bytes(LINE.encode() + b"\n\xff:" + SECRET.encode() + b"\n")
    with pytest.raises(AuthFileError, match=r"line 2: not UTF-8$"):
        load(path)


def test_an_unreadable_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(AuthFileError, match=r"^cannot read the auth file .*/missing: No such file or directory$"):
        load(tmp_path / "missing")
    with pytest.raises(AuthFileError, match=r"cannot read the auth file .*: Is a directory$"):
        load(tmp_path)


def test_an_empty_file_has_no_users(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    path.write_text("# nobody yet\n")
    assert load(path) == {}


ACCOUNTS = Accounts({"alice": KEYS, "IX": KEYS})
SESSION = types.SimpleNamespace(peer_host="192.0.2.1", state={})


@pytest.mark.parametrize(
    ("authzid", "username", "found"),
    [
        ("", "alice", True),
        ("alice", "alice", True),
        ("bob", "alice", False),
        ("", "bob", False),
        ("", "I\u00adX", True),  # compared after SASLprep
        ("\u2168", "IX", True),
        ("", "Alice", False),
        ("", "a\x00b", False),  # not a valid name at all
        ("a\x00b", "alice", False),
    ],
)
def test_who_may_log_in_as_whom(authzid: str, username: str, found: bool) -> None:
    assert (ACCOUNTS.find(authzid, username) is KEYS) is found


@pytest.mark.parametrize(
    ("authzid", "username", "password", "ok"),
    [
        ("", "alice", PASSWORD, True),
        ("alice", "alice", PASSWORD, True),
        ("bob", "alice", PASSWORD, False),
        ("", "alice", "wrong", False),
        ("", "nobody", PASSWORD, False),
    ],
)
def test_passwords_are_checked_against_the_keys(authzid: str, username: str, password: str, ok: bool) -> None:
    credentials = AuthCredentials("PLAIN", authzid, username, password)
    accounts = Accounts(ACCOUNTS.users)
    assert anyio.run(_handler(accounts).authenticate, SESSION, credentials) is ok


def test_scram_lookups() -> None:
    handler = _handler(ACCOUNTS)

    def lookup(authzid: str, username: str, mechanism: str = "SCRAM-SHA-256") -> object:
        session = types.SimpleNamespace(peer_host="192.0.2.1", state={})
        return anyio.run(handler.credentials, session, CredentialsLookup(mechanism, authzid, username))

    assert lookup("", "alice") is KEYS
    assert lookup("bob", "alice") is None
    assert lookup("", "alice", "CRAM-MD5") is None  # no password


def test_without_accounts_nobody_gets_in() -> None:
    handler = AuthFileHandler()
    assert anyio.run(handler.authenticate, SESSION, AuthCredentials("PLAIN", "", "alice", PASSWORD)) is False
    assert anyio.run(handler.credentials, SESSION, CredentialsLookup("SCRAM-SHA-256", "", "alice")) is None
    handler.error(SESSION, "AUTH", Reply(535, "no", (5, 7, 8)))  # type: ignore[arg-type]
    handler.disconnect(SESSION)  # type: ignore[arg-type]


def test_settings_with_users_cross_to_a_worker_process() -> None:
    settings = serve_settings(
        tls_cert="cert.pem", auth_file="users", users=(("alice", KEYS),), require_auth=True, salt_key=b"k" * 32
    )
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert "kkkk" not in repr(settings)


def _handler(accounts: Accounts) -> AuthFileHandler:
    handler = AuthFileHandler()
    handler.accounts = accounts
    return handler


# -- the key of unknown users' SCRAM salts: FILE.saltkey -------------------------------


def test_passwd_makes_the_salt_key_once_protected_like_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    path.write_text(LINE + "\n")
    path.chmod(0o640)
    set_user(path, "bob", KEYS)
    key_file = tmp_path / "users.saltkey"
    key = key_file.read_bytes()
    assert len(base64.b64decode(key.rstrip(b"\n"), validate=True)) == 32 and key.endswith(b"\n")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o640
    set_user(path, "carol", KEYS)
    assert key_file.read_bytes() == key  # never replaced
    assert _authfile.salt_key(path, load(path)) == _authfile.SaltKey(base64.b64decode(key.rstrip(b"\n")))


def test_serve_makes_a_missing_salt_key_and_finds_it_again(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    path.write_text(LINE + "\n")  # written by hand, or by an older passwd
    made = _authfile.salt_key(path, load(path))
    assert made.note == f"created {path}.saltkey: the secret key of unknown users' SCRAM salts; keep it with {path}"
    assert not made.warning and len(made.key) == 32 and repr(made.key) not in repr(made)
    assert _authfile.salt_key(path, load(path)) == _authfile.SaltKey(made.key)  # the next start, every worker


def test_a_salt_key_made_meanwhile_by_another_process_wins(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    other = b"o" * 32
    link = os.link

    def raced(source: str, target: pathlib.Path) -> None:
        target.write_bytes(base64.b64encode(other) + b"\n")
        link(source, target)

    monkeypatch.setattr(os, "link", raced)
    assert _authfile.salt_key(path, {}).key == other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.saltkey"]


def test_where_no_salt_key_can_be_made_it_is_derived_from_the_users(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "link", refused)
    path = tmp_path / "users"
    users = {"alice": KEYS}
    derived = _authfile.salt_key(path, users)
    assert derived.warning and derived.note is not None
    assert derived.note.startswith(f"cannot create {path}.saltkey (Permission denied): unknown users' SCRAM salts")
    assert derived.key == _authfile.salt_key(path, dict(users)).key  # stable while the file is
    assert derived.key != _authfile.salt_key(path, {"alice": KEYS, "bob": KEYS}).key
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("content", [b"", b"c2hvcnQ=\n", b"not base64!\n"])
def test_a_bad_salt_key_file_is_an_error_that_quotes_nothing(tmp_path: pathlib.Path, content: bytes) -> None:
    (tmp_path / "users.saltkey").write_bytes(content)
    with pytest.raises(AuthFileError) as error:
        _authfile.salt_key(tmp_path / "users", {})
    assert str(error.value) == (
        f"{tmp_path}/users.saltkey: expected 32 random bytes in base64 (remove it to get a new one)"
    )
    (tmp_path / "users.saltkey").unlink()
    (tmp_path / "users.saltkey").mkdir()
    with pytest.raises(AuthFileError, match=r"cannot read the salt key file .*users.saltkey: Is a directory"):
        _authfile.salt_key(tmp_path / "users", {})


@pytest.mark.parametrize("loose", [0o644, 0o606])
def test_a_salt_key_others_may_read_or_write_is_warned_about_like_the_file(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, loose: int
) -> None:
    """Whoever reads it tells unknown names from real ones; whoever writes it may have chosen it."""
    path = tmp_path / "users"
    path.write_text(LINE + "\n")
    key_file = tmp_path / "users.saltkey"
    key_file.write_bytes(base64.b64encode(b"k" * 32) + b"\n")
    key_file.chmod(0o640)
    assert _authfile.salt_key(path, load(path)) == _authfile.SaltKey(b"k" * 32)
    key_file.chmod(loose)
    warning = f"{key_file} is open to other users (mode {loose:04o}): run chmod o= {key_file}"
    assert _authfile.salt_key(path, load(path)) == _authfile.SaltKey(b"k" * 32, warning, warning=True)
    with caplog.at_level(logging.WARNING, "smtpwire.serve"):
        assert _cli.load_salt_key(str(path), load(path)) == b"k" * 32
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", warning)]


def test_passwd_refuses_a_salt_key_others_can_write(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    planted = base64.b64encode(b"p" * 32) + b"\n"
    key_file = tmp_path / "users.saltkey"
    key_file.write_bytes(planted)
    key_file.chmod(0o666)
    result = passwd(path, "bob", f"{PASSWORD}\n{PASSWORD}\n")
    assert result.returncode == 1
    assert result.stderr.endswith(  # one line, after the prompts (a pipe does not echo their newline)
        f"Error: {key_file} is writable by other users (mode 0666), who may know the key:"
        " remove it and run passwd again to make a new key\n"
    )
    assert key_file.read_bytes() == planted and not path.exists()  # nothing changed


def test_passwd_refuses_a_salt_key_that_is_a_symlink(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    path.write_text(LINE + "\n")
    elsewhere = tmp_path / "planted"
    elsewhere.write_bytes(base64.b64encode(b"p" * 32) + b"\n")
    (tmp_path / "users.saltkey").symlink_to(elsewhere)
    with pytest.raises(AuthFileError) as refused:
        set_user(path, "bob", KEYS)
    assert str(refused.value) == (
        f"{tmp_path}/users.saltkey is not a regular file: remove it and run passwd again to make a new key"
    )
    assert path.read_text() == LINE + "\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_passwd_refuses_a_salt_key_of_another_user(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "users"
    path.write_text(LINE + "\n")
    key_file = tmp_path / "users.saltkey"
    key_file.write_bytes(base64.b64encode(b"p" * 32) + b"\n")
    os.chown(key_file, 4242, -1)
    with pytest.raises(AuthFileError) as refused:
        set_user(path, "bob", KEYS)
    assert str(refused.value) == (
        f"{key_file} belongs to another user (uid 4242), who may know the key:"
        " remove it and run passwd again to make a new key"
    )
    os.chown(path, 4242, -1)  # the auth file's owner: trusted with the key as with the users
    assert set_user(path, "bob", KEYS).replaced is False
