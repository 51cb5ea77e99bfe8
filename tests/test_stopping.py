"""Stopping a task, decided by tables: CancellationBehaviour, force, state, the stall clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.memory import TaskMemory
from monitor.tracking.stopping import Verdict, auto_stop_id, due_auto_stops, may_stop, stop_answer

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def task(**fields: Any) -> BatchTaskInfo:
    data: dict[str, Any] = {
        "Id": 212,
        "Name": "Export",
        "State": "Started",
        "StartCount": 1,
        "LastStarted": "2026-12-03T11:00:00Z",
        "CancellationBehaviour": "CanCancel",
    }
    data.update(fields)
    return BatchTaskInfo.model_validate(data)


# (case, task fields, force, verdict)
VERDICTS: list[tuple[str, dict[str, Any], bool, Verdict]] = [
    ("can cancel", {}, False, Verdict.STOP),
    ("can cancel, forced", {}, True, Verdict.STOP),
    ("can cancel as a number", {"CancellationBehaviour": 0}, False, Verdict.STOP),
    ("queued", {"State": "New"}, False, Verdict.STOP),
    ("acquired", {"State": "Aquired"}, False, Verdict.STOP),
    ("warning", {"CancellationBehaviour": "CancelWithWarning"}, False, Verdict.NEEDS_FORCE),
    ("warning, forced", {"CancellationBehaviour": "CancelWithWarning"}, True, Verdict.STOP),
    ("warning as a number", {"CancellationBehaviour": 1}, False, Verdict.NEEDS_FORCE),
    ("cannot", {"CancellationBehaviour": "CannotCancel"}, False, Verdict.CANNOT_CANCEL),
    ("cannot, forced", {"CancellationBehaviour": "CannotCancel"}, True, Verdict.CANNOT_CANCEL),
    ("cannot as a number", {"CancellationBehaviour": 2}, True, Verdict.CANNOT_CANCEL),
    ("cannot, lower case", {"CancellationBehaviour": "cannotcancel"}, True, Verdict.CANNOT_CANCEL),
    ("unknown behaviour", {"CancellationBehaviour": "Maybe"}, False, Verdict.NEEDS_FORCE),
    ("unknown behaviour, forced", {"CancellationBehaviour": 7}, True, Verdict.STOP),
    ("absent behaviour", {"CancellationBehaviour": None}, False, Verdict.NEEDS_FORCE),
    ("finished", {"State": "Succeeded"}, True, Verdict.NOT_RUNNING),
    ("failed", {"State": "Failed"}, True, Verdict.NOT_RUNNING),
]


class TestMayStop:
    """Whether StopBatchJob is called, and the sentence that says why not."""

    @pytest.mark.parametrize(
        ("fields", "force", "verdict"),
        [case[1:] for case in VERDICTS],
        ids=[case[0] for case in VERDICTS],
    )
    def test_verdict(self, fields: dict[str, Any], force: bool, verdict: Verdict) -> None:
        """Each behaviour, state and force gives its verdict."""
        assert verdict is may_stop(task(**fields), force=force).verdict

    def test_reasons_say_why(self) -> None:
        """The refusals name the task and SuperOffice's reason."""
        cannot = may_stop(task(CancellationBehaviour="CannotCancel"), force=True).reason
        warned = may_stop(task(CancellationBehaviour="CancelWithWarning"), force=False).reason
        assert "task 212 (Export) cannot be stopped: SuperOffice marks it CannotCancel" == cannot
        assert "CancelWithWarning" in warned
        assert "force" in warned
        assert "Succeeded" in may_stop(task(State="Succeeded"), force=True).reason

    def test_answer(self) -> None:
        """The event's message says who asked and what SuperOffice answered."""
        assert "Stop requested by ann; SuperOffice stopping it" == stop_answer("ann", True)
        assert "answered false: not stopped" in stop_answer("ann", False)


def stalled(info: BatchTaskInfo, last_change: datetime, **fields: Any) -> TaskMemory:
    memory = TaskMemory(info=info, first_seen=T0, last_change=last_change, last_seen=T0)
    return replace(memory, stalled=True, **fields)


# (case, memory, minutes after T0, expected to be stopped)
STALL = 15 * M
AFTER = 60 * M
AUTO: list[tuple[str, TaskMemory, int, bool]] = [
    ("stalled long enough", stalled(task(), T0), 75, True),
    ("a minute short", stalled(task(), T0), 74, False),
    ("long after", stalled(task(), T0), 600, True),
    ("not stalled", replace(stalled(task(), T0), stalled=False), 600, False),
    ("gone", stalled(task(), T0, gone=True), 600, False),
    ("finished", stalled(task(State="Failed"), T0), 600, False),
    ("behaviour not polled", stalled(task(CancellationBehaviour=None), T0), 600, True),
    ("warned", stalled(task(CancellationBehaviour="CancelWithWarning"), T0), 600, False),
    ("cannot", stalled(task(CancellationBehaviour="CannotCancel"), T0), 600, False),
]


class TestAutoStops:
    """``[poll] stop_stalled_after``: which stalled tasks are stopped now."""

    @pytest.mark.parametrize(
        ("memory", "minutes", "due"), [c[1:] for c in AUTO], ids=[c[0] for c in AUTO]
    )
    def test_due(self, memory: TaskMemory, minutes: int, due: bool) -> None:
        """A task stalled for stall_after + stop_stalled_after, and safe to stop, is due."""
        now = T0 + minutes * M
        found = due_auto_stops([memory], stall_after=STALL, stop_after=AFTER, now=now)
        assert due == (found == [memory])

    def test_off_by_default(self) -> None:
        """Without stop_stalled_after nothing is stopped."""
        memory = stalled(task(), T0)
        assert [] == due_auto_stops([memory], stall_after=STALL, stop_after=None, now=T0 + 1000 * M)

    def test_once_per_run(self) -> None:
        """The same run has the same id (a restart finds it recorded); a new run, another."""
        first = auto_stop_id(task())
        assert first == auto_stop_id(task(ProgressPercent=50))
        assert first != auto_stop_id(task(StartCount=2, LastStarted="2026-12-03T12:30:00Z"))
        assert first != auto_stop_id(task(Id=213))
