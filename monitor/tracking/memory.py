"""What batchmon remembers about one task between two polls: data, no decisions.

:class:`TaskMemory` is the ``previous`` that :func:`monitor.tracking.detect.detect`
compares a new snapshot with, and what it returns as the next one: the last
snapshot plus the clocks detection needs (when the task last moved, what
progress was last announced, the progress samples of the current run for the
ETA).  :class:`Rules` are detection's tunables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.superoffice.models import BatchTaskInfo

__all__ = ["GONE", "Rules", "TaskMemory", "state_name"]

#: The state shown for a task the API answers 404 for.
GONE = "Gone"


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
