"""Task memories and events as the JSON text the store keeps (any backend)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.events import Event
from monitor.tracking.memory import TaskMemory

__all__ = ["event_from_json", "event_to_json", "memory_from_json", "memory_to_json"]


def event_to_json(event: Event) -> str:
    """An event as stored in the outbox and the history."""
    return json.dumps(event.to_dict())


def event_from_json(text: str) -> Event:
    """A stored event as it is given back (lone surrogates replaced)."""
    return Event.from_dict(json.loads(text))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _date(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def memory_to_json(memory: TaskMemory) -> str:
    """Serialise a task's memory (the snapshot in its API spelling)."""
    return json.dumps(
        {
            "info": memory.info.model_dump(mode="json", by_alias=True),
            "first_seen": memory.first_seen.isoformat(),
            "last_change": memory.last_change.isoformat(),
            "last_seen": memory.last_seen.isoformat(),
            "stalled": memory.stalled,
            "announced_progress": memory.announced_progress,
            "announced_description": memory.announced_description,
            "last_progress_event": _iso(memory.last_progress_event),
            "history": [[t.isoformat(), p] for t, p in memory.history],
            "terminal_since": _iso(memory.terminal_since),
            "gone": memory.gone,
            "gone_since": _iso(memory.gone_since),
        }
    )


def memory_from_json(text: str) -> TaskMemory:
    """The inverse of :func:`memory_to_json`."""
    data: dict[str, Any] = json.loads(text)
    return TaskMemory(
        info=BatchTaskInfo.model_validate(data["info"], context={"tz": UTC}),
        first_seen=datetime.fromisoformat(data["first_seen"]),
        last_change=datetime.fromisoformat(data["last_change"]),
        last_seen=datetime.fromisoformat(data["last_seen"]),
        stalled=data["stalled"],
        announced_progress=data["announced_progress"],
        announced_description=data["announced_description"],
        last_progress_event=_date(data["last_progress_event"]),
        history=tuple((datetime.fromisoformat(t), int(p)) for t, p in data["history"]),
        terminal_since=_date(data["terminal_since"]),
        gone=data["gone"],
        gone_since=_date(data.get("gone_since")),
    )
