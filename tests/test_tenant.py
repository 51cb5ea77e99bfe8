"""Tenant routing against the simulator over loopback: status lookups, moves, maintenance."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from monitor.config import parse_config
from monitor.simulator import OnlineTenant, Simulator
from monitor.superoffice.client import SuperOfficeClient, open_client
from monitor.superoffice.errors import MalformedResponse, ServerError, TenantUnavailable
from tests.conftest import ManualClock

STATUS_CALL = "GET /api/state/Cust12345"


@pytest.fixture(name="tenant")
def _tenant() -> OnlineTenant:
    return OnlineTenant(valid_for=600)


@pytest.fixture(name="sim")
async def _sim(clock: ManualClock, tenant: OnlineTenant) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock, tenant=tenant) as sim:
        yield sim


@asynccontextmanager
async def client_for(
    sim: Simulator, clock: ManualClock, **superoffice: Any
) -> AsyncIterator[SuperOfficeClient]:
    """A client that finds the simulator's tenant through its status API."""
    data = {
        "superoffice": {
            "environment_url": sim.environment_url,
            "tenant": "Cust12345",
            "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
            "retries": 0,
            "max_requests_per_second": 1000,
            **superoffice,
        }
    }
    config = parse_config(data, base_dir=Path("/nonexistent"))
    async with open_client(config.superoffice, clock=clock) as client:
        yield client


class TestLookup:
    """The numbered host comes from the tenant-status API and is kept until ValidUntil."""

    async def test_calls_go_to_the_numbered_host(self, sim: Simulator, clock: ManualClock) -> None:
        """First the status, then the API at the host it names."""
        task = sim.add_task()
        async with client_for(sim, clock) as client:
            await client.get_task(task.id)

        assert [STATUS_CALL, f"GET /online1/Cust12345/api/v1/BatchTask/{task.id}"] == sim.requests

    @pytest.mark.parametrize(("elapsed", "lookups"), [(599, 1), (601, 2)], ids=["before", "after"])
    async def test_kept_until_valid_until(
        self, sim: Simulator, clock: ManualClock, elapsed: float, lookups: int
    ) -> None:
        """The answer holds until ValidUntil, then the status is asked again."""
        task = sim.add_task()
        async with client_for(sim, clock) as client:
            await client.get_task(task.id)
            await client.get_task(task.id)
            clock.advance(elapsed)
            await client.get_task(task.id)

        assert lookups == sim.requests.count(STATUS_CALL)

    async def test_status_outage_keeps_the_last_host(
        self, sim: Simulator, clock: ManualClock
    ) -> None:
        """When the status API fails, polling goes on at the host it last named."""
        task = sim.add_task()
        async with client_for(sim, clock) as client:
            await client.get_task(task.id)
            clock.advance(601)
            sim.fail_next(1, 502)
            found = await client.get_task(task.id)
            await client.get_task(task.id)

        assert task.id == found.id
        assert 2 == sim.requests.count(STATUS_CALL), "not asked again at once"

    async def test_status_outage_without_a_host_fails_and_waits(
        self, sim: Simulator, clock: ManualClock
    ) -> None:
        """With no host known, the failure is reported and the status not asked for 30 s."""
        async with client_for(sim, clock) as client:
            sim.fail_next(1, 503)
            with pytest.raises(ServerError):
                await client.get_task(1)
            with pytest.raises(ServerError):
                await client.get_task(1)
            asked = sim.requests.count(STATUS_CALL)
            clock.advance(31)
            task = sim.add_task()
            await client.get_task(task.id)

        assert 1 == asked
        assert 2 == sim.requests.count(STATUS_CALL)

    async def test_slow_status_failure_holds_from_its_end(
        self, sim: Simulator, clock: ManualClock
    ) -> None:
        """A status API that fails only after longer than the 30 s it is left alone (a dead
        host: the timeout, thrice) is asked once by the requests queued behind the lookup,
        not once each: its failure holds 30 s from when it is known."""
        asked = []

        async def slow_failure(request: web.Request) -> web.Response:
            asked.append(request.path)
            clock.advance(31)  # the lookup took longer than MIN_RECHECK
            return web.Response(status=503)

        app = web.Application()
        app.router.add_get("/api/state/{tenant}", slow_failure)
        async with TestServer(app, host="127.0.0.1") as server:
            environment = str(server.make_url("")).rstrip("/")
            async with (
                client_for(sim, clock, environment_url=environment) as client,
                anyio.create_task_group() as group,
            ):
                for task_id in (1, 2, 3):
                    group.start_soon(_fails, client, task_id)

        assert ["/api/state/Cust12345"] == asked

    async def test_unusable_status_answer_is_malformed(
        self, sim: Simulator, clock: ManualClock
    ) -> None:
        """A status answer without a usable Api URL is MalformedResponse, not a crash."""
        body = '{"State": "Running", "IsRunning": true, "Api": "not a url"}'
        sim.fail_next(1, 200, body=body)
        async with client_for(sim, clock) as client:
            with pytest.raises(MalformedResponse, match="Api"):
                await client.get_task(1)


async def _fails(client: SuperOfficeClient, task_id: int) -> None:
    with pytest.raises(ServerError):
        await client.get_task(task_id)


class TestMoves:
    """A tenant moved to another host is followed."""

    async def test_421_is_followed(
        self, sim: Simulator, clock: ManualClock, tenant: OnlineTenant
    ) -> None:
        """After a move the old host says 421; one lookup and one retry later the call succeeds."""
        task = sim.add_task()
        async with client_for(sim, clock) as client:
            await client.get_task(task.id)
            tenant.node = "online7"
            found = await client.get_task(task.id)
            await client.get_task(task.id)
            failures = dict(client.stats.failures)

        assert task.id == found.id
        assert [
            STATUS_CALL,
            f"GET /online1/Cust12345/api/v1/BatchTask/{task.id}",
            f"GET /online1/Cust12345/api/v1/BatchTask/{task.id}",
            STATUS_CALL,
            f"GET /online7/Cust12345/api/v1/BatchTask/{task.id}",
            f"GET /online7/Cust12345/api/v1/BatchTask/{task.id}",
        ] == sim.requests
        assert {"misdirected": 1} == failures


class TestUnavailable:
    """A tenant that is not running is reported, not hammered."""

    @pytest.mark.parametrize("state", ["OfflineMaintenance", "Suspended"])
    async def test_reported_then_left_alone(
        self, sim: Simulator, clock: ManualClock, tenant: OnlineTenant, state: str
    ) -> None:
        """TenantUnavailable names the state; the status is not asked before the back-off."""
        tenant.state = state
        tenant.valid_for = 120
        task = sim.add_task()
        async with client_for(sim, clock) as client:
            with pytest.raises(TenantUnavailable) as first:
                await client.get_task(task.id)
            clock.advance(60)
            with pytest.raises(TenantUnavailable) as later:
                await client.get_task(task.id)
            asked_during_backoff = sim.requests.count(STATUS_CALL)
            tenant.state = "Running"
            clock.advance(61)
            found = await client.get_task(task.id)

        assert (state, "tenant_unavailable") == (first.value.state, first.value.reason)
        assert state in str(first.value)
        assert 120 == pytest.approx(first.value.retry_after)
        assert 60 == pytest.approx(later.value.retry_after)
        assert 1 == asked_during_backoff
        assert task.id == found.id

    async def test_online_maintenance_still_serves(
        self, sim: Simulator, clock: ManualClock, tenant: OnlineTenant
    ) -> None:
        """OnlineMaintenance counts as running: the API is available."""
        tenant.state = "OnlineMaintenance"
        task = sim.add_task()
        async with client_for(sim, clock) as client:
            assert task.id == (await client.get_task(task.id)).id
