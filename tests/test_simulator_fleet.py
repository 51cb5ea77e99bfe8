"""The simulator serving many tenants (issue 16, point 5): ``Fleet`` on loopback and
``batchmon simulate --tenants``.

Each tenant lives under ``/{ContextIdentifier}/api`` with tasks, a story, stops and a
tenant-status entry of its own; the same ids in two tenants are two tasks.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.config import parse_config
from monitor.simulator import Fleet, Scenario
from monitor.simulator.fleet import MAX_TENANTS, tenant_names
from monitor.simulator.stopping import STOPPED_RESULT
from monitor.superoffice.client import SuperOfficeClient, open_client
from monitor.superoffice.models import BatchTaskState
from tests import openapi
from tests.conftest import ManualClock
from tests.simulate_process import simulate

LOGIN = {"Authorization": "Basic " + base64.b64encode(b"batchmon:batchmon").decode()}
LIST = "/v1/Agents/Batch/GetBatchTaskInfosByAssociates"


async def _call(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=LOGIN if headers is None else headers) as r,
    ):
        return r.status, await r.json(content_type=None)


@pytest.fixture(name="fleet")
async def _fleet(clock: ManualClock) -> AsyncIterator[Fleet]:
    async with Fleet(3, seed=7, tasks=8, start=clock.now, clock=clock, loop=True) as fleet:
        yield fleet


@asynccontextmanager
async def client_for(
    fleet: Fleet, name: str, clock: ManualClock
) -> AsyncIterator[SuperOfficeClient]:
    """The daemon's client for one tenant, found through the status API as for any Online one."""
    data = {
        "superoffice": {
            "environment_url": fleet.environment_url,
            "tenant": name,
            "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
            "retries": 0,
            "max_requests_per_second": 1000,
        }
    }
    config = parse_config(data, base_dir=Path("/nonexistent"))
    async with open_client(config.superoffice, clock=clock) as client:
        yield client


class TestNames:
    """Tenant names: many, distinct, the same for the same seed."""

    def test_seeded_and_distinct(self) -> None:
        """The same seed gives the same sorted names; another seed, others."""
        names = tenant_names(MAX_TENANTS, 3)

        assert names == tenant_names(MAX_TENANTS, 3) == sorted(names)
        assert len(set(names)) == MAX_TENANTS
        assert all(re.fullmatch(r"Cust[0-9]{5}", name) for name in names)
        assert tenant_names(5, 3) != tenant_names(5, 4)

    @pytest.mark.parametrize("count", [0, -1, MAX_TENANTS + 1])
    def test_count_out_of_range_is_refused(self, count: int) -> None:
        """Fewer than one tenant or more than the maximum is a clear error."""
        with pytest.raises(ValueError, match=r"number of tenants must be 1\.\.1000"):
            Fleet(count)

    def test_a_shifted_story_shares_its_scripts(self, clock: ManualClock) -> None:
        """``starting_at`` tells the same story later: the same states, ``lag`` later."""
        story = Scenario.generate(start=clock.now, loop=True)
        later = story.starting_at(clock.now + timedelta(seconds=5))
        first: dict[int, Any] = {}
        second: dict[int, Any] = {}
        story.apply(first, clock.now + timedelta(seconds=20))
        later.apply(second, clock.now + timedelta(seconds=25))

        assert {i: t.state for i, t in first.items()} == {i: t.state for i, t in second.items()}


class TestIsolation:
    """A request for one tenant sees only that tenant's tasks."""

    async def test_same_id_two_tasks(self, fleet: Fleet) -> None:
        """Task 9000 of two tenants are two tasks, each seen only under its own base."""
        a, b, c = fleet.tenants
        fleet.set_task(a, 9000, name="Import in A", state=BatchTaskState.STARTED)
        fleet.set_task(b, 9000, name="Export in B", state=BatchTaskState.FAILED)
        _, in_a = await _call("GET", fleet.url(a) + "/v1/BatchTask/9000")
        _, in_b = await _call("GET", fleet.url(b) + "/v1/BatchTask/9000")
        missing, _ = await _call("GET", fleet.url(c) + "/v1/BatchTask/9000")

        assert ("Import in A", "Started") == (in_a["Name"], in_a["State"])
        assert ("Export in B", "Failed") == (in_b["Name"], in_b["State"])
        assert 404 == missing

    async def test_lists_show_the_tenants_own_tasks(self, fleet: Fleet, clock: ManualClock) -> None:
        """Each tenant lists the same ids with its own story: the tenants do not move in step."""
        clock.advance(15)
        a = next(iter(fleet.tenants))
        fleet.set_task(a, 9001)
        listed = {}
        for name in fleet.tenants:
            status, tasks = await _call("POST", fleet.url(name) + LIST, {"AssociateIds": []})
            assert 200 == status
            listed[name] = {task["Id"]: task["State"] for task in tasks}

        assert 9001 in listed[a]
        assert all(9001 not in tasks for name, tasks in listed.items() if name != a)
        assert len({tuple(sorted(tasks.items())) for tasks in listed.values()}) == 3

    async def test_unknown_tenant_and_bad_credentials(self, fleet: Fleet) -> None:
        """A tenant the simulator lacks is 404; wrong credentials are 401 for every tenant."""
        a = next(iter(fleet.tenants))
        unknown, answer = await _call("GET", f"{fleet.environment_url}/Cust1/api/v1/BatchTask/212")
        refused, _ = await _call("GET", fleet.url(a) + "/v1/BatchTask/212", headers={})

        assert (404, "SoTenantNotFoundException") == (unknown, answer["ErrorType"])
        assert 401 == refused

    async def test_requests_are_counted_per_tenant(self, fleet: Fleet) -> None:
        """Each tenant counts the API requests addressed to it."""
        a, b, _ = fleet.tenants
        for _ in range(3):
            await _call("GET", fleet.url(a) + "/v1/BatchTask/212")
        await _call("GET", fleet.url(b) + "/v1/BatchTask/212")

        assert [3, 1, 0] == [tenant.requests for tenant in fleet.tenants.values()]

    async def test_each_request_is_reported_with_its_tenant(self, clock: ManualClock) -> None:
        """``on_request`` hears of every API request, refused ones too, by tenant name;
        the status API and the control routes are no API requests."""
        heard: list[str] = []
        async with Fleet(
            2, seed=7, tasks=8, start=clock.now, clock=clock, on_request=heard.append
        ) as fleet:
            a, b = fleet.tenants
            await _call("GET", fleet.url(b) + "/v1/BatchTask/212")
            await _call("GET", fleet.url(a) + "/v1/BatchTask/212", headers={})
            await _call("GET", fleet.url(b) + "/v1/BatchTask/999999")
            await _call("GET", fleet.state_url + "/" + a)
            await _call(
                "PUT", f"{fleet.environment_url}/simulator/tenants/{a}", {"state": "Running"}
            )
            await _call("GET", fleet.environment_url + "/Cust1/api/v1/BatchTask/212")

        assert [b, a, b] == heard

    async def test_the_daemon_client_finds_each_tenant(
        self, fleet: Fleet, clock: ManualClock
    ) -> None:
        """Today's client, given the environment and one tenant's name, reads that tenant."""
        a, b, _ = fleet.tenants
        fleet.set_task(a, 9002, name="Only in A")
        fleet.set_task(b, 9002, name="Only in B")
        async with client_for(fleet, a, clock) as client_a, client_for(fleet, b, clock) as client_b:
            task_a = await client_a.get_task(9002)
            task_b = await client_b.get_task(9002)

        assert ("Only in A", "Only in B") == (task_a.name, task_b.name)


class TestTenantState:
    """Each tenant has its own entry in the tenant-status API, set through the control API."""

    async def test_entries_and_their_control(self, fleet: Fleet) -> None:
        """Putting one tenant into maintenance changes its entry and its API, not the others'."""
        a, b, _ = fleet.tenants
        status, answer = await _call(
            "PUT", f"{fleet.environment_url}/simulator/tenants/{a}", {"state": "OfflineMaintenance"}
        )
        _, entry_a = await _call("GET", f"{fleet.state_url}/{a}")
        _, entry_b = await _call("GET", f"{fleet.state_url}/{b}")
        down, _ = await _call("POST", fleet.url(a) + LIST, {"AssociateIds": []})
        up, _ = await _call("POST", fleet.url(b) + LIST, {"AssociateIds": []})
        _, everyone = await _call("GET", f"{fleet.environment_url}/simulator/tenants")

        assert (200, "OfflineMaintenance") == (status, answer["State"])
        assert ("OfflineMaintenance", False) == (entry_a["State"], entry_a["IsRunning"])
        assert ("Running", True, fleet.url(b)) == (
            entry_b["State"],
            entry_b["IsRunning"],
            entry_b["Api"],
        )
        assert (503, 200) == (down, up)
        assert list(fleet.tenants) == [entry["ContextIdentifier"] for entry in everyone]

    async def test_a_stranger_is_unknown(self, fleet: Fleet) -> None:
        """The status API names a tenant it does not serve Unknown; its control is 404."""
        _, entry = await _call("GET", f"{fleet.state_url}/Cust1")
        control, _ = await _call(
            "PUT", f"{fleet.environment_url}/simulator/tenants/Cust1", {"state": "Running"}
        )

        assert ("Unknown", None) == (entry["State"], entry["Api"])
        assert 404 == control


class TestTaskControl:
    """``PUT /simulator/tenants/{name}/tasks/{id}`` fails or finishes one tenant's task."""

    async def test_a_pinned_state_outlasts_the_story(
        self, fleet: Fleet, clock: ManualClock
    ) -> None:
        """A task failed through the control API stays failed in that tenant only."""
        a, b, _ = fleet.tenants
        status, answer = await _call(
            "PUT",
            f"{fleet.environment_url}/simulator/tenants/{a}/tasks/212",
            {"state": "Failed", "result": "Disk full"},
        )
        clock.advance(30)
        _, in_a = await _call("GET", fleet.url(a) + "/v1/BatchTask/212")
        _, in_b = await _call("GET", fleet.url(b) + "/v1/BatchTask/212")

        assert (200, "Failed") == (status, answer["State"])
        assert ("Failed", "Disk full") == (in_a["State"], in_a["Result"])
        assert "Disk full" != in_b["Result"]

    async def test_finishing_a_new_task(self, fleet: Fleet) -> None:
        """A task the tenant lacks is added, then finished."""
        a = next(iter(fleet.tenants))
        control = f"{fleet.environment_url}/simulator/tenants/{a}/tasks/9100"
        await _call("PUT", control, {"state": "Started", "progress": 40})
        await _call("PUT", control, {"state": "Succeeded", "progress": 100})
        _, task = await _call("GET", fleet.url(a) + "/v1/BatchTask/9100")

        assert ("Succeeded", 100) == (task["State"], task["ProgressPercent"])

    @pytest.mark.parametrize(
        ("path", "body", "problem"),
        [
            ("tasks/212", {"state": "Sleeping"}, "state must be one of"),
            ("tasks/212", {"progress": 101}, "progress must be 0..100"),
            ("tasks/212", {"progress": True}, "progress must be a int"),
            ("tasks/212", {"name": "x"}, "Expected an object with some of"),
            ("tasks/212", [], "Expected an object with some of"),
            ("tasks/x1", {"state": "Failed"}, "'x1' is not a task id"),
        ],
    )
    async def test_bad_requests_are_400(
        self, fleet: Fleet, path: str, body: Any, problem: str
    ) -> None:
        """A control request that cannot be applied is refused and says why."""
        a = next(iter(fleet.tenants))
        status, answer = await _call(
            "PUT", f"{fleet.environment_url}/simulator/tenants/{a}/{path}", body
        )

        assert 400 == status
        assert problem in answer["ErrorMessage"]


class TestStop:
    """``StopBatchJob`` stops the task of the tenant it was sent to."""

    async def test_stop_reaches_one_tenant(self, fleet: Fleet, clock: ManualClock) -> None:
        """The same id running in two tenants: only the addressed one stops."""
        a, b, _ = fleet.tenants
        for name in (a, b):
            fleet.set_task(name, 9200, state=BatchTaskState.STARTED)
        status, stopped = await _call(
            "POST", fleet.url(a) + "/v1/Agents/Batch/StopBatchJob", {"Id": 9200}
        )
        clock.advance(2)
        _, in_a = await _call("GET", fleet.url(a) + "/v1/BatchTask/9200")
        _, in_b = await _call("GET", fleet.url(b) + "/v1/BatchTask/9200")

        assert (200, True) == (status, stopped)
        assert ("Failed", STOPPED_RESULT) == (in_a["State"], in_a["Result"])
        assert "Started" == in_b["State"]
        assert [1, 0] == [len(fleet.tenant(n).space.stop_requests) for n in (a, b)]


class TestConformance:
    """A tenant's answers are what SuperOffice's OpenAPI description documents."""

    async def test_answers_validate(self, fleet: Fleet, clock: ManualClock) -> None:
        """GET by id, both list calls and StopBatchJob validate against the spec's schemas."""
        a = next(iter(fleet.tenants))
        base = fleet.url(a)
        calls: list[tuple[str, str, dict[str, object] | None]] = [
            ("GET", "/v1/BatchTask/212", None),
            ("POST", LIST, {"AssociateIds": []}),
            (
                "POST",
                "/v1/Agents/Batch/GetBatchTaskInfosByAssociatesAndState",
                {"AssociateIds": [], "State": "All"},
            ),
            ("POST", "/v1/Agents/Batch/StopBatchJob", {"Id": 212}),
        ]
        validated = 0
        for seconds in (0, 10, 30):
            clock.advance(seconds)
            for method, path, body in calls:
                status, answer = await _call(method, base + path, body)
                [(operation, _)] = openapi.match(method, "/api" + path)
                schema = operation.response_schema(status)

                assert status in operation.statuses, (path, answer)
                if schema is not None:  # the 404 of a deleted task has none
                    assert [] == openapi.schema_problems(answer, schema), path
                    validated += 1

        assert validated >= 10


class TestCommand:
    """``batchmon simulate --tenants`` as a user runs it."""

    async def test_prints_tenant_bases_that_answer(self) -> None:
        """The banner lists the first tenants' bases and the status API; both answer."""
        async with simulate("--tenants", "3") as simulating:
            banner = simulating.banner
            bases = re.findall(r"^    (http://\S+/(Cust[0-9]+)/api)$", banner, re.MULTILINE)
            [state_url] = re.findall(r"tenant state  GET (\S+)/\{ContextIdentifier\}", banner)
            [try_url] = re.findall(r"curl -u batchmon:batchmon (\S+)", banner)
            tried = await _call("GET", try_url)
            entries, tasks = [], []
            for base, name in bases:
                entries.append(await _call("GET", f"{state_url}/{name}", headers={}))
                tasks.append(await _call("POST", base + LIST, {"AssociateIds": []}))
        code = simulating.code

        assert "3 simulated SuperOffice Online tenants" in banner
        assert 3 == len(bases)
        assert [(200, base) for base, _ in bases] == [(s, e["Api"]) for s, e in entries]
        assert [(200, list)] * 3 == [(s, type(listed)) for s, listed in tasks]
        assert (200, 212) == (tried[0], tried[1]["Id"])
        assert 0 == code

    @pytest.mark.parametrize("tenants", ["0", "1001", "many"])
    def test_count_is_checked(self, tenants: str) -> None:
        """An out-of-range count stops the command with a usage error (exit 2)."""
        result = CliRunner().invoke(main, ["simulate", "--tenants", tenants])

        assert 2 == result.exit_code
        assert "--tenants" in result.output
