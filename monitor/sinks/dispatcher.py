"""Delivery: from committed events to every sink that wants them, at least once.

Flow: :meth:`Dispatcher.commit` routes each event to the sinks whose
:class:`~monitor.sinks.base.Route` matches and writes the task memories and
those deliveries to the outbox in one transaction (see :mod:`monitor.store`).
Then one worker per sink sends its deliveries in order, so a slow or dead
sink delays no other, and one task's events arrive in the order they
happened.

A sink's workers (one per lane: tasks split by id, so that one task's events
stay in order while a burst goes out several at a time) share the sink's rate,
with a second's worth allowed as a burst; on a failure a worker retries the
same delivery (the head of its lane) after ``max(retry_after, full-jitter
backoff)``; a permanent failure (4xx) or a delivery older than ``max_age`` is
given up, counted and logged with the destination's answer.  An exception
that is not a :class:`~monitor.sinks.base.DeliveryError` is a bug in the sink,
not the destination's answer: it is logged with its traceback, tried
:data:`MAX_CRASHES` times in all, then given up, so one event a sink cannot
handle does not hold up its queue.  Queued ``task.progress`` deliveries of one
task are coalesced by the store (latest wins); state transitions are never
dropped.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import anyio
import structlog

from monitor.histogram import Histogram
from monitor.ratelimit import RateLimiter
from monitor.sinks.base import BackgroundSink, DeliveryError, Route, Sink
from monitor.store import OutboxRow, Store
from monitor.tracking.events import Event, EventType, event_id
from monitor.tracking.memory import TaskMemory

__all__ = ["MAX_CRASHES", "Dispatcher", "Subscription"]

log = structlog.get_logger("batchmon.dispatcher")


@dataclass(frozen=True, slots=True)
class Subscription:
    """A sink, the events it wants, and how fast it may be sent to."""

    sink: Sink
    route: Route
    #: Deliveries per second (``inf``: as fast as it answers).
    rate: float = math.inf
    #: Seconds between reminders of a task that stays failed or stalled (``None``: never).
    remind_every: float | None = None
    #: Deliveries in flight at once, each in its own lane of tasks (by id): one task's
    #: events still go out in order, and a burst is not sent one by one.
    lanes: int = 1


#: Conditions worth a reminder while they last.
_REMINDED = frozenset({EventType.TASK_FAILED, EventType.TASK_STALLED})


def _hours(seconds: float) -> str:
    """``5400`` → ``1h30m``: how long a condition has lasted, for a chat line."""
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m"


#: Timers wake a hair early and datetimes round to microseconds: closer than this is due.
_CLOCK_SLACK = 0.001

#: Attempts at one delivery whose sink raised something other than DeliveryError (a bug)
#: before it is given up: a bug that is not a fluke would block the sink's queue for good.
MAX_CRASHES = 3


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _lane(task_id: int | None, lanes: int) -> int:
    """The lane of a task's deliveries (events without a task go in the first)."""
    return abs(task_id or 0) % lanes


class Dispatcher:
    """Routes events into the outbox and drains it, one worker per sink."""

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        store: Store,
        *,
        now: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        max_age: timedelta = timedelta(hours=24),
    ) -> None:
        self._subscriptions = list(subscriptions)
        self._store = store
        self._now = now
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_age = max_age
        #: One wake-up per lane of each sink, set when a delivery for it is queued.
        self._wake = {s.sink.name: [anyio.Event() for _ in range(s.lanes)] for s in subscriptions}
        self._lanes = {s.sink.name: s.lanes for s in self._subscriptions}
        self._queued: Counter[str] = Counter()
        #: Unexpected exceptions of the sink at each outbox row (by seq) still queued.
        self._crashes: Counter[int] = Counter()
        #: Events delivered, by sink name.
        self.delivered: Counter[str] = Counter()
        #: Delivery attempts that failed, by sink name.
        self.failed: Counter[str] = Counter()
        #: Deliveries given up (permanent failure, too old, or the sink kept crashing), by sink.
        self.given_up: Counter[str] = Counter()
        #: Seconds from detection to delivery, by sink name.
        self.latency = {s.sink.name: Histogram() for s in self._subscriptions}

    @property
    def sink_names(self) -> list[str]:
        """The configured sinks, in order."""
        return [s.sink.name for s in self._subscriptions]

    @property
    def sinks(self) -> list[Sink]:
        """The configured sinks, in order."""
        return [s.sink for s in self._subscriptions]

    def queued(self, sink_name: str) -> int:
        """Deliveries waiting in the outbox for a sink."""
        return self._queued[sink_name]

    async def start(self) -> None:
        """Pick up where the last run stopped: count the outbox, drop unknown sinks."""
        dropped = await self._store.drop_sinks_except(self.sink_names)
        for sink, count in dropped.items():
            log.warning("undelivered_for_removed_sink", sink=sink, events=count)
        self._queued.update(await self._store.outbox_counts())
        pending = {name: self._queued[name] for name in self.sink_names if self._queued[name]}
        if pending:
            log.info("outbox_resumed", pending=pending)

    async def commit(self, events: Sequence[Event], memories: Sequence[TaskMemory] = ()) -> None:
        """Store the memories and queue each event for every sink that wants it, atomically."""
        deliveries = [
            (s.sink.name, event)
            for event in events
            for s in self._subscriptions
            if s.route.matches(event)
        ]
        if not events and not memories:
            return
        growth = await self._store.commit(
            memories, deliveries, self._now().timestamp(), history=events
        )
        self._queued.update(growth)
        self._wake_for(deliveries)

    def _wake_for(self, deliveries: Sequence[tuple[str, Event]]) -> None:
        """Wake the lane each queued delivery belongs to."""
        for sink, event in deliveries:
            self._wake[sink][_lane(event.task_id, self._lanes[sink])].set()

    async def run(self) -> None:
        """Deliver until cancelled (and run the sinks' own background work)."""
        async with anyio.create_task_group() as group:
            for subscription in self._subscriptions:
                limiter = (
                    RateLimiter(subscription.rate, burst=max(1, int(subscription.rate)))
                    if math.isfinite(subscription.rate)
                    else None
                )
                for lane in range(subscription.lanes):
                    group.start_soon(self._work, subscription, lane, limiter)
                if isinstance(subscription.sink, BackgroundSink):
                    group.start_soon(subscription.sink.run)

    async def remind(self, firing: Callable[[], Sequence[Event]]) -> None:
        """Re-send failed and stalled tasks to sinks with ``remind_every``, until cancelled.

        ``firing`` gives the current conditions (one event per failed, stalled
        or gone task).  The n-th reminder of a condition has a fixed id, and ids
        already recorded are skipped, so a restart never repeats a reminder.
        """
        periods = [s.remind_every for s in self._subscriptions if s.remind_every]
        if not periods:
            return
        tick = min(max(min(periods) / 10, 1.0), 60.0)
        while True:
            await self._sleep(tick)
            await self.remind_once(firing())

    async def remind_once(self, conditions: Sequence[Event]) -> None:
        """Queue the reminders that are due now."""
        now = self._now()
        due: list[tuple[str, Event]] = []
        for subscription in self._subscriptions:
            every = subscription.remind_every
            if not every:
                continue
            for condition in conditions:
                if condition.type not in _REMINDED or not subscription.route.matches(condition):
                    continue
                lasting = (now - condition.time).total_seconds()
                count = int(lasting // every)
                if count < 1:
                    continue
                state = "failed" if condition.type is EventType.TASK_FAILED else "stalled"
                reminder = replace(
                    condition,
                    id=event_id("reminder", subscription.sink.name, condition.id, count),
                    time=now,
                    message=f"Reminder {count}: still {state} after {_hours(lasting)}",
                )
                due.append((subscription.sink.name, reminder))
        known = await self._store.known_events([event.id for _, event in due])
        fresh = [(sink, event) for sink, event in due if event.id not in known]
        if not fresh:
            return
        growth = await self._store.commit([], fresh, now.timestamp())
        self._queued.update(growth)
        self._wake_for(fresh)
        log.info("reminders_queued", count=len(fresh))

    async def drain(self) -> None:
        """Send what is due now, once each, without waiting for retries (shutdown).

        The caller bounds it in time; whatever is left stays in the outbox.
        """
        async with anyio.create_task_group() as group:
            for subscription in self._subscriptions:
                for lane in range(subscription.lanes):
                    group.start_soon(self._flush, subscription, lane)

    async def _flush(self, subscription: Subscription, lane: int) -> None:
        name = subscription.sink.name
        done: int | None = None
        try:
            while True:
                row = await self._next(name, lane, done)
                done = None
                if row is None or row.next_attempt > self._now().timestamp() + _CLOCK_SLACK:
                    return
                if not await self._attempt(subscription, row):
                    return
                done = row.seq
        finally:
            await self._finish(done)

    async def _next(self, sink: str, lane: int, done: int | None = None) -> OutboxRow | None:
        """Delete ``done``, then claim the lane's next delivery if due: one store round trip.

        Rows the store drops as unreadable are counted out of the queue.
        """
        return await self._store.next_delivery(
            sink,
            lane=(lane, self._lanes[sink]),
            done=done,
            claim_until=self._now().timestamp() + _CLOCK_SLACK,
            on_drop=self._dropped,
        )

    async def _finish(self, done: int | None) -> None:
        """Delete a finished delivery even while being cancelled (else it would go out twice)."""
        if done is not None:
            with anyio.CancelScope(shield=True):
                await self._store.remove(done)

    def _dropped(self, sink: str) -> None:
        """The store deleted an outbox row it could not read: it is no longer queued."""
        self._queued[sink] -= 1

    async def _work(
        self, subscription: Subscription, lane: int, limiter: RateLimiter | None
    ) -> None:
        """Send one lane's deliveries in order; the sink's lanes share its rate."""
        name = subscription.sink.name
        wake = self._wake[name]
        done: int | None = None
        try:
            while True:
                row = await self._next(name, lane, done)
                done = None
                if row is None:
                    await wake[lane].wait()
                    wake[lane] = anyio.Event()
                    continue
                wait = row.next_attempt - self._now().timestamp()
                if wait > _CLOCK_SLACK:
                    await self._sleep(wait)
                    continue
                if limiter is not None:
                    await limiter.acquire()
                if await self._attempt(subscription, row):
                    done = row.seq
        finally:
            await self._finish(done)

    async def _attempt(self, subscription: Subscription, row: OutboxRow) -> bool:
        """Try one claimed delivery; whether it is finished (delivered or given up).

        A finished delivery is deleted by the caller's next :meth:`_next`.
        """
        sink, event = subscription.sink, row.event
        try:
            await sink.send(event)
        except DeliveryError as exc:
            return await self._failed(
                sink.name, row, exc, permanent=exc.permanent, retry_after=exc.retry_after
            )
        except Exception as exc:  # a bug in a sink must not stop its worker
            self._crashes[row.seq] += 1
            crashes = self._crashes[row.seq]
            if crashes == 1:  # the traceback once; delivery_failed says each time it failed
                log.error("sink_crashed", sink=sink.name, event_id=event.id, exc_info=exc)
            return await self._failed(
                sink.name, row, exc, permanent=False, retry_after=None, crashes=crashes
            )
        self._crashes.pop(row.seq, None)
        self._queued[sink.name] -= 1
        self.delivered[sink.name] += 1
        self.latency[sink.name].observe(max((self._now() - event.time).total_seconds(), 0.0))
        return True

    async def _failed(
        self,
        sink: str,
        row: OutboxRow,
        error: Exception,
        *,
        permanent: bool,
        retry_after: float | None,
        crashes: int = 0,
    ) -> bool:
        """Count a failed attempt; give the delivery up (``True``) or schedule the next one.

        ``crashes`` is how often the sink raised something unexpected on this
        delivery, counting this attempt (``0``: the destination's answer, a
        :class:`DeliveryError`).
        """
        self.failed[sink] += 1
        now = self._now().timestamp()
        attempts = row.attempts + 1
        message = f"{type(error).__name__}: {error}" if crashes else str(error)
        fields = {
            "sink": sink,
            "event_id": row.event.id,
            "event_type": row.event.type.value,
            "task_id": row.event.task_id,
            "attempts": attempts,
            "error": message,
        }
        reason: str | None = None
        if permanent:
            reason = "rejected by the destination"
        elif crashes >= MAX_CRASHES:
            reason = f"internal error: the sink crashed {crashes} times on this event"
        elif now - row.created > self._max_age.total_seconds():
            reason = "too old to be worth sending"
        if reason is not None:
            self._crashes.pop(row.seq, None)
            self._queued[sink] -= 1
            self.given_up[sink] += 1
            log.error("delivery_given_up", reason=reason, **fields)
            return True
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** min(attempts - 1, 30))
        delay = max(retry_after or 0.0, self._rng.uniform(0, ceiling))
        await self._store.retry_later(row.seq, now + delay, message)
        log.warning("delivery_failed", retry_in=round(delay, 3), **fields)
        return False
