"""Acknowledgements at run time: kept in the store, announced through the outbox.

The rules are :mod:`monitor.tracking.acks`'s; this is the shell that applies
them to the tracker's memory, stores the result and queues the event, in one
commit: a crash leaves both or neither, so the person's retry neither finds an
acknowledgement nobody was told of nor announces one twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import anyio
import structlog

from monitor.tracking.acks import (
    Ack,
    AckRefusedError,
    Condition,
    Refusal,
    accept,
    acknowledged_event,
    holds,
    open_condition,
    withdrawn_event,
)
from monitor.tracking.events import Event
from monitor.tracking.memory import TaskMemory
from monitor.tracking.tracker import Tracker
from monitor.types import DeliveryStore

__all__ = ["Acknowledgements", "Commit"]

log = structlog.get_logger("batchmon.acks")


class Commit(Protocol):
    """:meth:`~monitor.delivery.dispatcher.Dispatcher.commit`: events queued, acknowledgements
    stored (``acks``) and dropped (``unacked``), in one transaction."""

    async def __call__(
        self,
        events: Sequence[Event],
        memories: Sequence[TaskMemory] = (),
        *,
        acks: Sequence[Ack] = (),
        unacked: Sequence[int] = (),
    ) -> None: ...


class Acknowledgements:
    """The acknowledgements that hold, by task; what the HTTP API, reminders and escalation ask."""

    def __init__(
        self,
        tracker: Tracker,
        store: DeliveryStore,
        commit: Commit,
        clock: Callable[[], datetime],
    ) -> None:
        self._tracker = tracker
        self._store = store
        self._commit = commit
        self._clock = clock
        self._held: dict[int, Ack] = {}
        #: One change at a time: two people at once must not both be told they took it.
        self._lock = anyio.Lock()

    async def load(self) -> None:
        """Take the stored acknowledgements; drop those whose condition ended meanwhile."""
        lapsed = []
        for ack in await self._store.acks():
            if holds(ack, self._tracker.tasks.get(ack.task_id)):
                self._held[ack.task_id] = ack
            else:
                lapsed.append(ack.task_id)
        if lapsed:
            await self._store.drop_acks(lapsed)

    def current(self, task_id: int) -> Ack | None:
        """The task's acknowledgement, if it holds (its condition still fires)."""
        ack = self._held.get(task_id)
        if ack is None or not holds(ack, self._tracker.tasks.get(task_id)):
            return None
        return ack

    def unacknowledged(self, firing: Sequence[Event]) -> list[Event]:
        """The conditions of ``firing`` nobody took."""
        return [e for e in firing if e.task_id is None or self.current(e.task_id) is None]

    def firing(self) -> list[Event]:
        """The tracker's firing conditions nobody took (what reminders and alerts repeat)."""
        return self.unacknowledged(self._tracker.firing())

    def open_conditions(self) -> list[Condition]:
        """The firing task conditions nobody took, with their keys and starts (escalation)."""
        found = []
        for event in self.firing():
            memory = self._tracker.tasks.get(event.task_id) if event.task_id else None
            if memory is None:
                continue
            found_condition = open_condition(event, memory, self._tracker.rules)
            if found_condition is not None:
                found.append(found_condition)
        return found

    async def acknowledge(self, task_id: int, by: str, comment: str | None) -> tuple[Ack, bool]:
        """Take the task's condition for ``by``; the acknowledgement and whether it is new
        (or changed hands).  :class:`AckRefusedError` when there is nothing to take."""
        async with self._lock:
            memory = self._tracker.tasks.get(task_id)
            held = self.current(task_id)
            decided = accept(memory, held, by, comment, self._clock())
            if isinstance(decided, Refusal):
                raise AckRefusedError(task_id, decided)
            fresh = held is None or held.by != decided.by
            events = []
            if fresh and memory is not None:
                event = acknowledged_event(memory, decided)
                if not await self._store.known_events([event.id]):
                    events.append(event)
            if decided != held or events:
                await self._announce(events, acks=[decided] if decided != held else [])
                self._held[task_id] = decided
            if fresh:
                log.info("task_acknowledged", task_id=task_id, by=by)
            return decided, fresh

    async def _announce(
        self, events: Sequence[Event], *, acks: Sequence[Ack] = (), unacked: Sequence[int] = ()
    ) -> None:
        """Queue the events for the sinks with the change to the acknowledgements; counted
        with the tracker's (``batchmon_events_total``)."""
        await self._commit(events, acks=acks, unacked=unacked)
        self._tracker.event_counts.update(event.type for event in events)

    async def sweep(self) -> None:
        """Drop the acknowledgements whose condition ended (they no longer hold)."""
        async with self._lock:
            lapsed = [task_id for task_id in self._held if self.current(task_id) is None]
            if lapsed:
                await self._store.drop_acks(lapsed)
                for task_id in lapsed:
                    del self._held[task_id]

    async def run(self, every: float = 60.0) -> None:
        """Sweep lapsed acknowledgements out of the store every ``every`` seconds."""
        while True:
            await anyio.sleep(every)
            await self.sweep()

    async def withdraw(self, task_id: int, by: str | None) -> Ack | None:
        """Take the task's acknowledgement back (the condition fires again); ``None`` if it
        had none that holds."""
        async with self._lock:
            held = self.current(task_id)
            memory = self._tracker.tasks.get(task_id)
            if held is None or memory is None:
                return None
            event = withdrawn_event(memory, held, by, self._clock())
            await self._announce([event] if event is not None else [], unacked=[task_id])
            del self._held[task_id]
            log.info("task_unacknowledged", task_id=task_id, by=by)
            return held
