"""Escalation: a sink with ``after`` hears of a condition only if nobody took it in time.

Such a sink gets a failed, stalled or gone task once the condition has fired,
unacknowledged, for ``after`` (:func:`due_escalations`, pure, time as an
argument).  Which sink was told of which condition is stored with the
escalation's delivery (:class:`~monitor.delivery.outbox.Told`, one per sink and
task, dropped when the condition ends or the task is forgotten) and loaded
before the first commit: a restart neither loses a due escalation (the
condition's start is in the stored task memory) nor repeats one, however long
the condition has lasted.

What else such a sink hears (:class:`Escalations`): the events that end a
condition it was told of (the task succeeded, ran again, was acknowledged, …),
so that it learns the end of what it was alerted to; of the other task events,
nothing.  Monitor events (the API is down) reach it as any sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.delivery.outbox import Told
from monitor.tracking.acks import Condition
from monitor.tracking.events import KINDS, Event, event_id

__all__ = ["Escalations", "due_escalations", "escalation_id"]


def _duration(seconds: float) -> str:
    """``5400`` → ``1h30m``."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if not secs else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def escalation_id(sink: str, condition: Condition) -> str:
    """The id of a condition's escalation to a sink: one per sink and condition."""
    return event_id("escalation", sink, condition.key)


def due_escalations(
    sinks: Sequence[tuple[str, float, Callable[[Event], bool]]],
    conditions: Iterable[Condition],
    now: datetime,
) -> list[tuple[str, Event, Condition]]:
    """The escalations due at ``now`` for each (sink, ``after`` in seconds, wants).

    ``conditions`` are the unacknowledged ones firing now.  Each escalation is
    the condition's event again, saying how long nobody took it.
    """
    due: list[tuple[str, Event, Condition]] = []
    listed = list(conditions)
    for sink, after, wants in sinks:
        for condition in listed:
            if not wants(condition.event) or now - condition.since < timedelta(seconds=after):
                continue
            event = replace(
                condition.event,
                id=escalation_id(sink, condition),
                time=now,
                message=f"Escalated: nobody acknowledged it for {_duration(after)}",
            )
            due.append((sink, event, condition))
    return due


class Escalations:
    """Which conditions each escalation sink was told of, and when; the routing that follows.

    A copy of the store's records (:meth:`load` at start, before the first
    commit); the dispatcher writes each change with the commit that causes it.
    """

    def __init__(self) -> None:
        #: (sink, task id) → the key of the condition it was told of, and when that was due.
        self._told: dict[tuple[str, int], tuple[str, datetime]] = {}
        #: Ended by :meth:`passes` since the last :meth:`end`.
        self._ended: list[tuple[str, int]] = []

    def load(self, records: Iterable[Told]) -> None:
        """What the store says the sinks were told of (at start)."""
        for record in records:
            due = datetime.fromtimestamp(record.due, UTC)
            self._told[record.sink, record.task_id] = (record.condition, due)

    def told(self, sink: str, condition: Condition) -> bool:
        """Whether the sink was told of this condition already."""
        told = self._told.get((sink, condition.event.task_id or 0))
        return told is not None and told[0] == condition.key

    def mark(self, sink: str, condition: Condition, at: datetime) -> Told | None:
        """The sink is told of a condition (its escalation due at ``at``): the record to store,
        ``None`` if it was told already."""
        task_id = condition.event.task_id
        if task_id is None or self.told(sink, condition):
            return None
        self._told[sink, task_id] = (condition.key, at)
        return Told(sink, task_id, condition.key, at.timestamp())

    def passes(self, sink: str, event: Event) -> bool:
        """Whether an event the poller (or a person) caused goes to an escalation sink.

        Conditions come only through :func:`due_escalations`; an event that ends
        one the sink was told of goes, and ends what it was told; monitor events go.
        """
        task_id = event.task_id
        if task_id is None:
            return True
        if KINDS[event.type].ends and (sink, task_id) in self._told:
            del self._told[sink, task_id]
            self._ended.append((sink, task_id))
            return True
        return False

    def end(self, events: Iterable[Event]) -> list[tuple[str, int]]:
        """Forget the conditions these events end, whichever sink was told of them (routed
        there or not): the (sink, task id) records to drop, with those :meth:`passes` ended."""
        ended = {e.task_id for e in events if e.task_id is not None and KINDS[e.type].ends}
        gone = [key for key in self._told if key[1] in ended]
        for key in gone:
            del self._told[key]
        gone += self._ended
        self._ended = []
        return gone

    def reminding(self, sink: str, conditions: Iterable[Condition]) -> dict[str, datetime]:
        """The conditions the sink was told of, by event id: when their escalation was due
        (their reminders count from then)."""
        found = {}
        for condition in conditions:
            told = self._told.get((sink, condition.event.task_id or 0))
            if told is not None and told[0] == condition.key:
                found[condition.event.id] = told[1]
        return found
