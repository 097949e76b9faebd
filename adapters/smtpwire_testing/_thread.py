"""An event loop of its own in a daemon thread: the server runs there whatever the test does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from smtpwire_asyncio import loop_factory

T = TypeVar("T")


class LoopThread:
    """``start()`` returns once the loop runs; ``call()`` runs a coroutine there; ``stop()`` ends it (idempotent)."""

    def __init__(self, name: str, loop: str = "asyncio") -> None:
        self._loop = loop_factory(loop)()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._running = threading.Event()

    def start(self, timeout: float) -> None:
        self._thread.start()
        if not self._running.wait(timeout):
            raise RuntimeError(f"the event loop thread did not start within {timeout} s")

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the loop and return its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._running.set)
        self._loop.run_forever()
