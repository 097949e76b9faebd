"""Handler mistakes caught when the server is built, before a client sends a single message.

A mistake found only when a hook returns comes too late: ``message`` has
stored the mail by then, and the 451 that follows makes the client send it
again.  So what can be seen in the handler's class is refused up front.
"""

from __future__ import annotations

import inspect
import re

from ._handler import AsyncHandler, Handler

#: aiosmtpd's hook names, and the smtpwire hook each one becomes.
_AIOSMTPD = {
    "handle_HELO": "helo",
    "handle_EHLO": "ehlo",
    "handle_MAIL": "mail_from",
    "handle_RCPT": "rcpt_to",
    "handle_DATA": "message",
    "handle_VRFY": "vrfy",
    "handle_RSET": "rset",
    "handle_QUIT": "quit",
    "handle_AUTH": "authenticate",
    "handle_STARTTLS": "tls_started",
    "handle_exception": "error",
}
_HOOK_ARGUMENTS = {
    name: len(inspect.signature(hook).parameters) - 1 for name, hook in vars(Handler).items() if name[0] != "_"
}
#: The hooks whose answer goes to the client: a ``str`` there is aiosmtpd's "250 OK" habit.
_ANSWERING = frozenset(_HOOK_ARGUMENTS) - {"credentials", "data_chunk", "message_aborted", "rset", "quit"}
_STR = re.compile(r"\bstr\b")
_CHECKED: set[tuple[type[object], bool]] = set()  # handler classes found sound: bounded by the code


def check_handler(handler: object, *, can_await: bool) -> None:
    """``ValueError`` for a handler that would fail on its first client, or after storing a message.

    Checked once per class (and per instance that sets hooks of its own), so
    an adapter may call it for every session.
    """
    from ._driver import overridden_hooks  # the driver imports this module's users

    cls = type(handler).__name__
    if not isinstance(handler, Handler | AsyncHandler):
        raise ValueError(f"handler must be a Handler or AsyncHandler subclass, not {cls}")
    own_hooks = bool(vars(handler).keys() & _HOOK_ARGUMENTS.keys()) if hasattr(handler, "__dict__") else False
    if not own_hooks and (type(handler), can_await) in _CHECKED:
        return
    names = set(dir(type(handler))) | set(getattr(handler, "__dict__", ()))
    for name in sorted(names):
        if name.startswith("handle_"):
            hint = f"define {_AIOSMTPD[name]}()" if name in _AIOSMTPD else "see the hooks of smtpwire's Handler"
            raise ValueError(f"{cls}.{name} is an aiosmtpd hook, which smtpwire never calls: {hint}")
    for hook in sorted(overridden_hooks(handler)):
        function = object.__getattribute__(handler, hook)  # not the class's own lookup, which may record calls
        if not can_await and inspect.iscoroutinefunction(function):
            raise ValueError(f"{cls}.{hook} is async def: this adapter calls plain hooks (use def)")
        try:
            inspect.signature(function).bind(*range(_HOOK_ARGUMENTS[hook]))
        except TypeError:
            raise ValueError(
                f"{cls}.{hook} must take {_HOOK_ARGUMENTS[hook]} arguments like Handler.{hook}"
                f"{inspect.signature(getattr(Handler, hook))}, not {inspect.signature(function)}"
            ) from None
        returns = inspect.get_annotations(function).get("return")
        shown = returns if isinstance(returns, str) else getattr(returns, "__name__", repr(returns))
        if hook in _ANSWERING and returns is not None and _STR.search(shown):
            raise ValueError(f"{cls}.{hook} is declared to return {shown}: answers are smtpwire.Reply values, not str")
    if not own_hooks:
        _CHECKED.add((type(handler), can_await))
