"""The simulator in a process of its own: ``python -m bench.scenarios.simserver --tasks N``.

SuperOffice is a remote service, so the daemon under test must not share its CPU with the
fake API.  This process serves a :class:`~monitor.simulator.Simulator` holding ``N`` running
tasks (ids from 200 up), prints one JSON line ``{"url": ..., "ids": [first, last]}`` and serves
until its standard input closes.  The delivery scenario fails tasks through a control route
(basic auth, like the API): ``POST /bench/tasks/{id}/fail`` fails a task now and answers the
``time.monotonic()`` of the change, the system-wide ``CLOCK_MONOTONIC`` on Linux, so the parent
can compare it with its own times.
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

    async def fail(request: web.Request) -> web.Response:
        task_id = int(request.match_info["id"])
        simulator.set_task(task_id, state=BatchTaskState.FAILED, result="Failed: bench")
        return web.json_response({"at": time.monotonic()})

    simulator.app.router.add_post("/bench/tasks/{id}/fail", fail)
    url = await simulator.start()
    try:
        print(json.dumps({"url": url, "ids": [ids[0], ids[-1]] if ids else []}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
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
