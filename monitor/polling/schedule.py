"""Who is polled when, and with which request: the poller's decisions, without I/O.

Theory of operation.  The :class:`Schedule` never sends a request, reads a
clock or logs: it is told the time (``now``, loop seconds; ``wall``, the UTC
clock detection runs on) and what the API answered, and says what to request
next.  The poller (:mod:`monitor.polling.poller`) performs what it says.

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
``$select`` asks for every field detection needs, so a row is a full
observation: a task a list shows is observed from its row at once, and only a
task that left the listed states (finished, deleted) or whose row is unusable
is fetched by id.  Tasks a list shows (and ids no list showed yet) are due
again after half an ``interval``: one request per state buys seeing each
change within an interval of it, whatever the jitter and however long a cycle
takes.  A cycle sends at most what the tenant's rate allows in that half
interval; what the budget leaves stays due.

An answer is observed only if its request was sent after the one whose answer
the task's memory holds, so a slow list never takes a task back in time.
Once a minute the poller sweeps for tasks to forget.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.config import PollConfig
from monitor.polling.shard import Shard
from monitor.superoffice.errors import ApiError, MalformedResponse
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState, ParseError, TaskListing
from monitor.tracking.memory import TaskMemory

__all__ = [
    "BULK_STATES",
    "FETCH",
    "UNCHANGED",
    "Decision",
    "Fetch",
    "Later",
    "Listings",
    "Plan",
    "Row",
    "Schedule",
    "Unchanged",
]

#: The states listed in bulk, in the order tasks go through them: lists are asked for in this
#: order, so that a task moving on while they are answered is in one of them (listed before
#: it moved, or after it arrived), never in neither.
BULK_STATES = (BatchTaskState.NEW, BatchTaskState.AQUIRED, BatchTaskState.STARTED)
#: GETs of never-seen ids per worker and cycle.
FIRST_SIGHTS_PER_WORKER = 4
#: A watched id the API never knew is fetched by id every this many idle intervals
#: (the active-state lists find it sooner once it exists).
UNKNOWN_RECHECK = 30
#: Seconds between two sweeps for tasks to forget.
SWEEP_EVERY = 60.0

#: What this cycle's list calls answered, by state.
Listings = Mapping[BatchTaskState, TaskListing | ApiError]
#: What batchmon remembers of each task (the tracker's memories).
Tasks = Mapping[int, TaskMemory]


class Unchanged:
    """A list call showed the task exactly as last time: only the stall clock runs."""


class Fetch:
    """The task left the listed states, or its row is unusable: fetch it by id."""


UNCHANGED = Unchanged()
FETCH = Fetch()


@dataclass(frozen=True, slots=True)
class Row:
    """A list row that differs from what batchmon knows: observed as it is."""

    info: BatchTaskInfo
    #: Loop time the list request was sent.
    sent: float
    #: The raw poll fields of the row, to tell the next row of the task unchanged.
    values: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Later:
    """Nothing to request for the task this cycle: it is due again ``after`` seconds on."""

    after: float


#: What the lists of a cycle say about one task.
Decision = Row | Unchanged | Fetch | Later


@dataclass(frozen=True, slots=True)
class Plan:
    """What one cycle requests first."""

    #: The due tasks the cycle is for.
    tasks: tuple[int, ...]
    #: The states to list, in lifecycle order.
    states: tuple[BatchTaskState, ...]
    #: Tasks fetched by id whatever the lists say (first sights, finished, not listed).
    singles: frozenset[int]
    #: GETs the cycle may send besides its list calls.
    budget: int


class Schedule:
    """Each watched task's deadline, and which requests a cycle makes.

    ``wants`` says whether a discovery rule wants a task a list shows (``None``:
    no rules).  ``rng`` jitters the deadlines.  ``workers`` and
    ``max_requests_per_second`` size a cycle's first sights and request budget.
    """

    def __init__(
        self,
        config: PollConfig,
        *,
        rng: random.Random,
        shard: Shard | None = None,
        wants: Callable[[BatchTaskInfo], bool] | None = None,
        workers: int = 8,
        max_requests_per_second: float = math.inf,
    ) -> None:
        self._config = config
        self._rng = rng
        self.shard = shard or Shard()
        self._wants = wants
        self._workers = workers
        self._due: dict[int, float] = {}
        #: Ids watched explicitly (configuration, run-time watches): watched for good,
        #: fetched every ``finished_interval`` once finished, looked for again once forgotten.
        self._pinned: set[int] = set()
        #: Ids the API never knew, with when they were last tried by id.
        self._missing: dict[int, float] = {}
        #: The raw poll fields each task had in the last list that showed it.
        self._listed: dict[int, tuple[object, ...]] = {}
        #: Loop time the request was sent whose answer each task's memory holds.
        self._informed: dict[int, float] = {}
        #: Tasks a list call shows, and ids no list showed yet, are due again this soon:
        #: a list costs one request whatever it holds, and half an interval keeps every
        #: change seen within one interval, however long a cycle takes.
        self.list_every = config.interval / 2
        #: Requests a cycle may send: what the tenant's rate allows in half an interval, so
        #: that a backlog of GETs (thousands of first sights) never holds up the next lists.
        self._budget = max(workers, math.floor(min(max_requests_per_second * self.list_every, 1e9)))
        self._next_sweep = -math.inf
        #: Rows the rules refused in the last cycle, by id, with their poll values: an
        #: unchanged row is not validated again to be refused again (a tenant's other
        #: tasks, thousands a cycle).  Rebuilt by each cycle, so it holds only what the
        #: last lists showed.
        self._refused: dict[int, tuple[object, ...]] = {}

    # Watching.

    @property
    def watched(self) -> frozenset[int]:
        """Ids still being polled."""
        return frozenset(self._due)

    def pinned(self, task_id: int) -> bool:
        """Whether the id is watched explicitly."""
        return task_id in self._pinned

    def watch(self, task_ids: Iterable[int], now: float, *, pinned: bool = False) -> list[int]:
        """Due at ``now`` (if not watched yet); returns the ids that were new.

        Tasks of another shard are left to the replica that owns them.
        """
        added = []
        for task_id in task_ids:
            if not self.shard.owns(task_id):
                continue
            if pinned:
                self._pinned.add(task_id)
            if task_id not in self._due:
                self._due[task_id] = now
                added.append(task_id)
        return added

    def unwatch(self, task_ids: Sequence[int]) -> None:
        """Not watched any more, not even explicitly."""
        self._pinned.difference_update(task_ids)
        self.drop(task_ids)

    def drop(self, task_ids: Iterable[int]) -> None:
        """Forget what is kept per task (pinned ids stay pinned)."""
        for task_id in task_ids:
            self._due.pop(task_id, None)
            self._listed.pop(task_id, None)
            self._informed.pop(task_id, None)
            self._missing.pop(task_id, None)

    def sizes(self) -> tuple[int, ...]:
        """How many entries each per-task table holds (they must stay bounded)."""
        tables = (self._due, self._pinned, self._missing, self._listed, self._informed)
        return tuple(len(table) for table in tables)

    # Time.

    def due_in(self, task_id: int, now: float) -> float | None:
        """Seconds until a task's next poll (``None``: not polled any more)."""
        at = self._due.get(task_id)
        return None if at is None else max(at - now, 0.0)

    def due(self, now: float) -> list[int]:
        """The tasks a cycle at ``now`` takes.

        What falls due soon too: one cycle (and one list call per state) per half
        interval, not one tiny cycle per jittered deadline.
        """
        horizon = now + self.list_every
        return [task_id for task_id, at in self._due.items() if at <= horizon]

    def sweep_due(self, now: float) -> bool:
        """Whether to sweep for tasks to forget at ``now`` (then not again for a minute)."""
        if now < self._next_sweep:
            return False
        self._next_sweep = now + SWEEP_EVERY
        return True

    def wake_at(self, now: float) -> float:
        """When the next cycle or sweep is due, for a loop awake at ``now``."""
        upcoming = min(self._due.values(), default=now + self._config.interval)
        return min(upcoming, self._next_sweep)

    def discovery_delay(self, every: float) -> float:
        """Seconds until a discovery rule run ``every`` seconds runs again (jittered)."""
        jitter = self._config.jitter
        return every * (1.0 + self._rng.uniform(-jitter, jitter))

    def reschedule(self, task_id: int, interval: float, now: float) -> None:
        """Due again within ``interval`` of ``now``; jitter only brings it forward."""
        if task_id not in self._due:
            return
        factor = 1.0 - self._rng.random() * self._config.jitter
        self._due[task_id] = now + interval * factor

    # A cycle.

    def plan(self, task_ids: Sequence[int], tasks: Tasks, now: float) -> Plan:
        """Which states to list this cycle, and which tasks need a GET whatever the lists say.

        A state is listed when at least ``bulk_threshold`` due tasks were last
        seen in it; every active state is listed while some watched id was
        never seen (a new task appears in those lists first).  A task never
        tried, finished, or in a state not listed is fetched by id.
        """
        by_state: dict[BatchTaskState, list[int]] = defaultdict(list)
        singles: set[int] = set()
        unknown = False
        # First GETs of ids never seen are spread over cycles, so that thousands of new
        # watches never hold up the tasks already running; the lists find active ones first.
        first_sights = FIRST_SIGHTS_PER_WORKER * self._workers
        recheck = UNKNOWN_RECHECK * self._config.idle_interval
        for task_id in task_ids:
            memory = tasks.get(task_id)
            if memory is None:
                last_try = self._missing.get(task_id)
                if (last_try is None or now - last_try >= recheck) and first_sights > 0:
                    singles.add(task_id)
                    first_sights -= 1
                else:
                    unknown = True
            elif not memory.gone and memory.info.state in BULK_STATES:
                by_state[memory.info.state].append(task_id)
            else:
                singles.add(task_id)
        states = {s for s, ids in by_state.items() if len(ids) >= self._config.bulk_threshold}
        if unknown:
            states.update(BULK_STATES)
        for state, ids in by_state.items():
            if state not in states:
                singles.update(ids)
        return Plan(
            tasks=tuple(task_ids),
            states=tuple(s for s in BULK_STATES if s in states),
            singles=frozenset(singles),
            budget=self._budget - len(states),
        )

    def covered(self, plan: Plan, listings: Listings, tasks: Tasks) -> list[int]:
        """The due tasks plus every task the lists of this cycle show or should show.

        That is every watched task last seen in a listed state (present or not:
        one missing finished or vanished), every remembered task a list shows
        (a finished one running again), and every row a discovery rule wants.
        """
        states = set(listings)
        if not states:
            return list(plan.tasks)
        listed_all = states >= set(BULK_STATES)
        covered = dict.fromkeys(plan.tasks)
        for task_id in self._due:
            memory = tasks.get(task_id)
            if memory is None:
                if listed_all and task_id in self._missing:
                    covered[task_id] = None
            elif not memory.gone and memory.info.state in states:
                covered[task_id] = None
        refused: dict[int, tuple[object, ...]] = {}
        for listing in listings.values():
            if isinstance(listing, ApiError):
                continue
            for task_id in listing:
                if task_id not in covered and (
                    task_id in self._due
                    or task_id in tasks
                    or self._wanted(listing, task_id, refused)
                ):
                    covered[task_id] = None
        self._refused = refused
        return list(covered)

    def _wanted(
        self, listing: TaskListing, task_id: int, refused: dict[int, tuple[object, ...]]
    ) -> bool:
        """Whether a discovery rule wants a task a list shows (this shard's only).

        A row refused last cycle and unchanged is refused again without being read;
        ``refused`` collects this cycle's refusals.
        """
        if self._wants is None or not self.shard.owns(task_id):
            return False
        values = listing.poll_values(task_id)
        if self._refused.get(task_id) == values:
            refused[task_id] = values
            return False
        try:
            wanted = self._wants(listing.task(task_id))
        except ParseError:
            wanted = False
        if not wanted:
            refused[task_id] = values
        return wanted

    def decide(
        self, task_id: int, listings: Listings, sent: Mapping[BatchTaskState, float], tasks: Tasks
    ) -> Decision:
        """What the lists (sent at ``sent``, by state) say about a task."""
        memory = tasks.get(task_id)
        known = memory is not None and not memory.gone
        for state, listing in listings.items():
            if isinstance(listing, ApiError) or task_id not in listing:
                continue
            values = listing.poll_values(task_id)
            if known and self._listed.get(task_id) == values:
                return UNCHANGED
            try:
                row = listing.task(task_id)
            except ParseError:
                # One odd row must not blind batchmon to the task: its own GET says.
                return FETCH if known else Later(self.list_every)
            return Row(row, sent[state], values)
        if memory is None or memory.gone or task_id not in self._due:
            return Later(self.list_every)  # not there yet
        listed = listings.get(memory.info.state)
        if isinstance(listed, ApiError) and not isinstance(listed, MalformedResponse):
            # The API is failing: keep the last known state, no more requests.
            return Later(self._config.interval)
        # It left the listed states (finished, deleted), or its list answer was unusable
        # (one odd task must not blind batchmon to the others): its own GET says.
        return FETCH

    def discovered(
        self,
        task_id: int,
        listing: TaskListing,
        sent: float,
        tasks: Tasks,
        matches: Callable[[BatchTaskInfo], bool],
    ) -> Row | None:
        """The row of a discovery rule's list to observe (``None``: none to take).

        A row is taken if this shard owns the task, the row is readable, the
        rule ``matches`` it, and batchmon does not know it as it is.
        """
        if not self.shard.owns(task_id):
            return None
        try:
            info = listing.task(task_id)
        except ParseError:
            return None
        if not matches(info):
            return None
        values = listing.poll_values(task_id)
        memory = tasks.get(task_id)
        if memory is not None and not memory.gone and self._listed.get(task_id) == values:
            return None
        return Row(info, sent, values)

    def blind(self, plan: Plan, fetched: int, tasks: Tasks) -> list[int]:
        """The GETs no list answers for, once ``fetched`` GETs went out for the lists' news.

        Known tasks before first sights; what the budget leaves stays due.
        """
        ordered = sorted(
            (task_id for task_id in plan.tasks if task_id in plan.singles),
            key=lambda task_id: task_id not in tasks,
        )
        return ordered[: max(plan.budget - fetched, 0)]

    # Answers.

    def accepts(self, task_id: int, sent: float) -> bool:
        """Whether an answer to a request sent at ``sent`` is newer than what is known."""
        return sent >= self._informed.get(task_id, -math.inf)

    def informed(self, task_id: int, sent: float, values: tuple[object, ...] | None) -> None:
        """The task's memory now holds the answer to a request sent at ``sent``.

        ``values``: the row's poll fields, if a list row told it; after a GET the
        next row is compared with the memory afresh.
        """
        self._informed[task_id] = sent
        if values is None:
            self._listed.pop(task_id, None)
        else:
            self._listed[task_id] = values

    def listed(self, info: BatchTaskInfo, now: float) -> None:
        """A list row showed the task: in an active state, the lists watch it from now on."""
        if info.state in BULK_STATES:
            self.reschedule(info.id, self.list_every, now)

    def failed(self, task_id: int, now: float) -> None:
        """A request about the task failed: its last known state stands until ``interval``."""
        self.reschedule(task_id, self._config.interval, now)

    def unknown(self, task_id: int, now: float) -> bool:
        """A 404 for an id never seen; returns whether it is the first one."""
        first = task_id not in self._missing
        self._missing[task_id] = now
        self.reschedule(task_id, self._config.interval, now)
        return first

    def gone(self, task_id: int) -> None:
        """A 404 for a task batchmon knew: it is polled no more."""
        self._due.pop(task_id, None)
        self._listed.pop(task_id, None)

    def answered(self, memory: TaskMemory, now: float, wall: datetime) -> bool:
        """When the task is due again, after an answer about it that left ``memory``.

        Returns whether its polling stopped (finished and confirmed, not pinned,
        not failed: a re-run shows in the active states' lists).
        """
        task_id = memory.info.id
        self._missing.pop(task_id, None)
        finished = memory.terminal_since
        if finished is None:
            self.reschedule(task_id, self._config.interval, now)
            return False
        linger = timedelta(seconds=self._config.terminal_linger)
        confirmed = finished < wall and wall - finished >= linger  # seen finished twice
        if not (confirmed or finished == memory.first_seen):  # nothing to confirm then
            self.reschedule(task_id, self._config.interval, now)
            return False
        if task_id in self._pinned or memory.info.state is BatchTaskState.FAILED:
            # It may run again, or be cleaned up (which ends its failure).
            self.reschedule(task_id, self._config.finished_interval, now)
            return False
        self._due.pop(task_id, None)
        return True
