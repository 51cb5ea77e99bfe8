"""Commit batching: one store transaction per round trip, whatever the number of callers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.lowlevel

from monitor.tracking.events import Event
from monitor.tracking.memory import TaskMemory

__all__ = ["SETTLE_SLICE", "Batcher", "Commit", "News"]

#: Makes events and the task memories they came from durable, then delivers them.
Commit = Callable[[Sequence[Event], Sequence[TaskMemory]], Awaitable[None]]
#: Commits waiting behind the one in flight, before callers are held back.
BATCH_LIMIT = 500
#: Tasks decided or settled between two chances for GETs and deliveries to run.
SETTLE_SLICE = 256


class News:
    """What list rows observed since the last commit (committed together, in one transaction)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.memories: list[TaskMemory] = []

    def add(self, events: Sequence[Event], memory: TaskMemory | None) -> None:
        self.events.extend(events)
        if memory is not None:
            self.memories.append(memory)


class Batcher:
    """Hands events and memories to ``commit``: now, or with the batch behind the one in flight.

    While a commit is in flight, what callers hand over waits and goes in the
    next one; past :data:`BATCH_LIMIT` waiting items, callers are held back
    rather than pile up memory.
    """

    def __init__(self, commit: Commit, *, limit: int = BATCH_LIMIT) -> None:
        self._commit = commit
        self._limit = limit
        self._events: list[Event] = []
        self._memories: list[TaskMemory] = []
        self._committing: anyio.Event | None = None

    async def soon(self, events: Sequence[Event], memories: Sequence[TaskMemory]) -> None:
        """Commit now, or with the batch in flight."""
        self._events.extend(events)
        self._memories.extend(memories)
        while self._committing is not None:
            if len(self._memories) + len(self._events) < self._limit:
                return
            # The store is behind: hold this caller back rather than pile up memory.
            await self._committing.wait()
        self._committing = anyio.Event()
        try:
            while self._events or self._memories:
                batch = (self._events, self._memories)
                self._events, self._memories = [], []
                await self._commit(*batch)
        finally:
            done, self._committing = self._committing, None
            done.set()

    async def settled(self) -> None:
        """Wait until everything handed to :meth:`soon` is committed."""
        while self._committing is not None:
            await self._committing.wait()

    async def flush(self, news: News, seen: list[Event] | None = None) -> None:
        """Commit ``news`` (one transaction) and empty it; its events go to ``seen`` too.

        With nothing to commit, it still lets other tasks (GETs, deliveries) run.
        """
        if not (news.events or news.memories):
            await anyio.lowlevel.checkpoint()
            return
        if seen is not None:
            seen.extend(news.events)
        events, memories = news.events, news.memories
        news.events, news.memories = [], []
        await self.soon(events, memories)
