"""What each fuzz target's command line does: write its named seeds (``--write-seeds DIR``), or fuzz with atheris."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType


def main(test_one_input: Callable[[bytes], None], seeds: Mapping[str, bytes], atheris: ModuleType | None) -> None:
    if sys.argv[1:2] == ["--write-seeds"]:
        directory = Path(sys.argv[2])
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
    elif atheris is None:
        sys.exit("atheris is not installed: pip install atheris (the corpus replays without it in the tests)")
    else:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
