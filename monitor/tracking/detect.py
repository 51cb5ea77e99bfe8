"""Transition detection: from two observations of a task to the events between them.

Theory of operation
-------------------
:func:`detect` compares what batchmon remembers about a task (``previous``,
a :class:`~monitor.tracking.memory.TaskMemory`, or ``None`` if it never saw
it) with a new snapshot (``current``, or ``None`` when the API answered 404)
at the time ``now``.  It has no I/O, no clock and no logging, so it is tested
with tables of (previous, current, now) → events.

Rules, in the order they are applied:

1. No memory: ``task.discovered``, whatever the state.  A 404: ``task.gone``
   (once).
2. The task ran again (StartCount grew from ≥ 1, or LastStarted moved):
   ``task.restarted``; if the new run already ended, its terminal event too.
3. Otherwise a change of state emits the event :data:`STATE_EVENTS` names for
   the new state, ``task.state_changed`` for every other one.
4. No state event this round, not terminal, and the progress crossed a step
   of ``progress_step`` or its description changed: ``task.progress``, at
   most once per ``progress_min_interval`` (a suppressed one fires later).
5. Stalled before and anything moved (not into a terminal state):
   ``task.resumed``.  Not stalled, active, and nothing moved for
   ``stall_after``: ``task.stalled``.

Everything that decides a transition lives in this file.
"""

from __future__ import annotations

from datetime import datetime
from types import MappingProxyType

from monitor.superoffice.models import BatchTaskInfo, BatchTaskState
from monitor.tracking.events import Event, EventType, TaskSummary, event_id
from monitor.tracking.memory import (
    Rules,
    TaskMemory,
    estimate_eta,
    has_moved,
    ran_again,
    state_identity,
)

__all__ = ["STATE_EVENTS", "detect"]

#: The event a change *into* a state emits; any state not listed emits
#: ``task.state_changed``.
STATE_EVENTS: dict[BatchTaskState, EventType] = {
    BatchTaskState.STARTED: EventType.TASK_STARTED,
    BatchTaskState.SUCCEEDED: EventType.TASK_SUCCEEDED,
    BatchTaskState.SUCCEEDED_MANUAL_CLEANUP: EventType.TASK_SUCCEEDED,
    BatchTaskState.FAILED: EventType.TASK_FAILED,
}

#: Terminal states emit their own event even when a restart is reported too.
_TERMINAL_EVENTS = {s: STATE_EVENTS[s] for s in STATE_EVENTS if s.is_terminal}


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
) -> Event:
    return Event(
        id=event_id(kind.value, *_run_key(info), *key),
        type=kind,
        time=now,
        task=TaskSummary.of(info),
        previous=MappingProxyType(previous or {}),
        eta=eta,
        message=message,
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


def detect(
    previous: TaskMemory | None,
    current: BatchTaskInfo | None,
    now: datetime,
    rules: Rules,
) -> list[Event]:
    """The events between ``previous`` and ``current``, observed at ``now``."""
    if current is None:
        if previous is None or previous.gone:
            return []
        last = previous.info
        return [
            _event(
                EventType.TASK_GONE,
                last,
                now,
                message="the API answers 404: the task was deleted",
            )
        ]
    if previous is None or previous.gone:
        return [
            _event(EventType.TASK_DISCOVERED, current, now, eta=estimate_eta(None, current, now))
        ]

    old = previous.info
    changes = _changes(old, current)
    eta = estimate_eta(previous, current, now)
    events: list[Event] = []
    state_key = (state_identity(current),)

    if ran_again(old, current):
        events.append(_event(EventType.TASK_RESTARTED, current, now, previous=changes, eta=eta))
        if current.state in _TERMINAL_EVENTS:
            kind = _TERMINAL_EVENTS[current.state]
            events.append(_event(kind, current, now, key=state_key, previous=changes))
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

    moved = has_moved(old, current)
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
    elif (
        not previous.stalled
        and not moved
        and current.state.is_active
        and now - previous.last_change >= rules.stall_after
    ):
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
