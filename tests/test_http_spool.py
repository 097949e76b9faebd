"""The durable spool of HTTP delivery: fsync before the 250, retries with backoff, dead letters, SIGKILL and restart."""

from __future__ import annotations

import base64
import errno
import json
import os
import smtplib
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Request, Response

from smtpwire_handler._http_delivery import DeliveryResult
from smtpwire_handler._http_payload import new_message_id
from smtpwire_handler._maildir import STORAGE_FAILED, STORAGE_FULL
from smtpwire_handler._spool import AsyncSpoolStore, Spool, SpoolDelivery
from tests.test_cli import serve
from tests.test_interop import MESSAGE, TIMEOUT
from tests.test_maildir import data_session

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class FakeClock:
    """Time that moves when told, and by ``tick`` each time it is read (so a retry comes due)."""

    def __init__(self, now: float = 1_000_000.0, tick: float = 0.0) -> None:
        self.now = now
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


class ScriptedPoster:
    """A stand-in for ``HttpPoster``: answers from a script (the last answer repeats), records each post."""

    def __init__(self, *answers: DeliveryResult, clock: FakeClock | None = None, step: float = 0.0) -> None:
        self.answers = list(answers)
        self.posts: list[tuple[str, bytes]] = []
        self.clock, self.step = clock, step

    async def post(self, message_id: str, payload: bytes) -> DeliveryResult:
        self.posts.append((message_id, payload))
        if self.clock is not None:
            self.clock.now += self.step  # the attempt took that long
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


OK = DeliveryResult("delivered", 200, "OK")
BUSY = DeliveryResult("temporary", 503, "busy")
FORBIDDEN = DeliveryResult("permanent", 403, "forbidden")


async def deliver_until(delivery: SpoolDelivery, done: Callable[[], bool], limit: float = 5.0) -> None:
    """Run ``delivery`` until ``done()`` (checked every 10 ms), at most ``limit`` seconds."""
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as group:
            group.start_soon(delivery.run)
            while not done():
                await anyio.sleep(0.01)
            group.cancel_scope.cancel()


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- the spool on disk


def test_write_fsyncs_the_file_then_renames_it_then_fsyncs_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    steps: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        steps.append("fsync queue/" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def rename(source: Any, target: Any) -> None:
        steps.append(f"rename {Path(source).parent.name}/ -> {Path(target).parent.name}/")
        real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    entry = spool.write(new_message_id(), b'{"raw": "..."}', 1234.5)
    assert steps == ["fsync file", "rename tmp/ -> queue/", "fsync queue/"]
    assert files(spool.path / "tmp") == []
    assert (spool.queue / entry.id).read_bytes() == b'{"first_seen": 1234.5}\n{"raw": "..."}'
    assert spool.read_entry(entry.id).first_seen == 1234.5


def test_folders_and_messages_are_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry = spool.write(new_message_id(), b"{}", 1.0)
    for folder in ("tmp", "queue", "dead"):
        assert stat.S_IMODE((spool.path / folder).stat().st_mode) == 0o700
    assert stat.S_IMODE((spool.queue / entry.id).stat().st_mode) == 0o600


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        spool.write(new_message_id(), b"{}", 1.0)
    assert files(spool.path / "tmp") == [] and files(spool.queue) == []


@pytest.mark.parametrize(("error", "reply"), [(errno.ENOSPC, STORAGE_FULL), (errno.EIO, STORAGE_FAILED)])
async def test_a_spool_that_cannot_take_the_message_answers_4xx_not_250(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, reply: Any
) -> None:
    spool = Spool(tmp_path / "spool")
    arrived: list[object] = []
    spool.arrivals.append(arrived.append)

    def broken(*args: object) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(spool, "write", broken)
    session = data_session()
    assert session.envelope is not None
    session.envelope.content += MESSAGE
    assert await AsyncSpoolStore(spool).message(session, session.envelope) == reply
    assert arrived == []


async def test_the_store_answers_250_once_the_message_is_queued_and_announced(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    arrived: list[Any] = []
    spool.arrivals.append(arrived.append)
    session = data_session()
    assert session.envelope is not None
    session.envelope.content += MESSAGE
    assert await AsyncSpoolStore(spool, clock=lambda: 42.0).message(session, session.envelope) is None
    (entry,) = arrived
    assert entry.id.startswith("msg_") and entry.first_seen == 42.0
    assert files(spool.queue) == [entry.id]


# --- retries, backoff and dead letters


def test_backoff_starts_at_the_retry_delay_doubles_its_cap_and_stops_at_max_delay(tmp_path: Path) -> None:
    low = SpoolDelivery(Spool(tmp_path / "s"), ScriptedPoster(OK), retry_delay=10, max_delay=100, random=lambda: 0.0)
    high = SpoolDelivery(Spool(tmp_path / "s"), ScriptedPoster(OK), retry_delay=10, max_delay=100, random=lambda: 1.0)
    assert [low.retry_delay_for(n) for n in (1, 2, 3, 10, 1000)] == [10, 10, 10, 10, 10]
    assert [high.retry_delay_for(n) for n in (1, 2, 3, 4, 5, 1000)] == [10, 20, 40, 80, 100, 100]
    half = SpoolDelivery(Spool(tmp_path / "s"), ScriptedPoster(OK), retry_delay=10, random=lambda: 0.5)
    assert half.retry_delay_for(3) == 25  # uniformly between the retry delay and the cap


async def test_temporary_answers_are_retried_with_the_same_id_then_the_message_is_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry = spool.write(new_message_id(), b'{"n": 1}', time.time())
    poster = ScriptedPoster(BUSY, BUSY, OK)
    delivery = SpoolDelivery(spool, poster, retry_delay=0.02, random=lambda: 0.5)
    await deliver_until(delivery, lambda: len(poster.posts) == 3 and not files(spool.queue))
    assert poster.posts == [(entry.id, b'{"n": 1}')] * 3
    assert files(spool.queue) == [] and files(spool.path / "dead") == []


async def test_a_permanent_refusal_goes_to_dead_with_the_answer(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry = spool.write(new_message_id(), b"{}", time.time())
    poster = ScriptedPoster(FORBIDDEN)
    delivery = SpoolDelivery(spool, poster, retry_delay=0.02)
    await deliver_until(delivery, lambda: (spool.path / "dead" / entry.id).exists())
    assert files(spool.queue) == [] and files(spool.path / "dead") == [entry.id, f"{entry.id}.json"]
    record = json.loads((spool.path / "dead" / f"{entry.id}.json").read_text())
    assert record["reason"] == "refused" and record["attempts"] == 1
    assert record["last_answer"] == {"outcome": "permanent", "status": 403, "detail": "forbidden"}
    assert len(poster.posts) == 1


async def test_a_message_whose_next_retry_would_pass_max_age_goes_to_dead(tmp_path: Path) -> None:
    clock = FakeClock(tick=0.001)
    spool = Spool(tmp_path / "spool")
    entry = spool.write(new_message_id(), b"{}", clock())
    poster = ScriptedPoster(BUSY, clock=clock, step=100.0)  # each attempt takes 100 s of the fake clock
    delivery = SpoolDelivery(spool, poster, retry_delay=0.01, max_age=250.0, clock=clock, random=lambda: 0.0)
    await deliver_until(delivery, lambda: (spool.path / "dead" / entry.id).exists())
    assert len(poster.posts) == 3  # at ages 0, 100 and 200; the next would be at 300
    record = json.loads((spool.path / "dead" / f"{entry.id}.json").read_text())
    assert record["reason"] == "expired" and record["attempts"] == 3 and record["last_answer"]["status"] == 503


async def test_a_message_found_already_too_old_goes_to_dead_unposted(tmp_path: Path) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path / "spool")
    entry = spool.write(new_message_id(), b"{}", clock() - 3 * 86400)
    poster = ScriptedPoster(OK)
    delivery = SpoolDelivery(spool, poster, clock=clock)
    assert delivery.oldest_age() == 0.0  # nothing seen before it runs
    await deliver_until(delivery, lambda: (spool.path / "dead" / entry.id).exists())
    assert poster.posts == [] and files(spool.queue) == []


async def test_a_restart_delivers_the_queue_oldest_first_keeping_its_state(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    now = time.time()
    younger = spool.write(new_message_id(), b"{}", now - 10)
    older = spool.write(new_message_id(), b"{}", now - 20)
    failed = spool.write(new_message_id(), b"{}", now - 30)  # its last attempt failed; retried in an hour
    (spool.queue / f"{failed.id}.json").write_text(
        json.dumps({"attempts": 2, "next_attempt": now + 3600, "last_answer": {"status": 503}})
    )
    poster = ScriptedPoster(OK)
    delivery = SpoolDelivery(Spool(spool.path), poster, concurrency=1)
    await deliver_until(delivery, lambda: len(poster.posts) == 2 and delivery.depth() == 1)
    assert [message_id for message_id, _ in poster.posts] == [older.id, younger.id]
    assert files(spool.queue) == [failed.id, f"{failed.id}.json"]
    assert 29 < delivery.oldest_age() < 60


async def test_two_processes_on_one_spool_post_each_message_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    written = {spool.write(new_message_id(), b"{}", time.time()).id for _ in range(20)}

    class SlowPoster(ScriptedPoster):
        async def post(self, message_id: str, payload: bytes) -> DeliveryResult:
            await anyio.sleep(0.01)  # long enough for the other to try the same message meanwhile
            return await super().post(message_id, payload)

    posters = [SlowPoster(OK), SlowPoster(OK)]
    deliveries = [SpoolDelivery(Spool(spool.path), poster, concurrency=3) for poster in posters]  # two spool objects
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for delivery in deliveries:
                group.start_soon(delivery.run)
            while files(spool.queue):
                await anyio.sleep(0.01)
            group.cancel_scope.cancel()
    posted = [message_id for poster in posters for message_id, _ in poster.posts]
    assert sorted(posted) == sorted(written)


async def test_arrivals_are_delivered_at_once_without_waiting_for_a_scan(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    poster = ScriptedPoster(OK)
    delivery = SpoolDelivery(spool, poster, rescan=3600)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(delivery.run)
            await anyio.sleep(0.05)  # the first scan found nothing
            spool.announce(spool.write(new_message_id(), b"{}", time.time()))
            while not poster.posts:
                await anyio.sleep(0.01)
            group.cancel_scope.cancel()


# --- smtpwire serve --deliver-http, end to end


class Endpoint:
    """The application: answers each POST with the next status of a script (the last repeats), records them."""

    def __init__(self, httpserver: HTTPServer, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[str, bytes, int]] = []  # webhook-id, body, status answered
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.url = httpserver.url_for("/hook")
        httpserver.expect_request("/hook", method="POST").respond_with_handler(self.answer)

    def answer(self, request: Request) -> Response:
        with self.lock:
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            self.requests.append((request.headers.get("webhook-id", ""), request.get_data(), status))
            self.headers.append(dict(request.headers))
        return Response("answer text", status=status)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} requests, not {count}"
            time.sleep(0.02)


@pytest.fixture
def send() -> Iterator[Callable[[tuple[str, int]], None]]:
    def send(address: tuple[str, int]) -> None:
        with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
            refused = client.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"], MESSAGE)
            assert refused == {}

    yield send


def spool_args(spool: Path, url: str, retry_delay: str = "0.2") -> list[str]:
    return ["--deliver-http", url, "--deliver-spool", str(spool), "--deliver-retry-delay", retry_delay]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_spools_then_retries_500_500_200_with_one_id(
    tmp_path: Path, httpserver: HTTPServer, send: Callable[[tuple[str, int]], None], backend: str
) -> None:
    endpoint = Endpoint(httpserver, 500, 500, 200)
    spool = tmp_path / "spool"
    secret = tmp_path / "secret"
    secret.write_text("whsec_" + base64.b64encode(b"k" * 32).decode())
    args = [*spool_args(spool, endpoint.url), "--deliver-secret-file", str(secret), "--backend", backend]
    with serve(*args) as server:
        assert f"deliver http {endpoint.url} (spool, spool {spool})" in server.log[-1]
        send(server.address)  # one 250, before any attempt succeeded
        server.wait_for(r"accepted id=\w+ from=<alice@example.org> .* spooled=msg_")
        endpoint.wait_for(3)
        server.wait_for(r"delivered msg_\S+ at attempt 3")
        time.sleep(0.5)  # time for a fourth attempt, if there were one
        assert server.stop() == 0
    assert [status for _, _, status in endpoint.requests] == [500, 500, 200]
    ids = {message_id for message_id, _, _ in endpoint.requests}
    bodies = {body for _, body, _ in endpoint.requests}
    assert len(ids) == 1 and ids.pop().startswith("msg_") and len(bodies) == 1
    body = bodies.pop()
    assert base64.b64decode(json.loads(body)["raw"]) == MESSAGE  # octet for octet
    for headers in endpoint.headers:  # each attempt signed anew
        Webhook(secret.read_text()).verify(body, headers)
    assert files(spool / "queue") == [] and files(spool / "dead") == [] and files(spool / "tmp") == []


def test_serve_files_a_403_in_dead_with_the_answer(
    tmp_path: Path, httpserver: HTTPServer, send: Callable[[tuple[str, int]], None]
) -> None:
    endpoint = Endpoint(httpserver, 403)
    spool = tmp_path / "spool"
    with serve(*spool_args(spool, endpoint.url)) as server:
        send(server.address)
        server.wait_for(r"msg_\S+ moved to dead/: refused after 1 attempt")
        assert server.stop() == 0
    ((message_id, _, _),) = endpoint.requests
    assert files(spool / "dead") == [message_id, f"{message_id}.json"] and files(spool / "queue") == []
    record = json.loads((spool / "dead" / f"{message_id}.json").read_text())
    assert record["reason"] == "refused" and record["last_answer"]["status"] == 403


def test_a_message_acknowledged_before_a_sigkill_is_delivered_once_after_the_restart(
    tmp_path: Path, httpserver: HTTPServer, send: Callable[[tuple[str, int]], None]
) -> None:
    endpoint = Endpoint(httpserver, 503)
    spool = tmp_path / "spool"
    with serve(*spool_args(spool, endpoint.url, retry_delay="1")) as server:
        send(server.address)
        endpoint.wait_for(1)  # acknowledged, not delivered
        server.process.kill()
        server.process.wait(TIMEOUT)
    (queued,) = [name for name in files(spool / "queue") if not name.endswith(".json")]
    with endpoint.lock:
        endpoint.statuses = [200]
    with serve(*spool_args(spool, endpoint.url, retry_delay="1")) as server:
        server.wait_for(rf"delivered {queued} at attempt \d")
        time.sleep(0.5)
        assert server.stop() == 0
    assert [status for _, _, status in endpoint.requests].count(200) == 1
    assert {message_id for message_id, _, _ in endpoint.requests} == {queued}
    assert files(spool / "queue") == []


def test_serve_keeps_its_recipient_check_in_front_of_the_spool(tmp_path: Path, httpserver: HTTPServer) -> None:
    endpoint = Endpoint(httpserver, 200)
    spool = tmp_path / "spool"
    with serve(*spool_args(spool, endpoint.url), "--accept-domain", "example.net") as server:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            refused = client.sendmail("alice@example.org", ["bob@example.net", "eve@elsewhere.test"], MESSAGE)
        assert list(refused) == ["eve@elsewhere.test"] and refused["eve@elsewhere.test"][0] == 550
        server.wait_for(r"delivered msg_\S+ at attempt 1")
        assert server.stop() == 0
    ((_, body, _),) = endpoint.requests
    assert json.loads(body)["envelope"]["rcpt_to"] == ["bob@example.net"]


def test_workers_share_the_spool_and_post_each_message_once(
    tmp_path: Path, httpserver: HTTPServer, send: Callable[[tuple[str, int]], None]
) -> None:
    endpoint = Endpoint(httpserver, 200)
    spool = tmp_path / "spool"
    with serve(*spool_args(spool, endpoint.url, retry_delay="0.05"), "--workers", "2") as server:
        for _ in range(6):
            send(server.address)
        endpoint.wait_for(6)
        time.sleep(0.5)  # several scans of the queue by both workers
        assert server.stop() == 0
    assert len({message_id for message_id, _, _ in endpoint.requests}) == len(endpoint.requests) == 6
    assert files(spool / "queue") == []


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (["--sink"], "give either --deliver-http or --sink, not both"),
        (["--print"], "give either --deliver-http or --print, not both"),
        (["--lmtp"], "give either --deliver-http or --lmtp, not both"),
        (["--maildir", "mail"], "give either --deliver-http or --maildir, not both"),
        (["--deliver-mode", "sync", "--deliver-spool", "s"], "--deliver-spool, --deliver-retry-delay and"),
    ],
)
def test_serve_refuses_deliver_http_with_another_store(args: list[str], refusal: str) -> None:
    from click.testing import CliRunner

    from smtpwire_serve._cli import main

    result = CliRunner().invoke(main, ["serve", "--deliver-http", "http://127.0.0.1:9/hook", *args])
    assert result.exit_code == 2 and refusal in result.output


def test_serve_refuses_delivery_options_without_deliver_http() -> None:
    from click.testing import CliRunner

    from smtpwire_serve._cli import main

    result = CliRunner().invoke(main, ["serve", "--deliver-spool", "somewhere"])
    assert result.exit_code == 2 and "--deliver-spool is for --deliver-http" in result.output


def test_delivery_attempts_and_the_spool_are_in_the_metrics(
    tmp_path: Path, httpserver: HTTPServer, send: Callable[[tuple[str, int]], None]
) -> None:
    from tests.test_metrics import free_port, scrape, until, value

    endpoint = Endpoint(httpserver, 503, 200)
    metrics_port = free_port()
    with serve(
        *spool_args(tmp_path / "spool", endpoint.url, "0.5"), "--metrics", f"127.0.0.1:{metrics_port}"
    ) as server:
        send(server.address)
        endpoint.wait_for(1)
        until(lambda: value(scrape(metrics_port), "smtpwire_spool_depth") == 1, "one message queued after a 503")
        until(lambda: value(scrape(metrics_port), "smtpwire_spool_depth") == 0, "the queue empty after the 200")
        samples = scrape(metrics_port)
        assert server.stop() == 0
    assert value(samples, "smtpwire_delivery_attempts_total", outcome="temporary") == 1
    assert value(samples, "smtpwire_delivery_attempts_total", outcome="delivered") == 1
    assert value(samples, "smtpwire_delivery_attempts_total", outcome="permanent") == 0
    assert value(samples, "smtpwire_spool_oldest_age_seconds") == 0
