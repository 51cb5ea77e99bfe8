"""Stopping a task and silencing one, end to end: the real CLI process, the simulator and loopback
receivers.

A stop of a CanCancel task reaches the simulator as a StopBatchJob request that SuperOffice's
OpenAPI description accepts, and ends with the task failed, announced to a webhook; a
CannotCancel task is refused before any request.  A silence keeps a failing task out of a chat
channel (the log still has it), and when the silence ends the task, still failed, is announced
there.  ``[poll]`` is the default throughout: a stop is seen at the next 5 s poll.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.simulator import Simulator
from monitor.simulator.stopping import RecordedRequest
from monitor.superoffice.models import BatchTaskState, CancellationBehaviour
from tests import openapi
from tests.e2e.conftest import (
    WEBHOOK_SECRET,
    Batchmon,
    Peers,
    Receiver,
    base_config,
    http,
    wait_until,
)

TOKEN = "e2e-api-token-0123456789abcdef"
HOOK_PATH = "/batchmon/events"
SLACK_PATH = "/services/T0000/B0000/chat"
#: Generous bounds for a busy 2-core machine; nothing here is a timing assertion.
STEP = 30.0


def post(url: str, body: object) -> Any:
    return http(
        url,
        method="POST",
        body=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )


def delivered(receiver: Receiver) -> list[tuple[str, int | None]]:
    """(type, task id) of each CloudEvent the webhook took."""
    found = []
    for hit in receiver.taken(HOOK_PATH):
        data = hit.json()
        task = data["data"].get("task") or {}
        found.append((data["data"]["type"], task.get("id")))
    return found


def running(peers: Peers, simulator: Simulator, name: str, behaviour: CancellationBehaviour) -> int:
    task = peers.call(
        simulator.add_task,
        name=name,
        state=BatchTaskState.STARTED,
        progress=30,
        start_count=1,
        last_started=datetime.now(UTC),
        cancellation=behaviour,
    )
    return int(task.id)


class TestStop:
    """``POST /api/v1/tasks/{id}/stop`` on the real daemon."""

    @pytest.mark.timeout(180)
    def test_stop_reaches_superoffice_and_the_task_fails(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """CanCancel: one spec-conforming StopBatchJob, then task.failed delivered.
        CannotCancel: 409, and no request."""
        simulator = peers.simulator(Simulator())
        receiver = peers.receiver(Receiver())
        can = running(peers, simulator, "Email campaign export", CancellationBehaviour.CAN_CANCEL)
        cannot = running(peers, simulator, "Freetext index", CancellationBehaviour.CANNOT_CANCEL)
        config = base_config(
            simulator.url,
            tmp_path / "state.db",
            watch={"ids": [can, cannot]},
            http={"api_token": TOKEN},
            sinks=[
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": receiver.url(HOOK_PATH),
                    "secret": WEBHOOK_SECRET,
                }
            ],
        )
        config["poll"] = {}
        batchmon = launch(config)
        base = batchmon.wait_started()
        wait_until(lambda: ("task.started", can) in delivered(receiver), STEP, "can started")

        refused = post(f"{base}/api/v1/tasks/{cannot}/stop", {"force": True})
        stopped = post(f"{base}/api/v1/tasks/{can}/stop", {"by": "ann"})

        assert 409 == refused.status
        assert "CannotCancel" in refused.json()["error"]
        assert (200, True) == (stopped.status, stopped.json()["stopped"])
        requests: list[RecordedRequest] = peers.call(lambda: list(simulator.stop_requests))
        (request,) = requests
        assert [] == openapi.request_problems(
            request.method, request.path, request.query, request.headers, request.body
        )
        assert {"Id": can} == json.loads(request.body)
        wait_until(lambda: ("task.failed", can) in delivered(receiver), STEP, "can failed")
        assert ("task.stop_requested", can) in delivered(receiver)
        assert ("task.failed", cannot) not in delivered(receiver)
        assert 1 == peers.call(lambda: len(simulator.stop_requests))


class TestSilence:
    """A silence keeps a failing task out of chat, in the log, and ends with an announcement."""

    @pytest.mark.timeout(180)
    def test_failure_during_a_silence_is_announced_when_it_ends(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """Failed while silenced: logged, not posted; the silence ends: posted once, saying so."""
        simulator = peers.simulator(Simulator())
        chat = peers.receiver(Receiver())
        task_id = running(peers, simulator, "Import contacts", CancellationBehaviour.CAN_CANCEL)
        config = base_config(
            simulator.url,
            tmp_path / "state.db",
            watch={"ids": [task_id]},
            http={"api_token": TOKEN},
            sinks=[
                {"name": "log", "type": "log"},
                {"name": "chat", "type": "slack", "url": chat.url(SLACK_PATH)},
            ],
        )
        config["poll"] = {}
        batchmon = launch(config)
        base = batchmon.wait_started()
        wait_until(
            lambda: any(b"task.started" in hit.body for hit in chat.taken(SLACK_PATH)),
            STEP,
            "the start posted to chat",
        )
        before = len(chat.taken(SLACK_PATH))

        made = post(
            f"{base}/api/v1/silences",
            {"for": "12s", "reason": "import rerun by hand", "ids": [task_id]},
        )
        assert 201 == made.status, made.body
        peers.call(
            simulator.set_task, task_id, state=BatchTaskState.FAILED, result="Failed: bad row 7"
        )
        batchmon.wait_for(
            lambda line: line.get("event") == "task.failed" and line.get("task_id") == task_id,
            STEP,
            "task.failed in the log",
        )
        tasks = http(f"{base}/api/v1/tasks").json()["tasks"]
        assert [made.json()["id"]] == [t["silenced"] for t in tasks]
        assert before == len(chat.taken(SLACK_PATH)), "nothing posted while silenced"

        posted = wait_until(
            lambda: chat.taken(SLACK_PATH)[before:], STEP, "the failure posted as the silence ends"
        )
        (announcement,) = posted
        text = announcement.body.decode()
        assert "failed" in text
        assert f"Silence {made.json()['id']} ended (import rerun by hand): still failed" in text
        batchmon.wait_for(
            lambda line: line.get("event") == "silence_ended", STEP, "silence_ended logged"
        )
        assert [] == http(f"{base}/api/v1/silences").json()["silences"]
