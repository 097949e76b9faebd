"""The fuzz targets of fuzz/ as modules, for the tests that replay their seed corpora without atheris."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

FUZZ = pathlib.Path(__file__).resolve().parents[1] / "fuzz"


def load_target(name: str) -> ModuleType:
    """``fuzz/<name>.py``, imported anew (its ``TestOneInput`` replays a seed; atheris is not needed)."""
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
