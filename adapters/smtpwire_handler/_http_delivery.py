"""POSTing a message's payload to an application: signed, bounded, verified, and classified.

``HttpPoster`` makes one delivery attempt and says what came of it
(``DeliveryResult``): delivered, a temporary failure worth retrying, or a
permanent refusal.  What to do with that (answer the SMTP client, retry from
a spool) is its caller's business.  Requests are signed per the Standard
Webhooks specification (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``), so the receiving application can check that the
body came from here, unchanged, recently.

Needs the ``http`` extra (httpx, standardwebhooks), imported when a poster
is made, so the handler package itself does not.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

import smtpwire

if TYPE_CHECKING:
    import anyio
    import httpx

Outcome: TypeAlias = Literal["delivered", "temporary", "permanent"]
#: Endpoint answers that retrying will not change (the issue's list); every other failure is temporary.
PERMANENT_STATUSES = frozenset({400, 403, 404, 410, 413, 422})
#: Answers that send the POST elsewhere; followed only to the endpoint's own scheme, host and port.
REDIRECT_STATUSES = frozenset({301, 302, 307, 308})
MAX_REDIRECTS = 3
#: How much of a response body is read (enough for the connection to be reused), and how much is shown.
MAX_BODY_READ = 64 * 1024
MAX_DETAIL = 200
SECRET_PREFIX = "whsec_"
C = TypeVar("C")
_MAX_SECRET_FILE = 4096
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\s]+")


@dataclass(frozen=True)
class HttpEndpoint:
    """Where and how to POST: the URL (http or https), the signing key, and the bounds.

    ``secret`` is the raw key (``load_webhook_secret`` reads the ``whsec_``
    form); without one, requests carry ``webhook-id`` and
    ``webhook-timestamp`` but no signature.  ``timeout`` bounds one attempt
    (redirects included), ``concurrency`` the requests open at once to this
    endpoint.  ``ca_file`` is a PEM bundle to trust instead of the system's.
    """

    url: str
    secret: bytes | None = field(default=None, repr=False)
    timeout: float = 30.0
    concurrency: int = 10
    ca_file: str | None = None
    user_agent: str = f"smtpwire/{smtpwire.__version__}"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the delivery URL must be http:// or https:// with a host, not {self.url!r}")
        if self.secret is not None and not self.secret:
            raise ValueError("the webhook secret is empty")
        if not self.timeout > 0:
            raise ValueError(f"the delivery timeout must be positive, not {self.timeout!r}")
        if self.concurrency < 1:
            raise ValueError(f"the delivery concurrency must be at least 1, not {self.concurrency!r}")


def load_webhook_secret(path: str | Path) -> bytes:
    """The key in a Standard Webhooks secret file: one line, ``whsec_`` and base64.

    ``OSError`` if the file cannot be read, ``ValueError`` (naming the file,
    never showing the key) if it does not hold such a secret.
    """
    with open(path, "rb") as file:
        content = file.read(_MAX_SECRET_FILE + 1)
    if len(content) > _MAX_SECRET_FILE:
        raise ValueError(f"{path}: too long for a webhook secret (whsec_ and base64)")
    try:
        text = content.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: a webhook secret is ASCII text (whsec_ and base64)") from None
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"{path}: a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError(f"{path}: the webhook secret after {SECRET_PREFIX!r} is not valid base64") from None
    if not key:
        raise ValueError(f"{path}: the webhook secret is empty")
    return key


def sign(secret: bytes, message_id: str, timestamp: float, payload: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for ``payload`` sent as ``message_id`` at ``timestamp`` (seconds)."""
    from standardwebhooks import Webhook

    moment = datetime.fromtimestamp(int(timestamp), UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": Webhook(secret).sign(message_id, moment, payload),
    }


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery attempt came to; ``status`` is the endpoint's final HTTP status, if it answered.

    ``detail`` is for logs and the spool's records, never for the SMTP
    client: short, one line, at most the first 200 characters of the body.
    """

    outcome: Outcome
    status: int | None
    detail: str


def classify(status: int) -> Outcome:
    """2xx delivered; 400, 403, 404, 410, 413, 422 permanent; anything else (429, 5xx, 3xx) temporary."""
    if 200 <= status < 300:
        return "delivered"
    return "permanent" if status in PERMANENT_STATUSES else "temporary"


class HttpPoster:
    """POSTs payloads to one ``HttpEndpoint``, on asyncio or trio (``post``) or from threads (``post_sync``).

    The async client is made at the first ``post`` in an event loop (a new
    one if a later ``post`` runs in another loop), the blocking one at the
    first ``post_sync``; each keeps its connections open between messages.
    ``clock`` gives the signature's timestamp.
    """

    def __init__(self, endpoint: HttpEndpoint, clock: Callable[[], float] = time.time) -> None:
        try:
            import httpx
            import standardwebhooks  # noqa: F401  (said now, not at the first message)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "HTTP delivery needs httpx and standardwebhooks: install smtpwire[http]"
            ) from error
        self.endpoint = endpoint
        self.clock = clock
        try:
            self._url = httpx.URL(endpoint.url)
        except httpx.InvalidURL as error:
            raise ValueError(f"the delivery URL {endpoint.url!r} is not valid: {error}") from None
        #: The system's trust store (not certifi's, httpx's default), or only ``ca_file``'s; read once, here.
        self._tls = ssl.create_default_context(cafile=endpoint.ca_file)
        self._async: tuple[object, httpx.AsyncClient, anyio.CapacityLimiter] | None = None
        self._sync: httpx.Client | None = None
        self._sync_lock = threading.Lock()
        self._sync_slots = threading.BoundedSemaphore(endpoint.concurrency)
        self._observers: list[Callable[[DeliveryResult], None]] = []

    async def post(self, message_id: str, payload: bytes) -> DeliveryResult:
        """One attempt: the signed POST, redirects to the same origin followed, within ``endpoint.timeout``.

        Waiting for a turn among the ``endpoint.concurrency`` requests open
        at once comes first, outside the timeout.
        """
        import anyio

        client, limiter = self._async_client()
        headers = self._headers(message_id, payload)
        async with limiter:
            with anyio.move_on_after(self.endpoint.timeout):
                return self._seen(await self._post_following(client, headers, payload))
        return self._seen(self._timed_out())

    async def _post_following(
        self, client: httpx.AsyncClient, headers: dict[str, str], payload: bytes
    ) -> DeliveryResult:
        import httpx

        url, hops = self._url, 0
        while True:
            try:
                async with client.stream("POST", url, content=payload, headers=headers) as response:
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) >= MAX_BODY_READ:
                            break
            except httpx.TimeoutException:
                return self._timed_out()
            except httpx.TransportError as error:
                return _unreachable(error)
            step = self._after(response, bytes(body), url, hops)
            if isinstance(step, DeliveryResult):
                return step
            url, hops = step, hops + 1

    def post_sync(self, message_id: str, payload: bytes) -> DeliveryResult:
        """``post`` for a thread of the blocking adapter, with a blocking client."""
        client = self._sync_client()
        headers = self._headers(message_id, payload)
        with self._sync_slots:
            return self._seen(
                self._post_following_sync(client, headers, payload, time.monotonic() + self.endpoint.timeout)
            )

    def observe(self, observer: Callable[[DeliveryResult], None]) -> None:
        """Have ``observer`` told each attempt's result (metrics count them)."""
        self._observers.append(observer)

    def _seen(self, result: DeliveryResult) -> DeliveryResult:
        for observer in self._observers:
            observer(result)
        return result

    def _post_following_sync(
        self, client: httpx.Client, headers: dict[str, str], payload: bytes, deadline: float
    ) -> DeliveryResult:
        import httpx

        url, hops = self._url, 0
        while True:
            try:
                with client.stream("POST", url, content=payload, headers=headers, timeout=_left(deadline)) as response:
                    body = bytearray()
                    for chunk in response.iter_raw():
                        body += chunk
                        if len(body) >= MAX_BODY_READ or time.monotonic() > deadline:
                            break
            except (httpx.TimeoutException, _OutOfTime):
                return self._timed_out()
            except httpx.TransportError as error:
                return _unreachable(error)
            step = self._after(response, bytes(body), url, hops)
            if isinstance(step, DeliveryResult):
                return step
            url, hops = step, hops + 1

    async def aclose(self) -> None:
        """Close the clients and their connections (the poster makes new ones if used again)."""
        import anyio.lowlevel

        current, self._async = self._async, None
        if current is not None and current[0] == anyio.lowlevel.current_token():  # another loop's is gone with it
            await current[1].aclose()
        self.close()

    def close(self) -> None:
        """Close the blocking client, if ``post_sync`` made one."""
        with self._sync_lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    def _async_client(self) -> tuple[httpx.AsyncClient, anyio.CapacityLimiter]:
        """This event loop's client and limiter, made at its first post."""
        import anyio.lowlevel
        import httpx

        loop = anyio.lowlevel.current_token()
        if self._async is None or self._async[0] != loop:  # a client's connections belong to one loop
            client = self._new_client(httpx.AsyncClient)
            self._async = (loop, client, anyio.CapacityLimiter(self.endpoint.concurrency))
        return self._async[1], self._async[2]

    def _sync_client(self) -> httpx.Client:
        import httpx

        with self._sync_lock:
            if self._sync is None:
                self._sync = self._new_client(httpx.Client)
            return self._sync

    def _new_client(self, kind: Callable[..., C]) -> C:
        """An ``httpx.Client`` or ``httpx.AsyncClient`` for the endpoint."""
        import httpx

        e = self.endpoint
        return kind(
            verify=self._tls,
            timeout=httpx.Timeout(e.timeout),
            limits=httpx.Limits(max_connections=e.concurrency, max_keepalive_connections=e.concurrency),
            follow_redirects=False,  # followed here, only to the same origin
            trust_env=False,  # no proxy or CA from the environment changes where mail goes
        )

    def _headers(self, message_id: str, payload: bytes) -> dict[str, str]:
        now = self.clock()
        e = self.endpoint
        signed = (
            sign(e.secret, message_id, now, payload)
            if e.secret is not None
            else {"webhook-id": message_id, "webhook-timestamp": str(int(now))}
        )
        return {
            "content-type": "application/json",
            "user-agent": e.user_agent,
            "accept-encoding": "identity",  # a body read only for its first words need not be inflated
            **signed,
        }

    def _after(self, response: httpx.Response, body: bytes, url: httpx.URL, hops: int) -> DeliveryResult | httpx.URL:
        """The attempt's result, or the URL a redirect sends the POST to next."""
        import httpx

        status = response.status_code
        location = response.headers.get("location")
        if status not in REDIRECT_STATUSES or location is None:
            return DeliveryResult(classify(status), status, _detail(status, body))
        if hops == MAX_REDIRECTS:
            return DeliveryResult("permanent", status, f"more than {MAX_REDIRECTS} redirects")
        try:
            target = url.join(location)
        except httpx.InvalidURL:
            return DeliveryResult("permanent", status, "redirected to an invalid location")
        if _origin(target) != _origin(self._url):
            return DeliveryResult("permanent", status, f"redirected to another host ({_origin_text(target)}): refused")
        return target

    def _timed_out(self) -> DeliveryResult:
        return DeliveryResult("temporary", None, f"no answer within {self.endpoint.timeout:g} s")


class _OutOfTime(Exception):
    """The attempt's deadline passed before a redirect could be followed."""


def _left(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _OutOfTime
    return remaining


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def _origin_text(url: httpx.URL) -> str:
    scheme, host, port = _origin(url)
    return _shown(f"{scheme}://{host}:{port}")


def _unreachable(error: Exception) -> DeliveryResult:
    """No answer: no connection, a TLS failure, a broken HTTP exchange; worth another try."""
    return DeliveryResult("temporary", None, _shown(f"{type(error).__name__}: {error}"))


def _detail(status: int, body: bytes) -> str:
    """``HTTP 503 Service Unavailable: <the body's first words>``, one line, bounded."""
    import httpx

    text = f"HTTP {status} {httpx.codes.get_reason_phrase(status)}".rstrip()
    words = body[: MAX_DETAIL * 4].decode("utf-8", "replace").strip()
    return _shown(f"{text}: {words}" if words else text)


def _shown(text: str) -> str:
    """One line of at most ``MAX_DETAIL`` characters, control characters and runs of space made one space."""
    line = _UNPRINTABLE.sub(" ", text).strip()
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 1] + "…"
