"""Churn: tasks come, finish and are deleted for minutes, and batchmon forgets them.

The simulator makes 40 tasks every 2 s; each is done 4-6 s after it was created (one in
twenty fails) and deleted 6 s later, as SuperOffice cleans up.  batchmon (the real process,
the default ``[poll]`` settings, one discovery rule) finds them all; with ``forget_after =
"20s"`` it must forget them again.  Every few seconds the test reads how many tasks batchmon
tracks (``batchmon_tasks`` on /metrics), its resident memory (``VmRSS``) and the size of its
state database (file and WAL), and checks:

* the tracked count never exceeds what the window allows: the tasks created in the last
  life + ``forget_after`` + one sweep (forgetting runs once a minute) + two polls;
* forgetting happened within the run: the first tasks are gone from /api/v1/tasks, the
  per-task metrics and the store (the full run also creates over twice what the window
  allows, so the bound above means something);
* no failure is announced twice (a delivery retried comes again with its id), and none that did not happen;
* memory and the state database flatten: their growth in the second half of the run is a
  fraction of their growth in the first (the first half fills the window, the second only
  turns it over), and the write-ahead log stays within what SQLite's checkpoints allow.

The full churn (6 minutes, 7,200 tasks) is marked ``soak``; the short one (75 s) runs by
default: long enough for one sweep after the start-up one, so the forgetting is checked,
though too short to judge memory and the database.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.polling.schedule import SWEEP_EVERY
from monitor.simulator import Scenario, Simulator
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import Batchmon, Peers, Receiver, base_config, http, rss_kib

EVERY = 2.0
BATCH = 40
#: A task is New this long, then Started this long: done 4-6 s after it was created.
QUEUED = (1.5, 2.0)
RUNNING = (2.5, 4.0)
#: SuperOffice deletes a finished task this long after it ended.
DELETE_AFTER = 6.0
#: Longer than a task's whole life (12 s), so a task is forgotten only once its deletion was
#: seen; short enough that the forgetting comes within the run (the default is a day).
FORGET_AFTER = 20.0
#: The poller looks for tasks to forget this often.
SWEEP = SWEEP_EVERY
#: The default ``[poll] interval`` and the rule's ``every``.
INTERVAL = 5.0
#: SQLite reuses its write-ahead log from the start after each checkpoint, so the log holds
#: what was written between two: up to 1,000 pages (4 MiB, the automatic checkpoint) plus
#: one transaction, the largest being a sweep that forgets ~1,800 tasks (~4-5 MiB here).
#: Twice that: a checkpoint may wait for a reader (the test reads the store, too).
WAL_MAX = 16 << 20


@dataclass(frozen=True)
class Churning:
    """One churn run's length and sampling."""

    seconds: float
    sample_every: float
    #: Whether the run is long enough to judge growth (the window fills in ~90 s).
    judge_growth: bool


SHORT = Churning(seconds=75, sample_every=3, judge_growth=False)
FULL = Churning(seconds=360, sample_every=5, judge_growth=True)


@dataclass(frozen=True)
class Sample:
    """What batchmon held at one moment of the run."""

    at: float
    tracked: int
    rss_kib: int
    db_bytes: int
    wal_bytes: int
    db_tasks: int


def tracked(url: str) -> tuple[int, set[int]]:
    """``batchmon_tasks`` summed over states, and the tasks that have per-task series."""
    text = http(url + "/metrics").body.decode()
    total, series = 0.0, set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "batchmon_tasks":
                total += sample.value
            elif sample.name == "batchmon_task_state":
                series.add(int(sample.labels["task_id"]))
    return int(total), series


def stored_tasks(path: Path) -> set[int]:
    """The ids in the store's ``tasks`` table, read-only beside the running daemon."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return {task_id for (task_id,) in db.execute("SELECT id FROM tasks")}


def db_size(path: Path) -> tuple[int, int]:
    """The state database on disk: the file, and its write-ahead log."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size, (wal.stat().st_size if wal.exists() else 0)


def growth(samples: list[Sample], value: Callable[[Sample], int]) -> tuple[int, int]:
    """How much ``value`` grew (peak to peak) in the first and in the second half."""
    middle = samples[len(samples) // 2].at
    first = [value(s) for s in samples if s.at <= middle]
    second = [value(s) for s in samples if s.at >= middle]
    return max(first) - first[0], max(second) - max(first)


class TestChurn:
    """Thousands of short tasks, and batchmon's memory of them stays within the window."""

    @pytest.mark.parametrize(
        "run",
        [
            pytest.param(SHORT, id="short", marks=pytest.mark.timeout(300)),
            pytest.param(FULL, id="full", marks=[pytest.mark.soak, pytest.mark.timeout(900)]),
        ],
    )
    def test_tracked_tasks_memory_and_store_stay_within_the_window(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path, run: Churning
    ) -> None:
        """Tracked count bounded by the window; forgotten tasks leave API, metrics, store."""
        simulator = peers.simulator(Simulator())
        receiver = peers.receiver(Receiver())
        state = tmp_path / "state.db"
        config = base_config(
            simulator.url,
            state,
            watch={"discover": [{"every": INTERVAL}], "forget_after": FORGET_AFTER},
            sinks=[
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": receiver.url("/hook"),
                    "events": ["task.failed"],
                }
            ],
        )
        config.pop("poll")  # the default poll settings
        batchmon = launch(config)
        url = batchmon.wait_started()
        scenario = Scenario.churn(
            start=datetime.now(UTC),
            every=EVERY,
            batch=BATCH,
            until=run.seconds,
            queued=QUEUED,
            running=RUNNING,
            fail_ratio=0.05,
            delete_after=DELETE_AFTER,
        )
        began = time.monotonic()
        peers.call(setattr, simulator, "scenario", scenario)
        samples: list[Sample] = []
        while (at := time.monotonic() - began) < run.seconds:
            assert batchmon.alive, batchmon.stderr()[-3000:]
            count, _ = tracked(url)
            samples.append(
                Sample(at, count, rss_kib(batchmon.pid), *db_size(state), len(stored_tasks(state)))
            )
            time.sleep(run.sample_every)
        count, series = tracked(url)
        listed = {task["id"] for task in http(url + "/api/v1/tasks").json()["tasks"]}
        in_store = stored_tasks(state)
        forgotten = sum(line["count"] for line in batchmon.events("tasks_forgotten"))
        code = batchmon.stop()

        rate = BATCH / EVERY
        hits = receiver.taken("/hook")
        failures = Counter(int(hit.json()["subject"]) for hit in hits)
        # At least once: a delivery retried (a timeout on a loaded machine) comes again with
        # its id; a failure announced twice would come with two.
        ids: dict[int, set[str]] = {}
        for hit in hits:
            ids.setdefault(int(hit.json()["subject"]), set()).add(hit.headers["webhook-id"])
        failed = {
            i: at
            for i in scenario.task_ids
            for at, state in scenario.timeline(i)
            if state is BatchTaskState.FAILED
        }
        done = QUEUED[1] + RUNNING[1]
        window = done + FORGET_AFTER + SWEEP + 2 * INTERVAL
        created = len([i for i in scenario.task_ids if scenario.timeline(i)[0][0] <= run.seconds])
        first_batch = set(scenario.task_ids[:BATCH])
        rss = growth(samples, lambda s: s.rss_kib)
        db = growth(samples, lambda s: s.db_bytes)
        wal = max(s.wal_bytes for s in samples)
        # Shown with -s, and with a failure: what the run measured.
        print(
            f"\n{created} tasks in {run.seconds:g} s; tracked at most "
            f"{max(s.tracked for s in samples)} (window allows {rate * window:.0f}), "
            f"{count} at the end, {forgotten} forgotten; RSS {samples[0].rss_kib // 1024}.."
            f"{max(s.rss_kib for s in samples) // 1024} MiB, growth {rss[0] // 1024} MiB "
            f"then {rss[1] // 1024} MiB; state DB growth {db[0] // 1024} KiB then "
            f"{db[1] // 1024} KiB, WAL {wal // 1024} KiB at most, "
            f"{max(s.db_tasks for s in samples)} rows at most; "
            f"{len(failures)} of {len(failed)} failures delivered, "
            f"{sum(failures.values()) - len(failures)} repeated with the same id"
        )
        for s in samples:
            print(
                f"  {s.at:6.1f} s  tracked {s.tracked:5d}  rss {s.rss_kib // 1024:4d} MiB  "
                f"db {s.db_bytes // 1024:6d} KiB  wal {s.wal_bytes // 1024:6d} KiB  "
                f"rows {s.db_tasks:5d}"
            )

        assert 0 == code
        assert all(s.tracked <= rate * window for s in samples)
        # A task that lives 4-6 s can begin and end between two list calls (the rule lists
        # only the active states, and a loaded machine spaces the lists out): every failure
        # is the short-task test's job (test_lifecycle.py); here, none is made up or doubled.
        assert set(failures) <= set(failed)
        assert all(len(announced) == 1 for announced in ids.values()), ids
        assert forgotten >= len(first_batch)
        assert (set(), set(), set()) == (
            first_batch & listed,
            first_batch & series,
            first_batch & in_store,
        )
        if run.judge_growth:
            assert created > 2 * rate * window
            assert rss[1] <= rss[0] / 4
            assert db[1] <= db[0] / 4
            assert wal <= WAL_MAX
