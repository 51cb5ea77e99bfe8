"""Maintenance in the dispatcher: held-back events, the end-of-window summary, the tenant state.

A real dispatcher and store; stand-in destinations record what each sink type gets; the
clock is moved by hand; the tenant state comes from the simulator's status API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from monitor.delivery.dispatcher import Dispatcher, Subscription
from monitor.delivery.maintenance import Maintenance
from monitor.delivery.sqlite import SqliteStore
from monitor.simulator import OnlineTenant, Simulator
from monitor.sinks.alertmanager import alerts_for
from monitor.sinks.base import Route
from monitor.tracking.events import Event, EventType, event_id
from monitor.tracking.maintenance import Hold
from monitor.types import DeliveryStore
from monitor.windows import Window
from tests.conftest import ManualClock, StoreOpener, make_task_event
from tests.test_delivery import Destination, dispatching, until
from tests.test_tenant import client_for


def _api_down(at: datetime) -> Event:
    return Event(
        id=event_id("down", at), type=EventType.MONITOR_API_DOWN, time=at, message="timeout"
    )


def _window_around(clock: ManualClock, minutes: int = 60) -> Window:
    """A window that opened a minute ago and closes ``minutes`` later, in UTC."""
    start = clock() - timedelta(minutes=1)
    end = start + timedelta(minutes=minutes)
    return Window(frozenset({start.weekday()}), start.time(), end.time(), UTC, "Test")


#: One step of a run, with its gate, dispatcher and store.
Step = Callable[[Maintenance, Dispatcher, DeliveryStore], Awaitable[None]]


async def _no_wait() -> None:
    """Stands in for the poller's next cycle."""


def _not_slowed(slow: bool) -> None:
    assert not slow


class Sinks:
    """One stand-in destination per kind of sink."""

    def __init__(self) -> None:
        self.log = Destination("log")
        self.alerts = Destination("alerts")
        self.chat = Destination("chat")

    def subscriptions(self, remind_every: float | None = None) -> list[Subscription]:
        return [
            Subscription(self.log, Route(), kind="log"),
            Subscription(self.alerts, Route(), kind="alertmanager"),
            Subscription(self.chat, Route(), kind="slack", remind_every=remind_every),
        ]

    @staticmethod
    def types(destination: Destination) -> list[EventType]:
        return [event.type for event in destination.received]


@pytest.fixture(name="sinks")
def _sinks() -> Sinks:
    return Sinks()


class TestWindow:
    async def test_held_then_summarised(
        self, store: SqliteStore, clock: ManualClock, sinks: Sinks
    ) -> None:
        """In a window the chat hears the start and the failure; the log and Alertmanager hear
        everything; at the end the chat gets one summary and what still fires."""
        gate = Maintenance([_window_around(clock)], clock=clock)
        dispatcher = Dispatcher(sinks.subscriptions(), store, gate=gate)
        async with dispatching(dispatcher):
            await gate.check(dispatcher.commit, _no_wait)
            assert gate.in_maintenance()
            await dispatcher.commit(
                [
                    _api_down(clock()),
                    make_task_event(EventType.TASK_STALLED, id=212, name="Export", time=clock()),
                    make_task_event(EventType.TASK_FAILED, id=213, name="Import", time=clock()),
                ]
            )
            await until(lambda: len(sinks.log.received) == 4)
            clock.advance(3600)
            await gate.check(dispatcher.commit, _no_wait)
            await until(lambda: len(sinks.chat.received) == 5)

        started, ended = EventType.MONITOR_MAINTENANCE_STARTED, EventType.MONITOR_MAINTENANCE_ENDED
        down, stalled = EventType.MONITOR_API_DOWN, EventType.TASK_STALLED
        assert [started, EventType.TASK_FAILED, ended, down, stalled] == sinks.types(sinks.chat)
        assert [started, down, stalled, EventType.TASK_FAILED] == sinks.types(sinks.log)[:4]
        assert sinks.types(sinks.log) == sinks.types(sinks.alerts)
        summary = sinks.chat.received[2].message
        assert summary is not None
        assert "Failed: Import (#213).\nStalled: Export (#212).\n" in summary
        assert summary.endswith("Still stalled: Export (#212).\nThe API was down, and still is.")
        assert not gate.in_maintenance()

    async def test_a_quiet_window_still_says_it_ended(
        self, store: SqliteStore, clock: ManualClock, sinks: Sinks
    ) -> None:
        """A window in which nothing happened: start and end, nothing else."""
        gate = Maintenance([_window_around(clock, minutes=30)], clock=clock)
        dispatcher = Dispatcher(sinks.subscriptions(), store, gate=gate)
        async with dispatching(dispatcher):
            await gate.check(dispatcher.commit, _no_wait)
            await gate.check(dispatcher.commit, _no_wait)  # still in it: nothing new
            clock.advance(1800)
            await gate.check(dispatcher.commit, _no_wait)
            await until(lambda: len(sinks.chat.received) == 2)

        assert [
            EventType.MONITOR_MAINTENANCE_STARTED,
            EventType.MONITOR_MAINTENANCE_ENDED,
        ] == sinks.types(sinks.chat)

    async def test_reminders_of_held_conditions_wait(
        self, store: SqliteStore, clock: ManualClock, sinks: Sinks
    ) -> None:
        """A stall held back is not reminded during the window; one people know of is."""
        gate = Maintenance([_window_around(clock)], clock=clock)
        dispatcher = Dispatcher(sinks.subscriptions(remind_every=60), store, gate=gate, now=clock)
        known = make_task_event(EventType.TASK_STALLED, id=300, time=clock() - timedelta(hours=1))
        held = make_task_event(EventType.TASK_STALLED, id=212, time=clock())
        async with dispatching(dispatcher):
            await dispatcher.commit([known])
            await gate.check(dispatcher.commit, _no_wait)
            await dispatcher.commit([held])
            clock.advance(600)
            await dispatcher.remind_once([known, held])
            await until(lambda: len(sinks.chat.received) == 3)

        assert [(300, EventType.TASK_STALLED), (None, EventType.MONITOR_MAINTENANCE_STARTED)] == [
            (e.task_id, e.type) for e in sinks.chat.received[:2]
        ]
        assert 300 == sinks.chat.received[2].task_id

    async def test_the_loop_wakes_at_the_window_edges(
        self, store: SqliteStore, sinks: Sinks
    ) -> None:
        """run() sleeps until a window opens or closes: a three-second window on the wall
        clock, opening in a second or two, gives a start and an end."""
        now = datetime.now().astimezone()
        start = (now + timedelta(seconds=2)).replace(microsecond=0)
        window = Window(
            frozenset({start.weekday()}),
            start.time(),
            (start + timedelta(seconds=3)).time(),
            start.tzinfo,  # type: ignore[arg-type]
            "Blink",
        )
        gate = Maintenance([window], clock=lambda: datetime.now().astimezone())
        dispatcher = Dispatcher(sinks.subscriptions(), store, gate=gate)
        async with dispatching(dispatcher), anyio.create_task_group() as group:
            group.start_soon(lambda: gate.run(dispatcher.commit, settle=_no_wait, slow=_not_slowed))
            await until(lambda: len(sinks.chat.received) == 2, within=20)
            group.cancel_scope.cancel()

        assert [
            EventType.MONITOR_MAINTENANCE_STARTED,
            EventType.MONITOR_MAINTENANCE_ENDED,
        ] == sinks.types(sinks.chat)


class TestRestart:
    """The maintenance outlives a restart: a new gate and dispatcher over the same database."""

    @staticmethod
    async def _run(
        open_backend: StoreOpener, window: Window, clock: ManualClock, sinks: Sinks, *steps: Step
    ) -> DeliveryStore:
        """One run: load the gate, check, take each step; the store, closed, is returned."""
        store = await open_backend()
        gate = Maintenance([window], clock=clock)
        await gate.load(store)
        dispatcher = Dispatcher(sinks.subscriptions(), store, gate=gate)
        async with dispatching(dispatcher):
            await gate.check(dispatcher.commit, _no_wait)
            for step in steps:
                await step(gate, dispatcher, store)
            await until(lambda: not dispatcher.queued("chat") and not dispatcher.queued("log"))
        await store.close()
        return store

    async def test_one_start_and_one_summary_of_the_whole_window(
        self, open_backend: StoreOpener, clock: ManualClock, sinks: Sinks
    ) -> None:
        """An outage and a stall before the restart, a stall after: one start in all, and the
        summary at the end names them all; each held condition is announced once."""
        window = _window_around(clock)

        async def before(gate: Maintenance, dispatcher: Dispatcher, store: DeliveryStore) -> None:
            await dispatcher.commit(
                [
                    _api_down(clock()),
                    make_task_event(EventType.TASK_STALLED, id=212, name="Export", time=clock()),
                    make_task_event(EventType.TASK_FAILED, id=213, name="Import", time=clock()),
                ]
            )

        async def after(gate: Maintenance, dispatcher: Dispatcher, store: DeliveryStore) -> None:
            assert gate.in_maintenance()
            stall = make_task_event(EventType.TASK_STALLED, id=214, name="Sync", time=clock())
            await dispatcher.commit([stall])
            clock.advance(3000)
            await gate.check(dispatcher.commit, _no_wait)

        await self._run(open_backend, window, clock, sinks, before)
        clock.advance(600)
        store = await self._run(open_backend, window, clock, sinks, after)

        started, ended = EventType.MONITOR_MAINTENANCE_STARTED, EventType.MONITOR_MAINTENANCE_ENDED
        down, stalled = EventType.MONITOR_API_DOWN, EventType.TASK_STALLED
        assert [started, EventType.TASK_FAILED, ended, down, stalled, stalled] == sinks.types(
            sinks.chat
        )
        assert {212, 214} == {event.task_id for event in sinks.chat.received[4:]}
        summary = sinks.chat.received[2].message
        assert summary is not None
        assert "Failed: Import (#213).\nStalled: Export (#212), Sync (#214).\n" in summary
        assert summary.endswith("The API was down, and still is.")
        assert "12:00 UTC to 13:00 UTC (1 h 0 min)" in summary  # from the start, not the restart
        store = await open_backend()
        assert Hold() == await store.hold()  # nothing kept once the summary went out
        await store.close()

    async def test_a_window_that_ended_while_down_is_summarised_once(
        self, open_backend: StoreOpener, clock: ManualClock, sinks: Sinks
    ) -> None:
        """Stopped inside a window, started after its end: the summary and what still fires,
        once; a further restart says nothing more."""
        window = _window_around(clock)

        async def held(gate: Maintenance, dispatcher: Dispatcher, store: DeliveryStore) -> None:
            stall = make_task_event(EventType.TASK_STALLED, id=212, name="Export", time=clock())
            await dispatcher.commit([_api_down(clock()), stall])

        await self._run(open_backend, window, clock, sinks, held)
        clock.advance(2 * 3600)
        await self._run(open_backend, window, clock, sinks)
        await self._run(open_backend, window, clock, sinks)

        assert [
            EventType.MONITOR_MAINTENANCE_STARTED,
            EventType.MONITOR_MAINTENANCE_ENDED,
            EventType.MONITOR_API_DOWN,
            EventType.TASK_STALLED,
        ] == sinks.types(sinks.chat)
        summary = sinks.chat.received[1].message
        assert summary is not None
        assert "Stalled: Export (#212).\nStill stalled: Export (#212)." in summary

    async def test_a_stop_between_sending_and_storing_repeats_nothing(
        self, open_backend: StoreOpener, clock: ManualClock, sinks: Sinks
    ) -> None:
        """Stopped after the start, or the summary, was queued but before the state saying so
        was stored: neither goes out twice (their ids are the maintenance's)."""
        window = _window_around(clock)
        kept: list[Hold] = []

        async def unannounced(
            gate: Maintenance, dispatcher: Dispatcher, store: DeliveryStore
        ) -> None:
            hold = await store.hold()
            assert hold.ledger is not None
            await store.put_hold(Hold(ledger=replace(hold.ledger, announced=False)))

        async def remember(gate: Maintenance, dispatcher: Dispatcher, store: DeliveryStore) -> None:
            kept.append(await store.hold())

        async def ended(gate: Maintenance, dispatcher: Dispatcher, store: DeliveryStore) -> None:
            await gate.check(dispatcher.commit, _no_wait)
            await store.put_hold(kept[0])

        await self._run(open_backend, window, clock, sinks, unannounced)
        await self._run(open_backend, window, clock, sinks, remember)
        clock.advance(3600)
        await self._run(open_backend, window, clock, sinks, ended)
        await self._run(open_backend, window, clock, sinks)

        assert [
            EventType.MONITOR_MAINTENANCE_STARTED,
            EventType.MONITOR_MAINTENANCE_ENDED,
        ] == sinks.types(sinks.chat)
        store = await open_backend()
        assert Hold() == await store.hold()
        await store.close()


class TestAlertmanagerLabel:
    @pytest.mark.parametrize(
        ("kind", "maintenance", "marked"),
        [
            (EventType.TASK_STALLED, True, True),
            (EventType.MONITOR_API_DOWN, True, True),
            (EventType.TASK_FAILED, True, False),  # a failure is never muted
            (EventType.TASK_STALLED, False, False),
        ],
    )
    def test_label(self, kind: EventType, maintenance: bool, marked: bool) -> None:
        """Held-back alerts carry maintenance="true" during a maintenance, others never."""
        event = make_task_event(kind) if kind.value.startswith("task.") else _api_down(T_ANY)
        fired = alerts_for(event, maintenance=maintenance).fired
        assert fired is not None
        assert marked == ("maintenance" in fired.labels)
        if marked:
            assert "true" == fired.labels["maintenance"]


T_ANY = datetime(2026, 12, 5, 20, 0, tzinfo=UTC)


class StateLog:
    """What the gate asked of the poller: slow down, speed up."""

    def __init__(self) -> None:
        self.slowed: list[bool] = []

    def __call__(self, slow: bool) -> None:
        self.slowed.append(slow)


class TestTenantState:
    async def _follow(
        self,
        sim: Simulator,
        clock: ManualClock,
        states: Sequence[str],
        store: SqliteStore,
        sinks: Sinks,
    ) -> tuple[Maintenance, StateLog]:
        """The gate follows the simulator's tenant through ``states``, one check each."""
        slowed = StateLog()
        async with client_for(sim, clock) as client:
            assert client.tenant is not None
            gate = Maintenance([], clock=clock, tenant=client.tenant)
            dispatcher = Dispatcher(sinks.subscriptions(), store, gate=gate)
            async with dispatching(dispatcher):
                for state in states:
                    assert sim.tenant is not None
                    sim.tenant.state = state
                    clock.advance(61)
                    found, _ = await client.tenant.current_state()
                    await gate.take_tenant_state(found, dispatcher.commit, _no_wait, slowed)
                    await gate.check(dispatcher.commit, _no_wait)
                    if state in ("OfflineMaintenance", "Suspended"):
                        await dispatcher.commit([_api_down(clock())])
                await anyio.sleep(0.05)
                await until(lambda: not dispatcher.queued("chat"))
        return gate, slowed

    async def test_offline_maintenance(
        self, clock: ManualClock, store: SqliteStore, sinks: Sinks
    ) -> None:
        """OfflineMaintenance: a maintenance, polling slowed, the outage in the log alone,
        the summary at the end."""
        async with Simulator(clock=clock, tenant=OnlineTenant(valid_for=1)) as sim:
            gate, slowed = await self._follow(
                sim, clock, ["Running", "OfflineMaintenance", "Running"], store, sinks
            )

        assert [False, True, False] == slowed.slowed
        assert [
            EventType.MONITOR_MAINTENANCE_STARTED,
            EventType.MONITOR_MAINTENANCE_ENDED,
            EventType.MONITOR_API_DOWN,  # it never recovered in this test: announced at the end
        ] == sinks.types(sinks.chat)
        assert EventType.MONITOR_API_DOWN not in sinks.types(sinks.alerts)[:2]
        assert "Running" == gate.tenant_state

    async def test_suspended_is_one_event(
        self, clock: ManualClock, store: SqliteStore, sinks: Sinks
    ) -> None:
        """Suspended, then Deleted, then Running: one unavailable event, one available; the
        outage meanwhile reaches the log alone, and is announced if it outlasts the tenant's
        return."""
        async with Simulator(clock=clock, tenant=OnlineTenant(valid_for=1)) as sim:
            await self._follow(
                sim, clock, ["Suspended", "Deleted", "Deleted", "Running"], store, sinks
            )

        assert [
            EventType.MONITOR_TENANT_UNAVAILABLE,
            EventType.MONITOR_TENANT_AVAILABLE,
            EventType.MONITOR_API_DOWN,
        ] == sinks.types(sinks.chat)
        again = sinks.chat.received[-1].message
        assert again is not None
        assert again.endswith("Still so when the tenant came back.")
        assert EventType.MONITOR_API_DOWN in sinks.types(sinks.log)[:2]
