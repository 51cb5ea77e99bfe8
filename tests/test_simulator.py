"""The simulator answers like SuperOffice, over real HTTP on loopback, on a manual clock."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from monitor.simulator import (
    TENANT_TZ,
    OAuthApp,
    OnlineTenant,
    Scenario,
    SimTask,
    Simulator,
    SystemUserApp,
)
from monitor.superoffice.auth import JWKS_PATH, TICKET_CLAIM, sign_system_user_token
from monitor.superoffice.models import (
    BatchTaskState,
    CancellationBehaviour,
    ParseError,
    parse_datetime,
    parse_task,
    parse_task_list,
)

SPEC = Path(__file__).parents[2] / "shared/reference/openapi/Swagger-v1-BatchTask.json"
START = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
BY_ASSOCIATES = "/v1/Agents/Batch/GetBatchTaskInfosByAssociates"
BY_ASSOCIATES_AND_STATE = "/v1/Agents/Batch/GetBatchTaskInfosByAssociatesAndState"
FIELDS = [
    *("Id", "Name", "AssociateId", "DetailsTable", "DetailsRecord", "IsSystemTask"),
    *("IsInternalTask", "ParameterObject", "LastStarted", "Created", "StartCount"),
    *("DatabaseSerialNumber", "Context", "Result", "State", "Description", "Response"),
    *("Request", "ProgressDescription", "ProgressPercent", "FileName"),
    *("CancellationBehaviour", "TableRight", "FieldProperties"),
]
SO_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}(Z|[+-]\d\d:?\d\d)?")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.time = start

    def now(self) -> datetime:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += timedelta(seconds=seconds)


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Reply:
    async with http.request(method, url, **kwargs) as response:
        return Reply(response.status, dict(response.headers), await response.read())


async def get_task(http: aiohttp.ClientSession, sim: Simulator, task_id: object) -> Reply:
    return await call(http, "GET", f"{sim.url}/v1/BatchTask/{task_id}")


async def list_tasks(
    http: aiohttp.ClientSession, sim: Simulator, ids: list[int], select: str | None = None
) -> Reply:
    params = {"$select": select} if select is not None else {}
    body = {"AssociateIds": ids}
    return await call(http, "POST", sim.url + BY_ASSOCIATES, json=body, params=params)


@pytest.fixture(name="clock")
def _clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(name="sim")
async def _sim(clock: ManualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock.now) as sim:
        yield sim


@pytest.fixture(name="scenario_sim")
async def _scenario_sim(clock: ManualClock) -> AsyncIterator[Simulator]:
    async with Simulator(Scenario.generate(start=START), clock=clock.now) as sim:
        yield sim


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers={"Authorization": basic("batchmon", "batchmon")}
    ) as session:
        yield session


@pytest.fixture(name="anonymous")
async def _anonymous() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def started_task(sim: Simulator, clock: ManualClock, **fields: object) -> SimTask:
    started = clock.now() - timedelta(seconds=12, microseconds=345678)
    defaults: dict[str, object] = {
        "state": BatchTaskState.STARTED,
        "progress": 40,
        "progress_description": "Processing records 2000/5000…",
        "last_started": started,
        "start_count": 1,
    }
    return sim.add_task(**(defaults | fields))


class TestTaskEndpoint:
    async def test_answers_a_batchtaskinfo_that_parses_cleanly(
        self, sim: Simulator, http: aiohttp.ClientSession, clock: ManualClock
    ) -> None:
        """GET returns all 24 fields as UTF-8 JSON, and our parser finds nothing odd in them."""
        task = started_task(sim, clock)

        reply = await get_task(http, sim, task.id)

        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
        assert list(reply.json()) == FIELDS
        info = parse_task(reply.body)
        assert info.anomalies == ()
        assert (info.id, info.state, info.progress_percent) == (task.id, BatchTaskState.STARTED, 40)
        assert info.progress_description == "Processing records 2000/5000…"
        assert (info.last_started, info.created) == (task.last_started, task.created)
        assert info.cancellation_behaviour == CancellationBehaviour.CAN_CANCEL

    async def test_writes_dates_as_superoffice_does(
        self, sim: Simulator, http: aiohttp.ClientSession, clock: ManualClock
    ) -> None:
        """Dates carry 7 fractional digits; Created is UTC, LastStarted is in tenant time."""
        task = started_task(sim, clock)

        data = (await get_task(http, sim, task.id)).json()

        assert SO_DATE.fullmatch(data["Created"])
        assert data["Created"].endswith("Z")
        assert SO_DATE.fullmatch(data["LastStarted"])
        assert data["LastStarted"].endswith("+01:00")

    @pytest.mark.parametrize("style", ["offset", "utc", "naive", "compact"])
    async def test_every_date_style_parses_back(
        self, clock: ManualClock, http: aiohttp.ClientSession, style: str
    ) -> None:
        """Each date style names the same instants once naive values are read as tenant time."""
        async with Simulator(clock=clock.now, tz_style=style) as sim:
            task = started_task(sim, clock)
            reply = await get_task(http, sim, task.id)

        data = reply.json()
        assert SO_DATE.fullmatch(data["Created"])
        assert SO_DATE.fullmatch(data["LastStarted"])
        info = parse_task(reply.body, tz=TENANT_TZ)
        assert (info.last_started, info.created) == (task.last_started, task.created)

    async def test_last_started_is_null_until_the_first_start(
        self, sim: Simulator, http: aiohttp.ClientSession
    ) -> None:
        """A task that never ran has no LastStarted and a StartCount of 0."""
        task = sim.add_task()

        data = (await get_task(http, sim, task.id)).json()

        assert (data["State"], data["LastStarted"], data["StartCount"]) == ("New", None, 0)

    async def test_unknown_id_is_a_superoffice_404(
        self, sim: Simulator, http: aiohttp.ClientSession
    ) -> None:
        """An id that never existed gets 404 with SuperOffice's error object."""
        reply = await get_task(http, sim, 999)

        assert reply.status == 404
        assert reply.json() == {
            "Error": True,
            "ErrorType": "SoNotFoundException",
            "ErrorMessage": "BatchTask id 999 not found",
            "ErrorSource": "SuperOffice.Services.Implementation",
        }

    async def test_deleted_task_is_404(self, sim: Simulator, http: aiohttp.ClientSession) -> None:
        """After delete_task the task is gone."""
        task = sim.add_task()
        assert (await get_task(http, sim, task.id)).status == 200

        sim.delete_task(task.id)
        reply = await get_task(http, sim, task.id)

        assert reply.status == 404
        assert reply.json()["ErrorMessage"] == f"BatchTask id {task.id} not found"

    @pytest.mark.parametrize("raw", ["abc", "12x", "1.5"])
    async def test_non_integer_id_is_400(
        self, sim: Simulator, http: aiohttp.ClientSession, raw: str
    ) -> None:
        """A path id that is not an integer is a bad request, with an error object."""
        reply = await get_task(http, sim, raw)

        assert reply.status == 400
        assert reply.json()["Error"] is True

    async def test_records_every_request(self, sim: Simulator, http: aiohttp.ClientSession) -> None:
        """Each request served is listed as method and path, faults and errors included."""
        sim.add_task(id=201)
        sim.fail_next(1)

        await get_task(http, sim, 201)
        await get_task(http, sim, 201)
        await get_task(http, sim, 999)
        await list_tasks(http, sim, [], select="Id")

        assert sim.requests == [
            "GET /api/v1/BatchTask/201",
            "GET /api/v1/BatchTask/201",
            "GET /api/v1/BatchTask/999",
            "POST /api/v1/Agents/Batch/GetBatchTaskInfosByAssociates",
        ]


class TestAuthentication:
    @pytest.mark.parametrize(
        "authorization",
        [
            None,
            basic("batchmon", "wrong"),
            basic("someone", "batchmon"),
            "Basic not*base64",
            "Bearer 8A:Cust12345.token",
            "SOTicket 7T:ticket==",
        ],
    )
    async def test_rejects_missing_or_wrong_credentials(
        self, sim: Simulator, anonymous: aiohttp.ClientSession, authorization: str | None
    ) -> None:
        """Without the configured credentials every call is 401 with an error object."""
        task = sim.add_task()
        headers = {"Authorization": authorization} if authorization else {}

        reply = await call(anonymous, "GET", f"{sim.url}/v1/BatchTask/{task.id}", headers=headers)

        assert reply.status == 401
        assert reply.json()["ErrorType"] == "SoAuthenticationException"

    async def test_accepts_a_configured_ticket_or_token(
        self, clock: ManualClock, anonymous: aiohttp.ClientSession
    ) -> None:
        """SOTicket and Bearer work once the simulator is given a ticket and a token."""
        async with Simulator(clock=clock.now, ticket="7T:abc==", token="8A:Cust1.xyz") as sim:
            url = f"{sim.url}/v1/BatchTask/{sim.add_task().id}"
            statuses = [
                (await call(anonymous, "GET", url, headers={"Authorization": value})).status
                for value in ("SOTicket 7T:abc==", "soticket 7T:abc==", "Bearer 8A:Cust1.xyz")
            ]
            wrong = await call(anonymous, "GET", url, headers={"Authorization": "Bearer 8A:no"})

        assert statuses == [200, 200, 200]
        assert wrong.status == 401


class TestListCalls:
    @pytest.fixture(name="population")
    def _population(self, sim: Simulator) -> Simulator:
        sim.add_task(id=201, associate_id=0, name="Rebuild freetext index")
        sim.add_task(id=202, associate_id=113, state=BatchTaskState.STARTED)
        sim.add_task(id=203, associate_id=27)
        sim.add_task(id=204, associate_id=113)
        sim.delete_task(204)
        return sim

    @pytest.mark.parametrize(
        ("ids", "expected"),
        [
            ([], [201, 202, 203]),
            ([0], [201]),
            ([-1], [202, 203]),
            ([113], [202]),
            ([0, 27], [201, 203]),
        ],
    )
    async def test_associate_ids_select_tasks(
        self,
        population: Simulator,
        http: aiohttp.ClientSession,
        ids: list[int],
        expected: list[int],
    ) -> None:
        """[] is all tasks, 0 system tasks, -1 user tasks, else the listed owners; never deleted."""
        reply = await list_tasks(http, population, ids)

        assert reply.status == 200
        assert expected == [item["Id"] for item in reply.json()]
        tasks, rejected = parse_task_list(reply.body)
        assert rejected == []
        assert all(task.anomalies == () for task in tasks)

    async def test_select_nulls_the_other_fields(
        self, population: Simulator, http: aiohttp.ClientSession
    ) -> None:
        """$select keeps every key but nulls the fields not asked for; names are case-blind."""
        reply = await list_tasks(http, population, [], select="id, State,progresspercent")

        items = reply.json()
        assert len(items) == 3
        for item in items:
            assert list(item) == FIELDS
            kept = {key for key, value in item.items() if value is not None}
            assert {"Id", "State", "ProgressPercent"} == kept
        tasks, rejected = parse_task_list(reply.body)
        assert rejected == []
        assert [t.id for t in tasks if t.state is BatchTaskState.STARTED] == [202]

    @pytest.mark.parametrize(("state", "expected"), [("Started", [202]), ("all", [201, 202, 203])])
    async def test_by_associates_and_state_filters_on_state(
        self,
        population: Simulator,
        http: aiohttp.ClientSession,
        state: str,
        expected: list[int],
    ) -> None:
        """The AndState variant also filters on State; "All" is the wildcard."""
        body = {"AssociateIds": [], "State": state}

        reply = await call(http, "POST", population.url + BY_ASSOCIATES_AND_STATE, json=body)

        assert expected == [item["Id"] for item in reply.json()]

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            (BY_ASSOCIATES, b"not json"),
            (BY_ASSOCIATES, b"[113]"),
            (BY_ASSOCIATES, b"{}"),
            (BY_ASSOCIATES, b'{"AssociateIds": "113"}'),
            (BY_ASSOCIATES, b'{"AssociateIds": [true]}'),
            (BY_ASSOCIATES_AND_STATE, b'{"AssociateIds": [], "State": "Running"}'),
            (BY_ASSOCIATES_AND_STATE, b'{"AssociateIds": []}'),
        ],
    )
    async def test_rejects_a_bad_body(
        self, sim: Simulator, http: aiohttp.ClientSession, path: str, body: bytes
    ) -> None:
        """A body that is not the documented carrier is a 400 with an error object."""
        headers = {"Content-Type": "application/json"}

        reply = await call(http, "POST", sim.url + path, data=body, headers=headers)

        assert reply.status == 400
        assert reply.json()["Error"] is True


class TestFaults:
    async def test_serves_the_scripted_status_then_normal_answers(
        self, sim: Simulator, http: aiohttp.ClientSession
    ) -> None:
        """fail_next answers that many requests with the fault, then the API is back."""
        task = sim.add_task()
        sim.fail_next(2, 503, headers={"Retry-After": "3"})

        replies = [await get_task(http, sim, task.id) for _ in range(3)]

        assert [reply.status for reply in replies] == [503, 503, 200]
        assert replies[0].headers["Retry-After"] == "3"
        with pytest.raises(ParseError, match="SimulatedFault"):
            parse_task(replies[1].body)
        assert task.id == parse_task(replies[2].body).id
        assert len(sim.requests) == 3

    async def test_serves_a_raw_body_as_json(
        self, sim: Simulator, http: aiohttp.ClientSession
    ) -> None:
        """A scripted body is sent as is, labelled JSON, so the client's parser meets it."""
        sim.fail_next(1, 200, body="{not json")

        reply = await get_task(http, sim, 1)

        assert (reply.status, reply.body) == (200, b"{not json")
        assert reply.headers["Content-Type"].startswith("application/json")
        with pytest.raises(ParseError, match="not JSON"):
            parse_task(reply.body)

    async def test_faults_come_before_authentication(
        self, sim: Simulator, anonymous: aiohttp.ClientSession
    ) -> None:
        """A queued fault is what any next request gets, like an outage in front of the API."""
        sim.fail_next(
            1, 502, body=b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"}
        )

        reply = await call(anonymous, "GET", f"{sim.url}/v1/BatchTask/1")

        assert (reply.status, reply.headers["Content-Type"]) == (502, "text/html")

    @pytest.mark.parametrize(("count", "status"), [(-1, 503), (1, 99), (1, 600)])
    def test_refuses_nonsense(self, count: int, status: int) -> None:
        """A negative count or a status that is not a final HTTP status is refused."""
        with pytest.raises(ValueError, match="must"):
            Simulator().fail_next(count, status)


class TestScripting:
    async def test_set_task_changes_what_get_shows(
        self, sim: Simulator, http: aiohttp.ClientSession
    ) -> None:
        """set_task edits the live task between requests."""
        task = sim.add_task()

        sim.set_task(task.id, state=BatchTaskState.FAILED, progress=40, result="Failed: boom")
        info = parse_task((await get_task(http, sim, task.id)).body)

        assert (
            info.state,
            info.progress_percent,
            info.result,
        ) == (BatchTaskState.FAILED, 40, "Failed: boom")

    def test_refuses_unknown_fields_and_ids(self) -> None:
        """Typos in field names and unknown or duplicate ids fail loudly."""
        sim = Simulator()
        sim.add_task(id=201)

        with pytest.raises(TypeError, match="progres"):
            sim.set_task(201, progres=5)
        with pytest.raises(TypeError, match="id"):
            sim.set_task(201, id=5)
        with pytest.raises(KeyError):
            sim.set_task(999, progress=5)
        with pytest.raises(ValueError, match="already exists"):
            sim.add_task(id=201)

    def test_add_task_skips_taken_and_scenario_ids(self) -> None:
        """Auto ids start at first_id and never collide with existing or scenario tasks."""
        sim = Simulator(Scenario.generate(start=START), first_id=210)
        sim.add_task(id=211)

        ids = [sim.add_task().id for _ in range(3)]

        assert ids == [210, 220, 221]

    def test_refuses_an_unknown_date_style(self) -> None:
        """A misspelt tz_style fails at construction, not at the first request."""
        with pytest.raises(ValueError, match="tz_style"):
            Simulator(tz_style="local")

    async def test_url_exists_only_while_started(self) -> None:
        """The base URL ends in /api and goes away on stop."""
        sim = Simulator()
        with pytest.raises(RuntimeError):
            _ = sim.url

        url = await sim.start()
        assert url == sim.url
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api", url)
        await sim.stop()

        with pytest.raises(RuntimeError):
            _ = sim.url


def timeline(scenario: Scenario, seconds: int) -> list[list[dict[str, object]]]:
    """Every task's JSON at each whole second from the start."""
    tasks: dict[int, SimTask] = {}
    frames = []
    for second in range(seconds + 1):
        scenario.apply(tasks, START + timedelta(seconds=second))
        frames.append([task.to_json() for task in tasks.values() if not task.deleted])
    return frames


def states_in_order(samples: list[tuple[int, dict[str, Any]]]) -> list[str]:
    states: list[str] = []
    for _, item in samples:
        if not states or states[-1] != item["State"]:
            states.append(item["State"])
    return states


def longest_stall(samples: list[tuple[int, dict[str, Any]]]) -> int:
    """The longest run of seconds a task sat in Started without any progress change."""
    longest = run = 0
    previous: tuple[object, object] | None = None
    for _, item in samples:
        current = (item["ProgressPercent"], item["ProgressDescription"])
        run = run + 1 if item["State"] == "Started" and current == previous else 0
        longest = max(longest, run)
        previous = current if item["State"] == "Started" else None
    return longest


class TestScenario:
    async def test_default_scenario_plays_out_over_90_seconds(
        self, scenario_sim: Simulator, http: aiohttp.ClientSession, clock: ManualClock
    ) -> None:
        """Polled once a second, the default tasks run New→Aquired→Started→an end, with faults."""
        seen: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        deleted: dict[int, int] = {}
        for second in range(91):
            items = (await list_tasks(http, scenario_sim, [])).json()
            for item in items:
                seen.setdefault(item["Id"], []).append((second, item))
            for task_id in seen.keys() - {item["Id"] for item in items} - deleted.keys():
                assert (await get_task(http, scenario_sim, task_id)).status == 404
                deleted[task_id] = second
            clock.advance(1)

        assert len(seen) == 8
        full_runs = {
            task_id
            for task_id, samples in seen.items()
            if states_in_order(samples)[:3] == ["New", "Aquired", "Started"]
            and BatchTaskState(samples[-1][1]["State"]).is_terminal
        }
        done_in_a_minute = {
            task_id
            for task_id in full_runs
            if any(s <= 60 and BatchTaskState(i["State"]).is_terminal for s, i in seen[task_id])
        }
        assert len(done_in_a_minute) >= 5
        finals = {task_id: samples[-1][1] for task_id, samples in seen.items()}
        failed = [item for item in finals.values() if item["State"] == "Failed"]
        assert failed
        assert all(item["Result"].startswith("Failed: ") for item in failed)
        assert any(item["State"] == "SucceededManualCleanup" for item in finals.values())
        assert max(longest_stall(samples) for samples in seen.values()) >= 15
        assert len(deleted) == 1
        (gone,) = deleted
        assert finals[gone]["State"] == "Succeeded"
        assert any(item["IsSystemTask"] and item["AssociateId"] == 0 for item in finals.values())
        assert any(item["CancellationBehaviour"] == "CannotCancel" for item in finals.values())
        for samples in seen.values():
            for _, item in samples:
                never_ran = item["State"] in {"New", "Aquired"}
                assert (item["LastStarted"] is None) == never_ran
                assert item["StartCount"] == (0 if never_ran else 1)

    def test_same_seed_gives_the_same_timeline(self) -> None:
        """A seed reproduces its timeline exactly; another seed does not."""
        one = timeline(Scenario.generate(seed=7, start=START), 90)

        assert one == timeline(Scenario.generate(seed=7, start=START), 90)
        assert one != timeline(Scenario.generate(seed=8, start=START), 90)

    def test_speed_compresses_time(self) -> None:
        """At speed 2 a task shows at t what it shows at 2t at speed 1."""
        normal = Scenario.generate(start=START)
        fast = Scenario.generate(start=START, speed=2)
        slow_tasks: dict[int, SimTask] = {}
        fast_tasks: dict[int, SimTask] = {}

        for second in range(46):
            normal.apply(slow_tasks, START + timedelta(seconds=2 * second))
            fast.apply(fast_tasks, START + timedelta(seconds=second))

            assert {
                (t.id, t.state, t.progress, t.progress_description, t.deleted)
                for t in slow_tasks.values()
            } == {
                (t.id, t.state, t.progress, t.progress_description, t.deleted)
                for t in fast_tasks.values()
            }

    def test_tasks_exist_from_their_created_time(self) -> None:
        """Before a task's Created time it does not exist; afterwards Created is in the past."""
        scenario = Scenario.generate(start=START)
        tasks: dict[int, SimTask] = {}

        scenario.apply(tasks, START - timedelta(seconds=5))
        assert tasks == {}
        for second in range(20):
            now = START + timedelta(seconds=second)
            scenario.apply(tasks, now)
            assert all(task.created <= now for task in tasks.values())
        assert sorted(scenario.task_ids) == sorted(tasks)

    async def test_leaves_hand_added_tasks_alone(
        self, scenario_sim: Simulator, http: aiohttp.ClientSession, clock: ManualClock
    ) -> None:
        """Only the scenario's own tasks move; a task added by a test stays as scripted."""
        task = scenario_sim.add_task()
        clock.advance(60)

        info = parse_task((await get_task(http, scenario_sim, task.id)).body)

        assert info.state == BatchTaskState.NEW
        assert scenario_sim.tasks[212].state != BatchTaskState.NEW

    def test_refuses_a_naive_start_or_a_stopped_clock(self) -> None:
        """The start must be aware and the speed positive."""
        with pytest.raises(ValueError, match="aware"):
            Scenario.generate(start=datetime(2026, 11, 28))  # noqa: DTZ001 - the point of the test
        with pytest.raises(ValueError, match="speed"):
            Scenario.generate(start=START, speed=0)


def spec_problems(value: object, schema: dict[str, Any], definitions: dict[str, Any]) -> list[str]:
    """Where ``value`` breaks ``schema`` (Swagger 2.0, nulls allowed everywhere)."""
    if value is None:
        return []
    if "$ref" in schema:
        return spec_problems(value, definitions[schema["$ref"].rsplit("/", 1)[1]], definitions)
    kinds = {"integer": int, "string": str, "boolean": bool, "object": dict, "array": list}
    expected = schema.get("type", "object")
    if not isinstance(value, kinds[expected]) or (
        expected == "integer" and isinstance(value, bool)
    ):
        return [f"{value!r} is not {expected}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{value!r} not in {schema['enum']}")
    if schema.get("format") == "date-time" and isinstance(value, str):
        parse_datetime(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                problems += [
                    f"{key}: {p}" for p in spec_problems(item, properties[key], definitions)
                ]
            elif extra is not None:
                problems += [f"{key}: {p}" for p in spec_problems(item, extra, definitions)]
            else:
                problems.append(f"{key} is not a property")
    return problems


class TestSpecConformance:
    async def test_every_answer_fits_the_vendor_schema(
        self, scenario_sim: Simulator, http: aiohttp.ClientSession, clock: ManualClock
    ) -> None:
        """Every BatchTaskInfo served has exactly the spec's properties, each of its type."""
        if not SPEC.exists():
            pytest.skip(f"{SPEC} is not available")
        definitions = json.loads(SPEC.read_text(encoding="utf-8"))["definitions"]
        schema = definitions["SuperOffice.CRM.Services.BatchTaskInfo"]
        items: list[dict[str, Any]] = []
        for _ in range(10):
            listed = (await list_tasks(http, scenario_sim, [])).json()
            items += listed
            items += (await list_tasks(http, scenario_sim, [-1], select="Id,State")).json()
            for item in listed:
                items.append((await get_task(http, scenario_sim, item["Id"])).json())
            clock.advance(9)

        assert len(items) > 100
        for item in items:
            assert set(schema["properties"]) == set(item)
            assert spec_problems(item, schema, definitions) == []
            assert item["State"] in (None, *(state.value for state in BatchTaskState))


@pytest.fixture(name="app_key", scope="module")
def _app_key() -> rsa.RSAPrivateKey:
    """The app's key pair, made for this run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class TestOnline:
    """The opt-in SuperOffice Online pieces: tenant status, OAuth, system users, faults."""

    @pytest.fixture(name="tenant")
    def _tenant(self) -> OnlineTenant:
        return OnlineTenant(context_id="Cust12345", node="online1", valid_for=300)

    @pytest.fixture(name="online")
    async def _online(
        self, clock: ManualClock, tenant: OnlineTenant, app_key: rsa.RSAPrivateKey
    ) -> AsyncIterator[Simulator]:
        async with Simulator(
            clock=clock.now,
            tenant=tenant,
            oauth=OAuthApp(token_lifetime=60),
            system_user=SystemUserApp(public_key=app_key.public_key()),
        ) as sim:
            yield sim

    async def test_tenant_status_names_the_numbered_host(
        self, online: Simulator, anonymous: aiohttp.ClientSession
    ) -> None:
        """The status API gives the tenant's API base, its state and ValidUntil."""
        reply = await call(anonymous, "GET", f"{online.environment_url}/api/state/Cust12345")

        data = reply.json()
        endpoint = f"{online.environment_url}/online1/Cust12345"
        assert (endpoint, endpoint + "/api", "Running", True) == (
            data["Endpoint"],
            data["Api"],
            data["State"],
            data["IsRunning"],
        )
        assert START + timedelta(seconds=300) == parse_datetime(data["ValidUntil"])
        assert online.tenant_url == data["Api"]

    @pytest.mark.parametrize(
        ("change", "status", "message"),
        [
            ({"node": "online2"}, 421, "Wrong subdomain used to access tenant"),
            ({"state": "OfflineMaintenance"}, 503, "Tenant Cust12345 is OfflineMaintenance"),
            ({"state": "OnlineMaintenance"}, 200, None),
        ],
        ids=["moved", "offline", "online-maintenance"],
    )
    async def test_numbered_host_follows_the_tenant(
        self,
        online: Simulator,
        tenant: OnlineTenant,
        http: aiohttp.ClientSession,
        change: dict[str, str],
        status: int,
        message: str | None,
    ) -> None:
        """After a move the old host says 421; a tenant offline for maintenance gives 503."""
        old = online.tenant_url
        task = online.add_task()
        for key, value in change.items():
            setattr(tenant, key, value)

        reply = await call(http, "GET", f"{old}/v1/BatchTask/{task.id}")

        assert status == reply.status
        if message is not None:
            assert message == reply.json()["ErrorMessage"]

    async def test_unknown_tenant_is_not_running(
        self, online: Simulator, anonymous: aiohttp.ClientSession
    ) -> None:
        """A context identifier the simulator does not host is Unknown and not running."""
        reply = await call(anonymous, "GET", f"{online.environment_url}/api/state/Cust999")

        assert ("Unknown", False) == (reply.json()["State"], reply.json()["IsRunning"])

    async def test_oauth_tokens_work_until_their_lifetime_ends(
        self, online: Simulator, anonymous: aiohttp.ClientSession, clock: ManualClock
    ) -> None:
        """A refreshed access token opens the API, and gets 401 once older than its lifetime."""
        app = OAuthApp()
        form = {
            "grant_type": "refresh_token",
            "client_id": app.client_id,
            "client_secret": app.client_secret,
            "refresh_token": app.refresh_token,
        }
        granted = await call(
            anonymous, "POST", online.environment_url + "/login/common/oauth/tokens", data=form
        )
        token = granted.json()["access_token"]
        url = f"{online.url}/v1/BatchTask/{online.add_task().id}"
        headers = {"Authorization": f"Bearer {token}"}

        fresh = await call(anonymous, "GET", url, headers=headers)
        clock.advance(60)
        stale = await call(anonymous, "GET", url, headers=headers)

        assert (60, "Bearer") == (granted.json()["expires_in"], granted.json()["token_type"])
        assert token.startswith("8A:Cust12345.")
        assert (200, 401) == (fresh.status, stale.status)

    @pytest.mark.parametrize(
        ("change", "status", "error"),
        [
            ({"client_secret": "wrong"}, 401, "invalid_client"),
            ({"refresh_token": "wrong"}, 400, "invalid_grant"),
            ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ],
    )
    async def test_oauth_refusals(
        self,
        online: Simulator,
        anonymous: aiohttp.ClientSession,
        change: dict[str, str],
        status: int,
        error: str,
    ) -> None:
        """Wrong client, refresh token or grant type get the OAuth error for it."""
        app = OAuthApp()
        form = {
            "grant_type": "refresh_token",
            "client_id": app.client_id,
            "client_secret": app.client_secret,
            "refresh_token": app.refresh_token,
            **change,
        }

        reply = await call(
            anonymous, "POST", online.environment_url + "/login/common/oauth/tokens", data=form
        )

        assert (status, error) == (reply.status, reply.json()["error"])

    async def test_system_user_login_gives_a_verifiable_ticket(
        self,
        online: Simulator,
        anonymous: aiohttp.ClientSession,
        clock: ManualClock,
        app_key: rsa.RSAPrivateKey,
    ) -> None:
        """A correctly signed token gets a JWT the JWKS verifies; its ticket needs SO-AppToken."""
        app = SystemUserApp(public_key=app_key.public_key())
        body = {
            "SignedSystemToken": sign_system_user_token(
                app.system_user_token, app_key, clock.now()
            ),
            "ApplicationToken": app.client_secret,
            "ContextIdentifier": "Cust12345",
            "ReturnTokenType": "JWT",
        }
        login = await call(
            anonymous,
            "POST",
            online.environment_url + "/Login/api/PartnerSystemUser/Authenticate",
            json=body,
        )
        keys = (await call(anonymous, "GET", online.environment_url + JWKS_PATH)).json()
        token = login.json()["Token"]
        signing_key = jwt.PyJWKSet.from_dict(keys)[jwt.get_unverified_header(token)["kid"]]
        claims = jwt.decode(
            token,
            signing_key,
            algorithms=["RS256"],
            audience="spn:1801550193",
            issuer="SuperOffice AS",
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
        ticket = claims[TICKET_CLAIM]
        url = f"{online.tenant_url}/v1/BatchTask/{online.add_task().id}"
        with_app = {"Authorization": f"SOTicket {ticket}", "SO-AppToken": app.client_secret}
        without_app = {"Authorization": f"SOTicket {ticket}"}

        statuses = [
            (await call(anonymous, "GET", url, headers=headers)).status
            for headers in (with_app, without_app)
        ]

        assert (True, "") == (login.json()["IsSuccessful"], login.json()["ErrorMessage"])
        assert ticket.startswith("7T:")
        assert [200, 401] == statuses

    @pytest.mark.parametrize(
        ("change", "problem"),
        [
            ({"minutes": 10}, "InvalidTimestamp"),
            ({"signature": "c2lnbmF0dXJl"}, "InvalidSignature"),
            ({"ApplicationToken": "wrong"}, "Unknown application token"),
            ({"ContextIdentifier": "Cust999"}, "The application is not approved for 'Cust999'"),
        ],
        ids=["stale", "forged", "app-token", "tenant"],
    )
    async def test_system_user_refusals(
        self,
        online: Simulator,
        anonymous: aiohttp.ClientSession,
        clock: ManualClock,
        app_key: rsa.RSAPrivateKey,
        change: dict[str, Any],
        problem: str,
    ) -> None:
        """A stale or forged signature, or the wrong app or tenant, is refused with its reason."""
        app = SystemUserApp(public_key=app_key.public_key())
        when = clock.now() - timedelta(minutes=change.pop("minutes", 0))
        signed = sign_system_user_token(app.system_user_token, app_key, when)
        if "signature" in change:
            signed = signed.rpartition(".")[0] + "." + change.pop("signature")
        body = {
            "SignedSystemToken": signed,
            "ApplicationToken": app.client_secret,
            "ContextIdentifier": "Cust12345",
            "ReturnTokenType": "JWT",
            **change,
        }

        reply = await call(
            anonymous,
            "POST",
            online.environment_url + "/Login/api/PartnerSystemUser/Authenticate",
            json=body,
        )

        assert {"IsSuccessful": False, "Token": None, "ErrorMessage": problem} == reply.json()

    async def test_hang_and_truncate(self, sim: Simulator, http: aiohttp.ClientSession) -> None:
        """A hung request gets no answer in time; a truncated one breaks off mid-body."""
        task = sim.add_task()
        sim.hang_next()
        with pytest.raises(TimeoutError):
            await call(
                http,
                "GET",
                f"{sim.url}/v1/BatchTask/{task.id}",
                timeout=aiohttp.ClientTimeout(total=0.2),
            )
        sim.truncate_next()
        with pytest.raises(aiohttp.ClientPayloadError):
            await get_task(http, sim, task.id)

        assert 200 == (await get_task(http, sim, task.id)).status

    def test_system_user_needs_a_tenant(self, app_key: rsa.RSAPrivateKey) -> None:
        """A system user without a tenant to log in to is refused at construction."""
        with pytest.raises(ValueError, match="tenant"):
            Simulator(system_user=SystemUserApp(public_key=app_key.public_key()))


class TestChurn:
    def test_batches_of_short_tasks_run_their_course(self) -> None:
        """Each batch appears at its time, runs New→Started→its end, and is deleted after."""
        scenario = Scenario.churn(
            start=START, every=2, batch=3, until=4, fail_ratio=0.5, delete_after=6, seed=3
        )
        ids = scenario.task_ids
        tasks: dict[int, SimTask] = {}

        scenario.apply(tasks, START + timedelta(seconds=0.5))
        assert sorted(tasks) == list(ids[:3])
        assert {BatchTaskState.NEW} == {task.state for task in tasks.values()}
        assert 9 == len(ids)
        for task_id in ids:
            (created, new), (started, run), (ended, end), (deleted, gone) = scenario.timeline(
                task_id
            )
            assert (new, run, gone) == (BatchTaskState.NEW, BatchTaskState.STARTED, None)
            assert end in {BatchTaskState.FAILED, BatchTaskState.SUCCEEDED}
            assert created == 2 * (ids.index(task_id) // 3)
            assert 1 <= started - created <= 2
            assert 3 <= ended - started <= 8
            assert 6 == pytest.approx(deleted - ended)
            for at, state in scenario.timeline(task_id):
                scenario.apply(tasks, START + timedelta(seconds=at + 0.01))
                shown = None if tasks[task_id].deleted else tasks[task_id].state
                assert state == shown
        finals = [scenario.timeline(task_id)[2][1] for task_id in ids]
        assert {BatchTaskState.FAILED, BatchTaskState.SUCCEEDED} == set(finals)
        assert all(
            tasks[i].result.startswith("Failed: ")
            for i in ids
            if tasks[i].state == BatchTaskState.FAILED
        )

    def test_refuses_a_stream_that_cannot_run(self) -> None:
        """A batch needs a positive period and size, and a ratio within 0..1."""
        with pytest.raises(ValueError, match="every"):
            Scenario.churn(start=START, every=0, batch=1, until=1)
        with pytest.raises(ValueError, match="fail_ratio"):
            Scenario.churn(start=START, every=1, batch=1, until=1, fail_ratio=2)
