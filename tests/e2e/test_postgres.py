"""A real ``batchmon run`` on PostgreSQL (``[state] url``): a kill and a restart re-announce
nothing and miss nothing, and the URL's password shows nowhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import Batchmon, Peers, Receiver, base_config, wait_until

HOOK = "/hook"


def test_kill_and_restart_announce_each_event_once(
    peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path, pg_url: str
) -> None:
    """kill -9, a failure while down, a restart: the receiver gets each event once, in order."""
    simulator = peers.simulator(Simulator())
    receiver = peers.receiver(Receiver())
    task = peers.call(simulator.add_task, name="Export", state=BatchTaskState.STARTED, progress=10)
    config = base_config(
        simulator.url,
        tmp_path / "unused.db",
        watch={"ids": [task.id]},
        sinks=[{"name": "hook", "type": "webhook", "url": receiver.url(HOOK)}],
    )
    config["state"] = {"url_env": "BATCHMON_TEST_STATE_URL"}

    def kinds() -> list[str]:
        return [hit.json()["type"].rpartition(".task.")[2] for hit in receiver.taken(HOOK)]

    batchmon = launch(config, env={"BATCHMON_TEST_STATE_URL": pg_url})
    batchmon.wait_started()
    wait_until(lambda: len(kinds()) >= 2, 15, "task.discovered and task.started delivered")
    batchmon.kill()
    peers.call(simulator.set_task, task.id, state=BatchTaskState.FAILED)
    batchmon.start()
    batchmon.wait_started()
    # One task's events arrive in order: anything announced again would come before this.
    # The new process is a new replica: it takes the tenant once the killed one's lease runs
    # out (lease_ttl, 15 s), then polls at once.
    wait_until(lambda: "failed" in kinds(), 30, "task.failed delivered after the restart")
    assert 0 == batchmon.stop()

    ids = [hit.headers["webhook-id"] for hit in receiver.taken(HOOK)]
    assert ["discovered", "started", "failed"] == kinds()
    assert len(set(ids)) == len(ids)
    password = urlsplit(pg_url).password
    assert password
    for run in range(2):
        assert password not in batchmon.stdout(run) + batchmon.stderr(run)
    (started,) = batchmon.events("batchmon_started")
    assert started["state"] == pg_url.replace(f":{password}@", "@")
