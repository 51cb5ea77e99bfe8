"""The tracker between snapshots: ``touch`` observes again only when time alone can tell."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.events import EventType
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)
RULES = Rules(progress_step=10, progress_min_interval=timedelta(seconds=30), stall_after=15 * M)


def _info(percent: int, state: str = "Started") -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(
        {"Id": 7, "State": state, "ProgressPercent": percent, "StartCount": 1}
    )


def _tracking(*snapshots: tuple[datetime, BatchTaskInfo]) -> Tracker:
    tracker = Tracker(RULES)
    for now, info in snapshots:
        tracker.observe(info, now)
    return tracker


@pytest.mark.parametrize(
    ("snapshots", "touched_at", "expected"),
    [
        # never seen: nothing to say
        ((), T0, []),
        # unchanged, not long enough to stall
        (((T0, _info(40)),), T0 + 14 * M, []),
        # unchanged for stall_after
        (((T0, _info(40)),), T0 + 15 * M, [EventType.TASK_STALLED]),
        # finished tasks do not stall
        (((T0, _info(100, "Completed")),), T0 + 60 * M, []),
        # a progress step held back by the rate limit comes out once the interval is over
        (
            ((T0, _info(40)), (T0 + M, _info(50)), (T0 + M + timedelta(seconds=10), _info(60))),
            T0 + 2 * M,
            [EventType.TASK_PROGRESS],
        ),
    ],
)
def test_touch(
    snapshots: tuple[tuple[datetime, BatchTaskInfo], ...],
    touched_at: datetime,
    expected: list[EventType],
) -> None:
    """Events of touching task 7 (as last seen) at ``touched_at``."""
    tracker = _tracking(*snapshots)
    assert expected == [event.type for event in tracker.touch(7, touched_at)]


def test_touch_of_a_stalled_task_says_nothing_more() -> None:
    """Stalled once: later touches stay quiet, and there is no ETA while it stands still."""
    tracker = _tracking((T0, _info(10)), (T0 + M, _info(20)), (T0 + 2 * M, _info(30)))
    assert tracker.eta(7, T0 + 2 * M) is not None

    assert [EventType.TASK_STALLED] == [e.type for e in tracker.touch(7, T0 + 17 * M)]
    assert [] == tracker.touch(7, T0 + 60 * M)
    assert tracker.eta(7, T0 + 60 * M) is None


def test_no_eta_for_an_unknown_task() -> None:
    """An id the tracker never saw has no estimate."""
    assert Tracker(RULES).eta(7, T0) is None
