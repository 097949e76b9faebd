"""smtpwire_testing's helpers on a received message, its rate limit and throttle, and its LMTP and discard modes."""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage

import pytest
from smtpwire_testing import Attachment, MailServer

TIMEOUT = 5


@pytest.fixture
def server() -> MailServer:
    with MailServer() as server:
        yield server


def deliver(server: MailServer, message: EmailMessage) -> None:
    with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=TIMEOUT) as smtp:
        smtp.send_message(message, "app@example.org", ["bob@example.org"])


def welcome(text: str, html: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "app@example.org", "bob@example.org", "Welcome"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


# -- attachments, links, codes --------------------------------------------------------------


def test_attachments_have_their_name_type_and_decoded_bytes(server: MailServer) -> None:
    message = welcome("See the invoice.")
    message.add_attachment(b"%PDF-1.7\x00\xff", maintype="application", subtype="pdf", filename="invoice.pdf")
    message.add_attachment("a,b\r\n1,2\r\n", subtype="csv", filename="rows.csv")
    deliver(server, message)
    (mail,) = server.outbox.wait_for(1)
    assert mail.attachments == [
        Attachment("invoice.pdf", "application/pdf", b"%PDF-1.7\x00\xff"),
        Attachment("rows.csv", "text/csv", b"a,b\r\n1,2\r\n"),
    ]
    assert mail.text == "See the invoice.\n"


def test_a_message_without_attachments_has_none(server: MailServer) -> None:
    deliver(server, welcome("Hi", "<p>Hi</p>"))
    assert server.outbox.wait_for(1)[0].attachments == []


def test_links_of_the_text_and_the_html_part_each_once(server: MailServer) -> None:
    text = "Confirm at https://app.example.org/confirm?t=abc&u=1. Or (see https://example.org/help)!\nmailto:x@y.z"
    html = (
        '<p><a href="https://app.example.org/confirm?t=abc&amp;u=1">Confirm</a>'
        ' <a name="top">no link</a> <a HREF=" https://example.org/unsubscribe ">stop</a></p>'
    )
    deliver(server, welcome(text, html))
    (mail,) = server.outbox.wait_for(1)
    assert mail.links == [
        "https://app.example.org/confirm?t=abc&u=1",
        "https://example.org/help",
        "mailto:x@y.z",
        "https://example.org/unsubscribe",
    ]


def test_code_returns_the_first_group_or_the_whole_match(server: MailServer) -> None:
    deliver(server, welcome("Your code: 482913 (valid 10 minutes). Not 111111."))
    (mail,) = server.outbox.wait_for(1)
    assert mail.code(r"code: (\d{6})") == "482913"
    assert mail.code(r"\d{6}") == "482913"


def test_code_searches_the_html_part_when_there_is_no_text_part(server: MailServer) -> None:
    message = welcome("unused")
    message.set_content("<p>Your code is <b>7731</b></p>", subtype="html")
    deliver(server, message)
    assert server.outbox.wait_for(1)[0].code(r"<b>(\d+)</b>") == "7731"


def test_code_without_a_match_says_what_it_searched(server: MailServer) -> None:
    deliver(server, welcome("Your code will follow in another mail."))
    (mail,) = server.outbox.wait_for(1)
    with pytest.raises(AssertionError) as failure:
        mail.code(r"code: (\d{6})")
    assert str(failure.value) == (
        "no match for 'code: (\\\\d{6})' in the text part of the message from <app@example.org> to"
        " <bob@example.org> subject='Welcome' (" + str(len(mail.raw)) + " bytes):\n"
        "Your code will follow in another mail.\n"
    )


# -- rate limit and throttle --------------------------------------------------------------


class Clock:
    """A test's own clock for ``rate_limit``: time moves when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send_raw(server: MailServer, data: bytes = b"Subject: hi\r\n\r\nHi\r\n") -> None:
    with smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=TIMEOUT) as smtp:
        smtp.sendmail("app@example.org", ["bob@example.org"], data)


def test_rate_limit_answers_421_past_n_messages_until_the_interval_passed(server: MailServer) -> None:
    clock = Clock()
    limit = server.rate_limit(2, per=60, clock=clock)
    send_raw(server)
    send_raw(server)
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        send_raw(server)
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error.startswith(b"4.7.0 ")
    clock.now += 59.9
    with pytest.raises(smtplib.SMTPSenderRefused):
        send_raw(server)
    clock.now += 0.1  # the first message left the window: one more may go
    send_raw(server)
    assert len(server.outbox) == 3 and limit.hits == 2
    assert "S: 421 4.7.0 Error: too many messages, try again later" in server.transcript


def test_rate_limit_with_a_real_short_interval_and_lifted_with_the_faults(server: MailServer) -> None:
    server.rate_limit(1, per=0.2)
    send_raw(server)
    with pytest.raises(smtplib.SMTPSenderRefused):
        send_raw(server)
    time.sleep(0.25)
    send_raw(server)
    server.clear_faults()
    send_raw(server)
    assert len(server.outbox) == 3


def test_bad_rate_limit_and_throttle_arguments_are_refused(server: MailServer) -> None:
    for messages in (-1, True):
        with pytest.raises(ValueError, match="messages must be an integer"):
            server.rate_limit(messages, 1.0)
    with pytest.raises(ValueError, match="per must be a positive number"):
        server.rate_limit(1, 0)
    with pytest.raises(ValueError, match="bytes_per_second"):
        server.throttle(0)


def timed_send(server: MailServer, data: bytes) -> float:
    started = time.monotonic()
    send_raw(server, data)
    return time.monotonic() - started


def test_throttle_paces_the_reads_and_the_message_arrives_whole(server: MailServer) -> None:
    data = b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" + b"y" * 78 * 60 + b"\r\n"  # about 5 kB
    fast = timed_send(server, data)
    server.throttle(10_000)
    slow = timed_send(server, data)
    server.clear_faults()
    again = timed_send(server, data)
    assert slow >= 0.45 and fast < 0.25 and again < 0.25, (fast, slow, again)
    assert [mail.raw for mail in server.outbox] == [data] * 3


def test_throttle_paces_an_implicit_tls_port_too() -> None:
    data = b"Subject: big\r\n\r\n" + (b"z" * 78 + b"\r\n") * 60
    with MailServer(tls="implicit") as server:
        server.throttle(10_000)
        started = time.monotonic()
        with smtplib.SMTP_SSL(server.host, server.port, context=server.ssl_context, timeout=TIMEOUT) as smtp:
            smtp.sendmail("app@example.org", ["bob@example.org"], data)
        assert time.monotonic() - started >= 0.45
        assert server.outbox.wait_for(1)[0].raw == data


# -- LMTP and discard -----------------------------------------------------------------------


def lmtp_client(server: MailServer) -> smtplib.LMTP:
    return smtplib.LMTP(server.host, server.port, local_hostname="mta.test", timeout=TIMEOUT)


def test_smtplib_lmtp_delivers_one_recipient_with_sendmail() -> None:
    with MailServer(lmtp=True) as server, lmtp_client(server) as lmtp:
        assert lmtp.sendmail("app@example.org", ["bob@example.org"], b"Subject: x\r\n\r\nHi\r\n") == {}
        assert [mail.rcpt_tos for mail in server.outbox] == [("bob@example.org",)]
        assert "S: 220 localhost LMTP smtpwire" in server.transcript and "C: lhlo mta.test" in server.transcript


def test_lmtp_answers_each_recipient_and_keeps_a_copy_for_each() -> None:
    """smtplib.LMTP's ``sendmail`` reads only the first of LMTP's replies after the data: read them one by one."""
    with MailServer(lmtp=True) as server, lmtp_client(server) as lmtp:
        server.fail("end_of_data", 452, match="carol@example.org")
        lmtp.ehlo()
        lmtp.mail("app@example.org")
        for rcpt in ("bob@example.org", "carol@example.org", "dan@example.org"):
            assert lmtp.rcpt(rcpt)[0] == 250
        assert lmtp.data(b"Hi\r\n") == (250, b"2.0.0 OK")  # bob
        assert lmtp.getreply() == (452, b"4.0.0 Injected failure")  # carol
        assert lmtp.getreply() == (250, b"2.0.0 OK")  # dan
        assert [mail.rcpt_tos for mail in server.outbox] == [("bob@example.org",), ("dan@example.org",)]
        assert [mail.raw for mail in server.outbox] == [b"Hi\r\n"] * 2


def test_discard_answers_250_and_keeps_nothing() -> None:
    with MailServer(discard=True) as server:
        with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            smtp.mail("app@example.org")
            smtp.rcpt("bob@example.org")
            assert smtp.data(b"Subject: x\r\n\r\nHi\r\n")[0] == 250
        server.outbox.assert_no_message(within=0)
        assert "S: 250 2.0.0 OK" in server.transcript


# -- DKIM -----------------------------------------------------------------------------------

SIGNED_PART = b"From: app@example.org\r\nTo: bob@example.org\r\nSubject: Welcome\r\n\r\nHi Bob\r\n"


def rsa_keys() -> tuple[bytes, str]:
    """A fresh RSA key: the private key as PKCS#8 PEM (what dkimpy signs with), the public key as PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public.decode()


def signed(message: bytes, private: bytes) -> bytes:
    import dkim  # dkimpy, of the testing extra

    return (
        bytes(dkim.sign(message, b"mail", b"example.org", private, include_headers=[b"from", b"to", b"subject"]))
        + message
    )


def test_assert_dkim_verifies_with_the_public_key_and_no_dns(
    server: MailServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = rsa_keys()
    monkeypatch.setattr("dns.resolver.resolve", lambda *args, **kwargs: pytest.fail("a DNS lookup"))
    send_raw(server, signed(SIGNED_PART, private))
    (mail,) = server.outbox.wait_for(1)
    mail.assert_dkim(public_key=public)
    record = "v=DKIM1; k=rsa; p=" + "".join(public.splitlines()[1:-1])
    mail.assert_dkim(public_key=record)


def test_assert_dkim_fails_with_another_key_a_changed_body_or_no_signature(server: MailServer) -> None:
    private, _ = rsa_keys()
    _, other = rsa_keys()
    send_raw(server, signed(SIGNED_PART, private))
    send_raw(server, signed(SIGNED_PART, private).replace(b"Hi Bob", b"Hi Eve"))
    send_raw(server, SIGNED_PART)
    signed_mail, changed, unsigned = server.outbox.wait_for(3)
    with pytest.raises(AssertionError, match=r"DKIM signature of the message from <app@example.org>.* does not verify"):
        signed_mail.assert_dkim(public_key=other)
    with pytest.raises(AssertionError, match="body hash mismatch"):
        changed.assert_dkim(public_key=other)
    with pytest.raises(AssertionError, match=r"no DKIM-Signature in the message from <app@example\.org>"):
        unsigned.assert_dkim(public_key=other)
