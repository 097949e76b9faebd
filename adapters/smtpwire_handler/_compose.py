"""Handlers made of parts (a store, an AUTH check, a policy), none hiding another's hooks.

A class that inherits from two handlers takes each hook from whichever
comes first, so wherever both define a hook one of them is silently never
called.  A composite instead gives each hook to the part that defines it,
and refuses, when it is built, two parts that would answer the same thing.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ._driver import overridden_hooks
from ._handler import AsyncHandler, Handler

#: Hooks that answer nothing: every part that defines one is called, in the order of the parts.
EVERY_PART = frozenset({"data_chunk", "message_aborted", "rset", "quit", "tls_started", "error", "disconnect"})

Hook = Callable[..., Any]


class Composite(Handler):
    """One handler made of ``parts``, each a ``Handler``: every hook goes to the part that defines it.

    A hook that answers the client (``rcpt_to``, ``message``,
    ``authenticate``...) may come from one part only: a second is a
    ``ValueError`` here, where inheriting from both would have hidden one.
    The hooks that answer nothing (``data_chunk``, ``message_aborted``,
    ``rset``, ``quit``, ``tls_started``, ``error``, ``disconnect``) run on
    every part that defines them, in order; when one raises, the others still
    run and the first error is raised after them.  A subclass's own hooks
    come first, as one more part.  Hooks no part defines keep their default,
    at no cost.
    """

    def __init__(self, *parts: Handler) -> None:
        self.parts: tuple[Handler | AsyncHandler, ...] = parts
        _take_hooks(self, parts)


class AsyncComposite(AsyncHandler):
    """``Composite`` for the asyncio and anyio adapters: its parts may be ``AsyncHandler`` or ``Handler``.

    A part's hook that must wait is awaited before the next part's runs.
    """

    def __init__(self, *parts: Handler | AsyncHandler) -> None:
        self.parts: tuple[Handler | AsyncHandler, ...] = parts
        _take_hooks(self, parts)


def _take_hooks(composite: Handler | AsyncHandler, parts: Iterable[Handler | AsyncHandler]) -> None:
    """Set each hook the parts define on ``composite`` itself, where the driver finds it."""
    own = overridden_hooks(composite)  # a subclass's own: the first part
    defined = {hook: [(type(composite).__name__, getattr(composite, hook))] for hook in own}
    for part in parts:
        if not isinstance(part, Handler | AsyncHandler):
            raise ValueError(f"a part must be a Handler or AsyncHandler, not {type(part).__name__}")
        for hook in overridden_hooks(part):
            defined.setdefault(hook, []).append((type(part).__name__, getattr(part, hook)))
    for hook, hooks in sorted(defined.items()):
        if len(hooks) > 1 and hook not in EVERY_PART:
            names = " and ".join(name for name, _ in hooks)
            raise ValueError(f"{hook} is defined by {names}: only one part may answer it")
        if len(hooks) > 1:
            setattr(composite, hook, _each(tuple(function for _, function in hooks)))
        elif hook not in own:  # a part's hook, called as it is
            setattr(composite, hook, hooks[0][1])


def _each(hooks: tuple[Hook, ...]) -> Hook:
    """A hook that calls each of ``hooks`` in turn (waiting for those that return an awaitable)."""

    def call_each(*args: object) -> object:
        return _call_from(hooks, 0, args, None)

    return call_each


def _call_from(hooks: tuple[Hook, ...], start: int, args: tuple[object, ...], error: Exception | None) -> object:
    for index in range(start, len(hooks)):
        try:
            result = hooks[index](*args)
        except Exception as raised:
            error = error or raised
            continue
        if inspect.isawaitable(result):
            return _await_from(result, hooks, index + 1, args, error)
    if error is not None:
        raise error
    return None


async def _await_from(
    pending: Awaitable[object], hooks: tuple[Hook, ...], start: int, args: tuple[object, ...], error: Exception | None
) -> None:
    try:
        await pending
    except Exception as raised:
        error = error or raised
    rest = _call_from(hooks, start, args, error)
    if inspect.isawaitable(rest):
        await rest
