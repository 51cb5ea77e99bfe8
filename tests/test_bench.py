"""The benchmark suite runs: ``python -m bench --quick`` exits 0 and prints all nine rows.

Figures are never checked here (the machine is shared and noisy); ``bench/RESULTS.md`` holds
a full run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(args: list[str], cwd: Path, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the interpreter with ``args`` in ``cwd``, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _rows(table: str) -> list[str]:
    """The scenario keys of the table's rows (rich draws with box characters, or ASCII)."""
    return re.findall(r"^[│|] (P[1-9]) +[│|]", table, re.MULTILINE)


@pytest.mark.timeout(180)
def test_quick_bench_prints_every_scenario() -> None:
    """The quick run ends well and its table has a row for each of P1-P9."""
    done = _bench(["-m", "bench", "--quick"], ROOT, timeout=170)
    assert 0 == done.returncode, done.stdout + done.stderr
    rows = _rows(done.stdout)
    assert [f"P{n}" for n in range(1, 10)] == rows, done.stdout
    verdicts = re.findall(r"[│|] (pass|FAIL) +[│|]$", done.stdout, re.MULTILINE)
    assert 9 == len(verdicts), done.stdout


def test_run_py_runs_as_a_script(tmp_path: Path) -> None:
    """``python bench/run.py`` (the issue's other spelling) runs the suite too, from anywhere."""
    done = _bench(
        [str(ROOT / "bench" / "run.py"), "--quick", "--only", "P7"], tmp_path, timeout=120
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    assert ["P7"] == _rows(done.stdout), done.stdout
