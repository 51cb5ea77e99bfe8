"""The SuperOffice client against real loopback servers: headers, auth, error mapping."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from monitor.superoffice.auth import auth_from_config
from monitor.superoffice.client import (
    MAX_TASK_BYTES,
    AnswerMemo,
    SuperOfficeClient,
    open_session,
)
from monitor.superoffice.errors import (
    ApiError,
    ApiTimeout,
    AuthenticationFailed,
    MalformedResponse,
    Misdirected,
    NetworkError,
    NotFound,
    RateLimited,
    RequestRejected,
    ServerError,
    Unauthorized,
)
from monitor.superoffice.models import BatchTaskState
from tests.conftest import Reply, ScriptedServer, make_config

SEED = (Path(__file__).parent / "fixtures" / "seed_batchtask_212.json").read_text()
TASK = json.dumps({"Id": 212, "Name": "Export", "State": "Started", "ProgressPercent": 30})


async def _client(url: str, **superoffice: object) -> AsyncIterator[SuperOfficeClient]:
    """A client for ``url`` that does not retry, unless ``retries`` says otherwise."""
    config = make_config(url, superoffice={"retries": 0, **superoffice}).superoffice
    async with open_session(config) as session:
        yield SuperOfficeClient(session, config, auth_from_config(config.auth))


class TestRequests:
    """What the client sends."""

    async def test_get_task_path_and_headers(self, scripted: ScriptedServer) -> None:
        """GET {url}/v1/BatchTask/{id} with Accept, language, culture, zone and app token."""
        scripted.replies.append(Reply(body=TASK))
        async for client in _client(
            scripted.url,
            accept_language="sv",
            so_language="en",
            so_culture="nb",
            so_time_zone="UTC, includeTZOffset",
            app_token="app-token-1",
        ):
            task = await client.get_task(212)

        assert (212, BatchTaskState.STARTED, 30) == (task.id, task.state, task.progress_percent)
        (seen,) = scripted.seen
        assert ("GET", "/api/v1/BatchTask/212") == (seen.method, seen.path)
        expected = {
            "Accept": "application/json",
            "Accept-Language": "sv",
            "SO-Language": "en",
            "SO-Culture": "nb",
            "SO-TimeZone": "UTC, includeTZOffset",
            "SO-AppToken": "app-token-1",
            "Authorization": "Basic " + base64.b64encode(b"batchmon:batchmon").decode(),
        }
        assert expected == {k: seen.headers[k] for k in expected}

    async def test_optional_headers_are_left_out(self, scripted: ScriptedServer) -> None:
        """Headers that are not configured are not sent at all."""
        scripted.replies.append(Reply(body=TASK))
        async for client in _client(scripted.url):
            await client.get_task(212)

        headers = scripted.seen[0].headers
        assert not {
            "Accept-Language",
            "SO-Language",
            "SO-Culture",
            "SO-TimeZone",
            "SO-AppToken",
        } & set(headers)

    @pytest.mark.parametrize(
        ("auth", "header"),
        [
            ({"type": "ticket", "ticket": "7T:abc"}, "SOTicket 7T:abc"),
            ({"type": "bearer", "token": "8A:Cust1.xyz"}, "Bearer 8A:Cust1.xyz"),
            (
                {"type": "basic", "username": "u", "password": "p:w"},
                "Basic " + base64.b64encode(b"u:p:w").decode(),
            ),
        ],
        ids=["ticket", "bearer", "basic"],
    )
    async def test_auth_schemes(
        self, scripted: ScriptedServer, auth: dict[str, str], header: str
    ) -> None:
        """Each static scheme sends its Authorization header."""
        scripted.replies.append(Reply(body=TASK))
        async for client in _client(scripted.url, auth=auth):
            await client.get_task(212)

        assert header == scripted.seen[0].headers["Authorization"]

    async def test_list_by_associates_with_select(self, scripted: ScriptedServer) -> None:
        """The agent list call posts AssociateIds and passes $select."""
        scripted.replies.append(Reply(body=f"[{TASK}, 7]"))
        async for client in _client(scripted.url):
            tasks, rejected = (
                await client.list_tasks_by_associates([-1], select=["Id", "State"])
            ).tasks()

        assert [212] == [t.id for t in tasks]
        assert 1 == len(rejected)
        seen = scripted.seen[0]
        assert ("POST", "/api/v1/Agents/Batch/GetBatchTaskInfosByAssociates") == (
            seen.method,
            seen.path,
        )
        assert {"$select": "Id,State"} == seen.query
        assert {"AssociateIds": [-1]} == json.loads(seen.body)
        assert "application/json" == seen.headers["Content-Type"]

    async def test_seed_sample_over_the_wire(self, scripted: ScriptedServer) -> None:
        """The documented sample response parses through the client."""
        scripted.replies.append(Reply(body=SEED))
        async for client in _client(scripted.url):
            task = await client.get_task(212)

        assert "campaign_export_2024.csv" == task.file_name


# A date in the past: whenever the test runs, the wait is 0.
HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
ERROR_BODY = json.dumps(
    {"Error": True, "ErrorType": "SoNotFoundException", "ErrorMessage": "BatchTask 5 not found"}
)


class TestErrors:
    """Every failure maps to one class of the hierarchy."""

    @pytest.mark.parametrize(
        ("reply", "error", "reason"),
        [
            (Reply(404, ERROR_BODY), NotFound, "not_found"),
            (Reply(401, b""), AuthenticationFailed, "auth_failed"),
            (Reply(403, b"Forbidden"), Unauthorized, "unauthorized"),
            (Reply(421, b"Wrong subdomain used to access tenant"), Misdirected, "misdirected"),
            (Reply(429, b"", {"Retry-After": "3"}), RateLimited, "rate_limited"),
            (Reply(500, b"oops"), ServerError, "server_error"),
            (
                Reply(503, b"<html>maintenance</html>", {"Retry-After": HTTP_DATE}),
                ServerError,
                "server_error",
            ),
            (Reply(400, b"bad"), RequestRejected, "rejected"),
            (Reply(200, b"<html>login</html>"), MalformedResponse, "malformed"),
            (Reply(200, ERROR_BODY), MalformedResponse, "malformed"),
            (Reply(200, b"{" + b" " * MAX_TASK_BYTES + b"}"), MalformedResponse, "malformed"),
            (Reply(200, TASK, delay=3), ApiTimeout, "timeout"),
        ],
        ids=[
            "404",
            "401",
            "403",
            "421",
            "429",
            "500",
            "503",
            "400",
            "html 200",
            "error object 200",
            "oversized",
            "timeout",
        ],
    )
    async def test_mapping(
        self, scripted: ScriptedServer, reply: Reply, error: type[ApiError], reason: str
    ) -> None:
        """The status or failure becomes the right error, its request counted by reason.

        A 401 is counted as the answer it was; the error says the static credentials are
        refused for good.
        """
        scripted.replies.append(reply)
        async for client in _client(scripted.url, timeout="1s"):
            with pytest.raises(error) as info:
                await client.get_task(5)
            counted = "unauthorized" if reason == "auth_failed" else reason
            assert {counted: 1} == dict(client.stats.failures)
            assert 1 == client.stats.requests
            assert 1 == client.stats.durations.count

        assert reason == info.value.reason

    async def test_superoffice_error_fields_are_kept(self, scripted: ScriptedServer) -> None:
        """ErrorType and ErrorMessage from the body travel with the error."""
        scripted.replies.append(Reply(404, ERROR_BODY))
        async for client in _client(scripted.url):
            with pytest.raises(NotFound) as info:
                await client.get_task(5)

        assert ("SoNotFoundException", "BatchTask 5 not found") == (
            info.value.error_type,
            info.value.error_message,
        )
        assert "SoNotFoundException" in str(info.value)

    @pytest.mark.parametrize(
        ("header", "low", "high"),
        [("3", 3, 3), (None, 100, 121)],
        ids=["seconds", "http-date"],
    )
    async def test_retry_after(
        self, scripted: ScriptedServer, header: str | None, low: float, high: float
    ) -> None:
        """429's Retry-After is parsed in both of its forms (None: a date 120 s from now)."""
        if header is None:
            header = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
        scripted.replies.append(Reply(429, b"", {"Retry-After": header}))
        async for client in _client(scripted.url):
            with pytest.raises(RateLimited) as info:
                await client.get_task(5)

        assert info.value.retry_after is not None
        assert low <= info.value.retry_after <= high

    async def test_connection_refused(self) -> None:
        """A closed port is a network error, not a crash."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        async for client in _client(f"http://127.0.0.1:{port}/api"):
            with pytest.raises(NetworkError) as info:
                await client.get_task(5)

        assert "network" == info.value.reason


class TestListInState:
    """The list call that filters on state."""

    async def test_posts_associates_and_state(self, scripted: ScriptedServer) -> None:
        """AssociateIds and State go in the body, $select in the query."""
        scripted.replies.append(Reply(body=f"[{TASK}]"))
        async for client in _client(scripted.url):
            tasks, rejected = (
                await client.list_tasks_in_state([], "Started", select=["Id"])
            ).tasks()

        assert ([212], []) == ([t.id for t in tasks], rejected)
        seen = scripted.seen[0]
        assert "/api/v1/Agents/Batch/GetBatchTaskInfosByAssociatesAndState" == seen.path
        assert {"AssociateIds": [], "State": "Started"} == json.loads(seen.body)
        assert {"$select": "Id"} == seen.query


class TestAnswerMemo:
    """An answer identical to the task's last one is not parsed again."""

    async def test_same_bytes_same_object(self, scripted: ScriptedServer) -> None:
        """Same body: the object of last time; other body or other task: parsed anew."""
        moved = json.dumps({"Id": 212, "Name": "Export", "State": "Started", "ProgressPercent": 40})
        other = json.dumps({"Id": 213, "Name": "Export", "State": "Started", "ProgressPercent": 30})
        for body in (TASK, TASK, moved, moved, other, TASK, TASK):
            scripted.replies.append(Reply(body=body))
        memo = AnswerMemo()
        async for client in _client(scripted.url):
            first = await client.get_task(212, memo)
            again = await client.get_task(212, memo)
            progressed = await client.get_task(212, memo)
            progressed_again = await client.get_task(212, memo)
            neighbour = await client.get_task(213, memo)
            memo.forget([212])
            after_forget = await client.get_task(212, memo)
            unmemoized = await client.get_task(212)

        assert first is again
        assert 30 == first.progress_percent
        assert progressed is progressed_again
        assert 40 == progressed.progress_percent
        assert 213 == neighbour.id
        assert after_forget is not first
        assert after_forget == first
        assert unmemoized is not after_forget
        assert 7 == len(scripted.seen)
