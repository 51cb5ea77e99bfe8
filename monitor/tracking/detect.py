"""Transition detection: from two observations of a task to the events between them.

Theory of operation
-------------------
:func:`detect` compares what batchmon remembers about a task (``previous``,
a :class:`~monitor.tracking.memory.TaskMemory`, or ``None`` if it never saw
it) with a new snapshot (``current``, or ``None`` when the API answered 404)
at the time ``now``.  It has no I/O, no clock and no logging, so it is tested
with tables of (previous, current, now) → events.

Rules, in the order they are applied:

1. No memory (or a memory of a task that was gone): ``task.discovered``,
   whatever the state.  If the task is already ``Started`` or finished and its
   run began within ``forget_after``, the event of that state too, marked
   ``first_seen``: a failure that happened before batchmon looked still
   reaches whoever filters on ``task.failed``.
2. A 404: ``task.gone`` (once) for a task that was not finished, which fires
   an alert; ``task.removed`` for a finished one, SuperOffice's own clean-up of
   completed tasks, which ends its conditions instead.
3. The task ran again (StartCount grew from ≥ 1, or LastStarted moved):
   ``task.restarted``, then ``task.started`` or the new run's terminal event
   if the state says so.
4. Otherwise a change of state emits the event :data:`STATE_EVENTS` names for
   the new state, ``task.state_changed`` for every other one.
5. No state event this round, not terminal, and the progress crossed a step
   of ``progress_step`` or its description changed: ``task.progress``, at
   most once per ``progress_min_interval`` (a suppressed one fires later).
6. Stalled before and anything moved (not into a terminal state):
   ``task.resumed``.  Not stalled, active, and nothing moved for
   ``stall_after``: ``task.stalled``.

Conditions: a failed task, a stalled one and one gone while active each have
a condition that sinks with reminders and the Alertmanager sink hold while it
lasts (:func:`condition`).  Every one ends: the events that end one carry the
:class:`~monitor.tracking.events.EndReason` (``Kind.reason`` in ``KINDS``), and a task
finished or gone for ``forget_after`` is forgotten (:func:`expired`), its
condition ending with ``task.expired``.

Everything that decides a transition lives in this file: :func:`detect`
takes one observation and returns the events and the task's next memory, and
:func:`time_may_tell` says when time alone (no new observation) can change
anything, so that thousands of unchanged tasks a cycle cost almost nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple

from monitor.superoffice.models import BatchTaskInfo, BatchTaskState
from monitor.tracking.eta import add_sample, estimate_eta
from monitor.tracking.events import KINDS, Event, EventType, TaskSummary, event_id
from monitor.tracking.memory import Rules, TaskMemory

__all__ = [
    "FORGOTTEN_AFTER",
    "STATE_EVENTS",
    "UNWATCHED",
    "Detection",
    "condition",
    "detect",
    "detect_404",
    "expire",
    "expired",
    "ran_again",
    "state_identity",
    "time_may_tell",
]


class Detection(NamedTuple):
    """What one observation gives: the events, and the task's next memory."""

    events: list[Event]
    memory: TaskMemory


#: The event a change *into* a state emits; any state not listed emits
#: ``task.state_changed``.
STATE_EVENTS: dict[BatchTaskState, EventType] = {
    BatchTaskState.STARTED: EventType.TASK_STARTED,
    BatchTaskState.SUCCEEDED: EventType.TASK_SUCCEEDED,
    BatchTaskState.SUCCEEDED_MANUAL_CLEANUP: EventType.TASK_SUCCEEDED,
    BatchTaskState.FAILED: EventType.TASK_FAILED,
}


def _run_key(info: BatchTaskInfo) -> tuple[object, ...]:
    """What identifies one run of a task (for stable event ids)."""
    return info.id, info.start_count, info.last_started


def _event(
    kind: EventType,
    info: BatchTaskInfo,
    now: datetime,
    *,
    key: tuple[object, ...] = (),
    previous: dict[str, object] | None = None,
    eta: datetime | None = None,
    message: str | None = None,
    first_seen: bool = False,
) -> Event:
    return Event(
        id=event_id(kind.value, *_run_key(info), *key),
        type=kind,
        time=now,
        task=TaskSummary.of(info),
        previous=MappingProxyType(previous or {}),
        eta=eta,
        message=message,
        first_seen=first_seen,
        reason=KINDS[kind].reason,
    )


def _changes(old: BatchTaskInfo, new: BatchTaskInfo) -> dict[str, object]:
    """The changed fields, with their old values."""
    pairs: tuple[tuple[str, object, object], ...] = (
        ("state", state_identity(old), state_identity(new)),
        ("progress", old.progress_percent, new.progress_percent),
        ("progress_description", old.progress_description, new.progress_description),
        ("start_count", old.start_count, new.start_count),
        ("last_started", old.last_started, new.last_started),
        ("result", old.result, new.result),
        ("response", old.response, new.response),
        ("name", old.name, new.name),
        ("description", old.description, new.description),
    )
    return {name: before for name, before, after in pairs if before != after}


def _step(percent: int | None, rules: Rules) -> int | None:
    if percent is None:
        return None
    return min(max(percent, 0), 100) // rules.progress_step


def _progress_due(
    previous: TaskMemory, current: BatchTaskInfo, now: datetime, rules: Rules
) -> bool:
    crossed = _step(previous.announced_progress, rules) != _step(current.progress_percent, rules)
    described = previous.announced_description != current.progress_description
    if not (crossed or described):
        return False
    last = previous.last_progress_event
    return last is None or now - last >= rules.progress_min_interval


def ran_again(old: BatchTaskInfo, new: BatchTaskInfo) -> bool:
    """Whether the task was started again since ``old`` (StartCount or LastStarted moved)."""
    if old.start_count is not None and new.start_count is not None:
        if new.start_count > old.start_count and old.start_count > 0:
            return True
        if new.start_count != old.start_count:
            return False
    return (
        old.last_started is not None
        and new.last_started is not None
        and new.last_started > old.last_started
    )


def state_identity(info: BatchTaskInfo) -> object:
    """What makes two states the same: the interpreted state, or the raw value if unknown.

    ``"Started"`` and ``3`` are the same state; ``"Paused"`` and ``"Halted"``
    are both Unknown, yet a change between them is still a change.
    """
    return info.state_raw if info.state is BatchTaskState.UNKNOWN else info.state


def _has_moved(old: BatchTaskInfo, new: BatchTaskInfo) -> bool:
    """Whether state, progress or its description changed, or the task ran again."""
    return (
        state_identity(old) != state_identity(new)
        or old.progress_percent != new.progress_percent
        or old.progress_description != new.progress_description
        or ran_again(old, new)
    )


def _stall_due(memory: TaskMemory, info: BatchTaskInfo, now: datetime, rules: Rules) -> bool:
    """Active (as ``info`` says), not stalled yet, and nothing moved for ``stall_after``."""
    return (
        not memory.stalled
        and info.state.is_active
        and now - memory.last_change >= rules.stall_after
    )


def time_may_tell(memory: TaskMemory, now: datetime, rules: Rules) -> bool:
    """Whether observing the task unchanged at ``now`` could say anything.

    Only two things change with time alone: the stall clock, and a progress
    announcement held back by its rate limit.
    """
    if memory.gone:
        return False
    info = memory.info
    held_back = (
        memory.announced_progress != info.progress_percent
        or memory.announced_description != info.progress_description
    )
    return held_back or _stall_due(memory, info, now, rules)


def detect(
    previous: TaskMemory | None,
    current: BatchTaskInfo,
    now: datetime,
    rules: Rules,
) -> Detection:
    """The events between ``previous`` and ``current`` observed at ``now``, and the next memory."""
    if previous is None or previous.gone:
        history = add_sample((), current.progress_percent, now)
        events = _first_sight(current, now, rules)
        return Detection(events, _first_memory(current, now, history))
    old = previous.info
    again = ran_again(old, current)
    history = add_sample(() if again else previous.history, current.progress_percent, now)
    events = _transitions(previous, current, now, rules, again=again, history=history)
    return Detection(events, _remember(previous, current, now, events, history))


def detect_404(previous: TaskMemory | None, now: datetime) -> Detection | None:
    """The API answered 404 at ``now``: ``task.gone`` for an unfinished task, ``task.removed``
    for a finished one (rule 2); ``None`` for a task never seen or already gone."""
    if previous is None or previous.gone:
        return None
    last = previous.info
    gone = replace(previous, gone=True, gone_since=now, stalled=False)
    if last.state.is_terminal:
        kind, message = (
            EventType.TASK_REMOVED,
            "deleted after it finished (SuperOffice removes completed tasks)",
        )
    else:
        kind, message = (
            EventType.TASK_GONE,
            "the API answers 404: the task was deleted before it finished",
        )
    return Detection([_event(kind, last, now, message=message)], gone)


def _transitions(
    previous: TaskMemory,
    current: BatchTaskInfo,
    now: datetime,
    rules: Rules,
    *,
    again: bool,
    history: tuple[tuple[datetime, int], ...],
) -> list[Event]:
    """Rules 3 to 6: a known task observed again."""
    old = previous.info
    changes = _changes(old, current)
    eta = estimate_eta(history, current, now)
    events: list[Event] = []
    state_key = (state_identity(current),)

    if again:
        events.append(_event(EventType.TASK_RESTARTED, current, now, previous=changes, eta=eta))
        if current.state in STATE_EVENTS:
            kind = STATE_EVENTS[current.state]
            events.append(_event(kind, current, now, key=state_key, previous=changes, eta=eta))
    elif state_identity(old) != state_identity(current):
        kind = STATE_EVENTS.get(current.state, EventType.TASK_STATE_CHANGED)
        events.append(_event(kind, current, now, key=state_key, previous=changes, eta=eta))

    if (
        not events
        and not current.state.is_terminal
        and _progress_due(previous, current, now, rules)
    ):
        progress_changes: dict[str, object] = {
            "progress": previous.announced_progress,
            "progress_description": previous.announced_description,
        }
        events.append(
            _event(
                EventType.TASK_PROGRESS,
                current,
                now,
                key=(current.progress_percent, current.progress_description),
                previous=progress_changes,
                eta=eta,
            )
        )

    moved = _has_moved(old, current)
    if previous.stalled and moved and not current.state.is_terminal:
        stalled_for = now - previous.last_change
        events.append(
            _event(
                EventType.TASK_RESUMED,
                current,
                now,
                key=(previous.last_change.isoformat(),),
                previous=changes,
                eta=eta,
                message=f"moving again after {_human(stalled_for.total_seconds())} without change",
            )
        )
    elif not moved and _stall_due(previous, current, now, rules):
        idle = (now - previous.last_change).total_seconds()
        events.append(
            _event(
                EventType.TASK_STALLED,
                current,
                now,
                key=(previous.last_change.isoformat(),),
                message=f"no change for {_human(idle)} (state {current.state.value}, "
                f"progress {current.progress_percent}%)",
            )
        )
    return events


def _first_memory(
    info: BatchTaskInfo, now: datetime, history: tuple[tuple[datetime, int], ...]
) -> TaskMemory:
    """The memory of a task seen for the first time (or again after a 404)."""
    return TaskMemory(
        info=info,
        first_seen=now,
        last_change=now,
        last_seen=now,
        announced_progress=info.progress_percent,
        announced_description=info.progress_description,
        history=history,
        terminal_since=now if info.state.is_terminal else None,
    )


def _remember(
    previous: TaskMemory,
    info: BatchTaskInfo,
    now: datetime,
    events: list[Event],
    history: tuple[tuple[datetime, int], ...],
) -> TaskMemory:
    """The memory after ``info`` was observed at ``now`` and ``events`` emitted."""
    types = {e.type for e in events}
    moved = _has_moved(previous.info, info)
    announce = bool(types - {EventType.TASK_STALLED, EventType.TASK_RESUMED})
    stalled = (previous.stalled or EventType.TASK_STALLED in types) and not (
        moved or info.state.is_terminal
    )
    # A run that ended again (a rerun seen only once finished) ended now, not with the last one.
    kept = info.state.is_terminal and not ran_again(previous.info, info)
    terminal_since = previous.terminal_since if kept else None
    if info.state.is_terminal and terminal_since is None:
        terminal_since = now
    return replace(
        previous,
        info=info,
        last_change=now if moved else previous.last_change,
        last_seen=now,
        stalled=stalled,
        announced_progress=info.progress_percent if announce else previous.announced_progress,
        announced_description=(
            info.progress_description if announce else previous.announced_description
        ),
        last_progress_event=(
            now if EventType.TASK_PROGRESS in types else previous.last_progress_event
        ),
        history=history,
        terminal_since=terminal_since,
    )


def _first_sight(current: BatchTaskInfo, now: datetime, rules: Rules) -> list[Event]:
    """``task.discovered``, and the state's own event if the run is recent (rule 1)."""
    eta = estimate_eta(add_sample((), current.progress_percent, now), current, now)
    events = [_event(EventType.TASK_DISCOVERED, current, now, eta=eta)]
    kind = STATE_EVENTS.get(current.state)
    began = current.last_started or current.created
    if kind is not None and (began is None or now - began <= rules.forget_after):
        key = (state_identity(current),)
        events.append(_event(kind, current, now, key=key, eta=eta, first_seen=True))
    return events


def condition(memory: TaskMemory) -> EventType | None:
    """The condition a task is in: failed, stalled, gone while active, or none.

    A task deleted after it finished (``removed``) is in none: that is
    SuperOffice's clean-up.
    """
    if memory.gone:
        return None if memory.removed else EventType.TASK_GONE
    if memory.info.state is BatchTaskState.FAILED:
        return EventType.TASK_FAILED
    if memory.stalled:
        return EventType.TASK_STALLED
    return None


def expired(memory: TaskMemory, now: datetime, rules: Rules) -> bool:
    """Whether a task has been finished or gone for ``forget_after``: time to forget it."""
    ended = memory.ended
    return ended is not None and now - ended >= rules.forget_after


#: Why a task is forgotten, said in the ``task.expired`` that ends its condition.
FORGOTTEN_AFTER = "forgotten: it ended longer ago than forget_after"
UNWATCHED = "forgotten: it is no longer watched"


def expire(memory: TaskMemory, now: datetime, why: str = FORGOTTEN_AFTER) -> list[Event]:
    """The events of forgetting a task: ``task.expired`` if a condition still fires."""
    if condition(memory) is None:
        return []
    info = memory.info
    ended = memory.ended
    return [
        _event(
            EventType.TASK_EXPIRED,
            info,
            now,
            key=(ended.isoformat() if ended else None,),
            message=why,
        )
    ]


def _human(seconds: float) -> str:
    """``3725`` → ``1h2m``: short enough for a chat line."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"
