"""The Alertmanager sink: the event-to-alert table, a real Alertmanager, and a fake one."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from monitor.config.sinks import AlertmanagerSinkConfig
from monitor.sinks.alertmanager import (
    DESCRIPTION_MAX,
    LABEL_MAX,
    AlertmanagerSink,
    alerts_for,
)
from monitor.sinks.base import DeliveryError
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink
from monitor.sinks.render import escape_plain
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import EndReason, Event, EventType, TaskSummary, event_id
from tests.conftest import ManualClock, Reply, ScriptedServer

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
FAILED, STALLED, GONE, API_DOWN = (
    "BatchTaskFailed",
    "BatchTaskStalled",
    "BatchTaskGone",
    "BatchmonApiDown",
)
STATE_OF = {
    EventType.TASK_FAILED: BatchTaskState.FAILED,
    EventType.TASK_SUCCEEDED: BatchTaskState.SUCCEEDED,
}


def _task(
    task_id: int = 212,
    name: str | None = "Export",
    state: BatchTaskState = BatchTaskState.STARTED,
    progress: int | None = 40,
    result: str | None = None,
) -> TaskSummary:
    return TaskSummary(
        id=task_id,
        name=name,
        state=state,
        state_raw=state.value,
        progress=progress,
        progress_description="Exporting rows",
        description=None,
        associate_id=113,
        context=None,
        request="ExportSelection",
        response=None,
        result=result,
        file_name=None,
        last_started=T0,
        created=T0,
        start_count=1,
    )


def _event(
    event_type: EventType,
    task: TaskSummary | None = None,
    *,
    time: datetime = T0,
    message: str | None = None,
) -> Event:
    if task is None and event_type.value.startswith("task."):
        task = _task(state=STATE_OF.get(event_type, BatchTaskState.STARTED))
    return Event(
        id=event_id(event_type, task.id if task else None, time),
        type=event_type,
        time=time,
        task=task,
        message=message,
    )


def _labels(
    alertname: str, task_id: int = 212, name: str = "Export", tenant: str = "default"
) -> dict[str, str]:
    severity = "critical" if alertname == API_DOWN else "warning"
    if alertname == API_DOWN:
        return {
            "alertname": alertname,
            "tenant": tenant,
            "severity": severity,
            "source": "batchmon",
        }
    return {
        "alertname": alertname,
        "tenant": tenant,
        "task_id": str(task_id),
        "task_name": name,
        "severity": severity,
        "source": "batchmon",
    }


async def _until(condition: Callable[[], bool]) -> None:
    """Poll a condition that loopback servers in this event loop make true."""
    for _ in range(250):
        if condition():
            return
        await anyio.sleep(0.02)
    pytest.fail("not within 5 s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class TestAlertsFor:
    """Which alerts an event fires and resolves, and what they say (pure)."""

    @pytest.mark.parametrize(
        ("event_type", "fired", "resolved"),
        [
            (EventType.TASK_FAILED, FAILED, [STALLED]),
            (EventType.TASK_STALLED, STALLED, []),
            (EventType.TASK_GONE, GONE, []),
            (EventType.MONITOR_API_DOWN, API_DOWN, []),
            (EventType.TASK_SUCCEEDED, None, [FAILED, STALLED, GONE]),
            (EventType.TASK_RESTARTED, None, [FAILED, STALLED, GONE]),
            (EventType.TASK_REMOVED, None, [FAILED, STALLED, GONE]),
            (EventType.TASK_EXPIRED, None, [FAILED, STALLED, GONE]),
            (EventType.TASK_RESUMED, None, [STALLED]),
            (EventType.MONITOR_API_RECOVERED, None, [API_DOWN]),
            (EventType.TASK_DISCOVERED, None, []),
            (EventType.TASK_STARTED, None, []),
            (EventType.TASK_PROGRESS, None, []),
            (EventType.TASK_STATE_CHANGED, None, []),
            (EventType.MONITOR_AUTH_FAILED, None, []),
        ],
        ids=lambda value: str(value),
    )
    def test_table(self, event_type: EventType, fired: str | None, resolved: list[str]) -> None:
        """Each event type fires and resolves the documented alerts, with the same labels."""
        change = alerts_for(_event(event_type))

        assert fired == (change.fired.labels["alertname"] if change.fired else None)
        assert resolved == [alert.labels["alertname"] for alert in change.resolved]
        if change.fired is not None:
            assert _labels(fired or "") == change.fired.labels
        assert [_labels(name) for name in resolved] == [alert.labels for alert in change.resolved]

    def test_failed_alert(self) -> None:
        """A failure says which task, its state, progress and result, from the detection time."""
        task = _task(state=BatchTaskState.FAILED, result="Disk full")
        change = alerts_for(_event(EventType.TASK_FAILED, task, message="Failed after 3 runs"))

        assert change.fired is not None
        assert {
            "summary": "Batch task 212 (Export) failed",
            "description": "State: Failed\nProgress: 40% (Exporting rows)\n"
            "Result: Disk full\nFailed after 3 runs",
        } == change.fired.annotations
        assert T0 == change.fired.starts_at

    def test_resolution_says_what_cleared_it(self) -> None:
        """A resolution keeps the summary and tells which event cleared the condition."""
        task = _task(state=BatchTaskState.SUCCEEDED, progress=100)
        [failed, *_] = alerts_for(_event(EventType.TASK_SUCCEEDED, task)).resolved

        assert "Batch task 212 (Export) failed" == failed.annotations["summary"]
        assert (
            "Resolved by task.succeeded.\nState: Succeeded\nProgress: 100% (Exporting rows)"
            == failed.annotations["description"]
        )

    @pytest.mark.parametrize(
        ("event_type", "reason", "ended"),
        [
            (EventType.TASK_RESTARTED, EndReason.RESTARTED, "restarted"),
            (EventType.TASK_SUCCEEDED, EndReason.SUCCEEDED, "succeeded"),
            (EventType.TASK_REMOVED, EndReason.REMOVED, "removed"),
            (EventType.TASK_EXPIRED, EndReason.EXPIRED, "expired"),
            (EventType.TASK_RESUMED, EndReason.RESUMED, "resumed"),
            (EventType.TASK_FAILED, None, "task.failed"),
        ],
    )
    def test_resolution_says_why_it_ended(
        self, event_type: EventType, reason: EndReason | None, ended: str
    ) -> None:
        """Every resolution carries why its condition ended, in the ``ended`` annotation."""
        event = replace(_event(event_type), reason=reason)

        resolved = alerts_for(event).resolved

        assert resolved
        assert {ended} == {alert.annotations["ended"] for alert in resolved}

    def test_api_down(self) -> None:
        """The API alert has no task labels and carries the reason."""
        change = alerts_for(
            _event(EventType.MONITOR_API_DOWN, message="5 polls failed: connection refused")
        )

        assert change.fired is not None
        assert {
            "summary": "batchmon cannot reach the SuperOffice API",
            "description": "5 polls failed: connection refused",
        } == change.fired.annotations

    def test_unnamed_task(self) -> None:
        """A task without a name has no task_name label (Alertmanager drops empty labels)."""
        change = alerts_for(_event(EventType.TASK_GONE, _task(name=None)))

        assert change.fired is not None
        assert "task_name" not in change.fired.labels
        assert "Batch task 212 is gone (the API answers 404)" == change.fired.annotations["summary"]

    def test_untrusted_text_is_bounded_valid_utf8(self) -> None:
        """Task text becomes one bounded line of valid UTF-8 in labels, bounded in annotations."""
        name = "x\ud800y\n<!channel>\x1b[31m\x00" + "A" * 1000
        task = _task(name=name, state=BatchTaskState.FAILED, result="r\x07" * 5000)
        change = alerts_for(_event(EventType.TASK_FAILED, task))

        assert change.fired is not None
        label = change.fired.labels["task_name"]
        label.encode("utf-8")
        assert LABEL_MAX == len(label)
        assert label.startswith("x?y <\u200b!channel> [31m")
        assert not any(c in label for c in "\n\x1b\x00")
        description = change.fired.annotations["description"]
        description.encode("utf-8")
        assert DESCRIPTION_MAX == len(description)
        assert "\x07" not in description
        assert "\n" in description

    @pytest.mark.parametrize(
        "mention", ["<!channel>", "<!here>", "<!everyone>", "@everyone", "@here", "<@U123>", "@ops"]
    )
    def test_mentions_are_broken(self, mention: str) -> None:
        """Label, summary and description show a mention without forming one, as chat sinks do."""
        task = _task(name=f"Export {mention}", state=BatchTaskState.FAILED, result=mention)
        change = alerts_for(_event(EventType.TASK_FAILED, task, message=f"by {mention}"))

        assert change.fired is not None
        texts = [
            change.fired.labels["task_name"],
            change.fired.annotations["summary"],
            change.fired.annotations["description"],
        ]
        assert all(escape_plain(mention) in text for text in texts)
        assert not any(mention in text for text in texts)
        assert not any(re.search(r"<[!@]|@\w", text) for text in texts)


@dataclass
class RealAlertmanager:
    """A running Alertmanager and the notifications its webhook receiver got."""

    url: str
    notifications: list[dict[str, Any]] = field(default_factory=list)

    async def alerts(self, session: aiohttp.ClientSession, matcher: str) -> list[dict[str, Any]]:
        """The alerts ``GET /api/v2/alerts`` lists (active, not resolved) for one matcher."""
        async with session.get(f"{self.url}/api/v2/alerts", params={"filter": matcher}) as answer:
            answer.raise_for_status()
            alerts: list[dict[str, Any]] = await answer.json()
            return alerts

    def notified(self, status: str, alertname: str) -> bool:
        """Whether the receiver got a notification with this alert in this status."""
        return any(
            alert["status"] == status and alert["labels"]["alertname"] == alertname
            for notification in self.notifications
            for alert in notification["alerts"]
        )


AM_CONFIG = """\
route:
  receiver: hook
  group_by: [alertname, task_id]
  group_wait: 0s
  group_interval: 200ms
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook}
"""


@pytest.fixture(name="am_binary")
def _am_binary() -> str:
    path = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if path is None:
        if os.environ.get("BATCHMON_REQUIRE_TOOLS"):
            pytest.fail(
                "Alertmanager is required (Debian package 'prometheus-alertmanager') "
                "but not installed"
            )
        pytest.skip("Alertmanager not installed (Debian package 'prometheus-alertmanager')")
    return path


@pytest.fixture(name="alertmanager")
async def _alertmanager(
    am_binary: str, tmp_path: Path, session: aiohttp.ClientSession
) -> AsyncIterator[RealAlertmanager]:
    """Alertmanager on a loopback port, no clustering, notifying a loopback webhook."""
    am = RealAlertmanager(url="")

    async def hook(request: web.Request) -> web.Response:
        am.notifications.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    config = anyio.Path(tmp_path / "alertmanager.yml")
    await config.write_text(AM_CONFIG.format(hook=receiver.make_url("/hook")))
    port = _free_port()
    am.url = f"http://127.0.0.1:{port}"
    log_path = anyio.Path(tmp_path / "alertmanager.log")
    async with await anyio.open_file(log_path, "wb") as log_file:
        process = await anyio.open_process(
            [
                am_binary,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'data'}",
                "--cluster.listen-address=",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file.wrapped,
            stderr=log_file.wrapped,
        )
    try:
        with anyio.fail_after(10):
            while True:
                if process.returncode is not None:
                    pytest.fail(f"Alertmanager exited: {await log_path.read_text()}")
                try:
                    async with session.get(f"{am.url}/-/ready") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await anyio.sleep(0.05)
        yield am
    finally:
        process.terminate()
        with anyio.fail_after(5):
            await process.aclose()
        await receiver.close()


class TestRealAlertmanager:
    """Alerts fire and resolve in a real Alertmanager, and it notifies its receiver."""

    async def test_failed_fires_then_succeeded_resolves(
        self, alertmanager: RealAlertmanager, session: aiohttp.ClientSession
    ) -> None:
        """A failed task's alert is active with its labels, then gone after it succeeds."""
        sink = AlertmanagerSink(
            "am", alertmanager.url, session, generator_url="https://batchmon.example.com/"
        )
        now = datetime.now(UTC)
        failed = _task(state=BatchTaskState.FAILED, result="Disk full")

        await sink.send(_event(EventType.TASK_FAILED, failed, time=now))

        [alert] = await alertmanager.alerts(session, 'task_id="212"')
        assert _labels(FAILED) == alert["labels"]
        assert "active" == alert["status"]["state"]
        assert "Batch task 212 (Export) failed" == alert["annotations"]["summary"]
        assert "Result: Disk full" in alert["annotations"]["description"]
        assert "https://batchmon.example.com/tasks/212" == alert["generatorURL"]
        await _until(lambda: alertmanager.notified("firing", FAILED))

        succeeded = _task(state=BatchTaskState.SUCCEEDED, progress=100)
        await sink.send(_event(EventType.TASK_SUCCEEDED, succeeded, time=datetime.now(UTC)))

        assert [] == await alertmanager.alerts(session, 'task_id="212"')
        assert [] == sink.firing
        await _until(lambda: alertmanager.notified("resolved", FAILED))

    async def test_stalled_then_resumed(
        self, alertmanager: RealAlertmanager, session: aiohttp.ClientSession
    ) -> None:
        """A stall fires BatchTaskStalled; progress again resolves it."""
        sink = AlertmanagerSink("am", alertmanager.url, session)

        await sink.send(_event(EventType.TASK_STALLED, time=datetime.now(UTC)))
        [alert] = await alertmanager.alerts(session, 'alertname="BatchTaskStalled"')
        assert _labels(STALLED) == alert["labels"]

        await sink.send(_event(EventType.TASK_RESUMED, time=datetime.now(UTC)))
        assert [] == await alertmanager.alerts(session, 'alertname="BatchTaskStalled"')

    async def test_api_down_then_recovered(
        self, alertmanager: RealAlertmanager, session: aiohttp.ClientSession
    ) -> None:
        """The API outage is one critical alert, resolved by the recovery."""
        sink = AlertmanagerSink("am", alertmanager.url, session)

        await sink.send(_event(EventType.MONITOR_API_DOWN, time=datetime.now(UTC)))
        [alert] = await alertmanager.alerts(session, 'alertname="BatchmonApiDown"')
        assert _labels(API_DOWN) == alert["labels"]

        await sink.send(_event(EventType.MONITOR_API_RECOVERED, time=datetime.now(UTC)))
        assert [] == await alertmanager.alerts(session, 'alertname="BatchmonApiDown"')
        await _until(lambda: alertmanager.notified("resolved", API_DOWN))

    async def test_restart(
        self, alertmanager: RealAlertmanager, session: aiohttp.ClientSession
    ) -> None:
        """After a restart, restored alerts are re-posted and a fresh sink still resolves."""
        before = AlertmanagerSink("am", alertmanager.url, session)
        await before.send(_event(EventType.TASK_STALLED, time=datetime.now(UTC)))
        assert 1 == len(await alertmanager.alerts(session, 'task_id="212"'))

        after = AlertmanagerSink("am", alertmanager.url, session, resend_every=0.1)
        gone = _event(EventType.TASK_GONE, _task(task_id=213), time=datetime.now(UTC))
        after.restore([gone])
        async with anyio.create_task_group() as group:
            group.start_soon(after.run)
            await _until(lambda: alertmanager.notified("firing", GONE))
            group.cancel_scope.cancel()
        [alert] = await alertmanager.alerts(session, 'task_id="213"')
        assert _labels(GONE, task_id=213) == alert["labels"]

        await after.send(_event(EventType.TASK_RESUMED, time=datetime.now(UTC)))
        assert [] == await alertmanager.alerts(session, 'task_id="212"')


@pytest.fixture(name="fake_am")
def _fake_am(scripted: ScriptedServer) -> ScriptedServer:
    """A loopback server answering 200 to every post, recording each."""
    scripted.replies.extend(Reply(200, b"") for _ in range(100))
    return scripted


def _base(server: ScriptedServer) -> str:
    return str(server.server.make_url("/"))


def _posted(server: ScriptedServer) -> list[list[dict[str, Any]]]:
    return [json.loads(seen.body) for seen in server.seen]


@asynccontextmanager
async def _running(sink: AlertmanagerSink) -> AsyncIterator[None]:
    """The sink's resend loop, for the duration of the block."""
    async with anyio.create_task_group() as group:
        group.start_soon(sink.run)
        yield
        group.cancel_scope.cancel()


class TestResend:
    """Active alerts are re-posted on a schedule, with a bounded lifetime."""

    async def test_active_alerts_are_reposted(
        self,
        fake_am: ScriptedServer,
        session: aiohttp.ClientSession,
        clock: ManualClock,
    ) -> None:
        """Each re-post carries the alert with its start and an end four intervals ahead."""
        sink = AlertmanagerSink("am", _base(fake_am), session, resend_every=0.2, clock=clock)
        await sink.send(_event(EventType.TASK_STALLED))
        clock.advance(60)

        async with _running(sink):
            await _until(lambda: len(fake_am.seen) >= 3)

        first, *resent = _posted(fake_am)
        assert "2026-11-28T12:00:00.800Z" == first[0]["endsAt"]
        for batch in resent:
            assert [_labels(STALLED)] == [alert["labels"] for alert in batch]
            assert "2026-11-28T12:00:00.000Z" == batch[0]["startsAt"]
            assert "2026-11-28T12:01:00.800Z" == batch[0]["endsAt"]

    async def test_nothing_to_resend(
        self,
        fake_am: ScriptedServer,
        session: aiohttp.ClientSession,
    ) -> None:
        """Without active alerts the loop makes no request."""
        async with _running(AlertmanagerSink("am", _base(fake_am), session, resend_every=0.05)):
            await anyio.sleep(0.3)

        assert [] == fake_am.seen

    async def test_resolutions_are_reposted_for_a_while(
        self,
        fake_am: ScriptedServer,
        session: aiohttp.ClientSession,
        clock: ManualClock,
    ) -> None:
        """A resolution is re-posted with its end time until ``resolved_for`` has passed."""
        sink = AlertmanagerSink(
            "am", _base(fake_am), session, resend_every=0.05, resolved_for=300, clock=clock
        )
        await sink.send(_event(EventType.TASK_FAILED))
        await sink.send(_event(EventType.TASK_SUCCEEDED))

        async with _running(sink):
            await _until(lambda: len(fake_am.seen) >= 4)
            clock.advance(300)
            await anyio.sleep(0.1)
            posts = len(fake_am.seen)
            await anyio.sleep(0.2)

        resent = _posted(fake_am)[3]
        assert [FAILED, GONE, STALLED] == sorted(alert["labels"]["alertname"] for alert in resent)
        assert {"2026-11-28T12:00:00.000Z"} == {alert["endsAt"] for alert in resent}
        assert posts == len(fake_am.seen)

    async def test_restore_seeds_the_active_alerts(
        self,
        fake_am: ScriptedServer,
        session: aiohttp.ClientSession,
        clock: ManualClock,
    ) -> None:
        """Restored alerts are posted at once with their original start; a failure ends a stall."""
        sink = AlertmanagerSink("am", _base(fake_am), session, resend_every=60, clock=clock)
        sink.restore(
            [
                _event(EventType.TASK_STALLED),
                _event(EventType.TASK_FAILED, _task(state=BatchTaskState.FAILED)),
                _event(EventType.TASK_GONE, _task(task_id=213)),
                _event(EventType.MONITOR_API_DOWN),
                _event(EventType.TASK_PROGRESS, _task(task_id=214)),
            ]
        )
        clock.advance(600)

        async with _running(sink):
            await _until(lambda: len(fake_am.seen) >= 1)

        [batch] = _posted(fake_am)
        assert [_labels(FAILED), _labels(GONE, task_id=213), _labels(API_DOWN)] == [
            alert["labels"] for alert in batch
        ]
        assert {"2026-11-28T12:00:00.000Z"} == {alert["startsAt"] for alert in batch}
        assert {"2026-11-28T12:14:00.000Z"} == {alert["endsAt"] for alert in batch}

    async def test_failed_resend_is_logged_and_retried(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A refused re-post is logged without the URL and the loop goes on."""
        scripted.replies.extend([Reply(200, b""), Reply(503, b"busy"), Reply(200, b"")])
        url = str(scripted.server.make_url("/")).replace("//", "//batchmon:s3cret@")
        sink = AlertmanagerSink("am", url, session, resend_every=0.05)
        await sink.send(_event(EventType.TASK_GONE))

        with capture_logs() as logs:
            async with anyio.create_task_group() as group:
                group.start_soon(sink.run)
                await _until(lambda: len(scripted.seen) >= 3)
                group.cancel_scope.cancel()

        [failure] = [entry for entry in logs if entry["event"] == "alertmanager_resend_failed"]
        assert {
            "event": "alertmanager_resend_failed",
            "log_level": "warning",
            "sink": "am",
            "error": "am: HTTP 503 Service Unavailable: busy",
            "status": 503,
            "permanent": False,
        } == failure


class TestSend:
    """One POST per event, shaped as Alertmanager's API v2 wants it."""

    async def test_request(self, fake_am: ScriptedServer, session: aiohttp.ClientSession) -> None:
        """The alerts go as a JSON list to {url}/api/v2/alerts, with the URL's credentials."""
        url = str(fake_am.server.make_url("/am/")).replace("//", "//batchmon:s3cret@")
        sink = AlertmanagerSink("am", url, session, generator_url="https://batchmon.example.com/")

        await sink.send(_event(EventType.TASK_FAILED))

        [seen] = fake_am.seen
        assert ("POST", "/am/api/v2/alerts") == (seen.method, seen.path)
        assert "application/json" == seen.headers["Content-Type"]
        assert "Basic YmF0Y2htb246czNjcmV0" == seen.headers["Authorization"]
        [resolved, fired] = json.loads(seen.body)
        assert {"labels", "annotations", "startsAt", "endsAt", "generatorURL"} == set(fired)
        assert _labels(STALLED) == resolved["labels"]
        assert resolved["startsAt"] <= resolved["endsAt"]

    @pytest.mark.parametrize(
        "event_type",
        [
            EventType.TASK_DISCOVERED,
            EventType.TASK_STARTED,
            EventType.TASK_PROGRESS,
            EventType.TASK_STATE_CHANGED,
            EventType.MONITOR_AUTH_FAILED,
        ],
    )
    async def test_other_events_make_no_request(
        self, fake_am: ScriptedServer, session: aiohttp.ClientSession, event_type: EventType
    ) -> None:
        """Events that neither fire nor resolve anything are accepted silently."""
        await AlertmanagerSink("am", _base(fake_am), session).send(_event(event_type))

        assert [] == fake_am.seen

    async def test_resolution_uses_the_labels_it_fired_with(
        self, fake_am: ScriptedServer, session: aiohttp.ClientSession, clock: ManualClock
    ) -> None:
        """A renamed task's alert is resolved under its old name, and replaced on a new fire."""
        sink = AlertmanagerSink("am", _base(fake_am), session, clock=clock)
        await sink.send(_event(EventType.TASK_STALLED, _task(name="Export")))
        clock.advance(10)
        await sink.send(_event(EventType.TASK_STALLED, _task(name="Export v2")))
        await sink.send(_event(EventType.TASK_RESUMED, _task(name="Export v3")))

        _, renamed, resumed = _posted(fake_am)
        assert [
            (_labels(STALLED, name="Export"), "2026-11-28T12:00:10.000Z"),
            (_labels(STALLED, name="Export v2"), "2026-11-28T12:04:10.000Z"),
        ] == [(alert["labels"], alert["endsAt"]) for alert in renamed]
        assert [_labels(STALLED, name="Export v2")] == [alert["labels"] for alert in resumed]
        assert [] == sink.firing

    async def test_refire_keeps_the_first_start(
        self, fake_am: ScriptedServer, session: aiohttp.ClientSession, clock: ManualClock
    ) -> None:
        """The same alert fired again (a redelivery) keeps its earliest startsAt."""
        sink = AlertmanagerSink("am", _base(fake_am), session, clock=clock)
        await sink.send(_event(EventType.TASK_GONE))
        clock.advance(30)
        await sink.send(_event(EventType.TASK_GONE, time=clock.now))

        [[first], [second]] = _posted(fake_am)
        assert first["startsAt"] == second["startsAt"]


class TestErrors:
    """Answers and failures become DeliveryErrors the dispatcher can act on."""

    @pytest.mark.parametrize(
        ("reply", "message", "permanent", "retry_after", "status"),
        [
            (Reply(429, b"", {"Retry-After": "7"}), "HTTP 429", False, 7.0, 429),
            (
                Reply(503, b"maintenance\n", {"Retry-After": "2"}),
                "HTTP 503 Service Unavailable: maintenance",
                False,
                2.0,
                503,
            ),
            (Reply(500, b""), "HTTP 500", False, None, 500),
            (
                Reply(400, b'"start time must be before end time"'),
                'HTTP 400 Bad Request: "start time must be before end time"',
                True,
                None,
                400,
            ),
            (
                Reply(404, b"404 page not found"),
                "HTTP 404 Not Found: 404 page not found",
                True,
                None,
                404,
            ),
            (Reply(301, b"", {"Location": "http://elsewhere/"}), "HTTP 301", True, None, 301),
            (Reply(200, b"", delay=2), "no answer within 0.3 s", False, None, None),
        ],
        ids=["429", "503", "500", "400", "404", "redirect", "timeout"],
    )
    async def test_classification(
        self,
        scripted: ScriptedServer,
        session: aiohttp.ClientSession,
        reply: Reply,
        message: str,
        permanent: bool,
        retry_after: float | None,
        status: int | None,
    ) -> None:
        """429, 5xx and timeouts are retryable (with Retry-After); other answers are permanent."""
        scripted.replies.append(reply)
        url = str(scripted.server.make_url("/")).replace("//", "//batchmon:s3cret@")
        sink = AlertmanagerSink("am", url, session, timeout=0.3)

        with pytest.raises(DeliveryError) as info:
            await sink.send(_event(EventType.TASK_FAILED))

        assert (permanent, retry_after, status) == (
            info.value.permanent,
            info.value.retry_after,
            info.value.status,
        )
        assert message in str(info.value)
        assert "s3cret" not in str(info.value)
        assert "127.0.0.1" not in str(info.value)

    async def test_unreachable(self, session: aiohttp.ClientSession) -> None:
        """A refused connection is retryable and its message names no address."""
        sink = AlertmanagerSink("am", f"http://u:s3cret@127.0.0.1:{_free_port()}", session)

        with pytest.raises(DeliveryError) as info:
            await sink.send(_event(EventType.TASK_GONE))

        assert not info.value.permanent
        assert "am: cannot connect: Connection refused" == str(info.value)


class TestFactory:
    """The config builds the sink."""

    async def test_build(self, session: aiohttp.ClientSession) -> None:
        """An ``alertmanager`` entry builds an AlertmanagerSink linking to the status page."""
        config = AlertmanagerSinkConfig.model_validate(
            {"name": "am", "type": "alertmanager", "url": "http://127.0.0.1:9093", "timeout": "3s"}
        )

        sink = build_sink(config, SinkContext(session, status_url="https://b.example/"))

        assert isinstance(sink, AlertmanagerSink)
        assert ("am", 10.0) == (sink.name, sink.default_rate)


class TestTenant:
    """Every alert names its tenant (``tenant`` label); task ids repeat across tenants."""

    async def test_same_task_in_two_tenants(
        self, alertmanager: RealAlertmanager, session: aiohttp.ClientSession
    ) -> None:
        """Task 212 of ``default`` and of ``acme`` are two alerts; each resolves on its own."""
        status = "https://batchmon.example.com/"
        default, acme = (
            build_sink(
                AlertmanagerSinkConfig(name="am", type="alertmanager", url=alertmanager.url),
                SinkContext(session, status_url=status, tenant=tenant),
            )
            for tenant in ("default", "acme")
        )
        failed = _task(state=BatchTaskState.FAILED)
        for sink in (default, acme):
            await sink.send(_event(EventType.TASK_FAILED, failed, time=datetime.now(UTC)))

        alerts = await alertmanager.alerts(session, 'task_id="212"')
        by_tenant = {alert["labels"]["tenant"]: alert for alert in alerts}
        assert _labels(FAILED, tenant="acme") == by_tenant["acme"]["labels"]
        assert _labels(FAILED) == by_tenant["default"]["labels"]
        assert (
            "acme · Batch task 212 (Export) failed" == by_tenant["acme"]["annotations"]["summary"]
        )
        assert "Batch task 212 (Export) failed" == by_tenant["default"]["annotations"]["summary"]
        assert status + "tasks/212?tenant=acme" == by_tenant["acme"]["generatorURL"]
        assert status + "tasks/212" == by_tenant["default"]["generatorURL"]

        succeeded = _task(state=BatchTaskState.SUCCEEDED, progress=100)
        await acme.send(_event(EventType.TASK_SUCCEEDED, succeeded, time=datetime.now(UTC)))

        assert [] == await alertmanager.alerts(session, 'tenant="acme"')
        assert 1 == len(await alertmanager.alerts(session, 'tenant="default"'))

    async def test_restored_alerts_keep_the_tenant(
        self, fake_am: ScriptedServer, session: aiohttp.ClientSession, clock: ManualClock
    ) -> None:
        """After a restart a tenant's alerts are re-posted, and resolved, with its label."""
        sink = AlertmanagerSink(
            "am", _base(fake_am), session, resend_every=60, clock=clock, tenant="acme"
        )
        sink.restore([_event(EventType.TASK_FAILED, _task(state=BatchTaskState.FAILED))])

        async with _running(sink):
            await _until(lambda: len(fake_am.seen) >= 1)
        await sink.send(_event(EventType.TASK_SUCCEEDED, _task(state=BatchTaskState.SUCCEEDED)))

        [restored], resolutions = _posted(fake_am)
        assert _labels(FAILED, tenant="acme") == restored["labels"]
        assert [_labels(name, tenant="acme") for name in (FAILED, STALLED, GONE)] == [
            alert["labels"] for alert in resolutions
        ]
