"""Every adapter's server started the same way in a background thread, for the interop suite.

``running(kind, handler, options)`` yields a ``Running`` whose ``address`` and
``tls_address`` (implicit TLS) are bound on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread

from smtpwire_handler import AsyncHandler, Envelope, Handler, ServerOptions, Session, TLSInfo

KINDS = ("asyncio", "asyncio-uvloop", "anyio-asyncio", "anyio-trio", "blocking", "memorybio")
HOOKS = [name for name in vars(Handler) if not name.startswith("_")]
LOCALHOST = "127.0.0.1"
EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"


@dataclasses.dataclass(frozen=True)
class Received:
    """A delivered message as the handler saw it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    helo_name: str | None
    tls: TLSInfo | None


class Recorder(Handler):
    """Accepts everything and records it; ``fail_on`` makes a hook raise, for the 451 tests."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.calls: list[str] = []
        self.fail_on: set[str] = set()
        self.delivered = threading.Event()

    def __getattribute__(self, name: str) -> Any:
        if name in HOOKS:
            self.calls.append(name)
            if name in self.fail_on:
                raise_later: Callable[..., Any] = _raise
                return raise_later
        return super().__getattribute__(name)

    def message(self, session: Session, envelope: Envelope) -> None:
        content = bytes(envelope.content)
        self.messages.append(
            Received(envelope.mail_from, tuple(envelope.rcpt_tos), content, session.helo_name, session.tls)
        )
        self.delivered.set()


def _raise(*args: object) -> None:
    raise RuntimeError("the application's hook failed")


def as_async(handler: Handler | AsyncHandler) -> AsyncHandler:
    """The same hooks as coroutines, for the anyio adapter (an AsyncHandler as it is)."""
    if isinstance(handler, AsyncHandler):
        return handler

    class Wrapped(AsyncHandler):
        pass

    for name in HOOKS:

        def hook(self: AsyncHandler, *args: object, _name: str = name) -> Any:
            async def call() -> Any:
                return getattr(handler, _name)(*args)

            return call()

        setattr(Wrapped, name, hook)
    return Wrapped()


@dataclasses.dataclass
class Running:
    address: tuple[str, int]
    tls_address: tuple[str, int] | None
    stop: Callable[[float], None]


@contextlib.contextmanager
def running(
    kind: str, handler: Handler | AsyncHandler, options: ServerOptions, *, host: str = LOCALHOST
) -> Iterator[Running]:
    """Run ``kind``'s server on ``host`` (free ports) until the block ends (an AsyncHandler: async kinds only)."""
    tls = [(host, 0)] if options.tls_context is not None else []
    if kind.startswith("anyio-"):
        yield from _anyio(kind.removeprefix("anyio-"), handler, options, host, tls)
    elif kind.startswith("asyncio"):
        yield from _asyncio("uvloop" if kind.endswith("uvloop") else "asyncio", handler, options, host, tls)
    elif kind == "blocking":
        yield from _blocking(handler, options, host, tls)
    else:
        yield from _memorybio(handler, options, host)


def _anyio(backend: str, handler: Handler, options: ServerOptions, host: str, tls: list[Any]) -> Iterator[Running]:
    import smtpwire_anyio

    server = smtpwire_anyio.Server(as_async(handler), options, listen=[(host, 0)], tls_listen=tls)
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        future, _ = portal.start_task(server.serve)
        stopped = False

        def stop(grace: float) -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                portal.call(server.shutdown, grace)

        try:
            yield Running(server.addresses[0], server.tls_addresses[0] if tls else None, stop)
        finally:
            stop(1.0)
            future.result(timeout=30)


def _asyncio(loop_kind: str, handler: Handler, options: ServerOptions, host: str, tls: list[Any]) -> Iterator[Running]:
    import smtpwire_asyncio

    loop = smtpwire_asyncio.loop_factory(loop_kind)()
    thread = threading.Thread(target=loop.run_forever, name=f"{loop_kind}-loop", daemon=True)
    thread.start()

    def call(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)

    async def make() -> smtpwire_asyncio.Server:
        server = smtpwire_asyncio.Server(as_async(handler), options, listen=[(host, 0)], tls_listen=tls)
        await server.start()
        return server

    server = call(make())
    stopped = False

    def stop(grace: float) -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            call(server.shutdown(grace))

    try:
        yield Running(server.addresses[0], server.tls_addresses[0] if tls else None, stop)
    finally:
        stop(1.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _blocking(handler: Handler, options: ServerOptions, host: str, tls: list[Any]) -> Iterator[Running]:
    import smtpwire_blocking

    server = smtpwire_blocking.Server(handler, options, listen=[(host, 0)], tls_listen=tls).start()
    stopped = False

    def stop(grace: float) -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            server.shutdown(grace)

    try:
        yield Running(server.addresses[0], server.tls_addresses[0] if tls else None, stop)
    finally:
        stop(1.0)


def memorybio_example() -> Any:
    """docs/examples/memorybio_asyncio.py, the MemoryBIO adapter's whole server on asyncio, as a module."""
    name = "memorybio_asyncio"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _memorybio(handler: Handler, options: ServerOptions, host: str) -> Iterator[Running]:
    asyncio_example = memorybio_example()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="memorybio-loop", daemon=True)
    thread.start()

    def call(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)

    plain = call(asyncio_example.start_server(handler, options, host, 0))
    implicit = call(asyncio_example.start_server(handler, options, host, 0, tls=True)) if options.tls_context else None
    stopped = False

    def stop(grace: float) -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            for server in (plain, implicit):
                if server is not None:
                    call(asyncio_example.shutdown(server, grace))

    try:
        yield Running(
            plain.sockets[0].getsockname()[:2], implicit.sockets[0].getsockname()[:2] if implicit else None, stop
        )
    finally:
        stop(1.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
