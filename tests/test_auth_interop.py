"""AUTH against real clients on every adapter: smtplib, aiosmtplib, swaks, scramp; only after STARTTLS."""

from __future__ import annotations

import asyncio
import base64
import logging
import pathlib
import smtplib
import subprocess
from collections.abc import Iterator

import aiosmtplib
import pytest
import scramp

import smtpwire
from smtpwire import AuthCredentials, CredentialsLookup, Reply
from smtpwire_handler import ServerOptions, Session
from smtpwire_memorybio import MemoryBIOSession
from tests import certs
from tests.servers import KINDS, Recorder, Running, running
from tests.test_interop import MESSAGE, TIMEOUT, delivered, need, starttls_client

USER, PASSWORD = "tim", "tanstaaf tanstaaf"
SCRAM = smtpwire.scram_credentials(PASSWORD)
CONFIG = smtpwire.ServerConfig(
    hostname="mx.test",
    extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.StartTLS(), smtpwire.Auth(smtpwire.KNOWN_MECHANISMS)),
    require_auth=True,
)


class Accounts(Recorder):
    """One user; records who authenticated and how."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[AuthCredentials | CredentialsLookup] = []
        self.users: list[smtpwire.Authenticated | None] = []

    def authenticate(self, session: Session, credentials: AuthCredentials) -> bool | Reply | None:
        self.checked.append(credentials)
        return (credentials.username, credentials.password) == (USER, PASSWORD) and not credentials.authzid

    def credentials(self, session: Session, lookup: CredentialsLookup) -> smtpwire.ScramCredentials | str | None:
        self.checked.append(lookup)
        if lookup.username != USER or lookup.authzid:
            return None
        return PASSWORD if lookup.mechanism == "CRAM-MD5" else SCRAM

    def mail_from(self, session: Session, address: str, params: object) -> None:
        self.users.append(session.authenticated)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def accounts() -> Accounts:
    return Accounts()


@pytest.fixture
def server(kind: str, accounts: Accounts) -> Iterator[Running]:
    with running(kind, accounts, ServerOptions(config=CONFIG, tls_context=certs.server_context())) as run:
        yield run


def test_before_starttls_auth_is_not_offered_and_gets_538(server: Running, accounts: Accounts) -> None:
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        assert not client.has_extn("auth") and client.has_extn("starttls")
        blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        assert client.docmd("AUTH", f"PLAIN {blob}") == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
        assert client.docmd("MAIL", "FROM:<alice@example.org>") == (530, b"5.7.0 Authentication required")
    assert accounts.checked == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_login(server: Running, accounts: Accounts, mechanism: str) -> None:
    with starttls_client(server.address) as client:
        assert client.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "PLAIN", "LOGIN", "CRAM-MD5"]
        authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        client.user, client.password = USER, PASSWORD
        assert client.auth(mechanism, authobject) == (235, b"2.7.0 Authentication successful")
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert delivered(accounts) == MESSAGE
    assert accounts.users == [smtpwire.Authenticated(mechanism, "", USER)]
    assert accounts.checked == [AuthCredentials(mechanism, "", USER, PASSWORD)]


def test_smtplib_login_picks_cram_md5_first(server: Running, accounts: Accounts) -> None:
    with starttls_client(server.address) as client:
        assert client.login(USER, PASSWORD) == (235, b"2.7.0 Authentication successful")
        assert client.docmd("AUTH", "PLAIN") == (503, b"5.5.1 Already authenticated")
    assert accounts.checked == [CredentialsLookup("CRAM-MD5", "", USER)]


def test_a_wrong_password_is_tried_three_ways_then_the_session_ends(server: Running, accounts: Accounts) -> None:
    client = starttls_client(server.address)
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(USER, "wrong")  # smtplib tries CRAM-MD5, PLAIN, LOGIN: the third failure is the limit
        assert refused.value.smtp_code == 535
        assert client.getreply() == (421, b"4.7.0 mx.test Too many authentication failures, closing connection")
    finally:
        client.close()
    assert [check.mechanism for check in accounts.checked] == ["CRAM-MD5", "PLAIN", "LOGIN"]


def test_cancelled_attempts_count_too(server: Running, accounts: Accounts) -> None:
    client = starttls_client(server.address)
    try:
        for _ in range(2):
            assert client.docmd("AUTH", "LOGIN")[0] == 334
            assert client.docmd("*") == (501, b"5.7.0 Authentication cancelled")
        assert client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0tim\0nope").decode())[0] == 535
        assert client.getreply()[0] == 421
    finally:
        client.close()


def test_scram_sha_256_with_scramp(server: Running, accounts: Accounts) -> None:
    scram = scramp.ScramClient(["SCRAM-SHA-256"], USER, PASSWORD)
    with starttls_client(server.address) as client:
        code, server_first = client.docmd(
            "AUTH", "SCRAM-SHA-256 " + base64.b64encode(scram.get_client_first().encode()).decode()
        )
        assert code == 334
        scram.set_server_first(base64.b64decode(server_first).decode())
        code, server_final = client.docmd(base64.b64encode(scram.get_client_final().encode()).decode())
        assert code == 334
        scram.set_server_final(base64.b64decode(server_final).decode())  # raises unless the server knew the keys
        assert client.docmd("") == (235, b"2.7.0 Authentication successful")
        client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
    assert delivered(accounts) == MESSAGE
    assert accounts.users == [smtpwire.Authenticated("SCRAM-SHA-256", "", USER)]


@pytest.mark.parametrize("method", ["auth_plain", "auth_login", "auth_crammd5"])
def test_aiosmtplib(server: Running, accounts: Accounts, method: str) -> None:
    async def send() -> None:
        client = aiosmtplib.SMTP(
            hostname=server.address[0], port=server.address[1], tls_context=certs.client_context(), timeout=TIMEOUT
        )
        async with client:
            await client.ehlo()  # aiosmtplib upgrades with STARTTLS on its own when offered
            assert client.is_ehlo_or_helo_needed is False and "auth" in client.esmtp_extensions
            response = await getattr(client, method)(USER, PASSWORD)
            assert response.code == 235
            await client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)

    asyncio.run(send())
    assert delivered(accounts) == MESSAGE
    assert accounts.users[0] is not None and accounts.users[0].username == USER


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_swaks_auth_after_starttls(server: Running, accounts: Accounts, mechanism: str, tmp_path: pathlib.Path) -> None:
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE.removesuffix(b"\r\n"))
    result = subprocess.run(
        [
            *(need("swaks"), "--server", server.address[0], "--port", str(server.address[1])),
            *("--from", "alice@example.org", "--to", "bob@example.net", "--ehlo", "swaks.example"),
            *("--tls", "--tls-verify", "--tls-ca-path", certs.write_ca(str(tmp_path)), "--tls-sni", "localhost"),
            *("--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD, "--data", str(data)),
        ],
        capture_output=True,
        timeout=TIMEOUT * 2,
    )
    transcript = result.stdout.decode(errors="replace")
    assert result.returncode == 0, transcript + result.stderr.decode(errors="replace")
    assert "<~  235 2.7.0 Authentication successful" in transcript  # "~": inside TLS
    assert delivered(accounts) == MESSAGE
    assert accounts.users == [smtpwire.Authenticated(mechanism, "", USER)]


def test_the_transcript_withholds_the_exchange(
    server: Running, accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpwire.transcript")
    blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    login = base64.b64encode(PASSWORD.encode()).decode()
    with starttls_client(server.address) as client:
        assert client.docmd("AUTH", f"PLAIN {blob}")[0] == 235
        client.rset()
    with starttls_client(server.address) as client:
        client.docmd("AUTH", "LOGIN")
        client.docmd(base64.b64encode(USER.encode()).decode())
        assert client.docmd(login)[0] == 235
        client.noop()
    logged = caplog.text
    assert "bytes of an AUTH exchange withheld" in logged and "noop" in logged
    assert PASSWORD not in logged and blob not in logged and login not in logged


def test_an_auth_hook_that_raises_gives_454(server: Running, accounts: Accounts) -> None:
    accounts.fail_on.add("authenticate")
    with starttls_client(server.address) as client:
        blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        assert client.docmd("AUTH", f"PLAIN {blob}") == (454, b"4.7.0 Temporary authentication failure")
        assert client.noop()[0] == 250


# -- what the driver makes of odd hook answers (in memory, AUTH allowed in clear) -------


class Odd(Recorder):
    def __init__(self, verdict: object, secret: object) -> None:
        super().__init__()
        self.verdict, self.secret = verdict, secret

    def authenticate(self, session: Session, credentials: AuthCredentials) -> bool | Reply | None:
        return self.verdict  # type: ignore[return-value]

    def credentials(self, session: Session, lookup: CredentialsLookup) -> smtpwire.ScramCredentials | str | None:
        return self.secret  # type: ignore[return-value]


def in_memory(handler: Recorder) -> MemoryBIOSession:
    config = smtpwire.ServerConfig(
        extensions=(smtpwire.EnhancedStatusCodes(), smtpwire.Auth(smtpwire.KNOWN_MECHANISMS, require_tls=False)),
        max_auth_failures=10,
    )
    smtp = MemoryBIOSession(handler, ServerOptions(config=config))
    smtp.start()
    smtp.receive(b"EHLO client.example\r\n")
    return smtp


PLAIN_LINE = b"AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n"
SCRAM_LINE = b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,n=tim,r=abc") + b"\r\n"
UNAVAILABLE = b"454 4.7.0 Temporary authentication failure\r\n"
INVALID = b"535 5.7.8 Authentication credentials invalid\r\n"


@pytest.mark.parametrize(
    ("verdict", "reply"),
    [
        (True, b"235 2.7.0 Authentication successful\r\n"),
        (False, INVALID),
        (None, INVALID),  # a hook that forgets to return lets nobody in
        (Reply(454, "Directory down", (4, 7, 0)), b"454 4.7.0 Directory down\r\n"),
        (Reply(250, "OK"), UNAVAILABLE),  # not an answer to AUTH: logged
        (1, UNAVAILABLE),  # truthy is not True: logged
    ],
)
def test_authenticate_answers(verdict: object, reply: bytes, caplog: pytest.LogCaptureFixture) -> None:
    smtp = in_memory(Odd(verdict, None))
    assert smtp.receive(PLAIN_LINE) == reply
    assert PASSWORD not in caplog.text
    assert (smtp.session.authenticated is not None) == (verdict is True)


@pytest.mark.parametrize(
    ("secret", "reply"),
    [
        (None, b"334 "),  # an unknown user fails only at the proof
        (SCRAM, b"334 "),
        ("a password", UNAVAILABLE),  # SCRAM needs ScramCredentials: logged
        (Reply(454, "Directory down", (4, 7, 0)), b"454 4.7.0 Directory down\r\n"),
        (Reply(235, "yes", (2, 7, 0)), UNAVAILABLE),
    ],
)
def test_credentials_answers(secret: object, reply: bytes, caplog: pytest.LogCaptureFixture) -> None:
    smtp = in_memory(Odd(False, secret))
    assert smtp.receive(SCRAM_LINE).startswith(reply)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(errors) == (reply == UNAVAILABLE)
    assert PASSWORD not in caplog.text
