"""A sink's delivery lanes: workers that each take the next claimable delivery.

Lanes are dynamic: an idle worker claims the oldest delivery whose task has
nothing in flight (the store keeps that rule, see
:meth:`monitor.types.DeliveryStore.claim`), so one slow task holds up only its
own later events.  This module keeps who is idle and wakes them: no worker
polls the store while there is nothing for it.  A commit claims, in its own
transaction, as many deliveries as workers were idle, and hands them over
here, so they go out without another round trip through the store.
"""

from __future__ import annotations

from collections import deque

import anyio

from monitor.delivery.outbox import Delivery

__all__ = ["Lanes"]


class Lanes:
    """The idle workers of one sink, woken one per delivery that may be claimable."""

    __slots__ = ("_idle", "handed", "news")

    def __init__(self) -> None:
        self._idle: deque[anyio.Event] = deque()
        #: Deliveries claimed by commits for whichever worker comes first.
        self.handed: deque[Delivery] = deque()
        #: Wake-ups so far: a worker that saw it change while it asked the store asks again,
        #: since the news may have come before it was idle.
        self.news = 0

    def wake(self, count: int = 1) -> None:
        """Up to ``count`` idle workers ask the store again."""
        self.news += 1
        for _ in range(min(count, len(self._idle))):
            self._idle.popleft().set()

    @property
    def idle_workers(self) -> int:
        """Workers waiting for news."""
        return len(self._idle)

    def hand(self, deliveries: list[Delivery]) -> None:
        """Claimed deliveries for the workers: wake one per delivery."""
        self.handed.extend(deliveries)
        self.wake(len(deliveries))

    def take(self) -> Delivery | None:
        """The next delivery handed over, if any."""
        return self.handed.popleft() if self.handed else None

    def idle(self) -> anyio.Event:
        """Note a worker as idle: the event is set when it is woken."""
        event = anyio.Event()
        self._idle.append(event)
        return event

    def busy(self, event: anyio.Event) -> None:
        """The worker of ``event`` stopped waiting (woken, its timer ran out, or cancelled)."""
        if event in self._idle:
            self._idle.remove(event)
