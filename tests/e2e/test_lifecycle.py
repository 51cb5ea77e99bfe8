"""Short tasks and ending conditions, as a user runs batchmon: the real process, real peers.

``TestShortTasks``: batchmon with the default ``[poll]`` settings (no ``[poll]`` section at
all) and one discovery rule watches a simulator in which tasks keep coming and each goes
New → Started → Failed within 10 s (New 1-2 s, Started 3-8 s).  Every failure must reach a
signed webhook, and ``task.started`` every task that stayed Started for at least one
``interval`` (5 s by default).  Before the lifecycle work (373333d), a discovered task was
polled at ``idle_interval`` (60 s) until it ran, and a task first seen finished was only
``task.discovered``: there, with the rule that lists Failed too, 6 of the 30 failures were
never announced, and with the 2 s rule none of the 17 long starts was.

``TestAlertmanager``: a real Alertmanager, tasks watched by id.  A failed task that runs
again and succeeds, and a failed task that SuperOffice then deletes, leave no active alert
(and no ``BatchTaskGone``); a task deleted while it runs leaves ``BatchTaskGone`` active.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from monitor.simulator import Scenario, Simulator
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import (
    AM_ONE_HOOK,
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

HOOK_PATH = "/batchmon/events"
AM_HOOK_PATH = "/alertmanager"
TYPE_PREFIX = "com.superoffice.batchmon."
#: The default ``[poll] interval``: a task Started this long must be seen Started.
INTERVAL = 5.0
#: New for 1-2 s, Started for 3-8 s: every task has failed within 10 s of its creation.
QUEUED = (1.0, 2.0)
RUNNING = (3.0, 8.0)
#: Generous bound, for a busy 2-core machine, on how long after the last task ended its
#: failure may take to arrive (two intervals would do on an idle one).
SETTLE = 45.0
#: Generous bound for one step of the Alertmanager story (a few seconds on an idle machine).
STEP = 30.0


def delivered(receiver: Receiver) -> list[dict[str, Any]]:
    """The CloudEvents the webhook took, each checked against its signature."""
    verifier = Webhook(WEBHOOK_SECRET)
    return [
        verifier.verify(hit.body, dict(hit.headers))
        for hit in list(receiver.hits)
        if hit.path == HOOK_PATH and hit.status < 300
    ]


def by_type(events: list[dict[str, Any]], kind: str) -> Counter[int]:
    """How many events of one type each task got."""
    return Counter(int(e["subject"]) for e in events if e["type"] == TYPE_PREFIX + kind)


def default_poll(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration without a ``[poll]`` section: every poll setting at its default."""
    config.pop("poll")
    return config


class TestShortTasks:
    """Tasks that live seconds are announced, with the default poll settings."""

    @pytest.mark.timeout(240)
    @pytest.mark.parametrize(
        "rule",
        [
            # The user config: discovery every 5 s.  A task can run and fail between
            # two such list calls (4 s from New to Failed at the shortest), so the rule also
            # lists Failed, as the example configuration advises: such a failure is then
            # announced when first seen (first_seen), the others as they happen.
            pytest.param(
                {"states": ["New", "Aquired", "Started", "Failed"], "every": "5s"},
                id="every-5s-with-failed",
            ),
            # Only the active states (the rule's default), listed more often than the
            # shortest task lives, so that every task is found running: each failure is
            # then seen by polling, not by a list of failures.
            pytest.param({"every": "2s"}, id="every-2s-active-states"),
        ],
    )
    def test_every_failure_and_every_long_enough_start_is_announced(
        self,
        peers: Peers,
        launch: Callable[..., Batchmon],
        tmp_path: Path,
        rule: Mapping[str, object],
    ) -> None:
        """``task.failed`` for every task, once; ``task.started`` for each Started ≥ 5 s."""
        simulator = peers.simulator(Simulator())
        receiver = peers.receiver(Receiver())
        config = default_poll(
            base_config(
                simulator.url,
                tmp_path / "state.db",
                watch={"discover": [rule]},
                sinks=[
                    {
                        "name": "hook",
                        "type": "webhook",
                        "url": receiver.url(HOOK_PATH),
                        "secret": WEBHOOK_SECRET,
                        "events": ["task.*"],
                    }
                ],
            )
        )
        batchmon = launch(config)
        batchmon.wait_started()
        scenario = Scenario.churn(
            start=datetime.now(UTC),
            every=2.0,
            batch=3,
            until=18.0,
            queued=QUEUED,
            running=RUNNING,
            fail_ratio=1.0,
            seed=13,
        )
        peers.call(setattr, simulator, "scenario", scenario)
        ids = set(scenario.task_ids)
        timelines = {task_id: scenario.timeline(task_id) for task_id in ids}
        started_long = {
            task_id
            for task_id, ((_, _), (started, _), (ended, _)) in timelines.items()
            if ended - started >= INTERVAL
        }
        last_end = max(ended for (_, _), (_, _), (ended, _) in timelines.values())

        # Until every failure arrived, or long enough after the last one that it never will;
        # the assertions then say which tasks were missed.
        deadline = time.monotonic() + last_end + SETTLE
        while not ids <= set(by_type(delivered(receiver), "task.failed")):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        events = delivered(receiver)
        failed = by_type(events, "task.failed")
        started = by_type(events, "task.started")
        late = {
            int(e["subject"])
            for e in events
            if e["type"] == TYPE_PREFIX + "task.failed" and e["data"].get("first_seen")
        }
        # Shown with -s, and with a failure: how the failures were seen.
        print(
            f"\n{len(ids)} tasks, {len(started_long)} Started >= {INTERVAL:g} s; "
            f"{len(late)} failures first seen finished, {len(started)} task.started"
        )

        assert 30 == len(ids)
        assert {task_id: 1 for task_id in ids} == dict(failed)
        assert started_long
        assert set() == started_long - set(started)
        assert all(count == 1 for count in started.values())


def active_alerts(alertmanager: Alertmanager) -> set[tuple[str, int]]:
    """(alertname, task id) of batchmon's alerts that Alertmanager has active now."""
    answer = http(f"{alertmanager.url}/api/v2/alerts?active=true").json()
    return {
        (alert["labels"]["alertname"], int(alert["labels"]["task_id"]))
        for alert in answer
        if alert["labels"].get("source") == "batchmon" and "task_id" in alert["labels"]
    }


def notified(receiver: Receiver, status: str) -> dict[tuple[str, int], dict[str, str]]:
    """The annotations Alertmanager last notified for each (alertname, task id) in ``status``."""
    seen = {}
    for hit in receiver.taken(AM_HOOK_PATH):
        for alert in hit.json()["alerts"]:
            if alert["status"] == status and "task_id" in alert["labels"]:
                key = (alert["labels"]["alertname"], int(alert["labels"]["task_id"]))
                seen[key] = alert["annotations"]
    return seen


class TestAlertmanager:
    """Every alert batchmon raised for a task ends, except for a task that vanished running."""

    @pytest.mark.timeout(300)
    def test_rerun_and_removal_end_the_failure_and_vanishing_fires_gone(
        self,
        peers: Peers,
        launch: Callable[..., Batchmon],
        tmp_path: Path,
        alertmanager_binary: str,
        peer_processes: list[Peer],
    ) -> None:
        """Failed then re-run and succeeded, or failed then deleted: no alert left; deleted
        while Started: ``BatchTaskGone`` active."""
        simulator = peers.simulator(Simulator())
        receiver = peers.receiver(Receiver())
        alertmanager = Alertmanager(
            alertmanager_binary,
            tmp_path / "alertmanager",
            AM_ONE_HOOK.format(url=receiver.url(AM_HOOK_PATH)),
        )
        peer_processes.append(alertmanager)
        rerun, removed, vanished = (
            peers.call(
                simulator.add_task,
                name=name,
                state=BatchTaskState.STARTED,
                progress=10,
                start_count=1,
                last_started=datetime.now(UTC),
            ).id
            for name in ("Import contacts from CSV", "Email export", "Bulk update: sale stage")
        )
        config = base_config(
            simulator.url,
            tmp_path / "state.db",
            watch={"ids": [rerun, removed, vanished]},
            sinks=[
                {"name": "am", "type": "alertmanager", "url": alertmanager.url},
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": receiver.url(HOOK_PATH),
                    "secret": WEBHOOK_SECRET,
                },
            ],
        )
        # The default poll settings, except finished_interval: a failed task is fetched again
        # every 10 minutes by default, to see it run again or be deleted; 2 s lets the test see
        # both without waiting 10 minutes.
        config["poll"] = {"finished_interval": "2s"}
        batchmon = launch(config)
        batchmon.wait_started()

        def arrived(kind: str, task_id: int) -> None:
            wait_until(
                lambda: by_type(delivered(receiver), kind)[task_id] > 0,
                STEP,
                f"{kind} of task {task_id} delivered",
                every=0.2,
            )

        for task_id in (rerun, removed, vanished):
            arrived("task.started", task_id)
        for task_id in (rerun, removed):
            peers.call(
                simulator.set_task, task_id, state=BatchTaskState.FAILED, result="Failed: locked"
            )
        failing = {("BatchTaskFailed", rerun), ("BatchTaskFailed", removed)}
        wait_until(
            lambda: active_alerts(alertmanager) == failing, STEP, "both failures active", every=0.2
        )
        peers.call(
            simulator.set_task,
            rerun,
            state=BatchTaskState.STARTED,
            progress=0,
            start_count=2,
            last_started=datetime.now(UTC),
            result="",
        )
        arrived("task.restarted", rerun)
        peers.call(simulator.set_task, rerun, state=BatchTaskState.SUCCEEDED, progress=100)
        arrived("task.succeeded", rerun)
        peers.call(simulator.delete_task, removed)
        arrived("task.removed", removed)
        peers.call(simulator.delete_task, vanished)
        arrived("task.gone", vanished)
        wait_until(
            lambda: active_alerts(alertmanager) == {("BatchTaskGone", vanished)},
            STEP,
            "only the vanished task's alert active",
            every=0.2,
        )
        wait_until(
            lambda: set(notified(receiver, "resolved")) >= failing,
            STEP,
            "both failures notified resolved",
            every=0.2,
        )
        events = delivered(receiver)
        resolved = notified(receiver, "resolved")

        assert {vanished: 1} == dict(by_type(events, "task.gone"))
        assert {("BatchTaskGone", vanished)} == {
            key for key in notified(receiver, "firing") if key[0] == "BatchTaskGone"
        }
        assert {("BatchTaskFailed", rerun), ("BatchTaskFailed", removed)} == set(resolved)
        assert resolved[("BatchTaskFailed", rerun)]["ended"] in {"restarted", "succeeded"}
        assert "removed" == resolved[("BatchTaskFailed", removed)]["ended"]
        assert {("BatchTaskGone", vanished)} == active_alerts(alertmanager)
