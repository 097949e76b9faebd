"""``smtpwire serve`` keeps mail private and never lets client text break a header or forge a log line."""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import logging
import os
import pathlib
import re
import smtplib
import stat
import sys
import types
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest

import smtpwire
from smtpwire_handler import Envelope, Maildir, trace_headers
from smtpwire_handler._escaping import UNSAFE
from smtpwire_serve._lmtp import Mailboxes
from smtpwire_serve._logging import TextFormatter
from smtpwire_serve._store import MaildirHandler
from tests.test_cli import serve, split_trace, stored
from tests.test_interop import MESSAGE, TIMEOUT
from tests.test_maildir import deliver

#: Characters that end a line somewhere (CR, LF, NUL, VT, FF, NEL, FS-RS, LS, PS), escape, bidi overrides.
BREAKING = "\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x1b"
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
HOSTILE_ADDRESSES = [
    *(f"alice{char}forged@example.org" for char in BREAKING + BIDI),
    "a\r\nBcc: everyone@example.org\r\n@example.org",
    "x" * 1030 + "@example.org",  # once a 1,052-octet Return-Path line
    '"' + 'q"\\' * 400 + '"@example.org',
    "δ" * 600 + "@παράδειγμα.δοκιμή",  # 2 octets a character: cut on a character boundary
]
HOSTILE_HELOS = [
    "[1.2.3.4])(by.trusted.example",
    'evil"; by trusted.example',
    "client\r\nX-Injected: yes",
    "client\u2028\u202eelpmaxe",
    "a" * 300,
    "δ" * 200,
    "[999.1.1.1]",
    "[IPv6:2001:db8::7%eth0]",
    None,
]


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


@pytest.fixture
def no_chmod(monkeypatch: pytest.MonkeyPatch) -> None:
    """Permissions must come from the call that creates, never from a chmod after it (a window)."""

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("chmod after the fact")

    for name in ("chmod", "fchmod", "lchmod"):
        monkeypatch.setattr(os, name, refused, raising=False)
    monkeypatch.setattr(pathlib.Path, "chmod", refused)


def mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# (6) Mail is private


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
@pytest.mark.usefixtures("no_chmod")
async def test_a_new_maildir_and_its_messages_are_private_whatever_the_umask(
    tmp_path: pathlib.Path, umask: int
) -> None:
    maildir = Maildir(tmp_path / "parent" / "child" / "maildir")
    assert await deliver(MaildirHandler(maildir, "mx.test"), MESSAGE) is None
    delivery = maildir.begin()
    delivery.create()  # in tmp/, being written: private from its first moment
    assert mode(delivery.tmp) == 0o600
    delivery.abort()
    # Not mkdir -p's 0777 & ~umask: under umask 000 another user could swap the Maildir for a symlink.
    assert [mode(tmp_path / "parent"), mode(tmp_path / "parent" / "child")] == [0o700, 0o700]
    assert {folder.name: mode(folder) for folder in (maildir.path, *maildir.path.iterdir())} == {
        "maildir": 0o700,
        "tmp": 0o700,
        "new": 0o700,
        "cur": 0o700,
    }
    (message,) = (maildir.path / "new").iterdir()
    assert mode(message) == 0o600
    assert maildir.open_to_others() == []


def test_an_operator_made_maildir_keeps_its_mode_and_is_warned_about(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "maildir"
    root.mkdir()
    root.chmod(0o755)  # e.g. shared with an IMAP server on purpose
    with caplog.at_level(logging.WARNING, "smtpwire.serve"):
        MaildirHandler(Maildir(root), "mx.test")
    assert mode(root) == 0o755
    assert {mode(root / sub) for sub in ("tmp", "new", "cur")} == {0o700}
    assert [record.getMessage() for record in caplog.records] == [
        f"{root} (mode 0755) is open to other users: they can list the messages (each new one is 0600)"
    ]


def zero_umask() -> None:
    os.umask(0)


def test_existing_parents_keep_their_modes_and_missing_ones_are_private_under_umask_000(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared").chmod(0o755)
    before = os.umask(0)
    try:
        Maildir(tmp_path / "shared" / "a" / "b" / "md")
        Mailboxes(tmp_path / "shared" / "c" / "d" / "root")
    finally:
        os.umask(before)
    made = ["a", "a/b", "a/b/md", "c", "c/d", "c/d/root", "c/d/root/.spool"]
    assert [mode(tmp_path / "shared" / name) for name in made] == [0o700] * len(made)
    assert mode(tmp_path / "shared") == 0o755


def test_a_maildir_in_a_removed_working_directory_is_an_error_not_a_recursion(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gone").mkdir()
    monkeypatch.chdir(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    with pytest.raises(FileNotFoundError):
        Maildir("md")


def test_serve_stores_private_mail_even_under_umask_000(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "a" / "b" / "maildir"
    with serve("--maildir", str(maildir), preexec=zero_umask) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
        server.wait_for(r"accepted id=\w+ ")
        assert server.stop() == 0
    folders = (tmp_path / "a", tmp_path / "a" / "b", maildir, maildir / "tmp", maildir / "new", maildir / "cur")
    assert [mode(folder) for folder in folders] == [0o700] * 6
    assert [mode(message) for message in (maildir / "new").iterdir()] == [0o600]
    assert "is open to other users" not in server.output()


# (7) Header injection


def hostile_session(helo: str | None) -> Any:
    return types.SimpleNamespace(
        helo_name=helo,
        peer_host="192.0.2.7",
        client_name=None,
        esmtp=True,
        tls=None,
        authenticated=None,
        id="3f9a0c4b21de",
        conn=smtpwire.ServerConnection(),
    )


def header_lines(trace: bytes) -> list[str]:
    """The trace's lines, each checked: at most 998 octets, nothing that ends a line or reorders the display."""
    assert trace.endswith(b"\r\n")
    lines = trace[:-2].split(b"\r\n")
    for line in lines:
        assert len(line) <= 998, (len(line), line[:80])
        text = line.decode()
        assert not set(text) & set(BREAKING + BIDI), ascii(text)
        folded = text.removeprefix("\t")  # folding whitespace, then no control at all
        assert not [char for char in folded if unicodedata.category(char) in ("Cc", "Zl", "Zp")], ascii(text)
    return [line.decode() for line in lines]


def parsed(trace: bytes) -> email.message.EmailMessage:
    message = email.parser.BytesParser(policy=email.policy.SMTPUTF8).parsebytes(trace + b"\r\nbody\r\n")
    assert isinstance(message, email.message.EmailMessage)
    return message


@pytest.mark.parametrize("utf8", [True, False], ids=["SMTPUTF8", "ASCII"])
@pytest.mark.parametrize("address", HOSTILE_ADDRESSES, ids=lambda value: ascii(value)[:32])
def test_trace_headers_stay_two_headers_whatever_the_addresses(address: str, utf8: bool) -> None:
    envelope = Envelope(address, {"SMTPUTF8": None} if utf8 else {}, [address])
    trace = trace_headers(hostile_session("client.example"), envelope, "mx.test")
    lines = header_lines(trace)
    assert lines[0].startswith("Return-Path: <") and lines[0].endswith(">")
    assert lines[1] == "Received: from client.example ([192.0.2.7])"
    assert lines[2].startswith("\tby mx.test (smtpwire) with ")
    assert re.fullmatch(r"\tfor <[^\r\n]+>; \w{3}, \d\d \w{3} \d{4} [\d:]{8} [+-]\d{4}", lines[3])
    assert len(lines) == 4
    assert list(parsed(trace).keys()) == ["Return-Path", "Received"]


@pytest.mark.parametrize("helo", HOSTILE_HELOS, ids=lambda value: ascii(value)[:32])
def test_received_shows_an_odd_helo_name_as_one_quoted_string(helo: str | None) -> None:
    envelope = Envelope("alice@example.org", {"SMTPUTF8": None}, ["bob@example.net"])
    trace = trace_headers(hostile_session(helo), envelope, "mx.test")
    lines = header_lines(trace)
    shown = re.fullmatch(r'Received: from ("(?:[^"\\]|\\.)*") \(\[192\.0\.2\.7\]\)', lines[1])
    assert shown, lines[1]
    assert len(lines) == 4 and list(parsed(trace).keys()) == ["Return-Path", "Received"]


def test_the_examples_of_the_issue() -> None:
    session = hostile_session("[1.2.3.4])(by.trusted.example")
    envelope = Envelope("a\u2028b\u202e\x85c@example.org", {"SMTPUTF8": None}, ["x" * 1030 + "@example.org"])
    lines = header_lines(trace_headers(session, envelope, "mx.test"))
    assert lines[0] == "Return-Path: <a?b??c@example.org>"
    assert lines[1] == 'Received: from "[1.2.3.4])(by.trusted.example" ([192.0.2.7])'
    assert lines[3].startswith("\tfor <" + "x" * 509 + "...>; ")


def test_valid_names_and_utf8_addresses_are_shown_as_given() -> None:
    address = "δοκιμή\u200d@παράδειγμα.δοκιμή"  # a joiner is legitimate text, and breaks nothing
    for helo in ("client.example", "[192.0.2.7]", "[IPv6:2001:db8::7]", "[x-tag:a)(b]", "παράδειγμα.δοκιμή"):
        trace = trace_headers(hostile_session(helo), Envelope(address, {"SMTPUTF8": None}, [address]), "mx.test")
        lines = header_lines(trace)
        assert lines[:2] == [f"Return-Path: <{address}>", f"Received: from {helo} ([192.0.2.7])"]
        assert lines[3].startswith(f"\tfor <{address}>; ")


def test_without_smtputf8_the_headers_are_ascii() -> None:
    envelope = Envelope("alice@example.org", {}, ["bob@example.net"])
    trace = trace_headers(hostile_session("παράδειγμα.example"), envelope, "mx.test")
    assert trace.isascii()
    assert header_lines(trace)[1] == 'Received: from "??????????.example" ([192.0.2.7])'


# (7) Log injection


def formatted(message: str, *args: object, exc_info: Any = None) -> str:
    formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("smtpwire.serve", logging.INFO, __file__, 1, message, args, exc_info)
    return formatter.format(record)


@pytest.mark.parametrize("address", HOSTILE_ADDRESSES[:-3], ids=lambda value: ascii(value)[:32])
def test_a_log_record_is_one_line_whatever_the_client_sent(address: str) -> None:
    line = formatted("accepted id=%s from=<%s> to=%s", "3f9a0c4b21de", address, "<bob@example.net>")
    assert len(line.splitlines()) == 1  # splitlines() breaks at every line boundary Unicode knows
    assert not set(line) & set(BREAKING + BIDI)
    assert line.endswith(
        " INFO smtpwire.serve: accepted id=3f9a0c4b21de from=<" + ascii(address)[1:-1] + "> to=<bob@example.net>"
    )


def test_invisible_and_reordering_characters_are_shown_escaped() -> None:
    line = formatted("from=<%s>", "moc.elpmaxe\u202e@\u200bbob\U000e0041\t\x7f")
    assert line.endswith(r"from=<moc.elpmaxe\u202e@\u200bbob\U000e0041\t\x7f>")


def test_plain_and_utf8_text_is_untouched() -> None:
    text = 'accepted from=<δοκιμή@παράδειγμα.δοκιμή> to=<"a b\\"c"@example.net> peer=2001:db8::7'
    assert formatted("%s", text).endswith(": " + text)


def test_a_traceback_keeps_its_lines_but_cannot_forge_a_record() -> None:
    try:
        raise ValueError("bad\n2026-01-01 00:00:00,000 INFO smtpwire.serve: accepted forged\u2028x")
    except ValueError:
        output = formatted("session %s: hook %s failed", "3f9a0c4b21de", "message\nforged", exc_info=sys.exc_info())
    first, *traceback = output.split("\n")
    assert first.endswith("session 3f9a0c4b21de: hook message\\nforged failed")
    assert traceback[0] == "    Traceback (most recent call last):"
    assert "    2026-01-01 00:00:00,000 INFO smtpwire.serve: accepted forged\\u2028x" in traceback
    assert all(line.startswith("    ") for line in traceback)


def test_the_escaped_set_is_exactly_the_controls_separators_and_format_characters() -> None:
    escaped = {chr(code) for code in range(sys.maxunicode + 1) if UNSAFE.match(chr(code))}
    categories = {unicodedata.category(char) for char in escaped}
    assert categories == {"Cc", "Cf", "Zl", "Zp", "Cs"}
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)) in {"Cc", "Zl", "Zp", "Cs"}:
            assert chr(code) in escaped, hex(code)
    assert set(BREAKING + BIDI) <= escaped


# (7) End to end: what the core still accepts is logged escaped and stored as given


def test_an_smtputf8_address_is_stored_as_given_and_logged_escaped(tmp_path: pathlib.Path) -> None:
    sender = "\u0915\u094d\u200d\u0937@παράδειγμα.δοκιμή"  # a joiner after a virama (RFC 5892 A.2): invisible
    maildir = tmp_path / "maildir"
    with serve("--maildir", str(maildir)) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            refused = client.sendmail(sender, ["bob@example.net"], MESSAGE, mail_options=["SMTPUTF8"])
            assert refused == {}
        logged = server.wait_for(r"accepted id=\w+ from=<(.*?)> ")
        assert server.stop() == 0
    assert logged[1] == "\u0915\u094d\\u200d\u0937@παράδειγμα.δοκιμή"
    assert "\u200d" not in server.output()
    (message,) = stored(maildir)
    trace, body = split_trace(message)
    assert trace.startswith(f"Return-Path: <{sender}>\r\nReceived: from [127.0.0.1] ([127.0.0.1])\r\n")
    assert " with UTF8SMTP id " in trace and body == MESSAGE
