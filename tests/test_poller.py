"""The poller against the simulator over loopback: lifecycle, 404, faults, health."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from monitor.daemon import rules_from
from monitor.polling import Poller, Shard
from monitor.ratelimit import RateLimiter
from monitor.simulator import Scenario, SimTask, Simulator
from monitor.superoffice.auth import auth_from_config
from monitor.superoffice.client import SuperOfficeClient, open_session
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.detect import UNWATCHED
from monitor.tracking.events import EndReason, Event, EventType
from monitor.tracking.memory import TaskMemory
from monitor.tracking.tracker import Tracker
from tests.conftest import ManualClock, make_config


class Recorder:
    """Collects what the poller commits, and how many requests the simulator had by then."""

    def __init__(self, simulator: Simulator) -> None:
        self.events: list[Event] = []
        self.memories: list[TaskMemory] = []
        #: Per commit: its events' types, and the simulator's request count when it ended.
        self.commits: list[tuple[list[EventType], int]] = []
        #: Seconds each commit takes (a store that is slow to write).
        self.commit_takes = 0.0
        self._simulator = simulator

    async def __call__(self, events: Sequence[Event], memories: Sequence[TaskMemory]) -> None:
        if self.commit_takes:
            await anyio.sleep(self.commit_takes)
        self.events.extend(events)
        self.memories.extend(memories)
        self.commits.append(([e.type for e in events], len(self._simulator.requests)))

    def types(self) -> list[EventType]:
        return [e.type for e in self.events]


class MovesOnWhileListed(Scenario):
    """One task that appears as New to the first request after :meth:`arrive`, Aquired after."""

    def __init__(self, task_id: int, *, start: datetime) -> None:
        super().__init__((), start=start)
        self._task_id = task_id
        self._answered: int | None = None

    @property
    def task_ids(self) -> tuple[int, ...]:
        return (self._task_id,)

    def arrive(self) -> None:
        """The task exists from the next request on."""
        self._answered = 0

    def apply(self, tasks: dict[int, SimTask], now: datetime) -> None:
        if self._answered is None:
            return
        self._answered += 1
        state = BatchTaskState.NEW if self._answered == 1 else BatchTaskState.AQUIRED
        task = tasks.setdefault(self._task_id, SimTask(id=self._task_id, created=now))
        task.state = state


@asynccontextmanager
async def polling(
    simulator: Simulator,
    clock: ManualClock,
    ids: list[int],
    shard: Shard | None = None,
    superoffice: dict[str, Any] | None = None,
    watch: dict[str, Any] | None = None,
    **poll: Any,
) -> AsyncIterator[tuple[Poller, Recorder]]:
    """A poller watching ``ids`` on the simulator, publishing into a recorder.

    ``ids`` are watched as ``watch.ids`` are (pinned); call ``poller.watch`` for tasks
    watched as discovered ones are.
    """
    config = make_config(
        simulator.url,
        watch={"ids": ids, **(watch or {})},
        poll={"terminal_linger": "0s", "api_down_after": 2, **poll},
        superoffice=superoffice or {},
    )
    recorder = Recorder(simulator)
    async with open_session(config.superoffice) as session:
        client = SuperOfficeClient(
            session, config.superoffice, auth_from_config(config.superoffice.auth)
        )
        poller = Poller(
            client,
            Tracker(rules_from(config.poll, config.watch)),
            recorder,
            config.poll,
            clock=clock,
            shard=shard,
            workers=config.superoffice.max_concurrency,
        )
        poller.watch(ids, pinned=True)
        yield poller, recorder


@pytest.fixture(name="simulator")
async def _simulator(clock: ManualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as simulator:
        yield simulator


class TestLifecycle:
    """A task's life as the poller reports it."""

    async def test_from_new_to_failed(self, simulator: Simulator, clock: ManualClock) -> None:
        """New, Started, progress and Failed each give their event, in order."""
        task = simulator.add_task(name="Import contacts", state=BatchTaskState.NEW)
        async with polling(simulator, clock, [task.id]) as (poller, recorder):
            steps: list[dict[str, Any]] = [
                {},
                {"state": BatchTaskState.STARTED, "start_count": 1, "last_started": clock.now},
                {"progress": 50, "progress_description": "Importing 500/1000"},
                {"state": BatchTaskState.FAILED, "result": "Failed: duplicate key"},
            ]
            for fields in steps:
                clock.advance(60)
                simulator.set_task(task.id, **fields)
                await poller.poll_once()
            confirm = poller.due_in(task.id)
            clock.advance(60)
            await poller.poll_once()

        assert confirm is not None
        assert confirm <= 60, "a finished task is confirmed once, at interval"
        assert {task.id} == poller.watched, "watched by id: then every finished_interval"
        assert poller.due_in(task.id) == pytest.approx(600, rel=0.11)
        assert [
            EventType.TASK_DISCOVERED,
            EventType.TASK_STARTED,
            EventType.TASK_PROGRESS,
            EventType.TASK_FAILED,
        ] == recorder.types()
        failed = recorder.events[-1]
        assert failed.task is not None
        assert ("Import contacts", "Failed: duplicate key") == (
            failed.task.name,
            failed.task.result,
        )

    async def test_memory_is_committed_only_when_it_changed(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """A poll that changes nothing writes nothing; a change writes the memory with its events."""
        task = simulator.add_task(state=BatchTaskState.STARTED, progress=10)
        async with polling(simulator, clock, [task.id]) as (poller, recorder):
            await poller.poll_once()
            await poller.poll_once()
            simulator.set_task(task.id, progress=12)
            await poller.poll_once()

        assert [10, 12] == [m.info.progress_percent for m in recorder.memories]

    async def test_terminal_linger(self, simulator: Simulator, clock: ManualClock) -> None:
        """A discovered task that finishes is polled for ``terminal_linger`` more, then dropped."""
        task = simulator.add_task(state=BatchTaskState.STARTED)
        async with polling(simulator, clock, [], terminal_linger="30s") as (poller, _):
            poller.watch([task.id])
            await poller.poll_once()
            simulator.set_task(task.id, state=BatchTaskState.SUCCEEDED)
            clock.advance(1)
            await poller.poll_once()
            clock.advance(10)
            await poller.poll_once()
            assert {task.id} == poller.watched
            clock.advance(25)
            await poller.poll_once()
            assert frozenset() == poller.watched
            assert task.id in poller._tracker.tasks, "still remembered until forget_after"

    async def test_what_is_kept_per_task_goes_with_it(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """Unwatched or forgotten, a task leaves nothing behind in the poller (its state is
        bounded by the tasks watched)."""
        odd = simulator.add_task(state=BatchTaskState.STARTED, progress=150)
        done = simulator.add_task(state=BatchTaskState.SUCCEEDED)
        async with polling(simulator, clock, [odd.id], watch={"forget_after": "1h"}) as (poller, _):
            poller.watch([done.id, 999])
            await poller.poll_once()
            simulator.fail_next(4, 200, body="<html>Login</html>")  # 3 lists, then its GET
            await poller.poll_once()
            kept = (poller._schedule.sizes(), poller._reports.sizes())
            await poller.unwatch([odd.id, 999])
            clock.advance(3601)
            forgotten = await poller.sweep()

        assert ((2, 1, 1, 0, 2), (1, 1)) == kept, "malformed and anomalous"
        assert [done.id] == forgotten
        assert ((0, 0, 0, 0, 0), (0, 0)) == (poller._schedule.sizes(), poller._reports.sizes())

    async def test_unwatching_a_failed_task_ends_its_condition(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """A watch removed from a failed task: it is forgotten, and its failure ends
        (``task.expired``, saying why), so no alert or reminder outlives the watch."""
        task = simulator.add_task(state=BatchTaskState.FAILED)
        async with polling(simulator, clock, [task.id]) as (poller, recorder):
            await poller.poll_once()
            await poller.unwatch([task.id])

        assert [
            EventType.TASK_DISCOVERED,
            EventType.TASK_FAILED,
            EventType.TASK_EXPIRED,
        ] == recorder.types()
        ended = recorder.events[-1]
        assert (EndReason.EXPIRED, UNWATCHED) == (ended.reason, ended.message)
        assert task.id not in poller._tracker.tasks
        assert [] == poller._tracker.firing()

    async def test_first_seen_finished_needs_no_confirmation(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """A discovered task first seen finished is not fetched again; one watched by id is,
        every ``finished_interval``."""
        done = simulator.add_task(state=BatchTaskState.SUCCEEDED)
        pinned = simulator.add_task(state=BatchTaskState.SUCCEEDED)
        async with polling(simulator, clock, [pinned.id], jitter=0) as (poller, _):
            poller.watch([done.id])
            await poller.poll_once()

        assert {pinned.id} == poller.watched
        assert 600 == pytest.approx(poller.due_in(pinned.id), abs=0.5)

    async def test_gone(self, simulator: Simulator, clock: ManualClock) -> None:
        """A 404 for a running task gives task.gone once and stops its polling."""
        task = simulator.add_task(state=BatchTaskState.STARTED)
        async with polling(simulator, clock, [task.id]) as (poller, recorder):
            await poller.poll_once()
            simulator.delete_task(task.id)
            await poller.poll_once()
            requests = len(simulator.requests)
            await poller.poll_once()

        assert [
            EventType.TASK_DISCOVERED,
            EventType.TASK_STARTED,
            EventType.TASK_GONE,
        ] == recorder.types()
        assert requests == len(simulator.requests)

    async def test_removed_after_it_finished(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """A failed task watched by id is fetched every ``finished_interval``; deleted, it is
        ``task.removed`` (SuperOffice's clean-up), which ends its failure: no ``task.gone``."""
        task = simulator.add_task(state=BatchTaskState.STARTED)
        async with polling(simulator, clock, [task.id]) as (poller, recorder):
            await poller.poll_once()
            simulator.set_task(task.id, state=BatchTaskState.FAILED, result="Failed: no lines")
            clock.advance(5)
            await poller.poll_once()
            simulator.delete_task(task.id)
            clock.advance(600)
            await poller.poll_once()
            firing = poller._tracker.firing()

        assert [
            EventType.TASK_DISCOVERED,
            EventType.TASK_STARTED,
            EventType.TASK_FAILED,
            EventType.TASK_REMOVED,
        ] == recorder.types()
        assert EndReason.REMOVED is recorder.events[-1].reason
        assert [] == firing

    async def test_rerun_of_a_finished_task_watched_by_id(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """Failed, then run again and succeeded: restarted and started are seen, and the
        failure's condition ends; the task is polled as an active one again."""
        task = simulator.add_task(state=BatchTaskState.STARTED, start_count=1)
        async with polling(simulator, clock, [task.id], jitter=0) as (poller, recorder):
            await poller.poll_once()
            simulator.set_task(task.id, state=BatchTaskState.FAILED)
            clock.advance(5)
            await poller.poll_once()
            clock.advance(5)
            await poller.poll_once()  # confirmed: due every finished_interval now
            failing = [e.type for e in poller._tracker.firing()]
            clock.advance(600)
            simulator.set_task(
                task.id,
                state=BatchTaskState.STARTED,
                start_count=2,
                last_started=clock.now,
                progress=0,
            )
            await poller.poll_once()
            active_due = poller.due_in(task.id)
            simulator.set_task(task.id, state=BatchTaskState.SUCCEEDED, progress=100)
            clock.advance(5)
            await poller.poll_once()
            firing = poller._tracker.firing()

        assert [EventType.TASK_FAILED] == failing
        assert [
            EventType.TASK_DISCOVERED,
            EventType.TASK_STARTED,
            EventType.TASK_FAILED,
            EventType.TASK_RESTARTED,
            EventType.TASK_STARTED,
            EventType.TASK_SUCCEEDED,
        ] == recorder.types()
        assert EndReason.RESTARTED is recorder.events[3].reason
        assert active_due == pytest.approx(5, abs=0.5)
        assert [] == firing


class TestFaults:
    """Bad answers and outages."""

    async def test_malformed_answer_keeps_state_and_logs_once(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """A non-JSON 200 is logged once per task; the task keeps its last state."""
        task = simulator.add_task(state=BatchTaskState.STARTED, progress=40)
        async with polling(simulator, clock, [task.id]) as (poller, recorder):
            await poller.poll_once()
            simulator.fail_next(2, 200, body="<html>Login</html>")
            with capture_logs() as logs:
                await poller.poll_once()
                await poller.poll_once()
            memory = poller._tracker.tasks[task.id]

        assert ["task_answer_malformed"] == [
            e["event"] for e in logs if e["log_level"] == "warning"
        ]
        assert (BatchTaskState.STARTED, 40) == (memory.info.state, memory.info.progress_percent)
        assert [EventType.TASK_DISCOVERED, EventType.TASK_STARTED] == recorder.types()

    async def test_anomalies_logged_once(self, simulator: Simulator, clock: ManualClock) -> None:
        """An out-of-range percent is flagged in the log once, not on every poll."""
        task = simulator.add_task(state=BatchTaskState.STARTED, progress=150)
        async with polling(simulator, clock, [task.id]) as (poller, _):
            with capture_logs() as logs:
                for _ in range(3):
                    await poller.poll_once()

        flagged = [e for e in logs if e["event"] == "task_answer_anomalous"]
        assert 1 == len(flagged)
        assert ["ProgressPercent 150 is outside 0..100"] == flagged[0]["anomalies"]

    async def test_outage_is_one_down_and_one_recovery(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """Many failed cycles give one api_down; the first success one api_recovered."""
        ids = [simulator.add_task(state=BatchTaskState.STARTED).id for _ in range(3)]
        async with polling(simulator, clock, ids, bulk_threshold=10) as (poller, recorder):
            await poller.poll_once()
            simulator.fail_next(3 * 10, 503)
            for _ in range(10):
                clock.advance(60)
                await poller.poll_once()
            clock.advance(60)
            await poller.poll_once()

        monitor_events = [t for t in recorder.types() if t.value.startswith("monitor.")]
        assert [EventType.MONITOR_API_DOWN, EventType.MONITOR_API_RECOVERED] == monitor_events
        assert poller.health.up

    async def test_unknown_id_is_retried_not_gone(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """A watched id the API never knew is logged once and kept; it is found once it exists."""
        async with polling(simulator, clock, [999]) as (poller, recorder):
            with capture_logs() as logs:
                await poller.poll_once()
                await poller.poll_once()
            simulator.add_task(id=999, state=BatchTaskState.NEW)
            await poller.poll_once()

        assert ["watched_task_not_found"] == [e["event"] for e in logs]
        assert poller.health.up, "a 404 proves the API works"
        assert {999} == poller.watched
        assert [EventType.TASK_DISCOVERED] == recorder.types()


class TestSchedule:
    """The loop itself."""

    async def test_run_polls_on_its_interval(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """run() keeps polling a task about every ``interval`` seconds."""
        task = simulator.add_task(state=BatchTaskState.STARTED)
        async with polling(simulator, clock, [task.id], interval="0.1s") as (poller, _):
            with anyio.move_on_after(0.65):
                await poller.run()

        assert 4 <= poller.cycles <= 8

    async def test_rate_limiter_spaces_callers(self) -> None:
        """Five callers at 50/s take at least four intervals."""
        limiter = RateLimiter(50)
        started = anyio.current_time()
        for _ in range(5):
            await limiter.acquire()

        assert anyio.current_time() - started >= 4 * 0.02 - 0.005

    async def test_rate_limiter_lets_a_burst_through_then_keeps_the_rate(self) -> None:
        """With a burst of 3 at 20/s: three go at once, the next three one interval apart."""
        limiter = RateLimiter(20, burst=3)
        started = anyio.current_time()
        times = []
        for _ in range(6):
            await limiter.acquire()
            times.append(anyio.current_time() - started)

        assert times[2] < 0.02, "the burst did not wait"
        assert times[3] >= 0.05 - 0.005
        assert times[5] >= 3 * 0.05 - 0.005
        with pytest.raises(ValueError, match="burst"):
            RateLimiter(20, burst=0)


class TestRequestBudget:
    """Adaptive schedules, bulk list calls and discovery spend few requests."""

    async def test_intervals_follow_the_state(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """Queued tasks are due after ``interval`` as running ones are (a short task must not
        finish unseen); ``idle_interval`` is for ids the API does not know."""
        started = simulator.add_task(state=BatchTaskState.STARTED)
        queued = simulator.add_task(state=BatchTaskState.NEW)
        async with polling(
            simulator, clock, [started.id, queued.id], interval="5s", idle_interval="60s", jitter=0
        ) as (poller, _):
            await poller.poll_once()
            due = {task_id: poller.due_in(task_id) for task_id in (started.id, queued.id)}

        assert due[started.id] == pytest.approx(5, abs=0.5)
        assert due[queued.id] == pytest.approx(5, abs=0.5)

    async def test_one_list_call_replaces_many_gets(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """1,000 watched, 100 running: a cycle costs 1 list call + a GET per state change.

        Per-id polling would need 100 requests per cycle.  Progress read from the
        list needs no GET; a task that failed is fetched in full (its result).
        """
        running = [
            simulator.add_task(state=BatchTaskState.STARTED, progress=10).id for _ in range(100)
        ]
        done = [simulator.add_task(state=BatchTaskState.SUCCEEDED).id for _ in range(900)]
        async with polling(simulator, clock, []) as (poller, recorder):
            poller.watch(running + done)  # as discovery watches them
            # First sight of each task (spread over cycles); the finished ones need no
            # confirmation and are dropped; the running ones are found by the lists meanwhile.
            cycles = 0
            while poller.watched != set(running):
                await poller.poll_once()
                clock.advance(5)
                cycles += 1
            gets = sum(r.startswith("GET") for r in simulator.requests)
            assert cycles < 100
            assert gets <= 1000, "at most one GET per task, no confirmation of first sights"
            for task_id in running[:10]:
                simulator.set_task(task_id, progress=50)
            for task_id in running[10:15]:
                simulator.set_task(task_id, state=BatchTaskState.FAILED, result="Failed: disk full")
            before = len(simulator.requests)
            clock.advance(5)
            await poller.poll_once()

        per_id = len(running)
        ours = len(simulator.requests) - before
        assert 1 + 5 == ours == poller.last_cycle_requests, f"{ours} requests instead of {per_id}"
        kinds = [e.type for e in recorder.events]
        assert 10 == kinds.count(EventType.TASK_PROGRESS)
        failed = [e for e in recorder.events if e.type is EventType.TASK_FAILED]
        assert ["Failed: disk full"] * 5 == [e.task.result if e.task else None for e in failed]

    async def test_news_is_committed_before_the_blind_gets(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """The GETs of tasks no list covers wait until what the lists showed moving is committed.

        They would compete with that commit and its delivery for the process; they carry
        nothing urgent (first sights, confirmations of finished tasks).
        """
        running = [simulator.add_task(state=BatchTaskState.STARTED).id for _ in range(20)]
        finished = [simulator.add_task(state=BatchTaskState.SUCCEEDED).id for _ in range(4)]
        async with polling(simulator, clock, running) as (poller, recorder):
            for _ in range(10):  # until the lists cover every running task
                await poller.poll_once()
                clock.advance(5)
            assert 20 == recorder.types().count(EventType.TASK_DISCOVERED)
            for task_id in running[:3]:
                simulator.set_task(task_id, state=BatchTaskState.FAILED, result="Failed: disk full")
            poller.watch(finished)  # first sights: GETs no list answers for
            recorder.commit_takes = 0.05
            before = len(recorder.commits)
            clock.advance(5)
            await poller.poll_once()

        news = [seen for types, seen in recorder.commits[before:] if EventType.TASK_FAILED in types]
        assert 3 == sum(t.count(EventType.TASK_FAILED) for t, _ in recorder.commits[before:])
        blind = {f"GET /api/v1/BatchTask/{task_id}" for task_id in finished}
        assert news
        assert all(blind.isdisjoint(simulator.requests[:seen]) for seen in news)
        assert blind <= set(simulator.requests), "and then they are made"

    async def test_a_task_moving_on_while_listed_is_in_one_list(self, clock: ManualClock) -> None:
        """The lists go out in lifecycle order: a new task that moves on between them is found.

        Listed the other way round (Aquired, then New), a task that was New for the first list
        and Aquired for the second would be in neither, and found a cycle later.
        """
        scenario = MovesOnWhileListed(900, start=clock.now)
        async with (
            Simulator(scenario, clock=clock) as simulator,
            polling(simulator, clock, [900], superoffice={"max_concurrency": 1}) as (
                poller,
                recorder,
            ),
        ):
            await poller.poll_once()  # a 404: from now on the id is looked for in the lists
            scenario.arrive()
            clock.advance(5)
            await poller.poll_once()

        lists = [r for r in simulator.requests if "AndState" in r]
        assert 3 == len(lists), "New, Aquired and Started were listed"
        assert [EventType.TASK_DISCOVERED] == recorder.types()

    async def test_unchanged_tasks_still_stall(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """Tasks the list shows unchanged are not parsed again, yet their stall clock runs."""
        ids = [simulator.add_task(state=BatchTaskState.STARTED, progress=10).id for _ in range(5)]
        async with polling(simulator, clock, ids, stall_after="10m") as (poller, recorder):
            await poller.poll_once()
            for _ in range(12):
                clock.advance(60)
                await poller.poll_once()

        assert 5 == [e.type for e in recorder.events].count(EventType.TASK_STALLED)

    async def test_an_unknown_id_is_found_by_the_lists(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """A watched id that does not exist yet costs list calls, not a GET per cycle."""
        async with polling(simulator, clock, [4242]) as (poller, recorder):
            await poller.poll_once()  # 404: the API does not know it yet
            gets_before = sum(r.startswith("GET") for r in simulator.requests)
            for _ in range(3):
                clock.advance(5)
                await poller.poll_once()
            gets_while_missing = sum(r.startswith("GET") for r in simulator.requests) - gets_before
            simulator.add_task(id=4242, name="Late", state=BatchTaskState.NEW)
            clock.advance(5)
            await poller.poll_once()

        assert 0 == gets_while_missing
        assert [EventType.TASK_DISCOVERED] == recorder.types()

    async def test_bulk_call_failure_counts_for_each_task(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """When the list call fails, its tasks keep their state and the cycle counts as failed."""
        ids = [simulator.add_task(state=BatchTaskState.STARTED).id for _ in range(3)]
        async with polling(simulator, clock, ids, api_down_after=1) as (poller, recorder):
            await poller.poll_once()
            simulator.fail_next(1, 503)
            await poller.poll_once()

        assert [EventType.MONITOR_API_DOWN] == [
            t for t in recorder.types() if t.value.startswith("monitor.")
        ]
        assert set(ids) == poller.watched

    async def test_discovery_watches_matching_tasks(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """A rule watches the tasks in its states whose names match, once."""
        export = simulator.add_task(name="Export contacts", state=BatchTaskState.STARTED)
        queued = simulator.add_task(name="Export sales", state=BatchTaskState.NEW)
        simulator.add_task(name="Import", state=BatchTaskState.STARTED)
        simulator.add_task(name="Export old", state=BatchTaskState.SUCCEEDED)
        rule = make_config(simulator.url, watch={"discover": [{"name": "Export*"}]}).watch.discover[
            0
        ]
        async with polling(simulator, clock, []) as (poller, recorder):
            first = await poller.discover(rule)
            second = await poller.discover(rule)
            requests = list(simulator.requests)
            await poller.poll_once()

        assert [export.id, queued.id] == sorted(first)
        assert [] == second
        assert not any(r.startswith("GET") for r in requests), "observed from the list rows"
        assert [
            (export.id, EventType.TASK_DISCOVERED),
            (export.id, EventType.TASK_STARTED),
            (queued.id, EventType.TASK_DISCOVERED),
        ] == sorted((e.task_id or 0, e.type) for e in recorder.events)
        started = next(e for e in recorder.events if e.type is EventType.TASK_STARTED)
        assert started.first_seen


class TestShard:
    """``--shard k/N`` (k = 1 … N): each task belongs to exactly one replica."""

    def test_shards_partition_the_tasks_evenly(self) -> None:
        """Every id is owned by exactly one of N shards, and shards get similar shares."""
        shards = [Shard(k, 3) for k in (1, 2, 3)]
        owners = [[s.owns(task_id) for s in shards].count(True) for task_id in range(1, 3001)]
        shares = [sum(s.owns(task_id) for task_id in range(1, 3001)) for s in shards]

        assert {1} == set(owners)
        assert all(900 < share < 1100 for share in shares), shares

    def test_hashmod_matches_prometheus(self) -> None:
        """Shard k of N owns the ids whose Prometheus hashmod (low 64 bits of the MD5,
        big-endian, modulo N) is k - 1."""
        digest = hashlib.md5(b"212").digest()
        expected = int.from_bytes(digest[8:], "big") % 4

        assert [k == expected + 1 for k in (1, 2, 3, 4)] == [
            Shard(k, 4).owns(212) for k in (1, 2, 3, 4)
        ]

    @pytest.mark.parametrize(
        ("text", "number", "count"), [("1/1", 1, 1), ("1/2", 1, 2), ("2/2", 2, 2), (" 3/7 ", 3, 7)]
    )
    def test_parse_and_str(self, text: str, number: int, count: int) -> None:
        """``K/N`` reads as written in the README and prometheus.yml, and prints back so."""
        shard = Shard.parse(text)

        assert (number, count) == (shard.number, shard.count)
        assert text.strip() == str(shard)

    @pytest.mark.parametrize(
        "text", ["0/2", "3/2", "-1/2", "1/0", "0/0", "2", "a/b", "1/2/3", "٢/٢"]
    )
    def test_invalid(self, text: str) -> None:
        """K must be in 1..N, both plain digits."""
        with pytest.raises(ValueError, match=r"expected K/N with 1 <= K <= N \(e.g. 1/2 and 2/2\)"):
            Shard.parse(text)

    async def test_poller_watches_only_its_shard(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """A poller of shard 1/2 takes only the ids that hash to it."""
        async with polling(simulator, clock, [], shard=Shard(1, 2)) as (poller, _):
            added = poller.watch(range(1, 101))

        assert 30 < len(added) < 70
        assert all(Shard(1, 2).owns(task_id) for task_id in added)


class TestAuthFailure:
    """Credentials the API refuses even after renewal."""

    async def test_auth_failed_once_and_not_an_outage(
        self, simulator: Simulator, clock: ManualClock
    ) -> None:
        """Refused credentials give one monitor.auth_failed, never api_down; success clears it."""
        task = simulator.add_task(state=BatchTaskState.STARTED)
        async with polling(simulator, clock, [task.id], api_down_after=1) as (poller, recorder):
            simulator.fail_next(5, 401)
            for _ in range(5):
                clock.advance(60)
                await poller.poll_once()
            failed_state = (poller.health.auth_failed, poller.health.up)
            clock.advance(60)
            await poller.poll_once()

        monitor_events = [t for t in recorder.types() if t.value.startswith("monitor.")]
        assert [EventType.MONITOR_AUTH_FAILED] == monitor_events
        assert (True, False) == failed_state
        assert (False, True) == (poller.health.auth_failed, poller.health.up)
        auth = next(e for e in recorder.events if e.type is EventType.MONITOR_AUTH_FAILED)
        assert "rejected the credentials" in (auth.message or "")
