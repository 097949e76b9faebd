"""DSN, REQUIRETLS and LIMITS end to end: smtplib over 127.0.0.1 to every adapter's handler, and to
``smtpwire serve``, whose Maildir files are read back."""

from __future__ import annotations

import pathlib
import re
import smtplib

import pytest

import smtpwire
from smtpwire_handler import Envelope, Handler, ServerOptions, Session
from tests import certs
from tests.servers import KINDS, running
from tests.test_cli import serve, split_trace, stored
from tests.test_interop import MESSAGE, TIMEOUT, starttls_client

REQUEST_HEADER = re.compile(rb"X-Smtpwire-[^\r\n]*\r\n")


def request_headers(message: bytes) -> list[str]:
    """The X-Smtpwire-* lines serve wrote after Received, checking that the message follows them as sent."""
    _, rest = split_trace(message)
    headers = []
    while match := REQUEST_HEADER.match(rest):
        headers.append(match[0].decode())
        rest = rest[match.end() :]
    assert rest == MESSAGE
    return headers


def test_dsn_requests_are_offered_and_written_into_the_stored_message(
    tmp_path: pathlib.Path, tls_files: list[str]
) -> None:
    maildir = tmp_path / "maildir"
    with serve(*tls_files, "--maildir", str(maildir), "--max-recipients", "7") as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            assert client.has_extn("dsn") and not client.has_extn("requiretls")
            assert client.esmtp_features["limits"] == "RCPTMAX=7"
            refused = client.sendmail(
                "alice@example.org",
                ["bob@example.net", "carol@example.net"],
                MESSAGE,
                mail_options=["RET=HDRS", "ENVID=QQ+2B314159"],
                rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.net"],
            )
            assert refused == {}
            client.sendmail("alice@example.org", ["dave@example.net"], MESSAGE)
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> to=<dave@example.net>")
    with_dsn, without = stored(maildir)
    assert request_headers(with_dsn) == [
        "X-Smtpwire-DSN: RET=HDRS ENVID=QQ+2B314159\r\n",
        "X-Smtpwire-DSN-Recipient: <bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net\r\n",
        "X-Smtpwire-DSN-Recipient: <carol@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net\r\n",
    ]
    assert request_headers(without) == []


def test_requiretls_is_offered_over_tls_and_recorded(tmp_path: pathlib.Path, tls_files: list[str]) -> None:
    maildir = tmp_path / "maildir"
    with serve(*tls_files, "--maildir", str(maildir)) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE, mail_options=["REQUIRETLS"])
            assert refused.value.smtp_code == 555
        with starttls_client(server.address) as client:
            assert client.has_extn("requiretls")
            client.sendmail(
                "alice@example.org",
                ["bob@example.net"],
                MESSAGE,
                mail_options=["REQUIRETLS"],
                rcpt_options=["NOTIFY=NEVER"],
            )
        server.wait_for(r"accepted id=\w+ from=<alice@example.org>")
    (message,) = stored(maildir)
    assert request_headers(message) == [
        "X-Smtpwire-DSN-Recipient: <bob@example.net> NOTIFY=NEVER\r\n",
        "X-Smtpwire-RequireTLS: yes\r\n",
    ]


def test_without_tls_there_is_no_requiretls_at_all(tmp_path: pathlib.Path) -> None:
    with (
        serve("--maildir", str(tmp_path / "maildir")) as server,
        smtplib.SMTP(*server.address, timeout=TIMEOUT) as client,
    ):
        client.ehlo("client.example")
        assert client.has_extn("dsn") and client.esmtp_features["limits"] == "RCPTMAX=100"
        assert not client.has_extn("requiretls") and not client.has_extn("starttls")


@pytest.mark.parametrize(
    ("option", "where"),
    [
        ("ENVID=id+0D+0AX-Injected:+20yes", "mail"),
        ("RET=NONE", "mail"),
        ("ORCPT=rfc822;b+0D+0AX-Injected:+20yes", "rcpt"),
        ("ORCPT=utf-8;b\\x{0D}\\x{0A}X-Injected:\\x{20}yes", "rcpt"),
        ("NOTIFY=SUCCESS,NEVER", "rcpt"),
    ],
)
def test_bad_requests_and_ones_decoding_to_line_breaks_are_refused(
    tmp_path: pathlib.Path, option: str, where: str
) -> None:
    maildir = tmp_path / "maildir"
    with serve("--maildir", str(maildir)) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        code, reply = client.mail("alice@example.org", [option] if where == "mail" else [])
        if where == "rcpt":
            assert code == 250
            code, reply = client.rcpt("bob@example.net", [option])
        assert (code, reply[:17]) == (501, b"5.5.4 Syntax: " + option[:3].encode())
        client.rset()
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    (message,) = stored(maildir)
    assert request_headers(message) == []


def test_a_utf8_original_recipient_is_written_as_sent(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"
    orcpt = "ORCPT=utf-8;j\u00f6rg@b\\x{FC}cher.example"
    with serve("--maildir", str(maildir)) as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.sendmail("alice@example.org", ["j\u00f6rg@example.net"], MESSAGE, ["SMTPUTF8"], [orcpt])
        server.wait_for(r"accepted id=\w+ ")
    (message,) = stored(maildir)
    assert request_headers(message) == [f"X-Smtpwire-DSN-Recipient: <j\u00f6rg@example.net> {orcpt}\r\n"]


class Requests(Handler):
    """Keeps what each delivered envelope says it was asked."""

    def __init__(self) -> None:
        self.seen: list[tuple[smtpwire.MailDsn, list[smtpwire.RcptDsn], bool]] = []

    def message(self, session: Session, envelope: Envelope) -> None:
        self.seen.append((envelope.dsn, envelope.rcpt_dsn, envelope.require_tls))


@pytest.mark.parametrize("kind", KINDS)
def test_every_adapter_hands_the_decoded_requests_to_the_handler(kind: str) -> None:
    tls_context = None if kind == "memorybio" else certs.server_context()  # its test server has no TLS
    starttls = (smtpwire.StartTLS(),) if tls_context else ()
    extensions = (*smtpwire.STANDARD_EXTENSIONS, *starttls, smtpwire.Dsn(), smtpwire.RequireTls())
    config = smtpwire.ServerConfig(hostname="mx.test", extensions=extensions)
    handler = Requests()
    options = ServerOptions(config=config, tls_context=tls_context)
    with running(kind, handler, options) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        if tls_context is not None:
            client.starttls(context=certs.client_context())
        client.sendmail(
            "alice@example.org",
            ["bob@example.net", "carol@example.net"],
            MESSAGE,
            mail_options=["RET=FULL", "ENVID=a+2Bb+3Dc", *(["REQUIRETLS"] if tls_context else [])],
            rcpt_options=["NOTIFY=delay,failure", "ORCPT=utf-8;b\\x{F6}b@example.net"],
        )
        client.sendmail("alice@example.org", ["dave@example.net"], MESSAGE)
    requested = (
        smtpwire.MailDsn("FULL", "a+b=c"),
        [smtpwire.RcptDsn(("FAILURE", "DELAY"), smtpwire.OriginalRecipient("utf-8", "b\u00f6b@example.net"))] * 2,
        tls_context is not None,
    )
    assert handler.seen == [requested, (smtpwire.MailDsn(), [smtpwire.RcptDsn()], False)]
