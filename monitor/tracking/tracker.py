"""The tracker: the memory of every watched task, advanced one observation at a time.

It owns no I/O and no clock: the poller hands it snapshots (or a 404) with
the time they were taken, and gets back the events to deliver.  The metrics
collector and the HTTP API read its state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.detect import (
    FORGOTTEN_AFTER,
    condition,
    detect,
    detect_404,
    expire,
    expired,
    time_may_tell,
)
from monitor.tracking.eta import estimate_eta
from monitor.tracking.events import Event, EventType, TaskSummary, event_id
from monitor.tracking.memory import Rules, TaskMemory, state_name
from monitor.tracking.samples import ProgressSamples

__all__ = ["Tracker"]


class Tracker:
    """Per-task memory plus the counters the metrics need, and the progress samples of the
    task pages (recorded as memories change, dropped with them)."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._tasks: dict[int, TaskMemory] = {}
        #: Each task's progress over its current run, for the task page's chart.
        self.samples = ProgressSamples()
        #: Events emitted so far, by type.
        self.event_counts: Counter[EventType] = Counter()
        #: State transitions seen so far, by (from, to) state name.
        self.transitions: Counter[tuple[str, str]] = Counter()
        self._changed: set[int] = set()
        #: Ids the reader of :meth:`take_changed` was last told exist: only their forgetting
        #: is news to it, so a tracker nobody reads (no scrapes) keeps no trace of the
        #: tasks it forgot.
        self._told: set[int] = set()
        self._state_counts: Counter[str] = Counter()

    @property
    def tasks(self) -> Mapping[int, TaskMemory]:
        """Every tracked task's memory, by id (read-only view)."""
        return MappingProxyType(self._tasks)

    @property
    def state_counts(self) -> Mapping[str, int]:
        """How many tracked tasks are in each state (as :func:`state_name` says), kept as
        tasks change rather than counted on every scrape."""
        return MappingProxyType(self._state_counts)

    def _put(self, task_id: int, memory: TaskMemory) -> None:
        """Replace a task's memory, keeping the counts and the changed set."""
        old = self._tasks.get(task_id)
        if old is not None:
            self._state_counts[state_name(old)] -= 1
        self._tasks[task_id] = memory
        self._state_counts[state_name(memory)] += 1
        self._changed.add(task_id)
        self.samples.record(memory)

    def take_changed(self) -> set[int]:
        """Ids whose memory was replaced, added or dropped since the last call.

        For one reader that keeps something derived per task (the metrics'
        formatted lines) and wants to redo only what changed.
        """
        changed, self._changed = self._changed, set()
        for task_id in changed:
            if task_id in self._tasks:
                self._told.add(task_id)
            else:
                self._told.discard(task_id)
        return changed

    def observe(self, info: BatchTaskInfo, now: datetime) -> list[Event]:
        """Take a new snapshot of a task; return what happened since the last one."""
        previous = self._tasks.get(info.id)
        events, memory = detect(previous, info, now, self.rules)
        self._put(info.id, memory)
        if previous is not None and not previous.gone and previous.info.state != info.state:
            self.transitions[(previous.info.state.value, info.state.value)] += 1
        self._count(events)
        return events

    def touch(self, task_id: int, now: datetime) -> list[Event]:
        """The task is as last seen: observe it again only if time alone can tell something.

        A poll cycle of thousands of unchanged tasks stays cheap.
        """
        memory = self._tasks.get(task_id)
        if memory is None or not time_may_tell(memory, now, self.rules):
            return []
        return self.observe(memory.info, now)

    def observe_gone(self, task_id: int, now: datetime) -> list[Event]:
        """Record that the API answered 404 for a task."""
        detection = detect_404(self._tasks.get(task_id), now)
        if detection is None:
            return []
        self._put(task_id, detection.memory)
        self._count(detection.events)
        return detection.events

    def eta(self, task_id: int, now: datetime) -> datetime | None:
        """The current completion estimate for a task, if there is one."""
        memory = self._tasks.get(task_id)
        if memory is None or memory.stalled:
            return None
        return estimate_eta(memory.history, memory.info, now)

    def restore(self, memories: Iterable[TaskMemory]) -> None:
        """Start from memories stored by an earlier run (nothing is re-announced)."""
        for memory in memories:
            self._put(memory.info.id, memory)

    def firing(self) -> list[Event]:
        """An event for each task that is failed, stalled or gone (while active) right now.

        Sinks that hold conditions (Alertmanager) rebuild them from these at start-up.
        """
        conditions = []
        for memory in self._tasks.values():
            kind = condition(memory)
            if kind is None:
                continue
            info = memory.info
            conditions.append(
                Event(
                    id=event_id(
                        kind.value, "restored", info.id, info.start_count, memory.last_change
                    ),
                    type=kind,
                    time=memory.last_change,
                    task=TaskSummary.of(info),
                )
            )
        return conditions

    def expire(self, now: datetime) -> tuple[list[Event], list[int]]:
        """Forget the tasks finished or gone for ``forget_after``.

        Returns the events that end their conditions and the forgotten ids.
        """
        ids = [task_id for task_id, m in self._tasks.items() if expired(m, now, self.rules)]
        return self.drop(ids, now, FORGOTTEN_AFTER), ids

    def drop(self, task_ids: Iterable[int], now: datetime, why: str) -> list[Event]:
        """Forget these tasks; returns the ``task.expired`` events ending their conditions.

        ``why`` says in those events why the tasks are forgotten.
        """
        ids = list(task_ids)
        events = [e for i in ids if i in self._tasks for e in expire(self._tasks[i], now, why)]
        self.forget(ids)
        self._count(events)
        return events

    def forget(self, task_ids: Iterable[int]) -> None:
        """Drop tasks (and their samples) without a word: nothing of theirs is announced.

        For what no sink has heard of yet (a reload's unwatched tasks, whose alerts the
        new sinks never raise); :meth:`drop` ends the conditions of the others.
        """
        ids = list(task_ids)
        for task_id in ids:
            memory = self._tasks.pop(task_id, None)
            if memory is None:
                continue
            self._state_counts[state_name(memory)] -= 1
            if task_id in self._told:
                self._changed.add(task_id)
            else:  # the reader never heard of it: nothing to take back
                self._changed.discard(task_id)
        self.samples.forget(ids)

    def _count(self, events: list[Event]) -> None:
        for event in events:
            self.event_counts[event.type] += 1
