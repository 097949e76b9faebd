"""A handler that runs around the store keeping the message: sender authentication, milters, policy servers.

Such a handler answers some hooks itself and calls the store's own where
it should (``mail_from`` after its check, ``message`` once the message is
checked); the store's other hooks are taken over as they are, so wrapping a
store hides none of them and costs nothing where the wrapper has no part.
The same pieces chain a store's answers that may be awaitables.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from smtpwire import Reply

from ._driver import overridden_hooks
from ._handler import AsyncHandler, Handler


class Around:
    """Base of a handler around ``store``: the hooks named in ``WRAPS`` are its own, the store's others stay.

    A store that delivers per recipient (LMTP's ``deliver``) is refused,
    unless ``deliver`` is wrapped too: the wrapper's work is per message.
    """

    #: The hooks the wrapper answers itself (calling the store's where it should).
    WRAPS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, store: Handler | AsyncHandler) -> None:
        hooks = overridden_hooks(store)
        if "deliver" in hooks and "deliver" not in self.WRAPS:
            raise ValueError(f"{type(self).__name__} wraps an SMTP store; LMTP delivery per recipient is not wrapped")
        self.store = store
        self.store_hooks = hooks
        for hook in hooks - self.WRAPS:  # the store's other hooks are its own business
            setattr(self, hook, getattr(store, hook))

    def store_hook(self, name: str) -> Callable[..., Any] | None:
        """The store's own ``name`` hook, or ``None`` when it leaves that hook as it is."""
        return getattr(self.store, name) if name in self.store_hooks else None


async def settled(result: Any) -> Any:
    """A hook's answer, awaited if it is an awaitable (an ``AsyncHandler`` store's hooks may be either)."""
    return await result if inspect.isawaitable(result) else result


async def then(pending: Awaitable[object], result: Reply) -> Reply:
    """``result``, once ``pending`` is done."""
    await pending
    return result


async def then_call(pending: Awaitable[object], hook: Callable[..., Any], *args: object) -> Any:
    """``hook(*args)``'s settled answer, once ``pending`` is done."""
    await pending
    return await settled(hook(*args))
