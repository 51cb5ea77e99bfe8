"""The simulator in a process of its own: ``python -m bench.scenarios.simserver --tasks N``.

SuperOffice is a remote service, so the daemon under test must not share its CPU with the
fake API.  This process serves a :class:`~monitor.simulator.Simulator` holding ``N`` running
tasks (ids from 200 up), prints one JSON line ``{"url": ..., "ids": [first, last]}`` and serves
until its standard input closes.  The delivery scenario fails tasks through a control route
(basic auth, like the API): ``POST /bench/tasks/{id}/fail`` fails a task now and answers the
``time.monotonic()`` of the change, the system-wide ``CLOCK_MONOTONIC`` on Linux, so the parent
can compare it with its own times.  ``POST /bench/fail-plan`` takes ``[[gap_seconds, id], ...]``
and fails those tasks on that schedule inside this process (so that the monitor's process
spends nothing on making the changes), and ``GET /bench/failed`` answers each failed task's
time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta

import anyio
import anyio.to_thread
from aiohttp import web

from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState

__all__ = ["add_running_tasks"]


def add_running_tasks(simulator: Simulator, count: int) -> list[int]:
    """Add ``count`` tasks that run at 40 %, as a busy tenant has them; returns their ids."""
    started = datetime.now(UTC) - timedelta(minutes=5)
    return [
        simulator.add_task(
            name=f"Export selection {index}",
            state=BatchTaskState.STARTED,
            progress=40,
            progress_description=f"Processing records {index * 40}/{index * 100}",
            last_started=started,
            start_count=1,
        ).id
        for index in range(count)
    ]


async def _serve(count: int) -> None:
    simulator = Simulator()
    ids = add_running_tasks(simulator, count)

    failed: dict[int, float] = {}

    def fail_now(task_id: int) -> float:
        simulator.set_task(task_id, state=BatchTaskState.FAILED, result="Failed: bench")
        failed[task_id] = time.monotonic()
        return failed[task_id]

    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"at": fail_now(int(request.match_info["id"]))})

    async def run_plan(plan: list[tuple[float, int]]) -> None:
        for gap, task_id in plan:
            await anyio.sleep(gap)
            fail_now(task_id)

    async def fail_plan(request: web.Request) -> web.Response:
        plan = [(float(gap), int(task_id)) for gap, task_id in await request.json()]
        group.start_soon(run_plan, plan)
        return web.json_response({"planned": len(plan)})

    async def failures(_: web.Request) -> web.Response:
        return web.json_response({str(task_id): at for task_id, at in failed.items()})

    simulator.app.router.add_post("/bench/tasks/{id}/fail", fail)
    simulator.app.router.add_post("/bench/fail-plan", fail_plan)
    simulator.app.router.add_get("/bench/failed", failures)
    url = await simulator.start()
    try:
        async with anyio.create_task_group() as group:
            print(json.dumps({"url": url, "ids": [ids[0], ids[-1]] if ids else []}), flush=True)
            await anyio.to_thread.run_sync(sys.stdin.read)
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await simulator.stop()


def main() -> None:
    """Serve until standard input closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, required=True, help="running tasks to hold")
    anyio.run(_serve, parser.parse_args().tasks)


if __name__ == "__main__":
    main()
