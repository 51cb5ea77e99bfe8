"""Who is polled when: the loop between the client and the tracker.

Each watched task has its own deadline, set by what it is doing: a task that
is not finished (``New``, ``Aquired``, ``Started``, ``Unknown``) every
``interval``, a task that just finished once more to confirm it (and for
``terminal_linger`` after).  Then a finished task watched by id, or one that
failed, is fetched every ``finished_interval`` (it may run again, or be
cleaned up), and any other finished task is polled no more: if it runs again,
the active states' lists show it.  ``idle_interval`` is for watched ids the
API never knew (a typo, or a task that does not exist yet): they are looked
for in the active states' lists, and fetched by id once every 30 idle
intervals.  Every deadline is jittered (earlier, never later) so thousands of
tasks do not poll in waves.

Requests are what SuperOffice meters, so a cycle spends as few as it can:
when at least ``bulk_threshold`` due tasks were last seen in the same state,
one ``GetBatchTaskInfosByAssociatesAndState`` call replaces their GETs.  Its
``$select`` asks for every field detection needs (``POLL_FIELDS``), so a row
is a full observation: a task a list shows is observed from its row at once,
and only a task that left the listed states (finished, deleted) or whose row
is unusable is fetched by id.  Tasks a list shows (and ids no list showed
yet) are due again after half an ``interval``: one request per state buys
seeing each change within an interval of it, whatever the jitter and however
long a cycle takes.  ``[[watch.discover]]`` rules run their list calls on
their own schedule, and every row of any list that matches a rule is
discovered at once, observed from that row.

An answer is observed only if its request was sent after the one whose answer
the task's memory holds, so a slow list never takes a task back in time.
Once a minute the tasks finished or gone for ``forget_after`` are forgotten:
dropped from the tracker and the store, their conditions ended.

Failures are data, not log spam: a cycle whose requests all failed counts
towards ``monitor.api_down`` (edge-triggered, in :class:`ApiHealth`); a
malformed answer or an anomalous field is logged once per task.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from monitor.config import DiscoverRule, PollConfig
from monitor.superoffice.client import AnswerMemo, SuperOfficeClient
from monitor.superoffice.errors import (
    ApiError,
    AuthenticationFailed,
    MalformedResponse,
    NotFound,
)
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState, ParseError, TaskListing
from monitor.tracking.events import Event
from monitor.tracking.health import ApiHealth
from monitor.tracking.memory import TaskMemory
from monitor.tracking.tracker import Tracker

__all__ = ["Poller", "Shard", "rule_matches", "utc_now"]

log = structlog.get_logger("batchmon.poller")

#: Makes events and the task memories they came from durable, then delivers them.
Commit = Callable[[Sequence[Event], Sequence[TaskMemory]], Awaitable[None]]
#: Drops forgotten tasks from the store.
Forget = Callable[[Sequence[int]], Awaitable[None]]

#: The fields a list call asks for: enough to tell whether a task moved.
POLL_FIELDS = BatchTaskInfo.POLL_FIELDS
_R = TypeVar("_R")
#: GETs of never-seen ids per worker and cycle.
_FIRST_SIGHTS_PER_WORKER = 4
#: Commits waiting behind the one in flight, before callers are held back.
_BATCH_LIMIT = 500
#: Tasks decided or settled between two chances for GETs and deliveries to run.
_SETTLE_SLICE = 256
#: A watched id the API never knew is fetched by id every this many idle intervals
#: (the active-state lists find it sooner once it exists).
_UNKNOWN_RECHECK = 30
#: Seconds between two sweeps for tasks to forget.
_SWEEP_EVERY = 60.0


class _Unchanged:
    """A list call showed the task exactly as last time: only the stall clock runs."""


class _Fetch:
    """The task left the listed states, or its row is unusable: fetch it by id."""


class _Row:
    """A list row that differs from what batchmon knows: observed as it is."""

    __slots__ = ("info", "sent")

    def __init__(self, info: BatchTaskInfo, sent: float) -> None:
        self.info = info
        #: Loop time the list request was sent.
        self.sent = sent


_UNCHANGED = _Unchanged()
_FETCH = _Fetch()


class _Cycle:
    """What one poll cycle collected."""

    def __init__(self) -> None:
        self.outcomes: list[ApiError | None] = []  # None: a request that got its answer
        self.events: list[Event] = []
        #: What the lists showed of tasks whose new state is being taken in.
        self.listed: dict[int, tuple[object, ...]] = {}
        #: Loop time each list request was sent, by state.
        self.sent: dict[BatchTaskState, float] = {}


#: States whose tasks can be polled together with one list call.
#: The states listed in bulk, in the order tasks go through them: lists are asked for in this
#: order, so that a task moving on while they are answered is in one of them (listed before
#: it moved, or after it arrived), never in neither.
_BULK_STATES = (BatchTaskState.NEW, BatchTaskState.AQUIRED, BatchTaskState.STARTED)


def utc_now() -> datetime:
    """The wall clock, in UTC (the default clock of the poller)."""
    return datetime.now(UTC)


class Shard:
    """This replica's part of the tasks: shard ``number`` of ``count``, split by id hash.

    Shards are numbered 1 … N, as ``--shard k/N`` and the Prometheus ``shard``
    labels in ``deploy/`` write them.  The hash is Prometheus's ``hashmod`` (the
    low 64 bits of the MD5 of the value, big-endian, modulo ``count``): shard k
    owns the ids whose hashmod is k - 1, so the split is stable, even, and the
    same one a Prometheus relabelling would make.
    """

    def __init__(self, number: int = 1, count: int = 1) -> None:
        if count < 1 or not 1 <= number <= count:
            msg = f"expected K/N with 1 <= K <= N (e.g. 1/2 and 2/2), got {number}/{count}"
            raise ValueError(msg)
        self.number = number
        self.count = count

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/3"`` → shard 2 of 3; anything else raises :class:`ValueError` saying why."""
        match = re.fullmatch(r"([0-9]+)/([0-9]+)", text.strip())
        if match is None:
            msg = f"expected K/N with 1 <= K <= N (e.g. 1/2 and 2/2), got {text!r}"
            raise ValueError(msg)
        return cls(int(match[1]), int(match[2]))

    def owns(self, task_id: int) -> bool:
        """Whether this replica watches the task."""
        if self.count == 1:
            return True
        digest = hashlib.md5(str(task_id).encode(), usedforsecurity=False).digest()
        return int.from_bytes(digest[8:], "big") % self.count == self.number - 1

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"


def rule_matches(rule: DiscoverRule, info: BatchTaskInfo) -> bool:
    """Whether a discovery rule's list call would find this task (as last seen)."""
    associate = info.associate_id
    if rule.associates == [0]:
        owned = associate == 0
    elif rule.associates == [-1]:
        owned = associate is not None and associate != 0
    else:
        owned = not rule.associates or associate in rule.associates
    named = rule.name is None or fnmatchcase(info.name or "", rule.name)
    return owned and named and info.state.value in rule.states


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
        self._shard = shard or Shard()
        self._client = client
        self._tracker = tracker
        self._commit = commit
        self._forget = forget
        self._config = config
        self._rules = list(discover)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._due: dict[int, float] = {}
        #: Ids watched explicitly (configuration, run-time watches): watched for good,
        #: fetched every ``finished_interval`` once finished, looked for again once forgotten.
        self._pinned: set[int] = set()
        self._malformed: set[int] = set()
        #: Ids the API never knew, with when they were last tried by id.
        self._missing: dict[int, float] = {}
        #: The raw poll fields each task had in the last list that showed it.
        self._listed: dict[int, tuple[object, ...]] = {}
        #: Loop time the request was sent whose answer each task's memory holds.
        self._informed: dict[int, float] = {}
        #: Tasks a list call shows, and ids no list showed yet, are due again this soon:
        #: a list costs one request whatever it holds, and half an interval keeps every
        #: change seen within one interval, however long a cycle takes.
        self._list_every = config.interval / 2
        #: Each task's last answer by id, so that an identical one is not parsed again.
        self._answers = AnswerMemo()
        self._batch_events: list[Event] = []
        self._batch_memories: list[TaskMemory] = []
        self._committing: anyio.Event | None = None
        self._workers = workers
        #: Requests a cycle may send: what the tenant's rate allows in half an interval, so
        #: that a backlog of GETs (thousands of first sights) never holds up the next lists.
        self._get_budget = max(
            workers, math.floor(min(max_requests_per_second * self._list_every, 1e9))
        )
        #: Discovery rules whose list calls fail (logged once per failure streak).
        self._failing_rules: set[int] = set()
        #: States whose list answers are unreadable (logged once per streak).
        self._malformed_lists: set[BatchTaskState] = set()
        self._anomalies: dict[int, tuple[str, ...]] = {}
        self._next_sweep = -math.inf
        self.health = ApiHealth(config.api_down_after)
        #: Completed cycles; /healthz and the watchdog read it.
        self.cycles = 0
        #: Monotonic time the last cycle ended (``None`` before the first).
        self.last_cycle_end: float | None = None
        #: API requests the last cycle made (GETs and list calls).
        self.last_cycle_requests = 0
        self._last_activity: float | None = None

    @property
    def watched(self) -> frozenset[int]:
        """Ids still being polled."""
        return frozenset(self._due)

    def alive(self, within: float) -> bool:
        """Whether the poll loop did something (a request, a cycle) in the last ``within`` s.

        Long cycles (thousands of rate-limited requests) stay alive; a wedged loop does not.
        """
        last = self._last_activity
        return last is not None and anyio.current_time() - last < within

    def due_in(self, task_id: int) -> float | None:
        """Seconds until a task's next poll (``None``: not polled any more)."""
        at = self._due.get(task_id)
        return None if at is None else max(at - anyio.current_time(), 0.0)

    def watch(self, task_ids: Iterable[int], *, pinned: bool = False) -> list[int]:
        """Start polling these tasks (due at once); returns the ids that were new.

        ``pinned``: watched explicitly, for good (see :attr:`_pinned`).  Tasks of
        another shard are left to the replica that owns them.
        """
        now = anyio.current_time()
        added = []
        for task_id in task_ids:
            if not self._shard.owns(task_id):
                continue
            if pinned:
                self._pinned.add(task_id)
            if task_id not in self._due:
                self._due[task_id] = now
                added.append(task_id)
        return added

    def unwatch(self, task_ids: Iterable[int]) -> None:
        """Stop polling these tasks and forget them."""
        ids = list(task_ids)
        self._pinned.difference_update(ids)
        self._drop(ids)
        self._tracker.forget(ids)

    def _drop(self, ids: Sequence[int]) -> None:
        """Forget what the poller keeps per task (not the tracker's memory)."""
        for task_id in ids:
            self._due.pop(task_id, None)
            self._listed.pop(task_id, None)
            self._informed.pop(task_id, None)
            self._anomalies.pop(task_id, None)
            self._missing.pop(task_id, None)
            self._malformed.discard(task_id)
        self._answers.forget(ids)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll forever: each cycle takes the due tasks, then sleeps until the next one."""
        async with anyio.create_task_group() as group:
            if self._rules:
                group.start_soon(self._discover_forever)
            self._last_activity = anyio.current_time()
            task_status.started()
            while True:
                now = self._last_activity = anyio.current_time()
                if now >= self._next_sweep:
                    self._next_sweep = now + _SWEEP_EVERY
                    await self.sweep()
                # Take what falls due soon too: one cycle (and one list call per state)
                # per half interval, not one tiny cycle per jittered deadline.
                horizon = now + self._config.interval / 2
                due = [task_id for task_id, at in self._due.items() if at <= horizon]
                if due:
                    await self.poll(due)
                upcoming = min(self._due.values(), default=now + self._config.interval)
                upcoming = min(upcoming, self._next_sweep)
                await anyio.sleep(max(upcoming - anyio.current_time(), 0.05))

    async def sweep(self) -> list[int]:
        """Forget the tasks finished or gone for ``forget_after``; returns their ids.

        Their ending conditions are committed first, then they leave the store.
        Pinned ids stay watched: if the task shows up again, it is a new sighting.
        """
        events, ids = self._tracker.expire(self._clock())
        if not ids:
            return []
        self._drop(ids)
        if events:
            await self._commit_soon(events, [])
        await self._committed()
        if self._forget is not None:
            await self._forget(ids)
        self.watch([task_id for task_id in ids if task_id in self._pinned])
        log.info("tasks_forgotten", count=len(ids), conditions_ended=len(events))
        return ids

    async def poll_once(self) -> list[Event]:
        """Poll every watched task now, regardless of schedule (tests, ``watch``)."""
        return await self.poll(list(self._due))

    async def poll(self, task_ids: Sequence[int]) -> list[Event]:
        """One cycle over ``task_ids``: list, observe, fetch, commit; returns the events.

        Events are committed as soon as their answer is in (batched while the
        store is busy), so a slow request never delays another task's news.
        """
        cycle = _Cycle()
        states, singles = self._plan(task_ids)
        listings: dict[BatchTaskState, TaskListing | ApiError] = {}

        async def list_state(state: BatchTaskState) -> None:
            cycle.sent[state] = anyio.current_time()
            answer = listings[state] = await self._request(
                cycle,
                lambda: self._client.list_tasks_in_state([], state.value, select=POLL_FIELDS),
            )
            self._report_listing(state, answer)

        async with anyio.create_task_group() as group:
            for state in _BULK_STATES:
                if state in states:
                    group.start_soon(list_state, state)

        # The GETs of tasks that left the listed states start as each is found (through a
        # stream); the blind GETs (first sights, finished tasks, states not listed) wait
        # until the news of the lists is committed, so as not to hold up its delivery.
        send, receive = anyio.create_memory_object_stream[int](max_buffer_size=math.inf)
        blind: Iterator[int] = iter(())

        async def get_and_settle(task_id: int) -> None:
            async def get() -> BatchTaskInfo:
                return await self._client.get_task(task_id, self._answers)

            sent = anyio.current_time()
            await self._settle(cycle, task_id, await self._request(cycle, get), sent)

        async def fetch(queue: MemoryObjectReceiveStream[int]) -> None:
            with queue:
                async for task_id in queue:
                    await get_and_settle(task_id)

        async def fetch_blind() -> None:
            for task_id in blind:  # shared by the workers
                await get_and_settle(task_id)

        unchanged: list[int] = []
        budget = self._get_budget - len(states)
        async with anyio.create_task_group() as group:
            with receive:
                for _ in range(self._workers):
                    group.start_soon(fetch, receive.clone())
            with send:
                news: tuple[list[Event], list[TaskMemory]] = ([], [])
                for index, task_id in enumerate(self._covered(task_ids, listings)):
                    if index % _SETTLE_SLICE == 0:
                        await self._commit_news(cycle, news)  # and let the GETs go out
                    if task_id in singles:
                        continue
                    decision = self._decide(cycle, task_id, listings)
                    if isinstance(decision, _Fetch):
                        send.send_nowait(task_id)  # news: fetched whatever the budget
                        budget -= 1
                    elif isinstance(decision, _Unchanged):
                        unchanged.append(task_id)
                    elif isinstance(decision, _Row):
                        self.watch([task_id])  # a task a discovery rule wants, or a re-run
                        found, memory = self._take(cycle, task_id, decision.info, decision.sent)
                        self._reschedule(task_id, self._list_every)
                        news[0].extend(found)
                        if memory is not None:
                            news[1].append(memory)
                    elif decision is None:
                        self._reschedule(task_id, self._list_every)  # not there yet
                    else:  # the list failed: keep the last known state, no more requests
                        self._reschedule(task_id, self._config.interval)
                await self._commit_news(cycle, news)
                # Known tasks before first sights; what the budget leaves stays due.
                ordered = sorted(
                    (task_id for task_id in task_ids if task_id in singles),
                    key=lambda task_id: task_id not in self._tracker.tasks,
                )
                blind = iter(ordered[: max(budget, 0)])
        await self._committed()
        async with anyio.create_task_group() as group:
            for _ in range(self._workers):
                group.start_soon(fetch_blind)
        # Then the tasks the lists show unchanged (thousands per cycle): only the stall
        # clock can say something about them.
        now, loop_now = self._clock(), anyio.current_time()
        for index, task_id in enumerate(unchanged):
            if index % _SETTLE_SLICE == 0:
                await anyio.lowlevel.checkpoint()  # let deliveries of the news go on
            self._reschedule(task_id, self._list_every, loop_now)
            found = self._tracker.touch(task_id, now)
            if found:
                cycle.events.extend(found)
                await self._commit_soon(found, [self._tracker.tasks[task_id]])

        self.last_cycle_requests = len(cycle.outcomes)
        health_event = self._record_health(cycle.outcomes, self._clock())
        if health_event is not None:
            cycle.events.append(health_event)
            await self._commit_soon([health_event], [])
        await self._committed()
        self.cycles += 1
        self.last_cycle_end = anyio.current_time()
        return cycle.events

    async def _commit_news(self, cycle: _Cycle, news: tuple[list[Event], list[TaskMemory]]) -> None:
        """Commit what the rows observed so far told (one transaction), and empty ``news``."""
        events, memories = news
        if events or memories:
            cycle.events.extend(events)
            await self._commit_soon(list(events), list(memories))
            events.clear()
            memories.clear()
        else:
            await anyio.lowlevel.checkpoint()

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

    async def _settle(
        self, cycle: _Cycle, task_id: int, answer: BatchTaskInfo | ApiError, sent: float
    ) -> None:
        """Feed a GET's answer to the tracker; commit the events and a changed memory."""
        found, memory = self._take(cycle, task_id, answer, sent)
        if found or memory is not None:
            cycle.events.extend(found)
            await self._commit_soon(found, [memory] if memory is not None else [])

    def _take(
        self, cycle: _Cycle, task_id: int, answer: BatchTaskInfo | ApiError, sent: float
    ) -> tuple[list[Event], TaskMemory | None]:
        """Observe an answer whose request was sent at ``sent`` (loop time).

        Returns the events and the task's memory if it changed in a way worth
        storing.  An answer to a request older than the one the memory holds is
        dropped: it would take the task back in time.
        """
        if sent < self._informed.get(task_id, -math.inf):
            return [], None
        before = self._tracker.tasks.get(task_id)
        values = cycle.listed.pop(task_id, None)
        found = self._absorb(task_id, answer, self._clock(), listed=values is not None)
        if not isinstance(answer, ApiError):
            self._informed[task_id] = sent
            if values is None:  # a GET: the next row is compared with the memory afresh
                self._listed.pop(task_id, None)
            else:
                self._listed[task_id] = values
        after = self._tracker.tasks.get(task_id)
        changed = after is not None and (
            bool(found) or (before is not after and _differs(before, after))
        )
        return found, after if changed else None

    def _plan(self, task_ids: Sequence[int]) -> tuple[set[BatchTaskState], set[int]]:
        """Which states to list this cycle, and which tasks need a GET whatever the lists say.

        A state is listed when at least ``bulk_threshold`` due tasks were last
        seen in it; every active state is listed while some watched id was
        never seen (a new task appears in those lists first).  A task never
        tried, finished, or in a state not listed is fetched by id.
        """
        by_state: dict[BatchTaskState, list[int]] = defaultdict(list)
        singles: set[int] = set()
        unknown = False
        now = anyio.current_time()
        # First GETs of ids never seen are spread over cycles, so that thousands of new
        # watches never hold up the tasks already running; the lists find active ones first.
        first_sights = _FIRST_SIGHTS_PER_WORKER * self._workers
        for task_id in task_ids:
            memory = self._tracker.tasks.get(task_id)
            if memory is None:
                last_try = self._missing.get(task_id)
                recheck = _UNKNOWN_RECHECK * self._config.idle_interval
                if (last_try is None or now - last_try >= recheck) and first_sights > 0:
                    singles.add(task_id)
                    first_sights -= 1
                else:
                    unknown = True
            elif not memory.gone and memory.info.state in _BULK_STATES:
                by_state[memory.info.state].append(task_id)
            else:
                singles.add(task_id)
        states = {s for s, ids in by_state.items() if len(ids) >= self._config.bulk_threshold}
        if unknown:
            states.update(_BULK_STATES)
        for state, ids in by_state.items():
            if state not in states:
                singles.update(ids)
        return states, singles

    def _covered(
        self, due: Sequence[int], listings: Mapping[BatchTaskState, TaskListing | ApiError]
    ) -> list[int]:
        """The due tasks plus every task the lists of this cycle show or should show.

        That is every watched task last seen in a listed state (present or not:
        one missing finished or vanished), every remembered task a list shows
        (a finished one running again), and every row a discovery rule wants.
        """
        states = set(listings)
        if not states:
            return list(due)
        listed_all = states >= set(_BULK_STATES)
        covered = dict.fromkeys(due)
        for task_id in self._due:
            memory = self._tracker.tasks.get(task_id)
            if memory is None:
                if listed_all and task_id in self._missing:
                    covered[task_id] = None
            elif not memory.gone and memory.info.state in states:
                covered[task_id] = None
        tasks = self._tracker.tasks
        for listing in listings.values():
            if isinstance(listing, ApiError):
                continue
            for task_id in listing:
                if task_id in covered:
                    continue
                if task_id in self._due or task_id in tasks or self._wanted(listing, task_id):
                    covered[task_id] = None
        return list(covered)

    def _wanted(self, listing: TaskListing, task_id: int) -> bool:
        """Whether a discovery rule wants a task a list shows (this shard's only)."""
        if not self._rules or not self._shard.owns(task_id):
            return False
        try:
            info = listing.task(task_id)
        except ParseError:
            return False
        return any(rule_matches(rule, info) for rule in self._rules)

    def _decide(
        self,
        cycle: _Cycle,
        task_id: int,
        listings: Mapping[BatchTaskState, TaskListing | ApiError],
    ) -> _Row | ApiError | _Unchanged | _Fetch | None:
        """What the lists say about a task: unchanged, a row to observe, or fetch it.

        ``None`` means nothing to do this cycle (an id not seen anywhere yet).
        """
        memory = self._tracker.tasks.get(task_id)
        known = memory is not None and not memory.gone
        for state, listing in listings.items():
            if isinstance(listing, ApiError) or task_id not in listing:
                continue
            values = listing.poll_values(task_id)
            if known and self._listed.get(task_id) == values:
                return _UNCHANGED
            try:
                row = listing.task(task_id)
            except ParseError:
                # One odd row must not blind batchmon to the task: its own GET says.
                return _FETCH if known else None
            # Remembered once the row is taken in (a dropped stale row is not).
            cycle.listed[task_id] = values
            return _Row(row, cycle.sent[state])
        if not known or task_id not in self._due:
            return None
        assert memory is not None
        listed = listings.get(memory.info.state)
        if isinstance(listed, ApiError) and not isinstance(listed, MalformedResponse):
            return listed  # the API is failing: keep the last known state, no more requests
        # It left the listed states (finished, deleted), or its list answer was unusable
        # (one odd task must not blind batchmon to the others): its own GET says.
        return _FETCH

    async def _commit_soon(self, events: Sequence[Event], memories: Sequence[TaskMemory]) -> None:
        """Commit now, or with the batch in flight: one transaction per store round trip."""
        self._batch_events.extend(events)
        self._batch_memories.extend(memories)
        while self._committing is not None:
            if len(self._batch_memories) + len(self._batch_events) < _BATCH_LIMIT:
                return
            # The store is behind: hold this caller back rather than pile up memory.
            await self._committing.wait()
        self._committing = anyio.Event()
        try:
            while self._batch_events or self._batch_memories:
                batch = (self._batch_events, self._batch_memories)
                self._batch_events, self._batch_memories = [], []
                await self._commit(*batch)
        finally:
            done, self._committing = self._committing, None
            done.set()

    async def _committed(self) -> None:
        """Wait until everything handed to :meth:`_commit_soon` is committed."""
        while self._committing is not None:
            await self._committing.wait()

    async def _discover_forever(self) -> None:
        """Run each discovery rule on its own schedule."""
        async with anyio.create_task_group() as group:
            for rule in self._rules:
                group.start_soon(self._discover_every, rule)

    async def _discover_every(self, rule: DiscoverRule) -> None:
        while True:
            await self.discover(rule)
            jitter = self._config.jitter
            await anyio.sleep(rule.every * (1.0 + self._rng.uniform(-jitter, jitter)))

    async def discover(self, rule: DiscoverRule) -> list[int]:
        """Run one rule's list calls; watch the matching tasks; returns the new ids.

        Each row a rule wants is observed at once (a task first seen finished is
        announced with its outcome); a known task's row only if it changed.
        """
        found: list[int] = []
        rule_key = id(rule)
        cycle = _Cycle()
        for state in rule.states:
            sent = anyio.current_time()
            try:
                listing = await self._client.list_tasks_in_state(
                    rule.associates, state, select=POLL_FIELDS
                )
            except ApiError as exc:
                if rule_key not in self._failing_rules:
                    self._failing_rules.add(rule_key)
                    log.warning("discovery_failed", state=state, reason=exc.reason, error=str(exc))
                continue
            if rule_key in self._failing_rules:
                self._failing_rules.discard(rule_key)
                log.info("discovery_recovered", state=state)
            news: tuple[list[Event], list[TaskMemory]] = ([], [])
            for index, task_id in enumerate(listing):
                if index % _SETTLE_SLICE == 0:
                    await self._commit_news(cycle, news)
                if not self._shard.owns(task_id):
                    continue
                try:
                    info = listing.task(task_id)
                except ParseError:
                    continue
                if not rule_matches(rule, info):
                    continue
                memory = self._tracker.tasks.get(task_id)
                values = listing.poll_values(task_id)
                if memory is not None and not memory.gone and self._listed.get(task_id) == values:
                    continue
                if self.watch([task_id]):
                    found.append(task_id)
                cycle.listed[task_id] = values
                events, changed = self._take(cycle, task_id, info, sent)
                if info.state in _BULK_STATES:
                    self._reschedule(task_id, self._list_every)
                news[0].extend(events)
                if changed is not None:
                    news[1].append(changed)
            await self._commit_news(cycle, news)
        if found:
            log.info("tasks_discovered", count=len(found), ids=found[:20])
        return found

    def _absorb(
        self,
        task_id: int,
        result: BatchTaskInfo | ApiError,
        now: datetime,
        *,
        listed: bool = False,
    ) -> list[Event]:
        """Feed one answer to the tracker and reschedule the task.

        ``listed``: a list row, which says nothing of whether the task's own GET
        answers are readable again.
        """
        if isinstance(result, NotFound):
            if task_id not in self._tracker.tasks:
                # Never seen: a wrong id, or a task that does not exist yet.
                if task_id not in self._missing:
                    log.warning(
                        "watched_task_not_found",
                        task_id=task_id,
                        retry_every=self._config.idle_interval,
                    )
                self._missing[task_id] = anyio.current_time()
                self._reschedule(task_id, self._config.interval)
                return []
            self._due.pop(task_id, None)
            self._listed.pop(task_id, None)
            return self._tracker.observe_gone(task_id, now)
        if not isinstance(result, ApiError) and result.id != task_id:
            result = MalformedResponse(f"the answer is for task {result.id}, not {task_id}")
        if isinstance(result, ApiError):
            self._report_failure(task_id, result)
            self._reschedule(task_id, self._config.interval)
            return []
        self._missing.pop(task_id, None)
        if task_id in self._malformed and not listed:
            self._malformed.discard(task_id)
            log.info("task_answer_valid_again", task_id=task_id)
        self._report_anomalies(result)
        previous = self._tracker.tasks.get(task_id)
        if previous is not None and previous.info is result:
            # The very answer of last time (see AnswerMemo): as a list call showing no change.
            events = self._tracker.touch(task_id, now)
        else:
            events = self._tracker.observe(result, now)
        self._schedule_after(self._tracker.tasks[result.id], now)
        return events

    def _schedule_after(self, memory: TaskMemory, now: datetime) -> None:
        """When a task is due again, after an answer about it."""
        task_id = memory.info.id
        finished = memory.terminal_since
        if finished is None:
            self._reschedule(task_id, self._config.interval)
            return
        linger = timedelta(seconds=self._config.terminal_linger)
        confirmed = finished < now and now - finished >= linger  # seen finished twice
        if not (confirmed or finished == memory.first_seen):  # nothing to confirm then
            self._reschedule(task_id, self._config.interval)
        elif task_id in self._pinned or memory.info.state is BatchTaskState.FAILED:
            # It may run again, or be cleaned up (which ends its failure).
            self._reschedule(task_id, self._config.finished_interval)
        else:
            # A re-run shows in the active states' lists.
            self._due.pop(task_id, None)
            log.debug("task_polling_stopped", task_id=task_id, state=memory.info.state.value)

    def _reschedule(self, task_id: int, interval: float, now: float | None = None) -> None:
        """Due again within ``interval`` of ``now`` (the loop clock's, by default).

        Jitter only brings it forward, never later.
        """
        if task_id not in self._due:
            return
        factor = 1.0 - self._rng.random() * self._config.jitter
        self._due[task_id] = (anyio.current_time() if now is None else now) + interval * factor

    def _report_listing(self, state: BatchTaskState, answer: TaskListing | ApiError) -> None:
        """A list answer that cannot be read is said once (its tasks are fetched by id)."""
        if isinstance(answer, MalformedResponse):
            if state not in self._malformed_lists:
                self._malformed_lists.add(state)
                log.warning(
                    "list_answer_malformed",
                    state=state.value,
                    error=str(answer),
                    instead="fetching its tasks by id",
                )
        elif not isinstance(answer, ApiError) and state in self._malformed_lists:
            self._malformed_lists.discard(state)
            log.info("list_answer_valid_again", state=state.value)

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
