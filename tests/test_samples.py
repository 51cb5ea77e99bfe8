"""The task page's progress history: plateaus, runs, thinning and forgetting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.memory import Rules
from monitor.tracking.samples import CAPACITY, ProgressSamples
from monitor.tracking.tracker import Tracker

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _info(
    percent: int | None, *, task_id: int = 7, starts: int = 1, state: str = "Started"
) -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(
        {
            "Id": task_id,
            "State": state,
            "ProgressPercent": percent,
            "StartCount": starts,
            "LastStarted": (T0 + timedelta(hours=starts)).isoformat(),
        }
    )


def _feed(
    samples: ProgressSamples,
    tracker: Tracker,
    steps: list[tuple[int, int | None]],
    *,
    task_id: int = 7,
    starts: int = 1,
) -> None:
    """Observe the task at T0 + minute with percent, recording every memory."""
    for minute, percent in steps:
        tracker.observe(
            _info(percent, task_id=task_id, starts=starts), T0 + timedelta(minutes=minute)
        )
        samples.record(tracker.tasks[task_id])


def _at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


class TestRecord:
    """What is kept of a run."""

    @pytest.mark.parametrize(
        ("steps", "expected"),
        [
            ([(0, 0), (1, 10), (2, 20)], [(0, 0), (1, 10), (2, 20)]),
            # a plateau keeps its first and last sample
            ([(0, 5), (1, 5), (2, 5), (3, 5), (4, 9)], [(0, 5), (3, 5), (4, 9)]),
            # no progress, no sample
            ([(0, None), (1, 30), (2, None)], [(1, 30)]),
            # going back is kept as it is
            ([(0, 50), (1, 20), (2, 60)], [(0, 50), (1, 20), (2, 60)]),
        ],
    )
    def test_samples(
        self, steps: list[tuple[int, int | None]], expected: list[tuple[int, int]]
    ) -> None:
        """Each change is a sample at the time it was seen."""
        samples, tracker = ProgressSamples(), Tracker(Rules())
        _feed(samples, tracker, steps)
        assert [(_at(m), p) for m, p in expected] == samples.series(tracker.tasks[7])

    def test_a_new_run_starts_afresh(self) -> None:
        """StartCount grew: the chart shows the new run only."""
        samples, tracker = ProgressSamples(), Tracker(Rules())
        _feed(samples, tracker, [(0, 10), (1, 80)])
        _feed(samples, tracker, [(5, 0), (6, 15)], starts=2)
        assert [(_at(5), 0), (_at(6), 15)] == samples.series(tracker.tasks[7])

    def test_falls_back_to_the_memory(self) -> None:
        """A task with nothing recorded yet (restored after a restart) shows its memory's history."""
        samples, tracker = ProgressSamples(), Tracker(Rules())
        tracker.observe(_info(10), _at(0))
        tracker.observe(_info(20), _at(1))
        memory = tracker.tasks[7]
        assert list(memory.history) == samples.series(memory)
        samples.record(memory)
        assert [(_at(0), 10), (_at(1), 20)] == samples.series(memory)

    def test_restored_history_keeps_its_plateau(self) -> None:
        """A restored memory's samples come first; a plateau since then keeps its start."""
        samples, tracker = ProgressSamples(), Tracker(Rules())
        tracker.observe(_info(10), _at(0))
        tracker.observe(_info(20), _at(1))
        restored = Tracker(Rules())
        restored.restore(tracker.tasks.values())
        restored.observe(_info(20), _at(9))  # unchanged since minute 1; only last_seen moved
        samples.record(restored.tasks[7])
        assert [(_at(0), 10), (_at(1), 20), (_at(9), 20)] == samples.series(restored.tasks[7])

    def test_thinning_keeps_the_whole_run(self) -> None:
        """Past capacity, older samples are halved; the first and newest stay; bounded."""
        samples, tracker = ProgressSamples(capacity=10), Tracker(Rules())
        _feed(samples, tracker, [(minute, minute % 2 * 50) for minute in range(25)])
        series = samples.series(tracker.tasks[7])

        assert len(series) <= 10
        assert (_at(0), 0) == series[0]
        assert (_at(24), 0) == series[-1]
        assert sorted(series) == series

    @given(st.lists(st.integers(0, 100), min_size=1, max_size=600))
    def test_never_more_than_capacity(self, percents: list[int]) -> None:
        """Whatever the progress does, at most ``capacity`` samples, in time order."""
        samples, tracker = ProgressSamples(), Tracker(Rules())
        _feed(samples, tracker, list(enumerate(percents)))
        series = samples.series(tracker.tasks[7])
        assert len(series) <= CAPACITY
        assert sorted(series) == series
        assert percents[-1] == series[-1][1]

    def test_200_distinct_samples_are_kept(self) -> None:
        """A run of 200 changes keeps all 200."""
        samples, tracker = ProgressSamples(), Tracker(Rules())
        _feed(samples, tracker, [(minute, minute % 2 + minute // 4) for minute in range(200)])
        assert 200 == len(samples.series(tracker.tasks[7]))

    def test_small_capacity_refused(self) -> None:
        """Fewer than 4 samples cannot hold a first, a plateau and a newest one."""
        with pytest.raises(ValueError, match="capacity"):
            ProgressSamples(capacity=3)


class TestForget:
    """Samples of forgotten tasks do not pile up."""

    def test_forget(self) -> None:
        """Forgotten ids fall back to the memory (nothing kept)."""
        samples, tracker = ProgressSamples(), Tracker(Rules())
        _feed(samples, tracker, [(0, 10), (1, 20), (2, 30)])
        samples.forget([7, 8])
        assert 0 == len(samples)

    def test_bounded_by_the_tracked_tasks(self) -> None:
        """With tasks coming and going, the tracker's samples are of the tracked tasks only."""
        tracker = Tracker(Rules())
        for task_id in range(1, 5001):
            tracker.observe(_info(10, task_id=task_id), T0)
            tracker.forget([task_id - 100])  # a hundred tracked at a time
            assert len(tracker.samples) <= len(tracker.tasks)
        assert 100 == len(tracker.tasks) == len(tracker.samples)
