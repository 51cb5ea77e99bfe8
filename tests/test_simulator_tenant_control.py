"""The simulator's control of its tenant's state: ``PUT /simulator/tenant``, and
``batchmon simulate --tenant``."""

from __future__ import annotations

import base64
import json
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from monitor.simulator import OnlineTenant, Simulator
from tests.simulate_process import simulate

LOGIN = base64.b64encode(b"batchmon:batchmon").decode()


async def _put(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.put(url, json=body) as response:
        return response.status, await response.json()


async def _get(url: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Basic {LOGIN}"}) as response,
    ):
        return response.status, await response.json()


class TestControl:
    async def test_sets_the_state_the_status_api_answers(self) -> None:
        """The new state is what the status API says, and the tenant's API obeys it."""
        async with Simulator(tenant=OnlineTenant()) as sim:
            task = sim.add_task()
            status, answer = await _put(
                f"{sim.environment_url}/simulator/tenant",
                {"state": "OfflineMaintenance", "valid_for": 30},
            )
            _, state = await _get(f"{sim.environment_url}/api/state/Cust12345")
            refused, _ = await _get(f"{sim.tenant_url}/v1/BatchTask/{task.id}")
            await _put(f"{sim.environment_url}/simulator/tenant", {"state": "OnlineMaintenance"})
            answered, _ = await _get(f"{sim.tenant_url}/v1/BatchTask/{task.id}")

        assert (200, "OfflineMaintenance", False) == (status, answer["State"], answer["IsRunning"])
        assert ("OfflineMaintenance", False) == (state["State"], state["IsRunning"])
        assert 503 == refused
        assert 200 == answered

    @pytest.mark.parametrize(
        "body",
        [
            {"state": "Sleeping"},
            {"state": "Running", "valid_for": 0},
            {"state": "Running", "valid_for": True},
            {"state": "Running", "valid_for": "1m"},
            ["Running"],
            "not json",
        ],
    )
    async def test_refuses_what_it_cannot_set(self, body: Any) -> None:
        """An unknown state or a bad lifetime is a 400 that lists the states."""
        async with Simulator(tenant=OnlineTenant()) as sim:
            async with (
                aiohttp.ClientSession() as session,
                session.put(f"{sim.environment_url}/simulator/tenant", data=str(body))
                if isinstance(body, str)
                else session.put(f"{sim.environment_url}/simulator/tenant", json=body) as response,
            ):
                status, answer = response.status, await response.json()
            assert sim.tenant is not None
            assert "Running" == sim.tenant.state

        assert 400 == status
        assert "OfflineMaintenance" in str(answer)

    async def test_no_tenant_no_control(self) -> None:
        """A simulator without an online tenant has no state to set."""
        async with Simulator() as sim:
            status, _ = await _put(
                f"{sim.environment_url}/simulator/tenant", {"state": "Suspended"}
            )
        assert 404 == status


async def test_simulate_with_a_tenant() -> None:
    """``batchmon simulate --tenant``: the banner's configuration finds the tenant, and its
    control command works."""
    async with simulate("--tenant", "Cust777") as simulating:
        banner = simulating.banner
        [environment] = re.findall(r'environment_url = "(\S+)"', banner)
        [control] = re.findall(r"curl -X PUT (\S+) ", banner)
        status, _ = await _put(control, {"state": "Suspended"})
        asked = datetime.now(UTC)
        _, state = await _get(f"{environment}/api/state/Cust777")

    assert 'tenant = "Cust777"' in banner
    assert 200 == status
    assert ("Suspended", False) == (state["State"], state["IsRunning"])
    # A monitor asks again at ValidUntil: a state set next shows within half a minute.
    valid_until = datetime.fromisoformat(state["ValidUntil"][:19]).replace(tzinfo=UTC)
    assert valid_until <= asked + timedelta(seconds=31)


@pytest.mark.timeout(180)
async def test_demo_shows_a_maintenance() -> None:
    """``batchmon demo`` prints how to put its tenant into maintenance; doing so starts one,
    and setting it running again ends it with a summary."""
    process = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "monitor",
            "demo",
            "--duration",
            "120s",
            "--port",
            "0",
            "--log-format",
            "json",
        ]
    )
    events: list[str] = []

    async def read_events() -> None:
        assert process.stdout is not None
        buffered = ""
        async for chunk in process.stdout:
            buffered += chunk.decode()
            *lines, buffered = buffered.split("\n")
            events.extend(json.loads(line)["event"] for line in lines if line.startswith("{"))

    async def logged(event: str) -> None:
        while event not in events:  # noqa: ASYNC110 - another task reads the lines
            await anyio.sleep(0.05)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(read_events)
            assert process.stderr is not None
            banner = ""
            with anyio.fail_after(20):
                async for chunk in process.stderr:
                    banner += chunk.decode()
                    if "Ctrl-C" in banner:
                        break
            [control] = re.findall(r"curl -X PUT (\S+) ", banner)
            # The demo's tenant-status answers hold 30 s: a state shows within that.
            with anyio.fail_after(90):
                await _put(control, {"state": "OfflineMaintenance"})
                await logged("monitor.maintenance_started")
                await _put(control, {"state": "Running"})
                await logged("monitor.maintenance_ended")
            group.cancel_scope.cancel()
    finally:
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()

    assert events.index("monitor.maintenance_started") < events.index("monitor.maintenance_ended")


async def test_the_start_line_names_the_tenant_and_its_environment(tmp_path: Path) -> None:
    """``batchmon_started`` with ``environment_url`` + ``tenant`` says where, not "(None)"."""
    async with Simulator(tenant=OnlineTenant(context_id="Cust777")) as sim:
        environment = sim.environment_url
        config = tmp_path / "batchmon.toml"
        config.write_text(
            f'[superoffice]\nenvironment_url = "{environment}"\ntenant = "Cust777"\n'
            '[superoffice.auth]\ntype = "basic"\nusername = "batchmon"\npassword = "batchmon"\n'
            f'[http]\nlisten = "127.0.0.1:0"\n[state]\npath = "{tmp_path / "state.db"}"\n'
        )
        config.chmod(0o600)
        process = await anyio.open_process(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)]
        )
        try:
            assert process.stdout is not None
            output = ""
            with anyio.fail_after(20):
                async for chunk in process.stdout:
                    output += chunk.decode()
                    if "batchmon_started" in output:
                        break
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                await process.wait()
            await process.aclose()

    [started] = [json.loads(line) for line in output.splitlines() if "batchmon_started" in line]
    assert f"Cust777 at {environment}" == started["api"]
