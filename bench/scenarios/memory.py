"""P4: the resident memory a daemon needs for 10,000 tasks, against the same daemon with none.

Each measurement is a fresh process (``python -m bench.scenarios.memory --child``) running
:class:`~monitor.daemon.Daemon` from an empty state database against the simulator process:
with tasks it waits for a full first cycle (every task fetched by id, parsed, tracked and
stored), without it waits for start-up; then it collects garbage and reports ``VmRSS`` (and
the peak, ``VmHWM``) from ``/proc/self/status``.  Runs with and without tasks alternate.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

from bench.scenarios.common import (
    ROOT,
    Row,
    daemon_config,
    median,
    quiet_logging,
    running_daemon,
    simulator_process,
)
from monitor.daemon import Daemon

__all__ = ["memory_per_tasks"]

#: The target: at most this much more resident memory with the tasks.
_TARGET_MB = 60.0
_KIB = re.compile(r"^(VmRSS|VmHWM):\s+(\d+) kB$", re.MULTILINE)


def _status_kib() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process, in KiB."""
    text = Path("/proc/self/status").read_text()
    return {name: int(value) for name, value in _KIB.findall(text)}


async def _measure(url: str, ids: list[int], state: Path) -> dict[str, int]:
    config = daemon_config(url, state, ids)
    if ids:
        async with running_daemon(config) as (daemon, _):
            if len(daemon.tracker.tasks) != len(ids):
                msg = f"tracking {len(daemon.tracker.tasks)} tasks, not {len(ids)}"
                raise RuntimeError(msg)
            gc.collect()
            return _status_kib()
    # Without tasks no cycle ever completes: measure once the daemon serves.
    async with anyio.create_task_group() as group:
        await group.start(Daemon(config).run)
        await anyio.sleep(0.5)
        gc.collect()
        status = _status_kib()
        group.cancel_scope.cancel()
    return status


def _child(url: str, first: int, count: int) -> None:
    """Run in the child process: print this process's memory after the daemon's first cycle."""
    quiet_logging()
    ids = list(range(first, first + count))
    with tempfile.TemporaryDirectory() as tmp:
        status = anyio.run(_measure, url, ids, Path(tmp) / "state.db")
    print(json.dumps(status), flush=True)


def _run_child(url: str, first: int, count: int) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.scenarios.memory", "--child", url, str(first), str(count)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    status: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return status


def memory_per_tasks(quick: bool) -> Row:
    """P4: RSS with ``count`` tracked tasks minus RSS with none, in fresh processes."""
    count, pairs = (1000, 1) if quick else (10_000, 3)
    with_tasks: list[dict[str, int]] = []
    without: list[dict[str, int]] = []
    with simulator_process(count) as sim:
        for _ in range(pairs):
            with_tasks.append(_run_child(sim.url, sim.ids[0], count))
            without.append(_run_child(sim.url, sim.ids[0], 0))
    rss_with = median([s["VmRSS"] for s in with_tasks]) / 1024
    rss_without = median([s["VmRSS"] for s in without]) / 1024
    peak = median([s["VmHWM"] for s in with_tasks]) / 1024
    grown = rss_with - rss_without
    return Row(
        "P4",
        f"memory, {count:,} tasks after a full cycle",
        f"{rss_with:.1f} MB RSS",
        f"{rss_without:.1f} MB RSS, no tasks",
        f"+{grown:.1f} MB",
        f"≤ +{_TARGET_MB:.0f} MB",
        grown <= _TARGET_MB,
        (
            (
                f"P4: fresh daemon processes from an empty state DB, first cycle of {count:,} GETs "
                f"(peak VmHWM {peak:.1f} MB); medians of {pairs} ABAB pairs."
            ),
        ),
    )


def main() -> None:
    """``--child URL FIRST COUNT``: measure one daemon process (what the parent runs)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=3, metavar=("URL", "FIRST", "COUNT"), required=True)
    url, first, count = parser.parse_args().child
    _child(url, int(first), int(count))


if __name__ == "__main__":
    main()
