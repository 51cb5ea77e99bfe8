"""Spacing requests to stay under a rate: SuperOffice and chat services both throttle."""

from __future__ import annotations

import anyio

__all__ = ["RateLimiter"]


class RateLimiter:
    """Lets at most ``rate`` callers per second through, spaced evenly.

    A token bucket of size one: callers wait for their slot in arrival order.
    Spacing (rather than bursts) is what a throttled API wants to see.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            msg = f"rate must be positive, got {rate}"
            raise ValueError(msg)
        self.interval = 1.0 / rate
        self._next = 0.0

    async def acquire(self) -> None:
        """Wait until this caller may go."""
        now = anyio.current_time()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await anyio.sleep(slot - now)
