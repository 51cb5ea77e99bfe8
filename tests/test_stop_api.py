"""Stopping a task through the daemon's API and ``batchmon stop``: a real daemon, the simulator,
real processes, all on loopback."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.delivery.dispatcher import Dispatcher
from monitor.delivery.sqlite import SqliteStore
from monitor.polling.stop import AutoStopper, request_stop
from monitor.simulator import Simulator
from monitor.superoffice.auth import auth_from_config
from monitor.superoffice.client import SuperOfficeClient, open_client, open_session
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState, CancellationBehaviour
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from tests.conftest import ManualClock, Reply, ScriptedServer, make_config
from tests.test_cli_status import batchmon, closed_port
from tests.test_web import running_daemon

TOKEN = "stop-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def running(simulator: Simulator, behaviour: CancellationBehaviour) -> int:
    task = simulator.add_task(
        name="Export contacts",
        state=BatchTaskState.STARTED,
        progress=30,
        start_count=1,
        cancellation=behaviour,
    )
    return task.id


async def post(
    base: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            base + path, json=body, headers=AUTH if headers is None else headers
        ) as answer,
    ):
        return answer.status, await answer.json()


class TestApi:
    """``POST /api/v1/tasks/{id}/stop``."""

    async def test_can_cancel_is_stopped_and_announced(self) -> None:
        """200 with SuperOffice's answer; the request reached it; task.stop_requested says who."""
        async with Simulator() as simulator:
            task_id = running(simulator, CancellationBehaviour.CAN_CANCEL)
            async with running_daemon(simulator, [task_id], http={"api_token": TOKEN}) as (_, base):
                status, body = await post(base, f"/api/v1/tasks/{task_id}/stop", {"by": "ann"})
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{base}/api/v1/tasks/{task_id}") as answer,
                    session.get(f"{base}/metrics") as metrics,
                ):
                    events = (await answer.json())["events"]
                    exposition = await metrics.text()

        assert (200, True, True) == (status, body["stopped"], body["asked"])
        assert "Stop requested by ann; SuperOffice stopping it" == body["message"]
        assert 1 == len(simulator.stop_requests)
        (stop,) = [e for e in events if e["type"] == "task.stop_requested"]
        assert body["message"] == stop["message"]
        assert (
            'batchmon_events_total{tenant="default",type="task.stop_requested"} 1.0' in exposition
        )

    async def test_cannot_cancel_is_refused_without_a_request(self) -> None:
        """409 saying why; SuperOffice is not asked."""
        async with Simulator() as simulator:
            task_id = running(simulator, CancellationBehaviour.CANNOT_CANCEL)
            async with running_daemon(simulator, [task_id], http={"api_token": TOKEN}) as (_, base):
                status, body = await post(base, f"/api/v1/tasks/{task_id}/stop", {"force": True})

        assert 409 == status
        assert "cannot be stopped: SuperOffice marks it CannotCancel" in body["error"]
        assert [] == simulator.stop_requests

    async def test_cancel_with_warning_needs_force(self) -> None:
        """409 saying to add force; with force it is stopped."""
        async with Simulator() as simulator:
            task_id = running(simulator, CancellationBehaviour.CANCEL_WITH_WARNING)
            async with running_daemon(simulator, [task_id], http={"api_token": TOKEN}) as (_, base):
                refused = await post(base, f"/api/v1/tasks/{task_id}/stop")
                assert [] == simulator.stop_requests
                forced = await post(base, f"/api/v1/tasks/{task_id}/stop", {"force": True})

        assert 409 == refused[0]
        assert "batchmon stop --force" in refused[1]["error"]
        assert '{"force": true}' in refused[1]["error"]
        assert (200, True) == (forced[0], forced[1]["stopped"])

    @pytest.mark.parametrize(
        ("body", "status"),
        [
            ({"force": "yes"}, 400),
            ({"force": True, "why": "x"}, 400),
            ([1], 400),
            ({"by": ""}, 400),
        ],
    )
    async def test_bad_body(self, body: Any, status: int) -> None:
        """A body that is not {"force": bool, "by": text} is a 400 saying what is wrong."""
        async with Simulator() as simulator:
            task_id = running(simulator, CancellationBehaviour.CAN_CANCEL)
            async with running_daemon(simulator, [task_id], http={"api_token": TOKEN}) as (_, base):
                answer = await post(base, f"/api/v1/tasks/{task_id}/stop", body)

        assert status == answer[0]
        assert [] == simulator.stop_requests

    async def test_token_and_unknown_task(self) -> None:
        """No token: 401; a task SuperOffice does not know: 404; no api_token at all: 403."""
        async with Simulator() as simulator:
            task_id = running(simulator, CancellationBehaviour.CAN_CANCEL)
            async with running_daemon(simulator, [task_id], http={"api_token": TOKEN}) as (_, base):
                anonymous = await post(base, f"/api/v1/tasks/{task_id}/stop", headers={})
                unknown = await post(base, "/api/v1/tasks/4711/stop")
            async with running_daemon(simulator, [task_id]) as (_, base):
                disabled = await post(base, f"/api/v1/tasks/{task_id}/stop", headers={})

        assert 401 == anonymous[0]
        assert (404, "SuperOffice has no task 4711") == (unknown[0], unknown[1]["error"])
        assert 403 == disabled[0]
        assert [] == simulator.stop_requests


class TestFalse:
    """SuperOffice may answer false: the stop is reported as not done."""

    async def test_false_is_not_stopped(self, scripted: ScriptedServer) -> None:
        """The event and the answer say "not stopped"."""
        task = {"Id": 5, "Name": "Export", "State": "Started", "CancellationBehaviour": "CanCancel"}
        scripted.replies += [Reply(body=json.dumps(task)), Reply(body="false")]
        config = make_config(scripted.url).superoffice
        async with open_session(config) as session:
            client = SuperOfficeClient(session, config, auth_from_config(config.auth))
            outcome = await request_stop(client, 5, force=False, by="ann", now=datetime.now(UTC))

        assert outcome.stopped is False
        assert outcome.event is not None
        assert "answered false: not stopped" in (outcome.event.message or "")
        assert ["GET", "POST"] == [seen.method for seen in scripted.seen]


class TestCli:
    """``batchmon stop`` as a user runs it."""

    async def test_through_the_daemon(self, tmp_path: Path) -> None:
        """--url: CanCancel exits 0; CannotCancel exits 1 with the reason, nothing asked."""
        token_file = tmp_path / "api_token"
        token_file.write_text(TOKEN + "\n")
        async with Simulator() as simulator:
            can = running(simulator, CancellationBehaviour.CAN_CANCEL)
            cannot = running(simulator, CancellationBehaviour.CANNOT_CANCEL)
            ids = [can, cannot]
            async with running_daemon(simulator, ids, http={"api_token": TOKEN}) as (_, base):
                refused = await batchmon(
                    "stop", str(cannot), "--url", base, "--token-file", str(token_file)
                )
                assert [] == simulator.stop_requests
                stopped = await batchmon(
                    "stop", str(can), "--url", base, "--token-file", str(token_file)
                )
                anonymous = await batchmon("stop", str(can), "--url", base)

        assert 1 == refused.returncode
        assert "CannotCancel" in refused.stderr.decode()
        assert 0 == stopped.returncode, stopped.stderr.decode()
        assert "SuperOffice stopping it" in stopped.stdout.decode()
        assert 77 == anonymous.returncode
        assert 1 == len(simulator.stop_requests)
        assert b'"Id": %d' % can in simulator.stop_requests[0].body

    async def test_unreachable_directly(self, tmp_path: Path) -> None:
        """--config, SuperOffice down: exit 69 with one line saying so, no retry chatter."""
        config = tmp_path / "batchmon.toml"
        config.write_text(
            f'[superoffice]\nurl = "http://127.0.0.1:{closed_port()}/api"\n'
            '[superoffice.auth]\ntype = "basic"\nusername = "batchmon"\npassword = "batchmon"\n'
        )
        config.chmod(0o600)

        done = await batchmon("stop", "212", "--config", str(config))

        assert 69 == done.returncode
        [line] = done.stderr.decode().splitlines()
        assert line.startswith("batchmon: SuperOffice could not be asked")
        assert b"" == done.stdout

    async def test_warning_needs_force_directly(self, tmp_path: Path) -> None:
        """--config: CancelWithWarning exits 1 saying to add --force; with it, 0."""
        async with Simulator() as simulator:
            task_id = running(simulator, CancellationBehaviour.CANCEL_WITH_WARNING)
            config = tmp_path / "batchmon.toml"
            config.write_text(
                f'[superoffice]\nurl = "{simulator.url}"\n'
                '[superoffice.auth]\ntype = "basic"\nusername = "batchmon"\npassword = "batchmon"\n'
            )
            config.chmod(0o600)
            refused = await batchmon("stop", str(task_id), "--config", str(config))
            forced = await batchmon("stop", str(task_id), "--force", "--config", str(config))
            unknown = await batchmon("stop", "4711", "--config", str(config))

        assert 1 == refused.returncode
        assert "force" in refused.stderr.decode()
        assert 0 == forced.returncode, forced.stderr.decode()
        assert 1 == len(simulator.stop_requests)
        assert (3, "batchmon: SuperOffice has no task 4711\n") == (
            unknown.returncode,
            unknown.stderr.decode(),
        )

    async def test_daemon_down(self) -> None:
        """Nothing listens: 69."""
        result = await batchmon("stop", "212", "--url", f"http://127.0.0.1:{closed_port()}")
        assert 69 == result.returncode


class TestAutoStop:
    """``[poll] stop_stalled_after``: a long-stalled CanCancel task is stopped once, for good."""

    async def test_once_even_after_a_restart(self, tmp_path: Path, clock: ManualClock) -> None:
        """The second stopper (a restart, same state file) finds the stop recorded."""
        async with Simulator(clock=clock) as simulator:
            task_id = running(simulator, CancellationBehaviour.CAN_CANCEL)
            config = make_config(simulator.url).superoffice
            tracker = Tracker(Rules(stall_after=timedelta(minutes=15)))
            async with open_client(config) as client:
                tracker.observe(await client.get_task(task_id), clock())
                clock.advance(16 * 60)
                tracker.observe(await client.get_task(task_id), clock())  # stalled now
                clock.advance(60 * 60)
                outcomes = []
                for _ in range(2):  # two runs of the daemon on the same state
                    store = await SqliteStore.open(tmp_path / "state.db")
                    try:
                        stopper = AutoStopper(
                            client,
                            Dispatcher([], store).commit,
                            store.known_events,
                            stall_after=lambda: timedelta(minutes=15),
                            stop_after=timedelta(hours=1),
                            clock=clock,
                        )
                        outcomes.append(await stopper.once(tracker.tasks.values()))
                    finally:
                        await store.close()

        first, second = outcomes
        assert [True] == [outcome.stopped for outcome in first]
        assert first[0].event is not None
        assert "[poll] stop_stalled_after" in (first[0].event.message or "")
        assert [] == second
        assert 1 == len(simulator.stop_requests)

    async def test_cannot_cancel_is_left_alone(self, tmp_path: Path, clock: ManualClock) -> None:
        """A task that may not be stopped is read, refused, and not asked again."""
        async with Simulator(clock=clock) as simulator:
            task_id = running(simulator, CancellationBehaviour.CANCEL_WITH_WARNING)
            config = make_config(simulator.url).superoffice
            tracker = Tracker(Rules(stall_after=timedelta(minutes=15)))
            store = await SqliteStore.open(tmp_path / "state.db")
            try:
                async with open_client(config) as client:
                    # A bulk poll does not select CancellationBehaviour: unknown until read.
                    polled = {**simulator.tasks[task_id].to_json(), "CancellationBehaviour": None}
                    info = BatchTaskInfo.model_validate(polled)
                    tracker.observe(info, clock())
                    clock.advance(16 * 60)
                    tracker.observe(info, clock())
                    clock.advance(60 * 60)
                    stopper = AutoStopper(
                        client,
                        Dispatcher([], store).commit,
                        store.known_events,
                        stall_after=lambda: timedelta(minutes=15),
                        stop_after=timedelta(hours=1),
                        clock=clock,
                    )
                    first = await stopper.once(tracker.tasks.values())
                    again = await stopper.once(tracker.tasks.values())
            finally:
                await store.close()

        assert [None] == [outcome.stopped for outcome in first]
        assert [] == again
        assert [] == simulator.stop_requests
