"""P9: a month of discovery churn: memory and the state database stay flat.

The daemon (:class:`~monitor.daemon.Daemon`, a SQLite store in a temporary directory, one
``[[watch.discover]]`` rule with its defaults, ``forget_after`` one day, every other setting
at its default, a log sink with its default events) watches an in-process simulator whose tenant (:class:`TaskStream`) creates
tasks all day long: each is queued (New, Aquired), runs for minutes with progress, succeeds or
fails, and is deleted by SuperOffice some hours later.  It all runs on the clock of
:class:`~bench.scenarios.requests.SkippingLoop`, so a simulated day costs only the work done in
it.  At the end of each day the bench collects garbage and samples the process's ``VmRSS``,
the tracked and watched tasks, and the state database (file + ``-wal``, and its rows).

The issue's month (10,000 tasks a day for 30 days of 24 h) costs hours of real time: with
the default ``interval`` a simulated day is some 35,000 poll cycles over real HTTP, whatever
the tasks do.  So the bench's days last an hour (``forget_after`` too) with 1,000 tasks each
(:data:`_FULL`); ``_Plan(30, 10_000, 86_400.0, 86_400.0)`` is the issue's scale.

The process also holds the simulator: its tasks are the ones created and not yet deleted (a
few hours' worth), bounded like the daemon's, and its request log only counts.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import math
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from bench.scenarios.common import ROOT, Row, quiet_logging
from bench.scenarios.requests import SkippingLoop
from monitor.config import parse_config
from monitor.daemon import Daemon, freeze_startup_objects
from monitor.simulator import Scenario, SimTask, Simulator
from monitor.superoffice.models import BatchTaskState

__all__ = ["TaskStream", "month_of_tasks"]

_START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
_FIRST_ID = 1_000_000
#: Growth allowed per day after day 2, as a share of the day-2 figure.
_TARGET_GROWTH = 0.01
#: The days before the judged ones: forgetting starts once tasks are ``forget_after`` old.
_WARM_DAYS = 2
_RSS = re.compile(r"^VmRSS:\s+(\d+) kB$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class _Plan:
    """The size of a run: ``per_day`` tasks in each of ``days`` days of ``day`` seconds."""

    days: int
    per_day: int
    #: Seconds in a simulated day (shorter than 24 h in the bench, see above).
    day: float
    #: ``[watch] forget_after`` in seconds: one day.
    forget_after: float
    #: Real seconds the loop listens for I/O before it skips a long wait: the simulator is
    #: in this process, so its answers are ready at once (P5's 5 ms would add 7 s of waiting
    #: to each of the bench's hour-long days: one per poll cycle).
    grace: float = 0.0005


#: 30 days of an hour each, 1,000 tasks a day (about 7 minutes on 2 shared cores).
_FULL = _Plan(days=30, per_day=1_000, day=3_600.0, forget_after=3_600.0)
#: Quick: 5 days of 15 minutes, a hundred tasks each; the same shape in seconds.
_QUICK = _Plan(days=5, per_day=100, day=900.0, forget_after=900.0)


class TaskStream(Scenario):
    """``per_day`` tasks a day, created evenly at random, forever.

    Each task is New for 1-20 s, Aquired for 1-5 s, runs for minutes (log-normal, median
    3 min, at most 3 h or an eighth of a day) with progress every 30-90 s, then succeeds or (one in ten) fails,
    and is deleted 1/24 to 8/24 of a day after it finished.  Time only moves forward here:
    tasks are made an hour of creations at a time, and deleted ones leave ``tasks``, so what
    the stream holds is bounded by what is alive.
    """

    def __init__(self, *, per_day: int, day: float, start: datetime, seed: int) -> None:
        super().__init__((), start=start)
        self._rng = random.Random(seed)
        self._per_hour = per_day / 24
        self._hour = day / 24
        #: No run is longer than 3 hours, nor an eighth of a (shortened) day.
        self._longest = min(10_800.0, day / 8)
        self._planned_until = 0.0
        self._next_id = _FIRST_ID
        #: (at, sequence, task id, what happens): changes still to come, soonest first.
        self._pending: list[tuple[float, int, int, tuple[Any, ...]]] = []
        self._sequence = 0
        #: Tasks created so far.
        self.created = 0

    def _push(self, at: float, task_id: int, change: tuple[Any, ...]) -> None:
        self._sequence += 1
        heapq.heappush(self._pending, (at, self._sequence, task_id, change))

    def _plan_hour(self) -> None:
        """Plan the tasks created in the next hour of the stream."""
        rng = self._rng
        begin = self._planned_until
        self._planned_until += self._hour
        count = int(self._planned_until / self._hour * self._per_hour) - int(
            begin / self._hour * self._per_hour
        )
        for _ in range(count):
            task_id, self._next_id = self._next_id, self._next_id + 1
            t = rng.uniform(begin, self._planned_until)
            self._push(t, task_id, ("new",))
            t += rng.uniform(1.0, 20.0)
            self._push(t, task_id, ("state", BatchTaskState.AQUIRED, 0))
            t += rng.uniform(1.0, 5.0)
            self._push(t, task_id, ("state", BatchTaskState.STARTED, 0))
            end = t + min(rng.lognormvariate(math.log(180.0), 1.0), self._longest)
            progress = 0
            t += rng.uniform(30.0, 90.0)
            while t < end:
                progress = min(progress + rng.randint(5, 25), 99)
                self._push(t, task_id, ("state", BatchTaskState.STARTED, progress))
                t += rng.uniform(30.0, 90.0)
            final = BatchTaskState.FAILED if rng.random() < 0.1 else BatchTaskState.SUCCEEDED
            self._push(
                end,
                task_id,
                ("state", final, 100 if final is BatchTaskState.SUCCEEDED else progress),
            )
            self._push(end + rng.uniform(self._hour, 8 * self._hour), task_id, ("delete",))

    def apply(self, tasks: dict[int, SimTask], now: datetime) -> None:
        """Show every task as it is at ``now`` (which never goes back)."""
        elapsed = (now - self.start).total_seconds()
        while self._planned_until <= elapsed + self._hour:
            self._plan_hour()
        pending = self._pending
        while pending and pending[0][0] <= elapsed:
            at, _, task_id, change = heapq.heappop(pending)
            if change[0] == "new":
                self.created += 1
                tasks[task_id] = SimTask(
                    id=task_id,
                    name=f"Export selection {task_id}",
                    created=self.start + timedelta(seconds=at),
                )
                continue
            task = tasks.get(task_id)
            if task is None:
                continue
            if change[0] == "delete":
                del tasks[task_id]
                continue
            _, state, progress = change
            task.state = state
            task.progress = progress
            task.progress_description = f"Row {progress * 37}" if progress < 100 else "Done"
            if state is BatchTaskState.STARTED and task.start_count == 0:
                task.start_count = 1
                task.last_started = self.start + timedelta(seconds=at)
            if state is BatchTaskState.FAILED:
                task.result = "Failed: the export file could not be written"


class _CountedRequests(list[str]):
    """:attr:`Simulator.requests` that only counts: a month of requests is millions."""

    def __init__(self) -> None:
        super().__init__()
        #: Requests sent so far.
        self.sent = 0

    def append(self, item: str) -> None:
        """Count the request; keep nothing."""
        self.sent += 1


@dataclass(frozen=True, slots=True)
class _Day:
    """What the end of one simulated day looked like."""

    day: int
    rss_mb: float
    tracked: int
    watched: int
    #: The database file and its write-ahead log together.
    db_mb: float
    wal_mb: float
    stored_tasks: int
    history_rows: int
    created: int
    requests: int
    real_seconds: float


def _rss_mb() -> float:
    match = _RSS.search(Path("/proc/self/status").read_text())
    return int(match.group(1)) / 1024 if match else math.nan


def _db_figures(path: Path) -> tuple[float, float, int, int]:
    """Size of the database with its write-ahead log, and of the log alone (MB); the tasks
    and history rows stored."""
    wal = path.with_name(path.name + "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tasks = db.execute("SELECT count(*) FROM tasks").fetchone()[0]
        history = db.execute("SELECT count(*) FROM history").fetchone()[0]
    return (path.stat().st_size + wal_size) / 2**20, wal_size / 2**20, tasks, history


async def _run_month(plan: _Plan, state_dir: Path) -> list[_Day]:
    loop = asyncio.get_running_loop()
    origin = loop.time()

    def wall() -> datetime:
        return _START + timedelta(seconds=loop.time() - origin)

    stream = TaskStream(per_day=plan.per_day, day=plan.day, start=_START, seed=9)
    simulator = Simulator(stream, clock=wall)
    requests = _CountedRequests()
    simulator.requests = requests
    path = state_dir / "state.db"
    days: list[_Day] = []
    async with simulator:
        config = parse_config(
            {
                "state": {"path": str(path)},
                "superoffice": {
                    "url": simulator.url,
                    "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
                },
                "watch": {"discover": [{}], "forget_after": plan.forget_after},
                "http": {"listen": "127.0.0.1:0"},
                "sinks": [{"name": "log", "type": "log"}],
            },
            base_dir=ROOT,
        )
        freeze_startup_objects()
        daemon = Daemon(config, clock=wall)
        began = time.perf_counter()
        async with anyio.create_task_group() as group:
            await group.start(daemon.run)
            for day in range(1, plan.days + 1):
                await anyio.sleep(origin + day * plan.day - loop.time())
                gc.collect()
                db_mb, wal_mb, stored, history = _db_figures(path)
                poller = daemon.poller
                days.append(
                    _Day(
                        day,
                        _rss_mb(),
                        len(daemon.tracker.tasks),
                        len(poller.watched) if poller else 0,
                        db_mb,
                        wal_mb,
                        stored,
                        history,
                        stream.created,
                        requests.sent,
                        time.perf_counter() - began,
                    )
                )
                print(next(_curve(days[-1:], header=False)), file=sys.stderr, flush=True)
            group.cancel_scope.cancel()
    return days


def _growth(days: list[_Day], figure: str) -> tuple[float, float]:
    """Growth per day after the warm-up days, as a share of the figure then; and the
    largest one-day step (same share)."""
    base = getattr(days[_WARM_DAYS - 1], figure)
    judged = days[_WARM_DAYS - 1 :]
    per_day = (getattr(judged[-1], figure) - base) / base / (len(judged) - 1)
    steps = [
        (getattr(b, figure) - getattr(a, figure)) / base for a, b in itertools.pairwise(judged)
    ]
    return per_day, max(steps)


def _curve(days: list[_Day], *, header: bool = True) -> Iterator[str]:
    """The per-day figures as table rows (progress goes to standard error as they come)."""
    if header:
        yield "day | RSS MB | tracked | watched | state DB MB (db+wal) | of which wal | stored tasks | history rows | tasks created | requests | real s"
    for d in days:
        yield (
            f"{d.day} | {d.rss_mb:.1f} | {d.tracked:,} | {d.watched:,} | {d.db_mb:.1f} | {d.wal_mb:.1f} | "
            f"{d.stored_tasks:,} | {d.history_rows:,} | {d.created:,} | {d.requests:,} | "
            f"{d.real_seconds:.0f}"
        )


def month_of_tasks(quick: bool) -> Row:
    """P9: RSS and state DB size per day over a simulated month of churn."""
    plan = _QUICK if quick else _FULL
    quiet_logging()
    with tempfile.TemporaryDirectory() as tmp:
        days = anyio.run(
            _run_month,
            plan,
            Path(tmp),
            backend_options={"loop_factory": partial(SkippingLoop, plan.grace)},
        )
    rss, rss_step = _growth(days, "rss_mb")
    db, db_step = _growth(days, "db_mb")
    first, last = days[_WARM_DAYS - 1], days[-1]
    unit = "day" if plan.day == 86_400 else f"'day' of {plan.day / 3600:g} h"
    return Row(
        "P9",
        f"{plan.days} simulated days, {plan.per_day:,} tasks/day",
        f"RSS {first.rss_mb:.0f} → {last.rss_mb:.0f} MB ({rss:+.2%}/day); "
        f"DB {first.db_mb:.1f} → {last.db_mb:.1f} MB ({db:+.2%}/day)",
        f"{last.created:,} tasks created; {last.tracked:,} tracked at the end",
        f"max 1-day step RSS {rss_step:+.1%}, DB {db_step:+.1%}",
        "after day 2: ≤ +1 %/day each",
        rss <= _TARGET_GROWTH and db <= _TARGET_GROWTH,
        (
            (
                f"P9: Daemon with a SQLite store, one [[watch.discover]] rule (default states), "
                f"forget_after {plan.forget_after:g} s, a log sink (default events), default [poll] "
                f"and [superoffice] settings, against an in-process simulator creating "
                f"{plan.per_day:,} tasks per {unit} on a clock that skips idle waits; growth = "
                f"(last - day {_WARM_DAYS}) / day {_WARM_DAYS} / days; per day:"
            ),
            *_curve(days),
        ),
    )
