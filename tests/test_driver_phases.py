"""The driver's lifecycle is data: ``_PHASES`` is applied in one place, and each row is taken by a real session."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest

from smtpwire_handler import DEFAULT_OUTCOMES, Handler, ServerOptions, TLSInfo
from smtpwire_handler._driver import _EVENT_HOOKS, _PHASES, Happening
from smtpwire_handler.kit import CLOSED, NEED_DATA, START_TLS, Phase, SessionDriver
from tests import certs
from tests.test_driver import Clock, log, run
from tests.test_state import assigners

ROOT = pathlib.Path(__file__).resolve().parents[1]
DRIVER = ROOT / "adapters" / "smtpwire_handler" / "_driver.py"
TLS = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
PROXY = ServerOptions(proxy_protocol_from=("127.0.0.0/8",))
V1 = b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 25\r\n"


def test_every_phase_can_end_and_nothing_leads_back_to_the_start() -> None:
    reached = {after for after in _PHASES.values()}
    assert reached == set(Phase) - {Phase.PROXY}  # a PROXY header is read first or never
    for phase in Phase:
        assert (phase, Happening.FAILED) in _PHASES, phase  # an unexpected error ends any phase
    assert {after for (before, _), after in _PHASES.items() if before is Phase.CLOSED} == {Phase.CLOSED}


def test_the_driver_sets_its_phase_only_through_the_table() -> None:
    """Every ``self.phase =`` outside ``__init__`` is in ``_move``, which looks the table up."""
    assert assigners(DRIVER, "phase") == {"__init__", "_move"}


def test_a_happening_the_table_does_not_allow_is_a_bug_said_plainly() -> None:
    driver = SessionDriver(Handler(), ServerOptions(), log=log, peer=("127.0.0.1", 1))
    with pytest.raises(RuntimeError, match="the PROXY header was read cannot happen while the core converses"):
        driver._move(Happening.PROXY_READ)
    assert driver.phase is Phase.CONVERSATION


def tls_options() -> ServerOptions:
    return ServerOptions(tls_context=certs.server_context())


def to_closed(driver: SessionDriver) -> None:
    for _ in range(20):
        if driver.next_step() is CLOSED:
            return
    raise AssertionError("the session never closed")


def proxy_read(driver: SessionDriver) -> None:
    run(driver, V1 + b"QUIT\r\n")
    to_closed(driver)


def proxy_refused(driver: SessionDriver) -> None:
    run(driver, b"GET / HTTP/1.1\r\n\r\n")
    to_closed(driver)


def starttls(driver: SessionDriver) -> None:
    run(driver, b"EHLO c.example\r\n")
    assert run(driver, b"STARTTLS\r\n")[1] is START_TLS
    driver.tls_started(TLS)
    run(driver, b"QUIT\r\n")
    to_closed(driver)


def starttls_fails(driver: SessionDriver) -> None:
    run(driver, b"EHLO c.example\r\n")
    assert run(driver, b"STARTTLS\r\n")[1] is START_TLS
    driver.tls_failed("bad record mac")
    to_closed(driver)


def fails_in_conversation(driver: SessionDriver) -> None:
    run(driver)
    assert driver.fail(RuntimeError("a bug")) is True
    to_closed(driver)


def fails_while_closing(driver: SessionDriver) -> None:
    run(driver, b"QUIT\r\n")
    assert driver.fail(RuntimeError("a bug")) is False
    assert driver.next_step() is CLOSED


def fails_before_the_header(driver: SessionDriver) -> None:
    assert driver.fail(RuntimeError("a bug")) is True
    to_closed(driver)


def fails_in_the_handshake(driver: SessionDriver) -> None:
    assert driver.next_step() is START_TLS
    assert driver.fail(RuntimeError("a bug")) is True
    to_closed(driver)


def fails_twice(driver: SessionDriver) -> None:
    run(driver)
    assert driver.fail(RuntimeError("a bug")) is True
    assert driver.fail(RuntimeError("another")) is False  # in CLOSING: the hooks are given up
    assert driver.next_step() is CLOSED


SCENARIOS: dict[str, tuple[Callable[[], SessionDriver], Callable[[SessionDriver], None]]] = {
    "proxy read": (lambda: SessionDriver(Handler(), PROXY, log=log, peer=("127.0.0.1", 1)), proxy_read),
    "proxy refused": (lambda: SessionDriver(Handler(), PROXY, log=log, peer=("127.0.0.1", 1)), proxy_refused),
    "proxy, then a bug": (
        lambda: SessionDriver(Handler(), PROXY, log=log, peer=("127.0.0.1", 1)),
        fails_before_the_header,
    ),
    "starttls": (lambda: SessionDriver(Handler(), tls_options(), log=log), starttls),
    "starttls fails": (lambda: SessionDriver(Handler(), tls_options(), log=log), starttls_fails),
    "implicit tls, then a bug": (
        lambda: SessionDriver(Handler(), tls_options(), log=log, implicit_tls=True),
        fails_in_the_handshake,
    ),
    "a bug mid-conversation": (lambda: SessionDriver(Handler(), ServerOptions(), log=log), fails_in_conversation),
    "a bug while closing": (lambda: SessionDriver(Handler(), ServerOptions(), log=log), fails_while_closing),
    "two bugs": (lambda: SessionDriver(Handler(), ServerOptions(), log=log), fails_twice),
}


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[tuple[Phase, Happening]]]:
    rows: set[tuple[Phase, Happening]] = set()
    move = SessionDriver._move

    def recording(driver: SessionDriver, happening: Happening) -> None:
        rows.add((driver.phase, happening))
        move(driver, happening)

    monkeypatch.setattr(SessionDriver, "_move", recording)
    yield rows


def test_real_sessions_take_every_row_of_the_table(taken: set[tuple[Phase, Happening]]) -> None:
    """No row is dead data; the implicit-TLS handshake's success is its own row too."""
    for make, play in SCENARIOS.values():
        driver = make()
        play(driver)
        assert driver.phase is Phase.CLOSED
    implicit = SessionDriver(Handler(), tls_options(), log=log, implicit_tls=True)
    assert implicit.next_step() is START_TLS
    implicit.tls_failed("no shared cipher")
    to_closed(implicit)
    assert taken == set(_PHASES)


def test_a_timed_out_proxy_header_and_a_timed_out_handshake_end_without_a_word() -> None:
    clock = Clock()
    proxied = SessionDriver(Handler(), PROXY, log=log, peer=("127.0.0.1", 1), clock=clock)
    assert run(proxied) == (b"", NEED_DATA)
    proxied.timed_out()
    assert run(proxied) == (b"", CLOSED)
    handshaking = SessionDriver(Handler(), tls_options(), log=log, implicit_tls=True)
    assert handshaking.next_step() is START_TLS
    handshaking.timed_out()
    assert run(handshaking) == (b"", CLOSED)


def test_hooks_that_answer_commands_default_to_the_standard_answer() -> None:
    """The driver answers an unoverridden command hook with the standard reply, without the table: it must agree."""
    assert {hook: DEFAULT_OUTCOMES[hook] for hook, _ in _EVENT_HOOKS.values()} == dict.fromkeys(
        (hook for hook, _ in _EVENT_HOOKS.values()), None
    )
