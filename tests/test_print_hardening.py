"""``PrintHandler`` and ``serve --print``: a client can neither drive the terminal nor fake a printed message."""

from __future__ import annotations

import pathlib
import re
import smtplib

import pytest

from smtpwire_handler import PrintHandler
from tests.test_cli import serve
from tests.test_stock_handlers import RECIPIENT, SENDER, send, serving

TIMEOUT = 10
#: Clears the screen, moves the cursor home, sets the window title (OSC 0, ended by BEL, then by ST).
HOSTILE = (
    b"Subject: \x1b[2J\x1b[Hcleared\r\n"
    b"X-Title: \x1b]0;owned\x07 and \x1b]2;again\x1b\\\r\n"
    b"\r\n"
    b"body\r\n"
    b"------------ END MESSAGE ------------\r\n"
    b"---------- MESSAGE FOLLOWS ----------\r\n"
    b"X-Peer: 10.0.0.1\r\n"
    b"X-MailFrom: ceo@example.org\r\n"
    b"X-RcptTo: bob@example.net\r\n"
    b"\r\n"
    b"Please wire the money.\r\n"
)
BEGIN = re.compile("---------- MESSAGE FOLLOWS ([0-9a-f]{16}) ----------\n")


def expected(token: str, peer: str = "127.0.0.1") -> str:
    """What ``HOSTILE`` prints as: escapes spelled out, the forged lines plain content between the true markers."""
    return (
        f"---------- MESSAGE FOLLOWS {token} ----------\n"
        "Subject: \\x1b[2J\\x1b[Hcleared\n"
        "X-Title: \\x1b]0;owned\\x07 and \\x1b]2;again\\x1b\\\n"
        f"X-Peer: {peer}\n"
        f"X-MailFrom: {SENDER}\n"
        f"X-RcptTo: {RECIPIENT}\n"
        "\n"
        "body\n"
        "------------ END MESSAGE ------------\n"
        "---------- MESSAGE FOLLOWS ----------\n"
        "X-Peer: 10.0.0.1\n"
        "X-MailFrom: ceo@example.org\n"
        "X-RcptTo: bob@example.net\n"
        "\n"
        "Please wire the money.\n"
        f"------------ END MESSAGE {token} ------------\n"
    )


def test_escape_sequences_and_a_forged_block_print_escaped_between_unforgeable_markers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with serving("asyncio", PrintHandler()) as address:
        send(address, HOSTILE)
    out = capsys.readouterr().out
    token = BEGIN.match(out)
    assert token, out
    assert out == expected(token[1])
    assert "\x1b" not in out and "\x07" not in out


def test_each_message_gets_a_token_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    """A client that saw one printed message (a shared screen, a log) still cannot end the next one."""
    with serving("blocking", PrintHandler()) as address:
        send(address, b"Subject: one\r\n\r\nhello\r\n")
        send(address, b"Subject: two\r\n\r\nhello\r\n")
    tokens = re.findall("^---------- MESSAGE FOLLOWS ([0-9a-f]{16}) ----------$", capsys.readouterr().out, re.M)
    assert len(tokens) == 2 and tokens[0] != tokens[1]


def test_tab_newline_and_utf8_stay_while_bidi_and_line_separators_are_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    message = "Subject: \tcafé über \u202eevil\u202c\r\n\r\nline\u2028next\x85end\u200b\r\n".encode()
    with serving("asyncio", PrintHandler()) as address:
        send(address, message)
    out = capsys.readouterr().out
    assert "Subject: \tcafé über \\u202eevil\\u202c\n" in out
    assert "\nline\\u2028next\\x85end\\u200b\n------------ END MESSAGE " in out


def test_serve_print_writes_the_hostile_message_escaped(tmp_path: pathlib.Path) -> None:
    printed = tmp_path / "stdout"
    with printed.open("w") as stdout, serve("--print", stdout=stdout) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.sendmail(SENDER, [RECIPIENT], HOSTILE)
        server.wait_for(r"accepted id=\w+ .* printed")
        assert server.stop() == 0
    out = printed.read_text()
    token = BEGIN.match(out)
    assert token, out
    assert out == expected(token[1])
