"""Spacing requests to stay under a rate: SuperOffice and chat services both throttle."""

from __future__ import annotations

import anyio

__all__ = ["RateLimiter"]


class RateLimiter:
    """Lets at most ``rate`` callers per second through, with bursts of at most ``burst``.

    The generic cell rate algorithm (a token bucket of ``burst`` tokens): callers
    wait for their slot in arrival order.  ``burst=1`` spaces every caller evenly,
    which is what a throttled API wants to see; chat services count per window
    (Discord 5 per 2 s, Slack "1 per second, short bursts allowed"), so a sink
    may send a second's worth at once and then keeps to the rate.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0:
            msg = f"rate must be positive, got {rate}"
            raise ValueError(msg)
        if burst < 1:
            msg = f"burst must be at least 1, got {burst}"
            raise ValueError(msg)
        self.interval = 1.0 / rate
        #: How far ahead of the even schedule a caller may go.
        self._tolerance = (burst - 1) * self.interval
        #: When the next caller would go if callers were evenly spaced.
        self._theoretical = 0.0

    async def acquire(self) -> None:
        """Wait until this caller may go."""
        now = anyio.current_time()
        theoretical = max(self._theoretical, now)
        slot = max(now, theoretical - self._tolerance)
        self._theoretical = theoretical + self.interval
        if slot > now:
            await anyio.sleep(slot - now)
