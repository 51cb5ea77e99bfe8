"""Acknowledgements: a person says "I have this one", for one condition of one task.

Pure: whether an acknowledgement is accepted, whether it still holds, and the
events it causes.  An acknowledgement names the condition it was given for by
a key (:func:`condition_key`: the condition's type, the task's run and when the
condition began), so it lapses by itself when that condition ends, whatever
ends it (a rerun, success, removal, expiry, a restart that missed it): the
task's current key no longer matches.  A new failure has a new key and needs a
new acknowledgement.
"""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from monitor.tracking.detect import condition
from monitor.tracking.events import KINDS, Event, EventType, TaskSummary, event_id
from monitor.tracking.memory import Rules, TaskMemory

__all__ = [
    "BY_MAX",
    "COMMENT_MAX",
    "Ack",
    "AckRefusedError",
    "Condition",
    "Refusal",
    "accept",
    "acknowledged_event",
    "condition_key",
    "condition_since",
    "holds",
    "open_condition",
    "text_problem",
    "withdrawn_event",
]

#: Characters a name (``by``) may have; a comment may have more.
BY_MAX = 100
COMMENT_MAX = 1000


@dataclass(frozen=True, slots=True)
class Ack:
    """Who took which condition of a task, when, and what they said."""

    task_id: int
    #: The :func:`condition_key` of the condition acknowledged.
    condition: str
    by: str
    comment: str | None
    at: datetime

    def to_dict(self) -> dict[str, object]:
        """The acknowledgement as the HTTP API shows it."""
        return {"by": self.by, "comment": self.comment, "at": self.at.isoformat()}


class Refusal(enum.Enum):
    """Why an acknowledgement is not accepted."""

    #: batchmon does not track the task.
    UNKNOWN_TASK = "unknown task"
    #: The task is neither failed, stalled nor gone: there is nothing to take.
    NOT_FIRING = "nothing firing"


class AckRefusedError(Exception):
    """Nothing to acknowledge: the task is unknown, or nothing of it fires."""

    def __init__(self, task_id: int, refusal: Refusal) -> None:
        what = {
            Refusal.UNKNOWN_TASK: f"task {task_id} is not tracked",
            Refusal.NOT_FIRING: f"task {task_id} is not failed, stalled or gone: "
            "there is nothing to acknowledge",
        }[refusal]
        super().__init__(what)
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class Condition:
    """A firing condition with what escalation and acknowledgement need of it."""

    #: The condition as :meth:`~monitor.tracking.tracker.Tracker.firing` gives it.
    event: Event
    key: str
    #: When it began to fire (a stall: when it was due, ``stall_after`` after the last change).
    since: datetime


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "-"


def condition_since(memory: TaskMemory, rules: Rules) -> datetime | None:
    """When the task's current condition began, ``None`` without one."""
    kind = condition(memory)
    if kind is EventType.TASK_GONE:
        return memory.gone_since or memory.last_seen
    if kind is EventType.TASK_FAILED:
        return memory.terminal_since or memory.last_change
    if kind is EventType.TASK_STALLED:
        return memory.last_change + rules.stall_after
    return None


def condition_key(memory: TaskMemory) -> str | None:
    """What identifies the task's current condition (``None`` without one).

    The type, the run (StartCount, LastStarted) and when it began: a stall that
    ends and comes back, or a task that fails again, has another key.
    """
    kind = condition(memory)
    if kind is None:
        return None
    began = {
        EventType.TASK_GONE: memory.gone_since,
        EventType.TASK_FAILED: memory.terminal_since,
        EventType.TASK_STALLED: memory.last_change,
    }[kind]
    info = memory.info
    return "|".join(
        (kind.value, str(info.id), str(info.start_count), _iso(info.last_started), _iso(began))
    )


def open_condition(event: Event, memory: TaskMemory, rules: Rules) -> Condition | None:
    """``event`` (one of :meth:`Tracker.firing`'s) with its key and start; ``None`` if the
    memory has no condition."""
    key, since = condition_key(memory), condition_since(memory, rules)
    if key is None or since is None:
        return None
    return Condition(event, key, since)


def holds(ack: Ack, memory: TaskMemory | None) -> bool:
    """Whether the acknowledgement still holds: its condition is the one firing now."""
    return memory is not None and condition_key(memory) == ack.condition


def text_problem(text: str, limit: int) -> str | None:
    """What is wrong with a name or comment given by a person, ``None`` if nothing.

    Line breaks and tabs are allowed; other control characters (escape
    sequences in a terminal, a NUL) are not.
    """
    if len(text) > limit:
        return f"at most {limit} characters, got {len(text)}"
    if any(c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return "control characters are not allowed"
    return None


def accept(
    memory: TaskMemory | None, held: Ack | None, by: str, comment: str | None, now: datetime
) -> Ack | Refusal:
    """The acknowledgement ``by`` gives now, or why it is refused.

    The same person again keeps the original time (a comment given replaces
    the old one); someone else takes it over from now.
    """
    if memory is None:
        return Refusal.UNKNOWN_TASK
    key = condition_key(memory)
    if key is None:
        return Refusal.NOT_FIRING
    if held is not None and held.condition == key and held.by == by:
        return Ack(held.task_id, key, by, comment if comment is not None else held.comment, held.at)
    return Ack(memory.info.id, key, by, comment, now)


def _said(ack: Ack) -> str:
    return f"Acknowledged by {ack.by}" + (f": {ack.comment}" if ack.comment else "")


def acknowledged_event(memory: TaskMemory, ack: Ack) -> Event:
    """``task.acknowledged``: ends the condition's alert, says who took it."""
    kind = EventType.TASK_ACKNOWLEDGED
    return Event(
        id=event_id(kind.value, ack.task_id, ack.condition, ack.by, ack.at.isoformat()),
        type=kind,
        time=ack.at,
        task=TaskSummary.of(memory.info),
        message=_said(ack),
        reason=KINDS[kind].reason,
    )


def withdrawn_event(memory: TaskMemory, ack: Ack, by: str | None, now: datetime) -> Event | None:
    """The condition announced again when its acknowledgement is taken back (it fires again,
    reminders and escalation resume); ``None`` if the acknowledgement had lapsed."""
    kind = condition(memory)
    if kind is None or not holds(ack, memory):
        return None
    who = f" by {by}" if by else ""
    return Event(
        id=event_id(kind.value, "unacknowledged", ack.task_id, ack.condition, ack.at.isoformat()),
        type=kind,
        time=now,
        task=TaskSummary.of(memory.info),
        message=f"{_said(ack)}; taken back{who}: nobody has it now",
    )
