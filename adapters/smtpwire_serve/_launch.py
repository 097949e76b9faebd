"""The ``smtpwire`` command's entry point: standard library only, so a missing extra is one line, not a traceback.

``pip install smtpwire`` installs the command without the ``cli`` extra
(click, anyio, cryptography); this module checks that what the command is
about to use can be imported, and otherwise says what to install.
"""

from __future__ import annotations

import importlib
import itertools
import signal
import sys
from collections.abc import Sequence

#: What every command needs: the ``cli`` extra.
CLI_MODULES = ("click", "anyio", "cryptography")
#: What an option needs: (option, value, module, extra); checked here only, as every way in starts here.
OPTIONAL = (("--backend", "trio", "trio", "cli"), ("--loop", "uvloop", "uvloop", "uvloop"))


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def chosen(args: Sequence[str], option: str, value: str) -> bool:
    """Whether ``args`` hold ``option value`` or ``option=value``."""
    return f"{option}={value}" in args or (option, value) in itertools.pairwise(args)


def missing(args: Sequence[str]) -> str | None:
    """The line saying what to install, or ``None`` when everything needed is there."""
    absent = [module for module in CLI_MODULES if not importable(module)]
    if absent:
        return f"smtpwire: the command needs the 'cli' extra ({', '.join(absent)} missing): pip install 'smtpwire[cli]'"
    for option, value, module, extra in OPTIONAL:
        if chosen(args, option, value) and not importable(module):
            return f"smtpwire: {option} {value} needs {module}: pip install 'smtpwire[{extra}]'"
    return None


#: The exit status of a command a signal ended, as a shell reports it: 128 + SIGINT.
INTERRUPTED = 128 + signal.SIGINT


def quiet_interrupt() -> None:
    """Until serve handles SIGINT itself, Ctrl-C ends the command quietly: no traceback of whatever was loading."""
    signal.signal(signal.SIGINT, _exit_interrupted)


def _exit_interrupted(signum: int, frame: object) -> None:
    sys.exit(INTERRUPTED)


def main() -> None:
    quiet_interrupt()
    problem = missing(sys.argv[1:])
    if problem is not None:
        print(problem, file=sys.stderr)
        sys.exit(1)
    from ._cli import main as cli

    cli()
