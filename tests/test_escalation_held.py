"""Escalation waits while a silence or a maintenance holds the condition back from people."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monitor.delivery.acknowledgements import Acknowledgements
from monitor.delivery.dispatcher import Dispatcher, Subscription
from monitor.delivery.sqlite import SqliteStore
from monitor.sinks.base import Route
from monitor.tracking.events import Event
from tests.test_delivery import Destination
from tests.test_escalation import Desk


class Holding:
    """A maintenance gate holding back the conditions of the tasks in ``held``."""

    def __init__(self, held: set[int]) -> None:
        self.tasks = held

    async def admit(self, events: Sequence[Event]) -> Mapping[str, frozenset[str]]:
        return {}

    def held(self, event: Event) -> bool:
        return event.task_id in self.tasks


def _desk(store: SqliteStore, boss: Destination, *, quiet: set[int], gate: bool) -> Desk:
    """A desk whose dispatcher has a silence (or a maintenance) over the tasks in ``quiet``."""
    desk = Desk(store, [])
    desk.dispatcher = Dispatcher(
        [Subscription(boss, Route(), after=1800)],
        store,
        now=desk.time,
        sleep=desk.time.sleep,
        silenced=None if gate else (lambda event: event.task_id in quiet),
        gate=Holding(quiet) if gate else None,
    )
    desk.acks = Acknowledgements(desk.tracker, store, desk.dispatcher.commit, desk.time)
    return desk


async def test_a_silenced_task_is_escalated_only_once_its_silence_ends(
    store: SqliteStore,
) -> None:
    """Silenced past ``after``: no escalation; the silence ends: then it goes."""
    boss = Destination("boss")
    quiet = {1}
    desk = _desk(store, boss, quiet=quiet, gate=False)
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


async def test_a_condition_a_maintenance_holds_is_not_escalated(store: SqliteStore) -> None:
    """A stall held back by a maintenance does not reach the escalation sink meanwhile."""
    boss = Destination("boss")
    desk = _desk(store, boss, quiet={1}, gate=True)
    await desk.start()
    await desk.see(0, 1, State="Failed")
    await desk.tick(45)
    await desk.dispatcher.drain()
    assert [] == boss.received
