"""Escalation waits while a silence or a maintenance holds the condition back from people."""

from __future__ import annotations

from datetime import UTC, timedelta

from monitor.delivery.acknowledgements import Acknowledgements
from monitor.delivery.dispatcher import Dispatcher, Subscription
from monitor.delivery.maintenance import Maintenance
from monitor.delivery.sqlite import SqliteStore
from monitor.sinks.base import Route
from monitor.tracking.events import EventType
from monitor.windows import Window
from tests.test_delivery import T0, Destination
from tests.test_escalation import Desk


def _desk(
    store: SqliteStore, boss: Destination, *, quiet: set[int], gate: Maintenance | None = None
) -> Desk:
    """A desk whose dispatcher has a silence over the tasks in ``quiet``, or a maintenance."""
    desk = Desk(store, [])
    desk.dispatcher = Dispatcher(
        [Subscription(boss, Route(), after=1800)],
        store,
        now=desk.time,
        sleep=desk.time.sleep,
        silenced=None if gate else (lambda event: event.task_id in quiet),
        gate=gate,
    )
    desk.acks = Acknowledgements(desk.tracker, store, desk.dispatcher.commit, desk.time)
    return desk


async def _no_wait() -> None:
    """Stands in for the poller's next cycle."""


async def test_a_silenced_task_is_escalated_only_once_its_silence_ends(
    store: SqliteStore,
) -> None:
    """Silenced past ``after``: no escalation; the silence ends: then it goes."""
    boss = Destination("boss")
    quiet = {1}
    desk = _desk(store, boss, quiet=quiet)
    await desk.start()
    await desk.see(0, 1, State="Failed")
    await desk.see(0, 2, State="Failed")
    await desk.tick(31)
    await desk.dispatcher.drain()
    assert [2] == [event.task_id for event in boss.received]

    quiet.clear()
    await desk.tick(40)
    await desk.dispatcher.drain()
    assert [2, 1] == [event.task_id for event in boss.received]


async def test_a_stall_a_maintenance_holds_is_not_escalated(store: SqliteStore) -> None:
    """A stall held back by a maintenance does not reach the escalation sink meanwhile; a
    failure, which a maintenance does not hold, does."""
    boss = Destination("boss")
    start = T0 - timedelta(minutes=1)
    end = start + timedelta(hours=2)
    window = Window(frozenset({start.weekday()}), start.time(), end.time(), UTC, "Test")
    gate = Maintenance([window], clock=lambda: T0)
    desk = _desk(store, boss, quiet=set(), gate=gate)
    await desk.start()
    await gate.check(desk.dispatcher.commit, _no_wait)
    await desk.see(0, 1, State="Started")
    await desk.see(0, 2, State="Started")
    await desk.see(1, 2, State="Failed")
    await desk.see(16, 1, State="Started")  # no change for stall_after (15 min): stalled
    await desk.tick(50)
    await desk.dispatcher.drain()
    told = [(e.task_id, e.type) for e in boss.received if e.task_id is not None]
    assert [(2, EventType.TASK_FAILED)] == told
