"""Transition detection, driven by tables of (previous, current, now) → events.

No event loop, no clock: time is an argument.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.detect import detect, detect_404, time_may_tell
from monitor.tracking.eta import add_sample, estimate_eta
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import Rules, TaskMemory, state_name
from monitor.tracking.tracker import Tracker

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
STARTED_AT = "2026-11-28T11:50:00.0000000+00:00"
RULES = Rules(
    progress_step=10,
    progress_min_interval=timedelta(seconds=30),
    stall_after=timedelta(minutes=15),
)


def task(**fields: Any) -> BatchTaskInfo:
    """A BatchTaskInfo with sensible defaults, fields given in API spelling."""
    data: dict[str, Any] = {
        "Id": 212,
        "Name": "Email Campaign Export",
        "State": "Started",
        "ProgressPercent": 40,
        "ProgressDescription": "Processing records",
        "StartCount": 1,
        "LastStarted": STARTED_AT,
    }
    data.update(fields)
    return BatchTaskInfo.model_validate(data)


def seen(info: BatchTaskInfo, **memory: Any) -> TaskMemory:
    """Memory of a task last seen (and last changed) at T0, with overrides."""
    return replace(detect(None, info, T0, RULES).memory, **memory)


def observe(previous: TaskMemory | None, current: BatchTaskInfo | None, now: Any) -> list[Event]:
    """The events of one observation: a snapshot, or a 404 (``None``)."""
    if current is not None:
        return detect(previous, current, now, RULES).events
    detection = detect_404(previous, now)
    return [] if detection is None else detection.events


S = timedelta(seconds=1)
M = timedelta(minutes=1)
H = timedelta(hours=1)

# (case, previous memory, current snapshot, time since T0, expected event types)
CASES: list[tuple[str, TaskMemory | None, BatchTaskInfo | None, timedelta, list[EventType]]] = [
    (
        "first sight of a running task",
        None,
        task(),
        S,
        [EventType.TASK_DISCOVERED, EventType.TASK_STARTED],
    ),
    (
        "first sight of a queued task",
        None,
        task(State="New", StartCount=0, LastStarted=None),
        S,
        [EventType.TASK_DISCOVERED],
    ),
    (
        "first sight of a task that failed within forget_after",
        None,
        task(State="Failed"),
        S,
        [EventType.TASK_DISCOVERED, EventType.TASK_FAILED],
    ),
    (
        "first sight of a task that succeeded within forget_after",
        None,
        task(State="SucceededManualCleanup"),
        S,
        [EventType.TASK_DISCOVERED, EventType.TASK_SUCCEEDED],
    ),
    (
        "first sight of a task that failed longer ago than forget_after",
        None,
        task(State="Failed"),
        25 * H,
        [EventType.TASK_DISCOVERED],
    ),
    (
        "first sight of a failure with no dates: announced",
        None,
        task(State="Failed", LastStarted=None),
        25 * H,
        [EventType.TASK_DISCOVERED, EventType.TASK_FAILED],
    ),
    (
        "first sight of a never-started failure: by its creation",
        None,
        task(State="Failed", LastStarted=None, Created="2026-11-26T12:00:00Z"),
        S,
        [EventType.TASK_DISCOVERED],
    ),
    ("nothing changed", seen(task()), task(), S, []),
    (
        "New to Aquired",
        seen(task(State="New", StartCount=0, LastStarted=None)),
        task(State="Aquired", StartCount=0, LastStarted=None),
        S,
        [EventType.TASK_STATE_CHANGED],
    ),
    (
        "first start is a start, not a restart",
        seen(task(State="Aquired", StartCount=0, LastStarted=None, ProgressPercent=0)),
        task(State="Started", StartCount=1, ProgressPercent=0),
        S,
        [EventType.TASK_STARTED],
    ),
    ("Started to Succeeded", seen(task()), task(State="Succeeded"), S, [EventType.TASK_SUCCEEDED]),
    (
        "Started to SucceededManualCleanup",
        seen(task()),
        task(State="SucceededManualCleanup"),
        S,
        [EventType.TASK_SUCCEEDED],
    ),
    ("Started to Failed", seen(task()), task(State="Failed"), S, [EventType.TASK_FAILED]),
    (
        "to an unknown state string",
        seen(task()),
        task(State="Paused"),
        S,
        [EventType.TASK_STATE_CHANGED],
    ),
    ("to the All wildcard", seen(task()), task(State="All"), S, [EventType.TASK_STATE_CHANGED]),
    ("numeric state equal by value", seen(task(State="Started")), task(State=3), S, []),
    (
        "one unknown state to another",
        seen(task(State="Paused")),
        task(State="Halted"),
        S,
        [EventType.TASK_STATE_CHANGED],
    ),
    (
        "StartCount grew: ran again",
        seen(task(State="Failed")),
        task(State="Started", StartCount=2, LastStarted="2026-11-28T12:00:30Z", ProgressPercent=0),
        S,
        [EventType.TASK_RESTARTED, EventType.TASK_STARTED],
    ),
    (
        "ran again, still queued",
        seen(task(State="Failed")),
        task(State="New", StartCount=2, LastStarted="2026-11-28T12:00:30Z", ProgressPercent=0),
        S,
        [EventType.TASK_RESTARTED],
    ),
    (
        "ran again and already finished between two polls",
        seen(task(State="Failed")),
        task(State="Succeeded", StartCount=2, LastStarted="2026-11-28T12:00:30Z"),
        S,
        [EventType.TASK_RESTARTED, EventType.TASK_SUCCEEDED],
    ),
    (
        "LastStarted moved with the same StartCount",
        seen(task()),
        task(LastStarted="2026-11-28T12:00:30Z", ProgressPercent=0),
        S,
        [EventType.TASK_RESTARTED, EventType.TASK_STARTED],
    ),
    (
        "progress crossed a step",
        seen(task()),
        task(ProgressPercent=52),
        S,
        [EventType.TASK_PROGRESS],
    ),
    ("progress within a step", seen(task()), task(ProgressPercent=47), S, []),
    (
        "progress description changed",
        seen(task()),
        task(ProgressDescription="Writing file"),
        S,
        [EventType.TASK_PROGRESS],
    ),
    (
        "progress rate-limited",
        seen(task(), last_progress_event=T0),
        task(ProgressPercent=70),
        10 * S,
        [],
    ),
    (
        "progress after the rate limit",
        seen(task(), last_progress_event=T0),
        task(ProgressPercent=70),
        31 * S,
        [EventType.TASK_PROGRESS],
    ),
    ("active and quiet for stall_after", seen(task()), task(), 15 * M, [EventType.TASK_STALLED]),
    ("quiet, not yet stall_after", seen(task()), task(), 14 * M, []),
    (
        "queued (New) and quiet for stall_after",
        seen(task(State="New", StartCount=0, LastStarted=None)),
        task(State="New", StartCount=0, LastStarted=None),
        16 * M,
        [EventType.TASK_STALLED],
    ),
    ("stalled stays stalled quietly", seen(task(), stalled=True), task(), 60 * M, []),
    (
        "stalled then progress",
        seen(task(), stalled=True),
        task(ProgressPercent=55),
        60 * M,
        [EventType.TASK_PROGRESS, EventType.TASK_RESUMED],
    ),
    (
        "stalled then failed: no resume",
        seen(task(), stalled=True),
        task(State="Failed"),
        60 * M,
        [EventType.TASK_FAILED],
    ),
    (
        "terminal tasks never stall",
        seen(task(State="Succeeded")),
        task(State="Succeeded"),
        9 * 60 * M,
        [],
    ),
    ("404 for a running task", seen(task()), None, S, [EventType.TASK_GONE]),
    (
        "404 for a queued task",
        seen(task(State="Aquired", StartCount=0, LastStarted=None)),
        None,
        S,
        [EventType.TASK_GONE],
    ),
    (
        "404 for a failed task: clean-up",
        seen(task(State="Failed")),
        None,
        S,
        [EventType.TASK_REMOVED],
    ),
    (
        "404 for a succeeded task: clean-up",
        seen(task(State="Succeeded")),
        None,
        S,
        [EventType.TASK_REMOVED],
    ),
    ("404 again", seen(task(), gone=True), None, S, []),
    ("404 for a task never seen", None, None, S, []),
    (
        "back after 404: a new sighting",
        seen(task(), gone=True),
        task(),
        S,
        [EventType.TASK_DISCOVERED, EventType.TASK_STARTED],
    ),
]


class TestDetect:
    """detect() on the table of transitions."""

    @pytest.mark.parametrize(
        ("previous", "current", "after", "expected"),
        [pytest.param(*case[1:], id=case[0]) for case in CASES],
    )
    def test_table(
        self,
        previous: TaskMemory | None,
        current: BatchTaskInfo | None,
        after: timedelta,
        expected: list[EventType],
    ) -> None:
        """Each row gives exactly the expected events, in order."""
        events = observe(previous, current, T0 + after)

        assert expected == [e.type for e in events]
        for event in events:
            assert T0 + after == event.time
            assert event.task is not None
            assert 212 == event.task.id

    def test_changed_fields_carry_old_values(self) -> None:
        """An event lists what changed, with the values before the change."""
        (event,) = observe(seen(task()), task(State="Failed", Result="Disk full"), T0 + S)

        assert {"state": "Started", "result": None} == dict(event.previous)
        assert "Disk full" == event.task.result if event.task else None

    def test_ids_are_stable_and_distinct(self) -> None:
        """The same transition has the same id whenever it is seen; another has another."""
        first = observe(seen(task()), task(State="Failed"), T0 + S)[0]
        again = observe(seen(task()), task(State="Failed"), T0 + 5 * M)[0]
        other_run = observe(seen(task(StartCount=2)), task(State="Failed", StartCount=2), T0 + S)[0]

        assert first.id == again.id
        assert first.id != other_run.id

    def test_suppressed_progress_fires_later(self) -> None:
        """A step crossed inside the rate limit is announced once the limit has passed."""
        tracker = Tracker(RULES)
        tracker.observe(task(ProgressPercent=10), T0)
        first = tracker.observe(task(ProgressPercent=20), T0 + S)
        suppressed = tracker.observe(task(ProgressPercent=30), T0 + 2 * S)
        later = tracker.observe(task(ProgressPercent=30), T0 + 40 * S)

        assert [EventType.TASK_PROGRESS] == [e.type for e in first]
        assert [] == suppressed
        assert [EventType.TASK_PROGRESS] == [e.type for e in later]
        assert {"progress": 20, "progress_description": "Processing records"} == dict(
            later[0].previous
        )


class TestEta:
    """Completion estimates from the progress rate."""

    def test_from_last_started_on_first_sight(self) -> None:
        """A task first seen at 40 % ten minutes after its start finishes fifteen minutes later."""
        eta = estimate_eta(add_sample((), 40, T0), task(ProgressPercent=40), T0)

        assert T0 + 15 * M == eta

    def test_from_samples(self) -> None:
        """Two samples 10 % and 60 s apart put 50 % at five minutes on."""
        tracker = Tracker(RULES)
        tracker.observe(task(ProgressPercent=40), T0)
        tracker.observe(task(ProgressPercent=50), T0 + M)

        assert T0 + M + 5 * M == tracker.eta(212, T0 + M)

    @pytest.mark.parametrize(
        "info",
        [
            task(State="Succeeded", ProgressPercent=100),
            task(ProgressPercent=None),
            task(ProgressPercent=0),
            task(LastStarted=None),
            task(ProgressPercent=1, LastStarted="1900-01-01T00:00:00Z"),
        ],
        ids=["terminal", "no progress", "zero", "no start time", "centuries away"],
    )
    def test_none_without_a_rate(self, info: BatchTaskInfo) -> None:
        """No estimate when there is no rate to extrapolate."""
        assert estimate_eta(add_sample((), info.progress_percent, T0), info, T0) is None


class TestTimeMayTell:
    """When an unchanged task is worth observing again: time alone can tell something."""

    @pytest.mark.parametrize(
        ("memory", "after", "expected"),
        [
            (seen(task()), 14 * M, False),
            (seen(task()), 15 * M, True),
            (seen(task(), stalled=True), 60 * M, False),
            (seen(task(State="Succeeded")), 60 * M, False),
            (seen(task(), gone=True), 60 * M, False),
            (seen(task(), announced_progress=30), S, True),
            (seen(task(), announced_description="Loading"), S, True),
        ],
        ids=[
            "quiet, not yet",
            "quiet for stall_after",
            "already stalled",
            "finished",
            "gone",
            "progress held back",
            "description held back",
        ],
    )
    def test_table(self, memory: TaskMemory, after: Any, expected: bool) -> None:
        """Only the stall clock and a held-back announcement change with time alone."""
        assert expected is time_may_tell(memory, T0 + after, RULES)


class TestTracker:
    """The tracker's memory and counters."""

    def test_counts_events_and_transitions(self) -> None:
        """Events are counted by type and state changes by (from, to)."""
        tracker = Tracker(RULES)
        tracker.observe(task(State="New", StartCount=0, LastStarted=None), T0)
        tracker.observe(task(State="Started"), T0 + S)
        tracker.observe(task(State="Failed"), T0 + 2 * S)

        assert 1 == tracker.event_counts[EventType.TASK_FAILED]
        assert 1 == tracker.transitions[("New", "Started")]
        assert 1 == tracker.transitions[("Started", "Failed")]

    def test_state_counts_and_changed_ids_follow_every_change(self) -> None:
        """Counts per shown state match the memories; each change is reported once."""
        tracker = Tracker(RULES)
        tracker.observe(task(Id=1, State="New", StartCount=0, LastStarted=None), T0)
        tracker.observe(task(Id=2, State="Started"), T0)
        tracker.observe(task(Id=3, State="Started"), T0)
        assert {1, 2, 3} == tracker.take_changed()
        assert set() == tracker.take_changed()

        tracker.observe(task(Id=1, State="Started"), T0 + S)
        tracker.observe_gone(2, T0 + S)
        tracker.forget([3, 99])
        tracker.restore([seen(task(Id=4, State="Failed"))])

        assert {1, 2, 3, 4} == tracker.take_changed()
        expected = {"Started": 1, "Gone": 1, "Failed": 1}
        assert expected == {name: n for name, n in tracker.state_counts.items() if n}
        assert expected == {state_name(m): 1 for m in tracker.tasks.values()}

    def test_terminal_time_and_gone(self) -> None:
        """The tracker remembers when a task ended and that it was deleted."""
        tracker = Tracker(RULES)
        tracker.observe(task(), T0)
        tracker.observe(task(State="Succeeded"), T0 + S)
        tracker.observe(task(State="Succeeded"), T0 + 2 * S)
        gone = tracker.observe_gone(212, T0 + 3 * S)

        assert T0 + S == tracker.tasks[212].terminal_since
        assert [EventType.TASK_REMOVED] == [e.type for e in gone]
        assert tracker.tasks[212].gone
        assert tracker.tasks[212].removed
        assert T0 + 3 * S == tracker.tasks[212].gone_since
        assert [] == tracker.observe_gone(212, T0 + 4 * S)

    def test_a_rerun_seen_only_once_failed_again_ended_then(self) -> None:
        """A failed task that ran and failed again between two polls ended at the second:
        its new condition is not as old as the first failure (escalation counts from it)."""
        tracker = Tracker(RULES)
        tracker.observe(task(State="Failed"), T0)
        rerun = task(State="Failed", StartCount=2, LastStarted="2026-11-28T12:05:00+00:00")
        tracker.observe(rerun, T0 + 10 * M)

        assert T0 + 10 * M == tracker.tasks[212].terminal_since

    def test_stall_then_resume_over_time(self) -> None:
        """A quiet task stalls once, and resumes once when it moves."""
        tracker = Tracker(RULES)
        tracker.observe(task(), T0)
        kinds = [
            [e.type for e in tracker.observe(task(ProgressPercent=p), T0 + minute * M)]
            for minute, p in [(5, 40), (15, 40), (20, 40), (25, 45)]
        ]

        assert [[], [EventType.TASK_STALLED], [], [EventType.TASK_RESUMED]] == kinds
        assert not tracker.tasks[212].stalled
