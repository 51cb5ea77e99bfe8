"""P3: from a task's change on the simulator to the signed event at a loopback receiver.

The daemon watches the simulator's running tasks with the production schedule and one
``webhook`` sink (:mod:`monitor.sinks.webhook`, Standard Webhooks signatures) that takes
``task.failed``.  The bench fails tasks one by one, at random gaps; the receiver checks each
signature with the ``standardwebhooks`` package and notes when the event arrived.  The
figure is delivery minus the start of the poll cycle that detected the change (the last
cycle covering that task before its event arrived): the time batchmon took once it asked,
whatever the schedule made it wait before asking.  Cycles are noted by wrapping the running
poller's ``poll``, which its ``run`` loop calls for every cycle.
"""

from __future__ import annotations

import base64
import math
import random
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import anyio
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from bench.scenarios.common import (
    AUTH_HEADERS,
    Row,
    daemon_config,
    fmt_ms,
    percentile,
    poller_of,
    quiet_logging,
    running_daemon,
    seed_state,
    simulator_process,
)
from monitor.poller import Poller
from monitor.tracking.events import Event

__all__ = ["detection_to_delivery"]

#: The target: p99 of (delivery - first poll after the change).
_TARGET = 0.050


class _Receiver:
    """A webhook endpoint on loopback that verifies signatures and notes arrival times."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)
        #: Task id → monotonic time its ``task.failed`` arrived.
        self.arrived: dict[int, float] = {}
        self.rejected = 0
        self.app = web.Application()
        self.app.router.add_post("/hook", self._hook)

    async def _hook(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        body = await request.read()
        try:
            event = self._webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.rejected += 1
            return web.Response(status=400)
        if event["type"].endswith("task.failed"):
            self.arrived.setdefault(int(event["subject"]), at)
        return web.Response(status=204)


class _Cycles:
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


def detection_to_delivery(quick: bool) -> Row:
    """P3: p99 of (delivery - next poll after the change), with 1,000 watched tasks."""
    count, changes = (300, 15) if quick else (1000, 200)
    quiet_logging()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    rng = random.Random(3)
    receiver = _Receiver(secret)
    with simulator_process(count) as sim, tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"

        async def measure() -> list[float]:
            await seed_state(sim.url, state)
            runner = web.AppRunner(receiver.app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            sink = {
                "name": "receiver",
                "type": "webhook",
                "url": f"http://127.0.0.1:{port}/hook",
                "secret": secret,
                "events": ["task.failed"],
                # Pacing is a policy, not latency: keep it out of the figure.
                "rate": "1000/s",
            }
            config = daemon_config(sim.url, state, sim.ids, sinks=[sink])
            failed: dict[int, float] = {}
            try:
                async with (
                    running_daemon(config) as (daemon, _),
                    aiohttp.ClientSession(headers=AUTH_HEADERS) as control,
                ):
                    cycles = _Cycles(poller_of(daemon))
                    for task_id in rng.sample(sim.ids, changes):
                        failed[task_id] = await sim.fail(control, task_id)
                        await anyio.sleep(rng.uniform(0.1, 0.3))
                    interval = daemon.config.poll.interval
                    with anyio.move_on_after(2 * interval + 10):
                        while len(receiver.arrived) < len(failed):  # noqa: ASYNC110
                            await anyio.sleep(0.05)
            finally:
                await runner.cleanup()
            latencies = []
            for task_id, changed in failed.items():
                arrived = receiver.arrived.get(task_id, math.inf)
                polled = cycles.detecting(task_id, arrived)
                if polled is None or arrived == math.inf:
                    msg = f"task {task_id}: failed at {changed}, polled {polled}, got {arrived}"
                    raise RuntimeError(msg)
                latencies.append(arrived - polled)
            return latencies

        latencies = anyio.run(measure)
    p99 = percentile(latencies, 0.99)
    p50 = percentile(latencies, 0.50)
    return Row(
        "P3",
        f"detection to delivery, {count:,} tasks",
        f"p99 {fmt_ms(p99)} (p50 {fmt_ms(p50)})",
        "—",
        "—",
        "p99 ≤ 50 ms",
        p99 <= _TARGET and receiver.rejected == 0,
        (
            (
                f"P3: {changes} tasks failed at 0.1-0.3 s gaps under the default schedule (interval "
                f"5 s, bulk list calls); signed CloudEvents via the webhook sink (rate 1000/s), "
                f"verified with standardwebhooks, {receiver.rejected} rejected; "
                f"max {fmt_ms(max(latencies))}."
            ),
        ),
    )
