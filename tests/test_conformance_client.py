"""The client asks what SuperOffice expects (issue 8, point 2).

Every request the client can make is captured at a loopback recording server and checked against
SuperOffice's OpenAPI description (``tests/spec/``, through ``tests/openapi.py``): the operation
exists for its method and path, every path, query and header value is one the operation declares
and fits its type, ``Accept``/``Content-Type`` are media types it produces/consumes,
``Authorization`` is a scheme of its security definitions, and the JSON body fits its carrier.
"""

from __future__ import annotations

import base64
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from monitor.superoffice.auth import auth_from_config
from monitor.superoffice.client import SuperOfficeClient, open_session
from monitor.superoffice.models import BatchTaskInfo
from tests import openapi
from tests.conftest import Reply, ScriptedServer, Seen, make_config

INT32_MAX = 2**31 - 1
TASK = json.dumps({"Id": 212, "Name": "Export", "State": "Started", "ProgressPercent": 30})

Call = Callable[[SuperOfficeClient], Awaitable[object]]
#: The ``State`` values the carrier's schema allows, "All" included.
STATE_ARGUMENTS: list[str] = openapi.definition(
    "SuperOffice.WebApi.v1.Carriers.BatchCarriers.GetBatchTaskInfosByAssociatesAndStateRequest",
    openapi.AGENT_FILE,
)["properties"]["State"]["enum"]

#: Every public request method of the client, each with the arguments worth sending and the
#: operation the request must be; a new method needs a row here (TestCoverage says so).
CALLS: dict[str, tuple[str, str, list[tuple[str, Call]]]] = {
    "get_task": (
        "v1Batch_GetBatchTaskInfo",
        TASK,
        [
            ("id-1", lambda c: c.get_task(1)),
            ("id-212", lambda c: c.get_task(212)),
            ("id-int32-max", lambda c: c.get_task(INT32_MAX)),
        ],
    ),
    "list_tasks_by_associates": (
        "v1BatchAgent_GetBatchTaskInfosByAssociates",
        f"[{TASK}]",
        [
            ("all", lambda c: c.list_tasks_by_associates()),
            ("system", lambda c: c.list_tasks_by_associates([0])),
            ("all-users", lambda c: c.list_tasks_by_associates([-1])),
            ("some", lambda c: c.list_tasks_by_associates([113, 27, INT32_MAX])),
            (
                "poll-fields",
                lambda c: c.list_tasks_by_associates([], select=BatchTaskInfo.POLL_FIELDS),
            ),
            ("one-field", lambda c: c.list_tasks_by_associates([-1], select=["State"])),
        ],
    ),
    "list_tasks_in_state": (
        "v1BatchAgent_GetBatchTaskInfosByAssociatesAndState",
        f"[{TASK}]",
        [
            *(
                (f"state-{state}", lambda c, state=state: c.list_tasks_in_state([], state))
                for state in STATE_ARGUMENTS
            ),
            (
                "poll-fields",
                lambda c: c.list_tasks_in_state([-1], "Started", select=BatchTaskInfo.POLL_FIELDS),
            ),
            ("some", lambda c: c.list_tasks_in_state([0, 113, INT32_MAX], "All")),
        ],
    ),
    "stop_batch_job": (
        "v1BatchAgent_StopBatchJob",
        "true",
        [
            ("id-212", lambda c: c.stop_batch_job(212)),
            ("id-int32-max", lambda c: c.stop_batch_job(INT32_MAX)),
        ],
    ),
}
CASES = [
    pytest.param(method, operation_id, reply, call, id=f"{method}-{name}")
    for method, (operation_id, reply, calls) in CALLS.items()
    for name, call in calls
]
AUTHS = {
    "basic": {"type": "basic", "username": "batchmon", "password": "p:ss wörd"},
    "ticket": {"type": "ticket", "ticket": "7T:dGVzdA=="},
    "bearer": {"type": "bearer", "token": "8A:Cust12345.AXRrCITpPBvQX3UbIohb"},
}
ALL_HEADERS = {
    "accept_language": "nb",
    "so_language": "en",
    "so_culture": "sv",
    "so_time_zone": "UTC, includeTZOffset",
    "app_token": "app-secret-1",
}


async def client_for(url: str, **superoffice: object) -> AsyncIterator[SuperOfficeClient]:
    config = make_config(url, superoffice=superoffice).superoffice
    async with open_session(config) as session:
        yield SuperOfficeClient(session, config, auth_from_config(config.auth))


async def capture(scripted: ScriptedServer, reply: str, call: Call, **superoffice: object) -> Seen:
    """The one request ``call`` makes, answered with ``reply``."""
    scripted.replies.append(Reply(body=reply))
    async for client in client_for(scripted.url, **superoffice):
        await call(client)
    (seen,) = scripted.seen
    return seen


def problems(seen: Seen) -> list[str]:
    return openapi.request_problems(seen.method, seen.path, seen.query, seen.headers, seen.body)


def operation_of(seen: Seen) -> str:
    (found,) = openapi.match(seen.method, seen.path)
    return found[0].operation_id


class TestRequests:
    """Each request the client makes is one the spec describes."""

    @pytest.mark.parametrize(("method", "operation_id", "reply", "call"), CASES)
    async def test_fits_its_operation(
        self, scripted: ScriptedServer, method: str, operation_id: str, reply: str, call: Call
    ) -> None:
        """Path, method, query, headers and body fit the operation, with no optional header."""
        seen = await capture(scripted, reply, call)

        assert operation_id == operation_of(seen)
        assert [] == problems(seen)

    @pytest.mark.parametrize(("method", "operation_id", "reply", "call"), CASES)
    async def test_fits_with_every_optional_header(
        self, scripted: ScriptedServer, method: str, operation_id: str, reply: str, call: Call
    ) -> None:
        """Language, culture, time zone and app token go in the headers the operation declares."""
        seen = await capture(scripted, reply, call, **ALL_HEADERS)

        declared = set(openapi.operation(operation_id).parameters("header"))
        assert {"accept-language", "so-language", "so-culture", "so-timezone", "so-apptoken"} == (
            declared & {name.lower() for name in seen.headers}
        )
        assert [] == problems(seen)

    @pytest.mark.parametrize("auth", AUTHS.values(), ids=AUTHS.keys())
    @pytest.mark.parametrize(
        ("reply", "call"),
        [(CALLS[name][1], CALLS[name][2][0][1]) for name in CALLS],
        ids=list(CALLS),
    )
    async def test_authorization_is_a_declared_scheme(
        self, scripted: ScriptedServer, auth: dict[str, str], reply: str, call: Call
    ) -> None:
        """Basic, SOTicket and Bearer each fit one of the security definitions."""
        seen = await capture(scripted, reply, call, auth=auth)

        assert [] == problems(seen)

    async def test_select_names_spec_properties(self) -> None:
        """The fields a bulk poll selects are all BatchTaskInfo properties."""
        assert set() == set(BatchTaskInfo.POLL_FIELDS) - set(openapi.batch_task_info_properties())


class TestCoverage:
    """The table above stays complete as the client grows."""

    def test_every_request_method_is_checked(self) -> None:
        """Each public coroutine of SuperOfficeClient has a row in CALLS."""
        public = {
            name
            for name, member in inspect.getmembers(SuperOfficeClient)
            if inspect.iscoroutinefunction(member) and not name.startswith("_")
        }

        assert set(CALLS) == public, "add the new request method to CALLS in this file"


BASIC = "Basic " + base64.b64encode(b"u:p").decode()
GOOD_GET: dict[str, Any] = {
    "method": "GET",
    "path": "/api/v1/BatchTask/212",
    "query": {},
    "headers": {"Accept": "application/json", "Authorization": BASIC, "User-Agent": "t"},
    "body": b"",
}
GOOD_POST: dict[str, Any] = {
    "method": "POST",
    "path": "/api/v1/Agents/Batch/GetBatchTaskInfosByAssociatesAndState",
    "query": {"$select": "Id,State"},
    "headers": {
        "Accept": "application/json",
        "Authorization": "Bearer 8A:x",
        "Content-Type": "application/json; charset=utf-8",
    },
    "body": b'{"AssociateIds": [-1], "State": "Started"}',
}


def changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    request = {**base, **changes}
    for key in ("query", "headers"):
        if isinstance(changes.get(key), dict):
            request[key] = {**base[key], **changes[key]}
    return request


class TestChecker:
    """The check finds what the spec does not describe (so a pass means something)."""

    @pytest.mark.parametrize("request_", [GOOD_GET, GOOD_POST], ids=["get", "post"])
    def test_accepts_a_conforming_request(self, request_: dict[str, Any]) -> None:
        """A request that follows the spec has no problem."""
        assert [] == openapi.request_problems(**request_)

    @pytest.mark.parametrize(
        ("request_", "problem"),
        [
            (changed(GOOD_GET, path="/api/v1/BatchTask/2147483648"), "matches 0 operations"),
            (changed(GOOD_GET, path="/api/v1/BatchTasks/212"), "matches 0 operations"),
            (changed(GOOD_GET, method="PATCH"), "matches 0 operations"),
            (changed(GOOD_GET, query={"$select": "Id"}), "'$select' is not declared"),
            (changed(GOOD_GET, headers={"X-XSRF-TOKEN": "t"}), "'x-xsrf-token' is not declared"),
            (changed(GOOD_GET, headers={"Accept": "text/html"}), "Accept 'text/html'"),
            (changed(GOOD_GET, headers={"Authorization": "Digest x"}), "scheme 'digest'"),
            (changed(GOOD_GET, headers={"Authorization": "Basic !!"}), "not base64"),
            (changed(GOOD_GET, headers={"Authorization": "Basic dXNlcg=="}), "no ':'"),
            (changed(GOOD_GET, body=b"{}"), "takes no body"),
            (
                changed(GOOD_GET, headers={"Content-Type": "application/json"}),
                "is not consumed",
            ),
            (
                {**GOOD_GET, "headers": {"Accept": "application/json"}},
                "no Authorization",
            ),
            (changed(GOOD_POST, query={"$select": "Id,Progress"}), "'Progress', not a"),
            (changed(GOOD_POST, query={"$top": "5"}), "'$top' is not declared"),
            (
                changed(GOOD_POST, headers={"Content-Type": "application/pdf"}),
                "is not consumed",
            ),
            (changed(GOOD_POST, body=b""), "requires a body"),
            (changed(GOOD_POST, body=b"{"), "not JSON"),
            (changed(GOOD_POST, body=b'{"AssociateIds": "1"}'), "is not of type 'array'"),
            (changed(GOOD_POST, body=b'{"AssociateIds": null}'), "is not of type 'array'"),
            (changed(GOOD_POST, body=b'{"AssociateIds": [2147483648]}'), "maximum"),
            (changed(GOOD_POST, body=b'{"State": "Cancelled"}'), "is not one of"),
            (changed(GOOD_POST, body=b'{"Ids": [1]}'), "'Ids' was unexpected"),
        ],
        ids=[
            "id-beyond-int32",
            "unknown-path",
            "undeclared-method",
            "query-on-get",
            "undeclared-header",
            "accept-not-produced",
            "unknown-auth-scheme",
            "basic-not-base64",
            "basic-without-colon",
            "body-on-get",
            "content-type-on-get",
            "no-authorization",
            "select-unknown-field",
            "undeclared-query",
            "content-type-not-consumed",
            "missing-body",
            "body-not-json",
            "carrier-wrong-type",
            "carrier-null",
            "carrier-beyond-int32",
            "carrier-unknown-enum",
            "carrier-unknown-property",
        ],
    )
    def test_finds(self, request_: dict[str, Any], problem: str) -> None:
        """Each departure from the spec is named."""
        found = openapi.request_problems(**request_)

        assert [problem] == [problem for line in found if problem in line], found
