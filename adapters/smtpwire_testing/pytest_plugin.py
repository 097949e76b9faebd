"""The pytest plugin: ``mail_server`` fixtures, the ``mail_server`` marker, transcripts in failure reports.

Registered through the ``pytest11`` entry point; importing it starts
nothing and imports no more than pytest (the server's modules load with the
first fixture): a server runs only for a test that asks for one.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._server import MailServer, MailServerView

MARKER = "mail_server"
_VIEWS = pytest.StashKey["list[MailServerView]"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): MailServer options for the mail_server fixture (tls=, users=, strict=, hostname=, ...);"
        " at module level (pytestmark) also for mail_server_module",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used a mail server gets its SMTP transcript as a report section."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for view in item.stash.get(_VIEWS, []):
        report.sections.append((f"smtpwire transcript {view.host}:{view.port}", view.transcript or "(no session)"))


@pytest.fixture(scope="session")
def mail_server_ca() -> Any:
    """The test run's ``trustme.CA`` (made once): every TLS server's certificate comes from it."""
    from ._tls import test_ca

    return test_ca()


@pytest.fixture
def mail_server(request: pytest.FixtureRequest) -> Iterator[MailServer]:
    """A MailServer of this test's own, configured by the nearest ``@pytest.mark.mail_server(...)``."""
    with _server_class()(**_marker_options(request.node)) as server:
        _remember(request, server)
        yield server


@pytest.fixture(scope="module")
def _mail_server_module_instance(request: pytest.FixtureRequest) -> Iterator[MailServer]:
    with _server_class()(**_marker_options(request.node)) as server:
        yield server


@pytest.fixture
def mail_server_module(
    request: pytest.FixtureRequest, _mail_server_module_instance: MailServer
) -> Iterator[MailServerView]:
    """This test's view of a server shared by the module (configured by the module's ``pytestmark``)."""
    _refuse_own_marker(request, "mail_server_module", "the module's pytestmark")
    yield from _viewed(request, _mail_server_module_instance)


@pytest.fixture(scope="session")
def mail_server_session_options() -> dict[str, Any]:
    """Override in conftest.py to configure ``mail_server_session``: the MailServer options."""
    return {}


@pytest.fixture(scope="session")
def _mail_server_session_instance(mail_server_session_options: dict[str, Any]) -> Iterator[MailServer]:
    with _server_class()(**mail_server_session_options) as server:
        yield server


@pytest.fixture
def mail_server_session(
    request: pytest.FixtureRequest, _mail_server_session_instance: MailServer
) -> Iterator[MailServerView]:
    """This test's view of one server shared by the whole run (or by one pytest-xdist worker)."""
    _refuse_own_marker(request, "mail_server_session", "the mail_server_session_options fixture")
    yield from _viewed(request, _mail_server_session_instance)


@pytest.fixture
def mail_server_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., MailServer]]:
    """``mail_server_factory(**options)``: more servers, started now, stopped after the test."""
    servers: list[MailServer] = []

    def make(**options: Any) -> MailServer:
        server = _server_class()(**options).start()
        servers.append(server)
        _remember(request, server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


def _server_class() -> type[MailServer]:
    from ._server import MailServer

    return MailServer


def _marker_options(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    """The ``mail_server`` markers' options, the nearest (function, then class, then module) winning."""
    options: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers(MARKER))):
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword options only, not {marker.args!r}")
        options.update(marker.kwargs)
    _refuse_unknown_options(options)
    return options


def _refuse_unknown_options(options: dict[str, Any]) -> None:
    """A misspelt option (``user=``) fails with the option meant, not with a TypeError from deep inside."""
    known = list(inspect.signature(_server_class()).parameters)
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; the options are {', '.join(known)}"
            pytest.fail(f"@pytest.mark.{MARKER} has no option {name!r}{hint}", pytrace=False)


def _refuse_own_marker(request: pytest.FixtureRequest, fixture: str, where: str) -> None:
    if any(marker.name == MARKER for marker in request.node.own_markers):
        pytest.fail(
            f"@pytest.mark.{MARKER} on a test configures the mail_server fixture only; {fixture} is shared,"
            f" configure it with {where} (or use mail_server for this test)",
            pytrace=False,
        )


def _viewed(request: pytest.FixtureRequest, server: MailServer) -> Iterator[MailServerView]:
    view = server.view()
    _remember(request, view)
    try:
        yield view
    finally:
        view.close()


def _remember(request: pytest.FixtureRequest, view: MailServerView) -> None:
    request.node.stash.setdefault(_VIEWS, []).append(view)
