"""Silences: for a while, some tasks' events go to the log and the metrics only.

Pure: what a silence covers, which silence mutes an event now, and what to say
when silences end.  An on-call admin who silenced a failing export for two hours
expects to hear about it again when the two hours are up if it still fails, not
at the next reminder: so when a silence ends (its time is up, or someone ended
it), every condition it covered that still fires, and that no other silence
covers, is announced once more (:func:`end_announcements`).

``all`` silences every event, the monitor's own (``monitor.api_down``) included:
ad-hoc maintenance.  ``ids`` and ``names`` cover the events of those tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from monitor.tracking.events import Event, EventType, event_id

__all__ = ["Silence", "end_announcements", "muting", "split_ended"]


#: How a condition that outlived a silence is said.
_STILL = {
    EventType.TASK_FAILED: "failed",
    EventType.TASK_STALLED: "stalled",
    EventType.TASK_GONE: "vanished",
    EventType.MONITOR_API_DOWN: "API down",
}


@dataclass(frozen=True, slots=True)
class Silence:
    """Who silenced what, why, and until when (UTC)."""

    id: str
    reason: str
    created: datetime
    ends: datetime
    #: Task ids it covers.
    ids: tuple[int, ...] = ()
    #: Task-name globs it covers (case-sensitive, as the sinks' ``names``).
    names: tuple[str, ...] = ()
    #: Every event, the monitor's own included.
    all: bool = False
    by: str | None = None

    def covers(self, task_id: int | None, name: str | None) -> bool:
        """Whether an event about this task (``None``: a monitor event) is silenced by it."""
        if self.all:
            return True
        if task_id is None:
            return False
        return task_id in self.ids or any(fnmatchcase(name or "", glob) for glob in self.names)

    def covers_event(self, event: Event) -> bool:
        """:meth:`covers` for an event."""
        task = event.task
        return self.covers(task.id if task else None, task.name if task else None)

    def active(self, now: datetime) -> bool:
        """Whether it silences anything at ``now``."""
        return now < self.ends

    @property
    def scope(self) -> str:
        """What it covers, in a few words."""
        if self.all:
            return "everything"
        parts = [f"task {i}" for i in self.ids] + [f"tasks named {g}" for g in self.names]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the API's answer and the stored row."""
        selector: dict[str, Any] = (
            {"all": True}
            if self.all
            else {"names": list(self.names)}
            if self.names
            else {"ids": list(self.ids)}
        )
        return {
            "id": self.id,
            "reason": self.reason,
            "by": self.by,
            "created": self.created.isoformat(),
            "ends": self.ends.isoformat(),
            **selector,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Silence:
        """The inverse of :meth:`to_dict`."""
        return cls(
            id=str(data["id"]),
            reason=str(data["reason"]),
            by=data.get("by"),
            created=datetime.fromisoformat(data["created"]),
            ends=datetime.fromisoformat(data["ends"]),
            ids=tuple(int(i) for i in data.get("ids", ())),
            names=tuple(str(n) for n in data.get("names", ())),
            all=bool(data.get("all", False)),
        )


def muting(event: Event, silences: Iterable[Silence], now: datetime) -> Silence | None:
    """The silence that keeps ``event`` from every sink but the log at ``now``, if any."""
    return next((s for s in silences if s.active(now) and s.covers_event(event)), None)


def split_ended(silences: Iterable[Silence], now: datetime) -> tuple[list[Silence], list[Silence]]:
    """(still active, ended) at ``now``."""
    active: list[Silence] = []
    ended: list[Silence] = []
    for silence in silences:
        (active if silence.active(now) else ended).append(silence)
    return active, ended


def end_announcements(
    ended: Sequence[Silence], active: Sequence[Silence], firing: Sequence[Event], now: datetime
) -> list[Event]:
    """What to announce as ``ended`` silences end: each condition still firing that one of
    them covered and no ``active`` one covers, once, saying which silence ended."""
    announced = []
    for condition in firing:
        silence = next((s for s in ended if s.covers_event(condition)), None)
        if silence is None or muting(condition, active, now) is not None:
            continue
        still = _STILL.get(condition.type, condition.type.value)
        announced.append(
            replace(
                condition,
                id=event_id("silence-ended", silence.id, condition.id),
                time=now,
                message=f"Silence {silence.id} ended ({silence.reason}): still {still}",
            )
        )
    return announced
