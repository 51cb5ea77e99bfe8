"""People in the loop, as a user runs batchmon: the real process, a real Alertmanager.

``TestAcknowledge``: a failed task is reminded of every 2 s and fires ``BatchTaskFailed`` in
Alertmanager; ``batchmon ack`` (the real command) takes it: the alert resolves, annotated
with who took it, and no reminder of it follows, while a second failed task, nobody's, goes
on being reminded of (what the test waits for instead of sleeping).

``TestEscalation``: two tasks fail; one is acknowledged over the HTTP API at once.  A sink
with ``after`` hears only of the other, and of its end; a sink without hears everything.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import (
    AM_ONE_HOOK,
    BATCHMON,
    WEBHOOK_SECRET,
    Alertmanager,
    Batchmon,
    Peer,
    Peers,
    Receiver,
    base_config,
    http,
    wait_until,
)
from tests.e2e.test_lifecycle import (
    AM_HOOK_PATH,
    HOOK_PATH,
    STEP,
    TYPE_PREFIX,
    active_alerts,
    default_poll,
    notified,
)

TOKEN = "e2e-api-token-0123456789"
BOSS_PATH = "/boss/events"


def _hook(name: str, receiver: Receiver, path: str, **more: object) -> dict[str, object]:
    return {
        "name": name,
        "type": "webhook",
        "url": receiver.url(path),
        "secret": WEBHOOK_SECRET,
        **more,
    }


def _events(receiver: Receiver, path: str = HOOK_PATH) -> list[dict[str, Any]]:
    """(CloudEvents verified) under ``path``, with the type without its prefix."""
    verifier = Webhook(WEBHOOK_SECRET)
    found = []
    for hit in list(receiver.hits):
        if hit.path == path and hit.status < 300:
            event = verifier.verify(hit.body, dict(hit.headers))
            found.append({**event, "type": event["type"].removeprefix(TYPE_PREFIX)})
    return found


def _reminders(receiver: Receiver, task_id: int) -> list[dict[str, Any]]:
    return [
        e
        for e in _events(receiver)
        if int(e.get("subject", 0)) == task_id
        and (e["data"].get("message") or "").startswith("Reminder")
    ]


def _started(peers: Peers, simulator: Simulator, name: str) -> int:
    task = peers.call(
        simulator.add_task,
        name=name,
        state=BatchTaskState.STARTED,
        progress=10,
        start_count=1,
        last_started=datetime.now(UTC),
    )
    return int(task.id)


class TestAcknowledge:
    """An acknowledgement ends the alert and the reminders of what it took, nothing else."""

    @pytest.mark.timeout(300)
    def test_ack_resolves_the_alert_and_stops_the_reminders(
        self,
        peers: Peers,
        launch: Callable[..., Batchmon],
        tmp_path: Path,
        alertmanager_binary: str,
        peer_processes: list[Peer],
    ) -> None:
        """Reminded of, firing; acknowledged with ``batchmon ack``: resolved, never reminded of
        again, while the other failed task is reminded of twice more; after a restart, still
        acknowledged and not firing."""
        simulator = peers.simulator(Simulator())
        receiver = peers.receiver(Receiver())
        alertmanager = Alertmanager(
            alertmanager_binary,
            tmp_path / "alertmanager",
            AM_ONE_HOOK.format(url=receiver.url(AM_HOOK_PATH)),
        )
        peer_processes.append(alertmanager)
        taken, other = (_started(peers, simulator, n) for n in ("Invoice export", "CSV import"))
        token_file = tmp_path / "api_token"
        token_file.write_text(TOKEN + "\n")
        config = default_poll(
            base_config(
                simulator.url,
                tmp_path / "state.db",
                watch={"ids": [taken, other]},
                http={"api_token": TOKEN},
                sinks=[
                    {"name": "am", "type": "alertmanager", "url": alertmanager.url},
                    _hook("hook", receiver, HOOK_PATH, remind_every="2s"),
                ],
            )
        )
        batchmon = launch(config)
        url = batchmon.wait_started()
        for task_id in (taken, other):
            peers.call(simulator.set_task, task_id, state=BatchTaskState.FAILED, result="locked")
        firing = {("BatchTaskFailed", taken), ("BatchTaskFailed", other)}
        wait_until(
            lambda: active_alerts(alertmanager) == firing, STEP, "both alerts firing", every=0.2
        )
        wait_until(lambda: _reminders(receiver, taken), STEP, "a reminder of the task", every=0.2)

        done = subprocess.run(
            [
                *BATCHMON,
                *("ack", str(taken), "--by", "alice"),
                *("--comment", "rerunning after the lock is gone"),
                *("--url", url, "--token-file", str(token_file)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (0, f"task {taken}: acknowledged by alice\n") == (done.returncode, done.stdout)

        def acknowledged() -> list[dict[str, Any]]:
            return [e for e in _events(receiver) if e["type"] == "task.acknowledged"]

        wait_until(acknowledged, STEP, "task.acknowledged delivered", every=0.2)
        reminded_before = len(_reminders(receiver, taken))
        others_before = len(_reminders(receiver, other))
        wait_until(
            lambda: active_alerts(alertmanager) == {("BatchTaskFailed", other)},
            STEP,
            "the acknowledged task's alert resolved",
            every=0.2,
        )
        wait_until(
            lambda: ("BatchTaskFailed", taken) in notified(receiver, "resolved"),
            STEP,
            "the resolution notified",
            every=0.2,
        )
        # Two reminders of the other task after the acknowledgement: 4 s and more in which
        # the acknowledged one would have been reminded of twice.
        wait_until(
            lambda: len(_reminders(receiver, other)) >= others_before + 2,
            STEP,
            "two more reminders of the other task",
            every=0.2,
        )
        page = http(f"{url}/api/v1/tasks").json()

        # A restart keeps the acknowledgement: the alerts it re-posts at once (the other task's,
        # seen updated in Alertmanager) do not include the acknowledged task's.
        assert 0 == batchmon.stop()

        def updated() -> str:
            (alert,) = alertmanager.alerts(f'task_id="{other}"')
            return str(alert["updatedAt"])

        before_restart = updated()
        batchmon.start()
        url = batchmon.wait_started()
        wait_until(lambda: updated() != before_restart, STEP, "the alerts re-posted", every=0.2)
        restarted_page = http(f"{url}/api/v1/tasks").json()
        restarted_alerts = active_alerts(alertmanager)

        annotations = notified(receiver, "resolved")[("BatchTaskFailed", taken)]
        assert "acknowledged" == annotations["ended"]
        assert (
            "Acknowledged by alice: rerunning after the lock is gone"
            in (annotations["description"])
        )
        (ack_event,) = acknowledged()
        assert int(ack_event["subject"]) == taken
        assert reminded_before == len(_reminders(receiver, taken))
        for listing in (page, restarted_page):
            assert {taken: "alice", other: None} == {
                t["id"]: (t["ack"] or {}).get("by") for t in listing["tasks"]
            }
        assert {("BatchTaskFailed", other)} == restarted_alerts


class TestEscalation:
    """A sink with ``after`` hears only of what nobody took in time."""

    @pytest.mark.timeout(300)
    def test_only_the_unacknowledged_task_escalates(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """Both failures reach ``ops`` at once; ``boss`` (after = 15s) gets the one left
        unacknowledged, then its success, and nothing of the other."""
        simulator = peers.simulator(Simulator())
        receiver = peers.receiver(Receiver())
        taken, left = (_started(peers, simulator, n) for n in ("Invoice export", "CSV import"))
        config = default_poll(
            base_config(
                simulator.url,
                tmp_path / "state.db",
                watch={"ids": [taken, left]},
                http={"api_token": TOKEN},
                sinks=[
                    _hook("ops", receiver, HOOK_PATH),
                    _hook("boss", receiver, BOSS_PATH, after="15s"),
                ],
            )
        )
        # The default poll settings, except finished_interval: a failed task is fetched again
        # every 10 minutes by default (to see it run again or be deleted); 2 s lets the test
        # see the success that ends the escalated failure without waiting 10 minutes.
        config["poll"] = {"finished_interval": "2s"}
        batchmon = launch(config)
        url = batchmon.wait_started()
        for task_id in (taken, left):
            peers.call(simulator.set_task, task_id, state=BatchTaskState.FAILED, result="locked")

        def failed(path: str) -> set[int]:
            return {
                int(e["subject"]) for e in _events(receiver, path) if e["type"] == "task.failed"
            }

        wait_until(lambda: failed(HOOK_PATH) == {taken, left}, STEP, "both failures", every=0.2)
        answer = http(
            f"{url}/api/v1/tasks/{taken}/ack",
            method="POST",
            body=json.dumps({"by": "alice"}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        assert 201 == answer.status, answer.body
        wait_until(lambda: failed(BOSS_PATH), 60.0, "an escalation", every=0.2)
        for task_id in (taken, left):
            peers.call(simulator.set_task, task_id, state=BatchTaskState.SUCCEEDED, progress=100)

        def succeeded(path: str) -> set[int]:
            return {
                int(e["subject"]) for e in _events(receiver, path) if e["type"] == "task.succeeded"
            }

        wait_until(lambda: succeeded(HOOK_PATH) == {taken, left}, STEP, "both succeeded", every=0.2)
        wait_until(lambda: succeeded(BOSS_PATH), STEP, "the escalated one's end", every=0.2)
        wait_until(
            lambda: (
                'batchmon_outbox_events{sink="boss",tenant="default"} 0.0'
                in http(f"{url}/metrics").body.decode()
            ),
            STEP,
            "nothing left for boss",
            every=0.2,
        )

        boss = [(int(e["subject"]), e["type"]) for e in _events(receiver, BOSS_PATH)]
        assert [(left, "task.failed"), (left, "task.succeeded")] == boss
        (escalation,) = [e for e in _events(receiver, BOSS_PATH) if e["type"] == "task.failed"]
        assert "Escalated: nobody acknowledged it for 15s" == escalation["data"]["message"]
        ops = {(int(e["subject"]), e["type"]) for e in _events(receiver, HOOK_PATH)}
        assert (taken, "task.acknowledged") in ops
