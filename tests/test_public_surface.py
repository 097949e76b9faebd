"""Every adapter's public surface is guessable: the handler API, a ``Server``, an ``<Adapter>Session``, ``serve()``."""

from __future__ import annotations

import importlib

import pytest

import smtpwire_handler.kit

#: What each adapter exports beside the handler API: a server, its session class named after it, serve().
SURFACES = {
    "smtpwire_asyncio": ("Server", "AsyncioSession", "serve"),
    "smtpwire_anyio": ("Server", "AnyioSession", "serve"),
    "smtpwire_blocking": ("Server", "BlockingSession", "serve"),
    "smtpwire_memorybio": ("MemoryBIOSession",),  # bytes in, bytes out: the application's loop is the server
}


@pytest.mark.parametrize("adapter", SURFACES)
def test_every_adapter_names_its_server_and_session_the_same_way(adapter: str) -> None:
    module = importlib.import_module(adapter)
    for name in SURFACES[adapter]:
        assert name in module.__all__, f"{adapter}.__all__ lacks {name}"
    for name in module.__all__:
        assert not name.endswith(("Protocol", "Runner")), f"{adapter}.{name}: sessions are <Adapter>Session"
    assert not set(module.__all__) & set(smtpwire_handler.kit.__all__), "kit pieces stay in the kit"
    if "Server" in SURFACES[adapter]:
        assert issubclass(module.Server, smtpwire_handler.kit.ServerBase)
