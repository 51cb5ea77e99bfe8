"""Fan-out: one queue and one worker per sink, so a slow sink delays no other.

Events are handed to each sink whose :class:`~monitor.sinks.base.Route`
matches, in the order they were published; a sink sees one task's events in
order.  A failed delivery is logged with the answer and counted; it is never
dropped silently.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from monitor.sinks.base import DeliveryError, Route, Sink
from monitor.tracking.events import Event

__all__ = ["Dispatcher", "Subscription"]

log = structlog.get_logger("batchmon.dispatcher")


@dataclass(frozen=True, slots=True)
class Subscription:
    """A sink and the events it wants."""

    sink: Sink
    route: Route


class Dispatcher:
    """Routes published events to per-sink queues and drains them."""

    def __init__(self, subscriptions: Sequence[Subscription]) -> None:
        self._subscriptions = list(subscriptions)
        self._queues: dict[
            str, tuple[MemoryObjectSendStream[Event], MemoryObjectReceiveStream[Event]]
        ] = {
            s.sink.name: anyio.create_memory_object_stream[Event](math.inf)
            for s in self._subscriptions
        }
        #: Events delivered, by sink name.
        self.delivered: Counter[str] = Counter()
        #: Deliveries that failed, by sink name.
        self.failed: Counter[str] = Counter()

    @property
    def sink_names(self) -> list[str]:
        """The configured sinks, in order."""
        return [s.sink.name for s in self._subscriptions]

    def queued(self, sink_name: str) -> int:
        """Events waiting for a sink."""
        return self._queues[sink_name][1].statistics().current_buffer_used

    async def publish(self, events: Sequence[Event]) -> None:
        """Queue each event for every sink that wants it."""
        for event in events:
            for subscription in self._subscriptions:
                if subscription.route.matches(event):
                    self._queues[subscription.sink.name][0].send_nowait(event)

    async def run(self) -> None:
        """Drain every sink's queue until cancelled."""
        async with anyio.create_task_group() as group:
            for subscription in self._subscriptions:
                group.start_soon(self._drain, subscription.sink)

    async def drain(self) -> None:
        """Deliver what is still queued (at shutdown; the caller bounds it in time)."""
        async with anyio.create_task_group() as group:
            for subscription in self._subscriptions:
                group.start_soon(self._flush, subscription.sink)

    def close(self) -> None:
        """Release the queues; events still in them are dropped with a count in the log."""
        for name, (send, receive) in self._queues.items():
            left = receive.statistics().current_buffer_used
            if left:
                log.warning("undelivered_at_shutdown", sink=name, events=left)
            send.close()
            receive.close()

    async def _flush(self, sink: Sink) -> None:
        receive = self._queues[sink.name][1]
        while True:
            try:
                event = receive.receive_nowait()
            except anyio.WouldBlock:
                return
            await self._deliver(sink, event)

    async def _drain(self, sink: Sink) -> None:
        async for event in self._queues[sink.name][1]:
            await self._deliver(sink, event)

    async def _deliver(self, sink: Sink, event: Event) -> None:
        try:
            await sink.send(event)
        except DeliveryError as exc:
            self.failed[sink.name] += 1
            log.error(
                "delivery_failed",
                sink=sink.name,
                event_id=event.id,
                event_type=event.type.value,
                task_id=event.task_id,
                error=str(exc),
                permanent=exc.permanent,
            )
        else:
            self.delivered[sink.name] += 1
