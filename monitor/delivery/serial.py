"""Task memories and events as the JSON text the store keeps (any backend)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.events import Event
from monitor.tracking.maintenance import Hold, Ledger
from monitor.tracking.memory import TaskMemory

__all__ = [
    "event_from_json",
    "event_to_json",
    "hold_from_json",
    "hold_to_json",
    "memory_from_json",
    "memory_to_json",
]


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


def hold_to_json(hold: Hold) -> str:
    """Serialise a maintenance's state: the one under way, and the conditions held back."""
    ledger = hold.ledger
    return json.dumps(
        {
            "ledger": None
            if ledger is None
            else {
                "started": ledger.started.isoformat(),
                "names": list(ledger.names),
                "failed": [[task_id, name] for task_id, name in ledger.failed.items()],
                "stalled": [[task_id, name] for task_id, name in ledger.stalled.items()],
                "api_down": ledger.api_down,
                "announced": ledger.announced,
                "until": _iso(ledger.until),
            },
            "tenant_down": hold.tenant_down,
            "unannounced": [event.to_dict() for event in hold.unannounced.values()],
        }
    )


def hold_from_json(text: str) -> Hold:
    """The inverse of :func:`hold_to_json`."""
    data: dict[str, Any] = json.loads(text)
    kept = data["ledger"]
    ledger = (
        None
        if kept is None
        else Ledger(
            started=datetime.fromisoformat(kept["started"]),
            names=tuple(kept["names"]),
            failed=MappingProxyType({int(i): name for i, name in kept["failed"]}),
            stalled=MappingProxyType({int(i): name for i, name in kept["stalled"]}),
            api_down=bool(kept["api_down"]),
            announced=bool(kept["announced"]),
            until=_date(kept["until"]),
        )
    )
    events = [Event.from_dict(event) for event in data["unannounced"]]
    return Hold(
        ledger=ledger,
        tenant_down=bool(data["tenant_down"]),
        unannounced=MappingProxyType({(e.type, e.task_id): e for e in events}),
    )
