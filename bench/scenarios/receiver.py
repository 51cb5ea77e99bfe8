"""The P3 webhook receiver in a process of its own: ``python -m bench.scenarios.receiver SECRET``.

A webhook's receiver runs elsewhere, so the daemon under test must not spend its event loop
on the receiving side.  This process serves ``POST /hook`` on loopback, checks each
Standard Webhooks signature with the ``standardwebhooks`` package, notes when each task's
``task.failed`` arrived (``time.monotonic()``: the system-wide ``CLOCK_MONOTONIC`` on Linux,
comparable with the parent's), prints one JSON line ``{"url": ...}``, and when its standard
input closes prints ``{"arrived": {task_id: time}, "rejected": n}`` and exits.
"""

from __future__ import annotations

import json
import sys
import time

import anyio
import anyio.to_thread
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

__all__ = ["Receiver"]


class Receiver:
    """Verifies signatures and notes arrival times."""

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


async def _serve(secret: str) -> None:
    receiver = Receiver(secret)
    runner = web.AppRunner(receiver.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"url": f"http://127.0.0.1:{port}/hook"}), flush=True)
    try:
        await anyio.to_thread.run_sync(sys.stdin.read)
    finally:
        await runner.cleanup()
    print(json.dumps({"arrived": receiver.arrived, "rejected": receiver.rejected}), flush=True)


def main() -> None:
    """Serve until stdin closes, then report what arrived."""
    anyio.run(_serve, sys.argv[1])


if __name__ == "__main__":
    main()
