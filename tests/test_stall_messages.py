"""How long a task stood still, as the stalled and resumed events say it: short chat words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.events import EventType
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _info(percent: int) -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(
        {"Id": 7, "State": "Started", "ProgressPercent": percent, "StartCount": 1}
    )


@pytest.mark.parametrize(
    ("still", "words"),
    [
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=2), "2m"),
        (timedelta(minutes=2, seconds=5), "2m5s"),
        (timedelta(hours=1, minutes=2, seconds=5), "1h2m"),
        (timedelta(hours=3), "3h0m"),
    ],
)
def test_stalled_then_resumed(still: timedelta, words: str) -> None:
    """Unchanged for ``stall_after`` (= ``still``): stalled, then resumed, both saying how long."""
    tracker = Tracker(Rules(stall_after=still))
    tracker.observe(_info(40), T0)

    [stalled] = tracker.observe(_info(40), T0 + still)
    [resumed] = tracker.observe(_info(41), T0 + still)

    assert (EventType.TASK_STALLED, f"no change for {words} (state Started, progress 40%)") == (
        stalled.type,
        stalled.message,
    )
    assert (EventType.TASK_RESUMED, f"moving again after {words} without change") == (
        resumed.type,
        resumed.message,
    )
