"""Acknowledgement rules: accepted or refused, holding or lapsed, and the events they cause."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.sinks.alertmanager import alerts_for
from monitor.sinks.render import Renderer
from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.acks import (
    BY_MAX,
    Ack,
    AckRefusedError,
    Refusal,
    accept,
    acknowledged_event,
    condition_key,
    condition_since,
    holds,
    open_condition,
    text_problem,
    withdrawn_event,
)
from monitor.tracking.events import EndReason, EventType
from monitor.tracking.memory import Rules, TaskMemory
from monitor.tracking.tracker import Tracker

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
RULES = Rules(stall_after=timedelta(minutes=15))


def _info(state: str, percent: int = 40, starts: int = 1, **more: Any) -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(
        {
            "Id": 7,
            "Name": "Export",
            "State": state,
            "ProgressPercent": percent,
            "StartCount": starts,
            "LastStarted": (T0 - timedelta(hours=1) + timedelta(hours=starts)).isoformat(),
            **more,
        }
    )


def _history(*steps: tuple[int, str, int] | tuple[int, None, int]) -> TaskMemory:
    """The memory after (minute, state or None for a 404, start count) observations."""
    tracker = Tracker(RULES)
    for minute, state, starts in steps:
        at = T0 + timedelta(minutes=minute)
        if state is None:
            tracker.observe_gone(7, at)
        else:
            tracker.observe(_info(state, starts=starts), at)
    return tracker.tasks[7]


FAILED = ((0, "Started", 1), (1, "Failed", 1))
STALLED = ((0, "Started", 1), (20, "Started", 1))
GONE = ((0, "Started", 1), (1, None, 1))

#: (name, history, condition type, when it began)
CONDITIONS = [
    ("failed", FAILED, EventType.TASK_FAILED, T0 + timedelta(minutes=1)),
    ("stalled", STALLED, EventType.TASK_STALLED, T0 + timedelta(minutes=15)),
    ("gone", GONE, EventType.TASK_GONE, T0 + timedelta(minutes=1)),
    ("running", ((0, "Started", 1),), None, None),
    ("succeeded", ((0, "Started", 1), (1, "Succeeded", 1)), None, None),
    ("removed after it finished", ((0, "Failed", 1), (1, None, 1)), None, None),
]


class TestCondition:
    """A condition's key and start, from the task's memory."""

    @pytest.mark.parametrize(
        ("history", "kind", "since"),
        [c[1:] for c in CONDITIONS],
        ids=[c[0] for c in CONDITIONS],
    )
    def test_key_and_start(
        self, history: tuple[Any, ...], kind: EventType | None, since: datetime | None
    ) -> None:
        """Failed, stalled and gone tasks have a key naming the type; the others none."""
        memory = _history(*history)
        key = condition_key(memory)
        assert (key.split("|")[0] if key else None) == (kind.value if kind else None)
        assert since == condition_since(memory, RULES)

    @pytest.mark.parametrize(
        ("first", "then"),
        [
            (FAILED, (*FAILED, (5, "Started", 2), (6, "Failed", 2))),
            (STALLED, (*STALLED, (21, "Started", 1, 50), (40, "Started", 1, 50))),
            (FAILED, (*FAILED, (5, "Started", 1), (6, "Failed", 1))),
            (GONE, (*GONE, (5, "Started", 1), (6, None, 1))),
        ],
        ids=["failed again in a new run", "stalled again", "failed again in the run", "gone again"],
    )
    def test_a_new_condition_has_a_new_key(
        self, first: tuple[Any, ...], then: tuple[Any, ...]
    ) -> None:
        """The same type again later is another condition: an acknowledgement does not carry."""
        tracker = Tracker(RULES)
        for step in then:
            minute, state, starts, *rest = step
            percent = rest[0] if rest else 40
            at = T0 + timedelta(minutes=minute)
            if state is None:
                tracker.observe_gone(7, at)
            else:
                tracker.observe(_info(state, percent, starts=starts), at)
        assert condition_key(_history(*first)) != condition_key(tracker.tasks[7])

    def test_a_task_never_started(self) -> None:
        """No LastStarted (a task that failed before it ran) still has a key."""
        tracker = Tracker(RULES)
        info = BatchTaskInfo.model_validate({"Id": 7, "Name": "Export", "State": "Failed"})
        tracker.observe(info, T0)
        assert "task.failed|7|None|-|" + T0.isoformat() == condition_key(tracker.tasks[7])

    def test_open_condition(self) -> None:
        """A firing event with its key and start; none for a memory without a condition."""
        tracker = Tracker(RULES)
        for minute, state, starts in FAILED:
            tracker.observe(_info(state, starts=starts), T0 + timedelta(minutes=minute))
        (event,) = tracker.firing()
        found = open_condition(event, tracker.tasks[7], RULES)
        assert found is not None
        assert (found.event, found.since) == (event, T0 + timedelta(minutes=1))
        assert found.key == condition_key(tracker.tasks[7])
        assert open_condition(event, _history((0, "Started", 1)), RULES) is None


BY = "alice"
LATER = T0 + timedelta(minutes=30)


def _ack(memory: TaskMemory, by: str = BY, comment: str | None = None) -> Ack:
    decided = accept(memory, None, by, comment, T0 + timedelta(minutes=10))
    assert isinstance(decided, Ack)
    return decided


#: (who acknowledges again, comment, expected by, comment, time)
AGAIN: list[tuple[str, str | None, str, str | None, datetime]] = [
    (BY, None, BY, "on it", T0 + timedelta(minutes=10)),
    (BY, "rerunning", BY, "rerunning", T0 + timedelta(minutes=10)),
    ("bob", None, "bob", None, LATER),
    ("bob", "mine now", "bob", "mine now", LATER),
]


class TestAccept:
    """Who may take what, and what a second acknowledgement changes."""

    @pytest.mark.parametrize(
        ("history", "expected"),
        [
            (None, Refusal.UNKNOWN_TASK),
            (((0, "Started", 1),), Refusal.NOT_FIRING),
            (((0, "Started", 1), (1, "Succeeded", 1)), Refusal.NOT_FIRING),
            (FAILED, None),
            (STALLED, None),
            (GONE, None),
        ],
        ids=["unknown", "running", "succeeded", "failed", "stalled", "gone"],
    )
    def test_refused_without_a_condition(
        self, history: tuple[Any, ...] | None, expected: Refusal | None
    ) -> None:
        """Only a failed, stalled or gone task can be taken."""
        memory = _history(*history) if history is not None else None
        decided = accept(memory, None, BY, None, LATER)
        if expected is None:
            assert isinstance(decided, Ack)
            assert (decided.task_id, decided.by, decided.at) == (7, BY, LATER)
            assert memory is not None
            assert decided.condition == condition_key(memory)
        else:
            assert decided is expected

    @pytest.mark.parametrize(("by", "comment", "who", "said", "at"), AGAIN)
    def test_again(
        self, by: str, comment: str | None, who: str, said: str | None, at: datetime
    ) -> None:
        """The same person keeps the time (a new comment replaces the old); another takes it."""
        memory = _history(*FAILED)
        held = _ack(memory, comment="on it")
        decided = accept(memory, held, by, comment, LATER)
        assert isinstance(decided, Ack)
        assert (decided.by, decided.comment, decided.at) == (who, said, at)

    def test_a_lapsed_one_is_replaced(self) -> None:
        """An acknowledgement of an earlier condition does not make this one "the same"."""
        held = _ack(_history(*FAILED))
        again = _history(*FAILED, (5, "Started", 2), (6, "Failed", 2))
        decided = accept(again, held, BY, None, LATER)
        assert isinstance(decided, Ack)
        assert (decided.at, decided.condition) == (LATER, condition_key(again))

    def test_refusals_say_why(self) -> None:
        """The error names the task and the reason."""
        assert "task 7 is not tracked" == str(AckRefusedError(7, Refusal.UNKNOWN_TASK))
        assert "nothing to acknowledge" in str(AckRefusedError(7, Refusal.NOT_FIRING))


#: (what happened after the acknowledgement, whether it still holds)
LAPSES: list[tuple[str, tuple[Any, ...], bool]] = [
    ("nothing", (), True),
    ("polled again, unchanged", ((20, "Failed", 1),), True),
    ("ran again", ((20, "Started", 2),), False),
    ("ran again and failed", ((20, "Started", 2), (21, "Failed", 2)), False),
    ("succeeded after a rerun", ((20, "Succeeded", 2),), False),
    ("removed", ((20, None, 1),), False),
]


class TestLapse:
    """An acknowledgement holds exactly as long as its condition fires."""

    @pytest.mark.parametrize(
        ("after", "expected"), [c[1:] for c in LAPSES], ids=[c[0] for c in LAPSES]
    )
    def test_holds_while_the_condition_fires(self, after: tuple[Any, ...], expected: bool) -> None:
        """A rerun, a success or a removal ends it; a new failure needs a new one."""
        ack = _ack(_history(*FAILED))
        assert expected is holds(ack, _history(*FAILED, *after))

    def test_forgotten(self) -> None:
        """A task no longer tracked holds nothing."""
        assert not holds(_ack(_history(*FAILED)), None)

    def test_a_stall_that_resumes(self) -> None:
        """A stalled task that moves ends the stall and its acknowledgement."""
        ack = _ack(_history(*STALLED))
        tracker = Tracker(RULES)
        for minute, state, percent in (
            (0, "Started", 40),
            (20, "Started", 40),
            (21, "Started", 60),
        ):
            tracker.observe(_info(state, percent), T0 + timedelta(minutes=minute))
        assert not holds(ack, tracker.tasks[7])


class TestEvents:
    """What an acknowledgement and its withdrawal announce."""

    def test_acknowledged(self) -> None:
        """task.acknowledged ends the conditions and says who took it, and why."""
        memory = _history(*FAILED)
        ack = _ack(memory, comment="rerunning after the fix")
        event = acknowledged_event(memory, ack)
        assert (event.type, event.reason, event.time) == (
            EventType.TASK_ACKNOWLEDGED,
            EndReason.ACKNOWLEDGED,
            ack.at,
        )
        assert "Acknowledged by alice: rerunning after the fix" == event.message
        assert event.task is not None
        assert event.task.id == 7

    def test_the_id_is_per_person_and_time(self) -> None:
        """The same acknowledgement has the same id; another person's another."""
        memory = _history(*FAILED)
        ack = _ack(memory)
        assert acknowledged_event(memory, ack).id == acknowledged_event(memory, ack).id
        assert (
            acknowledged_event(memory, ack).id != acknowledged_event(memory, _ack(memory, "bob")).id
        )

    @pytest.mark.parametrize(
        ("by", "said"),
        [
            ("bob", "Acknowledged by alice; taken back by bob: nobody has it now"),
            (None, "Acknowledged by alice; taken back: nobody has it now"),
        ],
    )
    def test_withdrawn_fires_again(self, by: str | None, said: str) -> None:
        """Taking it back announces the condition again (its alert fires again)."""
        memory = _history(*FAILED)
        event = withdrawn_event(memory, _ack(memory), by, LATER)
        assert event is not None
        assert (event.type, event.time, event.message) == (EventType.TASK_FAILED, LATER, said)

    def test_withdrawing_a_lapsed_one_says_nothing(self) -> None:
        """Its condition ended: nothing to fire again."""
        ack = _ack(_history(*FAILED))
        assert withdrawn_event(_history(*FAILED, (20, "Started", 2)), ack, BY, LATER) is None

    def test_as_the_api_shows_it(self) -> None:
        """``by``, ``comment`` and ``at``, nothing internal."""
        ack = _ack(_history(*FAILED), comment="x")
        assert {"by": BY, "comment": "x", "at": ack.at.isoformat()} == ack.to_dict()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice", None),
        ("line one\nline two\tand a tab", None),
        ("x" * BY_MAX, None),
        ("x" * (BY_MAX + 1), f"at most {BY_MAX} characters, got {BY_MAX + 1}"),
        ("\x1b[31mred", "control characters are not allowed"),
        ("nul\x00", "control characters are not allowed"),
        ("half \ud83d", "control characters are not allowed"),
    ],
    ids=["plain", "breaks and tabs", "longest", "too long", "escape", "nul", "surrogate"],
)
def test_text_problem(text: str, problem: str | None) -> None:
    """Names and comments are text a person reads: bounded, no control characters."""
    assert problem == text_problem(text, BY_MAX)


def test_alertmanager_resolves_saying_who() -> None:
    """The acknowledgement resolves every condition's alert, its annotations naming who."""
    memory = _history(*FAILED)
    change = alerts_for(acknowledged_event(memory, _ack(memory, comment="rerunning")))
    assert change.fired is None
    resolved = {alert.labels["alertname"]: alert.annotations for alert in change.resolved}
    assert {"BatchTaskFailed", "BatchTaskStalled", "BatchTaskGone"} == set(resolved)
    annotations = resolved["BatchTaskFailed"]
    assert "acknowledged" == annotations["ended"]
    assert "Acknowledged by alice: rerunning" in annotations["description"]


def test_chat_says_who_took_it() -> None:
    """A chat message of the acknowledgement names the task and the person, and their comment."""
    memory = _history(*FAILED)
    event = acknowledged_event(memory, _ack(memory, comment="rerunning"))
    message = Renderer("ops", template=None, status_url=None).render(event)
    assert "🙋 Export acknowledged" == message.title
    assert "Acknowledged by alice: rerunning" in message.text
