"""The one worker of a chat sink with a window, quiet hours or a cap: digests from the outbox.

Such a sink is not served by lanes that claim the oldest delivery: its
worker reads the sink's queue, asks :func:`~monitor.delivery.grouping.plan`
what goes out now, claims exactly those rows, posts one message for each
batch (a single event, or a digest of many), and finishes the rows of a
message together.  The rows stay in the outbox until then, so a kill -9
loses nothing; a digest posted but not yet finished is posted again after a
restart (the one in flight), never more.  The cap counts the messages of the
last hour whoever posted them: each is recorded in the store as it goes out
(kept an hour), and a restart starts from that record, not from a fresh hour.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from monitor.delivery.grouping import HOUR, Batch, Grouping, plan
from monitor.sinks.base import DeliveryError
from monitor.sinks.digest import digest_of
from monitor.types import DigestSink

if TYPE_CHECKING:
    from monitor.delivery.dispatcher import Dispatcher, Subscription
    from monitor.delivery.outbox import Delivery
    from monitor.ratelimit import RateLimiter

__all__ = ["DigestWorker", "groups"]

log = structlog.get_logger("batchmon.dispatcher")

#: Timers wake a hair early and datetimes round to microseconds: closer than this is due.
_CLOCK_SLACK = 0.001


def groups(subscription: Subscription) -> bool:
    """Whether the sink's deliveries go through a :class:`DigestWorker`."""
    return subscription.grouping.active and isinstance(subscription.sink, DigestSink)


class DigestWorker:
    """Sends a sink's queue as :func:`~monitor.delivery.grouping.plan` says, until cancelled."""

    def __init__(
        self, dispatcher: Dispatcher, subscription: Subscription, limiter: RateLimiter | None
    ) -> None:
        self._dispatcher = dispatcher
        self._subscription = subscription
        self._limiter = limiter
        if not isinstance(subscription.sink, DigestSink):
            msg = f"sink {subscription.sink.name!r} cannot send digests"
            raise TypeError(msg)
        self._sink: DigestSink = subscription.sink
        self._name = subscription.sink.name
        self._rules: Grouping = subscription.grouping
        #: When the sink's messages of the last hour were posted (for the cap).
        self._sent: deque[float] = deque()

    async def run(self) -> None:
        """Plan, send what is due, and wait for news or the plan's next moment."""
        dispatcher = self._dispatcher
        lanes = dispatcher._lanes[self._name]
        if self._rules.max_per_hour is not None:  # posted before a restart: still counted
            since = dispatcher._now().timestamp() - HOUR
            self._sent.extend(await dispatcher._store.posts(self._name, since))
        while True:
            news = lanes.news
            now = dispatcher._now().timestamp()
            while self._sent and self._sent[0] <= now - HOUR:
                self._sent.popleft()
            rows = await dispatcher._store.queued(self._name)
            decided = plan(rows, now + _CLOCK_SLACK, self._rules, self._sent)
            sent = False
            for batch in decided.batches:
                sent = await self._send(batch) or sent
            if not sent and lanes.news == news:
                await dispatcher._idle(lanes, decided.wake_at)

    async def _send(self, batch: Batch) -> bool:
        """Claim and post one batch; whether anything was tried."""
        dispatcher = self._dispatcher
        deliveries = await dispatcher._store.claim_seqs(self._name, batch.seqs)
        dispatcher._queued[self._name] -= len(batch.seqs) - len(deliveries)
        if not deliveries:
            return False
        if self._limiter is not None:
            await self._limiter.acquire()
        delivered = dispatcher.delivered[self._name]
        if not batch.digest or len(deliveries) == 1:
            done = [d.seq for d in deliveries if await dispatcher._attempt(self._subscription, d)]
            await dispatcher._finish(done)
        else:
            await self._post_digest(batch, deliveries)
        if dispatcher.delivered[self._name] > delivered:  # posted: it counts for the cap
            at = dispatcher._now().timestamp()
            self._sent.append(at)
            if self._rules.max_per_hour is not None:
                await dispatcher._store.record_post(self._name, at, keep_after=at - HOUR)
        return True

    async def _post_digest(self, batch: Batch, deliveries: Sequence[Delivery]) -> None:
        """Post one digest of ``deliveries``; finish them together, or keep them for a retry."""
        dispatcher = self._dispatcher
        digest = digest_of(
            [d.event for d in deliveries],
            held_back=batch.held_back,
            after_quiet=batch.after_quiet,
        )
        fields = {"sink": self._name, "events": digest.events, "tasks": len(digest.entries)}
        try:
            await self._sink.send_digest(digest)
        except DeliveryError as exc:
            await self._failed(deliveries, str(exc), exc.permanent, exc.retry_after, fields)
            return
        except Exception as exc:  # a bug in a sink must not stop its worker
            log.error("sink_crashed", sink=self._name, digest=digest.id, exc_info=exc)
            first = deliveries[0].seq
            dispatcher._crashes[first] += 1
            crashed = dispatcher._crashes[first] >= dispatcher.max_crashes
            message = f"{type(exc).__name__}: {exc}"
            await self._failed(deliveries, message, crashed, None, fields)
            return
        dispatcher._crashes.pop(deliveries[0].seq, None)
        await dispatcher._finish([d.seq for d in deliveries])
        dispatcher._queued[self._name] -= len(deliveries)
        dispatcher.delivered[self._name] += len(deliveries)
        histogram = dispatcher.latency[self._name]
        for delivery in deliveries:
            histogram.observe(max((dispatcher._now() - delivery.event.time).total_seconds(), 0))
        log.info("digest_sent", held_back=batch.held_back, after_quiet=batch.after_quiet, **fields)

    async def _failed(
        self,
        deliveries: Sequence[Delivery],
        error: str,
        permanent: bool,
        retry_after: float | None,
        fields: dict[str, object],
    ) -> None:
        """Give the digest's deliveries up together, or keep them together for one retry."""
        dispatcher = self._dispatcher
        dispatcher.failed[self._name] += 1
        now = dispatcher._now().timestamp()
        attempts = max(d.attempts for d in deliveries) + 1
        too_old = now - min(d.created for d in deliveries) > dispatcher._max_age.total_seconds()
        if permanent or too_old:
            reason = "rejected by the destination" if permanent else "too old to be worth sending"
            dispatcher._crashes.pop(deliveries[0].seq, None)
            await dispatcher._finish([d.seq for d in deliveries])
            dispatcher._queued[self._name] -= len(deliveries)
            dispatcher.given_up[self._name] += len(deliveries)
            log.error("digest_given_up", reason=reason, error=error, attempts=attempts, **fields)
            return
        ceiling = min(
            dispatcher._backoff_cap, dispatcher._backoff_base * 2 ** min(attempts - 1, 30)
        )
        delay = max(retry_after or 0.0, dispatcher._rng.uniform(0, ceiling))
        for delivery in deliveries:
            await dispatcher._store.retry_later(delivery.seq, now + delay, error)
        log.warning("digest_failed", retry_in=round(delay, 3), error=error, **fields)
