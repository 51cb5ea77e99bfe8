"""The simulator's StopBatchJob, on a manual clock, asked by the real client over loopback."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from monitor.simulator import Scenario, Simulator
from monitor.simulator.stopping import STOPPED_RESULT
from monitor.superoffice.client import SuperOfficeClient, open_client
from monitor.superoffice.models import BatchTaskState, CancellationBehaviour
from tests import openapi
from tests.conftest import ManualClock, make_config

START = datetime(2026, 12, 3, 13, 0, tzinfo=UTC)


@pytest.fixture(name="sim")
async def _sim(clock: ManualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock, stop_delay=timedelta(seconds=2)) as sim:
        yield sim


@pytest.fixture(name="client")
async def _client(sim: Simulator) -> AsyncIterator[SuperOfficeClient]:
    async with open_client(make_config(sim.url).superoffice) as client:
        yield client


def running(sim: Simulator, clock: ManualClock, behaviour: CancellationBehaviour) -> int:
    task = sim.add_task(
        state=BatchTaskState.STARTED,
        progress=40,
        start_count=1,
        last_started=clock(),
        cancellation=behaviour,
    )
    return task.id


class TestStopBatchJob:
    """A stop that may be done is answered true and takes effect a moment later."""

    async def test_can_cancel_fails_after_the_delay(
        self, sim: Simulator, client: SuperOfficeClient, clock: ManualClock
    ) -> None:
        """True at once; Running until stop_delay has passed, then Failed with a stopped result."""
        task_id = running(sim, clock, CancellationBehaviour.CAN_CANCEL)

        assert await client.stop_batch_job(task_id) is True
        assert BatchTaskState.STARTED is (await client.get_task(task_id)).state
        clock.advance(2)
        stopped = await client.get_task(task_id)

        assert BatchTaskState.FAILED is stopped.state
        assert STOPPED_RESULT == stopped.result

    async def test_cancel_with_warning_stops_too(
        self, sim: Simulator, client: SuperOfficeClient, clock: ManualClock
    ) -> None:
        """The warning is the UI's business: the API stops such a task."""
        task_id = running(sim, clock, CancellationBehaviour.CANCEL_WITH_WARNING)

        assert await client.stop_batch_job(task_id) is True
        clock.advance(5)
        assert BatchTaskState.FAILED is (await client.get_task(task_id)).state

    async def test_cannot_cancel_answers_false(
        self, sim: Simulator, client: SuperOfficeClient, clock: ManualClock
    ) -> None:
        """CannotCancel: false, and the task runs on."""
        task_id = running(sim, clock, CancellationBehaviour.CANNOT_CANCEL)

        assert await client.stop_batch_job(task_id) is False
        clock.advance(5)
        assert BatchTaskState.STARTED is (await client.get_task(task_id)).state

    async def test_finished_task_answers_false(
        self, sim: Simulator, client: SuperOfficeClient
    ) -> None:
        """Nothing to stop: false."""
        task_id = sim.add_task(state=BatchTaskState.SUCCEEDED).id

        assert await client.stop_batch_job(task_id) is False

    async def test_unknown_task_answers_false(self, client: SuperOfficeClient) -> None:
        """No such task: false, the one answer the reference documents."""
        assert await client.stop_batch_job(4711) is False

    async def test_ended_before_the_stop_took_effect(
        self, sim: Simulator, client: SuperOfficeClient, clock: ManualClock
    ) -> None:
        """A task that succeeded within the delay stays succeeded."""
        task_id = running(sim, clock, CancellationBehaviour.CAN_CANCEL)
        assert await client.stop_batch_job(task_id) is True
        sim.set_task(task_id, state=BatchTaskState.SUCCEEDED)
        clock.advance(5)

        assert BatchTaskState.SUCCEEDED is (await client.get_task(task_id)).state

    async def test_a_new_run_is_not_stopped(
        self, sim: Simulator, client: SuperOfficeClient, clock: ManualClock
    ) -> None:
        """The stop belongs to the run it was asked in."""
        task_id = running(sim, clock, CancellationBehaviour.CAN_CANCEL)
        assert await client.stop_batch_job(task_id) is True
        clock.advance(5)
        await client.get_task(task_id)
        sim.set_task(task_id, state=BatchTaskState.STARTED, start_count=2)

        assert BatchTaskState.STARTED is (await client.get_task(task_id)).state

    async def test_request_is_recorded_and_fits_the_spec(
        self, sim: Simulator, client: SuperOfficeClient, clock: ManualClock
    ) -> None:
        """The request arrives as SuperOffice's OpenAPI description says: {"Id": N}."""
        task_id = running(sim, clock, CancellationBehaviour.CAN_CANCEL)
        await client.stop_batch_job(task_id)

        (seen,) = sim.stop_requests
        problems = openapi.request_problems(
            seen.method, seen.path, seen.query, seen.headers, seen.body
        )
        assert [] == problems
        assert (
            "v1BatchAgent_StopBatchJob" == openapi.match(seen.method, seen.path)[0][0].operation_id
        )
        assert f'{{"Id": {task_id}}}'.encode() == seen.body

    async def test_bad_carrier_is_400(self, sim: Simulator) -> None:
        """An Id that is not a number is refused as SuperOffice refuses it."""
        basic = "Basic " + base64.b64encode(b"batchmon:batchmon").decode()
        async with (
            aiohttp.ClientSession(headers={"Authorization": basic}) as http,
            http.post(sim.url + "/v1/Agents/Batch/StopBatchJob", json={"Id": "x"}) as answer,
        ):
            assert 400 == answer.status


class TestScenario:
    """Scenario tasks carry their behaviour, and a scenario can set it."""

    def test_override(self) -> None:
        """``cancellation`` replaces the job's own behaviour for the ids given."""
        scenario = Scenario.generate(
            start=START, cancellation={212: CancellationBehaviour.CANNOT_CANCEL}
        )
        tasks: dict[int, object] = {}
        scenario.apply(tasks, START + timedelta(seconds=30))  # type: ignore[arg-type]
        assert CancellationBehaviour.CANNOT_CANCEL is tasks[212].cancellation  # type: ignore[attr-defined]

    async def test_stopped_scenario_task_stays_failed(self, clock: ManualClock) -> None:
        """The scenario would have the task succeed; stopped, it shows Failed to the end."""
        plain = Scenario.generate(start=clock())
        task_id = next(
            i for i in plain.task_ids if plain.timeline(i)[-1][1] is BatchTaskState.SUCCEEDED
        )
        scenario = Scenario.generate(
            start=clock(), cancellation={task_id: CancellationBehaviour.CAN_CANCEL}
        )
        async with (
            Simulator(scenario, clock=clock) as sim,
            open_client(make_config(sim.url).superoffice) as client,
        ):
            clock.advance(scenario.timeline(task_id)[2][0] + 1)  # New, Aquired, Started
            assert BatchTaskState.STARTED is (await client.get_task(task_id)).state
            assert await client.stop_batch_job(task_id) is True
            clock.advance(120)
            assert BatchTaskState.FAILED is (await client.get_task(task_id)).state

    def test_stop_point(self) -> None:
        """The demo's stop: a CanCancel task that would succeed, halfway through its run."""
        scenario = Scenario.generate(start=START)
        point = scenario.stop_point()
        assert point is not None
        task_id, at = point
        changes = {state: t for t, state in scenario.timeline(task_id)}
        assert changes[BatchTaskState.STARTED] < at < changes[BatchTaskState.SUCCEEDED]
        none_cancel = {i: CancellationBehaviour.CANNOT_CANCEL for i in scenario.task_ids}
        assert Scenario.generate(start=START, cancellation=none_cancel).stop_point() is None
