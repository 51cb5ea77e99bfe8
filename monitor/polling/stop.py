"""Stopping a task: read it, check it may be stopped, call ``StopBatchJob``, record who asked.

The shell around :mod:`monitor.tracking.stopping`'s decisions.  A stop is asked
by a person (``POST /api/v1/tasks/{id}/stop``, ``batchmon stop``) or by
``[poll] stop_stalled_after`` (:class:`AutoStopper`); either way the task is
read first, since whether it may be stopped is its current
``CancellationBehaviour``, and what SuperOffice answered becomes a
``task.stop_requested`` event for the sinks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

import anyio
import structlog

from monitor.config import SuperOfficeConfig
from monitor.superoffice.client import SuperOfficeClient, open_client
from monitor.superoffice.errors import ApiError, NotFound
from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.events import Event, EventType, TaskSummary, event_id
from monitor.tracking.memory import TaskMemory
from monitor.tracking.stopping import (
    Decision,
    Verdict,
    auto_stop_id,
    due_auto_stops,
    may_stop,
    stop_answer,
)

__all__ = [
    "AutoStopper",
    "StopFailedError",
    "StopOutcome",
    "TaskStopper",
    "request_stop",
    "stop_directly",
]

log = structlog.get_logger("batchmon.stop")

Commit = Callable[[Sequence[Event]], Awaitable[None]]


class StopFailedError(Exception):
    """SuperOffice could not be asked: ``not_found`` when it has no such task."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True, slots=True)
class StopOutcome:
    """What became of a request to stop a task."""

    info: BatchTaskInfo
    decision: Decision
    #: SuperOffice's answer; ``None`` when it was not asked (the decision refused).
    stopped: bool | None = None
    #: The ``task.stop_requested`` event, when SuperOffice was asked.
    event: Event | None = None

    def to_dict(self) -> dict[str, object]:
        """The HTTP API's answer."""
        return {
            "task_id": self.info.id,
            "asked": self.stopped is not None,
            "stopped": bool(self.stopped),
            "message": self.event.message if self.event is not None else self.decision.reason,
            "cancellation_behaviour": self.info.cancellation_raw,
        }


async def request_stop(
    client: SuperOfficeClient,
    task_id: int,
    *,
    force: bool,
    by: str,
    now: datetime,
    stop_id: Callable[[BatchTaskInfo], str] | None = None,
) -> StopOutcome:
    """Read the task, and ask SuperOffice to stop it if :func:`may_stop` allows.

    ``stop_id`` gives the event's id (default: one per request, from who asked and when).
    Raises :class:`StopFailedError` when the API cannot be asked.
    """
    try:
        info = await client.get_task(task_id)
        decision = may_stop(info, force=force)
        if decision.verdict is not Verdict.STOP:
            return StopOutcome(info, decision)
        stopped = await client.stop_batch_job(task_id)
    except NotFound:
        raise StopFailedError(f"SuperOffice has no task {task_id}", not_found=True) from None
    except ApiError as exc:
        raise StopFailedError(f"SuperOffice could not be asked: {exc}") from None
    ident = stop_id(info) if stop_id else event_id("stop", task_id, by, now.isoformat())
    event = Event(
        id=ident,
        type=EventType.TASK_STOP_REQUESTED,
        time=now,
        task=TaskSummary.of(info),
        message=stop_answer(by, stopped),
    )
    return StopOutcome(info, decision, stopped, event)


async def stop_directly(
    config: SuperOfficeConfig, task_id: int, *, force: bool, by: str, now: datetime
) -> StopOutcome:
    """``batchmon stop --config``: the same, with a client of its own and no daemon."""
    async with open_client(config) as client:
        return await request_stop(client, task_id, force=force, by=by, now=now)


class TaskStopper:
    """Stops tasks for the HTTP API and commits what SuperOffice answered."""

    def __init__(
        self, client: SuperOfficeClient, commit: Commit, clock: Callable[[], datetime]
    ) -> None:
        self._client = client
        self._commit = commit
        self._clock = clock

    async def stop(self, task_id: int, *, force: bool, by: str) -> StopOutcome:
        """Ask for the stop; :class:`StopFailedError` when SuperOffice cannot be asked."""
        outcome = await request_stop(self._client, task_id, force=force, by=by, now=self._clock())
        if outcome.event is not None:
            await self._commit([outcome.event])
        return outcome


class AutoStopper:
    """``[poll] stop_stalled_after``: stops each long-stalled task once per run of it.

    Once even across restarts: the event's id is made of the task and its run
    (:func:`~monitor.tracking.stopping.auto_stop_id`) and a recorded one is not
    asked again.  A task SuperOffice refuses to stop is not asked again while this
    process runs.
    """

    def __init__(
        self,
        client: SuperOfficeClient,
        commit: Commit,
        known: Callable[[Sequence[str]], Awaitable[Collection[str]]],
        *,
        stall_after: Callable[[], timedelta],
        stop_after: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._client = client
        self._commit = commit
        self._known = known
        self._stall_after = stall_after
        self._stop_after = stop_after
        self._clock = clock
        self._refused: set[str] = set()

    async def run(self, memories: Callable[[], Iterable[TaskMemory]], every: float) -> None:
        """Look every ``every`` seconds, until cancelled."""
        while True:
            await self.once(memories())
            await anyio.sleep(every)

    async def once(self, memories: Iterable[TaskMemory]) -> list[StopOutcome]:
        """Stop the tasks due now; what became of each."""
        now = self._clock()
        due = due_auto_stops(
            memories, stall_after=self._stall_after(), stop_after=self._stop_after, now=now
        )
        ids = {auto_stop_id(memory.info): memory for memory in due}
        fresh = set(ids) - self._refused - set(await self._known(list(ids)))
        outcomes = []
        for ident in sorted(fresh, key=lambda i: ids[i].info.id):
            memory = ids[ident]
            stalled_for = now - memory.last_change
            by = f"batchmon (no change for {_minutes(stalled_for)}, [poll] stop_stalled_after)"
            try:
                outcome = await request_stop(
                    self._client,
                    memory.info.id,
                    force=False,
                    by=by,
                    now=now,
                    stop_id=partial(_fixed, ident),
                )
            except StopFailedError as exc:
                log.warning("auto_stop_failed", task_id=memory.info.id, error=str(exc))
                continue
            if outcome.event is None:
                self._refused.add(ident)
                log.info(
                    "auto_stop_refused", task_id=memory.info.id, reason=outcome.decision.reason
                )
            else:
                await self._commit([outcome.event])
            outcomes.append(outcome)
        return outcomes


def _fixed(ident: str, _info: BatchTaskInfo) -> str:
    return ident


def _minutes(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
