"""One way to run a server: the same settings bind, admit, refuse and stop the same on every adapter's Server.

Each server is started here from the same ``ServerOptions`` and listener
lists; what the tests look at is what a client sees (addresses that answer
220, the 421 replies, connections closed) and the backlog the kernel holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import resource
import selectors
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest

import smtpwire_handler
from smtpwire_handler import Handler, ServerOptions
from smtpwire_handler.kit import BACKLOG, REFUSALS_AT_ONCE
from tests import certs
from tests.servers import Recorder, as_async
from tests.test_adapter_hardening import child_server
from tests.test_interop import MESSAGE, ON_THE_WIRE, TIMEOUT, assert_closed, read_reply

SERVERS = ("asyncio", "asyncio-uvloop", "anyio-asyncio", "anyio-trio", "blocking")
ROOT = Path(__file__).resolve().parent.parent
TOO_MANY = b"421 4.7.0 localhost Too many connections, try again later\r\n"
SHUTTING_DOWN = b"421 4.3.2 localhost Service shutting down\r\n"
TWO_LOOPBACKS = "two-loopbacks.test"  # a name that resolves to 127.0.0.1 and ::1 (see resolve_both)

pytestmark = pytest.mark.parametrize("kind", SERVERS)


@dataclasses.dataclass
class Started:
    """A server running in the background: its bound addresses, its open sessions, and a way to stop it."""

    server: Any
    stop: Callable[[float], None]

    @property
    def address(self) -> tuple[str, int]:
        return tuple(self.server.addresses[0])

    @property
    def tls_address(self) -> tuple[str, int]:
        return tuple(self.server.tls_addresses[0])


@contextlib.contextmanager
def started(
    kind: str,
    options: ServerOptions,
    *,
    handler: Handler | None = None,
    listen: list[Any] | None = None,
    **arguments: Any,
) -> Iterator[Started]:
    """``kind``'s ``Server`` with these arguments, serving in a thread until the block ends."""
    handler = handler or Recorder()
    arguments["listen"] = listen or [("127.0.0.1", 0)]
    stopped = threading.Event()
    if kind == "blocking":
        import smtpwire_blocking

        blocking = smtpwire_blocking.Server(handler, options, **arguments).start()
        with _stopping(Started(blocking, blocking.shutdown), stopped) as running:
            yield running
    elif kind.startswith("anyio-"):
        import smtpwire_anyio

        server = smtpwire_anyio.Server(as_async(handler), options, **arguments)
        with anyio.from_thread.start_blocking_portal(kind.removeprefix("anyio-")) as portal:
            future, _ = portal.start_task(server.serve)
            with _stopping(Started(server, lambda grace: portal.call(server.shutdown, grace)), stopped) as running:
                yield running
            future.result(timeout=TIMEOUT)
    else:
        import smtpwire_asyncio

        loop = smtpwire_asyncio.loop_factory("uvloop" if kind.endswith("uvloop") else "asyncio")()
        thread = threading.Thread(target=loop.run_forever, name=f"{kind}-loop", daemon=True)
        thread.start()

        def call(coroutine: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=TIMEOUT * 2)

        async def start() -> smtpwire_asyncio.Server:
            server = smtpwire_asyncio.Server(as_async(handler), options, **arguments)
            await server.start()
            return server

        try:
            server = call(start())
            with _stopping(Started(server, lambda grace: call(server.shutdown(grace))), stopped) as running:
                yield running
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=TIMEOUT)
            loop.close()


@contextlib.contextmanager
def _stopping(running: Started, stopped: threading.Event) -> Iterator[Started]:
    """``running`` whose ``stop`` runs once; the end of the block stops it if the test did not."""
    stop = running.stop

    def once(grace: float) -> None:
        if not stopped.is_set():
            stopped.set()
            stop(grace)

    running.stop = once
    try:
        yield running
    finally:
        once(1.0)


def greeted(address: tuple[str, int], tls: bool = False) -> socket.socket:
    sock = socket.create_connection(address, timeout=TIMEOUT)
    if tls:
        sock = certs.client_context().wrap_socket(sock, server_hostname="localhost")
    assert read_reply(sock).startswith(b"220 ")
    return sock


def command(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return read_reply(sock)


def tls_options(**settings: Any) -> ServerOptions:
    return ServerOptions(tls_context=certs.server_context(), **settings)


def has_ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


# -- binding -----------------------------------------------------------------------------------


@pytest.fixture
def resolve_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TWO_LOOPBACKS`` resolves to 127.0.0.1, ::1 and 127.0.0.1 again, as a resolver may answer."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != TWO_LOOPBACKS:
            return real(host, port, *args, **kwargs)
        return [*real("127.0.0.1", port, *args, **kwargs), *real("::1", port, *args, **kwargs)] * 2

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_a_name_is_bound_on_each_of_its_addresses_once(kind: str, resolve_both: None) -> None:
    options = tls_options()
    with started(kind, options, listen=[(TWO_LOOPBACKS, 0)], tls_listen=[(TWO_LOOPBACKS, 0)]) as running:
        server = running.server
        assert sorted(host for host, _ in server.addresses) == ["127.0.0.1", "::1"]
        assert sorted(host for host, _ in server.tls_addresses) == ["127.0.0.1", "::1"]
        for address in server.addresses:
            greeted(address).close()
        for address in server.tls_addresses:
            greeted(address, tls=True).close()


def test_localhost_is_bound_on_every_address_the_resolver_gives(kind: str) -> None:
    wanted = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    with started(kind, ServerOptions(), listen=[("localhost", 0)]) as running:
        assert sorted(host for host, _ in running.server.addresses) == sorted(wanted)
        for address in running.server.addresses:
            greeted(address).close()


def test_an_address_that_cannot_be_bound_is_named(kind: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with (
            pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: "),
            started(kind, ServerOptions(), listen=[("127.0.0.1", port)]),
        ):
            pass


def test_bad_listener_entries_are_explained(kind: str) -> None:
    for listen in ([("127.0.0.1", 70000)], [("127.0.0.1",)], [25]):
        with (
            pytest.raises(ValueError, match=r"listen takes \(host, port\) pairs .*port from 0 to 65535"),
            started(kind, ServerOptions(), listen=listen),
        ):
            pass
    with (
        pytest.raises(ValueError, match=r"tls_listen takes \(host, port\) pairs with"),
        started(kind, tls_options(), tls_listen=["/run/smtp.sock"]),
    ):
        pass


def test_reuse_port_lets_two_servers_share_a_port(kind: str) -> None:
    with started(kind, ServerOptions(), reuse_port=True) as first:
        with started(kind, ServerOptions(), listen=[first.address], reuse_port=True) as second:
            assert second.address == first.address
            greeted(second.address).close()
        with (
            pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.address[1]}: "),
            started(kind, ServerOptions(), listen=[first.address]),
        ):
            pass


def test_a_unix_socket_listener_serves_with_its_mode(kind: str, tmp_path: Path) -> None:
    path = str(tmp_path / "lmtp.sock")
    with started(kind, ServerOptions(), listen=[path], unix_mode=0o600) as running:
        assert running.server.unix_addresses == [path] and running.server.addresses == []
        assert os.stat(path).st_mode & 0o777 == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(path)
            assert read_reply(client).startswith(b"220 ")
            assert command(client, b"QUIT").startswith(b"221 ")
    assert not os.path.exists(path)  # removed at shutdown


# -- the backlog -------------------------------------------------------------------------------

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def listen_backlogs(*where: str) -> list[int]:
    """The backlog of each listening socket ``ss`` finds for the filter ``where`` (its Send-Q)."""
    ss = shutil.which("ss")
    assert ss is not None
    found = subprocess.run([ss, "-lnH", *where], capture_output=True, text=True, check=True, timeout=TIMEOUT)
    rows = [line.split() for line in found.stdout.splitlines()]
    return [int(row[row.index("LISTEN") + 2]) for row in rows if "LISTEN" in row]  # State, Recv-Q, Send-Q


@pytest.mark.skipif(shutil.which("ss") is None or not SOMAXCONN.exists(), reason="needs ss and Linux's somaxconn")
def test_every_listener_has_the_backlog_asked_for(kind: str, tmp_path: Path) -> None:
    """The kernel caps ``BACKLOG`` at net.core.somaxconn; asyncio's default (100) must not replace it."""
    expected = min(BACKLOG, int(SOMAXCONN.read_text()))
    path = str(tmp_path / "smtp.sock")
    with started(kind, tls_options(), listen=[("127.0.0.1", 0), path], tls_listen=[("127.0.0.1", 0)]) as running:
        for _, port in (running.address, running.tls_address):
            assert listen_backlogs("-t", f"sport = :{port}") == [expected]
        assert listen_backlogs("-x", "src", path) == [expected]


# -- a burst of connects -------------------------------------------------------------------------

BURST = 2000
BURST_WITHIN = 10.0
#: Descriptors the burst needs: the clients', and the server's (three per session on the blocking server).
BURST_FILES = 4 * BURST + 500


@contextlib.contextmanager
def open_files(wanted: int) -> Iterator[None]:
    """At least ``wanted`` descriptors for this process and its children, or a skip saying why not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard descriptor limit is {hard}; the burst needs {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def greet_burst(port: int, count: int, within: float) -> tuple[int, float]:
    """Open ``count`` connections at once; how many read a 220 within ``within`` seconds, and how long it took."""
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    begun = time.monotonic()
    deadline = begun + within
    greeted = 0
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))  # EINPROGRESS: the answer is the 220 read below
            selector.register(sock, selectors.EVENT_READ, bytearray())
        while greeted < count and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                received: bytearray = key.data
                try:
                    data = key.fileobj.recv(512)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                received += data
                if b"\r\n" in received or not data:
                    selector.unregister(key.fileobj)
                    greeted += received.startswith(b"220 ")
    finally:
        selector.close()
        for sock in socks:
            sock.close()
    return greeted, time.monotonic() - begun


@pytest.mark.skipif(
    SOMAXCONN.exists() and int(SOMAXCONN.read_text()) < BURST,
    reason="net.core.somaxconn is below the burst: the kernel caps every backlog at it",
)
def test_a_burst_of_connects_is_all_greeted_in_time(kind: str) -> None:
    """2,000 connects at once: every one reads its 220 within 10 s (with listen(100): about 900 in 60 s)."""
    with (
        open_files(BURST_FILES),
        child_server(kind, max_sessions=BURST + 500, max_sessions_per_client=None) as (_, port),
    ):
        count, took = greet_burst(port, BURST, BURST_WITHIN)
    assert count == BURST, f"{count} of {BURST} connections greeted within {took:.1f} s"


# -- admission and refusal -----------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "implicit-tls"])
@pytest.mark.parametrize(
    "limit",
    [{"max_sessions": 2}, {"max_sessions_per_client": 2, "client_limit_exceptions": ()}],
    ids=["max_sessions", "max_sessions_per_client"],
)
def test_a_connection_over_a_limit_gets_421_and_a_freed_place_is_served(
    kind: str, tls: bool, limit: dict[str, Any]
) -> None:
    with started(kind, tls_options(**limit), tls_listen=[("127.0.0.1", 0)]) as running:
        address = running.tls_address if tls else running.address
        first, second = greeted(address, tls), greeted(address, tls)
        with socket.create_connection(address, timeout=TIMEOUT) as raw:
            over = certs.client_context().wrap_socket(raw, server_hostname="localhost") if tls else raw
            assert read_reply(over) == TOO_MANY  # after the handshake on the implicit-TLS listener
            assert_closed(over)
        assert command(first, b"QUIT").startswith(b"221 ")
        first.close()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the place is freed once the server has seen the session end
            with socket.create_connection(address, timeout=TIMEOUT) as raw:
                again = certs.client_context().wrap_socket(raw, server_hostname="localhost") if tls else raw
                if read_reply(again).startswith(b"220 "):
                    break
            assert time.monotonic() < deadline, "the freed place was never served again"
            time.sleep(0.05)
        second.close()


def test_refusals_under_way_are_bounded_and_the_rest_closed_at_once(kind: str) -> None:
    """REFUSALS_AT_ONCE clients that never start their handshake: the next one over the limit is closed at once."""
    with started(kind, tls_options(max_sessions=1), tls_listen=[("127.0.0.1", 0)]) as running:
        held = greeted(running.tls_address, tls=True)
        silent = [socket.create_connection(running.tls_address, timeout=TIMEOUT) for _ in range(REFUSALS_AT_ONCE)]
        try:
            with socket.create_connection(running.tls_address, timeout=TIMEOUT) as closed:
                started_at = time.monotonic()
                assert_closed(closed)  # no handshake, no 421: an EOF or a reset, before any silent one timed out
                assert time.monotonic() - started_at < TIMEOUT
        finally:
            for sock in silent:
                sock.close()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the silent ones' refusals end with their connections: a polite 421 again
            with socket.create_connection(running.tls_address, timeout=TIMEOUT) as raw:
                try:
                    tls = certs.client_context().wrap_socket(raw, server_hostname="localhost")
                    if read_reply(tls) == TOO_MANY:
                        break
                except (ssl.SSLError, OSError, AssertionError):
                    pass
            assert time.monotonic() < deadline, "refusals never came back"
            time.sleep(0.05)
        held.close()


# -- shutdown ----------------------------------------------------------------------------------------


def start_message(sock: socket.socket) -> None:
    for line in (b"EHLO busy.example", b"MAIL FROM:<alice@example.org>", b"RCPT TO:<bob@example.net>"):
        assert command(sock, line).startswith(b"250")
    assert command(sock, b"DATA").startswith(b"354 ")
    sock.sendall(ON_THE_WIRE[:20])


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "implicit-tls"])
def test_shutdown_tells_idle_sessions_now_and_lets_a_message_finish_within_the_grace(kind: str, tls: bool) -> None:
    recorder = Recorder()
    with started(kind, tls_options(), handler=recorder, tls_listen=[("127.0.0.1", 0)]) as running:
        address = running.tls_address if tls else running.address
        idle, busy = greeted(address, tls), greeted(address, tls)
        assert command(idle, b"EHLO idle.example").startswith(b"250")
        start_message(busy)
        stopper = threading.Thread(target=running.stop, args=(TIMEOUT,), name="test-shutdown")
        stopper.start()
        assert read_reply(idle) == SHUTTING_DOWN
        assert_closed(idle)
        busy.sendall(ON_THE_WIRE[20:])
        replies = read_reply(busy)
        if replies.count(b"\r\n") < 2:
            replies += read_reply(busy)
        assert replies == b"250 2.0.0 OK\r\n" + SHUTTING_DOWN
        assert_closed(busy)
        stopper.join(TIMEOUT)
        assert not stopper.is_alive() and running.server.sessions == 0
        with pytest.raises(OSError):
            socket.create_connection(address, timeout=TIMEOUT).close()
    assert [m.content for m in recorder.messages] == [MESSAGE]


def test_after_the_grace_a_message_in_progress_gets_421(kind: str) -> None:
    recorder = Recorder()
    with started(kind, ServerOptions(), handler=recorder) as running, greeted(running.address) as busy:
        start_message(busy)
        begun = time.monotonic()
        running.stop(0.5)
        assert 0.4 < time.monotonic() - begun < TIMEOUT
        assert read_reply(busy) == SHUTTING_DOWN
        assert_closed(busy)
    assert recorder.messages == [] and "message_aborted" in recorder.calls


def fill_without_reading(sock: socket.socket) -> None:
    """Pipeline HELPs without reading a reply, until the server takes no more (at most 64 MiB).

    No more means nothing taken for 2 s: a server only slow (a busy machine) would be reading again by then.
    """
    sock.settimeout(2.0)
    sent = 0
    with contextlib.suppress(TimeoutError, BlockingIOError):
        while sent < 64 * 1024 * 1024:
            sent += sock.send(b"HELP\r\n" * 10_000)
    assert sent < 64 * 1024 * 1024, "the server kept reading from a client that never reads"


def test_a_connection_still_open_after_the_abort_delay_is_dropped(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that never reads cannot take its 421: ABORT_AFTER after the grace, its connection is dropped."""
    monkeypatch.setattr(smtpwire_handler._shutdown, "ABORT_AFTER", 1.0)
    with started(kind, ServerOptions(command_timeout=60)) as running, greeted(running.address) as stuck:
        fill_without_reading(stuck)
        begun = time.monotonic()
        running.stop(0.2)
        took = time.monotonic() - begun
        assert 0.2 < took < 0.2 + 2 * 1.0 + 3, f"shutdown took {took:.1f} s"  # not the 60 s command timeout
        assert running.server.sessions == 0
        stuck.settimeout(TIMEOUT)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := stuck.recv(1024 * 1024):  # the replies sent before the drop, then its end
                received += len(chunk)
                assert received < 256 * 1024 * 1024
        assert received < 256 * 1024 * 1024
