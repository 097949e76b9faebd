"""DSN (RFC 3461) requests from client libraries nobody here wrote, into ``smtpwire serve``.

swaks cannot send them: the installed swaks (20201014.0) writes ``MAIL
FROM:<address>`` and ``RCPT TO:<address>`` with no parameters but PRDR, and
splits ``--to`` at commas, so NOTIFY=SUCCESS,FAILURE could not even be
spelled.  aiosmtplib (``mail_options``/``rcpt_options``) and Perl's Net::SMTP
(``Return``/``Envelope``, ``Notify``/``ORcpt``, each encoding them itself)
send them instead, and the stored message's X-Smtpwire-DSN headers must show
exactly what each one sent.
"""

from __future__ import annotations

import asyncio
import pathlib
import subprocess

import aiosmtplib

from tests.test_cli import serve, stored
from tests.test_interop import MESSAGE, TIMEOUT, need
from tests.test_serve_dsn import request_headers

RECIPIENTS = ["bob@example.net", "carol@example.net"]


def test_aiosmtplib_dsn_parameters_are_stored_as_sent(tmp_path: pathlib.Path) -> None:
    maildir = tmp_path / "maildir"

    async def send(port: int) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=TIMEOUT, start_tls=False) as client:
            await client.ehlo(hostname="aiosmtplib.example")
            assert client.supports_extension("dsn")
            await client.sendmail(
                "alice@example.org",
                RECIPIENTS,
                MESSAGE,
                mail_options=["RET=FULL", "ENVID=aio+2Bsmtplib+3D1"],
                rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;list@example.net"],
            )

    with serve("--maildir", str(maildir)) as server:
        asyncio.run(asyncio.wait_for(send(server.address[1]), TIMEOUT))
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> to=<bob@example.net>,<carol@example.net> ")
    (message,) = stored(maildir)
    assert request_headers(message) == [
        "X-Smtpwire-DSN: RET=FULL ENVID=aio+2Bsmtplib+3D1\r\n",
        "X-Smtpwire-DSN-Recipient: <bob@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;list@example.net\r\n",
        "X-Smtpwire-DSN-Recipient: <carol@example.net> NOTIFY=FAILURE,DELAY ORCPT=rfc822;list@example.net\r\n",
    ]


NET_SMTP = r"""
use strict;
use Net::SMTP;
my ($port, $file) = @ARGV;
open(my $in, "<:raw", $file) or die "$file: $!";
my $message = do { local $/; <$in> };
my $smtp = Net::SMTP->new("127.0.0.1", Port => $port, Hello => "perl.example", Timeout => 10)
    or die "connect: $@";
$smtp->mail("alice\@example.org", Return => "hdrs", Envelope => "QQ+314159 x=y") or die "MAIL: " . $smtp->message;
$smtp->recipient("bob\@example.net", {Notify => ["success", "failure"], ORcpt => "rfc822;bob\@example.net"})
    or die "RCPT: " . $smtp->message;
$smtp->recipient("carol\@example.net", {Notify => ["NEVER"]}) or die "RCPT: " . $smtp->message;
$smtp->data($message) or die "DATA: " . $smtp->message;
$smtp->quit;
"""


def test_perl_net_smtp_encodes_its_dsn_requests_and_they_are_stored_as_sent(tmp_path: pathlib.Path) -> None:
    """Net::SMTP xtext-encodes ENVID and upper-cases NOTIFY itself: the headers show its encoding."""
    maildir = tmp_path / "maildir"
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE)
    with serve("--maildir", str(maildir)) as server:
        result = subprocess.run(
            [need("perl"), "-e", NET_SMTP, str(server.address[1]), str(data)],
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> ")
    (message,) = stored(maildir)
    assert request_headers(message) == [
        "X-Smtpwire-DSN: RET=HDRS ENVID=QQ+2B314159+20x+3Dy\r\n",
        "X-Smtpwire-DSN-Recipient: <bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net\r\n",
        "X-Smtpwire-DSN-Recipient: <carol@example.net> NOTIFY=NEVER\r\n",
    ]
