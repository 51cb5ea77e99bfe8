"""Maintenance end to end: batchmon as a process, the simulator, a fake Slack and Alertmanager.

A window computed around now (not a wait for Saturday) holds an API outage back from the
chat, marks it for Alertmanager and ends with one summary; a tenant switched to
OfflineMaintenance in the simulator does the same without any window configured.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.simulator import OnlineTenant, Simulator
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import (
    Batchmon,
    Peers,
    Receiver,
    base_config,
    http,
    require_tool,
    wait_until,
)

SLACK_PATH = "/services/T0000/B0000/chat"
AM_PATH = "/am"
#: The slowest step: the tenant-status API's answer is trusted for 30 s at least.
STEP = 90.0


def _chat(receiver: Receiver) -> list[tuple[str, str]]:
    """(event type, the whole payload as text) of each message the fake Slack took."""
    messages = []
    for hit in receiver.taken(SLACK_PATH):
        payload = hit.json()
        context = payload["blocks"][-1]["elements"][0]["text"]
        match = re.search(r"· ([a-z_.]+)", context)
        assert match is not None, context
        messages.append((match[1], json.dumps(payload, ensure_ascii=False)))
    return messages


def _alerts(receiver: Receiver) -> list[dict[str, Any]]:
    """Every alert posted to the fake Alertmanager."""
    return [alert for hit in receiver.taken(AM_PATH) for alert in hit.json()]


def _promtool_passes(metrics: str) -> None:
    promtool = require_tool("prometheus", "promtool")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, check=False
    )
    assert ("", 0) == (check.stdout + check.stderr, check.returncode)


def _logged(batchmon: Batchmon, event: str) -> bool:
    return bool(batchmon.events(event))


def _sinks(inbox: Receiver) -> list[dict[str, Any]]:
    return [
        {
            "name": "chat",
            "type": "slack",
            "url": inbox.url(SLACK_PATH),
            "rate": "20/s",
            # What would page someone; the course of a task is not the point here.
            "events": ["task.failed", "task.stalled", "task.resumed", "monitor.*"],
        },
        {"name": "am", "type": "alertmanager", "url": inbox.url(AM_PATH)},
        {"name": "log", "type": "log"},
    ]


def _watched_task(peers: Peers, simulator: Simulator) -> int:
    started = datetime.now(UTC) - timedelta(minutes=1)
    task = peers.call(
        simulator.add_task,
        name="Export",
        state=BatchTaskState.STARTED,
        progress=10,
        start_count=1,
        last_started=started,
    )
    return int(task.id)


def _window_around_now(at_least: float = 30) -> tuple[dict[str, str], datetime]:
    """A window that opened this minute and closes at a minute boundary ``at_least`` seconds
    to a minute more away, in UTC (minutes are the windows' resolution)."""
    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0)
    end = (now + timedelta(seconds=at_least + 59)).replace(second=0, microsecond=0)
    window = {
        "name": "Test window",
        "days": start.strftime("%a"),
        "start": start.strftime("%H:%M"),
        "end": end.strftime("%H:%M"),
        "time_zone": "UTC",
    }
    return window, end


@pytest.mark.timeout(300)
def test_outage_in_a_window(peers: Peers, launch: Any, tmp_path: Any) -> None:
    """An API outage inside a window: no chat message about it, Alertmanager gets it marked,
    the log and metrics have it; the window's end is one summary in the chat."""
    simulator = peers.simulator(Simulator())
    inbox = peers.receiver(Receiver())
    task_id = _watched_task(peers, simulator)
    window, end = _window_around_now()
    config = base_config(
        simulator.url,
        tmp_path / "state.db",
        watch={"ids": [task_id]},
        maintenance={"windows": [window]},
        sinks=_sinks(inbox),
    )
    batchmon: Batchmon = launch(config)
    url = batchmon.wait_started()
    wait_until(lambda: _logged(batchmon, "monitor.maintenance_started"), 30, "the start")
    metrics = http(url + "/metrics").body.decode()
    assert 'batchmon_maintenance{name="Test window",tenant="default"} 1.0' in metrics
    _promtool_passes(metrics)

    peers.call(simulator.fail_next, 10, 503)
    wait_until(lambda: _logged(batchmon, "monitor.api_down"), 30, "api_down in the log")
    wait_until(lambda: _logged(batchmon, "monitor.api_recovered"), 30, "the API back")
    assert datetime.now(UTC) < end, "the outage outlasted the window: the test is too slow"
    wait_until(lambda: _logged(batchmon, "monitor.maintenance_ended"), STEP, "the end")
    wait_until(lambda: len(_chat(inbox)) >= 2, 30, "the summary in the chat")
    metrics = http(url + "/metrics").body.decode()
    assert 0 == batchmon.stop()

    assert 'batchmon_maintenance{name="Test window",tenant="default"} 0.0' in metrics
    chat = _chat(inbox)
    assert ["monitor.maintenance_started", "monitor.maintenance_ended"] == [t for t, _ in chat]
    assert "The API was down." in chat[1][1]
    [down, *_] = [a for a in _alerts(inbox) if a["labels"]["alertname"] == "BatchmonApiDown"]
    assert "true" == down["labels"]["maintenance"]


@pytest.mark.timeout(300)
def test_a_restart_inside_a_window(peers: Peers, launch: Any, tmp_path: Any) -> None:
    """An outage in a window, then a restart (SIGTERM) before its end: no second start, and
    the one summary at the end tells of the outage before the restart."""
    simulator = peers.simulator(Simulator())
    inbox = peers.receiver(Receiver())
    task_id = _watched_task(peers, simulator)
    window, end = _window_around_now(at_least=60)
    config = base_config(
        simulator.url,
        tmp_path / "state.db",
        watch={"ids": [task_id]},
        maintenance={"windows": [window]},
        sinks=_sinks(inbox),
    )
    batchmon: Batchmon = launch(config)
    batchmon.wait_started()
    wait_until(lambda: _logged(batchmon, "monitor.maintenance_started"), 30, "the start")
    peers.call(simulator.fail_next, 10, 503)
    wait_until(lambda: _logged(batchmon, "monitor.api_down"), 30, "api_down in the log")
    wait_until(lambda: _logged(batchmon, "monitor.api_recovered"), 30, "the API back")
    wait_until(lambda: len(_chat(inbox)) >= 1, 30, "the start in the chat")
    assert 0 == batchmon.stop()
    assert datetime.now(UTC) < end, "the restart came after the window: the test is too slow"

    batchmon.start()
    batchmon.wait_started()
    assert _logged(batchmon, "maintenance_restored")
    wait_until(lambda: _logged(batchmon, "monitor.maintenance_ended"), STEP, "the end")
    wait_until(lambda: len(_chat(inbox)) >= 2, 30, "the summary in the chat")
    assert 0 == batchmon.stop()

    assert not batchmon.events("monitor.maintenance_started")  # not in the second run
    chat = _chat(inbox)
    assert ["monitor.maintenance_started", "monitor.maintenance_ended"] == [t for t, _ in chat]
    assert "The API was down." in chat[1][1]


@pytest.mark.timeout(300)
def test_tenant_offline_maintenance(peers: Peers, launch: Any, tmp_path: Any) -> None:
    """The simulator's tenant goes to OfflineMaintenance and back: a maintenance without any
    window configured, no api_down in the chat or Alertmanager, a summary at the end."""
    simulator = peers.simulator(Simulator(tenant=OnlineTenant(valid_for=1)))
    inbox = peers.receiver(Receiver())
    task_id = _watched_task(peers, simulator)
    config = base_config(
        "unused",
        tmp_path / "state.db",
        watch={"ids": [task_id]},
        sinks=_sinks(inbox),
    )
    del config["superoffice"]["url"]
    config["superoffice"] |= {"environment_url": simulator.environment_url, "tenant": "Cust12345"}
    batchmon: Batchmon = launch(config)
    url = batchmon.wait_started()
    wait_until(lambda: _logged(batchmon, "tenant_state"), 30, "the tenant state")
    metrics = http(url + "/metrics").body.decode()
    assert 'batchmon_tenant_state{state="Running",tenant="default"} 1.0' in metrics
    assert 'batchmon_maintenance{name="SuperOffice tenant state",tenant="default"} 0.0' in metrics
    _promtool_passes(metrics)

    status = http(
        simulator.environment_url + "/simulator/tenant",
        method="PUT",
        body=b'{"state": "OfflineMaintenance"}',
    )
    assert 200 == status.status
    wait_until(lambda: _logged(batchmon, "monitor.maintenance_started"), STEP, "the start")
    wait_until(lambda: _logged(batchmon, "monitor.api_down"), STEP, "api_down in the log")
    page = http(url + "/").body.decode()
    assert "Maintenance: SuperOffice tenant state OfflineMaintenance" in page

    http(
        simulator.environment_url + "/simulator/tenant",
        method="PUT",
        body=b'{"state": "Running"}',
    )
    wait_until(lambda: _logged(batchmon, "monitor.maintenance_ended"), STEP, "the end")
    wait_until(lambda: len(_chat(inbox)) >= 2, 30, "the summary in the chat")
    assert 0 == batchmon.stop()

    chat = _chat(inbox)
    assert ["monitor.maintenance_started", "monitor.maintenance_ended"] == [t for t, _ in chat]
    assert "The API was down." in chat[1][1]
    # Alertmanager only hears the outage resolved (when the API answers again), never firing:
    # a firing alert is posted to end minutes later, a resolution ends when it starts.
    fired = [
        alert
        for alert in _alerts(inbox)
        if alert["labels"]["alertname"] == "BatchmonApiDown"
        and datetime.fromisoformat(alert["endsAt"]) - datetime.fromisoformat(alert["startsAt"])
        > timedelta(seconds=1)
    ]
    assert [] == fired
