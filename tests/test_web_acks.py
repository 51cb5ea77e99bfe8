"""``POST|DELETE /api/v1/tasks/{id}/ack`` and ``batchmon ack``, against the real app on loopback.

The app serves a tracker fed observations directly, with the store, the dispatcher and the
acknowledgements the daemon wires; its poller made one real cycle against the simulator.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio.to_thread
import pytest
from prometheus_client.registry import CollectorRegistry

from monitor.daemon import RuntimeWatches
from monitor.delivery.acknowledgements import Acknowledgements
from monitor.delivery.dispatcher import Dispatcher, Subscription
from monitor.delivery.sqlite import SqliteStore
from monitor.polling import Poller
from monitor.simulator import Simulator
from monitor.sinks.base import Route
from monitor.superoffice.client import SuperOfficeClient, open_session
from monitor.superoffice.models import BatchTaskInfo
from monitor.task_metrics import TaskSeries
from monitor.tracking.events import Event
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from monitor.web import TenantView, WebState, make_app, serve
from tests.conftest import ManualClock, make_config

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
TOKEN = "ack-token-0123456789abcdef"


class Recorder:
    """A sink that keeps what it is sent."""

    default_rate = math.inf
    default_concurrency = 1

    def __init__(self) -> None:
        self.name = "ops"
        self.received: list[Event] = []

    async def send(self, event: Event) -> None:
        self.received.append(event)


@dataclass
class Served:
    """The app's base URL and what stands behind it."""

    url: str
    tracker: Tracker
    dispatcher: Dispatcher
    store: SqliteStore
    sink: Recorder

    async def see(self, task_id: int, state: str, minutes: float = 0, **more: Any) -> None:
        """Observe a snapshot and commit it, as the poller does."""
        info = BatchTaskInfo.model_validate(
            {
                "Id": task_id,
                "Name": f"Export {task_id}",
                "State": state,
                "StartCount": 1,
                "LastStarted": T0.isoformat(),
                **more,
            }
        )
        events = self.tracker.observe(info, T0 + timedelta(minutes=minutes))
        await self.dispatcher.commit(events, [self.tracker.tasks[task_id]])

    async def sent(self) -> list[tuple[str, str | None]]:
        """What the sink got so far (after sending what is queued)."""
        await self.dispatcher.drain()
        return [(e.type.value, e.message) for e in self.sink.received]


@asynccontextmanager
async def served(store: SqliteStore, *, token: str | None = TOKEN) -> AsyncIterator[Served]:
    """The web app with acknowledgements over a fresh tracker; nothing tracked yet."""
    clock = ManualClock(T0 + timedelta(minutes=5))
    tracker = Tracker(Rules())
    sink = Recorder()
    dispatcher = Dispatcher([Subscription(sink, Route())], store, now=clock)
    acks = Acknowledgements(tracker, store, dispatcher.commit, clock)
    async with Simulator() as simulator:
        config = make_config(simulator.url)
        async with open_session(config.superoffice) as session:
            poller = Poller(
                SuperOfficeClient(session, config.superoffice),
                tracker,
                dispatcher.commit,
                config.poll,
                clock=clock,
            )
            await poller.poll_once()
            view = TenantView(
                name="default",
                tracker=tracker,
                poller=poller,
                series=TaskSeries(tracker),
                store=store,
                watches=RuntimeWatches(poller, store, []),
                acks=acks,
            )
            state = WebState(
                tenants={"default": view},
                registry=CollectorRegistry(),
                clock=clock,
                stale_after=60.0,
                api_token=token,
            )
            runner, port = await serve(make_app(state), "127.0.0.1", 0)
            try:
                yield Served(f"http://127.0.0.1:{port}", tracker, dispatcher, store, sink)
            finally:
                await runner.cleanup()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _call(
    method: str, url: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=AUTH if headers is None else headers) as r,
    ):
        return r.status, await r.json()


class TestAck:
    """Taking a task over HTTP."""

    async def test_taken_shown_and_announced(self, store: SqliteStore) -> None:
        """201, then the task lists show who has it, and the sink hears it once."""
        async with served(store) as app:
            await app.see(7, "Failed")
            ack_url = f"{app.url}/api/v1/tasks/7/ack"
            status, body = await _call("POST", ack_url, {"by": "alice", "comment": "on it"})
            again, _ = await _call("POST", ack_url, {"by": "alice"})
            _, listing = await _call("GET", f"{app.url}/api/v1/tasks")
            _, one = await _call("GET", f"{app.url}/api/v1/tasks/7")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{app.url}/") as page:
                    html = await page.text()
                async with session.get(f"{app.url}/tasks/7") as page:
                    task_html = await page.text()
            sent = await app.sent()
        expected = {
            "by": "alice",
            "comment": "on it",
            "at": (T0 + timedelta(minutes=5)).isoformat(),
        }
        assert (201, {"task_id": 7, "ack": expected}) == (status, body)
        assert 200 == again
        assert [expected] == [t["ack"] for t in listing["tasks"]]
        assert expected == one["ack"]
        assert "acknowledged by alice" in html
        assert "Acknowledged by <strong>alice</strong>" in task_html
        assert "on it" in task_html
        assert [("task.acknowledged", "Acknowledged by alice: on it")] == sent[-1:]
        assert 1 == sum(kind == "task.acknowledged" for kind, _ in sent)

    async def test_taken_back(self, store: SqliteStore) -> None:
        """DELETE gives it back: the condition is announced again; a second DELETE is a 409."""
        async with served(store) as app:
            await app.see(7, "Failed")
            ack_url = f"{app.url}/api/v1/tasks/7/ack"
            await _call("POST", ack_url, {"by": "alice"})
            status, body = await _call("DELETE", ack_url, {"by": "bob"})
            twice, problem = await _call("DELETE", ack_url)
            _, one = await _call("GET", f"{app.url}/api/v1/tasks/7")
            sent = await app.sent()
            stored = await store.acks()
        assert 200 == status
        assert (None, "alice") == (body["ack"], body["withdrawn"]["by"])
        assert (409, "task 7 has no acknowledgement to take back") == (twice, problem["error"])
        assert one["ack"] is None
        assert ("task.failed", "Acknowledged by alice; taken back by bob: nobody has it now") == (
            sent[-1]
        )
        assert [] == stored

    #: (task state, body, headers, status, error text)
    REFUSALS: tuple[tuple[str | None, object, dict[str, str] | None, int, str], ...] = (
        (None, {"by": "alice"}, None, 404, "task 7 is not tracked"),
        ("Started", {"by": "alice"}, None, 409, "there is nothing to acknowledge"),
        ("Failed", {"by": "alice"}, {}, 401, "a valid bearer token is required"),
        ("Failed", {"by": "alice"}, {"Authorization": "Bearer wrong"}, 401, "bearer token"),
        ("Failed", None, None, 400, "a JSON body is required"),
        ("Failed", {}, None, 400, "by: Field required"),
        ("Failed", {"by": "  "}, None, 400, "by: Value error, must not be blank"),
        ("Failed", {"by": 7}, None, 400, "by: Input should be a valid string"),
        ("Failed", {"by": "x" * 101}, None, 400, "at most 100 characters"),
        ("Failed", {"by": "a", "comment": "c" * 1001}, None, 400, "comment: Value error, at most"),
        ("Failed", {"by": "\x1b[2J"}, None, 400, "control characters are not allowed"),
        ("Failed", {"by": "a", "extra": 1}, None, 400, "extra: Extra inputs are not permitted"),
        ("Failed", ["alice"], None, 400, "body: Input should be an object"),
    )

    @pytest.mark.parametrize(("state", "body", "headers", "status", "error"), REFUSALS)
    async def test_refused(
        self,
        store: SqliteStore,
        state: str | None,
        body: object,
        headers: dict[str, str] | None,
        status: int,
        error: str,
    ) -> None:
        """Unknown, healthy, unauthorised or badly asked: a clear 4xx, nothing stored or sent."""
        async with served(store) as app:
            if state is not None:
                await app.see(7, state)
            before = await app.sent()
            got, answer = await _call("POST", f"{app.url}/api/v1/tasks/7/ack", body, headers)
            after = await app.sent()
        assert status == got
        assert error in answer["error"]
        assert before == after
        assert [] == await store.acks()

    async def test_not_json(self, store: SqliteStore) -> None:
        """A body that is not JSON is a 400 naming the problem, too big a one a 413; the content
        type does not matter."""
        async with served(store) as app, aiohttp.ClientSession() as session:
            await app.see(7, "Failed")
            url = f"{app.url}/api/v1/tasks/7/ack"
            headers = {**AUTH, "Content-Type": "application/json"}
            async with session.post(url, data=b"{by: alice", headers=headers) as response:
                broken = response.status, (await response.json())["error"]
            async with session.post(url, data=b"x" * 20_000, headers=headers) as response:
                big = response.status
            form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
            async with session.post(url, data=b'{"by": "a"}', headers=form) as response:
                curl = response.status  # curl -d says a form: read as JSON all the same
        assert 400 == broken[0]
        assert "Invalid JSON" in broken[1]
        assert 413 == big
        assert 201 == curl

    async def test_taking_back_checks_the_name(self, store: SqliteStore) -> None:
        """The name given when taking a task back is held to the same rules: 400, still held."""
        async with served(store) as app:
            await app.see(7, "Failed")
            ack_url = f"{app.url}/api/v1/tasks/7/ack"
            await _call("POST", ack_url, {"by": "alice"})
            status, problem = await _call("DELETE", ack_url, {"by": "\x07bell"})
        assert (400, "by: Value error, control characters are not allowed") == (
            status,
            problem["error"],
        )
        assert ["alice"] == [ack.by for ack in await store.acks()]

    async def test_without_an_api_token(self, store: SqliteStore) -> None:
        """Without http.api_token nothing can be acknowledged (403, as changing watches)."""
        async with served(store, token=None) as app:
            await app.see(7, "Failed")
            status, _ = await _call("POST", f"{app.url}/api/v1/tasks/7/ack", {"by": "alice"})
        assert 403 == status


def _batchmon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command in a child process (urllib blocks: not on the test's loop)."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


class TestCommand:
    """``batchmon ack`` against the app on loopback: its answers and exit codes."""

    async def test_ack_and_undo(self, store: SqliteStore, tmp_path: Path) -> None:
        """Token from a file or the environment; 0, then 1 (nothing firing), 3, 77."""
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        async with served(store) as app:
            await app.see(7, "Failed")
            await app.see(8, "Started")
            base = ["--url", app.url]

            async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
                done = await anyio.to_thread.run_sync(lambda: _batchmon(*args, env=env))
                return done.returncode, done.stdout + done.stderr

            by_file = await run(
                "ack",
                "7",
                "--by",
                "alice",
                "--comment",
                "on it",
                "--token-file",
                str(token_file),
                *base,
            )
            held = await store.acks()
            by_env = await run(
                "ack", "7", "--undo", "--by", "bob", *base, env={"BATCHMON_API_TOKEN": TOKEN}
            )
            healthy = await run("ack", "8", "--token-file", str(token_file), *base)
            unknown = await run("ack", "9", "--token-file", str(token_file), *base)
            no_token = await run("ack", "7", *base, env={"BATCHMON_API_TOKEN": ""})
            nobody = await run("ack", "7", "--undo", "--token-file", str(token_file), *base)
            sent = await app.sent()
        assert (0, "task 7: acknowledged by alice\n") == by_file
        assert [("alice", "on it")] == [(a.by, a.comment) for a in held]
        assert (0, "task 7: given back\n") == by_env
        assert 1 == healthy[0]
        assert "nothing to acknowledge" in healthy[1]
        assert (3, True) == (unknown[0], "task 9 is not tracked" in unknown[1])
        assert (77, True) == (no_token[0], "bearer token" in no_token[1])
        assert 1 == nobody[0]
        assert [
            ("task.acknowledged", "Acknowledged by alice: on it"),
            ("task.failed", "Acknowledged by alice: on it; taken back by bob: nobody has it now"),
        ] == [s for s in sent if s[0] in ("task.acknowledged", "task.failed")][1:]

    def test_unreachable(self) -> None:
        """Nothing listening: 69, one line."""
        done = _batchmon(
            "ack", "7", "--url", "http://127.0.0.1:9", env={"BATCHMON_API_TOKEN": TOKEN}
        )
        assert 69 == done.returncode
        assert "cannot reach batchmon" in done.stderr
