"""The benchmark suite runs: ``python -m bench --quick`` exits 0 and prints every row.

Figures are never checked here (the machine is shared and noisy); ``bench/RESULTS.md`` holds
a full run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.run import SCENARIOS

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


def _quick_row(key: str, *, timeout: float) -> dict[str, Any]:
    """One scenario's quick row, run alone; a row skipped for want of a program skips the
    test, or fails it when BATCHMON_REQUIRE_TOOLS is set."""
    done = _bench(["-m", "bench", "--scenario", key, "--quick"], ROOT, timeout=timeout)
    assert 0 == done.returncode, done.stdout + done.stderr
    row: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    if row.get("skipped"):
        if os.environ.get("BATCHMON_REQUIRE_TOOLS"):
            pytest.fail(f"{row['ours']}, but BATCHMON_REQUIRE_TOOLS is set")
        pytest.skip(row["ours"])
    return row


def _rows(table: str) -> list[str]:
    """The scenario keys of the table's rows (rich draws with box characters, or ASCII)."""
    return re.findall(r"^[│|] (P\d+) +[│|]", table, re.MULTILINE)


@pytest.mark.timeout(240)
def test_quick_bench_prints_every_scenario() -> None:
    """The quick run ends well and its table has a row for each scenario, each with a verdict."""
    done = _bench(["-m", "bench", "--quick"], ROOT, timeout=230)
    assert 0 == done.returncode, done.stdout + done.stderr
    rows = _rows(done.stdout)
    assert list(SCENARIOS) == rows, done.stdout
    verdicts = re.findall(r"[│|] (pass|FAIL|skipped) +[│|]$", done.stdout, re.MULTILINE)
    assert len(SCENARIOS) == len(verdicts), done.stdout


@pytest.mark.timeout(120)
def test_p11_times_postgres_beside_sqlite() -> None:
    """P11's quick row: both stores' p99 and p50, their ratio, judged against 2x SQLite's."""
    row = _quick_row("P11", timeout=110)
    figures = r"p99 \d+\.\d ms \(p50 \d+\.\d ms\)"
    assert re.fullmatch(figures, row["ours"]), row
    assert re.fullmatch(f"SQLite {figures}", row["baseline"]), row
    assert re.fullmatch(r"\d+\.\d\dx", row["ratio"]), row
    assert ("P11", "p99 ≤ 2x SQLite") == (row["key"], row["target"])
    assert isinstance(row["passed"], bool), row
    (note,) = row["notes"]
    assert "on PostgreSQL" in note, note
    assert "0 signatures rejected" in note, note


@pytest.mark.timeout(150)
def test_p12_times_failover_against_its_bound() -> None:
    """P12's quick row: the worst and median takeover, the bound, their ratio, every round."""
    row = _quick_row("P12", timeout=140)
    assert re.fullmatch(r"max \d+\.\d s \(median \d+\.\d s\)", row["ours"]), row
    assert "bound 6 s" == row["baseline"], row
    assert re.fullmatch(r"\d+\.\d\dx", row["ratio"]), row
    assert ("P12", "≤ lease_ttl + interval") == (row["key"], row["target"])
    assert isinstance(row["passed"], bool), row
    (note,) = row["notes"]
    assert "lease_ttl 5 s; 2 rounds" in note, note
    assert re.search(r"\(s\): \d+\.\d, \d+\.\d\.$", note), note


def test_run_py_runs_as_a_script(tmp_path: Path) -> None:
    """``python bench/run.py`` (the issue's other spelling) runs the suite too, from anywhere."""
    done = _bench(
        [str(ROOT / "bench" / "run.py"), "--quick", "--only", "P7"], tmp_path, timeout=120
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    assert ["P7"] == _rows(done.stdout), done.stdout


@pytest.mark.timeout(120)
def test_p10_sets_one_process_beside_one_per_tenant() -> None:
    """P10's quick row: RSS, requests per tenant and cycle times of both sides, and ratios."""
    row = _quick_row("P10", timeout=110)
    figures = r"RSS [\d,]+ MB; \d+\.\d req/tenant/min; cycle p50 \d+ ms \(p95 \d+\)"
    assert re.fullmatch(figures, row["ours"]), row
    assert re.fullmatch(rf"20 processes \(2 sampled\): {figures}", row["baseline"]), row
    assert re.fullmatch(r"RSS \d\.\d{3}x; req \d+\.\d\dx; cycle p95 \d+\.\dx", row["ratio"]), row
    assert ("P10", "20 tenants x 10 tasks in one process") == (row["key"], row["scenario"])
    assert isinstance(row["passed"], bool), row
    sides, start = row["notes"]
    assert "one process for all 20 tenants" in sides, sides
    assert re.search(r"\d+ open files of which \d+ sockets", start), start
