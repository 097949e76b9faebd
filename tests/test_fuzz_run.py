"""A short coverage-guided atheris run of the fuzz target, so CI fuzzes every change a little."""

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("atheris", reason="atheris has no build for this platform; the corpus replay still runs")

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNS = 20_000


def test_short_fuzz_run_finds_nothing(tmp_path: pathlib.Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "fuzz" / "corpus", corpus)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "fuzz_connection.py"),
            f"-atheris_runs={RUNS}",
            "-max_len=4096",
            "-timeout=10",
            "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stderr[-4000:]
    assert result.returncode == 0, log
    done = re.search(r"Done (\d+) (?:runs )?in", result.stderr)
    assert done is not None and int(done[1]) >= RUNS - 1, log
    assert not list(tmp_path.glob("crash-*")), log
