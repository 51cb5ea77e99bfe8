"""The task page, bounded listings and what the pages say about the API, over loopback.

Most tests serve the real web app over a tracker fed observations directly (it is
pure), so thousands of tasks and hundreds of progress samples take no polling;
the poller behind it made one real cycle against the simulator.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.registry import CollectorRegistry

from monitor.daemon import Daemon, RuntimeWatches
from monitor.delivery.dispatcher import Dispatcher
from monitor.delivery.sqlite import SqliteStore
from monitor.polling import Poller
from monitor.simulator import Simulator
from monitor.superoffice.client import SuperOfficeClient, open_session
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState
from monitor.task_metrics import TaskSeries
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from monitor.web import TenantView, WebState, make_app, serve
from tests.conftest import ManualClock, make_config
from tests.test_web import running_daemon

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
FAILURE = "Failed: Quote 3592 has no quote lines"


@dataclass
class Board:
    """A tracker (and so its samples) and store, fed the way the daemon's poller feeds them."""

    tracker: Tracker
    dispatcher: Dispatcher
    clock: ManualClock

    async def see(self, at: datetime, **fields: Any) -> None:
        """Observe one snapshot (API field names) at ``at``; sample and store as the daemon does."""
        self.clock.now = max(self.clock.now, at)
        info = BatchTaskInfo.model_validate(fields)
        events = self.tracker.observe(info, at)
        await self.dispatcher.commit(events, [self.tracker.tasks[info.id]])

    async def gone(self, task_id: int, at: datetime) -> None:
        """The API answered 404 for the task."""
        events = self.tracker.observe_gone(task_id, at)
        await self.dispatcher.commit(events, [self.tracker.tasks[task_id]])

    async def wait(self, at: datetime) -> None:
        """Time passes with nothing new: only the stall clocks run."""
        self.clock.now = at
        for task_id in list(self.tracker.tasks):
            events = self.tracker.touch(task_id, at)
            if events:
                await self.dispatcher.commit(events, [self.tracker.tasks[task_id]])


@pytest.fixture(name="board")
def _board(store: SqliteStore) -> Board:
    return Board(
        Tracker(Rules(stall_after=timedelta(minutes=15))),
        Dispatcher([], store),
        ManualClock(T0),
    )


@asynccontextmanager
async def served(board: Board, store: SqliteStore) -> AsyncIterator[str]:
    """The web app over ``board`` on loopback, after one real poll cycle; its base URL."""
    async with Simulator() as simulator:
        config = make_config(simulator.url)
        async with open_session(config.superoffice) as session:
            poller = Poller(
                SuperOfficeClient(session, config.superoffice),
                board.tracker,
                board.dispatcher.commit,
                config.poll,
                clock=board.clock,
            )
            poller.watch([999_999])  # unknown to the simulator: a 404 proves the API answers
            await poller.poll_once()
            view = TenantView(
                name="default",
                tracker=board.tracker,
                poller=poller,
                series=TaskSeries(board.tracker),
                store=store,
                watches=RuntimeWatches(poller, store, []),
            )
            state = WebState(
                tenants={"default": view},
                registry=CollectorRegistry(),
                clock=board.clock,
                stale_after=60.0,
                api_token=None,
            )
            runner, port = await serve(make_app(state), "127.0.0.1", 0)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                await runner.cleanup()


def _task(task_id: int, state: str, percent: int | None = None, **more: Any) -> dict[str, Any]:
    return {
        "Id": task_id,
        "Name": more.pop("Name", f"Export {task_id}"),
        "State": state,
        "ProgressPercent": percent,
        "StartCount": 1,
        "LastStarted": (T0 - timedelta(minutes=1)).isoformat(),
        **more,
    }


async def crawling_task(board: Board, task_id: int, samples: int = 200) -> datetime:
    """A long run with ``samples`` distinct progress samples, a minute apart; its last time."""
    at = T0
    for minute in range(samples):
        at = T0 + timedelta(minutes=minute)
        # A quarter point a minute, reported unevenly: never the same three times running.
        percent = minute // 4 + minute % 2
        await board.see(
            at,
            **_task(
                task_id,
                "Started",
                percent,
                Name="Selection to Excel export",
                ProgressDescription=f"Processing rows {minute * 110}/22284",
            ),
        )
    return at


async def failed_task(board: Board, task_id: int) -> None:
    """A run that reached 37 % in ten minutes and failed, saying why."""
    for minute in range(11):
        percent = min(37, minute * 4)
        await board.see(
            T0 + timedelta(minutes=minute),
            **_task(
                task_id,
                "Started",
                percent,
                Name="Quote PDF generation",
                ProgressDescription=f"Processing quote lines {percent}/58",
            ),
        )
    await board.see(
        T0 + timedelta(minutes=11),
        **_task(
            task_id,
            "Failed",
            37,
            Name="Quote PDF generation",
            ProgressDescription="Processing quote lines 21/58",
            Result=FAILURE,
            Request="QuotePdf",
            AssociateId=113,
            Description="Generate PDF documents for quote 3592",
            # In the tenant's zone, as SuperOffice may send it; the page shows UTC.
            Created=(T0 - timedelta(minutes=5))
            .astimezone(timezone(timedelta(hours=1)))
            .isoformat(),
        ),
    )


async def many_tasks(board: Board, count: int) -> None:
    """``count`` tasks: 1 in 10 Started, 1 in 10 Failed, 1 in 10 gone, the rest Succeeded."""
    for task_id in range(1, count + 1):
        kind = task_id % 10
        state = {0: "Started", 1: "Failed", 2: "Started"}.get(kind, "Succeeded")
        await board.see(T0, **_task(task_id, state, 50, Result="boom" if kind == 1 else None))
        if kind == 2:
            await board.gone(task_id, T0 + timedelta(seconds=1))


async def get(url: str) -> tuple[int, str]:
    """Status and body of a GET."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def get_json(url: str) -> tuple[int, Any]:
    """Status and JSON body of a GET."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


class TestTasksApi:
    """/api/v1/tasks: filters, limits and cursors over thousands of tasks."""

    async def test_pages_through_3000_tasks(self, board: Board, store: SqliteStore) -> None:
        """500 at a time by default; ``next`` leads through every task once, active first."""
        await many_tasks(board, 3000)
        seen: list[dict[str, Any]] = []
        async with served(board, store) as base:
            url: str | None = "/api/v1/tasks"
            while url is not None:
                status, body = await get_json(base + url)
                assert 200 == status
                assert 3000 == body["total"]
                assert len(body["tasks"]) <= 500
                seen.extend(body["tasks"])
                url = body["next"]

        assert 3000 == len({t["id"] for t in seen}) == len(seen)
        assert {"Started": 300, "Failed": 300, "Succeeded": 2100, "Gone": 300} == body["counts"]
        states = [t["state"] for t in seen]
        assert {"Started"} == set(states[:300])
        assert {"Gone"} == set(states[-300:])

    async def test_state_and_limit(self, board: Board, store: SqliteStore) -> None:
        """``state`` repeated or as a list; ``limit`` up to 5,000; the failure reason is there."""
        await many_tasks(board, 2000)
        async with served(board, store) as base:
            _, failed = await get_json(base + "/api/v1/tasks?state=Failed&limit=50")
            _, both = await get_json(base + "/api/v1/tasks?state=failed,Gone&limit=5000")
            _, repeated = await get_json(base + "/api/v1/tasks?state=Failed&state=Gone")

        assert (200, 50) == (failed["total"], len(failed["tasks"]))
        assert {"boom"} == {t["result"] for t in failed["tasks"]}
        assert failed["next"].startswith("/api/v1/tasks?state=Failed&limit=50&cursor=")
        assert (400, 400, None) == (both["total"], len(both["tasks"]), both["next"])
        assert 400 == repeated["total"]

    @pytest.mark.parametrize(
        ("query", "message"),
        [
            ("state=Faild", "state: unknown state 'Faild' (did you mean 'Failed'?)"),
            ("state=Running", "known: Unknown, New, Aquired, Started, Succeeded"),
            ("limit=0", "limit: expected 1 to 5000, got 0"),
            ("limit=5001", "limit: expected 1 to 5000, got 5001"),
            ("limit=lots", "limit: expected a whole number, got 'lots'"),
            ("cursor=abc", "cursor: not a cursor this server gave"),
        ],
    )
    async def test_bad_queries(
        self, board: Board, store: SqliteStore, query: str, message: str
    ) -> None:
        """A bad parameter is a 400 that names it."""
        await many_tasks(board, 5)
        async with served(board, store) as base:
            status, body = await get_json(f"{base}/api/v1/tasks?{query}")
        assert 400 == status
        assert message in body["error"]


class TestStatusPage:
    """The main page: counts by state, a filter, and at most a few hundred rows."""

    async def test_bounded_with_counts_and_links(self, board: Board, store: SqliteStore) -> None:
        """3,000 tasks: 300 rows, active first; counts link to filters; the rest is linked."""
        await many_tasks(board, 3000)
        async with served(board, store) as base:
            status, page = await get(base + "/")
            _, second = await get(base + "/" + _next_link(page).replace("&amp;", "&"))

        rows = re.findall(r'<tr class="(\w+)" data-task-id="(\d+)"', page)
        assert 200 == status
        assert 300 == len(rows)
        assert {"Started"} == {state for state, _ in rows[:300]}
        for state, count in [("Started", 300), ("Failed", 300), ("Succeeded", 2100), ("Gone", 300)]:
            assert re.search(
                rf'<a href="\?state={state}" class="" data-state="{state}">'
                rf'<span class="dot {state}"></span>{state} <b>{count}</b></a>',
                page,
            ), state
        assert "Showing 300 of 3000 tasks" in page
        assert '<a href="?state=Failed">300 Failed</a>' in page
        assert '<a href="?state=Succeeded">2100 Succeeded</a>' in page
        second_rows = re.findall(r'<tr class="(\w+)" data-task-id="(\d+)"', second)
        assert 300 == len(second_rows)
        assert not {i for _, i in rows} & {i for _, i in second_rows}

    async def test_filter(self, board: Board, store: SqliteStore) -> None:
        """``?state=Failed`` lists the failed tasks with their reasons; the count is marked."""
        await many_tasks(board, 100)
        await failed_task(board, 500)
        async with served(board, store) as base:
            _, page = await get(base + "/?state=Failed")
            status, bad = await get(base + "/?state=Broken")

        rows = re.findall(r'<tr class="(\w+)" data-task-id="(\d+)"', page)
        assert 11 == len(rows)
        assert {"Failed"} == {state for state, _ in rows}
        assert 'class="current" data-state="Failed"' in page
        assert f'<div class="reason">{FAILURE}</div>' in page
        assert 'href="tasks/500"' in page
        assert 400 == status
        assert "unknown state &#39;Broken&#39;" in bad


def _next_link(page: str) -> str:
    match = re.search(r'<a href="([^"]+)" rel="next">', page)
    assert match is not None
    return match.group(1)


class TestTaskPage:
    """/tasks/{id}: fields, chart and history of one task."""

    async def test_failed_task(self, board: Board, store: SqliteStore) -> None:
        """Fields, the reason, the chart's line ending red, and the events newest first."""
        await failed_task(board, 217)
        async with served(board, store) as base:
            status, page = await get(base + "/tasks/217")
            _, listed = await get_json(base + "/api/v1/tasks/217")

        assert 200 == status
        assert FAILURE == listed["result"]
        assert f'<div class="alert result">{FAILURE}</div>' in page
        for text in [
            "Quote PDF generation",
            "Generate PDF documents for quote 3592",
            "QuotePdf",
            "<dt>Associate</dt><dd>113</dd>",
            "<dt>Start count</dt><dd>1</dd>",
            '<dt>Created (UTC)</dt><dd><time datetime="2026-11-28T08:55:00+00:00"',
            "Processing quote lines 21/58",
        ]:
            assert text in page
        types = re.findall(r'<tr data-event-type="([\w.]+)">', page)
        assert "task.failed" == types[0]
        assert "task.discovered" == types[-1]
        assert re.search(
            rf'task\.failed</td>.*?<td class="details">{FAILURE}</td>', page, re.DOTALL
        )
        assert 'class="progress" d="M' in page
        assert 'stroke="#cf222e"' in page
        assert 'class="eta"' not in page
        assert 'http-equiv="refresh"' not in page  # finished: nothing to refresh

    async def test_200_samples_eta_and_stall_threshold(
        self, board: Board, store: SqliteStore
    ) -> None:
        """A long run: every sample drawn, the ETA line and the stall check ahead."""
        last = await crawling_task(board, 301)
        board.clock.now = last + timedelta(minutes=2)
        async with served(board, store) as base:
            _, page = await get(base + "/tasks/301")

        progress = re.search(r'class="progress" d="([^"]+)"', page)
        assert progress is not None
        assert 201 == len(re.findall("[ML]", progress.group(1)))  # 200 samples and now
        assert "200 samples of this run" in page
        assert 'class="eta"' in page
        assert "stall check 12:34" in page  # the last change (12:19) + 15 minutes

    async def test_stalled_task(self, board: Board, store: SqliteStore) -> None:
        """A stalled task's chart shades the time since the stall threshold."""
        for minute, percent in [(0, 10), (1, 25), (2, 45)]:
            await board.see(T0 + timedelta(minutes=minute), **_task(9, "Started", percent))
        await board.wait(T0 + timedelta(minutes=30))
        async with served(board, store) as base:
            _, page = await get(base + "/tasks/9")

        assert 'class="state stalled"' in page
        assert 'class="stall"' in page
        assert ">stalled</text>" in page
        assert 'data-event-type="task.stalled"' in page

    async def test_unknown_and_bad_ids(self, board: Board, store: SqliteStore) -> None:
        """An untracked id is a 404 page; a row links to its page."""
        await board.see(T0, **_task(5, "New", Name="<b>bold</b> & co"))
        async with served(board, store) as base:
            missing, text = await get(base + "/tasks/6")
            found, page = await get(base + "/tasks/5")

        assert 404 == missing
        assert "Task 6 is not tracked" in text
        assert 200 == found
        assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page
        assert "<b>bold</b>" not in page
        assert "no progress reported yet" in page


class TestApiOnThePage:
    """The page says what /readyz says, from the same state."""

    async def test_credentials_rejected(self) -> None:
        """A refused password shows as rejected credentials, with the reason."""
        async with Simulator(password="not-what-batchmon-sends") as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            async with running_daemon(simulator, [task.id]) as (_, base):
                _, page = await get(base + "/")
                _, ready = await get_json(base + "/readyz")

        assert re.search(r'<span class="api down">credentials rejected</span>', page)
        assert ready["problems"][0] in page.replace("&#39;", "'").replace("&#34;", '"')

    async def test_down_since(self) -> None:
        """An API failing for ``api_down_after`` cycles is down since that cycle."""
        async with Simulator() as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            simulator.fail_next(1000, 503)
            poll = {"interval": "0.2s", "api_down_after": 1}
            daemon = Daemon(make_config(simulator.url, watch={"ids": [task.id]}, poll=poll))
            async with anyio.create_task_group() as group:
                port = await group.start(daemon.run)
                with anyio.fail_after(5):
                    while daemon.poller is None or daemon.poller.health.down_since is None:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                since = daemon.poller.health.down_since
                _, page = await get(f"http://127.0.0.1:{port}/")
                group.cancel_scope.cancel()

        assert f"API down since {since:%Y-%m-%d %H:%M:%S} UTC" in page
        assert "SuperOffice API unreachable: GET /v1/BatchTask/" in page
