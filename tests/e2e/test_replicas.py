"""Replicas on one PostgreSQL database lose no event while one of them is killed again and again.

Three ``batchmon run`` processes share one configuration: a PostgreSQL state (a throwaway
cluster, :mod:`tests.pgcluster`), twenty tenants of one simulated fleet and a signed webhook.
The test fails and finishes tasks in every tenant (:class:`Churn`) while, every
``kill_every`` seconds, the replica holding the most leases is killed with SIGKILL and started
again, as systemd's ``Restart=`` would.  Then:

* every event the simulator caused reaches the receiver: each run the churn started
  (tenant, task, StartCount) gives one ``task.started``, each end one ``task.failed`` or
  ``task.succeeded``, with exactly one event id, and nothing else arrives;
* an event id arrives twice only as an in-flight repeat: its first arrival came shortly before
  a kill of the replica that held its tenant, the repeat after it; the repeats are counted;
* after each kill every tenant the dead replica held is asked again by the simulator within
  ``lease_ttl`` + one poll interval (the issue's bound), timed from the kill to the first API
  request for that tenant (:class:`monitor.simulator.Fleet`'s ``on_request``).

Each state of a task lasts longer than a takeover (``lease_ttl`` plus a few intervals), so no
state comes and goes while its tenant has no replica: what the simulator showed, one replica
or the next saw.  The issue's run (2 minutes, a kill every 20 s, ``lease_ttl`` 15 s) is
marked ``soak``: about 2.5 minutes in all, so it runs with ``BATCHMON_SOAK=1`` only.  Its short
variant runs by default: three kills, with ``lease_ttl`` at its least (5 s), so that the
states' lengths, and with them the test, shrink with the takeover time.  The same churn on
SQLite and one process (no leases: it runs every tenant), killed twice and started again, is
held to the same checks but the bound, which only replicas promise.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from monitor.simulator import Fleet
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import (
    WEBHOOK_SECRET,
    Batchmon,
    Peers,
    Receiver,
    http,
    wait_until,
)

HOOK = "/hook"
TENANTS = 20
#: Tasks per tenant (ids 1, 2, 3 in each).
TASKS = (1, 2, 3)
#: The event types the sink takes: one per state the churn sets.
KINDS = ("task.started", "task.failed", "task.succeeded")
#: A request the dead process sent just before its death may be handled just after it; no
#: lease can be taken over this soon (a lease has two thirds of lease_ttl left at least).
STRAGGLER = 1.0
#: How long before a kill a delivery may have been made and not yet recorded as done.
IN_FLIGHT = 5.0
#: Generous bound, for a busy 2-core machine, on how long the last events may take to arrive.
SETTLE = 90.0


@dataclass(frozen=True)
class Plan:
    """One run: how many replicas, how many kills, how often, and the lease's length."""

    replicas: int
    kills: int
    kill_every: float
    lease_ttl: float
    interval: float = 1.0

    @property
    def hold(self) -> float:
        """The least time a task shows a state: longer than a takeover, with room to spare."""
        return self.lease_ttl + 8 * self.interval

    @property
    def bound(self) -> float:
        """The issue's bound on a takeover: ``lease_ttl`` + one poll interval."""
        return self.lease_ttl + self.interval


SHORT = Plan(replicas=3, kills=3, kill_every=20.0, lease_ttl=5.0)
FULL = Plan(replicas=3, kills=6, kill_every=20.0, lease_ttl=15.0)


@dataclass
class Churn:
    """Runs, fails and finishes every tenant's tasks on the simulator's loop, and remembers
    each state it set as the event it must cause: (type, tenant, task id, StartCount)."""

    fleet: Fleet
    hold: float
    rng: random.Random = field(default_factory=lambda: random.Random(16))
    caused: set[tuple[str, str, int, int]] = field(default_factory=set)
    #: Each task's (state, StartCount, monotonic time its state may change).
    tasks: dict[tuple[str, int], tuple[BatchTaskState, int, float]] = field(default_factory=dict)
    running: bool = True

    def begin(self) -> None:
        """Every task running its first run."""
        for tenant in self.fleet.tenants:
            for task_id in TASKS:
                self._set(tenant, task_id, BatchTaskState.STARTED, 1)

    def stop(self) -> None:
        """No more changes: ``caused`` is final."""
        self.running = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            if not self.running:
                continue
            now = time.monotonic()
            for (tenant, task_id), (state, runs, until) in list(self.tasks.items()):
                if until > now:
                    continue
                if state is BatchTaskState.STARTED:
                    ending = self.rng.choice([BatchTaskState.FAILED, BatchTaskState.SUCCEEDED])
                    self._set(tenant, task_id, ending, runs)
                else:
                    self._set(tenant, task_id, BatchTaskState.STARTED, runs + 1)

    def _set(self, tenant: str, task_id: int, state: BatchTaskState, runs: int) -> None:
        fields: dict[str, object] = {"state": state, "start_count": runs}
        if state is BatchTaskState.STARTED:
            fields.update(progress=10, last_started=datetime.now(UTC), name=f"Export {task_id}")
        elif state is BatchTaskState.SUCCEEDED:
            fields.update(progress=100)
        self.fleet.set_task(tenant, task_id, **fields)
        kind = {BatchTaskState.STARTED: "task.started", BatchTaskState.FAILED: "task.failed"}
        self.caused.add((kind.get(state, "task.succeeded"), tenant.lower(), task_id, runs))
        until = time.monotonic() + self.rng.uniform(self.hold, 1.5 * self.hold)
        self.tasks[tenant, task_id] = (state, runs, until)


@dataclass
class Asked:
    """When the simulator was asked for each tenant (``time.monotonic()``), from ``on_request``."""

    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def __call__(self, tenant: str) -> None:
        self.times[tenant.lower()].append(time.monotonic())

    def first_after(self, tenant: str, at: float) -> float | None:
        return next((t for t in list(self.times[tenant]) if t > at), None)


@dataclass(frozen=True)
class Kill:
    """One SIGKILL: when (monotonic, once the process was reaped) and what the victim held."""

    at: float
    replica: int
    tenants: frozenset[str]


def _config(fleet: Fleet, receiver: Receiver, plan: Plan, state: dict[str, Any]) -> dict[str, Any]:
    """One configuration for every replica: the fleet's tenants, each task watched by id."""
    tenants = [
        {
            "name": name.lower(),
            "superoffice": {
                "environment_url": fleet.environment_url,
                "tenant": name,
                "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
                # Tuned: a loopback simulator answers in milliseconds, and a request cut by a
                # kill should fail fast rather than hold a pipeline through a takeover.
                "max_requests_per_second": 500,
                "timeout": "2s",
                "connect_timeout": "1s",
                "retries": 0,
            },
            "watch": {"ids": list(TASKS)},
        }
        for name in fleet.tenants
    ]
    interval = f"{plan.interval:g}s"
    return {
        # Tuned: every state lasts lease_ttl + 8 intervals (see Plan), so at the default 5 s
        # interval the run would take minutes longer; a failed or finished task runs again
        # soon, so it is fetched at every cycle, not every 10 min.
        "poll": {"interval": interval, "finished_interval": interval, "jitter": 0.1},
        "http": {"listen": "127.0.0.1:0", "public_url": "http://batchmon.invalid/"},
        "state": state,
        "log": {"format": "json", "level": "info"},
        "tenants": tenants,
        "sinks": [
            {
                "name": "hook",
                "type": "webhook",
                "url": receiver.url(HOOK),
                "secret": WEBHOOK_SECRET,
                "events": list(KINDS),
                "rate": "1000/s",
            }
        ],
    }


def _holdings(replica: Batchmon, everyone: frozenset[str]) -> frozenset[str]:
    """The tenants a replica runs now, from /readyz (a process without leases runs them all)."""
    url = replica.wait_started()
    body = http(url + "/readyz", timeout=5).json()
    return frozenset(body["leases"]) if "leases" in body else everyone


def _arrivals(receiver: Receiver) -> list[tuple[float, dict[str, Any]]]:
    """Every CloudEvent the receiver took, checked against its signature, with its time."""
    verifier = Webhook(WEBHOOK_SECRET)
    return [(hit.at, verifier.verify(hit.body, dict(hit.headers))) for hit in receiver.taken(HOOK)]


def _key(event: dict[str, Any]) -> tuple[str, str, int, int]:
    task = event["data"]["task"]
    kind = event["type"].removeprefix("com.superoffice.batchmon.")
    return kind, event.get("tenant", "default"), task["id"], task["start_count"]


def _run(
    peers: Peers,
    launch: Callable[..., Batchmon],
    plan: Plan,
    state: dict[str, Any],
    env: dict[str, str],
) -> None:
    asked = Asked()
    fleet = Fleet(TENANTS, seed=16, tasks=0, on_request=asked)
    peers.run(fleet.start())
    churn = Churn(fleet, plan.hold)
    receiver = peers.receiver(Receiver())
    try:
        peers.call(churn.begin)
        peers.background(churn.run)
        config = _config(fleet, receiver, plan, state)
        everyone = frozenset(name.lower() for name in fleet.tenants)
        replicas = [launch(config, name=f"replica{n}", env=env) for n in range(plan.replicas)]

        def spread() -> bool:
            held = [_holdings(replica, everyone) for replica in replicas]
            return set().union(*held) == everyone and all(held)

        wait_until(spread, 60, "every tenant held, by every replica")
        kills: list[Kill] = []
        start = time.monotonic()
        for number in range(1, plan.kills + 1):
            time.sleep(max(0.0, start + number * plan.kill_every - time.monotonic()))
            held = {n: _holdings(replica, everyone) for n, replica in enumerate(replicas)}
            victim = max(held, key=lambda n: len(held[n]))
            replicas[victim].kill()
            kills.append(Kill(time.monotonic(), victim, held[victim]))
            replicas[victim].start()
        last = kills[-1]

        def taken_over() -> bool:
            return all(asked.first_after(t, last.at + STRAGGLER) for t in last.tenants)

        wait_until(taken_over, 4 * plan.bound, "the last victim's tenants polled again")
        peers.call(churn.stop)
        caused = peers.call(lambda: set(churn.caused))

        def all_arrived() -> bool:
            return caused <= {_key(event) for _, event in _arrivals(receiver)}

        wait_until(all_arrived, SETTLE, "every caused event delivered", every=0.5)
        for replica in replicas:
            assert replica.alive, replica.stderr()[-3000:]
            assert 0 == replica.stop()
    finally:
        peers.run(fleet.stop())

    arrivals = _arrivals(receiver)
    keys = {_key(event) for _, event in arrivals}
    assert caused == keys, (sorted(caused - keys)[:10], sorted(keys - caused)[:10])
    ids_of: dict[tuple[str, str, int, int], set[str]] = defaultdict(set)
    for _, event in arrivals:
        ids_of[_key(event)].add(event["id"])
    assert {key for key, ids in ids_of.items() if len(ids) != 1} == set()

    # In-flight repeats: taken (2xx) but not yet recorded as done when its replica died.
    first: dict[str, float] = {}
    repeats: list[tuple[str, str, float, float]] = []
    for at, event in arrivals:
        if event["id"] in first:
            repeats.append((event["id"], _key(event)[1], first[event["id"]], at))
        else:
            first[event["id"]] = at
    copies = Counter(event["id"] for _, event in arrivals)
    assert max(copies.values()) <= 2, copies.most_common(3)
    unexplained = [
        repeat
        for repeat in repeats
        if not any(
            repeat[1] in kill.tenants and kill.at - IN_FLIGHT <= repeat[2] <= kill.at < repeat[3]
            for kill in kills
        )
    ]
    assert unexplained == []

    takeovers: list[float] = []
    worst: list[str] = []
    for kill in kills:
        times = []
        for tenant in sorted(kill.tenants):
            again = asked.first_after(tenant, kill.at + STRAGGLER)
            assert again is not None, (kill, tenant)
            times.append(again - kill.at)
        takeovers += times
        worst.append(f"{max(times):.1f}")
    figures = (
        f"{len(kills)} kills, {len(takeovers)} tenants taken over: "
        f"max {max(takeovers):.2f} s, median {sorted(takeovers)[len(takeovers) // 2]:.2f} s, "
        f"bound {plan.bound:g} s (each kill's last: {', '.join(worst)} s); {len(caused)} "
        f"events, {len(arrivals)} deliveries, {len(repeats)} in-flight repeats"
    )
    print(figures)  # the figures the issue asks for, shown with -s
    if plan.replicas > 1:
        assert max(takeovers) <= plan.bound, figures


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(SHORT, id="short", marks=pytest.mark.timeout(300)),
        pytest.param(FULL, id="full", marks=[pytest.mark.soak, pytest.mark.timeout(600)]),
    ],
)
def test_killed_replicas_lose_nothing_and_are_replaced_in_time(
    peers: Peers, launch: Callable[..., Batchmon], pg_url: str, plan: Plan
) -> None:
    """SIGKILL of the busiest replica every ``kill_every`` s: every event arrives, with one id;
    repeats only for deliveries in flight at a kill; its tenants are polled again in time."""
    state = {"url_env": "BATCHMON_TEST_STATE_URL", "lease_ttl": plan.lease_ttl}
    _run(peers, launch, plan, state, {"BATCHMON_TEST_STATE_URL": pg_url})


def test_one_process_killed_loses_nothing(
    peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
) -> None:
    """The same churn on SQLite and one process, killed and restarted: nothing lost, one id."""
    plan = Plan(replicas=1, kills=2, kill_every=15.0, lease_ttl=5.0)
    _run(peers, launch, plan, {"path": str(tmp_path / "state.db")}, {})
