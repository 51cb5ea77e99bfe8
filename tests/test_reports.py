"""What the poller logs once per streak: a clean list row between two answers of the task's
own GET ends no streak, so a hostile GET is said once, not once per list cycle."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from monitor.polling.reports import Reports
from monitor.superoffice.errors import MalformedResponse
from monitor.superoffice.models import BatchTaskInfo

CLEAN = BatchTaskInfo.model_validate({"Id": 7, "State": "Started", "ProgressPercent": 40})
ODD = BatchTaskInfo.model_validate({"Id": 7, "State": "Started", "ProgressPercent": 150})


@pytest.mark.parametrize(
    ("steps", "said"),
    [
        # (answer, from a list row?) in order
        ([(ODD, False), (CLEAN, True), (ODD, False)], 1),
        ([(ODD, False), (CLEAN, False), (ODD, False)], 2),
        ([(ODD, True), (ODD, False)], 1),
    ],
    ids=["a clean row ends nothing", "a clean GET ends the streak", "the row said it first"],
)
def test_anomalies_once_per_streak(steps: list[tuple[BatchTaskInfo, bool]], said: int) -> None:
    """An anomaly is logged when it starts; only a clean GET ends it."""
    reports = Reports()
    with capture_logs() as logs:
        for info, listed in steps:
            reports.answer(info, listed=listed)

    assert said == sum(e["event"] == "task_answer_anomalous" for e in logs)


def test_malformed_once_per_streak() -> None:
    """A malformed GET is said once; a clean row does not end it, a clean GET does."""
    reports = Reports()
    broken = MalformedResponse("not JSON")
    with capture_logs() as logs:
        reports.failure(7, broken)
        reports.answer(CLEAN, listed=True)
        reports.failure(7, broken)
        reports.answer(CLEAN, listed=False)
        reports.failure(7, broken)

    assert ["task_answer_malformed", "task_answer_valid_again", "task_answer_malformed"] == [
        e["event"] for e in logs if e["log_level"] in {"warning", "info"}
    ]
