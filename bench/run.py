"""Run the benchmark scenarios and print one table: ``python -m bench [--quick] [--only P1,P3]``.

Each scenario (see issues 6, 13 and 16, and :mod:`bench.scenarios`) returns a :class:`Row`: our figure,
the baseline's, their ratio, the target and whether it holds.  Each runs in a fresh
interpreter (``--scenario KEY`` prints its row as JSON), so that one scenario's heap,
threads and caches never weigh on the next; ours and its baseline still run side by side
in that one process.  The machine is printed on top, the notes on how each figure was
taken below.  A scenario that cannot run shows as an error row and makes the exit status
1; targets that do not hold do not (CI runs ``--quick`` only to see that the suite runs), nor
does a row skipped for want of a program (P11, P12 without PostgreSQL's), which says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.scenarios.common import Row
from bench.scenarios.delivery import detection_to_delivery
from bench.scenarios.discovery import discovery_requests
from bench.scenarios.failover import failover
from bench.scenarios.memory import memory_per_tasks
from bench.scenarios.month import month_of_tasks
from bench.scenarios.requests import requests_per_hour
from bench.scenarios.startup import startup_to_ready
from bench.scenarios.store_delivery import postgres_beside_sqlite
from bench.scenarios.tenants import many_tenants
from bench.scenarios.throughput import bulk_cycle, per_id_polling, scrape_under_polling

__all__ = ["SCENARIOS", "main"]

#: Every scenario by key, in table order; each takes ``quick``.
SCENARIOS: dict[str, tuple[str, Callable[[bool], Row]]] = {
    "P1": ("per-id polling", per_id_polling),
    "P2": ("bulk list cycle", bulk_cycle),
    "P3": ("detection to delivery", detection_to_delivery),
    "P4": ("memory", memory_per_tasks),
    "P5": ("API requests per hour", requests_per_hour),
    "P6": ("/metrics under polling", scrape_under_polling),
    "P7": ("start-up to READY", startup_to_ready),
    "P8": ("discovery requests", discovery_requests),
    "P9": ("a month of churn", month_of_tasks),
    "P10": ("many tenants in one process", many_tenants),
    "P11": ("detection to delivery, PostgreSQL", postgres_beside_sqlite),
    "P12": ("failover to another replica", failover),
}


def machine() -> str:
    """CPU model, cores, Python and the load when the run began."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}; "
        f"load average {load}"
    )


def _run(key: str, name: str, quick: bool) -> Row:
    """Run one scenario in a child interpreter and read back its row."""
    command = [sys.executable, "-m", "bench", "--scenario", key, *(["--quick"] if quick else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        data = json.loads(done.stdout.splitlines()[-1])
        return Row(**{**data, "notes": tuple(data["notes"])})
    sys.stderr.write(done.stderr)
    return Row(key, name, "error", "—", "—", "—", None, (f"{key}: exit {done.returncode}",))


def _scenario(key: str, quick: bool) -> int:
    """In the child: run one scenario, print its row as JSON (the last line)."""
    if key not in SCENARIOS:
        sys.stderr.write(f"unknown scenario {key}\n")
        return 2
    row = SCENARIOS[key][1](quick)
    print(json.dumps(dataclasses.asdict(row)), flush=True)
    return 0


def table(rows: Sequence[Row], title: str) -> Table:
    """The results as a rich table."""
    result = Table(title=title, title_justify="left")
    for column in ("#", "scenario", "ours", "baseline", "ratio", "target", "result"):
        result.add_column(column, overflow="fold")
    for row in rows:
        verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[red]ERROR[/]"}
        result.add_row(
            row.key,
            row.scenario,
            row.ours,
            row.baseline,
            row.ratio,
            row.target,
            "[yellow]skipped[/]" if row.skipped else verdict[row.passed],
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen scenarios, print the table; 1 if any scenario failed to run."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (CI)")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help="comma-separated keys, e.g. P1,P3"
    )
    parser.add_argument(
        "--scenario", metavar="KEY", help="run one scenario here and print its row as JSON"
    )
    args = parser.parse_args(argv)
    if args.scenario is not None:
        return _scenario(args.scenario.upper(), args.quick)
    keys = [key.strip().upper() for key in args.only.split(",") if key.strip()]
    unknown = sorted(set(keys) - set(SCENARIOS))
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    console = Console(width=160)
    console.print(f"machine: {machine()}", highlight=False, markup=False)
    began = time.perf_counter()
    rows = []
    for key in keys:
        name, _ = SCENARIOS[key]
        console.print(f"running {key} ({name}) …", style="dim", highlight=False)
        rows.append(_run(key, name, args.quick))
    mode = "quick" if args.quick else "full"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    console.print(table(rows, f"batchmon benchmarks ({mode}, {stamp})"))
    for row in rows:
        for note in row.notes:
            console.print(note, highlight=False, markup=False)
    console.print(f"total {time.perf_counter() - began:.0f} s", highlight=False)
    return 1 if any(row.passed is None and not row.skipped for row in rows) else 0


if __name__ == "__main__":  # python bench/run.py, as well as python -m bench
    raise SystemExit(main())
