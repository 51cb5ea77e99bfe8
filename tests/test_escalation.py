"""Escalation and acknowledgement in delivery: pure rules by table, then the dispatcher over a
real store in simulated time."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.delivery.acknowledgements import Acknowledgements
from monitor.delivery.dispatcher import Dispatcher, Subscription
from monitor.delivery.escalation import Escalations, due_escalations, escalation_id
from monitor.delivery.sqlite import SqliteStore
from monitor.sinks.base import Route
from monitor.tracking.acks import AckRefusedError, Condition, Refusal
from monitor.tracking.events import Event, EventType, TaskSummary
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from tests.test_delivery import T0, Destination, VirtualTime
from tests.test_store import info as task_info

HOUR = 3600.0


def _condition(task_id: int, since: datetime, kind: EventType = EventType.TASK_FAILED) -> Condition:
    task = TaskSummary.of(task_info(task_id, State="Failed", LastStarted=T0.isoformat()))
    event = Event(id=f"restored-{task_id}", type=kind, time=since, task=task)
    return Condition(event, f"{kind.value}|{task_id}|{since.isoformat()}", since)


def _wants_all(_: Event) -> bool:
    return True


class TestDue:
    """:func:`due_escalations`: once a condition fired ``after`` unacknowledged."""

    @pytest.mark.parametrize(
        ("minutes", "due"),
        [(0, False), (29, False), (30, True), (300, True)],
    )
    def test_due_after(self, minutes: int, due: bool) -> None:
        """Due from ``after`` on, not a second before."""
        condition = _condition(7, T0)
        found = due_escalations(
            [("boss", 30 * 60, _wants_all)], [condition], T0 + timedelta(minutes=minutes)
        )
        assert due == bool(found)

    def test_what_it_says(self) -> None:
        """The condition's event again, with a fixed id per sink and condition, saying why."""
        condition = _condition(7, T0)
        now = T0 + timedelta(hours=2)
        ((sink, event, which),) = due_escalations([("boss", 5400, _wants_all)], [condition], now)
        assert (sink, which, event.type, event.time) == (
            "boss",
            condition,
            condition.event.type,
            now,
        )
        assert "Escalated: nobody acknowledged it for 1h30m" == event.message
        assert event.id == escalation_id("boss", condition) != escalation_id("ops", condition)

    @pytest.mark.parametrize(
        ("after", "said"), [(45, "45s"), (90, "1m30s"), (600, "10m"), (7200, "2h00m")]
    )
    def test_durations(self, after: float, said: str) -> None:
        """How long, in a few characters."""
        ((_, event, _),) = due_escalations(
            [("boss", after, _wants_all)], [_condition(7, T0)], T0 + timedelta(hours=3)
        )
        assert event.message is not None
        assert event.message.endswith(f"for {said}")

    def test_only_what_the_sink_wants(self) -> None:
        """The sink's filters apply to the condition."""
        conditions = [_condition(7, T0), _condition(8, T0)]
        found = due_escalations(
            [("boss", 60, lambda e: e.task_id == 8)], conditions, T0 + timedelta(hours=1)
        )
        assert [8] == [event.task_id for _, event, _ in found]


def _event(kind: EventType, task_id: int | None = 7) -> Event:
    task = TaskSummary.of(task_info(task_id, State="Failed")) if task_id is not None else None
    return Event(id=f"{kind.value}-{task_id}", type=kind, time=T0, task=task)


class TestPasses:
    """What an escalation sink hears besides its escalations."""

    #: (event type, whether the sink was told of the task's condition, whether it passes)
    CASES: tuple[tuple[EventType, bool, bool], ...] = (
        (EventType.TASK_FAILED, False, False),
        (EventType.TASK_STALLED, False, False),
        (EventType.TASK_GONE, False, False),
        (EventType.TASK_STARTED, True, False),
        (EventType.TASK_PROGRESS, True, False),
        (EventType.TASK_SUCCEEDED, False, False),
        (EventType.TASK_SUCCEEDED, True, True),
        (EventType.TASK_RESTARTED, True, True),
        (EventType.TASK_ACKNOWLEDGED, True, True),
        (EventType.TASK_ACKNOWLEDGED, False, False),
        (EventType.TASK_EXPIRED, True, True),
    )

    @pytest.mark.parametrize(("kind", "told", "passes"), CASES)
    def test_table(self, kind: EventType, told: bool, passes: bool) -> None:
        """Conditions wait for escalation; ends go only where the condition went."""
        escalations = Escalations()
        if told:
            escalations.mark("boss", _condition(7, T0), T0)
        assert passes == escalations.passes("boss", _event(kind))
        if passes:  # the end is told once
            assert [("boss", 7)] == escalations.end([_event(kind)])
            assert not escalations.passes("boss", _event(EventType.TASK_SUCCEEDED))

    def test_marked_once(self) -> None:
        """A condition is recorded once per sink; a later one of the task replaces it."""
        escalations = Escalations()
        first, later = _condition(7, T0), _condition(7, T0 + timedelta(hours=1))
        record = escalations.mark("boss", first, T0)
        assert record is not None
        assert ("boss", 7, first.key, T0.timestamp()) == (
            record.sink,
            record.task_id,
            record.condition,
            record.due,
        )
        assert escalations.mark("boss", first, T0) is None
        assert escalations.mark("ops", first, T0) is not None
        assert escalations.mark("boss", later, T0) is not None
        restored = Escalations()
        restored.load([record])
        assert restored.told("boss", first)
        assert not restored.told("boss", later)
        assert not restored.told("ops", first)

    def test_monitor_events_pass(self) -> None:
        """The API being down is not a task's condition: it goes as to any sink."""
        assert Escalations().passes("boss", _event(EventType.MONITOR_API_DOWN, None))

    def test_reminding(self) -> None:
        """Reminders count from the escalation, for the condition escalated only."""
        escalations = Escalations()
        escalated = _condition(7, T0)
        escalations.mark("boss", escalated, T0 + timedelta(minutes=30))
        later = _condition(7, T0 + timedelta(hours=1))
        other = _condition(8, T0)
        found = escalations.reminding("boss", [escalated, later, other])
        assert {escalated.event.id: T0 + timedelta(minutes=30)} == found
        assert {} == escalations.reminding("ops", [escalated])


class Desk:
    """A tracker, a dispatcher over a real store, and the acknowledgements between them."""

    def __init__(self, store: SqliteStore, subscriptions: list[Subscription]) -> None:
        self.time = VirtualTime()
        self.tracker = Tracker(Rules(stall_after=timedelta(minutes=15)))
        self.store = store
        self.dispatcher = Dispatcher(subscriptions, store, now=self.time, sleep=self.time.sleep)
        self.acks = Acknowledgements(self.tracker, store, self.dispatcher.commit, self.time)

    async def start(self) -> None:
        await self.dispatcher.start()
        await self.acks.load()

    async def see(self, minutes: float, task_id: int, **fields: Any) -> None:
        """Observe a snapshot ``minutes`` after T0 and commit what it caused."""
        self.time.now = T0 + timedelta(minutes=minutes)
        fields.setdefault("LastStarted", T0.isoformat())
        events = self.tracker.observe(task_info(task_id, **fields), self.time.now)
        await self.dispatcher.commit(events, [self.tracker.tasks[task_id]])

    async def tick(self, minutes: float) -> None:
        """Time passes: reminders and escalations due then are queued."""
        self.time.now = T0 + timedelta(minutes=minutes)
        await self.dispatcher.remind_once(self.acks.firing())
        await self.dispatcher.escalate_once(self.acks.open_conditions())


def _said(sink: Destination) -> list[tuple[int | None, str]]:
    return [(e.task_id, e.type.value) for e in sink.received]


class TestEscalationSink:
    """A sink with ``after`` hears only of what nobody took in time."""

    async def test_only_the_unacknowledged_task(self, store: SqliteStore) -> None:
        """Two tasks fail; one is acknowledged in time: the escalation sink hears of the other."""
        ops, boss = Destination("ops"), Destination("boss")
        desk = Desk(store, [Subscription(ops, Route()), Subscription(boss, Route(), after=1800)])
        await desk.start()
        for task_id in (1, 2):
            await desk.see(0, task_id, State="Started")
            await desk.see(1, task_id, State="Failed")
        await desk.acks.acknowledge(1, "alice", "on it")
        for minute in (10, 30, 31, 45, 60):
            await desk.tick(minute)
        await desk.see(61, 2, State="Started", StartCount=2, LastStarted=desk.time.now)
        await desk.dispatcher.drain()

        assert [(2, "task.failed"), (2, "task.restarted")] == _said(boss)[:2]
        assert 2 == len(boss.received)
        escalation = boss.received[0]
        assert escalation.time == T0 + timedelta(minutes=31)  # the first look past 1 + 30
        assert "Escalated" in (escalation.message or "")
        assert (1, "task.acknowledged") in _said(ops)
        assert (2, "task.failed") in _said(ops)

    async def test_nothing_after_an_acknowledgement_in_time(self, store: SqliteStore) -> None:
        """Taken before ``after``: the sink hears nothing of the task at all."""
        boss = Destination("boss")
        desk = Desk(store, [Subscription(boss, Route(), after=1800)])
        await desk.start()
        await desk.see(0, 1, State="Failed")
        await desk.tick(20)
        await desk.acks.acknowledge(1, "alice", None)
        for minute in (40, 90, 180):
            await desk.tick(minute)
        await desk.see(200, 1, State="Succeeded", StartCount=2, LastStarted=desk.time.now)
        await desk.dispatcher.drain()
        assert [] == boss.received

    async def test_acknowledged_after_the_escalation(self, store: SqliteStore) -> None:
        """Escalated, then taken: the sink hears who took it, and its reminders stop."""
        boss = Destination("boss")
        desk = Desk(store, [Subscription(boss, Route(), after=1800, remind_every=HOUR)])
        await desk.start()
        await desk.see(0, 1, State="Failed")
        for minute in (30, 60, 90, 91):
            await desk.tick(minute)
        await desk.acks.acknowledge(1, "alice", None)
        for minute in (150, 210, 400):
            await desk.tick(minute)
        await desk.dispatcher.drain()
        said = [(e.type.value, e.message) for e in boss.received]
        assert [
            ("task.failed", "Escalated: nobody acknowledged it for 30m"),
            ("task.failed", "Reminder 1: still failed after 1h30m"),
            ("task.acknowledged", "Acknowledged by alice"),
        ] == said

    async def test_a_restart_neither_loses_nor_repeats(self, tmp_path: Path) -> None:
        """Escalated before a restart: not again; due while down: sent after it."""
        path = tmp_path / "state.db"
        boss = Destination("boss")
        subscriptions = [Subscription(boss, Route(), after=1800)]
        store = await SqliteStore.open(path)
        desk = Desk(store, subscriptions)
        await desk.start()
        await desk.see(0, 1, State="Failed")
        await desk.see(10, 2, State="Failed")
        await desk.tick(31)  # task 1 is due, task 2 not yet
        await desk.dispatcher.drain()
        memories = dict(desk.tracker.tasks)
        await store.close()

        store = await SqliteStore.open(path)
        again = Desk(store, subscriptions)
        again.tracker.restore(memories.values())
        await again.start()
        await again.tick(50)  # both due; task 1's was sent
        await again.see(55, 1, State="Succeeded", StartCount=2, LastStarted=again.time.now)
        await again.dispatcher.drain()
        await store.close()

        assert [(1, "task.failed"), (2, "task.failed"), (1, "task.restarted")] == _said(boss)

    async def test_not_repeated_after_a_long_condition(self, tmp_path: Path) -> None:
        """Escalated, then 30 hours of hourly reminders on another sink (more events than the
        history keeps per task), then a restart: the escalation is not sent again."""
        path = tmp_path / "state.db"
        ops, boss = Destination("ops"), Destination("boss")
        subscriptions = [
            Subscription(ops, Route(), remind_every=HOUR),
            Subscription(boss, Route(), after=1800),
        ]
        store = await SqliteStore.open(path)
        desk = Desk(store, subscriptions)
        await desk.start()
        await desk.see(0, 1, State="Failed")
        for minute in (31, *(hour * 60 + 1 for hour in range(1, 31))):
            await desk.tick(minute)
            await desk.dispatcher.drain()
        memories = dict(desk.tracker.tasks)
        await store.close()

        store = await SqliteStore.open(path)
        again = Desk(store, subscriptions)
        again.tracker.restore(memories.values())
        await again.start()
        await again.tick(30 * 60 + 10)
        await again.see(30 * 60 + 20, 1, State="Succeeded", StartCount=2, LastStarted=T0)
        await again.dispatcher.drain()
        await store.close()

        assert 30 == sum("Reminder" in (e.message or "") for e in ops.received)
        assert [(1, "task.failed"), (1, "task.restarted")] == _said(boss)

    async def test_known_before_the_first_commit(self, tmp_path: Path) -> None:
        """Escalated before a restart, ended in the first commit after it (before the
        escalation loop's first look): the sink hears of the end."""
        path = tmp_path / "state.db"
        boss = Destination("boss")
        subscriptions = [Subscription(boss, Route(), after=1800)]
        store = await SqliteStore.open(path)
        desk = Desk(store, subscriptions)
        await desk.start()
        await desk.see(0, 1, State="Failed")
        await desk.tick(31)
        await desk.dispatcher.drain()
        memories = dict(desk.tracker.tasks)
        await store.close()

        store = await SqliteStore.open(path)
        again = Desk(store, subscriptions)
        again.tracker.restore(memories.values())
        await again.start()
        await again.see(40, 1, State="Succeeded", StartCount=2, LastStarted=T0)
        await again.dispatcher.drain()
        told = await store.told()
        await store.close()

        assert [(1, "task.failed"), (1, "task.restarted")] == _said(boss)
        assert [] == told

    async def test_records_end_with_their_condition(self, store: SqliteStore) -> None:
        """A task failing and recovering again and again leaves no record of its past
        escalations: one at most per sink and task, none once the condition ended."""
        boss = Destination("boss")
        desk = Desk(store, [Subscription(boss, Route(), after=1800)])
        await desk.start()
        sizes = []
        for run in range(5):
            start = run * 120
            started = T0 + timedelta(minutes=start)
            await desk.see(start, 1, State="Started", StartCount=run + 1, LastStarted=started)
            await desk.see(start + 1, 1, State="Failed", StartCount=run + 1, LastStarted=started)
            await desk.tick(start + 40)
            sizes.append(len(await store.told()))
        await desk.see(600, 1, State="Started", StartCount=6, LastStarted=T0 + timedelta(hours=10))
        await desk.dispatcher.drain()
        assert [1] * 5 == sizes
        assert [] == await store.told()
        assert 5 == sum("Escalated" in (e.message or "") for e in boss.received)

    async def test_monitor_events_go_at_once(self, store: SqliteStore) -> None:
        """The API being down reaches an escalation sink like any other."""
        boss = Destination("boss")
        desk = Desk(store, [Subscription(boss, Route(), after=1800)])
        await desk.start()
        down = Event(id="down", type=EventType.MONITOR_API_DOWN, time=T0)
        await desk.dispatcher.commit([down])
        await desk.dispatcher.drain()
        assert [(None, "monitor.api_down")] == _said(boss)


class TestAcknowledgements:
    """The acknowledgements over a real store: announced, kept, lapsing, taken back."""

    async def test_refused_without_a_condition(self, store: SqliteStore) -> None:
        """Unknown and healthy tasks are refused; nothing is stored or announced."""
        ops = Destination("ops")
        desk = Desk(store, [Subscription(ops, Route())])
        await desk.start()
        await desk.see(0, 1, State="Started")
        refusals = []
        for task_id in (1, 2):
            with pytest.raises(AckRefusedError) as caught:
                await desk.acks.acknowledge(task_id, "alice", None)
            refusals.append(caught.value.refusal)
        await desk.dispatcher.drain()
        assert [Refusal.NOT_FIRING, Refusal.UNKNOWN_TASK] == refusals
        assert [] == await store.acks()
        assert ["task.discovered", "task.started"] == [e.type.value for e in ops.received]

    async def test_idempotent_then_taken_over(self, store: SqliteStore) -> None:
        """The same person twice is one announcement; someone else taking over is another."""
        ops = Destination("ops")
        desk = Desk(store, [Subscription(ops, Route(events=["task.acknowledged"]))])
        await desk.start()
        await desk.see(0, 1, State="Failed")
        first, fresh = await desk.acks.acknowledge(1, "alice", "looking")
        second, again = await desk.acks.acknowledge(1, "alice", None)
        desk.time.now += timedelta(minutes=5)
        third, other = await desk.acks.acknowledge(1, "bob", None)
        await desk.dispatcher.drain()
        assert (fresh, again, other) == (True, False, True)
        assert first == second
        assert ("bob", desk.time.now) == (third.by, third.at)
        assert [third] == await store.acks()
        assert 2 == desk.tracker.event_counts[EventType.TASK_ACKNOWLEDGED]
        assert ["Acknowledged by alice: looking", "Acknowledged by bob"] == [
            e.message for e in ops.received
        ]

    async def test_reminders_stop_and_lapse_with_the_condition(self, store: SqliteStore) -> None:
        """No reminder once taken; the next failure is reminded of again (a new ack needed)."""
        ops = Destination("ops")
        desk = Desk(store, [Subscription(ops, Route(), remind_every=HOUR)])
        await desk.start()
        await desk.see(0, 1, State="Failed")
        await desk.tick(61)
        await desk.acks.acknowledge(1, "alice", None)
        await desk.tick(121)
        await desk.tick(181)
        rerun = T0 + timedelta(minutes=200)
        await desk.see(200, 1, State="Failed", StartCount=2, LastStarted=rerun.isoformat())
        assert desk.acks.current(1) is None
        await desk.acks.sweep()
        assert [] == await store.acks()
        await desk.tick(261)
        await desk.dispatcher.drain()
        reminders = [e.message for e in ops.received if (e.message or "").startswith("Reminder")]
        assert ["Reminder 1: still failed after 1h01m", "Reminder 1: still failed after 1h01m"] == (
            reminders
        )

    async def test_taken_back(self, store: SqliteStore) -> None:
        """Given back, the condition is announced again and reminded of again."""
        ops = Destination("ops")
        desk = Desk(store, [Subscription(ops, Route(), remind_every=HOUR)])
        await desk.start()
        await desk.see(0, 1, State="Failed")
        assert await desk.acks.withdraw(1, "bob") is None  # nobody has it
        held, _ = await desk.acks.acknowledge(1, "alice", None)
        await desk.tick(61)
        desk.time.now = T0 + timedelta(minutes=70)
        assert held == await desk.acks.withdraw(1, "bob")
        await desk.tick(121)
        await desk.dispatcher.drain()
        said = [(e.type.value, e.message) for e in ops.received][2:]
        assert [
            ("task.acknowledged", "Acknowledged by alice"),
            ("task.failed", "Acknowledged by alice; taken back by bob: nobody has it now"),
            ("task.failed", "Reminder 2: still failed after 2h01m"),
        ] == said
        assert [] == await store.acks()

    async def test_kept_across_a_restart(self, tmp_path: Path) -> None:
        """Stored, an acknowledgement holds after a restart; one whose condition ended is
        dropped when loaded."""
        path = tmp_path / "state.db"
        store = await SqliteStore.open(path)
        desk = Desk(store, [])
        await desk.start()
        await desk.see(0, 1, State="Failed")
        await desk.see(0, 2, State="Failed")
        await desk.acks.acknowledge(1, "alice", None)
        await desk.acks.acknowledge(2, "alice", None)
        await desk.see(5, 2, State="Started", StartCount=2, LastStarted=desk.time.now)
        memories = dict(desk.tracker.tasks)
        await store.close()

        store = await SqliteStore.open(path)
        again = Desk(store, [])
        again.tracker.restore(memories.values())
        await again.start()
        held = again.acks.current(1)
        stored = await store.acks()
        await store.close()
        assert held is not None
        assert ("alice", None) == (held.by, again.acks.current(2))
        assert [1] == [ack.task_id for ack in stored]
