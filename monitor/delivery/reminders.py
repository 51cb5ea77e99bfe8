"""Reminders: a failed or stalled task said again, every ``remind_every``, while it lasts.

Pure: which reminders are due at ``now`` for which sink.  The n-th reminder of a
condition has a fixed id, so the caller can skip those already recorded and a
restart never repeats one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from monitor.tracking.events import KINDS, Event, EventType, event_id

__all__ = ["REMINDED", "due_reminders"]

#: Conditions worth a reminder while they last (``reminds`` in the event types' table).
REMINDED = frozenset(kind for kind, row in KINDS.items() if row.reminds)


def _hours(seconds: float) -> str:
    """``5400`` → ``1h30m``: how long a condition has lasted, for a chat line."""
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m"


def due_reminders(
    subscribers: Sequence[tuple[str, float | None, Callable[[Event], bool]]],
    conditions: Sequence[Event],
    now: datetime,
    *,
    starts: Mapping[str, datetime] | None = None,
) -> list[tuple[str, Event]]:
    """The reminder due now for each (sink, ``remind_every``, wants) and each condition.

    ``conditions`` are the current ones (one event per failed, stalled or gone
    task); the n-th reminder is due once the condition lasted n periods, counted
    from its time or, when ``starts`` has its id, from then (its escalation).
    """
    due: list[tuple[str, Event]] = []
    for sink, every, wants in subscribers:
        if not every:
            continue
        for condition in conditions:
            if condition.type not in REMINDED or not wants(condition):
                continue
            lasting = (now - condition.time).total_seconds()
            start = (starts or {}).get(condition.id, condition.time)
            count = int((now - start).total_seconds() // every)
            if count < 1:
                continue
            state = "failed" if condition.type is EventType.TASK_FAILED else "stalled"
            reminder = replace(
                condition,
                id=event_id("reminder", sink, condition.id, count),
                time=now,
                message=f"Reminder {count}: still {state} after {_hours(lasting)}",
            )
            due.append((sink, reminder))
    return due
