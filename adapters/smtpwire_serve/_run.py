"""Run one server process on the chosen event loop until SIGINT or SIGTERM; SIGHUP reloads.

asyncio (the default) runs ``smtpwire_asyncio``'s Protocol server, on uvloop
when it is installed; trio runs the anyio adapter.  The first SIGINT or
SIGTERM shuts down gracefully (idle sessions get 421 4.3.2, transactions may
finish within the shutdown grace), a second one closes every connection at
once.  SIGHUP calls ``reload`` (see ``_reload``) and serving goes on.

``background`` (the spool's HTTP deliveries) runs in the same event loop
from the start until the shutdown is over; if it fails, serve shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Awaitable, Callable

import anyio

import smtpwire_anyio
import smtpwire_asyncio
from smtpwire_handler._server import listeners_text

log = logging.getLogger("smtpwire.serve")
#: Descriptors kept for listeners, logs, the auth file and the like.
RESERVED_DESCRIPTORS = 64
#: Descriptors one session may hold: its socket and the Maildir file being written.
DESCRIPTORS_PER_SESSION = 2
MAX_DEFAULT_SESSIONS = 10_000


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (the usual default of 1,024 is too few); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def sessions_for(file_limit: int) -> int:
    """How many sessions fit in ``file_limit`` descriptors (at most ``MAX_DEFAULT_SESSIONS``)."""
    return max(1, min(MAX_DEFAULT_SESSIONS, (file_limit - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_SESSION))


def _serving(server: smtpwire_asyncio.Server | smtpwire_anyio.Server, about: str, where: str) -> None:
    """The one start-up line, said once the signals are handled: from it on, SIGHUP reloads (before, it is ignored).

    ``about`` says the protocol, the store and the worker (see ``_cli.about``); ``where`` the event loop.
    """
    listeners = listeners_text(server.addresses, server.tls_addresses, server.unix_addresses)
    log.info("smtpwire serving on %s; %s; %s", listeners, about, where)


#: What runs beside the server until it stops (``None``: nothing).
Background = Callable[[], Awaitable[None]] | None


async def serve_asyncio(
    server: smtpwire_asyncio.Server, reload: Callable[[], None], about: str, background: Background = None
) -> None:
    loop = asyncio.get_running_loop()
    await server.start()
    done = asyncio.Event()
    shutdown: asyncio.Task[None] | None = None
    beside = None if background is None else loop.create_task(_beside(background))

    def on_signal(signum: signal.Signals) -> None:
        nonlocal shutdown
        if shutdown is None:
            log.info("%s: shutting down", signum.name)
            shutdown = loop.create_task(server.shutdown())
            shutdown.add_done_callback(lambda _: done.set())
        else:
            log.info("%s again: closing every connection now", signum.name)
            server.abort()
            done.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, reload)

    def on_failure(task: asyncio.Task[None]) -> None:
        """What runs beside the server failed (``_beside`` logged why): shut down."""
        if not task.cancelled() and task.exception() is not None and shutdown is None:
            on_signal(signal.SIGTERM)

    if beside is not None:
        beside.add_done_callback(on_failure)
    _serving(server, about, smtpwire_asyncio.loop_name(loop))
    await done.wait()
    if beside is not None:
        beside.cancel()
        await asyncio.wait([beside])


async def _beside(background: Callable[[], Awaitable[None]]) -> None:
    """``background()``, its failure logged (serve then shuts down)."""
    try:
        await background()
    except Exception:
        log.exception("the HTTP delivery failed; shutting down")
        raise


async def serve_anyio(
    server: smtpwire_anyio.Server, reload: Callable[[], None], about: str, background: Background = None
) -> None:
    async with anyio.create_task_group() as group:

        async def shut_down() -> None:
            await server.shutdown()
            group.cancel_scope.cancel()

        await group.start(server.serve)
        if background is not None:
            group.start_soon(_beside, background)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            _serving(server, about, "trio")
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reload()
                    continue
                if group.cancel_scope.cancel_called or server.stopping:
                    log.info("%s again: closing every connection now", signal.Signals(signum).name)
                    group.cancel_scope.cancel()
                    return
                log.info("%s: shutting down", signal.Signals(signum).name)
                group.start_soon(shut_down)
