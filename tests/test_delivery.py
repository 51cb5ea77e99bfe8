"""Delivery through the outbox: order, retries, give-ups, isolation, restarts, in simulated time."""

from __future__ import annotations

import math
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager, closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from monitor.daemon import Daemon
from monitor.delivery.dispatcher import Dispatcher, Subscription
from monitor.delivery.sqlite import SqliteStore
from monitor.simulator import Simulator
from monitor.sinks.base import DeliveryError, Route
from monitor.sinks.webhook import WebhookSink
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from monitor.types import DeliveryStore
from tests.conftest import StoreOpener, make_config
from tests.test_store import events_for
from tests.test_store import info as task_info

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class VirtualTime:
    """A wall clock whose sleeps pass instantly (time moves by the amount slept)."""

    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        await anyio.lowlevel.checkpoint()


class Destination:
    """A stand-in for a chat service: accepts, or refuses while ``refuse`` says so."""

    default_rate = math.inf
    default_concurrency = 1

    def __init__(
        self, name: str, refuse: Callable[[Event], DeliveryError | None] = lambda _: None
    ) -> None:
        self.name = name
        self.refuse = refuse
        self.received: list[Event] = []
        self.attempts = 0

    async def send(self, event: Event) -> None:
        self.attempts += 1
        error = self.refuse(event)
        if error is not None:
            raise error
        self.received.append(event)


@asynccontextmanager
async def dispatching(dispatcher: Dispatcher) -> AsyncIterator[Dispatcher]:
    """Run the dispatcher's workers for the duration of the block."""
    await dispatcher.start()
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        yield dispatcher
        group.cancel_scope.cancel()


async def until(condition: Callable[[], bool], within: float = 10) -> None:
    """Wait (in real time) until ``condition`` holds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - the condition is another task's state
            await anyio.sleep(0.005)


def _cycled(daemon: Daemon, cycles: int) -> bool:
    """Whether the daemon's poller ran ``cycles`` cycles."""
    return daemon.poller is not None and daemon.poller.cycles >= cycles


def story(task_id: int) -> list[Event]:
    """A task's events from discovery to failure, with progress in between."""
    return events_for(
        task_id,
        {"State": "New", "ProgressPercent": 0, "StartCount": 0, "LastStarted": None},
        {"State": "Started", "ProgressPercent": 0},
        {"ProgressPercent": 40},
        {"State": "Failed", "ProgressPercent": 40},
    )


class TestOutage:
    """A destination that is away."""

    async def test_sink_down_five_minutes_gets_everything_in_order(
        self, backend: DeliveryStore
    ) -> None:
        """After five simulated minutes of refusals, every event arrives, in order per task."""
        time = VirtualTime()
        outage_ends = T0 + timedelta(minutes=5)

        def refuse(_: Event) -> DeliveryError | None:
            down = time.now < outage_ends
            return DeliveryError("HTTP 503", retry_after=None) if down else None

        sink = Destination("ops", refuse)
        dispatcher = Dispatcher([Subscription(sink, Route())], backend, now=time, sleep=time.sleep)
        expected = {task_id: story(task_id) for task_id in (1, 2, 3)}
        async with dispatching(dispatcher):
            for step in range(4):
                for events in expected.values():
                    await dispatcher.commit([events[step]])
            await until(lambda: len(sink.received) == 12)

        for task_id, events in expected.items():
            assert [e.id for e in events] == [e.id for e in sink.received if e.task_id == task_id]
        assert time.now >= outage_ends
        assert dispatcher.failed["ops"] >= 5
        assert (12, 0, 0) == (
            dispatcher.delivered["ops"],
            dispatcher.queued("ops"),
            dispatcher.given_up["ops"],
        )
        assert max(time.slept) <= 300, "backoff is capped"

    async def test_retry_after_is_honoured(self, store: SqliteStore) -> None:
        """A 429 asking for 30 s is not retried sooner."""
        time = VirtualTime()
        answers = [DeliveryError("HTTP 429", retry_after=30.0)]
        sink = Destination("ops", lambda _: answers.pop() if answers else None)
        dispatcher = Dispatcher([Subscription(sink, Route())], store, now=time, sleep=time.sleep)
        async with dispatching(dispatcher):
            await dispatcher.commit(story(1)[:1])
            await until(lambda: len(sink.received) == 1)

        assert 30.0 <= sum(time.slept)

    async def test_permanent_refusal_is_given_up_and_logged(self, store: SqliteStore) -> None:
        """A 400 is not retried: counted, logged with the answer, and the next event goes out."""
        first, second = story(1)[:2]

        def refuse(event: Event) -> DeliveryError | None:
            return (
                DeliveryError("HTTP 400: invalid_blocks", permanent=True)
                if event is first or event.id == first.id
                else None
            )

        sink = Destination("ops", refuse)
        dispatcher = Dispatcher([Subscription(sink, Route())], store)
        with capture_logs() as logs:
            async with dispatching(dispatcher):
                await dispatcher.commit([first, second])
                await until(lambda: len(sink.received) == 1)

        assert [second.id] == [e.id for e in sink.received]
        assert 1 == dispatcher.given_up["ops"]
        (given_up,) = [e for e in logs if e["event"] == "delivery_given_up"]
        assert "HTTP 400: invalid_blocks" == given_up["error"]
        assert "rejected by the destination" == given_up["reason"]

    async def test_too_old_is_given_up(self, store: SqliteStore) -> None:
        """A delivery still failing after max_age is abandoned, not kept forever."""
        time = VirtualTime()
        sink = Destination("ops", lambda _: DeliveryError("HTTP 502"))
        dispatcher = Dispatcher(
            [Subscription(sink, Route())],
            store,
            now=time,
            sleep=time.sleep,
            max_age=timedelta(hours=1),
        )
        async with dispatching(dispatcher):
            await dispatcher.commit(story(1)[:1])
            await until(lambda: dispatcher.given_up["ops"] == 1)

        assert time.now - T0 > timedelta(hours=1)
        assert 0 == dispatcher.queued("ops")

    async def test_a_dead_sink_delays_no_other(self, store: SqliteStore) -> None:
        """While one sink refuses everything, another receives every event."""
        dead = Destination("dead", lambda _: DeliveryError("connection refused"))
        alive = Destination("alive")
        dispatcher = Dispatcher(
            [Subscription(dead, Route()), Subscription(alive, Route())], store, backoff_base=60
        )
        async with dispatching(dispatcher):
            await dispatcher.commit(story(1))
            await until(lambda: len(alive.received) == 4)

        assert 4 == dispatcher.queued("dead")
        assert [] == dead.received

    async def test_a_crashing_sink_is_retried_not_fatal(self, store: SqliteStore) -> None:
        """A bug in a sink (any exception) is logged and retried; the worker survives."""
        time = VirtualTime()
        crashes = [RuntimeError("bug")]

        def refuse(_: Event) -> DeliveryError | None:
            if crashes:
                raise crashes.pop()
            return None

        sink = Destination("ops", refuse)
        dispatcher = Dispatcher([Subscription(sink, Route())], store, now=time, sleep=time.sleep)
        with capture_logs() as logs:
            async with dispatching(dispatcher):
                await dispatcher.commit(story(1)[:1])
                await until(lambda: len(sink.received) == 1)

        assert "sink_crashed" in [e["event"] for e in logs]


class TestRouting:
    """Which sink gets what."""

    async def test_routes_filter_deliveries(self, store: SqliteStore) -> None:
        """A sink hears only the event types, ids and names its route names."""
        failures = Destination("failures")
        everything = Destination("everything")
        dispatcher = Dispatcher(
            [
                Subscription(failures, Route(events=["task.failed", "monitor.*"], ids=[2])),
                Subscription(everything, Route()),
            ],
            store,
        )
        async with dispatching(dispatcher):
            await dispatcher.commit(story(1) + story(2))
            await until(lambda: len(everything.received) == 8 and len(failures.received) == 1)

        assert [(2, EventType.TASK_FAILED)] == [(e.task_id, e.type) for e in failures.received]


class TestShutdownAndRestart:
    """What the outbox does across a stop."""

    async def test_drain_sends_what_is_due(self, store: SqliteStore) -> None:
        """At shutdown, due deliveries go out without waiting for the workers."""
        sink = Destination("ops")
        dispatcher = Dispatcher([Subscription(sink, Route())], store)
        await dispatcher.start()
        await dispatcher.commit(story(1))
        await dispatcher.drain()

        assert 4 == len(sink.received)

    async def test_undelivered_events_survive_a_restart(self, open_backend: StoreOpener) -> None:
        """Events queued when the process stopped are delivered by the next one, same ids."""
        events = story(1)
        store = await open_backend()
        first = Dispatcher([Subscription(Destination("ops"), Route())], store)
        await first.start()
        await first.commit(events)
        await store.close()

        store = await open_backend()
        sink = Destination("ops")
        second = Dispatcher([Subscription(sink, Route())], store)
        async with dispatching(second):
            assert 4 == second.queued("ops")
            await until(lambda: len(sink.received) == 4)
        await store.close()

        assert [e.id for e in events] == [e.id for e in sink.received]


class TestDaemonRestart:
    """A daemon restart neither re-announces nor misses (compare with the stored snapshot)."""

    @pytest.mark.parametrize("backend", ["sqlite", "postgres"])
    @pytest.mark.parametrize("change_while_down", [False, True])
    async def test_restart(
        self, request: pytest.FixtureRequest, change_while_down: bool, backend: str
    ) -> None:
        """The second run announces only what changed while the first was down."""
        if backend == "postgres":
            state = {"url": request.getfixturevalue("pg_url")}
        else:
            state = {"path": str(request.getfixturevalue("tmp_path") / "state.db")}
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED, progress=40)
            config = make_config(
                simulator.url, watch={"ids": [task.id]}, poll={"interval": "0.1s"}, state=state
            )
            runs = []
            logged: list[MutableMapping[str, Any]] = []
            for run in range(2):
                if run == 1 and change_while_down:
                    simulator.set_task(task.id, state=BatchTaskState.SUCCEEDED, progress=100)
                daemon = Daemon(config)
                with capture_logs() as logs:
                    async with anyio.create_task_group() as group:
                        await group.start(daemon.run)
                        await until(partial(_cycled, daemon, 2))
                        group.cancel_scope.cancel()
                runs.append([e["event"] for e in logs if str(e["event"]).startswith("task.")])
                logged += logs

        assert ["task.discovered", "task.started"] == runs[0]
        assert (["task.succeeded"] if change_while_down else []) == runs[1]
        started = [e["state"] for e in logged if e["event"] == "batchmon_started"]
        assert [config.state.location] * 2 == started
        if backend == "postgres":
            password = urlsplit(state["url"]).password
            assert password
            assert password not in repr(logged)
            assert password not in config.state.location


class TestReminders:
    """``remind_every``: a task that stays failed or stalled is brought up again."""

    async def test_reminders_are_due_once_per_period_and_survive_restarts(
        self, tmp_path: Path
    ) -> None:
        """One reminder per elapsed period, only to sinks that ask, never twice after a restart."""
        time = VirtualTime()
        failed = story(1)[-1]
        conditions = [replace(failed, time=T0)]
        store = await SqliteStore.open(tmp_path / "state.db")
        reminded = Destination("ops")
        quiet = Destination("quiet")
        subscriptions = [
            Subscription(reminded, Route(), remind_every=3600),
            Subscription(quiet, Route()),
        ]
        dispatcher = Dispatcher(subscriptions, store, now=time, sleep=time.sleep)
        await dispatcher.start()
        queued = []
        for minutes in (30, 61, 90, 121):
            time.now = T0 + timedelta(minutes=minutes)
            await dispatcher.remind_once(conditions)
            queued.append(dispatcher.queued("ops"))
        await store.close()

        store = await SqliteStore.open(tmp_path / "state.db")
        again = Dispatcher(subscriptions, store, now=time, sleep=time.sleep)
        await again.start()
        time.now = T0 + timedelta(minutes=130)
        await again.remind_once(conditions)
        await again.drain()
        await store.close()

        assert [0, 1, 1, 2] == queued
        assert [] == quiet.received
        messages = [e.message for e in reminded.received]
        assert [
            "Reminder 1: still failed after 1h01m",
            "Reminder 2: still failed after 2h01m",
        ] == messages
        assert {EventType.TASK_FAILED} == {e.type for e in reminded.received}
        assert len({e.id for e in reminded.received}) == 2

    @pytest.mark.parametrize(
        "ending",
        ["run again", "cleaned up", "forgotten"],
    )
    async def test_reminders_stop_when_the_condition_ends(
        self, store: SqliteStore, ending: str
    ) -> None:
        """A failed task is reminded of hourly until its condition ends, then never again.

        It runs again or is cleaned up after the first reminder; or nothing happens and
        it is forgotten 3 hours after it failed (``forget_after``), after the second.
        """
        time = VirtualTime()
        sink = Destination("ops")
        dispatcher = Dispatcher(
            [Subscription(sink, Route(), remind_every=3600)], store, now=time, sleep=time.sleep
        )
        await dispatcher.start()
        tracker = Tracker(Rules(forget_after=timedelta(hours=3)))
        failed = task_info(7, State="Failed", LastStarted=T0.isoformat())
        tracker.observe(failed, T0)
        reminded = []
        for hour in range(1, 7):
            time.now = T0 + timedelta(hours=hour, minutes=1)
            if hour == 2:
                match ending:
                    case "run again":
                        rerun = task_info(7, State="Started", StartCount=2, LastStarted=time.now)
                        tracker.observe(rerun, time.now)
                    case "cleaned up":
                        tracker.observe_gone(7, time.now)
                    case _:  # "forgotten": nothing happens to it
                        pass
            tracker.expire(time.now)
            await dispatcher.remind_once(tracker.firing())
            reminded.append(dispatcher.queued("ops"))

        expected = [1, 1, 1, 1, 1, 1] if ending != "forgotten" else [1, 2, 2, 2, 2, 2]
        assert expected == reminded

    async def test_only_failed_and_stalled(self, store: SqliteStore) -> None:
        """Gone tasks and healthy ones are not reminded of."""
        time = VirtualTime()
        sink = Destination("ops")
        dispatcher = Dispatcher(
            [Subscription(sink, Route(), remind_every=60)], store, now=time, sleep=time.sleep
        )
        await dispatcher.start()
        discovered, started = story(1)[:2]
        gone = replace(started, type=EventType.TASK_GONE, id="gone")
        stalled = replace(started, type=EventType.TASK_STALLED, id="stalled")
        time.now = T0 + timedelta(hours=1)
        await dispatcher.remind_once([discovered, gone, stalled])
        await dispatcher.drain()

        assert [EventType.TASK_STALLED] == [e.type for e in sink.received]


class TestStorm:
    """A real webhook receiver throttling hard."""

    async def test_a_429_storm_is_waited_out(self, store: SqliteStore) -> None:
        """Under a burst of 429s with Retry-After, every event arrives once, in order, after the waits."""
        received: list[str] = []
        refusals = 6
        starts: list[float] = []

        async def receive(request: web.Request) -> web.Response:
            nonlocal refusals
            starts.append(anyio.current_time())
            if refusals:
                refusals -= 1
                return web.Response(status=429, headers={"Retry-After": "0.2"})
            received.append(request.headers["webhook-id"])
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", receive)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        events = story(1)
        try:
            async with aiohttp.ClientSession() as session:
                sink = WebhookSink("hook", str(server.make_url("/hook")), session)
                dispatcher = Dispatcher([Subscription(sink, Route())], store, backoff_base=0.01)
                async with dispatching(dispatcher):
                    await dispatcher.commit(events)
                    await until(lambda: len(received) == len(events))
        finally:
            await server.close()

        assert [e.id for e in events] == received
        assert 6 == dispatcher.failed["hook"]
        assert starts[6] - starts[0] >= 6 * 0.2 - 0.05, "each Retry-After was honoured"


class TestLanes:
    """Several deliveries at once, each task's in order, against a real slow receiver."""

    @pytest.mark.parametrize("lanes", [1, 4])
    async def test_a_burst_goes_out_in_lanes(self, backend: DeliveryStore, lanes: int) -> None:
        """With N lanes up to N deliveries overlap; one task's events never do, nor reorder."""
        in_flight: dict[int, int] = {}
        most = 0
        overlapping_one_task = 0
        received: list[tuple[int, str]] = []

        async def receive(request: web.Request) -> web.Response:
            nonlocal most, overlapping_one_task
            event = await request.json()
            task_id = int(event["subject"])
            if in_flight.get(task_id):
                overlapping_one_task += 1
            in_flight[task_id] = in_flight.get(task_id, 0) + 1
            most = max(most, sum(in_flight.values()))
            await anyio.sleep(0.02)
            in_flight[task_id] -= 1
            received.append((task_id, request.headers["webhook-id"]))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", receive)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        expected = {task_id: story(task_id) for task_id in range(1, 9)}
        try:
            async with aiohttp.ClientSession() as session:
                sink = WebhookSink("hook", str(server.make_url("/hook")), session)
                subscription = Subscription(sink, Route(), lanes=lanes)
                dispatcher = Dispatcher([subscription], backend)
                async with dispatching(dispatcher):
                    await dispatcher.commit([e for events in expected.values() for e in events])
                    await until(lambda: dispatcher.delivered["hook"] == 32)
        finally:
            await server.close()

        for task_id, events in expected.items():
            assert [e.id for e in events] == [i for t, i in received if t == task_id]
        assert 0 == overlapping_one_task
        assert lanes == most
        assert (32, 0) == (dispatcher.delivered["hook"], dispatcher.queued("hook"))

    async def test_events_without_a_task_keep_their_order(self, backend: DeliveryStore) -> None:
        """API health events (no task) go out in order among themselves, as one task's do."""
        time = VirtualTime()
        sink = Destination("ops")
        dispatcher = Dispatcher(
            [Subscription(sink, Route(), lanes=3)], backend, now=time, sleep=time.sleep
        )
        down, up = (
            Event(id=f"health-{kind.value}", type=kind, time=T0, message=kind.value)
            for kind in (EventType.MONITOR_API_DOWN, EventType.MONITOR_API_RECOVERED)
        )
        async with dispatching(dispatcher):
            await dispatcher.commit([down, up, *story(5)])
            await until(lambda: len(sink.received) == 6)

        assert [down.id, up.id] == [e.id for e in sink.received if e.task_id is None]


class Gate:
    """A destination that holds each send of the ``held`` tasks until the test lets it through."""

    default_rate = math.inf
    default_concurrency = 1

    def __init__(self, name: str, held: frozenset[int | None] | None = None) -> None:
        self.name = name
        self.held = held
        self.received: list[Event] = []
        self.opened = anyio.Event()
        self.holding = 0

    async def send(self, event: Event) -> None:
        if self.held is None or event.task_id in self.held:
            self.holding += 1
            await self.opened.wait()
        self.received.append(event)


class TestDynamicLanes:
    """An idle worker takes the oldest delivery whose task has nothing in flight."""

    async def test_a_slow_task_holds_up_only_its_own_events(self, backend: DeliveryStore) -> None:
        """Task 1's first event hangs: tasks 3 and 5 all go out meanwhile, task 1's after it."""
        sink = Gate("ops", held=frozenset({1}))
        dispatcher = Dispatcher([Subscription(sink, Route(), lanes=2)], backend)
        events = [*story(1), *story(3), *story(5)]
        async with dispatching(dispatcher):
            await dispatcher.commit(events)
            await until(lambda: len(sink.received) == 8)
            held = (sink.holding, [e.task_id for e in sink.received])
            sink.opened.set()
            await until(lambda: len(sink.received) == 12)

        assert 1 == held[0], "one of task 1's in flight, the others wait behind it"
        assert 1 not in held[1]
        for task_id in (1, 3, 5):
            assert [e.id for e in story(task_id)] == [
                e.id for e in sink.received if e.task_id == task_id
            ]
        assert {} == await backend.pending_counts()

    async def test_a_stop_mid_send_leaves_the_delivery_to_the_drain(
        self, backend: DeliveryStore
    ) -> None:
        """Stopped while a send hangs: the shutdown drain sends it and the task's next, once."""
        sink = Gate("ops")
        dispatcher = Dispatcher([Subscription(sink, Route(), lanes=2)], backend)
        events = story(1)[:2]
        async with dispatching(dispatcher):
            await dispatcher.commit(events)
            await until(lambda: sink.holding == 1)
        sink.opened.set()
        await dispatcher.drain()

        assert [e.id for e in events] == [e.id for e in sink.received]
        assert {} == await backend.pending_counts()

    async def test_an_idle_worker_is_handed_what_a_commit_claims(self, store: SqliteStore) -> None:
        """The commit claims for the idle worker in its own transaction: no read before the send."""
        sink = Gate("ops")
        dispatcher = Dispatcher([Subscription(sink, Route())], store)
        claims: list[str] = []

        def trace(statement: str) -> None:
            if statement.startswith("SELECT min(seq)"):
                claims.append(statement)

        async with dispatching(dispatcher):
            await until(lambda: dispatcher.queued("ops") == 0)
            await anyio.sleep(0.05)  # the worker found nothing and waits
            # What SQLite ran is the observable here: the connection is private to the store.
            store._db.set_trace_callback(trace)
            await dispatcher.commit(story(1)[:1])
            await until(lambda: sink.holding == 1)
            before_send = len(claims)
            sink.opened.set()
            await until(lambda: len(sink.received) == 1)

        assert 1 == before_send, "the commit's own claim, and no other"

    async def test_news_reaches_an_idle_worker(self, backend: DeliveryStore) -> None:
        """Workers that found nothing wait; each commit wakes one, and the events go out."""
        sink = Destination("ops")
        dispatcher = Dispatcher([Subscription(sink, Route(), lanes=3)], backend)
        async with dispatching(dispatcher):
            for event in [*story(1), *story(2)]:
                await dispatcher.commit([event])
                await until(lambda: dispatcher.queued("ops") == 0)

        assert [e.id for e in [*story(1), *story(2)]] == [e.id for e in sink.received]
        assert {} == await backend.pending_counts()

    async def test_a_failure_keeps_its_place(self, backend: DeliveryStore) -> None:
        """A delivery that fails stays first of its task; those after it are not tried before it."""
        time = VirtualTime()
        events = story(1)
        refused: set[str] = set()

        def refuse_once(event: Event) -> DeliveryError | None:
            if event.id in {events[0].id, events[1].id} and event.id not in refused:
                refused.add(event.id)
                return DeliveryError("HTTP 503", retry_after=None)
            return None

        sink = Destination("ops", refuse_once)
        dispatcher = Dispatcher([Subscription(sink, Route())], backend, now=time, sleep=time.sleep)
        with capture_logs() as logs:
            async with dispatching(dispatcher):
                await anyio.sleep(0.05)
                await dispatcher.commit(events)
                await until(lambda: len(sink.received) == 4)

        failures = [
            (log["event_id"], log["attempts"]) for log in logs if log["event"] == "delivery_failed"
        ]
        assert [(events[0].id, 1), (events[1].id, 1)] == failures, "no attempt counted twice"
        assert [e.id for e in events] == [e.id for e in sink.received]

    async def test_unsent_deliveries_survive_a_stop(self, tmp_path: Path) -> None:
        """Stopped while sending the first of a task's three: the next run sends all three."""
        path = tmp_path / "state.db"
        events = story(1)[:3]
        store = await SqliteStore.open(path)
        blocked = Gate("ops")
        first = Dispatcher([Subscription(blocked, Route())], store)
        async with dispatching(first):
            await anyio.sleep(0.05)
            await first.commit(events)
            await until(lambda: blocked.holding == 1)  # the first is being sent
        await store.close()
        with closing(sqlite3.connect(path)) as db:
            attempts = [n for (n,) in db.execute("SELECT attempts FROM outbox ORDER BY seq")]

        store = await SqliteStore.open(path)
        sink = Destination("ops")
        second = Dispatcher([Subscription(sink, Route())], store)
        async with dispatching(second):
            await until(lambda: len(sink.received) == 3)
        await store.close()

        assert [1, 0, 0] == attempts, "only the one being sent counts as tried"
        assert [e.id for e in events] == [e.id for e in sink.received]

    @pytest.mark.parametrize("seed", range(3))
    async def test_stops_at_any_moment_lose_nothing(
        self, backend: DeliveryStore, seed: int
    ) -> None:
        """Workers stopped at random moments (a reload) and started again on the same store:
        every event goes out, each task's in order, none held back by a claim left behind."""
        rng = random.Random(seed)
        stories = {task_id: story(task_id) for task_id in range(1, 9)}
        wanted = {e.id for events in stories.values() for e in events}
        sink = Destination("ops")
        for _ in range(12):
            dispatcher = Dispatcher([Subscription(sink, Route(), lanes=3)], backend)
            async with dispatching(dispatcher):
                await dispatcher.commit([events.pop(0) for events in stories.values() if events])
                await anyio.sleep(rng.uniform(0, 0.003))
        dispatcher = Dispatcher([Subscription(sink, Route(), lanes=3)], backend)
        async with dispatching(dispatcher):
            await until(lambda: {e.id for e in sink.received} >= wanted)

        for task_id in stories:
            sent = [e.id for e in sink.received if e.task_id == task_id]
            assert [e.id for e in story(task_id)] == list(dict.fromkeys(sent))
        assert {} == await backend.pending_counts()

    @pytest.mark.parametrize("seed", range(12))
    async def test_interleaved_commits_and_failures_lose_and_repeat_nothing(
        self, backend: DeliveryStore, seed: int
    ) -> None:
        """Random commits, pauses, slow sends and refusals: every event once, each task in order."""
        rng = random.Random(seed)
        time = VirtualTime()
        stories = {task_id: story(task_id) for task_id in range(1, 7)}

        def refuse(_: Event) -> DeliveryError | None:
            return DeliveryError("HTTP 503", retry_after=None) if rng.random() < 0.15 else None

        class Slow(Destination):
            async def send(self, event: Event) -> None:
                await anyio.sleep(rng.uniform(0, 0.002))
                await super().send(event)

        sink = Slow("ops", refuse)
        dispatcher = Dispatcher(
            [Subscription(sink, Route(), lanes=rng.choice([1, 2, 3]))],
            backend,
            now=time,
            sleep=time.sleep,
        )
        pending = {task_id: list(events) for task_id, events in stories.items()}
        async with dispatching(dispatcher):
            while any(pending.values()):
                batch = []
                for task_id in rng.sample(sorted(pending), rng.randint(1, 3)):
                    take = rng.randint(0, 2)
                    batch += pending[task_id][:take]
                    del pending[task_id][:take]
                await dispatcher.commit(batch)
                await anyio.sleep(rng.uniform(0, 0.003))
            await until(lambda: dispatcher.delivered["ops"] == 24)
        counts = await backend.pending_counts()

        for task_id, events in stories.items():
            assert [e.id for e in events] == [e.id for e in sink.received if e.task_id == task_id]
        assert (24, 0, {}) == (len(sink.received), dispatcher.queued("ops"), counts)
