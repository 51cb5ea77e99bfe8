"""Delivery: from committed events to every sink that wants them, at least once.

Flow: :meth:`Dispatcher.commit` routes each event to the sinks whose
:class:`~monitor.sinks.base.Route` matches and writes the task memories and
those deliveries to the outbox in one transaction (see
:class:`~monitor.types.DeliveryStore`).  Then each sink's workers (its lanes,
:mod:`monitor.delivery.lanes`) claim deliveries from the store: an idle
worker takes the oldest delivery whose task has nothing in flight, so a slow
or dead sink delays no other, one slow task delays only its own later events,
and one task's events arrive in the order they happened.

A sink's workers share its rate, with a second's worth allowed as a burst; on
a failure the delivery is kept for a retry after ``max(retry_after,
full-jitter backoff)``, and the task's later events wait behind it; a
permanent failure (4xx) or a delivery older than ``max_age`` is given up,
counted and logged with the destination's answer.  An exception that is not a
:class:`~monitor.sinks.base.DeliveryError` is a bug in the sink, not the
destination's answer: it is logged with its traceback, tried
:data:`MAX_CRASHES` times in all, then given up, so one event a sink cannot
handle does not hold up its task.  Queued ``task.progress`` deliveries of one
task are coalesced by the store (latest wins); state transitions are never
dropped.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio
import structlog

from monitor.delivery.digests import DigestWorker, groups
from monitor.delivery.escalation import Escalations, due_escalations
from monitor.delivery.grouping import Grouping
from monitor.delivery.lanes import Lanes
from monitor.delivery.outbox import Claim, Delivery, Told
from monitor.delivery.reminders import due_reminders
from monitor.histogram import Histogram
from monitor.ratelimit import RateLimiter
from monitor.sinks.base import DeliveryError, Route
from monitor.sinks.log import LogSink
from monitor.tracking.acks import Ack, Condition
from monitor.tracking.events import KINDS, Event
from monitor.tracking.memory import TaskMemory
from monitor.types import BackgroundSink, DeliveryStore, RestorableSink, Sink

__all__ = ["MAX_CRASHES", "Dispatcher", "Gate", "Limiters", "Subscription"]

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
    #: Deliveries in flight at once (workers), each of a different task: one task's
    #: events still go out in order, and a burst is not sent one by one.
    lanes: int = 1
    #: Digests, quiet hours and a cap (a chat sink with any of them has one worker,
    #: :class:`~monitor.delivery.digests.DigestWorker`).
    grouping: Grouping = field(default_factory=Grouping)
    #: Seconds a failed, stalled or gone task must fire unacknowledged before this sink
    #: hears of it (``None``: at once); see :mod:`monitor.delivery.escalation`.
    after: float | None = None
    #: The sink's type (``log``, ``slack``, …): a gate restricts events by it.
    kind: str = ""


class Gate(Protocol):
    """Holds some events back from some sinks (maintenance: :mod:`monitor.delivery.maintenance`)."""

    async def admit(self, events: Sequence[Event]) -> Mapping[str, frozenset[str]]:
        """Take note of a commit's events (durably, before they are queued); those restricted,
        by id, to the sink types they reach."""
        ...

    def held(self, event: Event) -> bool:
        """Whether a condition is held back from people now (its reminders wait too)."""
        ...


#: Timers wake a hair early and datetimes round to microseconds: closer than this is due.
_CLOCK_SLACK = 0.001

#: Attempts at one delivery whose sink raised something other than DeliveryError (a bug)
#: before it is given up: a bug that is not a fluke would block the task's events for good.
MAX_CRASHES = 3


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Limiters:
    """One rate limiter per sink name, shared by every tenant's dispatcher: a destination
    (a Slack webhook, say) allows its rate however many tenants post to it."""

    def __init__(self) -> None:
        self._by_sink: dict[tuple[str, float], RateLimiter] = {}

    def of(self, subscription: Subscription) -> RateLimiter | None:
        """The sink's limiter (made at first ask); ``None`` for a sink without a rate.  A
        sink given another rate (a reload) gets a limiter of that rate."""
        if not math.isfinite(subscription.rate):
            return None
        key = (subscription.sink.name, subscription.rate)
        limiter = self._by_sink.get(key)
        if limiter is None:
            rate = subscription.rate
            limiter = self._by_sink[key] = RateLimiter(rate, burst=max(1, int(rate)))
        return limiter


class Dispatcher:
    """Routes events into the outbox and drains it, with each sink's own workers."""

    #: Attempts at a delivery whose sink keeps crashing before it is given up.
    max_crashes = MAX_CRASHES

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        store: DeliveryStore,
        *,
        now: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        max_age: timedelta = timedelta(hours=24),
        silenced: Callable[[Event], bool] | None = None,
        gate: Gate | None = None,
        limiters: Limiters | None = None,
    ) -> None:
        self._subscriptions = list(subscriptions)
        #: The sinks' rate limiters, shared with the other tenants' dispatchers when given.
        self._limiters = limiters or Limiters()
        #: Whether a silence keeps an event from every sink but the log (decided at fan-out).
        self._silenced = silenced
        self._gate = gate
        self._store = store
        self._now = now
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_age = max_age
        self._lanes = {s.sink.name: Lanes() for s in subscriptions}
        #: Sinks served by a DigestWorker: commits claim nothing for them, only wake it.
        self._grouped = frozenset(s.sink.name for s in subscriptions if groups(s))
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
        #: What the escalation sinks (``after``) were told of.
        self.escalations = Escalations()

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
        """Pick up where the last run stopped: count the outbox, drop unknown sinks, recall
        what escalation sinks were told of (before the first commit routes what ends it)."""
        dropped = await self._store.drop_sinks_except(self.sink_names)
        self.escalations.load(await self._store.told())
        for sink, count in dropped.items():
            log.warning("undelivered_for_removed_sink", sink=sink, events=count)
        self._queued.update(await self._store.pending_counts())
        pending = {name: self._queued[name] for name in self.sink_names if self._queued[name]}
        if pending:
            log.info("outbox_resumed", pending=pending)

    async def commit(
        self,
        events: Sequence[Event],
        memories: Sequence[TaskMemory] = (),
        *,
        acks: Sequence[Ack] = (),
        unacked: Sequence[int] = (),
    ) -> None:
        """Store the memories and queue each event for every sink that wants it, atomically
        (with ``acks`` stored and ``unacked`` tasks' dropped: a person's acknowledgement
        and its announcement)."""
        reach = await self._gate.admit(events) if self._gate is not None else {}
        deliveries = [
            (s.sink.name, event)
            for event in events
            for s in self._subscriptions
            if s.route.matches(event)
            and (event.id not in reach or s.kind in reach[event.id])
            and self._admits(s, event)
            and (s.after is None or self.escalations.passes(s.sink.name, event))
        ]
        if not events and not memories and not acks and not unacked:
            return
        untold = self.escalations.end(events)
        await self._queue(
            memories,
            deliveries,
            self._now().timestamp(),
            events,
            untold=untold,
            acks=acks,
            unacked=unacked,
        )

    def _admits(self, subscription: Subscription, event: Event) -> bool:
        """Whether nothing holds the event back from this sink.

        Silences spare the log, and the end of a condition still reaches a sink that
        keeps conditions (Alertmanager), which would otherwise fire an ended one for good.
        """
        sink = subscription.sink
        if isinstance(sink, LogSink) or self._silenced is None or not self._silenced(event):
            return True
        return isinstance(sink, RestorableSink) and bool(KINDS[event.type].ends)

    async def _queue(
        self,
        memories: Sequence[TaskMemory],
        deliveries: Sequence[tuple[str, Event]],
        now: float,
        history: Sequence[Event] = (),
        *,
        told: Sequence[Told] = (),
        untold: Sequence[tuple[str, int]] = (),
        acks: Sequence[Ack] = (),
        unacked: Sequence[int] = (),
    ) -> None:
        """Commit, claiming a delivery for each idle worker, and hand those over.

        The other workers of a sink something was queued for are woken to look.
        """
        queued = Counter(sink for sink, _ in deliveries)
        claim = {
            sink: min(count, self._lanes[sink].idle_workers)
            for sink, count in queued.items()
            if sink not in self._grouped
        }
        try:
            committed = await self._store.commit(
                memories,
                deliveries,
                now,
                history=history,
                claim=claim,
                told=told,
                untold=untold,
                acks=acks,
                unacked=unacked,
            )
        except BaseException:  # whatever was written, the workers look
            for sink, count in queued.items():
                self._lanes[sink].wake(count)
            raise
        self._queued.update(committed.growth)
        handed: dict[str, list[Delivery]] = {}
        for delivery in committed.claimed:
            handed.setdefault(delivery.sink, []).append(delivery)
        for sink, count in queued.items():
            lanes = self._lanes[sink]
            lanes.hand(handed.get(sink, []))
            lanes.wake(count - len(handed.get(sink, [])))

    async def run(self) -> None:
        """Deliver until cancelled (and run the sinks' own background work)."""
        try:
            async with anyio.create_task_group() as group:
                for subscription in self._subscriptions:
                    limiter = self._limiters.of(subscription)
                    if subscription.sink.name in self._grouped:
                        group.start_soon(DigestWorker(self, subscription, limiter).run)
                    else:
                        for _ in range(subscription.lanes):
                            group.start_soon(self._work, subscription, limiter)
                    if isinstance(subscription.sink, BackgroundSink):
                        group.start_soon(subscription.sink.run)
        finally:  # handed over and never taken: they wait in the store, untried
            unsent = [d.seq for lanes in self._lanes.values() for d in lanes.handed]
            for lanes in self._lanes.values():
                lanes.handed.clear()
            await self._finish((), unsent)

    async def remind(self, firing: Callable[[], Sequence[Event]]) -> None:
        """Re-send failed and stalled tasks to sinks with ``remind_every``, until cancelled.

        ``firing`` gives the current conditions (one event per failed, stalled
        or gone task).  Reminders already recorded are skipped, so a restart
        never repeats one.
        """
        periods = [s.remind_every for s in self._subscriptions if s.remind_every]
        if not periods:
            return
        tick = min(max(min(periods) / 10, 1.0), 60.0)
        while True:
            await self._sleep(tick)
            await self.remind_once(firing())

    async def remind_once(self, conditions: Sequence[Event]) -> None:
        """Queue the reminders that are due now.

        One a silence holds back is recorded as given: the silence's end says what still
        fires, and a held-back reminder must not follow it.  Conditions a maintenance holds
        back get none: the end of the window announces what still fires.
        """
        if self._gate is not None:
            conditions = [event for event in conditions if not self._gate.held(event)]
        now = self._now()
        subscribers = [
            (s.sink.name, s.remind_every, s.route.matches)
            for s in self._subscriptions
            if s.after is None  # theirs start with the escalation: see escalate_once
        ]
        due = due_reminders(subscribers, conditions, now)
        known = await self._store.known_events([event.id for _, event in due])
        fresh = [(sink, event) for sink, event in due if event.id not in known]
        if not fresh:
            return
        by_name = {s.sink.name: s for s in self._subscriptions}
        sent = [(sink, event) for sink, event in fresh if self._admits(by_name[sink], event)]
        held = [event for sink, event in fresh if not self._admits(by_name[sink], event)]
        await self._queue([], sent, now.timestamp(), held)
        log.info("reminders_queued", count=len(sent), held=len(held))

    async def escalate(self, conditions: Callable[[], Sequence[Condition]]) -> None:
        """Send unacknowledged conditions to sinks with ``after`` when due, until cancelled.

        ``conditions`` gives the unacknowledged conditions firing now.  The first
        look is at once: what fell due while batchmon was down goes at start (what
        was escalated before a restart is known from :meth:`start` on).
        """
        periods = [s.after for s in self._subscriptions if s.after is not None]
        if not periods:
            return
        tick = min(max(min(periods) / 10, 1.0), 60.0)
        while True:
            await self.escalate_once(conditions())
            await self._sleep(tick)

    async def escalate_once(self, conditions: Sequence[Condition]) -> None:
        """Queue the escalations due now, and the reminders of those sent.

        An escalation is sent once per sink and condition: each is recorded as told
        with its delivery, so a restart (its records loaded at start) does not send
        it again, however long the condition has lasted.
        A condition a silence or a maintenance holds back is not escalated (nor reminded)
        while it is held.
        """
        conditions = [c for c in conditions if not self._withheld(c.event)]
        now = self._now()
        escalating = [s for s in self._subscriptions if s.after is not None]
        sinks = [(s.sink.name, s.after, s.route.matches) for s in escalating if s.after]
        after = {s.sink.name: s.after or 0.0 for s in escalating}
        fresh = []
        records = []
        for sink, event, condition in due_escalations(sinks, conditions, now):
            record = self.escalations.mark(
                sink, condition, condition.since + timedelta(seconds=after[sink])
            )
            if record is not None:
                records.append(record)
                fresh.append((sink, event))
        for s in escalating:
            told = self.escalations.reminding(s.sink.name, conditions)
            reminders = due_reminders(
                [(s.sink.name, s.remind_every, s.route.matches)],
                [c.event for c in conditions if c.event.id in told],
                now,
                starts=told,
            )
            seen = await self._store.known_events([event.id for _, event in reminders])
            fresh += [(sink, event) for sink, event in reminders if event.id not in seen]
        if not fresh:
            return
        await self._queue([], fresh, now.timestamp(), told=records)
        log.info("escalations_queued", count=len(fresh))

    def _withheld(self, condition: Event) -> bool:
        """Whether a silence or a maintenance holds a condition back from people now."""
        silenced = self._silenced is not None and self._silenced(condition)
        return silenced or (self._gate is not None and self._gate.held(condition))

    async def drain(self) -> None:
        """Send what is due now, once each, without waiting for retries (shutdown).

        The caller bounds it in time; whatever is left stays in the outbox.
        """
        async with anyio.create_task_group() as group:
            for subscription in self._subscriptions:
                if subscription.sink.name in self._grouped:
                    continue  # held for a digest: the next run sends it
                for _ in range(subscription.lanes):
                    group.start_soon(self._flush, subscription)

    async def _flush(self, subscription: Subscription) -> None:
        done: list[int] = []
        try:
            while True:
                claim = await self._claim(subscription.sink.name, done)
                done = []
                if claim.delivery is None:
                    return
                if not await self._attempt(subscription, claim.delivery):
                    return
                done = [claim.delivery.seq]
        finally:
            await self._finish(done)

    async def _claim(self, sink: str, done: Sequence[int]) -> Claim:
        """Finish ``done``, then claim the sink's next due delivery: one store round trip.

        Rows the store drops as unreadable are counted out of the queue.
        """
        claim = await self._store.claim(sink, self._now().timestamp() + _CLOCK_SLACK, done=done)
        self._queued[sink] -= claim.dropped
        return claim

    async def _finish(self, done: Sequence[int], unsent: Sequence[int] = ()) -> None:
        """Delete finished deliveries even while being cancelled (else they would go out twice).

        ``unsent`` were claimed, then not tried: they stay queued.
        """
        with anyio.CancelScope(shield=True):
            if done:
                await self._store.finish(done)
            if unsent:
                await self._store.release(unsent)

    async def _work(self, subscription: Subscription, limiter: RateLimiter | None) -> None:
        """One lane: claim, send, repeat; idle until woken or until a retry is due.

        A finished delivery is deleted with the next claim, in the same round trip.
        """
        name = subscription.sink.name
        lanes = self._lanes[name]
        done: list[int] = []
        claimed: Delivery | None = None  # claimed and not settled yet
        tried = False
        try:
            while True:
                claimed, tried = lanes.take(), False
                if claimed is None:
                    news = lanes.news
                    claim = await self._claim(name, done)
                    done = []
                    claimed = claim.delivery
                    if claimed is None:
                        if lanes.news == news:  # else news came while the store was asked
                            await self._idle(lanes, claim.due_at)
                        continue
                    if claim.more:
                        lanes.wake()
                if limiter is not None:
                    await limiter.acquire()
                tried = True
                if await self._attempt(subscription, claimed):
                    done.append(claimed.seq)  # deleted with the next claim from the store
                claimed = None
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(done, [claimed.seq] if claimed and not tried else ())
                if claimed is not None and tried:  # stopped while sending: due again at once
                    await self._store.retry_later(
                        claimed.seq, claimed.next_attempt, "interrupted by a stop"
                    )

    async def _idle(self, lanes: Lanes, due_at: float | None) -> None:
        """Wait until woken, or until ``due_at`` (epoch seconds) when a retry is due."""
        woken = lanes.idle()
        try:
            if due_at is None:
                await woken.wait()
                return
            delay = due_at - self._now().timestamp()
            if delay <= _CLOCK_SLACK:
                return
            async with anyio.create_task_group() as group:

                async def timer() -> None:
                    await self._sleep(delay)
                    group.cancel_scope.cancel()

                async def wake() -> None:
                    await woken.wait()
                    group.cancel_scope.cancel()

                group.start_soon(timer)
                group.start_soon(wake)
        finally:
            lanes.busy(woken)

    async def _attempt(self, subscription: Subscription, row: Delivery) -> bool:
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
        row: Delivery,
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
