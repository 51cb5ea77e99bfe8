"""P8: the requests one discovery rule costs to find 1,000 tasks, now and before issue 13.

A probe (``python -m bench.scenarios.discovery --tasks N``) runs :class:`~monitor.daemon.Daemon`
with the defaults users run and one ``[[watch.discover]]`` rule (its default states: New,
Aquired, Started) against an in-process :class:`~monitor.simulator.Simulator` holding ``N``
tasks in those states, on the clock of :class:`~bench.scenarios.skipping.SkippingLoop` (the
default 8 requests/s cost no real time).  The simulator counts the API requests it is sent; the
figure is that count when every task is tracked with its name and state (checked as each
request arrives, so a request sent after that moment is not counted).

The probe imports whichever ``monitor`` comes first on ``sys.path``.  The scenario runs it
twice, each in a fresh interpreter: with this tree's, and with the code of :data:`BEFORE`, the
last commit before list rows became full observations (extracted with ``git archive`` into a
temporary directory that goes first on the path).  The simulator's code is the same in both
(``monitor/simulator`` did not change in between), and each probe runs its own copy of it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from bench.scenarios.skipping import SkippingLoop

if TYPE_CHECKING:
    from bench.scenarios.common import Row

__all__ = ["BEFORE", "discovery_requests"]

#: The checkout this file is in.  The probe imports nothing else of bench's that imports
#: ``monitor``: it runs beside the older tree's too.
ROOT = Path(__file__).resolve().parents[2]
#: The last commit before issue 13's lifecycle core: discovery GETs each task it finds.
BEFORE = "373333d"
#: Requests at most, as a share of one GET per task found.
_TARGET_SHARE = 0.02
_START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
#: Simulated seconds a probe may take (the old code needs N / 8 requests/s).
_LIMIT = 1800.0
#: How the tasks are spread over the states the rule lists.
_SPREAD = (("New", 0.2), ("Aquired", 0.1), ("Started", 0.7))


class _Arrivals(list[str]):
    """:attr:`Simulator.requests` that notes how many had come when ``done()`` first held."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self._clock = clock
        #: Loop time of the last request counted.
        self.last = 0.0
        self.done: Callable[[], bool] = lambda: False
        #: Requests that had arrived when every task was tracked (``None``: not yet).
        self.until_done: int | None = None
        self.finished = anyio.Event()

    def append(self, item: str) -> None:
        """Record a request; first see whether the ones before it were enough."""
        if self.until_done is None and self.done():
            self.until_done = len(self)
            self.finished.set()
        if self.until_done is None:
            self.last = self._clock()
        super().append(item)


async def _probe(count: int) -> dict[str, Any]:
    """Discover ``count`` tasks with the daemon of the ``monitor`` on the path."""
    from monitor.config import parse_config
    from monitor.daemon import Daemon
    from monitor.simulator import Simulator
    from monitor.superoffice.models import BatchTaskState

    loop = asyncio.get_running_loop()
    origin = loop.time()

    def wall() -> datetime:
        return _START + timedelta(seconds=loop.time() - origin)

    simulator = Simulator(clock=wall)
    expected: dict[int, tuple[str, BatchTaskState]] = {}
    index = 0
    for state_name, share in _SPREAD:
        state = BatchTaskState(state_name)
        for _ in range(round(count * share)):
            started = state is BatchTaskState.STARTED
            task = simulator.add_task(
                name=f"Export selection {index}",
                state=state,
                progress=40 if started else 0,
                last_started=_START - timedelta(minutes=5) if started else None,
                start_count=int(started),
            )
            expected[task.id] = (task.name, state)
            index += 1
    arrivals = _Arrivals(lambda: loop.time() - origin)
    simulator.requests = arrivals
    async with simulator:
        with tempfile.TemporaryDirectory() as tmp:
            config = parse_config(
                {
                    "state": {"path": str(Path(tmp) / "state.db")},
                    "superoffice": {
                        "url": simulator.url,
                        "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
                    },
                    "watch": {"discover": [{}]},
                    "http": {"listen": "127.0.0.1:0"},
                    "sinks": [{"name": "log", "type": "log"}],
                },
                base_dir=ROOT,
            )
            daemon = Daemon(config, clock=wall)

            def all_tracked() -> bool:
                tasks = daemon.tracker.tasks
                if len(tasks) < len(expected):
                    return False
                for task_id, (name, state) in expected.items():
                    memory = tasks.get(task_id)
                    if memory is None or memory.info.name != name or memory.info.state != state:
                        return False
                return True

            arrivals.done = all_tracked
            async with anyio.create_task_group() as group:
                await group.start(daemon.run)
                with anyio.move_on_after(_LIMIT):
                    await arrivals.finished.wait()
                group.cancel_scope.cancel()
    gets = sum(1 for request in arrivals[: arrivals.until_done] if request.startswith("GET "))
    return {
        "monitor": str(Path(sys.modules["monitor"].__file__ or "").parent),
        "tasks": len(expected),
        "requests": arrivals.until_done,
        "gets": gets,
        "seconds": arrivals.last,
    }


def _run_probe(tree: Path, count: int) -> dict[str, Any]:
    """Run the probe in a fresh interpreter whose ``monitor`` is ``tree``'s."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.scenarios.discovery", "--tasks", str(count)],
        cwd=tree,  # -m puts the working directory first on sys.path
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        msg = f"discovery probe in {tree} exited {done.returncode}: {done.stderr[-2000:]}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    if Path(result["monitor"]).resolve() != (tree / "monitor").resolve():
        msg = f"the probe ran {result['monitor']}, not {tree / 'monitor'}"
        raise RuntimeError(msg)
    return result


def _before(count: int) -> dict[str, Any] | str:
    """The probe with the code of :data:`BEFORE`; a reason instead if it cannot be had."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BEFORE, "monitor"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        return f"git archive {BEFORE} failed: {archive.stderr.decode(errors='replace').strip()}"
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        return _run_probe(Path(tmp), count)


def discovery_requests(quick: bool) -> Row:
    """P8: requests until one rule's 1,000 tasks are tracked, against one GET per task."""
    from bench.scenarios.common import Row

    count = 200 if quick else 1000
    ours = _run_probe(ROOT, count)
    before = _before(count)
    limit = int(count * _TARGET_SHARE)
    requests = ours["requests"]
    passed = requests is not None and requests <= limit
    if isinstance(before, str):
        baseline, ratio = "—", "—"
        how = f"baseline not run ({before})"
    else:
        baseline = (
            f"{before['requests']:,} req ({before['gets']:,} GETs) in {before['seconds']:.0f} s"
            if before["requests"] is not None
            else f"not all tracked within {_LIMIT:g} s"
        )
        ratio = f"{requests / before['requests']:.1%}" if requests and before["requests"] else "—"
        how = (
            f"baseline = the same probe with the code of {BEFORE} (before list rows were "
            f"full observations), extracted by git archive, in its own interpreter"
        )
    return Row(
        "P8",
        f"discovery of {count:,} tasks by one rule",
        (
            f"{requests} req ({ours['gets']} GETs) in {ours['seconds']:.0f} s"
            if requests is not None
            else f"not all tracked within {_LIMIT:g} s"
        ),
        baseline,
        ratio,
        f"≤ {limit} req (2 % of 1 GET per task)",
        passed,
        (
            (
                f"P8: the daemon with the default [superoffice] and [poll] settings and one "
                f"[[watch.discover]] rule (default states New, Aquired, Started, every 30 s) against "
                f"{count:,} tasks (20 % New, 10 % Aquired, 70 % Started) on a clock that skips idle "
                f"waits; requests counted by the simulator until every task is tracked with its "
                f"name and state; {how}."
            ),
        ),
    )


def main() -> None:
    """The probe: discover ``--tasks`` tasks, print the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, required=True)
    count = parser.parse_args().tasks
    # Into nothing, without this tree's monitor.logs: the older tree has none.
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    result = anyio.run(_probe, count, backend_options={"loop_factory": SkippingLoop})
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
