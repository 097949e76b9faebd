"""How a server stops: the same steps and deadlines on every adapter.

Once it stops accepting, a server takes each step of ``shutdown_plan`` in
turn, and after each waits for its sessions to end for at most the step's
seconds, going on at once when none is left::

    for step, wait in shutdown_plan(options, grace):
        server.take(step)       # every open session
        wait for the sessions, at most ``wait`` seconds
"""

from __future__ import annotations

import enum

from ._options import ServerOptions

#: Seconds a session told to close (or dropped) has to end, after the grace, before the server gives up on it.
ABORT_AFTER = 5.0


class ShutdownStep(enum.Enum):
    """One step of a graceful shutdown, taken on every session still open."""

    IDLE = "421 4.3.2 now if idle, else when the transaction ends"
    FORCE = "421 4.3.2 now, even inside a transaction"
    DROP = "close the connection without a word"


def shutdown_plan(options: ServerOptions, grace: float | None = None) -> tuple[tuple[ShutdownStep, float], ...]:
    """Each step and the seconds to wait after it; ``grace`` defaults to ``options.shutdown_grace``."""
    return (
        (ShutdownStep.IDLE, options.shutdown_grace if grace is None else grace),
        (ShutdownStep.FORCE, ABORT_AFTER),
        (ShutdownStep.DROP, ABORT_AFTER),
    )
