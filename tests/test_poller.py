"""The poller against the simulator over loopback: lifecycle, 404, faults, health."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from monitor.daemon import rules_from
from monitor.poller import Poller
from monitor.ratelimit import RateLimiter
from monitor.simulator import Simulator
from monitor.superoffice.auth import auth_from_config
from monitor.superoffice.client import SuperOfficeClient, open_session
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import TaskMemory
from monitor.tracking.tracker import Tracker
from tests.conftest import ManualClock, make_config


class Recorder:
    """Collects what the poller commits."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.memories: list[TaskMemory] = []

    async def __call__(self, events: Sequence[Event], memories: Sequence[TaskMemory]) -> None:
        self.events.extend(events)
        self.memories.extend(memories)

    def types(self) -> list[EventType]:
        return [e.type for e in self.events]


@asynccontextmanager
async def polling(
    simulator: Simulator, clock: ManualClock, ids: list[int], **poll: Any
) -> AsyncIterator[tuple[Poller, Recorder]]:
    """A poller watching ``ids`` on the simulator, publishing into a recorder."""
    config = make_config(
        simulator.url,
        watch={"ids": ids},
        poll={"terminal_linger": "0s", "api_down_after": 2, **poll},
    )
    recorder = Recorder()
    async with open_session(config.superoffice) as session:
        client = SuperOfficeClient(
            session, config.superoffice, auth_from_config(config.superoffice.auth)
        )
        poller = Poller(
            client,
            Tracker(rules_from(config.poll)),
            recorder,
            config.poll,
            max_concurrency=4,
            max_requests_per_second=1000,
            clock=clock,
        )
        poller.watch(ids)
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
            steps = [
                {},
                {"state": BatchTaskState.STARTED, "start_count": 1, "last_started": clock.now},
                {"progress": 50, "progress_description": "Importing 500/1000"},
                {"state": BatchTaskState.FAILED, "result": "Failed: duplicate key"},
            ]
            for fields in steps:
                clock.advance(60)
                simulator.set_task(task.id, **fields)
                await poller.poll_once()

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
        assert poller.watched == frozenset(), "a terminal task is no longer polled"

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
        """A finished task is polled for ``terminal_linger`` more, then dropped."""
        task = simulator.add_task(state=BatchTaskState.SUCCEEDED)
        async with polling(simulator, clock, [task.id], terminal_linger="30s") as (poller, _):
            await poller.poll_once()
            clock.advance(10)
            await poller.poll_once()
            assert {task.id} == poller.watched
            clock.advance(25)
            await poller.poll_once()
            assert frozenset() == poller.watched

    async def test_gone(self, simulator: Simulator, clock: ManualClock) -> None:
        """A 404 for a tracked task gives task.gone once and stops its polling."""
        task = simulator.add_task(state=BatchTaskState.STARTED)
        async with polling(simulator, clock, [task.id]) as (poller, recorder):
            await poller.poll_once()
            simulator.delete_task(task.id)
            await poller.poll_once()
            requests = len(simulator.requests)
            await poller.poll_once()

        assert [EventType.TASK_DISCOVERED, EventType.TASK_GONE] == recorder.types()
        assert requests == len(simulator.requests)


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
        assert [EventType.TASK_DISCOVERED] == recorder.types()

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
        async with polling(simulator, clock, ids) as (poller, recorder):
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
