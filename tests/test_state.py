"""The state machine is data: ``_state.TRANSITIONS`` is complete, applied in one place, and all of it used."""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import pytest

import smtpwire
from smtpwire import State
from smtpwire._state import TRANSITIONS, Outcome

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONNECTION = ROOT / "src" / "smtpwire" / "_connection.py"
CORPUS = ROOT / "fuzz" / "corpus"


def test_every_state_has_a_row_and_every_row_can_close() -> None:
    assert set(TRANSITIONS) == set(State)
    for state, row in TRANSITIONS.items():
        assert row[Outcome.CLOSED] is State.CLOSED, state
    assert TRANSITIONS[State.CLOSED] == {Outcome.CLOSED: State.CLOSED}


def test_only_the_end_leads_to_closed_and_nothing_leads_back_to_the_greeting() -> None:
    for state, row in TRANSITIONS.items():
        for outcome, after in row.items():
            assert (after is State.CLOSED) == (outcome is Outcome.CLOSED), (state, outcome)
            assert after is not State.GREETING


def assigners(path: pathlib.Path, attribute: str) -> set[str]:
    """The functions in ``path`` that assign ``self.<attribute>`` (or any object's)."""
    tree = ast.parse(path.read_text())
    return {
        function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute) and target.attr == attribute
    }


def test_the_connection_sets_its_state_only_through_the_table() -> None:
    """Every ``self._state =`` outside ``__init__`` is in ``_move``, which looks the table up."""
    assert assigners(CONNECTION, "_state") == {"__init__", "_move"}


def test_the_fuzz_corpus_takes_every_transition(monkeypatch: pytest.MonkeyPatch) -> None:
    """No row of the table is dead data: the seeds reach each one (and only rows of the table)."""
    spec = importlib.util.spec_from_file_location("fuzz_connection", ROOT / "fuzz" / "fuzz_connection.py")
    assert spec is not None and spec.loader is not None
    target = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(target)
    taken: set[tuple[State, Outcome]] = set()
    move = smtpwire.ServerConnection._move

    def recording(conn: smtpwire.ServerConnection, outcome: Outcome) -> None:
        taken.add((conn.state, outcome))
        move(conn, outcome)

    monkeypatch.setattr(smtpwire.ServerConnection, "_move", recording)
    for path in sorted(CORPUS.iterdir()):
        target.TestOneInput(path.read_bytes())
    assert taken == {(state, outcome) for state, row in TRANSITIONS.items() for outcome in row}
