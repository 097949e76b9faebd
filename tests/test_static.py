"""The core's promises that no unit test can see: strict typing and lint-clean code."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_core_is_mypy_strict_clean() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_and_format() -> None:
    lint = run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    form = run("ruff", "format", "--check", ".")
    assert form.returncode == 0, form.stdout + form.stderr


def test_readme_test_command_is_what_ci_runs() -> None:
    """README's set-up commands stay true: CI runs exactly the test command the README gives."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "pip install -e '.[test]' && python -m pytest"
    assert f"\n{test_command}\n" in readme
    assert ci.rstrip().endswith(test_command)
    assert "\npip install -e '.[cli]' && smtpwire serve\n" in readme
