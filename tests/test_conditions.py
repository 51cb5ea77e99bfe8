"""Conditions and their ends, and forgetting, decided by tables with a clock.

A failed, stalled or vanished task has a condition that reminders and the
Alertmanager sink hold while it lasts; each one ends (restarted, succeeded,
resumed, removed, expired), and a task finished or gone for ``forget_after``
is forgotten.  No event loop: time is an argument.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.detect import condition, detect, detect_404, expire, expired
from monitor.tracking.events import KINDS, EndReason, EventType
from monitor.tracking.memory import Rules, TaskMemory
from monitor.tracking.tracker import Tracker
from tests.test_detect import RULES, T0, H, M, S, seen, task

DAY = timedelta(days=1)

# (case, memory, the condition it is in)
CONDITIONS: list[tuple[str, TaskMemory, EventType | None]] = [
    ("running", seen(task()), None),
    ("queued", seen(task(State="New", StartCount=0, LastStarted=None)), None),
    ("failed", seen(task(State="Failed")), EventType.TASK_FAILED),
    ("succeeded", seen(task(State="Succeeded")), None),
    ("stalled", seen(task(), stalled=True), EventType.TASK_STALLED),
    ("gone while running", seen(task(), gone=True, gone_since=T0), EventType.TASK_GONE),
    ("removed after it failed", seen(task(State="Failed"), gone=True, gone_since=T0), None),
    ("removed after it succeeded", seen(task(State="Succeeded"), gone=True, gone_since=T0), None),
]


@pytest.mark.parametrize(
    ("memory", "expected"), [pytest.param(*case[1:], id=case[0]) for case in CONDITIONS]
)
def test_condition(memory: TaskMemory, expected: EventType | None) -> None:
    """Failed, stalled and gone-while-active are conditions; a clean-up is none."""
    assert expected is condition(memory)
    if expected is not None:
        assert KINDS[expected].alert is not None, "a condition fires an alert while it lasts"


# (case, memory, time since T0, expired?, the events forgetting it gives)
EXPIRY: list[tuple[str, TaskMemory, timedelta, bool, list[EventType]]] = [
    ("running, for ever", seen(task()), 100 * DAY, False, []),
    ("stalled, for ever", seen(task(), stalled=True), 100 * DAY, False, []),
    ("succeeded, a day less a second", seen(task(State="Succeeded")), DAY - S, False, []),
    ("succeeded, a day", seen(task(State="Succeeded")), DAY, True, []),
    ("failed, a day", seen(task(State="Failed")), DAY, True, [EventType.TASK_EXPIRED]),
    (
        "gone while running, a day after the 404",
        seen(task(), gone=True, gone_since=T0 + H),
        DAY + H,
        True,
        [EventType.TASK_EXPIRED],
    ),
    (
        "gone, not yet a day after the 404",
        seen(task(), gone=True, gone_since=T0 + H),
        DAY,
        False,
        [],
    ),
    (
        "removed after it failed",
        seen(task(State="Failed"), gone=True, gone_since=T0),
        DAY,
        True,
        [],
    ),
]


@pytest.mark.parametrize(
    ("memory", "after", "is_expired", "events"),
    [pytest.param(*case[1:], id=case[0]) for case in EXPIRY],
)
def test_expiry(
    memory: TaskMemory, after: timedelta, is_expired: bool, events: list[EventType]
) -> None:
    """Finished or gone for ``forget_after``: forgotten; a condition still firing ends."""
    now = T0 + after
    assert is_expired is expired(memory, now, RULES)
    if is_expired:
        found = expire(memory, now)
        assert events == [e.type for e in found]
        assert all(e.reason is EndReason.EXPIRED for e in found)


# (case, memory, snapshot (None: 404), the event that ends a condition, its reason)
ENDINGS = [
    (
        "failed, run again",
        seen(task(State="Failed")),
        task(StartCount=2, LastStarted="2026-11-28T12:00:30Z", ProgressPercent=0),
        EventType.TASK_RESTARTED,
        EndReason.RESTARTED,
    ),
    (
        "stalled, succeeded",
        seen(task(), stalled=True),
        task(State="Succeeded"),
        EventType.TASK_SUCCEEDED,
        EndReason.SUCCEEDED,
    ),
    (
        "stalled, moved",
        seen(task(), stalled=True),
        task(ProgressPercent=41),
        EventType.TASK_RESUMED,
        EndReason.RESUMED,
    ),
    (
        "failed, cleaned up",
        seen(task(State="Failed")),
        None,
        EventType.TASK_REMOVED,
        EndReason.REMOVED,
    ),
]


@pytest.mark.parametrize(
    ("memory", "current", "kind", "reason"),
    [pytest.param(*case[1:], id=str(case[0])) for case in ENDINGS],
)
def test_events_that_end_a_condition_carry_why(
    memory: TaskMemory, current: BatchTaskInfo | None, kind: EventType, reason: EndReason
) -> None:
    """The event that ends a condition says why, in ``reason``."""
    if current is None:
        detection = detect_404(memory, T0 + M)
        assert detection is not None
        events = detection.events
    else:
        events = detect(memory, current, T0 + M, RULES).events
    found = {e.type: e for e in events}
    assert reason is found[kind].reason
    assert condition(memory) in KINDS[kind].ends, "the table says this event ends it"
    assert found[kind].to_dict()["reason"] == reason.value


def test_first_seen_outcome_has_the_id_of_the_transition() -> None:
    """A failure announced at first sight is marked, and has the id it would have had if
    seen happening: a receiver that got it from another replica drops the repeat."""
    failed = task(State="Failed", Result="Failed: no quote lines")
    late = detect(None, failed, T0 + M, RULES).events
    live = detect(seen(task()), failed, T0 + M, RULES).events

    assert [EventType.TASK_DISCOVERED, EventType.TASK_FAILED] == [e.type for e in late]
    assert late[1].first_seen
    assert not live[0].first_seen
    assert late[1].id == live[0].id
    assert late[1].to_dict()["first_seen"] is True


class TestForgettingOverAMonth:
    """The tracker over 30 simulated days: what it holds stays bounded."""

    def test_tracked_tasks_stay_within_the_window(self) -> None:
        """10 tasks an hour start, run 10 minutes and succeed (every 10th fails);
        with forget_after 24 h the tracker never holds more than a day and an hour of them,
        and every failure's condition ends by day 30."""
        tracker = Tracker(replace(RULES, forget_after=DAY))
        most = 0
        expired_events = 0
        task_id = 0
        for hour in range(30 * 24):
            start = T0 + hour * H
            for n in range(10):
                task_id += 1
                began = start + n * 5 * M
                info = task(Id=task_id, LastStarted=began.isoformat(), ProgressPercent=0)
                tracker.observe(info, began)
                outcome = "Failed" if task_id % 10 == 0 else "Succeeded"
                tracker.observe(
                    task(Id=task_id, LastStarted=began.isoformat(), State=outcome),
                    began + 10 * M,
                )
            events, _ = tracker.expire(start + H)
            expired_events += len(events)
            most = max(most, len(tracker.tasks))

        assert most <= 25 * 10
        assert 0 < expired_events
        failures = [e for e in tracker.firing() if e.type is EventType.TASK_FAILED]
        assert len(failures) <= 25, "only the last day's failures are still firing"
        assert sum(tracker.state_counts.values()) == len(tracker.tasks)

    def test_changed_set_stays_bounded_without_a_reader(self) -> None:
        """A daemon nobody scrapes never takes the changed ids: the tasks it forgot leave no
        trace in them (a month at 240 tasks a day would otherwise keep all 7,200 ids)."""
        tracker = Tracker(replace(RULES, forget_after=DAY))
        for task_id in range(1, 30 * 240 + 1):
            began = T0 + task_id * 6 * M
            tracker.observe(task(Id=task_id, LastStarted=began.isoformat()), began)
            tracker.observe(
                task(Id=task_id, LastStarted=began.isoformat(), State="Succeeded"), began + M
            )
            if task_id % 10 == 0:
                tracker.expire(began + M)

        assert len(tracker.take_changed()) <= len(tracker.tasks) <= 250

    def test_forgotten_tasks_leave_the_counts_and_the_changed_set(self) -> None:
        """Forgetting drops a task from the state counts and reports it changed (metrics)."""
        tracker = Tracker(Rules(forget_after=H))
        tracker.observe(task(Id=1, State="Failed"), T0)
        tracker.observe(task(Id=2), T0)
        tracker.take_changed()

        events, ids = tracker.expire(T0 + H)

        assert [1] == ids
        assert [EventType.TASK_EXPIRED] == [e.type for e in events]
        assert {1} == tracker.take_changed()
        assert {"Started": 1} == {k: v for k, v in tracker.state_counts.items() if v}
