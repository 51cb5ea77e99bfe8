"""The loop between the client and the tracker: it performs what the schedule decides.

The :class:`~monitor.polling.schedule.Schedule` says who is polled when and
with which request; the poller sends the requests (list calls first, then the
GETs, by a few workers), feeds each answer to the tracker and back to the
schedule, and commits what changed as soon as it is known (batched while the
store is busy), so a slow request never delays another task's news.  Once a
minute the tasks finished or gone for ``forget_after`` are forgotten: dropped
from the tracker and the store, their conditions ended.

Failures are data, not log spam: a cycle whose requests all failed counts
towards ``monitor.api_down`` (edge-triggered, in :class:`ApiHealth`); a
malformed answer or an anomalous field is logged once per task.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from monitor.config import DiscoverRule, PollConfig
from monitor.polling.batching import SETTLE_SLICE, Batcher, Commit, News
from monitor.polling.discovery import Discovery, rule_matches
from monitor.polling.reports import Reports
from monitor.polling.schedule import Fetch, Later, Listings, Plan, Row, Schedule, Unchanged
from monitor.polling.shard import Shard
from monitor.superoffice.client import AnswerMemo, SuperOfficeClient
from monitor.superoffice.errors import (
    ApiError,
    AuthenticationFailed,
    MalformedResponse,
    NotFound,
)
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState, TaskListing
from monitor.tracking.detect import UNWATCHED
from monitor.tracking.events import Event
from monitor.tracking.health import ApiHealth
from monitor.tracking.memory import TaskMemory
from monitor.tracking.tracker import Tracker

__all__ = ["Forget", "Poller", "utc_now"]

log = structlog.get_logger("batchmon.poller")

#: Drops forgotten tasks from the store.
Forget = Callable[[Sequence[int]], Awaitable[None]]

_R = TypeVar("_R")


def utc_now() -> datetime:
    """The wall clock, in UTC (the default clock of the poller)."""
    return datetime.now(UTC)


class _Cycle:
    """What one poll cycle collected."""

    def __init__(self) -> None:
        self.outcomes: list[ApiError | None] = []  # None: a request that got its answer
        self.events: list[Event] = []
        #: Loop time each list request was sent, by state.
        self.sent: dict[BatchTaskState, float] = {}


def _differs(before: TaskMemory | None, after: TaskMemory) -> bool:
    """Whether a memory changed in a way worth storing (not just ``last_seen``)."""
    return (
        before is None
        or before.info != after.info
        or before.stalled != after.stalled
        or before.gone != after.gone
    )


class Poller:
    """Polls the watched tasks on their schedules, and discovers new ones."""

    def __init__(
        self,
        client: SuperOfficeClient,
        tracker: Tracker,
        commit: Commit,
        config: PollConfig,
        *,
        discover: Sequence[DiscoverRule] = (),
        forget: Forget | None = None,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
        shard: Shard | None = None,
        workers: int = 8,
        max_requests_per_second: float = math.inf,
    ) -> None:
        rules = list(discover)
        self._client = client
        self._tracker = tracker
        self._forget = forget
        self._clock = clock
        self._schedule = Schedule(
            config,
            rng=rng or random.Random(),  # noqa: S311 - jitter, not cryptography
            shard=shard,
            wants=(lambda info: any(rule_matches(rule, info) for rule in rules)) if rules else None,
            workers=workers,
            max_requests_per_second=max_requests_per_second,
        )
        #: Each task's last answer by id, so that an identical one is not parsed again.
        self._answers = AnswerMemo()
        self._batcher = Batcher(commit)
        self._reports = Reports()
        self._discovery = Discovery(
            client, rules, self._schedule, tracker.tasks, self._take, self._batcher
        )
        self._has_rules = bool(rules)
        self._idle_interval = config.idle_interval
        self._workers = workers
        self.health = ApiHealth(config.api_down_after)
        #: Completed cycles; /healthz and the watchdog read it.
        self.cycles = 0
        #: Monotonic time the last cycle ended (``None`` before the first).
        self.last_cycle_end: float | None = None
        #: API requests the last cycle made (GETs and list calls).
        self.last_cycle_requests = 0
        self._last_activity: float | None = None
        #: Set when the cycle under way ends (:meth:`next_cycle`).
        self._cycle_ended = anyio.Event()
        #: Cycles at least ``idle_interval`` apart: the tenant is known to be down.
        self._slow = False

    @property
    def watched(self) -> frozenset[int]:
        """Ids still being polled."""
        return self._schedule.watched

    def alive(self, within: float) -> bool:
        """Whether the poll loop did something (a request, a cycle) in the last ``within`` s.

        Long cycles (thousands of rate-limited requests) stay alive; a wedged loop does not.
        """
        last = self._last_activity
        return last is not None and anyio.current_time() - last < within

    async def next_cycle(self) -> None:
        """Wait until the next poll cycle has ended."""
        await self._cycle_ended.wait()

    def slow(self, slow: bool) -> None:
        """Poll at most every ``idle_interval`` (the tenant is down), or as scheduled again."""
        self._slow = slow

    def due_in(self, task_id: int) -> float | None:
        """Seconds until a task's next poll (``None``: not polled any more)."""
        return self._schedule.due_in(task_id, anyio.current_time())

    def watch(self, task_ids: Iterable[int], *, pinned: bool = False) -> list[int]:
        """Start polling these tasks (due at once); returns the ids that were new.

        ``pinned``: watched explicitly, for good (fetched every ``finished_interval``
        once finished, looked for again once forgotten).  Tasks of another shard are
        left to the replica that owns them.
        """
        return self._schedule.watch(task_ids, anyio.current_time(), pinned=pinned)

    async def unwatch(self, task_ids: Iterable[int]) -> None:
        """Stop polling these tasks and forget them; a condition still firing ends."""
        ids = list(task_ids)
        self._schedule.unwatch(ids)
        await self._forget_tasks(ids, self._tracker.drop(ids, self._clock(), UNWATCHED))

    def _drop(self, ids: Sequence[int]) -> None:
        """Forget what the poller keeps per task (not the tracker's memory)."""
        self._schedule.drop(ids)
        self._reports.drop(ids)
        self._answers.forget(ids)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll forever: each cycle takes the due tasks, then sleeps until the next one."""
        async with anyio.create_task_group() as group:
            if self._has_rules:
                group.start_soon(self._discovery.run)
            self._last_activity = anyio.current_time()
            task_status.started()
            while True:
                now = self._last_activity = anyio.current_time()
                if self._schedule.sweep_due(now):
                    await self.sweep()
                due = self._schedule.due(now)
                if due:
                    await self.poll(due)
                wake = self._schedule.wake_at(now)
                if self._slow:
                    wake = max(wake, now + self._idle_interval)
                await anyio.sleep(max(wake - anyio.current_time(), 0.05))

    async def sweep(self) -> list[int]:
        """Forget the tasks finished or gone for ``forget_after``; returns their ids.

        Their ending conditions are committed first, then they leave the store.
        Pinned ids stay watched: if the task shows up again, it is a new sighting.
        """
        events, ids = self._tracker.expire(self._clock())
        if not ids:
            return []
        await self._forget_tasks(ids, events)
        self.watch([task_id for task_id in ids if self._schedule.pinned(task_id)])
        log.info("tasks_forgotten", count=len(ids), conditions_ended=len(events))
        return ids

    async def _forget_tasks(self, ids: Sequence[int], events: Sequence[Event]) -> None:
        """The tracker forgot these tasks: drop what is kept of them here, commit the events
        that end their conditions, then drop them from the store."""
        self._drop(ids)
        if events:
            await self._batcher.soon(events, [])
        await self._batcher.settled()
        if self._forget is not None:
            await self._forget(ids)

    async def discover(self, rule: DiscoverRule) -> list[int]:
        """Run one rule's list calls; watch the matching tasks; returns the new ids."""
        return await self._discovery.discover(rule)

    async def poll_once(self) -> list[Event]:
        """Poll every watched task now, regardless of schedule (tests, ``watch``)."""
        return await self.poll(list(self._schedule.watched))

    async def poll(self, task_ids: Sequence[int]) -> list[Event]:
        """One cycle over ``task_ids``: list, observe, fetch, commit; returns the events.

        The GETs of tasks that left the listed states start as each is found; the
        blind GETs (first sights, finished tasks, states not listed) wait until the
        news of the lists is committed, so as not to hold up its delivery.  Then the
        tasks the lists show unchanged (thousands per cycle) are settled: only the
        stall clock can say something about them.
        """
        cycle = _Cycle()
        plan = self._schedule.plan(task_ids, self._tracker.tasks, anyio.current_time())
        listings = await self._list(cycle, plan.states)
        fetched, unchanged = await self._take_listings(cycle, plan, listings)
        await self._batcher.settled()
        blind = iter(self._schedule.blind(plan, fetched, self._tracker.tasks))
        async with anyio.create_task_group() as group:
            for _ in range(self._workers):
                group.start_soon(self._fetch_all, cycle, blind)
        await self._settle_unchanged(cycle, unchanged)
        await self._end_cycle(cycle)
        return cycle.events

    async def _list(self, cycle: _Cycle, states: Sequence[BatchTaskState]) -> Listings:
        """The list calls of a cycle, at once."""
        listings: dict[BatchTaskState, TaskListing | ApiError] = {}

        async def list_state(state: BatchTaskState) -> None:
            cycle.sent[state] = anyio.current_time()
            answer = listings[state] = await self._request(
                cycle,
                lambda: self._client.list_tasks_in_state(
                    [], state.value, select=BatchTaskInfo.POLL_FIELDS
                ),
            )
            self._reports.listing(state, answer)

        async with anyio.create_task_group() as group:
            for state in states:
                group.start_soon(list_state, state)
        return listings

    async def _take_listings(
        self, cycle: _Cycle, plan: Plan, listings: Listings
    ) -> tuple[int, list[int]]:
        """Observe the rows, fetching tasks the lists lost as they are found.

        Returns how many GETs went out, and the tasks the lists show unchanged.
        """
        send, receive = anyio.create_memory_object_stream[int](max_buffer_size=math.inf)
        async with anyio.create_task_group() as group:
            with receive:
                for _ in range(self._workers):
                    group.start_soon(self._fetch_queued, cycle, receive.clone())
            with send:
                taken = await self._decide_rows(cycle, plan, listings, send)
        return taken

    async def _decide_rows(
        self, cycle: _Cycle, plan: Plan, listings: Listings, fetch: MemoryObjectSendStream[int]
    ) -> tuple[int, list[int]]:
        fetched = 0
        unchanged: list[int] = []
        news = News()
        tasks = self._tracker.tasks
        for index, task_id in enumerate(self._schedule.covered(plan, listings, tasks)):
            if index % SETTLE_SLICE == 0:
                await self._batcher.flush(news, cycle.events)  # and let the GETs go out
            if task_id in plan.singles:
                continue
            decision = self._schedule.decide(task_id, listings, cycle.sent, tasks)
            if isinstance(decision, Fetch):
                fetch.send_nowait(task_id)  # news: fetched whatever the budget
                fetched += 1
            elif isinstance(decision, Unchanged):
                unchanged.append(task_id)
            elif isinstance(decision, Row):
                self.watch([task_id])  # a task a discovery rule wants, or a re-run
                news.add(*self._take(decision))
                self._schedule.listed(decision.info, anyio.current_time())
            else:
                self._later(task_id, decision)
        await self._batcher.flush(news, cycle.events)
        return fetched, unchanged

    def _later(self, task_id: int, decision: Later) -> None:
        self._schedule.reschedule(task_id, decision.after, anyio.current_time())

    async def _fetch_queued(self, cycle: _Cycle, queue: MemoryObjectReceiveStream[int]) -> None:
        with queue:
            async for task_id in queue:
                await self._get(cycle, task_id)

    async def _fetch_all(self, cycle: _Cycle, task_ids: Iterator[int]) -> None:
        for task_id in task_ids:  # shared by the workers
            await self._get(cycle, task_id)

    async def _get(self, cycle: _Cycle, task_id: int) -> None:
        """Fetch a task by id; commit the events and a changed memory."""

        async def get() -> BatchTaskInfo:
            return await self._client.get_task(task_id, self._answers)

        sent = anyio.current_time()
        answer = await self._request(cycle, get)
        found, memory = self._take_answer(task_id, answer, sent)
        if found or memory is not None:
            cycle.events.extend(found)
            await self._batcher.soon(found, [memory] if memory is not None else [])

    async def _settle_unchanged(self, cycle: _Cycle, unchanged: Sequence[int]) -> None:
        """Run the stall clock of the tasks the lists show unchanged."""
        now, loop_now = self._clock(), anyio.current_time()
        for index, task_id in enumerate(unchanged):
            if index % SETTLE_SLICE == 0:
                await anyio.lowlevel.checkpoint()  # let deliveries of the news go on
            self._schedule.reschedule(task_id, self._schedule.list_every, loop_now)
            found = self._tracker.touch(task_id, now)
            if found:
                cycle.events.extend(found)
                await self._batcher.soon(found, [self._tracker.tasks[task_id]])

    async def _end_cycle(self, cycle: _Cycle) -> None:
        self.last_cycle_requests = len(cycle.outcomes)
        health_event = self._record_health(cycle.outcomes, self._clock())
        if health_event is not None:
            cycle.events.append(health_event)
            await self._batcher.soon([health_event], [])
        await self._batcher.settled()
        self.cycles += 1
        self.last_cycle_end = anyio.current_time()
        self._cycle_ended.set()
        self._cycle_ended = anyio.Event()

    async def _request(self, cycle: _Cycle, call: Callable[[], Awaitable[_R]]) -> _R | ApiError:
        """One API request; its outcome counts for the cycle's health."""
        try:
            result = await call()
        except ApiError as exc:
            cycle.outcomes.append(exc)
            return exc
        finally:
            self._last_activity = anyio.current_time()
        cycle.outcomes.append(None)
        return result

    def _take(self, row: Row) -> tuple[list[Event], TaskMemory | None]:
        """Observe a list row."""
        return self._take_answer(row.info.id, row.info, row.sent, row.values)

    def _take_answer(
        self,
        task_id: int,
        answer: BatchTaskInfo | ApiError,
        sent: float,
        values: tuple[object, ...] | None = None,
    ) -> tuple[list[Event], TaskMemory | None]:
        """Observe an answer whose request was sent at ``sent`` (loop time).

        ``values``: the poll fields of the list row that gave it (``None``: a GET).
        Returns the events and the task's memory if it changed in a way worth
        storing.  An answer to a request older than the one the memory holds is
        dropped: it would take the task back in time.
        """
        if not self._schedule.accepts(task_id, sent):
            return [], None
        before = self._tracker.tasks.get(task_id)
        found = self._absorb(task_id, answer, self._clock(), listed=values is not None)
        if not isinstance(answer, ApiError):
            self._schedule.informed(task_id, sent, values)
        after = self._tracker.tasks.get(task_id)
        changed = after is not None and (
            bool(found) or (before is not after and _differs(before, after))
        )
        return found, after if changed else None

    def _absorb(
        self, task_id: int, result: BatchTaskInfo | ApiError, now: datetime, *, listed: bool
    ) -> list[Event]:
        """Feed one answer to the tracker and the schedule.

        ``listed``: a list row, which says nothing of whether the task's own GET
        answers are readable again.
        """
        if isinstance(result, NotFound):
            return self._not_found(task_id, now)
        if not isinstance(result, ApiError) and result.id != task_id:
            result = MalformedResponse(f"the answer is for task {result.id}, not {task_id}")
        if isinstance(result, ApiError):
            self._reports.failure(task_id, result)
            self._schedule.failed(task_id, anyio.current_time())
            return []
        self._reports.answer(result, listed=listed)
        previous = self._tracker.tasks.get(task_id)
        if previous is not None and previous.info is result:
            # The very answer of last time (see AnswerMemo): as a list call showing no change.
            events = self._tracker.touch(task_id, now)
        else:
            events = self._tracker.observe(result, now)
        memory = self._tracker.tasks[task_id]
        if self._schedule.answered(memory, anyio.current_time(), now):
            log.debug("task_polling_stopped", task_id=task_id, state=memory.info.state.value)
        return events

    def _not_found(self, task_id: int, now: datetime) -> list[Event]:
        if task_id in self._tracker.tasks:
            self._schedule.gone(task_id)
            return self._tracker.observe_gone(task_id, now)
        # Never seen: a wrong id, or a task that does not exist yet.
        if self._schedule.unknown(task_id, anyio.current_time()):
            log.warning(
                "watched_task_not_found",
                task_id=task_id,
                retry_every=self._idle_interval,
            )
        return []

    def _record_health(self, outcomes: Sequence[ApiError | None], now: datetime) -> Event | None:
        """A cycle failed when no request got an HTTP answer from a working API.

        A 404 or a malformed body still proves the API answers.
        """
        if not outcomes:
            return None
        failures = [
            r for r in outcomes if r is not None and not isinstance(r, NotFound | MalformedResponse)
        ]
        if len(failures) < len(outcomes):
            return self.health.success(now)
        if all(isinstance(r, AuthenticationFailed) for r in failures):
            return self.health.auth_failure(now, str(failures[-1]))
        return self.health.failure(now, str(failures[-1]))
