"""P3: from a task's change on the simulator to the signed event at a loopback receiver.

The daemon watches the simulator's running tasks with the production schedule and one
``webhook`` sink (:mod:`monitor.sinks.webhook`, Standard Webhooks signatures) that takes
``task.failed``.  The simulator fails tasks one by one at random gaps, on a schedule the
bench hands it (so the daemon's process spends nothing on making the changes); the receiver
(a process of its own, :mod:`bench.scenarios.receiver`) checks each signature with the
``standardwebhooks`` package and notes when the event arrived.  The
figure is delivery minus the start of the poll cycle that detected the change (the last
cycle covering that task before its event arrived): the time batchmon took once it asked,
whatever the schedule made it wait before asking.  Cycles are noted by wrapping the running
poller's ``poll``, which its ``run`` loop calls for every cycle.

The target is a ratio, since absolute milliseconds do not travel between machines: the p99
against the p99 of the floor taken in the same run, against the same simulator and receiver
processes once the daemon stopped.  The floor does what a cycle must do to see a failure and
tell of it, with no store or queue between: the same list calls, the failed task's GET,
both parsed by the same client, the transition detected, and the same signed POST by the
same webhook sink; it is timed from the first list call to the arrival.
"""

from __future__ import annotations

import base64
import json
import math
import random
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import anyio

from bench.scenarios.common import (
    AUTH_HEADERS,
    Row,
    child_process,
    daemon_config,
    fmt_ms,
    percentile,
    poller_of,
    quiet_logging,
    running_daemon,
    seed_state,
    simulator_process,
)
from monitor.polling import Poller
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink
from monitor.superoffice.client import SuperOfficeClient, open_client
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState
from monitor.tracking.detect import detect
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import Rules, TaskMemory
from monitor.types import Sink

__all__ = [
    "WARM_UP",
    "Cycles",
    "ReceiverProcess",
    "detection_to_delivery",
    "receiver_process",
    "spread",
]

#: The target: p99 of (delivery - the poll that saw the change), over the floor's p99.
_TARGET_RATIO = 2.0
#: The states a cycle lists (its bulk calls); the floor makes the same calls.
_LISTED = (BatchTaskState.NEW, BatchTaskState.AQUIRED, BatchTaskState.STARTED)
#: Seconds between the floor's cycles: the default schedule lists running tasks this often.
_FLOOR_EVERY = 2.5
#: Failures delivered before the measured ones, and not counted.
WARM_UP = 5


class ReceiverProcess:
    """The receiver child (:mod:`bench.scenarios.receiver`): its URL, then what arrived."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self._process = process
        self.url = url

    def report(self) -> tuple[dict[int, float], int]:
        """Stop the receiver; each task's arrival time and how many signatures failed."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.close()
        report = json.loads(self._process.stdout.readline())
        arrived = {int(task_id): at for task_id, at in report["arrived"].items()}
        return arrived, int(report["rejected"])


@contextmanager
def receiver_process(secret: str) -> Iterator[ReceiverProcess]:
    with child_process("bench.scenarios.receiver", secret) as (process, started):
        yield ReceiverProcess(process, started["url"])


class Cycles:
    """Wraps a poller's ``poll`` to note when each cycle started and which tasks it covered."""

    def __init__(self, poller: Poller) -> None:
        self.started: list[tuple[float, frozenset[int]]] = []
        self._poll = poller.poll
        poller.poll = self._noted  # type: ignore[method-assign]

    async def _noted(self, task_ids: Sequence[int]) -> list[Event]:
        self.started.append((time.monotonic(), frozenset(task_ids)))
        return await self._poll(task_ids)

    def detecting(self, task_id: int, before: float) -> float | None:
        """The start of the last cycle covering ``task_id`` that began before ``before``."""
        starts = [at for at, ids in self.started if at < before and task_id in ids]
        return max(starts, default=None)


class _Floor:
    """Cycles that see failures as the poller does and POST them at once: no store, no queue.

    Each cycle makes the poller's list calls (``_LISTED``, at once), GETs each of its tasks
    that left them (as many at once as the client allows), detects the transition and POSTs
    the event with the same webhook sink; a task's figure is its arrival minus the cycle's
    start, as for the daemon.
    """

    def __init__(
        self,
        client: SuperOfficeClient,
        sink: Sink,
        memories: dict[int, TaskMemory],
        concurrency: int,
    ) -> None:
        self._client = client
        self._sink = sink
        self._memories = memories
        self._limiter = anyio.CapacityLimiter(concurrency)
        #: Task id -> start of the cycle that told of its failure.
        self.started: dict[int, float] = {}

    async def run(self, every: float) -> None:
        """One cycle every ``every`` seconds until each task's failure was told."""
        while len(self.started) < len(self._memories):
            start = time.monotonic()
            await self._cycle(start)
            await anyio.sleep(max(0.0, start + every - time.monotonic()))

    async def _cycle(self, start: float) -> None:
        listed: set[int] = set()

        async def list_state(state: BatchTaskState) -> None:
            listing = await self._client.list_tasks_in_state(
                [], state.value, select=BatchTaskInfo.POLL_FIELDS
            )
            listed.update(listing)

        async with anyio.create_task_group() as group:
            for state in _LISTED:
                group.start_soon(list_state, state)
        left = [t for t in self._memories if t not in listed and t not in self.started]
        async with anyio.create_task_group() as group:
            for task_id in left:
                group.start_soon(self._tell, task_id, start)

    async def _tell(self, task_id: int, start: float) -> None:
        async with self._limiter:
            info = await self._client.get_task(task_id)
        detection = detect(self._memories[task_id], info, datetime.now(UTC), Rules())
        for event in detection.events:
            if event.type is EventType.TASK_FAILED:
                self.started[task_id] = start
                await self._sink.send(event)


def spread(latencies: Sequence[float]) -> str:
    """p99 and p50 of ``latencies``, as the table shows them."""
    return f"p99 {fmt_ms(percentile(latencies, 0.99))} (p50 {fmt_ms(percentile(latencies, 0.50))})"


def detection_to_delivery(quick: bool) -> Row:
    """P3: p99 of (delivery - next poll after the change), with 1,000 watched tasks."""
    count, changes = (300, 15) if quick else (1000, 200)
    quiet_logging()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    rng = random.Random(3)
    with (
        simulator_process(count) as sim,
        receiver_process(secret) as receiver,
        tempfile.TemporaryDirectory() as tmp,
    ):
        state = Path(tmp) / "state.db"
        sink = {
            "name": "receiver",
            "type": "webhook",
            "url": receiver.url,
            "secret": secret,
            "events": ["task.failed"],
            # Pacing is a policy, not latency: keep it out of the figure.
            "rate": "1000/s",
        }
        chosen = rng.sample(sim.ids, WARM_UP + 2 * changes)
        warm_up, measured, floor_ids = (
            chosen[:WARM_UP],
            chosen[WARM_UP : WARM_UP + changes],
            chosen[WARM_UP + changes :],
        )
        # The daemon tells the receiver of its own tasks only: the floor's are told by the floor.
        config = daemon_config(
            sim.url, state, sim.ids, sinks=[{**sink, "ids": [*warm_up, *measured]}]
        )

        async def measure() -> tuple[dict[int, float], Cycles, dict[int, float]]:
            await seed_state(sim.url, state)
            async with (
                running_daemon(config) as (daemon, _),
                aiohttp.ClientSession(headers=AUTH_HEADERS) as control,
                open_client(config.superoffice) as client,
                aiohttp.ClientSession() as session,
            ):
                dispatcher = daemon.dispatcher
                assert dispatcher is not None
                deadline = 2 * daemon.config.poll.interval + 10
                floor = _Floor(
                    client,
                    build_sink(config.sinks[0], SinkContext(session, status_url=None)),
                    {
                        task_id: detect(
                            None, await client.get_task(task_id), datetime.now(UTC), Rules()
                        ).memory
                        for task_id in floor_ids
                    },
                    config.superoffice.max_concurrency,
                )
                # Warm-up: the first failures take code paths in for the first time (the
                # sink's first request, its connection); they are delivered, not counted.
                for task_id in warm_up:
                    await sim.fail(control, task_id)
                with anyio.move_on_after(deadline):
                    while dispatcher.delivered["receiver"] < WARM_UP:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                cycles = Cycles(poller_of(daemon))
                # The simulator makes the changes on its own schedule, as SuperOffice would:
                # this process only watches.  The daemon's and the floor's tasks alternate,
                # so that both are measured under the same load, at the same time.
                mixed = [t for pair in zip(measured, floor_ids, strict=True) for t in pair]
                plan = [(rng.uniform(0.05, 0.15), task_id) for task_id in mixed]
                await sim.fail_on_schedule(control, plan)
                with anyio.move_on_after(sum(gap for gap, _ in plan) + deadline):
                    async with anyio.create_task_group() as group:
                        group.start_soon(floor.run, _FLOOR_EVERY)
                        while dispatcher.delivered["receiver"] < WARM_UP + changes:  # noqa: ASYNC110
                            await anyio.sleep(0.05)
                times = await sim.failed(control)
                failed = {task_id: times[task_id] for task_id in measured if task_id in times}
            return failed, cycles, floor.started

        failed, cycles, floor = anyio.run(measure)
        arrived, rejected = receiver.report()
    latencies = []
    for task_id, changed in failed.items():
        at = arrived.get(task_id, math.inf)
        polled = cycles.detecting(task_id, at)
        if polled is None or at == math.inf:
            msg = f"task {task_id}: failed at {changed}, polled {polled}, got {at}"
            raise RuntimeError(msg)
        latencies.append(at - polled)
    floors = []
    for task_id, start in floor.items():
        at = arrived.get(task_id, math.inf)
        if at == math.inf:
            msg = f"floor: task {task_id} never arrived"
            raise RuntimeError(msg)
        floors.append(at - start)
    p99, floor_p99 = percentile(latencies, 0.99), percentile(floors, 0.99)
    ratio = p99 / floor_p99
    return Row(
        "P3",
        f"detection to delivery, {count:,} tasks",
        spread(latencies),
        f"floor {spread(floors)}",
        f"{ratio:.2f}x",
        f"p99 ≤ {_TARGET_RATIO:g}x floor",
        ratio <= _TARGET_RATIO and rejected == 0,
        (
            (
                f"P3: {changes} tasks failed by the simulator, about one every 0.2 s (after "
                f"{WARM_UP} not counted) under the default schedule (interval 5 s, lists every "
                f"2.5 s); signed CloudEvents via the webhook sink (rate 1000/s), "
                f"verified with standardwebhooks in a receiver process of its own, {rejected} rejected; "
                f"max {fmt_ms(max(latencies))}.  Floor, in the same process at the same time: "
                f"{len(floors)} other tasks failed between the daemon's, seen by cycles every "
                f"{_FLOOR_EVERY:g} s of the same {len(_LISTED)} list calls and GETs, detected and "
                f"POSTed by the same webhook sink with no store or queue; max {fmt_ms(max(floors))}."
            ),
        ),
    )
