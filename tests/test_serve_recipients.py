"""Which mail ``smtpwire serve`` accepts: --accept-domain and --recipients FILE, 550 5.1.1 for the others at RCPT."""

from __future__ import annotations

import pathlib
import re
import signal
import smtplib
import subprocess
import sys

import pytest

from smtpwire_serve import _recipients
from tests.test_cli import Serve, serve
from tests.test_interop import MESSAGE, TIMEOUT

EVERYONE = (
    "WARNING smtpwire.serve: accepting mail for every recipient: give --accept-domain or --recipients on a real MX"
)
RECIPIENTS = """\
# the mailboxes of other.net, and all of the IDN domain
Alice@other.net

@BÜCHER.example
carol@xn--caf-dma.example   # not a comment: a line is one entry
"""


def answers(server: Serve, recipients: list[str], utf8: bool = False) -> dict[str, tuple[int, str]]:
    """Each recipient's RCPT reply in one transaction (ended with RSET), as code and text."""
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo()
        client.command_encoding = "utf-8" if utf8 else "ascii"
        assert client.mail("sender@example.com", ["SMTPUTF8"] if utf8 else [])[0] == 250
        replies = {}
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            replies[recipient] = (code, text.decode())
        client.rset()
    return replies


def refused(address: str) -> tuple[int, str]:
    return 550, f"5.1.1 <{address}>: Recipient address rejected: User unknown"


def test_a_line_that_is_no_entry_is_an_error_naming_its_line(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "recipients"
    file.write_text(RECIPIENTS)
    with pytest.raises(_recipients.RecipientsFileError, match=rf"^{file}, line 5: an entry is one address or @domain"):
        _recipients.load(file)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("bob", "expected an address (user@domain) or @domain"),
        ("@", "'' is not a domain name"),
        ("bob@exa_mple.org", "'exa_mple.org' is not a domain name"),
        ("bob@xn--.example", "'xn--.example' is not a domain name"),
        ("@a..b", "'a..b' is not a domain name"),
        ("bob@\u200d.example", "'\\u200d.example' is not an internationalized domain name: "),  # shown, not hidden
        ("x" * 65 + "@example.org", "the local part is longer than 64 octets"),
        ("<bob@example.org>", "an entry is one address or @domain"),
    ],
)
def test_bad_entries_are_refused_with_their_reason(tmp_path: pathlib.Path, line: str, reason: str) -> None:
    file = tmp_path / "recipients"
    file.write_text(f"# fine\nok@example.org\n{line}\n")
    with pytest.raises(_recipients.RecipientsFileError, match="^" + re.escape(f"{file}, line 3: {reason}")):
        _recipients.load(file)


def test_the_file_is_read_as_compared(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "recipients"
    file.write_bytes(b"Alice@Other.NET\r\n\t@B\xc3\x9cCHER.example.\n  # indented comment\n\nX@[IPv6:::1]\n")
    table = _recipients.load(file)
    assert table.domains == {"xn--bcher-kva.example"}
    assert table.addresses == {"alice@other.net", "x@[ipv6:::1]"}
    file.write_bytes(b"caf\xe9@example.org\n")
    with pytest.raises(_recipients.RecipientsFileError, match=rf"^{file}, line 1: not UTF-8$"):
        _recipients.load(file)


def test_per_domain_and_per_address_with_case_and_idn(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "recipients"
    file.write_text(RECIPIENTS.replace("carol@xn--caf-dma.example   # not a comment: a line is one entry", ""))
    maildir = tmp_path / "maildir"
    args = ["--accept-domain", "Example.ORG", "--accept-domain", "café.example", "--recipients", str(file)]
    with serve(*args, "--maildir", str(maildir)) as server:
        assert not any(EVERYONE in line for line in server.log)
        accepted = ["bob@example.org", "BOB@EXAMPLE.ORG", "alice@other.net", "ALICE@Other.Net", "x@xn--caf-dma.example"]
        accepted += ["y@xn--bcher-kva.example", "Postmaster@other.net", "postmaster"]
        others = ["bob@other.net", "bob@example.org.evil", "alice@sub.other.net", "postmaster@elsewhere.test"]
        replies = answers(server, accepted + others)
        assert {address: replies[address][0] for address in accepted} == dict.fromkeys(accepted, 250)
        assert {address: replies[address] for address in others} == {address: refused(address) for address in others}
        idn = ["zoë@café.example", "ann@bücher.example", "ann@BÜCHER.example", "zoë@other.net"]
        replies = answers(server, idn, utf8=True)
        assert [replies[address][0] for address in idn] == [250, 250, 250, 550]
        assert replies["zoë@other.net"] == refused("zoë@other.net")
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:  # only accepted recipients get the message
            assert client.sendmail("sender@example.com", ["bob@example.org", "eve@other.net"], MESSAGE) == {
                "eve@other.net": (550, refused("eve@other.net")[1].encode())
            }
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("sender@example.com", ["eve@other.net"], MESSAGE)
        server.wait_for(r"accepted id=\w+ from=<sender@example.com> to=<bob@example.org> ")
        assert server.stop() == 0
    assert len(list((maildir / "new").iterdir())) == 1


@pytest.mark.parametrize("store", [["--sink"], ["--print"], ["--sink", "--backend", "trio"]])
def test_every_store_refuses_unknown_recipients(tmp_path: pathlib.Path, store: list[str]) -> None:
    printed = tmp_path / "stdout"
    with printed.open("w") as stdout, serve("--accept-domain", "example.org", *store, stdout=stdout) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            assert client.sendmail("a@example.com", ["bob@example.org", "bob@example.net"], MESSAGE) == {
                "bob@example.net": (550, refused("bob@example.net")[1].encode())
            }
        server.wait_for(r"accepted id=\w+ from=<a@example.com> to=<bob@example.org> .* (discarded|printed)$")
        assert server.stop() == 0
    if "--print" in store:
        assert "Subject: " in printed.read_text()


def test_the_check_stays_behind_sender_authentication() -> None:
    args = ["--accept-domain", "example.org", "--sink", "--verify", "spf", "--dns-resolver", "127.0.0.1:9"]
    with serve(*args) as server:
        replies = answers(server, ["bob@example.org", "bob@example.net"])
        assert replies == {"bob@example.org": (250, "2.1.5 OK"), "bob@example.net": refused("bob@example.net")}
        assert server.stop() == 0


def test_without_options_every_recipient_is_accepted_and_said_once(tmp_path: pathlib.Path) -> None:
    with serve("--sink", "--workers", "2") as server:
        server.wait_for(r"smtpwire serving on")  # the second worker
        replies = answers(server, ["anyone@anywhere.example", "x@y.test"])
        assert {code for code, _ in replies.values()} == {250}
        assert server.stop() == 0
    assert server.output().count(EVERYONE) == 1


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    """``smtpwire serve`` that is expected to stop at start (bounded by TIMEOUT either way)."""
    command = [sys.executable, "-m", "smtpwire_serve", "serve", "--listen", "127.0.0.1:0", "--sink", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)


def test_a_bad_file_or_domain_stops_serve_at_start_with_one_line(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "recipients"
    file.write_text("alice@example.org\n\nbob at example.org\n")
    result = run_serve("--recipients", str(file))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.endswith(
        f"Error: {file}, line 3: an entry is one address or @domain, without spaces or control characters\n"
    )
    result = run_serve("--recipients", str(tmp_path / "missing"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Error: cannot read the recipients file {tmp_path / 'missing'}: No such file or directory" in result.stderr
    result = run_serve("--accept-domain", "exa mple.org")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.endswith("Error: Invalid value for --accept-domain: 'exa mple.org' is not a domain name\n")


def test_sighup_reloads_the_file_and_a_broken_one_keeps_the_list(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "recipients"
    file.write_text("alice@example.org\n")
    with serve("--sink", "--recipients", str(file)) as server:
        assert answers(server, ["alice@example.org", "bob@example.org"]) == {
            "alice@example.org": (250, "2.1.5 OK"),
            "bob@example.org": refused("bob@example.org"),
        }
        open_session = smtplib.SMTP(*server.address, timeout=TIMEOUT)
        open_session.ehlo()
        open_session.mail("sender@example.com")
        assert open_session.rcpt("alice@example.org")[0] == 250
        file.write_text("# alice left\nbob@example.org\n")
        server.process.send_signal(signal.SIGHUP)
        server.wait_for(rf"INFO smtpwire\.serve: SIGHUP: reloaded 1 address\(es\) and 0 domain\(s\) of {file}$")
        assert answers(server, ["alice@example.org", "bob@example.org"]) == {
            "alice@example.org": refused("alice@example.org"),
            "bob@example.org": (250, "2.1.5 OK"),
        }
        assert open_session.data(MESSAGE)[0] == 250  # answered before the reload: it stays answered
        open_session.quit()

        file.write_text("bob@example.org\ncarol@example.org\nno address\n")
        server.process.send_signal(signal.SIGHUP)
        line = server.wait_for(r"ERROR smtpwire\.serve: SIGHUP: .*").group()
        assert line == (
            f"ERROR smtpwire.serve: SIGHUP: {file}, line 3: an entry is one address or @domain, without spaces or"
            " control characters; keeping the 1 address(es) and 0 domain(s) loaded before"
        )
        assert answers(server, ["bob@example.org", "carol@example.org"]) == {
            "bob@example.org": (250, "2.1.5 OK"),
            "carol@example.org": refused("carol@example.org"),
        }
        assert server.stop() == 0


def test_lmtp_answers_each_recipient_and_stores_only_the_accepted(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "lmtp"
    with serve("--lmtp", "--maildir", str(root), "--accept-domain", "example.org") as server:
        with smtplib.LMTP(*server.address, timeout=TIMEOUT) as client:
            assert client.ehlo()[0] == 250  # smtplib.LMTP sends LHLO
            client.mail("sender@example.com")
            assert client.rcpt("alice@example.org")[0] == 250
            assert client.rcpt("bob@example.net") == (550, refused("bob@example.net")[1].encode())
            assert client.rcpt("Carol@Example.Org")[0] == 250
            assert client.data(MESSAGE)[0] == 250  # alice's reply
            assert client.getreply()[0] == 250  # Carol's: one per accepted recipient (RFC 2033 4.2), none for bob
            client.noop()
        server.wait_for(r"accepted id=\w+ from=<sender@example.com> to=<Carol@Example.Org> ")
        assert server.stop() == 0
    folders = sorted(path.name for path in root.iterdir() if not path.name.startswith("."))
    assert folders == ["alice@example.org", "carol@example.org"]
    assert all(len(list((root / folder / "new").iterdir())) == 1 for folder in folders)
