"""HTTP delivery: the payload, its Standard Webhooks signature, the poster's outcomes, and the sync-mode stores.

The endpoint is pytest-httpserver's real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook, WebhookVerificationError
from werkzeug import Request, Response

import smtpwire
from smtpwire import AuthCredentials
from smtpwire_handler import Envelope, ServerOptions, Session, TLSInfo
from smtpwire_handler._http_delivery import (
    DeliveryResult,
    HttpEndpoint,
    HttpPoster,
    classify,
    load_webhook_secret,
    sign,
)
from smtpwire_handler._http_payload import delivery_payload, new_message_id, parsed_headers
from smtpwire_handler._http_store import AsyncHttpStore, HttpStore
from smtpwire_verify import SPFResult, Verdict
from tests import certs
from tests.servers import running

TIMEOUT = 10.0
KEY = b"a webhook key of thirty-two byte"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
SENDER = "alice@example.com"
TO = "bob@example.net"
BCC = "carol@example.org"
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= =?utf-8?q?_=C3=A0_la?=\r\n"
    b"  carte\r\n"
    b"X-Eight-Bit: na\xc3\xafve \xff\r\n"
    b"\r\n"
    b".a line that was dot-stuffed\r\n"
    b"binary \x00\x80\xfe and trailing space   \r\n"
)
STORES = ("asyncio", "anyio-trio", "blocking")


class AuthorizingAsync(AsyncHttpStore):
    def authenticate(self, session: Session, credentials: AuthCredentials) -> bool:
        return credentials.password == "pw"


class AuthorizingSync(HttpStore):
    def authenticate(self, session: Session, credentials: AuthCredentials) -> bool:
        return credentials.password == "pw"


def store(kind: str, endpoint: HttpEndpoint) -> AsyncHttpStore | HttpStore:
    poster = HttpPoster(endpoint)
    return AuthorizingSync(poster) if kind == "blocking" else AuthorizingAsync(poster)


@contextlib.contextmanager
def smtp_server(kind: str, endpoint: HttpEndpoint) -> Iterator[tuple[str, int]]:
    config = smtpwire.ServerConfig(
        hostname="mx.test",
        extensions=(*smtpwire.STANDARD_EXTENSIONS, smtpwire.Dsn(), smtpwire.Auth(["PLAIN"], require_tls=False)),
    )
    with running(kind, store(kind, endpoint), ServerOptions(config=config)) as server:
        yield server.address


def end_of_data(address: tuple[str, int], message: bytes = MESSAGE) -> tuple[int, bytes]:
    """The server's reply to the end of the message."""
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        client.mail(SENDER)
        client.rcpt(TO)
        reply = client.data(message)
    return reply


def endpoint(server: HTTPServer, path: str = "/mail", **options: Any) -> HttpEndpoint:
    return HttpEndpoint(server.url_for(path), secret=options.pop("secret", KEY), **options)


def verified(request: Request) -> Any:
    """The request's JSON body, once its Standard Webhooks signature checked out."""
    return Webhook(SECRET).verify(request.get_data(), dict(request.headers))


def post(poster: HttpPoster, payload: bytes = b"{}", backend: str = "asyncio") -> DeliveryResult:
    async def attempt() -> DeliveryResult:
        try:
            return await poster.post(new_message_id(), payload)
        finally:
            await poster.aclose()

    return anyio.run(attempt, backend=backend)


# The payload


@pytest.mark.parametrize("kind", STORES)
def test_the_payload_has_the_envelope_session_headers_and_the_raw_message(
    kind: str, httpserver_ipv4: HTTPServer
) -> None:
    httpserver_ipv4.expect_ordered_request("/mail", method="POST").respond_with_data("ok")
    with smtp_server(kind, endpoint(httpserver_ipv4)) as address, smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        client.login("tim", "pw")
        refused = client.sendmail(SENDER, [TO, BCC], MESSAGE, ["BODY=8BITMIME"], ["NOTIFY=SUCCESS,FAILURE"])
        assert client.sock is not None
        local_port = client.sock.getsockname()[1]
    assert refused == {}
    httpserver_ipv4.check_assertions()
    request, _ = httpserver_ipv4.log[0]
    body = verified(request)
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["webhook-id"] == body["id"] and body["id"].startswith("msg_")
    assert base64.b64decode(body["raw"]) == MESSAGE
    assert body["envelope"] == {
        "mail_from": SENDER,
        "mail_params": {"BODY": "8BITMIME", "SIZE": str(len(MESSAGE))},
        "rcpt_to": [TO, BCC],
        "rcpt_params": [{"NOTIFY": "SUCCESS,FAILURE"}] * 2,
    }
    assert body["session"] == {
        "client": {"address": "127.0.0.1", "port": local_port, "name": None},
        "helo": "client.test",
        "tls": None,
        "authenticated": "tim",
    }
    assert body["headers"] == [
        ["From", "Alice <alice@example.com>"],
        ["To", TO],
        ["Subject", "café à la  carte"],
        ["X-Eight-Bit", "naïve \ufffd"],
    ]
    assert body["version"] == 1 and body["authentication"] is None
    assert abs(time.time() - _epoch(body["received_at"])) < 30
    assert request.get_data() == json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_the_payload_has_tls_and_the_sender_authentication_results() -> None:
    conn = smtpwire.ServerConnection(smtpwire.ServerConfig(hostname="mx.test"))
    session = Session(conn, peer=("192.0.2.1", 2525), tls=TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128))
    envelope = Envelope("", {}, [TO])
    envelope.authentication = Verdict(spf=SPFResult("softfail", "helo", "", "helo.example", reason="mechanism ~all"))
    body = json.loads(delivery_payload(session, envelope, b"", "msg_1", received_at=1_800_000_000.25))
    assert body["received_at"] == "2027-01-15T08:00:00.250Z"
    assert body["session"]["tls"] == {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256"}
    assert body["session"]["client"] == {"address": "192.0.2.1", "port": 2525, "name": None}
    assert body["authentication"] == {
        "results": [
            {
                "method": "spf",
                "result": "softfail",
                "reason": "mechanism ~all",
                "properties": [["smtp.helo", "helo.example"]],
            }
        ],
        "header": envelope.authentication.header("mx.test").decode(),
    }
    assert body["envelope"]["mail_from"] == "" and body["headers"] == [] and body["raw"] == ""


def test_the_payload_carries_the_authentication_field_written_on_the_message() -> None:
    """With --authserv-id the field on the message names it, not the hostname: the payload says the same."""
    session = Session(smtpwire.ServerConnection(smtpwire.ServerConfig(hostname="mx.test")), peer=("192.0.2.1", 2525))
    envelope = Envelope("a@example.org", {}, [TO])
    envelope.authentication = Verdict(spf=SPFResult("pass", "mailfrom", "a@example.org", "example.org"))
    envelope.authentication_field = envelope.authentication.header("auth.example")
    body = json.loads(delivery_payload(session, envelope, b"", "msg_1"))
    assert body["authentication"]["header"].startswith("Authentication-Results: auth.example;\r\n")


def test_headers_are_unfolded_and_decoded_and_what_does_not_decode_is_kept() -> None:
    message = (
        b"A: =?utf-8?q?one?=\r\n =?utf-8?q?_two?= three =?utf-8?q?four?=\r\n"
        b"B: =?x-no-such-charset?q?abc?= =?utf-8?b?####?= =?zlib?q?x?=\r\n"
        b"C: \xe2\x82\xac raw UTF-8, =?iso-8859-1?q?caf=E9?=\r\n"
        b"D:\r\n"
        b"\r\n"
        b"E: in the body\r\n"
    )
    assert parsed_headers(message) == [
        ["A", "one two three four"],
        ["B", "=?x-no-such-charset?q?abc?= =?utf-8?b?####?= =?zlib?q?x?="],
        ["C", "€ raw UTF-8, café"],
        ["D", ""],
    ]
    assert parsed_headers(b"") == [] and parsed_headers(b"\r\nSubject: body\r\n") == []
    assert parsed_headers(b"Subject: no body") == [["Subject", "no body"]]


def test_headers_are_bounded_in_count_size_and_time() -> None:
    many = b"".join(b"X-%d: v\r\n" % n for n in range(5000)) + b"\r\nbody\r\n"
    assert [name for name, _ in parsed_headers(many)] == [f"X-{n}" for n in range(1000)]
    huge = b"To: " + b"a" * 2_000_000 + b"\r\nSubject: after\r\n\r\n"
    started = time.monotonic()
    hostile = [
        b"To: " + b'"' * 64000 + b"\r\n\r\n",
        b"To: " + b"=?" * 100_000 + b"\r\n\r\n",
        b"Subject: " + b"=?utf-8?q?a?= " * 15_000 + b"\r\n\r\n",
        huge,
    ]
    results = [parsed_headers(message) for message in hostile]
    assert time.monotonic() - started < 5
    assert results[2] == [["Subject", "a" * 15_000 + " "]]
    assert results[3] == []  # a header section over 256 KiB in one line is not read at all


# Signatures and secrets


def test_the_signature_verifies_with_standardwebhooks_and_nothing_else_does() -> None:
    now = time.time()
    headers = sign(KEY, "msg_1", now, b'{"a":1}')
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(int(now))
    assert Webhook(SECRET).verify(b'{"a":1}', headers) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another key").decode()).verify(b'{"a":1}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"a":1}', sign(KEY, "msg_1", now - 3600, b'{"a":1}'))


def test_a_webhook_secret_file_is_read_or_refused_clearly(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text(SECRET + "\n")
    assert load_webhook_secret(good) == KEY
    for content, complaint in [
        (base64.b64encode(KEY), "starts with 'whsec_'"),
        (b"whsec_not base64!", "not valid base64"),
        (b"whsec_", "empty"),
        (b"whsec_\xff", "ASCII"),
        (b"whsec_" + b"A" * 5000, "too long"),
    ]:
        bad = tmp_path / "bad"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=complaint) as error:
            load_webhook_secret(bad)
        assert str(bad) in str(error.value)
    with pytest.raises(FileNotFoundError):
        load_webhook_secret(tmp_path / "missing")


def test_an_endpoint_is_checked() -> None:
    for url in ("ftp://example.com/", "example.com/mail", "https:///path", "file:///etc/passwd"):
        with pytest.raises(ValueError, match="http:// or https://"):
            HttpEndpoint(url)
    with pytest.raises(ValueError, match="empty"):
        HttpEndpoint("https://example.com/", secret=b"")
    with pytest.raises(ValueError, match="timeout"):
        HttpEndpoint("https://example.com/", timeout=0)
    with pytest.raises(ValueError, match="concurrency"):
        HttpEndpoint("https://example.com/", concurrency=0)
    assert KEY not in repr(HttpEndpoint("https://example.com/", secret=KEY)).encode()


def test_statuses_are_classified() -> None:
    assert [classify(s) for s in (200, 202, 204, 299)] == ["delivered"] * 4
    assert [classify(s) for s in (400, 403, 404, 410, 413, 422)] == ["permanent"] * 6
    assert [classify(s) for s in (300, 303, 401, 408, 409, 429, 500, 502, 503, 504)] == ["temporary"] * 10


# The poster


def test_without_a_secret_requests_carry_the_id_but_no_signature(httpserver_ipv4: HTTPServer) -> None:
    httpserver_ipv4.expect_ordered_request("/mail", method="POST").respond_with_data("", status=204)
    result = post(HttpPoster(endpoint(httpserver_ipv4, secret=None)))
    assert result == DeliveryResult("delivered", 204, "HTTP 204 No Content")
    request, _ = httpserver_ipv4.log[0]
    assert request.headers["webhook-id"].startswith("msg_") and "webhook-signature" not in request.headers


def test_a_failure_detail_is_one_short_line(httpserver_ipv4: HTTPServer) -> None:
    httpserver_ipv4.expect_ordered_request("/mail").respond_with_data("stack\ntrace\x1b[31m " * 1000, status=500)
    result = post(HttpPoster(endpoint(httpserver_ipv4)))
    assert result.outcome == "temporary" and result.status == 500
    assert result.detail.startswith("HTTP 500 Internal Server Error: stack trace [31m stack")
    assert (
        len(result.detail) == 200
        and result.detail.endswith("…")
        and "\n" not in result.detail
        and "\x1b" not in result.detail
    )


def test_no_connection_is_a_temporary_failure() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    poster = HttpPoster(HttpEndpoint(f"http://127.0.0.1:{port}/mail", timeout=5))
    for result in (post(poster), poster.post_sync("msg_1", b"{}")):
        assert result.outcome == "temporary" and result.status is None
        assert result.detail.startswith("ConnectError: ")


def test_a_redirect_to_the_same_origin_is_followed_with_the_same_signed_body(httpserver_ipv4: HTTPServer) -> None:
    new = httpserver_ipv4.url_for("/newer")
    for _ in range(2):  # once by the async client, once by the blocking one
        httpserver_ipv4.expect_ordered_request("/old").respond_with_data("", status=307, headers={"Location": "/new"})
        httpserver_ipv4.expect_ordered_request("/new").respond_with_data("", status=308, headers={"Location": new})
        httpserver_ipv4.expect_ordered_request("/newer", method="POST").respond_with_data("ok")
    poster = HttpPoster(endpoint(httpserver_ipv4, "/old"))
    assert post(poster, b'{"n":1}').outcome == "delivered"
    assert poster.post_sync("msg_2", b'{"n":2}').outcome == "delivered"  # the blocking client's turn
    poster.close()
    httpserver_ipv4.check_assertions()
    assert all(verified(request) == {"n": 1} for request, _ in httpserver_ipv4.log[:3])
    assert httpserver_ipv4.log[5][0].headers["webhook-id"] == "msg_2" and verified(httpserver_ipv4.log[5][0]) == {
        "n": 2
    }


@pytest.mark.parametrize("blocking", [False, True])
def test_a_redirect_to_another_host_is_refused_and_not_followed(httpserver_ipv4: HTTPServer, blocking: bool) -> None:
    elsewhere = f"http://localhost:{httpserver_ipv4.port}/elsewhere"
    httpserver_ipv4.expect_request("/mail").respond_with_data("", status=302, headers={"Location": elsewhere})
    poster = HttpPoster(endpoint(httpserver_ipv4))
    result = poster.post_sync("msg_1", b"{}") if blocking else post(poster)
    assert result == DeliveryResult(
        "permanent", 302, f"redirected to another host (http://localhost:{httpserver_ipv4.port}): refused"
    )
    assert [request.path for request, _ in httpserver_ipv4.log] == ["/mail"]


def test_redirects_are_followed_three_times_at_most(httpserver_ipv4: HTTPServer) -> None:
    httpserver_ipv4.expect_request("/loop").respond_with_data("", status=301, headers={"Location": "/loop"})
    result = post(HttpPoster(endpoint(httpserver_ipv4, "/loop")))
    assert result == DeliveryResult("permanent", 301, "more than 3 redirects")
    assert len(httpserver_ipv4.log) == 4


def test_posts_on_trio_and_in_a_new_event_loop_each_time(httpserver_ipv4: HTTPServer) -> None:
    httpserver_ipv4.expect_request("/mail").respond_with_data("ok")
    poster = HttpPoster(endpoint(httpserver_ipv4))

    async def twice() -> list[str]:
        return [(await poster.post(new_message_id(), b"{}")).outcome for _ in range(2)]

    assert anyio.run(twice, backend="trio") == ["delivered"] * 2
    assert anyio.run(twice, backend="asyncio") == ["delivered"] * 2  # another loop: another client
    assert post(poster, backend="trio").outcome == "delivered"
    assert len(httpserver_ipv4.log) == 5


def test_requests_open_at_once_are_bounded_per_endpoint() -> None:
    lock, open_now, most = threading.Lock(), [0], [0]

    def slow(request: Request) -> Response:
        with lock:
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])
        time.sleep(0.15)
        with lock:
            open_now[0] -= 1
        return Response("ok")

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.expect_request("/mail").respond_with_handler(slow)
    server.start()
    try:
        poster = HttpPoster(endpoint(server, concurrency=2))

        async def six() -> None:
            async with anyio.create_task_group() as group:
                for _ in range(6):
                    group.start_soon(poster.post, new_message_id(), b"{}")
            await poster.aclose()

        anyio.run(six)
        threads = [threading.Thread(target=poster.post_sync, args=(new_message_id(), b"{}")) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=TIMEOUT)
        poster.close()
        assert len(server.log) == 12 and most[0] == 2
    finally:
        server.clear()
        server.stop()


# The stores, through a real SMTP server


@pytest.mark.parametrize("kind", STORES)
def test_500_500_200_is_451_451_250(kind: str, httpserver_ipv4: HTTPServer) -> None:
    for status in (500, 500, 200):
        httpserver_ipv4.expect_ordered_request("/mail", method="POST").respond_with_data("boom", status=status)
    with smtp_server(kind, endpoint(httpserver_ipv4)) as address:
        replies = [end_of_data(address) for _ in range(3)]
    assert replies == [(451, b"4.4.1 Delivery is not possible right now; try again later")] * 2 + [(250, b"2.0.0 OK")]
    httpserver_ipv4.check_assertions()
    ids = [verified(request)["id"] for request, _ in httpserver_ipv4.log]
    assert len(set(ids)) == 3  # each SMTP attempt is a new message


@pytest.mark.parametrize("kind", STORES)
def test_403_is_554_without_the_endpoints_words(kind: str, httpserver_ipv4: HTTPServer) -> None:
    httpserver_ipv4.expect_ordered_request("/mail").respond_with_data("internal tenant 42 forbidden", status=403)
    with smtp_server(kind, endpoint(httpserver_ipv4)) as address:
        assert end_of_data(address) == (554, b"5.6.0 The message was not accepted for delivery")


@pytest.mark.parametrize("kind", STORES)
def test_an_endpoint_that_does_not_answer_in_time_is_451(kind: str, httpserver_ipv4: HTTPServer) -> None:
    release = threading.Event()

    def stuck(request: Request) -> Response:
        release.wait(TIMEOUT)
        return Response("too late")

    httpserver_ipv4.expect_ordered_request("/mail").respond_with_handler(stuck)
    try:
        with smtp_server(kind, endpoint(httpserver_ipv4, timeout=0.5)) as address:
            started = time.monotonic()
            assert end_of_data(address)[0] == 451
            assert time.monotonic() - started < 3
    finally:
        release.set()


@pytest.fixture(scope="module")
def https_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=certs.server_context())
    server.start()
    yield server
    server.clear()
    server.stop()


def test_an_https_endpoint_is_verified_against_the_ca_it_is_given(https_server: HTTPServer, tmp_path: Path) -> None:
    https_server.expect_request("/mail", method="POST").respond_with_data("ok")
    trusted = endpoint(https_server, ca_file=certs.write_ca(str(tmp_path)))
    assert trusted.url.startswith("https://127.0.0.1:")
    with smtp_server("asyncio", trusted) as address:
        assert end_of_data(address)[0] == 250
    with smtp_server("asyncio", endpoint(https_server)) as address:  # the system's CAs do not know the test CA
        assert end_of_data(address)[0] == 451
    failed = HttpPoster(endpoint(https_server)).post_sync("msg_1", b"{}")
    assert failed.outcome == "temporary" and "CERTIFICATE_VERIFY_FAILED" in failed.detail
    assert len(https_server.log) == 1
    https_server.clear()
