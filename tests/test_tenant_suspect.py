"""A failing API makes the tenant-status API be asked again early: an offline maintenance
shows as the host's 503 long before ``ValidUntil`` passes."""

from __future__ import annotations

import pytest

from monitor.simulator import OnlineTenant, Simulator
from monitor.superoffice.errors import ServerError, TenantUnavailable
from monitor.superoffice.tenant import FixedRoute
from tests.conftest import ManualClock
from tests.test_tenant import STATUS_CALL, client_for


async def test_a_503_asks_the_status_api_again(clock: ManualClock) -> None:
    """The host answers 503 (offline maintenance): the next request asks the status API and
    learns why, though the last answer is valid for ten minutes."""
    async with Simulator(clock=clock, tenant=OnlineTenant(valid_for=600)) as sim:
        task = sim.add_task()
        states: list[str] = []
        async with client_for(sim, clock) as client:
            assert client.tenant is not None
            client.tenant.on_state = states.append
            await client.get_task(task.id)
            assert sim.tenant is not None
            sim.tenant.state = "OfflineMaintenance"
            with pytest.raises(ServerError):
                await client.get_task(task.id)
            with pytest.raises(TenantUnavailable):
                await client.get_task(task.id)

    assert ["Running", "OfflineMaintenance"] == states
    assert 2 == sim.requests.count(STATUS_CALL)


@pytest.mark.parametrize(("apart", "lookups"), [(4.9, 2), (5.0, 3)])
async def test_at_most_once_per_five_seconds(
    clock: ManualClock, apart: float, lookups: int
) -> None:
    """Failures in a row ask the status API again once per 5 s, not per request."""
    async with (
        Simulator(clock=clock, tenant=OnlineTenant(valid_for=600)) as sim,
        client_for(sim, clock) as client,
    ):
        resolver = client.tenant
        assert resolver is not None
        await resolver.api_base()
        resolver.suspect()
        await resolver.api_base()
        clock.advance(apart)
        resolver.suspect()
        await resolver.api_base()

    assert lookups == sim.requests.count(STATUS_CALL)


async def test_a_fixed_url_has_nothing_to_ask() -> None:
    """With a configured url, a 503 is only a 503."""
    route = FixedRoute("https://crm.example.com/api")
    route.suspect()
    assert "https://crm.example.com/api" == await route.api_base()
