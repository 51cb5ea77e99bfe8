"""``batchmon simulate`` as a user starts it: a process of its own, read up to its banner."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

__all__ = ["Simulating", "simulate"]


@dataclass
class Simulating:
    """The banner the command printed, and its exit code once it was stopped."""

    banner: str = ""
    code: int | None = None


@asynccontextmanager
async def simulate(*options: str) -> AsyncIterator[Simulating]:
    """Run ``batchmon simulate --port 0 OPTIONS`` until its banner is out; SIGTERM at the end."""
    process = await anyio.open_process(
        [sys.executable, "-m", "monitor", "simulate", "--port", "0", *options]
    )
    running = Simulating()
    try:
        assert process.stderr is not None
        with anyio.fail_after(20):
            async for chunk in process.stderr:
                running.banner += chunk.decode()
                if "Ctrl-C" in running.banner:
                    break
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            running.code = await process.wait()
        await process.aclose()
