"""The collector and the HTTP endpoints, checked with a private registry and real promtool."""

from __future__ import annotations

import gzip
import os
import platform
import shutil
import subprocess
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector, CollectorRegistry

from monitor import __version__
from monitor.daemon import Daemon
from monitor.delivery.dispatcher import Dispatcher
from monitor.delivery.sqlite import SqliteStore
from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState
from monitor.task_metrics import STATES, Encoder, TaskSeries
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from monitor.web import GzippedPrefix
from tests.conftest import make_config
from tests.exposition import scrape

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(name="promtool")
def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("BATCHMON_REQUIRE_TOOLS"):
            pytest.fail("promtool is required (Debian package 'prometheus') but not installed")
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    return path


def _task(
    task_id: int, state: str, progress: int | None = None, name: str = "Export"
) -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(
        {
            "Id": task_id,
            "Name": name,
            "State": state,
            "ProgressPercent": progress,
            "StartCount": 1,
            "LastStarted": "2026-11-28T11:50:00Z",
            "Request": "ExportSelection",
            "AssociateId": 113,
        }
    )


class TestCollector:
    """The collector's and the task series' families, parsed back by prometheus_client."""

    def test_task_series(self, store: SqliteStore) -> None:
        """State is one-hot, progress a ratio, info carries the name; counts per state."""
        tracker = Tracker(Rules())
        tracker.observe(_task(1, "Started", 40), T0)
        tracker.observe(_task(2, "New"), T0)
        tracker.observe(_task(1, "Started", 50), T0 + timedelta(minutes=1))
        metrics = scrape(tracker, T0, Dispatcher([], store))

        def value(metric: str, **labels: str) -> float | None:
            return metrics.value(metric, labels)

        assert 1.0 == value("batchmon_task_state", task_id="1", state="Started")
        assert 0.0 == value("batchmon_task_state", task_id="1", state="Failed")
        assert 0.5 == value("batchmon_task_progress_ratio", task_id="1")
        assert 1.0 == value(
            "batchmon_task_info",
            task_id="1",
            name="Export",
            request="ExportSelection",
            associate_id="113",
        )
        assert 1.0 == value("batchmon_tasks", state="Started")
        assert 1.0 == value("batchmon_tasks", state="New")
        assert 0.0 == value("batchmon_tasks", state="Failed")
        assert 2.0 == value("batchmon_events_total", type="task.discovered")
        assert 0.0 == value("batchmon_events_total", type="task.failed")
        assert value("batchmon_task_eta_timestamp_seconds", task_id="1") is not None
        assert 1.0 == value(
            "batchmon_build_info", version=__version__, python=platform.python_version()
        )

    def test_finished_tasks_age_out(self, store: SqliteStore) -> None:
        """A task that ended more than the retention ago is no longer exported."""
        tracker = Tracker(Rules())
        tracker.observe(_task(1, "Started", 40), T0)
        tracker.observe(_task(1, "Failed", 40), T0 + timedelta(minutes=1))
        failed = {"task_id": "1", "state": "Failed"}
        transition = {"from_state": "Started", "to_state": "Failed"}

        recent = scrape(tracker, T0 + timedelta(minutes=30), Dispatcher([], store))
        later = scrape(tracker, T0 + timedelta(hours=2), Dispatcher([], store))

        assert 1.0 == recent.value("batchmon_task_state", failed)
        assert later.value("batchmon_task_state", failed) is None
        assert 1.0 == later.value("batchmon_task_transitions_total", transition)

    @pytest.mark.parametrize(
        "encoder", [openmetrics_latest, text_latest], ids=["openmetrics", "text-0.0.4"]
    )
    def test_lines_are_prometheus_clients(self, encoder: Encoder) -> None:
        """Byte for byte what prometheus_client writes for the same families, in both formats.

        The reference is built with prometheus_client's own families from the
        same memories; names carry every character the label escaping handles.
        """
        tracker = Tracker(Rules())
        names = ['Export "all"', "back\\slash", "two\nlines", "Lønn 🎉", ""]
        for task_id, name in enumerate(names, start=1):
            tracker.observe(_task(task_id, "Started", 10 * task_id, name=name), T0)
            tracker.observe(
                _task(task_id, "Started", 15 * task_id, name=name), T0 + timedelta(minutes=2)
            )
        tracker.observe(_task(9, "Failed", 100), T0)
        tracker.observe_gone(1, T0 + timedelta(minutes=3))
        series = TaskSeries(tracker)
        now = T0 + timedelta(minutes=5)

        ours = b"".join([*series.render(now, encoder, "format"), encoder(CollectorRegistry())])
        again = b"".join([*series.render(now, encoder, "format"), encoder(CollectorRegistry())])

        assert again == ours
        assert encoder(_Reference(tracker)) == ours
        assert b'Export \\"all\\"' in ours

    def test_one_series_follows_the_tracker(self, store: SqliteStore) -> None:
        """Across scrapes: changes show, ended tasks age out, forgotten ones go, re-runs return."""
        tracker = Tracker(Rules())
        series = TaskSeries(tracker)

        def states(now: datetime) -> dict[str, str]:
            metrics = scrape(tracker, now, Dispatcher([], store), series)
            return {
                labels["task_id"]: labels["state"]
                for name, label_set in metrics.names()
                if name == "batchmon_task_state" and metrics.value(name, labels := dict(label_set))
            }

        tracker.observe(_task(1, "Started", 10), T0)
        tracker.observe(_task(2, "Started", 10), T0)
        tracker.observe(_task(3, "New"), T0)
        assert {"1": "Started", "2": "Started", "3": "New"} == states(T0)
        assert {"1": "Started", "2": "Started", "3": "New"} == states(T0)

        tracker.observe(_task(1, "Failed", 10), T0 + timedelta(minutes=1))
        tracker.observe(_task(2, "Started", 20), T0 + timedelta(minutes=2))
        tracker.observe_gone(2, T0 + timedelta(minutes=2, seconds=30))
        tracker.forget([3])
        assert {"1": "Failed", "2": "Gone"} == states(T0 + timedelta(minutes=3))
        assert {"2": "Gone"} == states(T0 + timedelta(minutes=61, seconds=30))
        assert {} == states(T0 + timedelta(minutes=63))

        tracker.observe(_task(1, "Started", 5), T0 + timedelta(minutes=64))
        assert {"1": "Started"} == states(T0 + timedelta(minutes=64))

    def test_name_filter(self) -> None:
        """``name[]`` keeps the families asked for, by family or by sample name."""
        tracker = Tracker(Rules())
        tracker.observe(_task(1, "Started", 40), T0)
        series = TaskSeries(tracker)

        text = b"".join(
            series.render(T0, openmetrics_latest, "om", ["batchmon_task_info"])
        ).decode()

        assert text.startswith("# HELP batchmon_task Descriptive")
        assert 'task_id="1",tenant="default"} 1.0' in text
        assert "batchmon_task_state" not in text
        assert [] == series.render(T0, openmetrics_latest, "om", ["batchmon_tasks"])


class _Reference(Collector):
    """The per-task families as prometheus_client builds them, sample by sample."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "batchmon_task_state",
            "Current state of a watched task: 1 for its state, 0 for the others.",
            labels=["task_id", "state", "tenant"],
        )
        gauges = [
            GaugeMetricFamily(name, doc, labels=["task_id", "tenant"])
            for name, doc in [
                (
                    "batchmon_task_progress_ratio",
                    "Task progress, 0..1 (ProgressPercent / 100, clamped).",
                ),
                (
                    "batchmon_task_last_progress_timestamp_seconds",
                    "When the task's state, progress or progress description last changed.",
                ),
                (
                    "batchmon_task_last_started_timestamp_seconds",
                    "When the task was last started (LastStarted).",
                ),
                (
                    "batchmon_task_eta_timestamp_seconds",
                    "Estimated completion time of a running task, from its progress rate.",
                ),
            ]
        ]
        info = InfoMetricFamily(
            "batchmon_task", "Descriptive labels of a watched task.", labels=["task_id", "tenant"]
        )
        for memory in self._tracker.tasks.values():
            task = memory.info
            task_id = str(task.id)
            current = "Gone" if memory.gone else task.state.value
            for name in STATES:
                state.add_metric([task_id, name, "default"], 1.0 if name == current else 0.0)
            eta = self._tracker.eta(task.id, memory.last_seen)
            values = [
                task.progress_ratio,
                memory.last_change.timestamp(),
                None if task.last_started is None else task.last_started.timestamp(),
                None if eta is None else eta.timestamp(),
            ]
            for family, value in zip(gauges, values, strict=True):
                if value is not None:
                    family.add_metric([task_id, "default"], value)
            info.add_metric(
                [task_id, "default"],
                {
                    "name": task.name or "",
                    "request": task.request or "",
                    "associate_id": str(task.associate_id or 0),
                },
            )
        yield state
        yield from gauges
        yield info


class TestGzippedPrefix:
    """The compressed task families are reused, and every body is one gzip member."""

    @staticmethod
    def _one_member(body: bytes) -> bytes:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = inflater.decompress(body)
        assert inflater.eof
        assert b"" == inflater.unused_data, "more than one gzip member"
        return text

    def test_reused_while_the_parts_are_the_same(self) -> None:
        """Same part objects: the same compressed prefix; other parts: compressed anew."""
        header = b"# HELP a A.\n# TYPE a gauge\n"
        # Big enough that zlib emits blocks before the end (what is reused).
        samples = b"".join(b'a{id="%d"} 1.0\n' % i for i in range(100_000))
        gzipped = GzippedPrefix()

        first = gzipped.compress([header, samples], b"b 1.0\n# EOF\n")
        again = gzipped.compress([header, samples], b"b 2.0\n# EOF\n")
        moved = samples.replace(b"} 1.0", b"} 2.0")
        changed = gzipped.compress([header, moved], b"b 2.0\n# EOF\n")
        fewer = gzipped.compress([], b"# EOF\n")

        assert header + samples + b"b 1.0\n# EOF\n" == self._one_member(first)
        assert header + samples + b"b 2.0\n# EOF\n" == self._one_member(again)
        assert header + moved + b"b 2.0\n# EOF\n" == self._one_member(changed)
        assert b"# EOF\n" == self._one_member(fewer)
        assert first[:4096] == again[:4096], "the prefix was compressed again"
        assert first[:4096] != changed[:4096]

    async def test_curl_reads_the_whole_exposition(self) -> None:
        """``curl --compressed``, which reads one gzip member only, gets every family."""
        curl = shutil.which("curl")
        if curl is None:
            pytest.skip("curl not installed")
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED, progress=30)
            async with running_daemon(simulator, [task.id]) as (_, base):
                for _ in range(2):  # the second scrape reuses the compressed task families
                    done = await anyio.run_process([curl, "-sS", "--compressed", base + "/metrics"])
                    text = done.stdout.decode()
                    assert (
                        f'batchmon_task_state{{state="Started",task_id="{task.id}",tenant="default"}} 1.0'
                        in text
                    )
                    assert "batchmon_build_info" in text


@asynccontextmanager
async def running_daemon(
    simulator: Simulator, ids: list[int], **sections: Any
) -> AsyncIterator[tuple[Daemon, str]]:
    """A real daemon polling the simulator; yields it and its base URL once a cycle ran.

    ``interval`` 0.2 s: these tests read what one or two cycles found, not when; the
    schedule's defaults are tested in tests/test_schedule.py and tests/e2e/.
    """
    config = make_config(simulator.url, watch={"ids": ids}, poll={"interval": "0.2s"}, **sections)
    daemon = Daemon(config)
    async with anyio.create_task_group() as group:
        port = await group.start(daemon.run)
        with anyio.fail_after(10):
            while daemon.poller is None or daemon.poller.cycles == 0:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        yield daemon, f"http://127.0.0.1:{port}"
        group.cancel_scope.cancel()


class TestEndpoints:
    """The daemon's HTTP side, over loopback."""

    async def test_metrics_pass_promtool(self, promtool: str) -> None:
        """/metrics shows the tasks' states, and promtool finds nothing to complain about."""
        async with Simulator() as simulator:
            started = simulator.add_task(name="Export", state=BatchTaskState.STARTED, progress=30)
            failed = simulator.add_task(name="Import", state=BatchTaskState.FAILED)
            async with (
                running_daemon(simulator, [started.id, failed.id]) as (_, base),
                aiohttp.ClientSession() as session,
                session.get(base + "/metrics") as response,
            ):
                assert 200 == response.status
                text = await response.text()

        assert (
            f'batchmon_task_state{{state="Started",task_id="{started.id}",tenant="default"}} 1.0'
            in text
        )
        assert (
            f'batchmon_task_state{{state="Failed",task_id="{failed.id}",tenant="default"}} 1.0'
            in text
        )
        assert (
            f'batchmon_task_progress_ratio{{task_id="{started.id}",tenant="default"}} 0.3' in text
        )
        assert 'batchmon_api_up{tenant="default"} 1.0' in text
        check = subprocess.run(  # noqa: ASYNC221 - a short tool run in a test
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert 0 == check.returncode, check.stdout + check.stderr
        assert "" == check.stdout + check.stderr

    async def test_metrics_gzip_when_asked(self) -> None:
        """gzip for a client that accepts it (as Prometheus does), plain text otherwise."""
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED, progress=30)
            async with (
                running_daemon(simulator, [task.id]) as (_, base),
                aiohttp.ClientSession(auto_decompress=False) as session,
            ):
                async with session.get(
                    base + "/metrics", headers={"Accept-Encoding": "gzip"}
                ) as response:
                    assert "gzip" == response.headers["Content-Encoding"]
                    assert "Accept-Encoding" in response.headers["Vary"]
                    zipped = gzip.decompress(await response.read()).decode()
                async with session.get(
                    base + "/metrics", headers={"Accept-Encoding": "identity"}
                ) as response:
                    assert "Content-Encoding" not in response.headers
                    plain = (await response.read()).decode()

        line = f'batchmon_task_progress_ratio{{task_id="{task.id}",tenant="default"}} 0.3'
        assert line in zipped
        assert line in plain

    async def test_health_tasks_and_status_page(self) -> None:
        """healthz/readyz answer 200, the JSON lists tasks, the page escapes task text."""
        async with Simulator() as simulator:
            task = simulator.add_task(
                name="<script>alert(1)</script>", state=BatchTaskState.STARTED, progress=60
            )
            async with (
                running_daemon(simulator, [task.id]) as (_, base),
                aiohttp.ClientSession() as session,
            ):
                async with session.get(base + "/healthz") as response:
                    assert 200 == response.status
                async with session.get(base + "/readyz") as response:
                    assert {"ready": True, "problems": []} == await response.json()
                async with session.get(base + "/api/v1/tasks") as response:
                    (listed,) = (await response.json())["tasks"]
                async with session.get(base + f"/api/v1/tasks/{task.id}") as response:
                    detail = await response.json()
                    assert listed == {k: v for k, v in detail.items() if k != "events"}
                    assert ["task.discovered", "task.started"] == [
                        e["type"] for e in detail["events"]
                    ]
                async with session.get(base + "/api/v1/tasks/4242") as response:
                    assert 404 == response.status
                async with session.get(base + "/") as response:
                    page = await response.text()

        assert (task.id, "Started", 60) == (listed["id"], listed["state"], listed["percent"])
        assert "<script>alert" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    async def test_tasks_say_which_condition_fires(self) -> None:
        """A failed task is listed as firing ``task.failed``; a running one as firing nothing."""
        async with Simulator() as simulator:
            failed = simulator.add_task(name="Import", state=BatchTaskState.FAILED)
            running = simulator.add_task(name="Export", state=BatchTaskState.STARTED)
            async with (
                running_daemon(simulator, [failed.id, running.id]) as (_, base),
                aiohttp.ClientSession() as session,
                session.get(base + "/api/v1/tasks") as response,
            ):
                tasks = {task["id"]: task for task in (await response.json())["tasks"]}

        assert "task.failed" == tasks[failed.id]["firing"]
        assert tasks[running.id]["firing"] is None

    async def test_ids_filter_lists_a_digests_tasks(self) -> None:
        """``?ids=`` (a chat digest's link) lists only those tasks, in the API and on the page."""
        async with Simulator() as simulator:
            tasks = [
                simulator.add_task(name=f"T{n}", state=BatchTaskState.FAILED) for n in range(3)
            ]
            ids = [task.id for task in tasks]
            async with (
                running_daemon(simulator, ids) as (_, base),
                aiohttp.ClientSession() as session,
            ):
                query = f"?ids={ids[0]},{ids[2]}"
                async with session.get(base + "/api/v1/tasks" + query) as response:
                    listed = sorted(task["id"] for task in (await response.json())["tasks"])
                async with session.get(base + "/" + query) as response:
                    page = await response.text()
                async with session.get(base + "/api/v1/tasks?ids=x") as response:
                    refused = (response.status, (await response.json())["error"])

        assert [ids[0], ids[2]] == listed
        assert f'data-task-id="{ids[1]}"' not in page
        assert f'data-task-id="{ids[2]}"' in page
        assert (400, "ids: expected ids and ranges like '7,21-200', got 'x'") == refused

    async def test_readyz_says_why(self) -> None:
        """With the API failing, /readyz answers 503 and names the failure."""
        async with Simulator() as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            simulator.fail_next(1000, 503)
            async with (
                running_daemon(simulator, [task.id]) as (_, base),
                aiohttp.ClientSession() as session,
                session.get(base + "/readyz") as response,
            ):
                status, body = response.status, await response.json()

        assert 503 == status
        assert body["problems"][0].startswith("SuperOffice API unreachable: GET /v1/BatchTask/")


TOKEN = "marker-api-token-3f9a"


class TestWatchesApi:
    """PUT/DELETE /api/v1/watches/{id}: watching tasks at run time."""

    async def test_token_required(self) -> None:
        """Without the bearer token, or with a wrong one, nothing changes (401)."""
        async with Simulator() as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            async with (
                running_daemon(simulator, [task.id], http={"api_token": TOKEN}) as (_, base),
                aiohttp.ClientSession() as session,
            ):
                for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
                    async with session.put(base + "/api/v1/watches/5", headers=headers) as response:
                        assert 401 == response.status
                        assert "Bearer" == response.headers["WWW-Authenticate"]
                        body = await response.text()
                        assert TOKEN not in body

    async def test_disabled_without_token(self) -> None:
        """Without http.api_token the endpoints answer 403 and say how to enable them."""
        async with Simulator() as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            async with (
                running_daemon(simulator, [task.id]) as (_, base),
                aiohttp.ClientSession() as session,
                session.delete(base + "/api/v1/watches/5") as response,
            ):
                assert 403 == response.status
                assert "http.api_token" in (await response.json())["error"]

    async def test_add_poll_remove_and_persist(self, tmp_path: Path) -> None:
        """A task added at run time is polled, survives a restart, and can be removed."""
        auth = {"Authorization": f"Bearer {TOKEN}"}
        state = {"path": str(tmp_path / "state.db")}
        async with Simulator() as simulator:
            configured = simulator.add_task(state=BatchTaskState.STARTED)
            extra = simulator.add_task(name="Late export", state=BatchTaskState.STARTED)
            sections = {"http": {"api_token": TOKEN}, "state": state}
            async with (
                running_daemon(simulator, [configured.id], **sections) as (daemon, base),
                aiohttp.ClientSession(headers=auth) as session,
            ):
                async with session.put(f"{base}/api/v1/watches/{extra.id}") as response:
                    assert 201 == response.status
                async with session.put(f"{base}/api/v1/watches/{extra.id}") as response:
                    assert 200 == response.status
                with anyio.fail_after(5):
                    while extra.id not in daemon.tracker.tasks:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                async with session.get(f"{base}/api/v1/tasks/{extra.id}") as response:
                    detail = await response.json()
                async with session.delete(f"{base}/api/v1/watches/{configured.id}") as response:
                    assert 409 == response.status
            async with (
                running_daemon(simulator, [configured.id], **sections) as (daemon, base),
                aiohttp.ClientSession(headers=auth) as session,
            ):
                with anyio.fail_after(5):
                    while extra.id not in daemon.tracker.tasks:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                async with session.delete(f"{base}/api/v1/watches/{extra.id}") as response:
                    assert 200 == response.status
                async with session.delete(f"{base}/api/v1/watches/{extra.id}") as response:
                    assert 404 == response.status
                assert extra.id not in daemon.tracker.tasks

        assert ("Late export", "Started") == (detail["name"], detail["state"])
        assert ["task.discovered", "task.started"] == [e["type"] for e in detail["events"]]


class TestReadyzAuth:
    """/readyz says when the credentials are the problem."""

    async def test_rejected_credentials(self) -> None:
        """With a password the API refuses, /readyz answers 503 naming the credentials."""
        async with Simulator(password="not-what-batchmon-sends") as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            async with (
                running_daemon(simulator, [task.id]) as (_, base),
                aiohttp.ClientSession() as session,
                session.get(base + "/readyz") as response,
            ):
                status, body = response.status, await response.json()

        assert 503 == status
        assert body["problems"][0].startswith("SuperOffice rejected the credentials:")


class TestFailureReasons:
    """Why a task failed, where people look first."""

    async def test_result_else_response(self) -> None:
        """``result`` is the task's Result, else its Response; the page's row shows it."""
        async with Simulator() as simulator:
            by_result = simulator.add_task(
                name="Quote PDF generation",
                state=BatchTaskState.FAILED,
                result="Failed: Quote 3592 has no quote lines",
                response="ignored while there is a Result",
            )
            by_response = simulator.add_task(
                name="Import", state=BatchTaskState.FAILED, response="Row 12: bad e-mail"
            )
            running = simulator.add_task(name="Export", state=BatchTaskState.STARTED)
            ids = [by_result.id, by_response.id, running.id]
            async with (
                running_daemon(simulator, ids) as (_, base),
                aiohttp.ClientSession() as session,
            ):
                async with session.get(base + "/api/v1/tasks") as response:
                    listed = {t["id"]: t["result"] for t in (await response.json())["tasks"]}
                async with session.get(f"{base}/api/v1/tasks/{by_response.id}") as response:
                    detail = await response.json()
                async with session.get(base + "/") as response:
                    page = await response.text()

        assert {
            by_result.id: "Failed: Quote 3592 has no quote lines",
            by_response.id: "Row 12: bad e-mail",
            running.id: None,
        } == listed
        assert "Row 12: bad e-mail" == detail["result"]
        assert '<div class="reason">Failed: Quote 3592 has no quote lines</div>' in page
        assert '<div class="reason">Row 12: bad e-mail</div>' in page
