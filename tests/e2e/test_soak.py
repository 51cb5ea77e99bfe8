"""Soak: thousands of tasks churning for minutes, a flaky sink, and a daemon that stays flat.

Every task of the simulator lives in cycles: New, Aquired, Started with a few progress
steps, Succeeded (or, one run in thirty, Failed), a rest, then it runs again (StartCount
grows).  batchmon finds them by discovery alone and polls them by list calls; its webhook
sink gets every ``task.failed`` and posts it to a receiver that answers 503 to 30 % of
the requests.  Every ``SAMPLE_EVERY`` seconds the test reads the daemon's resident memory
(``VmRSS``) and open file descriptors (``/proc/<pid>/fd``) and checks /healthz.

After the churn stops (runs in progress end, no new ones start):

* no task is stuck: within ``SETTLE`` seconds every task shows in /api/v1/tasks the
  terminal state it ended in, in the simulator;
* the outbox drains: ``batchmon_outbox_events`` is 0 for every sink within ``DRAIN`` s;
* resident memory and descriptors are flat after warm-up: the least-squares slopes of the
  samples taken after the warm-up, while the churn goes on, stay under the bounds below.

The full soak (3 minutes, 2,000 tasks, bounds 1 MiB/min and 1 fd/min) is marked ``soak``
and runs only with ``BATCHMON_SOAK=1``; the short variant (30 s, 500 tasks) runs by
default so CI exercises the code path, with bounds loose enough for 20 s of samples.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import (
    Batchmon,
    Peers,
    Receiver,
    base_config,
    http,
    open_fds,
    rss_kib,
    slope,
    wait_until,
)

SETTLE = 60.0
DRAIN = 120.0
FAILED_RUNS = 1 / 30


@dataclass(frozen=True)
class Soak:
    """One soak's size, length and bounds."""

    tasks: int
    seconds: float
    warm_up: float
    #: Phase lengths are multiplied by this (shorter lives for the short variant).
    pace: float
    poll: float
    discover_every: float
    sample_every: float
    rss_mib_per_minute: float
    fds_per_minute: float


SHORT = Soak(
    tasks=500,
    seconds=30,
    warm_up=10,
    pace=0.5,
    poll=1.0,
    discover_every=1.0,
    sample_every=2.0,
    rss_mib_per_minute=30.0,
    fds_per_minute=30.0,
)
FULL = Soak(
    tasks=2000,
    seconds=180,
    warm_up=60,
    pace=1.0,
    poll=2.0,
    discover_every=2.0,
    sample_every=5.0,
    rss_mib_per_minute=1.0,
    fds_per_minute=1.0,
)


@dataclass
class Life:
    """Where one task is in its cycle."""

    task_id: int
    phase: str = "new"
    next_at: float = 0.0
    steps_left: int = 0
    progress: int = 0
    runs: int = 0


@dataclass
class Churn:
    """The simulated tenant's activity, run on the peers' loop."""

    simulator: Simulator
    soak: Soak
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    lives: list[Life] = field(default_factory=list)
    stopping: bool = False
    finished: bool = False
    failed_runs: int = 0

    def wait(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high) * self.soak.pace

    def start_run(self, life: Life, now: float) -> None:
        life.runs += 1
        life.phase, life.progress = "started", 0
        life.steps_left = self.rng.randint(2, 4)
        life.next_at = now + self.wait(3, 6)
        self.simulator.set_task(
            life.task_id,
            state=BatchTaskState.STARTED,
            progress=0,
            start_count=life.runs,
            last_started=datetime.now(UTC),
            result="",
        )

    def step(self, life: Life, now: float) -> None:
        if life.phase == "new":
            life.phase, life.next_at = "aquired", now + self.wait(1, 3)
            self.simulator.set_task(life.task_id, state=BatchTaskState.AQUIRED)
        elif life.phase == "aquired":
            self.start_run(life, now)
        elif life.phase == "started" and life.steps_left:
            life.steps_left -= 1
            life.progress = min(99, life.progress + self.rng.randint(15, 35))
            life.next_at = now + self.wait(3, 6)
            self.simulator.set_task(life.task_id, progress=life.progress)
        elif life.phase == "started":
            failed = self.rng.random() < FAILED_RUNS
            self.failed_runs += failed
            life.phase, life.next_at = "done", now + self.wait(5, 20)
            self.simulator.set_task(
                life.task_id,
                state=BatchTaskState.FAILED if failed else BatchTaskState.SUCCEEDED,
                progress=life.progress if failed else 100,
                result="Failed: disk full" if failed else "Completed",
            )
        elif not self.stopping:
            self.start_run(life, now)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for life in self.lives:
            life.next_at = start + self.wait(0, 6)
        while True:
            now = loop.time()
            self.stopping = now - start >= self.soak.seconds
            for life in self.lives:
                if now >= life.next_at and not (life.phase == "done" and self.stopping):
                    self.step(life, now)
            if self.stopping and all(life.phase == "done" for life in self.lives):
                self.finished = True
                return
            await asyncio.sleep(0.25)


def outbox(url: str) -> dict[str, float]:
    """``batchmon_outbox_events`` by sink."""
    text = http(url + "/metrics").body.decode()
    return {
        sample.labels["sink"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "batchmon_outbox_events"
    }


class TestSoak:
    """Thousands of tasks churn for minutes, and batchmon stays flat."""

    @pytest.mark.parametrize(
        "soak",
        [
            pytest.param(SHORT, id="short", marks=pytest.mark.timeout(300)),
            pytest.param(FULL, id="full", marks=[pytest.mark.soak, pytest.mark.timeout(900)]),
        ],
    )
    def test_flat_and_drained(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path, soak: Soak
    ) -> None:
        """Memory and descriptors flat, no task stuck, the outbox drained."""
        simulator = peers.simulator(Simulator())
        churn = Churn(simulator, soak)
        for task_id in range(1, soak.tasks + 1):
            peers.call(simulator.add_task, id=task_id, name=f"Soak task {task_id}")
            churn.lives.append(Life(task_id))
        flaky = peers.receiver(Receiver(fail_ratio=0.3, seed=3))
        config = base_config(
            simulator.url,
            tmp_path / "state.db",
            superoffice={"max_requests_per_second": 1000, "max_concurrency": 8, "timeout": "10s"},
            watch={
                "discover": [
                    {"states": ["New", "Aquired", "Started"], "every": soak.discover_every}
                ]
            },
            poll={
                "interval": soak.poll,
                "idle_interval": soak.poll,
                "progress_step": 25,
                "progress_min_interval": 0,
                "stall_after": "10m",
            },
            sinks=[
                {
                    "name": "flaky",
                    "type": "webhook",
                    "url": flaky.url("/hook"),
                    "events": ["task.failed"],
                    "rate": 100,
                },
                {"name": "log", "type": "log", "events": ["monitor.*"]},
            ],
        )
        batchmon = launch(config)
        url = batchmon.wait_started()
        peers.background(churn.run)
        began = time.monotonic()
        samples: list[tuple[float, int, int]] = []
        while not peers.call(lambda: churn.finished):
            assert batchmon.alive, batchmon.stderr()[-3000:]
            assert 200 == http(url + "/healthz", timeout=5).status
            samples.append(
                (time.monotonic() - began, rss_kib(batchmon.pid), open_fds(batchmon.pid))
            )
            time.sleep(soak.sample_every)
        final = peers.call(lambda: {i: t.state.value for i, t in simulator.tasks.items()})

        def stuck() -> dict[int, tuple[str, str | None]]:
            shown = {t["id"]: t["state"] for t in http(url + "/api/v1/tasks").json()["tasks"]}
            return {i: (s, shown.get(i)) for i, s in final.items() if shown.get(i) != s}

        settled_within = time.monotonic()
        left = stuck()
        deadline = time.monotonic() + SETTLE
        while left and time.monotonic() < deadline:
            time.sleep(1.0)
            left = stuck()
        settled_within = time.monotonic() - settled_within
        wait_until(lambda: set(outbox(url).values()) == {0.0}, DRAIN, "the outbox drained")
        drained_at = time.monotonic() - began
        steady = [s for s in samples if soak.warm_up <= s[0] <= soak.seconds]
        rss_slope = slope([(t / 60, rss / 1024) for t, rss, _ in steady])
        fd_slope = slope([(t / 60, fds) for t, _, fds in steady])
        failures = [h for h in flaky.hits if h.status >= 500]
        # Shown with -s, and with a failure: what the soak measured.
        print(
            f"\n{soak.tasks} tasks for {soak.seconds:g} s: {sum(life.runs for life in churn.lives)}"
            f" runs, {churn.failed_runs} failed; {len(flaky.hits)} posts to the flaky sink, "
            f"{len(failures)} answered 503; {len(samples)} samples, {len(steady)} after warm-up; "
            f"RSS {samples[0][1] // 1024}..{max(s[1] for s in samples) // 1024} MiB, "
            f"slope {rss_slope:+.2f} MiB/min; fds {min(s[2] for s in samples)}.."
            f"{max(s[2] for s in samples)}, slope {fd_slope:+.2f}/min; all tasks settled "
            f"{settled_within:.1f} s after the churn; outbox empty at {drained_at:.0f} s"
        )
        code = batchmon.stop()

        assert {} == left
        assert 0 == code
        assert len(steady) >= 5
        assert rss_slope < soak.rss_mib_per_minute
        assert fd_slope < soak.fds_per_minute
        assert churn.failed_runs == len({h.headers["webhook-id"] for h in flaky.taken("/hook")})
