"""``smtpwire serve --verify``: sender authentication against a local DNS server, end to end over SMTP."""

from __future__ import annotations

import base64
import pathlib
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import smtpwire_verify
from tests.dnsserver import LocalDNS, local_dns
from tests.dnszone import Zone
from tests.test_cli import run_cli, serve, stored
from tests.test_interop import TIMEOUT

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
PUBLIC = base64.b64encode(
    KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()
ZONE = {
    "example.org": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.example.org": [("TXT", f"v=DKIM1; k=rsa; p={PUBLIC}")],
    "forged.example": [("TXT", "v=spf1 -all")],
    "_dmarc.forged.example": [("TXT", "v=DMARC1; p=reject")],
    "quarantined.example": [("TXT", "v=spf1 -all")],
    "_dmarc.quarantined.example": [("TXT", "v=DMARC1; p=quarantine")],
    "slow.example": ["TIMEOUT"],
    "_dmarc.slow.example": ["TIMEOUT"],
}
AUTH_RESULTS = re.compile(rb"Authentication-Results: mx\.test;\r\n(?:\t[^\r\n]*\r\n)+")


def message(author: str, subject: str = "checked", signed: bool = False, extra: bytes = b"") -> bytes:
    text = (
        f"From: {author}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
        "Message-ID: <1@example.org>\r\n\r\nHello from a real sender.\r\n"
    ).encode()
    if signed:
        domain = author.rpartition("@")[2].encode()
        text = dkim.sign(text, b"sel", domain, PRIVATE_PEM, include_headers=[b"from", b"to", b"subject"]) + text
    return extra + text


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    with local_dns(Zone(ZONE)) as server:
        yield server


def verified(maildir: pathlib.Path, folder: str = "") -> list[bytes]:
    return stored(maildir / folder if folder else maildir)


def results_of(stored_message: bytes) -> list[tuple[str, str]]:
    """The method=result words of this server's Authentication-Results field (there must be exactly one)."""
    fields = AUTH_RESULTS.findall(stored_message)
    assert len(fields) == 1, stored_message[:800]
    return re.findall(r"(?<![.\w])(spf|dkim|dmarc|arc)=(\w+)", fields[0].decode())


def test_a_signed_message_from_an_authorised_host_passes_everything(tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    maildir = tmp_path / "maildir"
    forged = b"Authentication-Results: MX.TEST; dkim=pass header.d=bank.example\r\n"
    theirs = b"Authentication-Results: relay.example; spf=pass smtp.mailfrom=example.org\r\n"
    sent = message("alice@example.org", signed=True)
    args = ["--verify", "all", "--dns-resolver", dns.address, "--maildir", str(maildir)]
    with serve(*args) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], forged + theirs + sent)
        line = server.wait_for(r"accepted id=.*")[0]
    (kept,) = verified(maildir)
    assert results_of(kept) == [("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"), ("arc", "none")]
    assert b"smtp.mailfrom=alice@example.org" in kept and b"header.d=example.org" in kept
    assert forged not in kept and theirs + sent in kept  # the claim in our name goes, the rest stays byte-exact
    assert kept.index(b"Received: ") < kept.index(b"Authentication-Results: mx.test;") < kept.index(theirs)
    assert "spf=pass dkim=pass dmarc=pass arc=none" in line
    assert any("; verify spf,dkim,dmarc,arc;" in line for line in server.log if "serving on" in line)


def test_policies_are_off_unless_asked_for(tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    maildir = tmp_path / "maildir"
    args = ["--verify", "dmarc", "--dns-resolver", dns.address, "--maildir", str(maildir)]
    with serve(*args) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.sendmail("mallory@forged.example", ["bob@example.net"], message("ceo@forged.example"))
    (kept,) = verified(maildir)
    assert results_of(kept) == [("spf", "fail"), ("dkim", "none"), ("dmarc", "fail")]


def test_enforced_dmarc_refuses_reject_and_files_quarantine_in_junk(tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    maildir = tmp_path / "maildir"
    args = ["--verify", "all", "--enforce-dmarc", "--dns-resolver", dns.address, "--maildir", str(maildir), "-v"]
    with serve(*args) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("mallory@forged.example", ["bob@example.net"], message("ceo@forged.example"))
        assert refused.value.smtp_code == 550
        assert refused.value.smtp_error.startswith(b"5.7.1 Rejected by the DMARC policy of forged.example")
        client.sendmail("eve@quarantined.example", ["bob@example.net"], message("eve@quarantined.example"))
        line = server.wait_for(r"accepted id=.*")[0]
    assert verified(maildir) == []
    (junk,) = verified(maildir, ".Junk")
    assert ("dmarc", "fail") in results_of(junk) and "folder=Junk" in line


def test_an_spf_fail_is_refused_at_mail_and_a_dns_failure_deferred(tmp_path: pathlib.Path, dns: LocalDNS) -> None:
    args = ["--verify", "spf", "--reject-spf-fail", "--dns-resolver", dns.address, "--sink"]
    with serve(*args) as server, smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        code, text = client.mail("mallory@forged.example")
        assert (code, text[:20]) == (550, b"5.7.23 SPF check fai")
        client.rset()
        started = time.monotonic()
        code, text = client.mail("someone@slow.example")
        assert (code, text[:7]) == (451, b"4.7.24 ")
        assert time.monotonic() - started < 11  # within the DNS budget of the check
        assert client.mail("alice@example.org")[0] == 250


def test_without_verify_serve_never_loads_dns() -> None:
    """The running server, not only its modules: what it imports while it starts and serves (python -X importtime)."""
    command = [sys.executable, "-X", "importtime", "-m", "smtpwire_serve", "serve", "--sink", "--listen", "127.0.0.1:0"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as server:
        assert server.stderr is not None
        imported = []
        deadline = time.monotonic() + TIMEOUT
        for line in server.stderr:  # bounded: the server says it serves, or the deadline passes
            if "smtpwire serving on" in line or time.monotonic() > deadline:
                break
            if line.startswith("import time:"):
                imported.append(line.rpartition("|")[2].strip())
        server.terminate()
    assert "smtpwire_serve._cli" in imported  # the import log was read
    assert [name for name in imported if name.split(".")[0] in ("dns", "smtpwire_verify", "dkim", "authres")] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--verify", "spf,sender-id"], "unknown verification method 'sender-id'"),
        (["--enforce-dmarc"], "--enforce-dmarc needs --verify dmarc"),
        (["--verify", "spf", "--enforce-dmarc"], "--enforce-dmarc needs --verify dmarc"),
        (["--verify", "dkim", "--reject-spf-fail"], "--reject-spf-fail needs --verify spf"),
        (["--dns-resolver", "127.0.0.1"], "--dns-resolver is for --verify"),
        (["--verify", "all", "--lmtp"], "--verify is for SMTP"),
        (["--verify", "all", "--authserv-id", "a b"], "--authserv-id"),
    ],
)
def test_bad_verify_options_give_one_clear_line(args: list[str], message: str) -> None:
    result = run_cli("serve", "--sink", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_methods_are_named_as_the_issue_names_them() -> None:
    assert smtpwire_verify.methods_from(["dmarc"]) == {"spf", "dkim", "dmarc"}
    assert smtpwire_verify.methods_from(["all"]) == set(smtpwire_verify.METHODS)
