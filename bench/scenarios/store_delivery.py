"""P11: P3's detection to delivery with the PostgreSQL store, beside the SQLite store.

Two daemons run side by side in this process, alike but for ``[state]``: one on a SQLite file,
one on a database of a throwaway PostgreSQL cluster (:mod:`tests.pgcluster`: Debian's
``initdb`` and ``pg_ctl``, ``fsync`` off as SQLite's ``synchronous=NORMAL`` does not sync
each commit either; loopback TCP with a password).  Both watch the same tasks on the same
simulator process and tell the same receiver process (:mod:`bench.scenarios.receiver`) through
a ``webhook`` sink that takes only their own tasks (``ids``); the simulator fails the two
daemons' tasks alternately, so both are measured under the same load at the same time.  Each
figure is P3's: delivery minus the start of the poll cycle that detected the change.  The target
is the ratio of the p99s, PostgreSQL over SQLite.

Without PostgreSQL's server programs the row is skipped, saying which package to install.
"""

from __future__ import annotations

import base64
import math
import random
import secrets
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from bench.scenarios.common import (
    AUTH_HEADERS,
    Row,
    SimProcess,
    daemon_config,
    fmt_ms,
    percentile,
    poller_of,
    quiet_logging,
    running_daemon,
    seed_state,
    simulator_process,
)
from bench.scenarios.delivery import WARM_UP, Cycles, receiver_process, spread
from monitor.config import Config
from monitor.daemon import Daemon
from tests.pgcluster import find_bindir, running_cluster

__all__ = ["postgres_beside_sqlite"]

#: The target: PostgreSQL's p99 over SQLite's, taken in the same run.
_TARGET_RATIO = 2.0
_NAME = "detection to delivery, PostgreSQL store"


def _sink(url: str, secret: str, ids: list[int]) -> dict[str, Any]:
    """P3's webhook sink, for ``ids`` only."""
    return {
        "name": "receiver",
        "type": "webhook",
        "url": url,
        "secret": secret,
        "events": ["task.failed"],
        # Pacing is a policy, not latency: keep it out of the figure.
        "rate": "1000/s",
        "ids": ids,
    }


async def _delivered(daemon: Daemon, count: int) -> None:
    """Wait until the daemon's sink delivered ``count`` events."""
    dispatcher = daemon.dispatcher
    assert dispatcher is not None
    while dispatcher.delivered["receiver"] < count:  # noqa: ASYNC110
        await anyio.sleep(0.05)


async def _measure(
    sim: SimProcess,
    states: dict[str, Path | str],
    configs: dict[str, Config],
    warm_up: dict[str, list[int]],
    measured: dict[str, list[int]],
    rng: random.Random,
) -> tuple[dict[int, float], dict[str, Cycles]]:
    """Run both daemons; fail the warm-up tasks, then the measured ones alternately."""
    for state in states.values():
        await seed_state(sim.url, state)
    async with (
        running_daemon(configs["sqlite"]) as (sqlite, _),
        running_daemon(configs["postgres"]) as (postgres, _),
        aiohttp.ClientSession(headers=AUTH_HEADERS) as control,
    ):
        daemons = {"sqlite": sqlite, "postgres": postgres}
        deadline = 2 * sqlite.config.poll.interval + 10
        # The first failures take code paths in for the first time: delivered, not counted.
        for backend in daemons:
            for task_id in warm_up[backend]:
                await sim.fail(control, task_id)
        with anyio.move_on_after(deadline):
            for daemon in daemons.values():
                await _delivered(daemon, WARM_UP)
        cycles = {backend: Cycles(poller_of(daemon)) for backend, daemon in daemons.items()}
        pairs = zip(measured["sqlite"], measured["postgres"], strict=True)
        mixed = [task_id for pair in pairs for task_id in pair]
        plan = [(rng.uniform(0.05, 0.15), task_id) for task_id in mixed]
        await sim.fail_on_schedule(control, plan)
        with anyio.move_on_after(sum(gap for gap, _ in plan) + deadline):
            for backend, daemon in daemons.items():
                await _delivered(daemon, WARM_UP + len(measured[backend]))
        times = await sim.failed(control)
    return times, cycles


def postgres_beside_sqlite(quick: bool) -> Row:
    """P11: p99 of (delivery - the poll that saw the change), PostgreSQL store over SQLite's."""
    count, changes = (300, 15) if quick else (1000, 200)
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL's initdb and pg_ctl not installed (Debian package 'postgresql')"
        return Row("P11", _NAME, f"skipped: {message}", "—", "—", "—", None, (), skipped=True)
    quiet_logging()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    rng = random.Random(11)
    with (
        running_cluster(bindir) as cluster,
        simulator_process(count) as sim,
        receiver_process(secret) as receiver,
        tempfile.TemporaryDirectory() as tmp,
    ):
        chosen = rng.sample(sim.ids, 2 * (WARM_UP + changes))
        half = WARM_UP + changes
        own = {"sqlite": chosen[:half], "postgres": chosen[half:]}
        warm_up = {backend: ids[:WARM_UP] for backend, ids in own.items()}
        measured = {backend: ids[WARM_UP:] for backend, ids in own.items()}
        states: dict[str, Path | str] = {
            "sqlite": Path(tmp) / "state.db",
            "postgres": cluster.create_database("batchmon"),
        }
        configs = {
            backend: daemon_config(
                sim.url, states[backend], sim.ids, sinks=[_sink(receiver.url, secret, ids)]
            )
            for backend, ids in own.items()
        }
        times, cycles = anyio.run(_measure, sim, states, configs, warm_up, measured, rng)
        arrived, rejected = receiver.report()
    latencies: dict[str, list[float]] = {}
    for backend, ids in measured.items():
        latencies[backend] = []
        for task_id in ids:
            at = arrived.get(task_id, math.inf)
            polled = cycles[backend].detecting(task_id, at)
            if task_id not in times or polled is None or at == math.inf:
                failed = times.get(task_id)
                msg = f"{backend}: task {task_id} failed at {failed}, polled {polled}, got {at}"
                raise RuntimeError(msg)
            latencies[backend].append(at - polled)
    p99 = {backend: percentile(values, 0.99) for backend, values in latencies.items()}
    ratio = p99["postgres"] / p99["sqlite"]
    return Row(
        "P11",
        f"{_NAME}, {count:,} tasks",
        spread(latencies["postgres"]),
        f"SQLite {spread(latencies['sqlite'])}",
        f"{ratio:.2f}x",
        f"p99 ≤ {_TARGET_RATIO:g}x SQLite",
        ratio <= _TARGET_RATIO and rejected == 0,
        (
            (
                f"P11: P3's scenario for two daemons side by side in one process, one on a "
                f"SQLite file, one on PostgreSQL {bindir.parent.name} (a throwaway cluster over "
                f"loopback TCP, fsync off); {changes} tasks of each failed alternately by the "
                f"simulator, about one of each every 0.2 s (after {WARM_UP} each not counted), "
                f"under the default schedule; each daemon's webhook sink takes its own tasks; "
                f"{rejected} "
                f"signatures rejected; max {fmt_ms(max(latencies['postgres']))} (PostgreSQL), "
                f"{fmt_ms(max(latencies['sqlite']))} (SQLite)."
            ),
        ),
    )
