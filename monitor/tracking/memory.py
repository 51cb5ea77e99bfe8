"""What batchmon remembers about one task between two polls.

:class:`TaskMemory` is the ``previous`` that :func:`monitor.tracking.detect.detect`
compares a new snapshot with: the last snapshot plus the clocks detection
needs (when the task last moved, what progress was last announced, a few
progress samples for the ETA).  Everything here is pure: time comes in as an
argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.superoffice.models import BatchTaskInfo, BatchTaskState
from monitor.tracking.events import Event, EventType

__all__ = [
    "GONE",
    "Rules",
    "TaskMemory",
    "estimate_eta",
    "has_moved",
    "ran_again",
    "remember",
    "state_identity",
    "state_name",
]

#: The state shown for a task the API answers 404 for.
GONE = "Gone"
#: How many progress samples the ETA is computed from.
HISTORY_LENGTH = 16
#: Estimates further out than this are not estimates.
MAX_ETA = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class Rules:
    """The tunables of detection (from ``[poll]`` in the config)."""

    #: Percentage points between two ``task.progress`` events.
    progress_step: int = 10
    #: At most one ``task.progress`` per task in this interval.
    progress_min_interval: timedelta = timedelta(seconds=30)
    #: An active task with no change for this long is stalled.
    stall_after: timedelta = timedelta(minutes=15)
    #: A task finished or gone this long is forgotten; a task first seen finished is
    #: announced with its outcome only if its run began within this long.
    forget_after: timedelta = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class TaskMemory:
    """The last snapshot of a task and the clocks detection runs on."""

    #: The last snapshot the API gave.
    info: BatchTaskInfo
    #: When batchmon first saw the task.
    first_seen: datetime
    #: When state, progress or its description last changed (the stall clock).
    last_change: datetime
    #: When the last snapshot was taken.
    last_seen: datetime
    #: Whether ``task.stalled`` was announced and not yet resolved.
    stalled: bool = False
    #: Progress and description as last announced (for step crossing).
    announced_progress: int | None = None
    announced_description: str | None = None
    #: When the last ``task.progress`` was emitted (for its rate limit).
    last_progress_event: datetime | None = None
    #: (time, percent) samples of the current run, oldest first.
    history: tuple[tuple[datetime, int], ...] = ()
    #: When the task reached a terminal state, if it has.
    terminal_since: datetime | None = None
    #: Whether the API answered 404 for it.
    gone: bool = False
    #: When the API first answered 404 for it.
    gone_since: datetime | None = None

    @property
    def ended(self) -> datetime | None:
        """When the task finished or vanished (``None`` while it is neither)."""
        if self.gone:
            return self.gone_since or self.last_seen
        return self.terminal_since

    @property
    def removed(self) -> bool:
        """Deleted after it finished: SuperOffice's clean-up, not an incident."""
        return self.gone and self.info.state.is_terminal


def state_name(memory: TaskMemory) -> str:
    """The state as shown (metrics, API, status page): the API's, or ``Gone``."""
    return GONE if memory.gone else memory.info.state.value


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


def estimate_eta(memory: TaskMemory | None, info: BatchTaskInfo, now: datetime) -> datetime | None:
    """When the task should reach 100 %, from its progress rate in this run.

    The rate is taken between the oldest and newest samples; when there is
    only one sample, the run's LastStarted at 0 % serves as the first one.
    No estimate for tasks that are not running, or not moving.
    """
    percent = info.progress_percent
    if not info.state.is_active or percent is None or not 0 < percent < 100:
        return None
    samples = _samples(memory, info, now)
    if len(samples) < 2:
        if info.last_started is None or info.last_started >= now:
            return None
        samples = ((info.last_started, 0), *samples)
    (t0, p0), (t1, p1) = samples[0], samples[-1]
    seconds = (t1 - t0).total_seconds()
    if p1 <= p0 or seconds <= 0:
        return None
    remaining = (100 - p1) / ((p1 - p0) / seconds)
    if remaining > MAX_ETA.total_seconds():
        # A run crawling for decades (or a bogus LastStarted) has no useful estimate.
        return None
    return t1 + timedelta(seconds=remaining)


def _samples(
    memory: TaskMemory | None, info: BatchTaskInfo, now: datetime
) -> tuple[tuple[datetime, int], ...]:
    history = () if memory is None or ran_again(memory.info, info) else memory.history
    percent = info.progress_percent
    if percent is None or (history and history[-1][1] == percent):
        return history
    return (*history, (now, percent))[-HISTORY_LENGTH:]


def state_identity(info: BatchTaskInfo) -> object:
    """What makes two states the same: the interpreted state, or the raw value if unknown.

    ``"Started"`` and ``3`` are the same state; ``"Paused"`` and ``"Halted"``
    are both Unknown, yet a change between them is still a change.
    """
    return info.state_raw if info.state is BatchTaskState.UNKNOWN else info.state


def has_moved(old: BatchTaskInfo, new: BatchTaskInfo) -> bool:
    """Whether state, progress or its description changed, or the task ran again."""
    return (
        state_identity(old) != state_identity(new)
        or old.progress_percent != new.progress_percent
        or old.progress_description != new.progress_description
        or ran_again(old, new)
    )


def remember(
    previous: TaskMemory | None,
    info: BatchTaskInfo,
    now: datetime,
    events: Sequence[Event],
) -> TaskMemory:
    """The memory after ``info`` was observed at ``now`` and ``events`` emitted."""
    types = {e.type for e in events}
    if previous is None or previous.gone:
        return TaskMemory(
            info=info,
            first_seen=now,
            last_change=now,
            last_seen=now,
            announced_progress=info.progress_percent,
            announced_description=info.progress_description,
            history=_samples(None, info, now),
            terminal_since=now if info.state.is_terminal else None,
        )
    moved = has_moved(previous.info, info)
    announce = bool(types - {EventType.TASK_STALLED, EventType.TASK_RESUMED})
    stalled = (previous.stalled or EventType.TASK_STALLED in types) and not (
        moved or info.state.is_terminal
    )
    terminal_since = previous.terminal_since if info.state.is_terminal else None
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
        history=_samples(previous, info, now),
        terminal_since=terminal_since,
    )
