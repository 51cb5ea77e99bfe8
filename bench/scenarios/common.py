"""What the scenarios share: the result row, statistics, the simulator process, the daemon.

The daemon under test is always built through its stable entry points: a config dict
validated by :func:`monitor.config.parse_config`, :class:`monitor.daemon.Daemon` and its
``poller``; the simulator runs in a process of its own (:mod:`bench.scenarios.simserver`).
"""

from __future__ import annotations

import base64
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from monitor.config import Config, parse_config
from monitor.daemon import Daemon, freeze_startup_objects
from monitor.delivery.sqlite import SqliteStore
from monitor.logs import configure_logging
from monitor.polling import Poller
from monitor.superoffice.models import parse_task_list
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from monitor.types import DeliveryStore

__all__ = [
    "AUTH_HEADERS",
    "CONCURRENCY",
    "ROOT",
    "UNLIMITED_RATE",
    "Row",
    "SimProcess",
    "bare_session",
    "child_process",
    "daemon_config",
    "fmt_ms",
    "median",
    "percentile",
    "poller_of",
    "quiet_logging",
    "running_daemon",
    "seed_state",
    "simulator_process",
]

#: The repository root: where ``python -m bench...`` finds its modules.
ROOT = Path(__file__).resolve().parents[2]
#: The simulator's default credentials (basic auth batchmon/batchmon).
AUTH_HEADERS = {
    "Authorization": "Basic " + base64.b64encode(b"batchmon:batchmon").decode(),
    "Accept": "application/json",
}
#: ``superoffice.max_concurrency`` of the daemon and of every bare loop (batchmon's default).
CONCURRENCY = 4
#: ``superoffice.max_requests_per_second`` where a scenario measures the pipeline, not the
#: tenant's request budget: high enough never to wait.
UNLIMITED_RATE = 1e6
#: Seconds a daemon may take to finish its first cycle (10,000 GETs on a busy machine).
_FIRST_CYCLE_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table."""

    key: str
    scenario: str
    ours: str
    baseline: str
    ratio: str
    target: str
    #: ``None`` when the scenario could not be judged (it failed to run).
    passed: bool | None
    #: How it was measured, and anything the figures do not say.
    notes: tuple[str, ...] = field(default=())
    #: Not run, for want of something the machine lacks (``ours`` says what).
    skipped: bool = False


def median(values: Sequence[float]) -> float:
    """The median of repeated measurements."""
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.99 for p99) of ``values``."""
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds for the table."""
    return f"{seconds * 1000:.1f} ms"


def quiet_logging() -> None:
    """Log as the daemon does in production (JSON, info), but into nothing."""
    configure_logging("json", "info", open(os.devnull, "w"))  # noqa: SIM115 - for the process


@dataclass(frozen=True, slots=True)
class SimProcess:
    """A running :mod:`bench.scenarios.simserver`: its API base and its task ids."""

    url: str
    ids: list[int]

    @property
    def origin(self) -> str:
        """Scheme, host and port, without the ``/api`` path."""
        return self.url.removesuffix("/api")

    async def fail(self, session: aiohttp.ClientSession, task_id: int) -> float:
        """Fail a task now; the simulator's monotonic time of the change."""
        async with session.post(f"{self.origin}/bench/tasks/{task_id}/fail") as response:
            response.raise_for_status()
            at: float = (await response.json())["at"]
            return at

    async def fail_on_schedule(
        self, session: aiohttp.ClientSession, plan: Sequence[tuple[float, int]]
    ) -> None:
        """Have the simulator fail each task after its gap (seconds) from the one before."""
        async with session.post(f"{self.origin}/bench/fail-plan", json=plan) as response:
            response.raise_for_status()

    async def failed(self, session: aiohttp.ClientSession) -> dict[int, float]:
        """Each task the simulator failed, with its monotonic time."""
        async with session.get(f"{self.origin}/bench/failed") as response:
            response.raise_for_status()
            return {int(task_id): at for task_id, at in (await response.json()).items()}


@contextmanager
def child_process(module: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], Any]]:
    """Run ``python -m module args`` beside the bench; yields it and its first JSON line.

    The children (simulator, receiver, ...) announce themselves with one JSON line and
    stop when their standard input closes, which leaving the block does.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None  # PIPE above
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        if not line:
            msg = f"{module} exited with {process.wait()}"
            raise RuntimeError(msg)
        yield process, json.loads(line)
    finally:
        if not process.stdin.closed:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def simulator_process(tasks: int) -> Iterator[SimProcess]:
    """Run the simulator with ``tasks`` running tasks in a child process."""
    with child_process("bench.scenarios.simserver", "--tasks", str(tasks)) as (_, started):
        first, last = started["ids"] or (0, -1)
        yield SimProcess(started["url"], list(range(first, last + 1)))


def daemon_config(
    url: str,
    state: Path | str,
    ids: Sequence[int],
    *,
    poll: dict[str, Any] | None = None,
    sinks: list[dict[str, Any]] | None = None,
    superoffice: dict[str, Any] | None = None,
    listen: str = "127.0.0.1:0",
) -> Config:
    """A validated config watching ``ids`` on the simulator at ``url``.

    ``state`` is a SQLite file, or a PostgreSQL database's URL.  Sinks default to a log sink that only takes ``task.failed`` (no scenario but P3 fails
    tasks), so start-up discoveries do not keep the outbox busy while figures are taken.
    """
    data: dict[str, Any] = {
        "state": {"url": state} if isinstance(state, str) else {"path": str(state)},
        "superoffice": {
            "url": url,
            "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
            "max_concurrency": CONCURRENCY,
            "max_requests_per_second": UNLIMITED_RATE,
            **(superoffice or {}),
        },
        "watch": {"ids": list(ids)},
        "poll": poll or {},
        "http": {"listen": listen},
        "sinks": sinks or [{"name": "log", "type": "log", "events": ["task.failed"]}],
    }
    return parse_config(data, base_dir=ROOT)


async def seed_state(url: str, state: Path | str) -> int:
    """Store what a first cycle would have learnt about every task on the simulator.

    One list call fetches the tasks in full; the tracker observes them; the memories go to
    the state database ``state`` (a SQLite file, or a PostgreSQL database's URL), so the
    daemon starts as after a restart.  Returns how many tasks were stored.
    """
    async with (
        aiohttp.ClientSession(headers=AUTH_HEADERS) as session,
        session.post(
            url + "/v1/Agents/Batch/GetBatchTaskInfosByAssociates", json={"AssociateIds": []}
        ) as response,
    ):
        response.raise_for_status()
        body = await response.read()
    tasks, _ = parse_task_list(body)
    tracker = Tracker(Rules())
    now = datetime.now(UTC)
    for task in tasks:
        tracker.observe(task, now)
    store: DeliveryStore
    if isinstance(state, str):
        from monitor.delivery.postgres import PostgresStore  # loads psycopg: only when asked

        store = await PostgresStore.open(state)
    else:
        store = await SqliteStore.open(state)
    try:
        await store.commit(list(tracker.tasks.values()), [], now.timestamp())
    finally:
        await store.close()
    return len(tasks)


def poller_of(daemon: Daemon) -> Poller:
    """The running daemon's poller."""
    if daemon.poller is None:
        msg = "the daemon has no poller yet"
        raise RuntimeError(msg)
    return daemon.poller


@asynccontextmanager
async def running_daemon(config: Config) -> AsyncIterator[tuple[Daemon, str]]:
    """A daemon polling in this process; yields it and its base URL once a cycle ran.

    Start-up objects are frozen first, as ``batchmon run`` does.
    """
    freeze_startup_objects()
    daemon = Daemon(config)
    async with anyio.create_task_group() as group:
        port = await group.start(daemon.run)
        with anyio.fail_after(_FIRST_CYCLE_TIMEOUT):
            while daemon.poller is None or daemon.poller.cycles == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        yield daemon, f"http://127.0.0.1:{port}"
        group.cancel_scope.cancel()


def bare_session(concurrency: int = CONCURRENCY) -> aiohttp.ClientSession:
    """A plain aiohttp session with the daemon's connection limit and credentials."""
    return aiohttp.ClientSession(
        headers=AUTH_HEADERS, connector=aiohttp.TCPConnector(limit=concurrency)
    )
