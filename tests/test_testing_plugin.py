"""smtpwire_testing: the MailServer context manager over real sockets, and the pytest plugin through pytester."""

from __future__ import annotations

import asyncio
import base64
import operator
import smtplib
import socket
import ssl
import threading
import time
import unittest

import aiosmtplib
import pytest
import scramp
from smtpwire_testing import POSTFIX_MESSAGE_SIZE_LIMIT, MailServer

import smtpwire

pytest_plugins = ["pytester"]

MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hello\r\n\r\nHi Bob\r\n"
TIMEOUT = 5


def client(server: MailServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=TIMEOUT)


def send(server: MailServer, rcpts: list[str] | None = None, message: bytes = MESSAGE) -> None:
    with client(server) as smtp:
        smtp.sendmail("a@example.org", rcpts or ["b@example.org"], message)


@pytest.fixture
def server() -> MailServer:
    with MailServer() as server:
        yield server


# -- life cycle ----------------------------------------------------------------------------


def test_two_servers_listen_on_different_free_ports() -> None:
    with MailServer() as one, MailServer() as two:
        assert one.port != two.port
        assert 0 not in (one.port, two.port)
        send(one)
        assert len(one.outbox) == 1 and len(two.outbox) == 0


def test_stop_is_idempotent_and_frees_the_port() -> None:
    server = MailServer().start()
    port = server.port
    server.stop()
    server.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises if the listener were still there
    with pytest.raises(RuntimeError, match="stopped"):
        server.start()


def test_stop_drops_an_open_session_and_the_client_sees_it() -> None:
    server = MailServer().start()
    smtp = client(server)
    smtp.ehlo()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.noop()


def test_the_hostname_is_what_it_is_told_and_no_lookup_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object) -> str:
        raise AssertionError("getfqdn called")

    monkeypatch.setattr(socket, "getfqdn", no_dns)
    with MailServer(hostname="mx.example.test") as server, client(server) as smtp:
        assert smtp.ehlo()[1].decode().splitlines()[0] == "mx.example.test"


# -- the outbox ----------------------------------------------------------------------------


def test_message_envelope_and_session_are_recorded(server: MailServer) -> None:
    with client(server) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org", "hidden@example.net"], MESSAGE, rcpt_options=["NOTIFY=NEVER"])
    (received,) = server.outbox.wait_for(1)
    assert received.rcpt_tos == ("b@example.org", "hidden@example.net")  # the Bcc recipient too
    assert "hidden@example.net" not in received.raw.decode()
    assert received.mail_params == {"SIZE": str(len(MESSAGE))}
    assert received.rcpt_params == ({"NOTIFY": "NEVER"}, {"NOTIFY": "NEVER"})
    assert received.raw == MESSAGE
    assert received.message["Subject"] == "hello"
    assert received.text == "Hi Bob\n"
    assert received.session.helo_name == "client.test"
    assert received.session.tls_version is None and received.session.authenticated_user is None


def test_filters_compare_addresses_exactly_but_domains_without_case(server: MailServer) -> None:
    send(server, ["Bob@Example.org"])
    send(server, ["carol@example.org"])
    server.outbox.wait_for(2)
    assert [m.rcpt_tos for m in server.outbox.sent_to("Bob@example.ORG")] == [("Bob@Example.org",)]
    assert server.outbox.sent_to("bob@example.org") == []  # the local part keeps its case
    assert server.outbox.sent_to("carol@example.org.uk") == []
    assert len(server.outbox.filter(mail_from="a@example.org", subject="hello")) == 2


def test_wait_for_a_predicate_returns_the_match(server: MailServer) -> None:
    send(server, ["x@example.org"])
    send(server, ["y@example.org"])
    found = server.outbox.wait_for(lambda m: m.sent_to("y@example.org"))
    assert found.rcpt_tos == ("y@example.org",)


def test_wait_for_timeout_lists_what_arrived(server: MailServer) -> None:
    send(server)
    with pytest.raises(AssertionError) as failure:
        server.outbox.wait_for(2, timeout=0.2)
    assert "waited 0.2 s for 2 messages; 1 arrived" in str(failure.value)
    assert "from <a@example.org> to <b@example.org> subject='hello'" in str(failure.value)


def test_wait_for_takes_filters_keys_and_says_what_it_waited_for(server: MailServer) -> None:
    send(server, ["x@example.org"])
    send(server, ["alice@example.org", "y@example.org"])
    (found,) = server.outbox.wait_for(rcpt_to="alice@example.org", mail_from="a@example.org", subject="hello")
    assert found.rcpt_tos == ("alice@example.org", "y@example.org")
    assert len(server.outbox.wait_for(count=2, subject="hello")) == 2
    with pytest.raises(AssertionError) as failure:
        server.outbox.wait_for(rcpt_to="bob@example.org", timeout=0.1)
    assert str(failure.value).startswith("waited 0.1 s for a message to <bob@example.org>; 2 arrived:\n  #1 from")
    with pytest.raises(AssertionError, match=r"for 2 messages from <z@example.org> with subject 'hello'; 2 arrived"):
        server.outbox.wait_for(2, mail_from="z@example.org", subject="hello", timeout=0.05)
    with pytest.raises(TypeError, match="a predicate or filter keys"):
        server.outbox.wait_for(lambda m: True, rcpt_to="x@example.org")


def test_wait_for_async_takes_the_same_keys(server: MailServer) -> None:
    send(server, ["alice@example.org"])

    async def main() -> None:
        (found,) = await server.outbox.wait_for_async(rcpt_to="alice@example.org")
        assert found.mail_from == "a@example.org"
        with pytest.raises(AssertionError, match=r"^waited 0.05 s for a message to <bob@example.org>; 1 arrived"):
            await server.outbox.wait_for_async(rcpt_to="bob@example.org", timeout=0.05)

    asyncio.run(main())


def test_rcpt_tos_equals_the_list_and_the_tuple(server: MailServer) -> None:
    send(server, ["x@example.org", "y@example.org"])
    (mail,) = server.outbox.wait_for(1)
    assert mail.rcpt_tos == ["x@example.org", "y@example.org"]
    assert ["x@example.org", "y@example.org"] == mail.rcpt_tos  # noqa: SIM300 (the list's side first)
    assert mail.rcpt_tos == ("x@example.org", "y@example.org")
    assert mail.rcpt_tos != ["y@example.org", "x@example.org"]
    assert not operator.ne(mail.rcpt_tos, ["x@example.org", "y@example.org"])
    assert hash(mail.rcpt_tos) == hash(("x@example.org", "y@example.org"))


def test_assert_no_message_is_instant_with_no_session_in_a_transaction(server: MailServer) -> None:
    send(server)
    server.outbox.wait_for(1)
    server.outbox.clear()
    with client(server) as smtp:  # a session open, but no transaction
        smtp.ehlo()
        started = time.monotonic()
        server.outbox.assert_no_message()
        server.outbox.assert_no_message(within=5)
        assert time.monotonic() - started < 0.1


def test_assert_no_message_waits_for_a_transaction_and_fails_on_its_message(server: MailServer) -> None:
    server.delay("end_of_data", 0.1)
    sender = threading.Thread(target=send, args=(server,))
    sender.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.mailbag.in_transaction() and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(AssertionError, match="expected no message, got 1"):
            server.outbox.assert_no_message(within=2)
    finally:
        sender.join(TIMEOUT)


def test_await_form_waits_while_the_client_runs_on_the_same_loop(server: MailServer) -> None:
    async def main() -> None:
        waiting = asyncio.ensure_future(server.outbox.wait_for_async(1, timeout=TIMEOUT))
        await aiosmtplib.send(MESSAGE, sender="a@example.org", recipients=["b@example.org"],
                              hostname=server.host, port=server.port, timeout=TIMEOUT)  # fmt: skip
        assert [m.rcpt_tos for m in await waiting] == [("b@example.org",)]
        with pytest.raises(AssertionError, match="for 2 message"):
            await server.outbox.wait_for_async(2, timeout=0.1)

    asyncio.run(main())


def test_a_view_sees_only_what_came_after_it_and_clears_its_faults(server: MailServer) -> None:
    send(server)
    view = server.view()
    view.fail("rcpt", 550, match="nobody@example.org")
    assert len(view.outbox) == 0
    with client(server) as smtp:
        smtp.ehlo()
        assert smtp.rcpt("nobody@example.org")[0] == 503  # no MAIL yet: the core answers first
        smtp.mail("a@example.org")
        assert smtp.rcpt("nobody@example.org")[0] == 550
        view.close()
        assert smtp.rcpt("nobody@example.org")[0] == 250


# -- failure injection ---------------------------------------------------------------------


COMMANDS = [("ehlo", "EHLO client.test"), ("mail", "MAIL FROM:<a@example.org>"), ("rcpt", "RCPT TO:<b@example.org>")]
COMMANDS += [("data", "DATA")]


@pytest.mark.parametrize("at", range(len(COMMANDS)), ids=[point for point, _ in COMMANDS])
def test_each_command_point_answers_the_injected_reply(server: MailServer, at: int) -> None:
    point, _ = COMMANDS[at]
    fault = server.fail(point, smtpwire.Reply(452, "Try later", (4, 3, 1)), times=1)  # type: ignore[arg-type]
    with client(server) as smtp:
        for _, command in COMMANDS[:at]:
            assert smtp.docmd(command)[0] == 250
        enhanced = b"4.3.1 " if point != "ehlo" else b""  # RFC 2034: enhanced codes only once EHLO said so
        assert smtp.docmd(COMMANDS[at][1]) == (452, enhanced + b"Try later")
        code, _ = smtp.docmd(COMMANDS[at][1])  # once means once
        if code == 354:
            code, _ = smtp.docmd(".")
        assert code == 250
    assert fault.hits == 1 and fault.remaining == 0


def test_connect_is_refused_with_554() -> None:
    with MailServer() as server:
        server.fail("connect")
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            client(server)
    assert refused.value.smtp_code == 554


def test_end_of_data_failure_is_not_recorded_and_once_means_once(server: MailServer) -> None:
    server.fail("end_of_data", 451, times=1)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server)
    assert refused.value.smtp_code == 451
    send(server)  # the retry goes through
    assert len(server.outbox.wait_for(1)) == 1 and len(server.outbox) == 1


def test_a_given_rcpt_is_refused_and_the_others_delivered(server: MailServer) -> None:
    server.fail("rcpt", 550, match="bob@example.org")
    with client(server) as smtp:
        refused = smtp.sendmail("a@example.org", ["alice@example.org", "bob@example.org"], MESSAGE)
    assert refused == {"bob@example.org": (550, b"5.1.0 Injected failure")}
    assert server.outbox.wait_for(1)[0].rcpt_tos == ("alice@example.org",)


def test_data_match_looks_at_every_recipient(server: MailServer) -> None:
    server.fail("data", 554, match="bob@example.org")
    send(server, ["alice@example.org"])
    with pytest.raises(smtplib.SMTPDataError):
        send(server, ["alice@example.org", "bob@example.org"])
    assert len(server.outbox.wait_for(1)) == 1


def test_seeded_probability_repeats_exactly() -> None:
    def outcomes(seed: int) -> list[int]:
        with MailServer() as server, client(server) as smtp:
            server.fail("mail", 451, probability=0.5, seed=seed)
            smtp.ehlo()
            codes = []
            for _ in range(12):
                codes.append(smtp.mail("a@example.org")[0])
                smtp.rset()
            return codes

    first = outcomes(7)
    assert first == outcomes(7)
    assert {250, 451} == set(first)


@pytest.mark.parametrize("point", ["mail", "rcpt", "end_of_data"])
def test_abrupt_disconnect_closes_without_a_reply(server: MailServer, point: str) -> None:
    server.disconnect_at(point, times=1)  # type: ignore[arg-type]
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(server)
    assert len(server.outbox) == 0
    assert "Injected disconnect" not in server.transcript  # what was queued never went out
    assert "connection dropped (injected fault)" in server.transcript
    send(server)
    server.outbox.wait_for(1)


def test_polite_disconnect_says_421(server: MailServer) -> None:
    server.disconnect_at("ehlo", abrupt=False)
    with client(server) as smtp:
        code, text = smtp.ehlo()
    assert code == 421 and b"Injected disconnect" in text


def test_delay_holds_the_reply(server: MailServer) -> None:
    server.delay("rcpt", 0.3, times=1)
    with client(server) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.org")
        started = time.monotonic()
        assert smtp.rcpt("b@example.org")[0] == 250
        assert time.monotonic() - started >= 0.3
        started = time.monotonic()
        assert smtp.rcpt("c@example.org")[0] == 250
        assert time.monotonic() - started < 0.3


def test_delay_lets_a_client_timeout_fire(server: MailServer) -> None:
    server.delay("ehlo", 1.0)
    smtp = smtplib.SMTP(server.host, server.port, timeout=0.2)
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        smtp.ehlo()
    smtp.close()


def test_bad_fault_arguments_are_refused(server: MailServer) -> None:
    with pytest.raises(ValueError, match="point must be one of"):
        server.fail("helo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nothing to match"):
        server.fail("connect", match="x")
    with pytest.raises(ValueError, match="4xx or 5xx"):
        server.fail("mail", 250)
    with pytest.raises(ValueError, match="554"):
        server.fail("connect", 450)
    with pytest.raises(ValueError, match="probability"):
        server.fail("mail", probability=1.5)


# -- TLS and AUTH ------------------------------------------------------------------------------


def test_starttls_with_the_handed_context() -> None:
    with MailServer(tls="starttls") as server, client(server) as smtp:
        assert smtp.starttls(context=server.ssl_context)[0] == 220
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        received = server.outbox.wait_for(1)[0]
    assert received.session.tls_version in ("TLSv1.2", "TLSv1.3")
    assert received.session.helo_name == "client.test" and not received.session.implicit_tls


def test_the_handed_context_refuses_other_certificates() -> None:
    with MailServer(tls="starttls") as server, client(server) as smtp, pytest.raises(ssl.SSLCertVerificationError):
        smtp.starttls(context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


def test_implicit_tls_with_the_handed_context() -> None:
    with MailServer(tls="implicit") as server:
        assert server.tls_port == server.port
        with smtplib.SMTP_SSL(server.host, server.port, context=server.ssl_context, timeout=TIMEOUT) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        received = server.outbox.wait_for(1)[0]
    assert received.session.implicit_tls and received.session.tls_version is not None


def test_both_tls_modes_and_aiosmtplib() -> None:
    async def main(server: MailServer) -> None:
        common = {"hostname": "localhost", "tls_context": server.ssl_context, "timeout": TIMEOUT}
        await aiosmtplib.send(MESSAGE, sender="a@example.org", recipients=["b@example.org"],
                              port=server.tls_port, use_tls=True, **common)  # fmt: skip
        await aiosmtplib.send(MESSAGE, sender="a@example.org", recipients=["c@example.org"],
                              port=server.port, start_tls=True, **common)  # fmt: skip

    with MailServer(tls="both") as server:
        assert server.tls_port not in (None, server.port)
        asyncio.run(main(server))
        assert [m.session.implicit_tls for m in server.outbox.wait_for(2)] == [True, False]


def test_injected_starttls_failure_is_454_then_tls_works() -> None:
    with MailServer(tls="starttls") as server, client(server) as smtp:
        server.fail("starttls", times=1)
        smtp.ehlo()
        assert smtp.has_extn("starttls")  # still advertised, as by a server whose TLS breaks
        assert smtp.docmd("STARTTLS") == (454, b"4.7.0 TLS not available")
        assert smtp.starttls(context=server.ssl_context)[0] == 220


def test_disconnect_at_starttls() -> None:
    with MailServer(tls="starttls") as server, client(server) as smtp:
        server.disconnect_at("starttls")
        smtp.ehlo()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.starttls(context=server.ssl_context)


def test_auth_users_and_the_authenticated_user_in_the_session() -> None:
    with MailServer(users={"alice": "wonderland"}, require_auth=True) as server, client(server) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = "alice", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.auth("PLAIN", smtp.auth_plain)
        with pytest.raises(smtplib.SMTPSenderRefused):
            smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        smtp.login("alice", "wonderland")
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        session = server.outbox.wait_for(1)[0].session
    assert (session.authenticated_user, session.auth_mechanism) == ("alice", "PLAIN")
    assert "wonderland" not in server.transcript


def test_injected_auth_failure_once_then_cram_md5_login() -> None:
    async def attempt(server: MailServer) -> None:
        async with aiosmtplib.SMTP(hostname=server.host, port=server.port, timeout=TIMEOUT, start_tls=False) as smtp:
            await smtp.ehlo()
            await smtp.auth_crammd5("alice", "wonderland")
            await smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)

    with MailServer(users={"alice": "wonderland"}, auth_mechanisms=("PLAIN", "CRAM-MD5")) as server:
        fault = server.fail("auth", 454, match="alice", times=1)
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            asyncio.run(attempt(server))
        assert refused.value.code == 454 and fault.hits == 1
        asyncio.run(attempt(server))
        session = server.outbox.wait_for(1)[0].session
    assert (session.authenticated_user, session.auth_mechanism) == ("alice", "CRAM-MD5")


def test_auth_offers_what_serve_offers_and_cram_md5_only_on_request() -> None:
    with MailServer(users={"alice": "wonderland"}) as server, client(server) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
    with (
        MailServer(users={"alice": "wonderland"}, auth_mechanisms=["CRAM-MD5", "PLAIN"]) as server,
        client(server) as smtp,
    ):
        smtp.ehlo()
        assert smtp.esmtp_features["auth"].split() == ["CRAM-MD5", "PLAIN"]


def test_one_wrong_password_from_smtplib_is_535_and_the_session_ends_cleanly() -> None:
    with MailServer(tls="starttls", users={"alice": "wonderland"}) as server:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused, client(server) as smtp:  # not 421 on exit
            smtp.starttls(context=server.ssl_context)
            smtp.login("alice", "wrong")
        assert refused.value.smtp_code == 535
        assert refused.value.smtp_error.startswith(b"5.7.8")
        with client(server) as smtp:  # the same client logs in on its PLAIN path
            smtp.starttls(context=server.ssl_context)
            smtp.login("alice", "wonderland")
            smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        assert server.outbox.wait_for(1)[0].session.auth_mechanism == "PLAIN"
        transcript = server.transcript
    assert "C: AUTH PLAIN [" in transcript and "S: 535 5.7.8 " in transcript and "S: 235 2.7.0 " in transcript
    assert "wonderland" not in transcript and base64.b64encode(b"\0alice\0wrong").decode() not in transcript


def test_one_wrong_password_from_aiosmtplib_is_535_and_the_session_ends_cleanly() -> None:
    async def login(server: MailServer, password: str) -> None:
        async with aiosmtplib.SMTP(
            hostname="localhost", port=server.port, tls_context=server.ssl_context, timeout=TIMEOUT
        ) as smtp:
            await smtp.login("alice", password)

    with MailServer(tls="starttls", users={"alice": "wonderland"}) as server:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            asyncio.run(login(server, "wrong"))
        assert refused.value.code == 535
        asyncio.run(login(server, "wonderland"))


def scram_login(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    code, server_first = smtp.docmd("AUTH", "SCRAM-SHA-256 " + b64(scram.get_client_first()))
    if code != 334:
        return code, server_first
    scram.set_server_first(base64.b64decode(server_first).decode())
    code, server_final = smtp.docmd(b64(scram.get_client_final()))
    if code != 334:
        return code, server_final
    scram.set_server_final(base64.b64decode(server_final).decode())
    return smtp.docmd("")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_scram_login_and_a_fault_counted_once_per_attempt() -> None:
    with MailServer(users={"alice": "wonderland"}) as server, client(server) as smtp:
        fault = server.fail("auth", 454, times=1)
        smtp.ehlo()
        assert scram_login(smtp, "alice", "wonderland") == (454, b"4.7.0 Injected failure")
        assert scram_login(smtp, "alice", "wrong")[0] == 535
        assert scram_login(smtp, "alice", "wonderland") == (235, b"2.7.0 Authentication successful")
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        session = server.outbox.wait_for(1)[0].session
    assert fault.hits == 1
    assert (session.authenticated_user, session.auth_mechanism) == ("alice", "SCRAM-SHA-256")


# -- strict mode -----------------------------------------------------------------------------


def test_strict_mode_refuses_bare_lf_even_when_the_config_accepts_it() -> None:
    lax = smtpwire.ServerConfig(bare_line_endings="accept")
    bare = b"Subject: x\r\n\r\nline one\nline two\r\n"
    with MailServer(config=lax) as server:
        send(server, message=bare)
    with MailServer(config=lax, strict=True) as server, pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, message=bare)
    assert refused.value.smtp_code == 550


def test_strict_mode_has_postfixs_message_size_limit() -> None:
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (POSTFIX_MESSAGE_SIZE_LIMIT // 1000 + 1)
    with MailServer(strict=True) as server, client(server) as smtp:
        assert f"SIZE {POSTFIX_MESSAGE_SIZE_LIMIT}" in smtp.ehlo()[1].decode()
        smtp.mail("a@example.org")
        smtp.rcpt("b@example.org")
        code, _ = smtp.data(big)
    assert code == 552
    with MailServer() as server:
        send(server, message=big)  # the default limit is larger


# -- the pytest plugin -------------------------------------------------------------------------


def test_plugin_fixture_marker_and_module_and_session_views(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def mail_server_session_options():
            return {"hostname": "session.test"}
        """
    )
    pytester.makepyfile(
        """
        import smtplib
        import pytest

        pytestmark = pytest.mark.mail_server(hostname="module.test")

        def send(server, rcpt="b@example.org"):
            with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
                smtp.sendmail("a@example.org", [rcpt], b"Subject: s\\r\\n\\r\\nbody\\r\\n")

        @pytest.mark.mail_server(users={"u": "p"}, tls="starttls")
        def test_marker(mail_server):
            assert mail_server.hostname == "module.test"
            with smtplib.SMTP(mail_server.host, mail_server.port, timeout=5) as smtp:
                smtp.starttls(context=mail_server.ssl_context)
                smtp.login("u", "p")
            mail_server.fail("mail", 451)

        def test_module_view_one(mail_server_module):
            assert mail_server_module.hostname == "module.test"
            mail_server_module.fail("mail", 451)
            send_refused = pytest.raises(smtplib.SMTPSenderRefused)
            with send_refused:
                send(mail_server_module)

        def test_module_view_two_has_a_fresh_outbox_and_no_faults(mail_server_module):
            send(mail_server_module)
            assert len(mail_server_module.outbox.wait_for(1)) == 1

        def test_session_view(mail_server_session):
            assert mail_server_session.hostname == "session.test"
            send(mail_server_session)
            assert len(mail_server_session.outbox) == 1

        def test_session_view_again(mail_server_session):
            assert len(mail_server_session.outbox) == 0

        def test_factory(mail_server_factory):
            one, two = mail_server_factory(), mail_server_factory()
            assert one.port != two.port

        @pytest.mark.mail_server(strict=True)
        def test_marker_on_a_shared_view_is_refused(mail_server_session):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, errors=1)
    result.stdout.fnmatch_lines(["*configures the mail_server fixture only; mail_server_session is shared*"])


def test_plugin_attaches_the_transcript_to_a_failing_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import smtplib

        def test_fails(mail_server):
            mail_server.fail("rcpt", 550, match="bob@example.org")
            with smtplib.SMTP(mail_server.host, mail_server.port, timeout=5) as smtp:
                smtp.sendmail("a@example.org", ["alice@example.org", "bob@example.org"], b"Subject: s\\r\\n\\r\\n")
            mail_server.outbox.wait_for(2, timeout=0.1)

        def test_passes(mail_server):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*waited 0.1 s for 2 messages; 1 arrived*",
            "*smtpwire transcript 127.0.0.1:*",
            "* C: rcpt TO:<bob@example.org>*",
            "* S: 550 5.1.0 Injected failure*",
        ]
    )
    assert result.stdout.str().count("smtpwire transcript") == 1


def test_plugin_names_the_option_a_misspelt_marker_meant_and_hides_its_own_frames(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.mail_server(user={"alice": "wonderland"})
        def test_misspelt(mail_server):
            pass

        @pytest.mark.mail_server(colour="blue")
        def test_unknown(mail_server):
            pass

        def test_waits(mail_server):
            mail_server.outbox.wait_for(rcpt_to="alice@example.org", timeout=0.1)
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.mail_server has no option 'user'; did you mean users?",
            "*@pytest.mark.mail_server has no option 'colour'; the options are hostname, host, tls, users,*",
            "E *AssertionError: waited 0.1 s for a message to <alice@example.org>; 0 arrived:",
        ]
    )
    assert "_outbox.py" not in result.stdout.str()


def test_the_transcript_folds_multiline_replies_and_cuts_long_message_data(server: MailServer) -> None:
    body = b"".join(b"line %d\r\n" % n for n in range(40))
    with client(server) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: long\r\n\r\n" + body)
        smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: short\r\n\r\nHi\r\n")
        smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: big\r\n\r\n" + body * 20)  # past 1024 bytes
    lines = [line.split(" ", 1)[1] for line in server.transcript.splitlines()]
    assert lines[2].startswith("S: 250 localhost | PIPELINING | SIZE 33554432 | 8BITMIME | ")
    first = lines.index("S: 354 End data with <CR><LF>.<CR><LF>")
    assert lines[first + 1 : first + 16] == [
        "C: Subject: long",
        "C: ",
        *(f"C: line {n}" for n in range(10)),
        "C: [... 30 more lines of message data not shown]",
        "C: .",
        "S: 250 2.0.0 OK",
    ]
    second = lines.index("S: 354 End data with <CR><LF>.<CR><LF>", first + 1)
    assert lines[second + 1 : second + 6] == ["C: Subject: short", "C: ", "C: Hi", "C: .", "S: 250 2.0.0 OK"]
    third = lines.index("S: 354 End data with <CR><LF>.<CR><LF>", second + 1)
    assert lines[third + 1] == "C: Subject: big"
    assert len(lines) - third < 20 and lines[-3:-1] == ["S: 250 2.0.0 OK", "C: QUIT"]  # the driver cut its dot


def test_plugin_starts_nothing_for_tests_that_do_not_ask(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading

        def test_no_server(request):
            assert request.config.pluginmanager.hasplugin("smtpwire")  # loaded through the entry point
            assert not [t for t in threading.enumerate() if t.name.startswith("smtpwire-testing")]
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


class UnittestUsage(unittest.TestCase):
    """The docs' unittest example: one server for the class, a fresh view per test."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = cls.enterClassContext(MailServer())

    def setUp(self) -> None:
        self.mail = self.server.view()
        self.addCleanup(self.mail.close)

    def test_sends(self) -> None:
        send(self.server)
        self.assertEqual(self.mail.outbox.wait_for(1)[0].subject, "hello")

    def test_starts_empty_and_faults_do_not_leak(self) -> None:
        self.assertEqual(len(self.mail.outbox), 0)
        self.mail.fail("mail", 451)
