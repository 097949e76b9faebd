"""``smtpwire serve`` as a newcomer meets it: the start-up line, the JSON fields, the readable transcript, Ctrl-C."""

from __future__ import annotations

import json
import logging
import pathlib
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest

from smtpwire_handler._group_commit import filesystem_sync_available
from smtpwire_handler._server import listeners_text
from smtpwire_handler._transcript import folded, readable
from smtpwire_serve import _cli, _logging
from smtpwire_serve._settings import Settings
from tests.test_cli import SERVING, Serve, killed_after
from tests.test_interop import MESSAGE, TIMEOUT


def startup_lines(server: Serve) -> list[str]:
    """What the server said before its first session: everything logged up to and including the start-up line."""
    return [line for line in server.log if "WARNING" not in line]


def test_one_start_up_line_names_listeners_protocol_and_store(tmp_path: pathlib.Path) -> None:
    unix = tmp_path / "lmtp.sock"
    args = ["--listen", "127.0.0.1:0", "--listen", f"unix:{unix}", "--lmtp", "--maildir", str(tmp_path / "root")]
    with killed_after(Serve(args)) as server:
        (line,) = startup_lines(server)
        assert server.stop() == 0
    match = re.search(r"INFO smtpwire\.serve: smtpwire serving on 127\.0\.0\.1:(\d+), unix:(\S+); (.*)$", line)
    assert match, line
    assert match[2] == str(unix)
    assert re.fullmatch(rf"LMTP; store lmtp root {re.escape(str(tmp_path / 'root'))}; (uvloop|asyncio)", match[3])
    assert "[(" not in line and "SMTP" not in line


def test_the_start_up_line_says_where_mail_goes() -> None:
    by_default = ", syncfs per batch" if filesystem_sync_available() else ", fsync per file"
    assert _cli.about(_cli_settings()) == f"SMTP; store maildir ./maildir{by_default}"
    assert _cli.about(_cli_settings("--maildir", "/var/mail/x")) == f"SMTP; store maildir /var/mail/x{by_default}"
    fsyncs = _cli_settings("--maildir", "../md", "--maildir-sync", "file")
    assert _cli.about(fsyncs) == "SMTP; store maildir ../md, fsync per file"
    assert _cli.about(_cli_settings("--sink")) == "SMTP; store sink (discards)"
    assert _cli.about(_cli_settings("--print", "--lmtp")) == "LMTP; store print (standard output)"
    assert _cli.about(_cli_settings("--lmtp"), (2, 4)) == "LMTP; store lmtp root ./maildir; worker 2 of 4"


def _cli_settings(*args: str) -> Settings:
    with _cli.serve.make_context("serve", ["--listen", "127.0.0.1:0", *args]) as ctx:
        return _cli.settings_from(ctx.params, file_limit=4096)


def test_each_worker_says_its_number_and_ipv6_is_bracketed(tmp_path: pathlib.Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    args = ["--listen", f"127.0.0.1:{port}", "--sink", "--workers", "2", "--self-signed"]
    if socket.has_ipv6:
        args += ["--tls-listen", "[::1]:0"]
    with killed_after(Serve(args)) as server:
        server.wait_for(SERVING.pattern)
        assert server.stop() == 0
    lines = [line for line in server.log if "smtpwire serving on" in line]
    assert sorted(re.search(r"worker (\d) of 2", line)[1] for line in lines) == ["1", "2"]  # type: ignore[index]
    for line in lines:
        assert f"serving on 127.0.0.1:{port}" in line and "; SMTP; store sink (discards); " in line
        if socket.has_ipv6:
            assert re.search(r", \[::1\]:\d+ \(implicit TLS\);", line), line


def test_the_kit_line_stays_out_of_serves_log() -> None:
    with killed_after(Serve(["--listen", "127.0.0.1:0", "--sink"])) as server:
        assert server.stop() == 0
    text = server.output()
    assert text.count("serving") == 1 and "listening on" not in text, text


def test_json_accepted_line_has_its_values_as_fields(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    args = ["--listen", "127.0.0.1:0", "--maildir", str(maildir), "--log-format", "json"]
    with killed_after(Serve(args)) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"], MESSAGE)
        server.wait_for(r'"message": "accepted id=')
        assert server.stop() == 0
    records = [json.loads(line) for line in server.output().splitlines()]
    (accepted,) = [record for record in records if record["message"].startswith("accepted ")]
    (stored,) = (maildir / "new").iterdir()
    assert accepted["message"].startswith(f"accepted id={accepted['session']} from=<alice@example.org> ")
    assert {key: accepted[key] for key in ("from", "to", "size", "tls", "auth", "peer", "stored")} == {
        "from": "alice@example.org",
        "to": ["bob@example.net", "carol@example.net"],
        "size": stored.stat().st_size,  # with the trace headers it prepended
        "tls": None,
        "auth": None,
        "peer": "127.0.0.1",
        "stored": stored.name,
    }
    assert list(accepted)[:5] == ["time", "level", "logger", "session", "message"]


def test_json_fields_never_replace_the_records_own() -> None:
    extra = {_logging.JSON_FIELDS: {"level": "forged", "message": "forged", "discarded": True}}
    record = logging.LogRecord("smtpwire.serve", logging.INFO, __file__, 1, "accepted", (), None)
    record.__dict__.update(extra)
    parsed = json.loads(_logging.JsonFormatter().format(record))
    assert (parsed["level"], parsed["message"], parsed["discarded"]) == ("INFO", "accepted", True)


def test_verbose_log_is_the_readable_c_and_s_transcript() -> None:
    with killed_after(Serve(["--listen", "127.0.0.1:0", "--sink", "--hostname", "mx.test", "-v"])) as server:
        with smtplib.SMTP(*server.address, local_hostname="client.test", timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], b"Subject: hi\r\n\r\nbody \x1b[2J\r\n")
        server.wait_for(r" C: QUIT$")
        assert server.stop() == 0
    said = re.findall(r"^\S+ \S+ DEBUG smtpwire\.transcript: session \w+ (.*)$", server.output(), re.MULTILINE)
    assert said[said.index("C: ehlo client.test") + 1].startswith("S: 250 mx.test | PIPELINING | SIZE ")
    for line in ("C: mail FROM:<alice@example.org> size=26", "S: 250 2.1.0 OK", "C: rcpt TO:<bob@example.net>"):
        assert line in said
    assert said[said.index("C: data") + 1 :][:5] == [
        "S: 354 End data with <CR><LF>.<CR><LF>",
        "C: Subject: hi",
        "C: ",
        "C: body \\x1b[2J",  # escaped: the client's bytes never drive the terminal
        "C: .",
    ]
    assert not any("<<<" in line or ">>>" in line or "b'" in line for line in server.output().splitlines())


def test_readable_keeps_the_notes_and_trusts_no_look_alike() -> None:
    withheld = f"{b'AUTH PLAIN'!r} [30 bytes of an AUTH exchange withheld]"
    assert readable(withheld) == ["AUTH PLAIN [30 bytes of an AUTH exchange withheld]"]
    assert readable("[19 bytes of an unfinished line withheld]") == ["[19 bytes of an unfinished line withheld]"]
    assert readable(repr(b"EHLO [127.0.0.1]\r\n")) == ["EHLO [127.0.0.1]"]
    assert readable(repr(b"NOOP (+3 bytes)\r\n")) == ["NOOP (+3 bytes)"]  # the client's text, not a cut
    cut = repr(b"Subject: x\r\nab") + " (+3992 bytes)"
    assert readable(cut) == ["Subject: x", "ab", "[... 3992 bytes more]"]
    assert readable(repr(b"a\rb\nc\r\n")) == ["a\\rb\\nc"]  # only CRLF ends a line
    assert folded(["250-mx.test", "250-SIZE 10", "250 DSN", "354 go"]) == [
        "250 mx.test | SIZE 10 | DSN",
        "354 go",
    ]


def test_the_json_log_keeps_the_transcript_as_the_handler_wrote_it() -> None:
    record = logging.LogRecord(
        "smtpwire.transcript", logging.DEBUG, __file__, 1, "session %s %s %s", ("s1", "<<<", repr(b"QUIT\r\n")), None
    )
    assert json.loads(_logging.JsonFormatter().format(record))["message"] == "<<< b'QUIT\\r\\n'"
    assert _logging.TextFormatter("%(message)s").format(record) == "session s1 C: QUIT"
    assert record.args == ("s1", "<<<", repr(b"QUIT\r\n"))  # other handlers see the record as it was


@pytest.mark.parametrize("loading", [r"smtpwire\._\w+", r"smtpwire_asyncio"])
def test_ctrl_c_while_serve_starts_exits_quietly(loading: str) -> None:
    """SIGINT while serve is still importing (Python's ``-X importtime`` says how far it got): no traceback, 130."""
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "smtpwire_serve", "serve", "--listen", "127.0.0.1:0", "--sink"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + TIMEOUT
        for line in process.stderr:  # ends with the stream, so bounded by the process's life
            if re.search(rf"\|\s+{loading}$", line) or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 130
        rest = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert [line for line in rest.splitlines() if not line.startswith("import time:")] == []


def test_the_kit_names_listeners_as_people_write_them() -> None:
    shown = listeners_text([("127.0.0.1", 25), ("::1", 25)], [("0.0.0.0", 465)], ["/run/lmtp"])
    assert shown == "127.0.0.1:25, [::1]:25, 0.0.0.0:465 (implicit TLS), unix:/run/lmtp"
