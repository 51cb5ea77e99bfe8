"""Serving a simulator's app on loopback: one way for the one-tenant simulator and the fleet."""

from __future__ import annotations

from aiohttp import web
from yarl import URL

__all__ = ["listen"]


async def listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` (0 picks a free port): its runner and its origin URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port: int = runner.addresses[0][1]
    return runner, str(URL.build(scheme="http", host=host, port=bound_port))
