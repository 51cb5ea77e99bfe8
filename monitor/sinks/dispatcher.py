"""Delivery: from committed events to every sink that wants them, at least once.

Flow: :meth:`Dispatcher.commit` routes each event to the sinks whose
:class:`~monitor.sinks.base.Route` matches and writes the task memories and
those deliveries to the outbox in one transaction (see :mod:`monitor.store`).
Then one worker per sink sends its deliveries in order, so a slow or dead
sink delays no other, and one task's events arrive in the order they
happened.  A worker with nothing else queued is handed what a commit queues
for it (claimed in the commit's transaction), so news is not read back from
the store before it goes out.

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
from collections import Counter, deque
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


#: Deliveries a lane holds in memory at most; beyond, they wait in the store (a slow sink
#: and a burst of events must not fill the memory).
HANDED_MAX = 64


def _lane(task_id: int | None, lanes: int) -> int:
    """The lane of a task's deliveries (events without a task go in the first)."""
    return abs(task_id or 0) % lanes


class _Lane:
    """One lane of a sink: its wake-up, and the deliveries its worker has in memory.

    While a lane is *clean* (the store holds none of its deliveries that its
    worker does not hold), a commit claims the lane's new deliveries in the
    same transaction and appends them to :attr:`handed`: the worker sends them
    without reading them back from the store, a round trip through the store's
    thread, behind whatever else it is doing, saved on the way to every chat.
    """

    __slots__ = ("clean", "committing", "epoch", "handed", "taken", "touched", "wake")

    def __init__(self) -> None:
        #: Set when a delivery for the lane is queued.
        self.wake = anyio.Event()
        #: Claimed deliveries, in order, for the worker to send.
        self.handed: deque[OutboxRow] = deque()
        #: Whether the store holds no delivery of the lane but those handed or in hand.
        #: Not known at start: the worker reads the store until it finds it empty.
        self.clean = False
        #: Commits for the lane in flight: whichever comes second is not handed over,
        #: since its deliveries must wait for the first one's.
        self.committing = 0
        #: Commits for the lane begun so far (a read that saw none begin saw it all).
        self.touched = 0
        #: Times the worker gave back what it was handed (a failure, a stop): deliveries a
        #: commit claimed before that must wait in the store behind the one to retry.
        self.epoch = 0
        #: The seq of the delivery the worker took last: a handed row at or below it was
        #: read from the store (it raced the commit that claimed it) and is not sent twice,
        #: and a stored row below it is finished, its deletion on the way.
        self.taken = 0

    def take(self) -> OutboxRow | None:
        """The next handed delivery not taken yet."""
        while self.handed:
            row = self.handed.popleft()
            if row.seq > self.taken:
                return row
        return None


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
        #: Each sink's lanes.
        self._lanes = {s.sink.name: [_Lane() for _ in range(s.lanes)] for s in subscriptions}
        #: Deliveries finished beside the sending (see :meth:`_work`), to delete in one go:
        #: with the next commit, or by :meth:`_remove_finished`, whichever comes first.
        self._finished: list[int] = []
        self._finished_added = anyio.Event()
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
        await self._queue(memories, deliveries, self._now().timestamp(), events)

    async def _queue(
        self,
        memories: Sequence[TaskMemory],
        deliveries: Sequence[tuple[str, Event]],
        now: float,
        history: Sequence[Event] = (),
    ) -> None:
        """Commit, then wake each lane a delivery was queued for.

        The deliveries of a clean lane (see :class:`_Lane`) with no other commit
        for it in flight are claimed in the same transaction and handed to its
        worker, up to :data:`HANDED_MAX` held; the rest wait in the store.  The
        finished deliveries not deleted yet go in the same transaction.
        """
        lanes = [self._lane_of(sink, event.task_id) for sink, event in deliveries]
        involved = dict.fromkeys(lanes)  # lanes hash by identity; in order, once each
        # Room in memory for each lane that can be handed its deliveries, and what it takes.
        room = {
            lane: HANDED_MAX - len(lane.handed)
            for lane in involved
            if lane.clean and not lane.committing
        }
        claim: set[int] = set()
        for index, lane in enumerate(lanes):
            if room.get(lane, 0) > 0:
                room[lane] -= 1
                claim.add(index)
            else:
                room.pop(lane, None)  # the rest of this lane waits in the store
                lane.clean = False
        epochs = {lane: lane.epoch for lane in involved}
        for lane in involved:
            lane.committing += 1
            lane.touched += 1
        finished, self._finished = self._finished, []
        try:
            committed = await self._store.commit(
                memories, deliveries, now, history=history, claim=frozenset(claim), done=finished
            )
        except BaseException:
            for lane in involved:  # what was written is not known: read it from the store
                lane.clean = False
            self._finish_later(finished)
            raise
        finally:
            for lane in involved:
                lane.committing -= 1
                lane.wake.set()
        self._queued.update(committed.growth)
        stale: list[int] = []
        for row in committed.claimed:
            lane = self._lane_of(row.sink, row.event.task_id)
            if lane.epoch == epochs[lane]:
                lane.handed.append(row)
            else:  # the worker gave its lane back meanwhile: these wait for their turn
                stale.append(row.seq)
        if stale:
            await self._finish((), stale)

    def _lane_of(self, sink: str, task_id: int | None) -> _Lane:
        lanes = self._lanes[sink]
        return lanes[_lane(task_id, len(lanes))]

    async def run(self) -> None:
        """Deliver until cancelled (and run the sinks' own background work)."""
        try:
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
                group.start_soon(self._remove_finished)
        finally:  # every worker has stopped: nothing finishes after this
            finished, self._finished = self._finished, []
            await self._finish(finished)

    def _finish_later(self, seqs: Sequence[int]) -> None:
        """Have these finished deliveries deleted soon (they are skipped meanwhile)."""
        if seqs:
            self._finished.extend(seqs)
            self._finished_added.set()

    async def _remove_finished(self) -> None:
        """Delete the deliveries finished beside the sending, in batches, until cancelled.

        What is left when the workers stop is deleted by :meth:`run`, before any drain.
        """
        while True:
            await self._finished_added.wait()
            self._finished_added = anyio.Event()
            finished, self._finished = self._finished, []
            await self._finish(finished)

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
        await self._queue([], fresh, now.timestamp())
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
        done: list[int] = []
        try:
            while True:
                row = await self._next(name, lane, done)
                done = []
                if row is None or row.next_attempt > self._now().timestamp() + _CLOCK_SLACK:
                    return
                if not await self._attempt(subscription, row):
                    return
                done = [row.seq]
        finally:
            await self._finish(done)

    async def _next(
        self, sink: str, lane: int, done: Sequence[int] = (), from_seq: int = 0
    ) -> OutboxRow | None:
        """Delete ``done``, then claim the lane's next delivery if due: one store round trip.

        Rows the store drops as unreadable are counted out of the queue.
        """
        return await self._store.next_delivery(
            sink,
            lane=(lane, len(self._lanes[sink])),
            done=done,
            claim_until=self._now().timestamp() + _CLOCK_SLACK,
            on_drop=self._dropped,
            from_seq=from_seq,
        )

    async def _finish(self, done: Sequence[int], unsent: Sequence[int] = ()) -> None:
        """Delete finished deliveries even while being cancelled (else they would go out twice).

        ``unsent`` were claimed and handed over, then not tried: they stay queued.
        """
        with anyio.CancelScope(shield=True):
            if done:
                await self._store.remove(*done)
            if unsent:
                await self._store.release(unsent)

    def _dropped(self, sink: str) -> None:
        """The store deleted an outbox row it could not read: it is no longer queued."""
        self._queued[sink] -= 1

    async def _work(
        self, subscription: Subscription, index: int, limiter: RateLimiter | None
    ) -> None:
        """Send one lane's deliveries in order; the sink's lanes share its rate.

        Deliveries handed over by commits go first (they are older than any the
        store holds beyond them), each deleted beside the next one's sending; a
        delivery read from the store is deleted with the next read.
        """
        name = subscription.sink.name
        lane = self._lanes[name][index]
        done: list[int] = []
        try:
            while True:
                row = lane.take()
                if row is None and not lane.clean:
                    touched = lane.touched
                    row = await self._next(name, index, done, from_seq=lane.taken)
                    done = []
                    if row is None and touched == lane.touched and not lane.committing:
                        lane.clean = True  # no commit for it ran while it was read
                if row is None:
                    if not lane.wake.is_set():
                        await lane.wake.wait()
                    lane.wake = anyio.Event()
                    continue
                lane.taken = row.seq
                wait = row.next_attempt - self._now().timestamp()
                if wait > _CLOCK_SLACK:
                    await self._sleep(wait)
                    continue
                if limiter is not None:
                    await limiter.acquire()
                if not await self._attempt(subscription, row):
                    # It stays at the head of the lane for its retry; what was handed
                    # after it waits in the store, as if never claimed.
                    unsent = [handed.seq for handed in lane.handed]
                    lane.handed.clear()
                    lane.clean = False
                    lane.epoch += 1
                    await self._finish((), unsent)
                elif lane.clean or lane.handed:
                    self._finish_later([row.seq])
                else:
                    done.append(row.seq)
        finally:
            unsent = [handed.seq for handed in lane.handed]
            lane.handed.clear()
            lane.clean = False
            lane.epoch += 1
            await self._finish(done, unsent)

    async def _attempt(self, subscription: Subscription, row: OutboxRow) -> bool:
        """Try one claimed delivery; whether it is finished (delivered or given up).

        The caller deletes a finished delivery.
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
