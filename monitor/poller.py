"""Who is polled when: the loop between the client and the tracker.

Each watched task has its own deadline.  A cycle polls every task that is
due, at most ``max_concurrency`` at a time and ``max_requests_per_second``
overall, feeds the answers to the tracker, and hands the events on.  Every
next deadline is jittered so thousands of tasks do not poll in waves.  A task
that reached a terminal state is polled for ``terminal_linger`` more (to see a
quick restart), then no more; a deleted task (404 after it was seen) is not
polled again, while a watched id the API never knew is retried at
``idle_interval`` (it may be a typo, or a task that does not exist yet).

Failures are data, not log spam: a cycle whose requests all failed counts
towards ``monitor.api_down`` (edge-triggered, in :class:`ApiHealth`); a
malformed answer or an anomalous field is logged once per task.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import anyio
import structlog

from monitor.config import PollConfig
from monitor.ratelimit import RateLimiter
from monitor.superoffice.client import SuperOfficeClient
from monitor.superoffice.errors import ApiError, MalformedResponse, NotFound
from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.events import Event
from monitor.tracking.health import ApiHealth
from monitor.tracking.memory import TaskMemory
from monitor.tracking.tracker import Tracker

__all__ = ["Poller", "utc_now"]

log = structlog.get_logger("batchmon.poller")

#: Makes events and the task memories they came from durable, then delivers them.
Commit = Callable[[Sequence[Event], Sequence[TaskMemory]], Awaitable[None]]


def _differs(before: TaskMemory | None, after: TaskMemory) -> bool:
    """Whether a memory changed in a way worth storing (not just ``last_seen``)."""
    return (
        before is None
        or before.info != after.info
        or before.stalled != after.stalled
        or before.gone != after.gone
    )


def utc_now() -> datetime:
    """The wall clock, in UTC (the default clock of the poller)."""
    return datetime.now(UTC)


class Poller:
    """Polls the watched tasks on their schedules."""

    def __init__(
        self,
        client: SuperOfficeClient,
        tracker: Tracker,
        commit: Commit,
        config: PollConfig,
        *,
        max_concurrency: int,
        max_requests_per_second: float,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._tracker = tracker
        self._commit = commit
        self._config = config
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._rate = RateLimiter(max_requests_per_second)
        self._due: dict[int, float] = {}
        self._malformed: set[int] = set()
        self._missing: set[int] = set()
        self._anomalies: dict[int, tuple[str, ...]] = {}
        self.health = ApiHealth(config.api_down_after)
        #: Completed cycles; /healthz and the watchdog read it.
        self.cycles = 0
        #: Monotonic time the last cycle ended (``None`` before the first).
        self.last_cycle_end: float | None = None

    @property
    def watched(self) -> frozenset[int]:
        """Ids still being polled."""
        return frozenset(self._due)

    def watch(self, task_ids: Iterable[int]) -> None:
        """Start polling these tasks (due at once)."""
        now = anyio.current_time()
        for task_id in task_ids:
            self._due.setdefault(task_id, now)

    def unwatch(self, task_ids: Iterable[int]) -> None:
        """Stop polling these tasks and forget them."""
        ids = list(task_ids)
        for task_id in ids:
            self._due.pop(task_id, None)
        self._tracker.forget(ids)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll forever: each cycle takes the due tasks, then sleeps until the next one."""
        task_status.started()
        while True:
            now = anyio.current_time()
            due = [task_id for task_id, at in self._due.items() if at <= now]
            if due:
                await self.poll(due)
            upcoming = min(self._due.values(), default=anyio.current_time() + self._config.interval)
            await anyio.sleep(max(upcoming - anyio.current_time(), 0.05))

    async def poll_once(self) -> list[Event]:
        """Poll every watched task now, regardless of schedule (tests, ``watch``)."""
        return await self.poll(list(self._due))

    async def poll(self, task_ids: Sequence[int]) -> list[Event]:
        """One cycle over ``task_ids``: fetch, detect, commit; returns the events.

        Each task's events are committed as soon as its answer is in, so a
        slow request never delays another task's news.
        """
        outcomes: list[BatchTaskInfo | ApiError] = []
        events: list[Event] = []

        async def fetch(task_id: int) -> None:
            async with self._limiter:
                await self._rate.acquire()
                result: BatchTaskInfo | ApiError
                try:
                    result = await self._client.get_task(task_id)
                except ApiError as exc:
                    result = exc
            outcomes.append(result)
            before = self._tracker.tasks.get(task_id)
            found = self._absorb(task_id, result, self._clock())
            after = self._tracker.tasks.get(task_id)
            changed = after is not None and (bool(found) or _differs(before, after))
            if found or changed:
                events.extend(found)
                await self._commit(found, [after] if changed and after else [])

        async with anyio.create_task_group() as group:
            for task_id in task_ids:
                group.start_soon(fetch, task_id)

        health_event = self._record_health(outcomes, self._clock())
        if health_event is not None:
            events.append(health_event)
            await self._commit([health_event], [])
        self.cycles += 1
        self.last_cycle_end = anyio.current_time()
        return events

    def _absorb(self, task_id: int, result: BatchTaskInfo | ApiError, now: datetime) -> list[Event]:
        """Feed one answer to the tracker and reschedule the task."""
        if isinstance(result, NotFound):
            if task_id not in self._tracker.tasks:
                # Never seen: a wrong id, or a task that does not exist yet.
                if task_id not in self._missing:
                    self._missing.add(task_id)
                    log.warning(
                        "watched_task_not_found",
                        task_id=task_id,
                        retry_every=self._config.idle_interval,
                    )
                self._reschedule(task_id, self._config.idle_interval)
                return []
            self._due.pop(task_id, None)
            return self._tracker.observe_gone(task_id, now)
        if isinstance(result, ApiError):
            self._report_failure(task_id, result)
            self._reschedule(task_id)
            return []
        self._missing.discard(task_id)
        if task_id in self._malformed:
            self._malformed.discard(task_id)
            log.info("task_answer_valid_again", task_id=task_id)
        self._report_anomalies(result)
        events = self._tracker.observe(result, now)
        memory = self._tracker.tasks[result.id]
        linger = timedelta(seconds=self._config.terminal_linger)
        if memory.terminal_since is not None and now - memory.terminal_since >= linger:
            self._due.pop(task_id, None)
            log.debug("task_polling_stopped", task_id=task_id, state=result.state.value)
        else:
            self._reschedule(task_id)
        return events

    def _reschedule(self, task_id: int, interval: float | None = None) -> None:
        if task_id not in self._due:
            return
        jitter = self._config.jitter
        factor = 1.0 + self._rng.uniform(-jitter, jitter)
        base = self._config.interval if interval is None else interval
        self._due[task_id] = anyio.current_time() + base * factor

    def _report_failure(self, task_id: int, error: ApiError) -> None:
        if isinstance(error, MalformedResponse):
            if task_id not in self._malformed:
                self._malformed.add(task_id)
                log.warning(
                    "task_answer_malformed",
                    task_id=task_id,
                    error=str(error),
                    error_type=error.error_type,
                    kept="last known state",
                )
            return
        log.debug("task_poll_failed", task_id=task_id, reason=error.reason, error=str(error))

    def _report_anomalies(self, info: BatchTaskInfo) -> None:
        if info.anomalies and self._anomalies.get(info.id) != info.anomalies:
            log.warning("task_answer_anomalous", task_id=info.id, anomalies=list(info.anomalies))
        if info.anomalies:
            self._anomalies[info.id] = info.anomalies
        else:
            self._anomalies.pop(info.id, None)

    def _record_health(
        self, results: Iterable[BatchTaskInfo | ApiError], now: datetime
    ) -> Event | None:
        """A cycle failed when no request got an HTTP answer from a working API."""
        outcomes = list(results)
        if not outcomes:
            return None
        failures = [
            r
            for r in outcomes
            if isinstance(r, ApiError) and not isinstance(r, NotFound | MalformedResponse)
        ]
        if len(failures) < len(outcomes):
            return self.health.success(now)
        return self.health.failure(now, str(failures[-1]))
