"""Whether a task ran again: StartCount decides when both snapshots carry it, else LastStarted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.detect import ran_again

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)


def _info(starts: int | None, started: datetime | None) -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(
        {
            "Id": 7,
            "State": "Started",
            "StartCount": starts,
            "LastStarted": None if started is None else started.isoformat(),
        }
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ((1, T0), (2, T0), True),  # the count grew
        ((2, T0), (1, LATER), False),  # the count went back: not a new run, whatever the time
        ((0, T0), (1, LATER), False),  # 0 → 1 is the first run starting, not a second one
        ((1, T0), (1, LATER), True),  # same count, LastStarted moved
        ((1, LATER), (1, T0), False),  # LastStarted went back
        ((None, T0), (1, LATER), True),  # no count before: LastStarted decides
        ((1, T0), (None, LATER), True),  # no count now: LastStarted decides
        ((None, T0), (None, T0), False),
        ((None, None), (None, LATER), False),  # nothing to compare with
        ((None, T0), (None, None), False),
    ],
)
def test_ran_again(
    old: tuple[int | None, datetime | None],
    new: tuple[int | None, datetime | None],
    expected: bool,
) -> None:
    """(StartCount, LastStarted) before and after → whether a new run began."""
    assert expected == ran_again(_info(*old), _info(*new))
