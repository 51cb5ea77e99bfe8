"""The events batchmon emits: what happened to a task, or to the monitor.

Events are immutable values.  Their ``id`` is derived from *what* happened
(task, type, run, state, progress), not from when it was noticed, so the same
transition seen twice (a retry, a restart, a second replica) has the same id:
it is the idempotency key receivers deduplicate on.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from monitor.superoffice.models import BatchTaskInfo, BatchTaskState, outcome
from monitor.text import replace_surrogates, without_surrogates

__all__ = [
    "EMITTED",
    "KINDS",
    "EndReason",
    "Event",
    "EventType",
    "Kind",
    "TaskSummary",
    "Tone",
    "event_id",
]


class EventType(enum.StrEnum):
    """Every event type; the dotted names are the public contract."""

    #: First observation of a task.
    TASK_DISCOVERED = "task.discovered"
    #: The state became Started.
    TASK_STARTED = "task.started"
    #: ProgressPercent crossed a step, or ProgressDescription changed.
    TASK_PROGRESS = "task.progress"
    #: The state became Succeeded or SucceededManualCleanup.
    TASK_SUCCEEDED = "task.succeeded"
    #: The state became Failed.
    TASK_FAILED = "task.failed"
    #: Any other state change (New→Aquired, anything→Unknown, …).
    TASK_STATE_CHANGED = "task.state_changed"
    #: StartCount grew or LastStarted moved: the task ran again.
    TASK_RESTARTED = "task.restarted"
    #: Active with no change for ``stall_after``.
    TASK_STALLED = "task.stalled"
    #: A change again after a stall.
    TASK_RESUMED = "task.resumed"
    #: The API answered 404 for a task that was not finished: it vanished.
    TASK_GONE = "task.gone"
    #: The API answered 404 for a finished task: SuperOffice's own clean-up, never an alert.
    TASK_REMOVED = "task.removed"
    #: A task with a condition still firing was forgotten (``[watch] forget_after`` after
    #: it ended, or its watch was removed): the condition ends.
    TASK_EXPIRED = "task.expired"
    #: N consecutive poll cycles failed.
    MONITOR_API_DOWN = "monitor.api_down"
    #: The first successful poll after ``monitor.api_down``.
    MONITOR_API_RECOVERED = "monitor.api_recovered"
    #: Credentials rejected after one renewal attempt.
    MONITOR_AUTH_FAILED = "monitor.auth_failed"
    #: A test message sent by ``batchmon test-sink``; the tracker never emits it.
    BATCHMON_TEST = "batchmon.test"
    #: A person took a failed, stalled or gone task (``POST /api/v1/tasks/{id}/ack``): its
    #: alert, reminders and escalation end, though the task stays as it is.
    TASK_ACKNOWLEDGED = "task.acknowledged"
    #: Someone (a person, or ``[poll] stop_stalled_after``) asked SuperOffice to stop the
    #: task; ``message`` says who and what SuperOffice answered.
    TASK_STOP_REQUESTED = "task.stop_requested"
    #: A maintenance window began (configured, or the tenant state says so).
    MONITOR_MAINTENANCE_STARTED = "monitor.maintenance_started"
    #: A maintenance window ended: what failed, stalled or went down during it.
    MONITOR_MAINTENANCE_ENDED = "monitor.maintenance_ended"
    #: The tenant state says the tenant is not running (Suspended, Deleted, …).
    MONITOR_TENANT_UNAVAILABLE = "monitor.tenant_unavailable"
    #: The tenant runs again after ``monitor.tenant_unavailable``.
    MONITOR_TENANT_AVAILABLE = "monitor.tenant_available"


#: The types the tracker emits: every type but the test message.
EMITTED = tuple(kind for kind in EventType if kind is not EventType.BATCHMON_TEST)


class EndReason(enum.StrEnum):
    """Why a condition (a failed, stalled or vanished task) ended."""

    #: The task ran again.
    RESTARTED = "restarted"
    #: The task succeeded.
    SUCCEEDED = "succeeded"
    #: A stalled task moved again.
    RESUMED = "resumed"
    #: SuperOffice deleted the task after it finished.
    REMOVED = "removed"
    #: batchmon forgot the task: ``forget_after`` after it ended, or its watch was removed.
    EXPIRED = "expired"
    #: A person took it (``task.acknowledged``).
    ACKNOWLEDGED = "acknowledged"


class Tone(enum.StrEnum):
    """How an event should look: each format maps it to its own colours."""

    GOOD = "good"
    BAD = "bad"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Kind:
    """Everything batchmon decides by an event's type alone, in one row per type.

    Rendering, the log sink, Alertmanager, reminders, the outbox and detection
    read these rows, so a new event type is declared here once.
    """

    #: The headline; ``{name}`` is the task's name, ``{state}`` its state and
    #: ``{progress}`` its percentage (or "progressing").
    title: str
    #: The log sink's level.
    level: int
    #: How it looks; ``None``: as the task's state looks (see ``sinks.render``).
    tone: Tone | None = Tone.INFO
    #: The Alertmanager alert it fires: the condition it starts, if any.
    alert: str | None = None
    #: The event types whose conditions it ends (their alerts resolve).
    ends: frozenset[EventType] = frozenset()
    #: Why the conditions it ends ended, as the event carries it.
    reason: EndReason | None = None
    #: Repeated by a sink's ``remind_every`` while the condition lasts.
    reminds: bool = False
    #: A queued copy for the same task and sink is replaced by a newer one.
    coalesces: bool = False


_TASK_CONDITIONS = frozenset({EventType.TASK_FAILED, EventType.TASK_STALLED, EventType.TASK_GONE})

#: One row per event type (checked below: a type without a row fails at import).
KINDS: Mapping[EventType, Kind] = MappingProxyType(
    {
        EventType.TASK_DISCOVERED: Kind("👀 Watching {name} ({state})", logging.INFO, tone=None),
        EventType.TASK_STARTED: Kind("▶ {name} started", logging.INFO),
        EventType.TASK_PROGRESS: Kind("📈 {name} {progress}", logging.INFO, coalesces=True),
        EventType.TASK_SUCCEEDED: Kind(
            "✅ {name} finished",
            logging.INFO,
            tone=Tone.GOOD,
            ends=_TASK_CONDITIONS,
            reason=EndReason.SUCCEEDED,
        ),
        EventType.TASK_FAILED: Kind(
            "❌ {name} failed",
            logging.WARNING,
            tone=Tone.BAD,
            alert="BatchTaskFailed",
            ends=frozenset({EventType.TASK_STALLED}),
            reminds=True,
        ),
        EventType.TASK_STATE_CHANGED: Kind("🔄 {name} is now {state}", logging.INFO, tone=None),
        EventType.TASK_RESTARTED: Kind(
            "🔁 {name} ran again",
            logging.INFO,
            ends=_TASK_CONDITIONS,
            reason=EndReason.RESTARTED,
        ),
        EventType.TASK_STALLED: Kind(
            "⏸ {name} stalled",
            logging.WARNING,
            tone=Tone.WARNING,
            alert="BatchTaskStalled",
            reminds=True,
        ),
        EventType.TASK_RESUMED: Kind(
            "▶ {name} resumed",
            logging.INFO,
            ends=frozenset({EventType.TASK_STALLED}),
            reason=EndReason.RESUMED,
        ),
        EventType.TASK_GONE: Kind(
            "🗑 {name} vanished before it finished",
            logging.WARNING,
            tone=Tone.WARNING,
            alert="BatchTaskGone",
        ),
        EventType.TASK_REMOVED: Kind(
            "🧹 {name} cleaned up after it finished",
            logging.INFO,
            ends=_TASK_CONDITIONS,
            reason=EndReason.REMOVED,
        ),
        EventType.TASK_EXPIRED: Kind(
            "⌛ {name} no longer tracked",
            logging.INFO,
            ends=_TASK_CONDITIONS,
            reason=EndReason.EXPIRED,
        ),
        EventType.MONITOR_API_DOWN: Kind(
            "🔴 SuperOffice API down", logging.ERROR, tone=Tone.BAD, alert="BatchmonApiDown"
        ),
        EventType.MONITOR_API_RECOVERED: Kind(
            "🟢 SuperOffice API recovered",
            logging.INFO,
            tone=Tone.GOOD,
            ends=frozenset({EventType.MONITOR_API_DOWN}),
        ),
        EventType.MONITOR_AUTH_FAILED: Kind(
            "🔑 SuperOffice credentials rejected", logging.ERROR, tone=Tone.BAD
        ),
        # ``batchmon test-sink``'s alert fires once and ends by itself (nothing re-posts it).
        EventType.BATCHMON_TEST: Kind(
            "🧪 Test message from batchmon", logging.INFO, alert="BatchmonTest"
        ),
        # Ends the conditions for the people being alerted (alerts resolve, reminders and
        # escalation stop); the task stays failed, stalled or gone for everything else.
        EventType.TASK_ACKNOWLEDGED: Kind(
            "🙋 {name} acknowledged",
            logging.INFO,
            ends=_TASK_CONDITIONS,
            reason=EndReason.ACKNOWLEDGED,
        ),
        EventType.TASK_STOP_REQUESTED: Kind(
            "⏹ Stop requested for {name}", logging.WARNING, tone=Tone.WARNING
        ),
        EventType.MONITOR_MAINTENANCE_STARTED: Kind("🛠 Maintenance began", logging.INFO),
        EventType.MONITOR_MAINTENANCE_ENDED: Kind("🛠 Maintenance ended", logging.INFO),
        EventType.MONITOR_TENANT_UNAVAILABLE: Kind(
            "⛔ SuperOffice tenant unavailable",
            logging.ERROR,
            tone=Tone.BAD,
            alert="BatchmonTenantUnavailable",
        ),
        EventType.MONITOR_TENANT_AVAILABLE: Kind(
            "🟢 SuperOffice tenant available again",
            logging.INFO,
            tone=Tone.GOOD,
            ends=frozenset({EventType.MONITOR_TENANT_UNAVAILABLE}),
        ),
    }
)
if KINDS.keys() != set(EventType):  # pragma: no cover - fails at import, in every test
    raise AssertionError(f"event types without a row in KINDS: {set(EventType) - KINDS.keys()}")
for _kind in KINDS.values():
    if any(KINDS[ended].alert is None for ended in _kind.ends):  # pragma: no cover
        raise AssertionError(f"{_kind.title!r} ends a type that starts no condition")


_ID_NAMESPACE = uuid.UUID("5d1f2a9e-6c1b-4d7e-9f3a-0b8c7e6d5a41")


def event_id(*parts: object) -> str:
    """A stable id for an event, from the facts that make it unique."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(str(p) for p in parts)))


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """The task as an event carries it: what a reader of the event needs."""

    id: int
    name: str | None
    state: BatchTaskState
    state_raw: str | int | None
    progress: int | None
    progress_description: str | None
    description: str | None
    associate_id: int | None
    context: str | None
    request: str | None
    response: str | None
    result: str | None
    file_name: str | None
    last_started: datetime | None
    created: datetime | None
    start_count: int | None

    @classmethod
    def of(cls, info: BatchTaskInfo) -> TaskSummary:
        """Summarise a parsed BatchTaskInfo."""
        return cls(
            id=info.id,
            name=info.name,
            state=info.state,
            state_raw=info.state_raw,
            progress=info.progress_percent,
            progress_description=info.progress_description,
            description=info.description,
            associate_id=info.associate_id,
            context=info.context,
            request=info.request,
            response=info.response,
            result=info.result,
            file_name=info.file_name,
            last_started=info.last_started,
            created=info.created,
            start_count=info.start_count,
        )

    @property
    def outcome(self) -> str | None:
        """What the task said about how it ended: its Result, else its Response."""
        return outcome(self.result, self.response)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSummary:
        """The inverse of :meth:`to_dict` (the outbox stores events as JSON).

        Lone surrogates in the text become U+FFFD (see :mod:`monitor.text`): rows
        written by earlier versions can hold half an emoji that no sink could encode.
        """
        return cls(
            id=int(data["id"]),
            name=_text(data["name"]),
            state=BatchTaskState(data["state"]),
            state_raw=_text(data["state_raw"]),
            progress=data["progress"],
            progress_description=_text(data["progress_description"]),
            description=_text(data["description"]),
            associate_id=data["associate_id"],
            context=_text(data["context"]),
            request=_text(data["request"]),
            response=_text(data["response"]),
            result=_text(data["result"]),
            file_name=_text(data["file_name"]),
            last_started=_date(data["last_started"]),
            created=_date(data["created"]),
            start_count=data["start_count"],
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (dates as ISO 8601)."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "state_raw": self.state_raw,
            "progress": self.progress,
            "progress_description": self.progress_description,
            "description": self.description,
            "associate_id": self.associate_id,
            "context": self.context,
            "request": self.request,
            "response": self.response,
            "result": self.result,
            "file_name": self.file_name,
            "last_started": _iso(self.last_started),
            "created": _iso(self.created),
            "start_count": self.start_count,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _date(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _text(value: Any) -> Any:
    """A stored string with its lone surrogates replaced; anything else as it is."""
    return replace_surrogates(value) if isinstance(value, str) else value


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, as detected at ``time`` (UTC).

    ``previous`` holds the fields that changed, with their old values.
    ``message`` says in words what happened where the fields alone do not
    (why the API is down, why a task was flagged).  ``first_seen`` marks an
    outcome announced at the task's first sighting (it happened before batchmon
    looked); ``reason`` says why the conditions the event ends ended.
    """

    id: str
    type: EventType
    time: datetime
    task: TaskSummary | None = None
    previous: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    eta: datetime | None = None
    message: str | None = None
    first_seen: bool = False
    reason: EndReason | None = None

    @property
    def task_id(self) -> int | None:
        """The task's id, ``None`` for monitor events."""
        return self.task.id if self.task is not None else None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """The inverse of :meth:`to_dict`; old values in ``previous`` stay in their JSON form.

        Lone surrogates in any text become U+FFFD, as in :meth:`TaskSummary.from_dict`.
        """
        task = data.get("task")
        previous = {
            _text(key): without_surrogates(value)
            for key, value in dict(data.get("previous") or {}).items()
        }
        return cls(
            id=replace_surrogates(str(data["id"])),
            type=EventType(data["type"]),
            time=datetime.fromisoformat(data["time"]),
            task=TaskSummary.from_dict(task) if task is not None else None,
            previous=MappingProxyType(previous),
            eta=_date(data.get("eta")),
            message=_text(data.get("message")),
            first_seen=bool(data.get("first_seen", False)),
            reason=EndReason(data["reason"]) if data.get("reason") else None,
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict: the event's wire form for logs and webhooks."""
        return {
            "id": self.id,
            "type": self.type.value,
            "time": self.time.isoformat(),
            "task": self.task.to_dict() if self.task is not None else None,
            "previous": {k: _jsonable(v) for k, v in self.previous.items()},
            "eta": _iso(self.eta),
            "message": self.message,
            "first_seen": self.first_seen,
            "reason": self.reason.value if self.reason is not None else None,
        }
