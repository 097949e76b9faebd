"""A check in progress, h11-style: it asks DNS questions and is given the answers until it has its result.

Each check is written as a generator that yields the queries it needs next
(all of them may be asked at once) and is sent back a mapping from each
query to its answer; its return value is the result.  ``Check`` wraps one
for the I/O layer, ``run`` drives one with a plain resolver function (the
blocking adapter, the tests), and ``gather`` runs several side by side so
their questions go out together.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any, Generic, TypeVar

from ._dns import DNSAnswer, DNSQuery

R = TypeVar("R")
#: What a check is written as: yields the questions, is sent their answers, returns the result.
Steps = Generator[tuple[DNSQuery, ...], Mapping[DNSQuery, DNSAnswer], R]


def ask(*queries: DNSQuery) -> Steps[Mapping[DNSQuery, DNSAnswer]]:
    """``answers = yield from ask(q1, q2)``: the answers to ``queries``, asked together."""
    if not queries:
        return {}
    return (yield tuple(dict.fromkeys(queries)))


def ask_one(query: DNSQuery) -> Steps[DNSAnswer]:
    """``answer = yield from ask_one(query)``."""
    answers = yield from ask(query)
    return answers[query]


class Check(Generic[R]):
    """One verification: ``queries()`` says what it needs now, ``answer()`` gives it, ``result`` once ``done``."""

    __slots__ = ("_answers", "_pending", "_result", "_steps", "done")

    def __init__(self, steps: Steps[R]) -> None:
        self._steps = steps
        self._answers: dict[DNSQuery, DNSAnswer] = {}
        self._pending: tuple[DNSQuery, ...] = ()
        self._result: R | None = None
        self.done = False
        self._advance(None)

    def queries(self) -> tuple[DNSQuery, ...]:
        """The questions not yet answered that the check waits for; ``()`` once it is done."""
        return tuple(query for query in self._pending if query not in self._answers)

    def answer(self, query: DNSQuery, answer: DNSAnswer) -> None:
        """Give the answer to one of ``queries()``; once all are given, the check goes on."""
        if query not in self._pending or query in self._answers:
            raise ValueError(f"{query} was not asked, or was answered already")
        self._answers[query] = answer
        if len(self._answers) == len(self._pending):
            answers, self._answers = self._answers, {}
            self._advance(answers)

    @property
    def result(self) -> R:
        if not self.done:
            raise RuntimeError("the check still waits for answers to its queries()")
        return self._result  # type: ignore[return-value]

    def _advance(self, answers: Mapping[DNSQuery, DNSAnswer] | None) -> None:
        try:
            pending = self._steps.send(answers) if answers is not None else next(self._steps)
            while not pending:  # a step that asked nothing is answered at once (``ask()`` never yields one)
                pending = self._steps.send({})
        except StopIteration as finished:
            self._pending = ()
            self._result = finished.value
            self.done = True
        else:
            self._pending = pending


def run(check: Check[R], resolve: Callable[[DNSQuery], DNSAnswer]) -> R:
    """Drive ``check`` to its result with ``resolve`` answering one query at a time."""
    while not check.done:
        for query in check.queries():
            check.answer(query, resolve(query))
    return check.result


def gather(*steps: Steps[Any]) -> Steps[tuple[Any, ...]]:
    """Several checks side by side: each round asks every unfinished one's questions together."""
    results: list[Any] = [None] * len(steps)
    waiting: dict[int, tuple[DNSQuery, ...]] = {}
    for index, step in enumerate(steps):
        _start(index, step, results, waiting)
    while len(waiting) > 1:
        answers = yield from ask(*(query for queries in waiting.values() for query in queries))
        for index, queries in list(waiting.items()):
            try:
                waiting[index] = steps[index].send({query: answers[query] for query in queries})
            except StopIteration as finished:
                del waiting[index]
                results[index] = finished.value
    for index, queries in waiting.items():  # the last one left asks on its own, its answers passed as they come
        results[index] = yield from _go_on(steps[index], queries)
    return tuple(results)


def _go_on(step: Steps[R], queries: tuple[DNSQuery, ...]) -> Steps[R]:
    """The rest of a started check whose next questions are ``queries``."""
    while True:
        try:
            queries = step.send((yield queries))
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]


def _start(index: int, step: Steps[Any], results: list[Any], waiting: dict[int, tuple[DNSQuery, ...]]) -> None:
    try:
        waiting[index] = next(step)
    except StopIteration as finished:
        results[index] = finished.value
