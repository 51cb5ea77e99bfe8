"""The simulator answers what SuperOffice would (issue 8, point 1).

schemathesis drives every batch-task operation the simulator serves with requests generated from
SuperOffice's OpenAPI description (``tests/spec/``, prepared by ``tests/openapi.py``) and checks
each answer against it: a documented status code, a documented media type, and a body that
validates against the operation's schema (``BatchTaskInfo`` or an array of it, ``null`` allowed
where a value may be absent, formats checked).  The simulator is the one ``batchmon simulate``
runs (``Simulator(Scenario.generate(...))`` with default settings) on a manual clock, served from
its own thread because schemathesis calls synchronously.

Where the spec is silent the tests say so: it documents 404 only for ``GET /BatchTask/{id}`` and
no 401 anywhere (it declares security, not its failure), and it marks no carrier property
required.  Faults (``Simulator.fail_next``) are opt-in and named; the default never serves one.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from monitor.simulator import Scenario as SimScenario
from monitor.simulator import SimTask, Simulator
from monitor.superoffice.models import BatchTaskState
from tests import openapi
from tests.conftest import ManualClock

START = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
#: Long enough for the default scenario to run every task to its end (and delete one).
TIMELINE_SECONDS = 80.0
BASIC = "Basic " + base64.b64encode(b"batchmon:batchmon").decode()
PROPERTIES = openapi.batch_task_info_properties()
REAL_STATES = {state.value for state in BatchTaskState} - {BatchTaskState.UNKNOWN.value}


def batch_task_routes() -> set[tuple[str, str]]:
    """The simulator's batch-task API routes, as (method, path template).

    Only ``/api/v1/BatchTask...`` and ``/api/v1/Agents/Batch/...`` are batch-task API; the
    simulator's login, JWKS and tenant-status routes are outside these spec files, and its
    ``/{node}/{context}/api/...`` copies of the API routes are the same operations again.
    """
    routes = set()
    for route in Simulator().app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and path.startswith(
            ("/api/v1/BatchTask", "/api/v1/Agents/Batch/")
        ):
            routes.add((route.method, path))
    return routes


ROUTES = batch_task_routes()
#: The spec operations the simulator serves, by operationId.
SERVED = {op.operation_id: op for op in openapi.operations() if (op.method, op.path) in ROUTES}


def schemathesis_schema(file: str) -> Any:
    """The operations of ``file`` the simulator serves, for schemathesis: positive data only."""
    ids = {op_id for op_id, op in SERVED.items() if op.file == file}
    schema = schemathesis.openapi.from_dict(openapi.schemathesis_document(file, ids))
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE],
        max_examples=100,
        deterministic=True,
        # Not generated: the credentials below are the ones the simulator takes.
        with_security_parameters=False,
    )
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    # Explicit credentials: schemathesis's ignored_auth check then also replays a request
    # without them, and with wrong ones, and expects a refusal.
    schema.config.update(basic_auth=("batchmon", "batchmon"))
    return schema


REST = schemathesis_schema(openapi.REST_FILE)
AGENT = schemathesis_schema(openapi.AGENT_FILE)
GET_TASK = "v1Batch_GetBatchTaskInfo"
BY_ASSOCIATES = "v1BatchAgent_GetBatchTaskInfosByAssociates"
BY_ASSOCIATES_AND_STATE = "v1BatchAgent_GetBatchTaskInfosByAssociatesAndState"
STOP_BATCH_JOB = "v1BatchAgent_StopBatchJob"
#: AGENT narrowed to each of its operations, one test each: under pytest 9 the items that
#: ``schema.parametrize()`` makes for the operations of one test share that test's node id, and
#: pytest-xdist runs each node id once.
AGENT_OPERATION = {
    op_id: AGENT.include(operation_id=op_id)
    for op_id in (BY_ASSOCIATES, BY_ASSOCIATES_AND_STATE, STOP_BATCH_JOB)
}


class Live:
    """A simulator on loopback, served by an event loop in its own thread."""

    def __init__(self, simulator: Simulator, clock: ManualClock) -> None:
        self.simulator = simulator
        self.clock = clock
        self.session = requests.Session()
        self._ticks = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        api = self._run(simulator.start())
        #: The server root: the spec's paths start with ``/api``.
        self.root = api.removesuffix("/api")

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def close(self) -> None:
        self.session.close()
        self._run(self.simulator.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def tick(self) -> None:
        """Move the clock to the next point of the timeline (wrapping around), as time passes."""
        offset = (next(self._ticks) * 1.7) % TIMELINE_SECONDS
        self.clock.now = START + timedelta(seconds=offset)

    def at(self, seconds: float) -> None:
        """Set the clock ``seconds`` into the scenario."""
        self.clock.now = START + timedelta(seconds=seconds)

    def call(self, case: Any, **kwargs: Any) -> Any:
        """Send a generated case (its credentials come from the schema's config)."""
        return case.call(base_url=self.root, session=self.session, **kwargs)

    def send(self, case: Any, authorization: str | None = BASIC) -> Any:
        """Send a hand-made case, with ``authorization`` (``None``: without the header)."""
        headers = {} if authorization is None else {"Authorization": authorization}
        return case.call(base_url=self.root, session=self.session, headers=headers)


SCENARIO = SimScenario.generate(seed=11, start=START)
SCENARIO_IDS = SCENARIO.task_ids


@pytest.fixture(name="live", scope="module")
def _live() -> Iterator[Live]:
    clock = ManualClock(START)
    live = Live(Simulator(SCENARIO, clock=clock), clock)
    yield live
    live.close()


def check_select(case: Any, response: Any) -> None:
    """``$select``: every property is still there; those not selected are ``null``."""
    selected = {
        name.strip().casefold()
        for name in (case.query or {}).get("$select", "").split(",")
        if name.strip()
    }
    if response.status_code != 200 or not selected or not isinstance(response.json(), list):
        return  # StopBatchJob answers a boolean: nothing to select from
    for item in response.json():
        assert list(PROPERTIES) == list(item)
        assert {} == {
            k: v for k, v in item.items() if k.casefold() not in selected and v is not None
        }


def check_default_answer(operation: openapi.Operation, response: Any) -> None:
    """A default simulator's answer: documented status (or 404 by id), valid body, no fault."""
    allowed = operation.statuses | ({404} if operation.method == "GET" else set())
    assert response.status_code in allowed, response.text
    schema = operation.response_schema(response.status_code)
    if schema is not None:
        assert [] == openapi.schema_problems(response.json(), schema)
    else:
        assert "SimulatedFault" != response.json().get("ErrorType")


class TestGenerated:
    """schemathesis drives each served operation with inputs generated from the spec."""

    def test_every_batch_task_route_is_driven(self) -> None:
        """Each batch-task route of the simulator is a spec operation, and each is driven below."""
        assert ROUTES == {(op.method, op.path) for op in SERVED.values()}
        assert {
            "v1Batch_GetBatchTaskInfo",
            "v1BatchAgent_GetBatchTaskInfosByAssociates",
            "v1BatchAgent_GetBatchTaskInfosByAssociatesAndState",
            "v1BatchAgent_StopBatchJob",
        } == set(SERVED)
        driven = [
            schema.get_operation_id(result.ok())
            for schema in (REST, *AGENT_OPERATION.values())
            for result in schema.get_all_operations()
        ]
        assert sorted(SERVED) == sorted(driven)

    @REST.parametrize()  # type: ignore[untyped-decorator]  # schemathesis returns a bare Callable
    @REST.given(data=st.data())  # type: ignore[untyped-decorator]  # as above
    def test_rest(self, case: Any, data: st.DataObject, live: Live) -> None:
        """Every answer to GET BatchTask/{id} is one the spec documents, for any id."""
        # Half the ids are the scenario's: a generated int32 almost never names a task.
        if data.draw(st.booleans(), label="existing task"):
            case.path_parameters = {"id": data.draw(st.sampled_from(SCENARIO_IDS), label="id")}
        live.tick()
        response = live.call(case)

        case.validate_response(response)
        check_default_answer(
            SERVED[case.operation.schema.get_operation_id(case.operation)], response
        )

    @AGENT_OPERATION[BY_ASSOCIATES].parametrize()  # type: ignore[untyped-decorator]  # as above
    def test_by_associates(self, case: Any, live: Live) -> None:
        """Every answer to GetBatchTaskInfosByAssociates is one the spec documents."""
        check_agent_call(case, live)

    @AGENT_OPERATION[BY_ASSOCIATES_AND_STATE].parametrize()  # type: ignore[untyped-decorator]  # as above
    def test_by_associates_and_state(self, case: Any, live: Live) -> None:
        """Every answer to GetBatchTaskInfosByAssociatesAndState is one the spec documents."""
        check_agent_call(case, live)

    @AGENT_OPERATION[STOP_BATCH_JOB].parametrize()  # type: ignore[untyped-decorator]  # as above
    def test_stop_batch_job(self, case: Any, live: Live) -> None:
        """Every answer to StopBatchJob is one the spec documents."""
        check_agent_call(case, live)


def check_agent_call(case: Any, live: Live) -> None:
    """Every answer to an Agents/Batch call is one the spec documents, $select honoured."""
    live.tick()
    response = live.call(case)

    case.validate_response(response)
    check_default_answer(SERVED[case.operation.schema.get_operation_id(case.operation)], response)
    check_select(case, response)


def rest_case(task_id: int) -> Any:
    return REST["/api/v1/BatchTask/{id}"]["GET"].Case(path_parameters={"id": task_id})


def agent_case(method: str, body: object, select: str | None = None) -> Any:
    operation = AGENT[f"/api/v1/Agents/Batch/{method}"]["POST"]
    query = {"$select": select} if select is not None else None
    return operation.Case(body=body, query=query, media_type="application/json")


def op(operation_id: str) -> openapi.Operation:
    return SERVED[operation_id]


STATE_ARGUMENTS = openapi.definition(
    "SuperOffice.WebApi.v1.Carriers.BatchCarriers.GetBatchTaskInfosByAssociatesAndStateRequest",
    openapi.AGENT_FILE,
)["properties"]["State"]["enum"]


class TestTimeline:
    """Every moment of the default scenario is answered as the spec says."""

    def test_every_state_and_answer_validates(self, live: Live) -> None:
        """Lists, GETs by id and state filters validate at each step; every real state shows up."""
        seen_states: set[str] = set()
        statuses: set[tuple[str, int]] = set()
        for step in range(int(TIMELINE_SECONDS) // 2):
            live.at(step * 2.0 - 1.0)
            for associates in ([0], [-1], []):  # system, all user, all tasks
                case = agent_case("GetBatchTaskInfosByAssociates", {"AssociateIds": associates})
                listed = live.send(case)
                case.validate_response(listed)
                check_default_answer(op(BY_ASSOCIATES), listed)
                statuses.add((BY_ASSOCIATES, listed.status_code))
            for item in listed.json():  # all tasks, each also by id
                seen_states.add(item["State"])
                case = rest_case(item["Id"])
                got = live.send(case)
                case.validate_response(got)
                check_default_answer(op(GET_TASK), got)
                assert item == got.json()
                statuses.add((GET_TASK, got.status_code))
            for state in (STATE_ARGUMENTS * 2)[step % len(STATE_ARGUMENTS) :][:2]:
                body = {"AssociateIds": [], "State": state}
                case = agent_case("GetBatchTaskInfosByAssociatesAndState", body)
                filtered = live.send(case)
                case.validate_response(filtered)
                check_default_answer(op(BY_ASSOCIATES_AND_STATE), filtered)
                wanted = REAL_STATES if state == "All" else {state}
                assert set() == {item["State"] for item in filtered.json()} - wanted
                statuses.add((BY_ASSOCIATES_AND_STATE, filtered.status_code))

        assert REAL_STATES == seen_states
        assert {(BY_ASSOCIATES, 200), (GET_TASK, 200), (BY_ASSOCIATES_AND_STATE, 200)} == statuses

    def test_a_deleted_task_is_404_by_id(self, live: Live) -> None:
        """A task the scenario deleted is out of the lists, and GET by id answers 404."""
        live.at(TIMELINE_SECONDS + 20)
        listed = live.send(agent_case("GetBatchTaskInfosByAssociates", {"AssociateIds": []}))
        assert live.simulator.scenario is not None
        gone = set(live.simulator.scenario.task_ids) - {item["Id"] for item in listed.json()}
        (task_id,) = gone
        case = rest_case(task_id)

        response = live.send(case)

        case.validate_response(response)
        assert 404 in op(GET_TASK).statuses
        assert (404, "SoNotFoundException") == (response.status_code, response.json()["ErrorType"])


class TestSelect:
    """$select: "other fields are then nulled out"."""

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(
        names=st.lists(st.sampled_from(PROPERTIES), max_size=6, unique=True),
        upper=st.booleans(),
        seconds=st.floats(0, TIMELINE_SECONDS),
    )
    def test_selected_fields_keep_their_values(
        self, live: Live, names: list[str], upper: bool, seconds: float
    ) -> None:
        """Selected fields (any case) keep the full answer's values; every other field is null."""
        live.at(seconds)
        select = ",".join(name.upper() if upper else name for name in names)
        body: dict[str, list[int]] = {"AssociateIds": []}
        full = live.send(agent_case("GetBatchTaskInfosByAssociates", body)).json()
        case = agent_case("GetBatchTaskInfosByAssociates", body, select=select)

        response = live.send(case)

        case.validate_response(response)
        # "Default = show all fields": an empty $select selects everything.
        kept = set(names or PROPERTIES)
        assert [
            {key: value if key in kept else None for key, value in item.items()} for item in full
        ] == response.json()


AGENT_METHODS = {
    BY_ASSOCIATES: "GetBatchTaskInfosByAssociates",
    BY_ASSOCIATES_AND_STATE: "GetBatchTaskInfosByAssociatesAndState",
    STOP_BATCH_JOB: "StopBatchJob",
}


class TestWhereTheSpecIsSilent:
    """What the simulator answers where the spec documents nothing: SuperOffice error objects."""

    @pytest.mark.parametrize(
        "authorization",
        [None, "Basic " + base64.b64encode(b"batchmon:wrong").decode(), "Bearer 8A:x", "NTLM x"],
        ids=["none", "wrong-password", "unknown-token", "unknown-scheme"],
    )
    @pytest.mark.parametrize("operation_id", sorted(SERVED))
    def test_bad_credentials_are_401(
        self, live: Live, operation_id: str, authorization: str | None
    ) -> None:
        """The spec declares security but no 401; the simulator refuses as SuperOffice does."""
        live.at(10)
        if operation_id == GET_TASK:
            case = rest_case(212)
        else:
            body: dict[str, object] = {"AssociateIds": [], "State": "All"}
            if operation_id == STOP_BATCH_JOB:
                body = {"Id": 212}
            case = agent_case(AGENT_METHODS[operation_id], body)

        response = live.send(case, authorization)

        assert 401 == response.status_code
        (challenge,) = response.headers["www-authenticate"]  # schemathesis: lower-case, lists
        assert challenge.lower().startswith("basic ")
        assert (True, "SoAuthenticationException") == (
            response.json()["Error"],
            response.json()["ErrorType"],
        )

    @pytest.mark.parametrize(
        ("method", "body"),
        [
            ("GetBatchTaskInfosByAssociates", {}),
            ("GetBatchTaskInfosByAssociatesAndState", {}),
            ("GetBatchTaskInfosByAssociatesAndState", {"AssociateIds": []}),
            ("GetBatchTaskInfosByAssociatesAndState", {"State": "All"}),
        ],
        ids=["no-associates", "nothing", "no-state", "state-only"],
    )
    def test_a_carrier_without_its_arguments_is_400(
        self, live: Live, method: str, body: dict[str, object]
    ) -> None:
        """A carrier missing AssociateIds or State gets 400 with an ArgumentException."""
        # The spec marks no carrier property required and documents only 200: this is the
        # simulator's guess at what .NET does with a null argument, not a documented answer.
        response = live.send(agent_case(method, body))

        assert (400, "ArgumentException") == (response.status_code, response.json()["ErrorType"])


class TestOptIn:
    """What the spec does not allow is opt-in and named; the default serves none of it."""

    def test_a_fault_is_named_and_caught(self, live: Live) -> None:
        """fail_next answers once with an undocumented status and SimulatedFault, then stops."""
        live.at(10)
        case = rest_case(212)
        live.simulator.fail_next(1, 503)

        faulted = live.send(case)
        normal = live.send(case)

        assert (503, "SimulatedFault") == (faulted.status_code, faulted.json()["ErrorType"])
        with pytest.raises(BaseExceptionGroup, match="Undocumented status code"):
            case.validate_response(faulted)
        assert 200 == normal.status_code
        case.validate_response(normal)

    def test_only_the_default_date_style_is_rfc3339(self) -> None:
        """The default tz_style and "utc" write RFC 3339 dates; "naive" and "compact" do not."""
        # The spec's format date-time is RFC 3339, which needs an offset, with a colon.  The
        # reference notes say SuperOffice sends tenant time without an offset when no SO-TimeZone
        # is given, and -0500 with includeTZOffset: the opt-in styles "naive" and "compact".
        task = SimTask(id=212, created=START, last_started=START + timedelta(seconds=3))
        schema = op(GET_TASK).response_schema(200)
        assert schema is not None

        problems = {
            style: openapi.schema_problems(task.to_json(style), schema)
            for style in ("offset", "utc", "naive", "compact")
        }

        assert "offset" == inspect.signature(Simulator).parameters["tz_style"].default
        assert {"offset": [], "utc": []} == {k: problems[k] for k in ("offset", "utc")}
        for style in ("naive", "compact"):
            assert ["$.Created", "$.LastStarted"] == [p.split(":")[0] for p in problems[style]]
            assert all("is not a 'date-time'" in p for p in problems[style])
