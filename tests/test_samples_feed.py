"""What reaches the task page's samples: gone tasks, late or repeated snapshots, forgetting."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.memory import Rules, TaskMemory
from monitor.tracking.samples import ProgressSamples
from monitor.tracking.tracker import Tracker

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def _info(percent: int, task_id: int = 7) -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(
        {"Id": task_id, "State": "Started", "ProgressPercent": percent, "StartCount": 1}
    )


def _memory(percent: int, minute: float, task_id: int = 7) -> TaskMemory:
    """The memory of the task as first seen at ``minute`` with ``percent``."""
    tracker = Tracker(Rules())
    tracker.observe(_info(percent, task_id), T0 + minute * M)
    return tracker.tasks[task_id]


@pytest.mark.parametrize(
    ("fed", "expected"),
    [
        # a snapshot older than the newest sample is dropped
        ([(10, 0), (30, 2), (20, 1)], [(10, 0), (30, 2)]),
        # a second snapshot of the same moment replaces its percent
        ([(10, 0), (30, 2), (35, 2)], [(10, 0), (35, 2)]),
        # out of range is drawn at the edge
        ([(-5, 0), (130, 1)], [(0, 0), (100, 1)]),
    ],
)
def test_late_and_repeated_snapshots(
    fed: list[tuple[int, int]], expected: list[tuple[int, int]]
) -> None:
    """(percent, minute) recorded in this order → the samples drawn."""
    samples = ProgressSamples()
    for percent, minute in fed:
        samples.record(_memory(percent, minute))

    series = samples.series(_memory(0, 0))

    assert [(T0 + minute * M, percent) for percent, minute in expected] == series


def test_gone_task_is_not_sampled() -> None:
    """A 404 keeps the last snapshot in memory; it is not a new sample of the run."""
    tracker = Tracker(Rules())
    samples = ProgressSamples()
    tracker.observe(_info(40), T0)
    samples.record(tracker.tasks[7])
    tracker.observe_gone(7, T0 + M)

    samples.record(tracker.tasks[7])

    assert [(T0, 40)] == samples.series(tracker.tasks[7])


def test_the_tracker_samples_what_it_keeps_and_drops_them_with_the_task() -> None:
    """Every memory the tracker is given is sampled; a task it forgets, in any of its three
    ways, leaves no samples behind."""
    tracker = Tracker(Rules(forget_after=timedelta(hours=1)))
    for task_id in (1, 2, 3):
        tracker.observe(_info(10, task_id), T0)
        tracker.observe(_info(20, task_id), T0 + M)
    assert [(T0, 10), (T0 + M, 20)] == tracker.samples.series(tracker.tasks[1])
    finished = BatchTaskInfo.model_validate(
        {"Id": 1, "State": "Succeeded", "ProgressPercent": 100, "StartCount": 1}
    )
    tracker.observe(finished, T0 + 2 * M)

    tracker.drop([2], T0 + 3 * M, "its watch was removed")
    tracker.forget([3])
    tracker.expire(T0 + 2 * M + timedelta(hours=1))

    assert {} == dict(tracker.tasks)
    assert 0 == len(tracker.samples)


def test_memory_of_another_run_is_not_its_samples() -> None:
    """Samples of an older run are not shown for a memory of a newer one."""
    samples = ProgressSamples()
    samples.record(_memory(40, 0))
    newer = replace(
        _memory(5, 10),
        info=BatchTaskInfo.model_validate(
            {"Id": 7, "State": "Started", "ProgressPercent": 5, "StartCount": 2}
        ),
    )

    assert list(newer.history) == samples.series(newer)
