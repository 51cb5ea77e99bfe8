"""A sink that raises something unexpected (a bug), and rows the store cannot read.

The destinations are real loopback servers behind the real webhook sink; the bug is
a wrapper that raises before the webhook sink is called, for chosen events.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import aiohttp
import anyio
import pytest
from prometheus_client.registry import CollectorRegistry
from structlog.testing import capture_logs

from monitor.config.sinks import WebhookSinkConfig
from monitor.delivery.dispatcher import MAX_CRASHES, Dispatcher, Subscription
from monitor.delivery.sqlite import SqliteStore
from monitor.metrics import BatchmonCollector, TenantState, make_registry
from monitor.sinks.base import Route
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink
from monitor.superoffice.client import RequestStats
from monitor.text import REPLACEMENT
from monitor.tracking.events import Event, EventType
from monitor.tracking.health import ApiHealth
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from monitor.types import Sink
from tests.conftest import Reply, ScriptedServer, make_task_event
from tests.test_delivery import T0, VirtualTime, dispatching, until


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Buggy:
    """The webhook sink, behind a bug that raises for the events ``crash`` picks."""

    def __init__(self, inner: Sink, crash: Callable[[Event], bool]) -> None:
        self.name = inner.name
        self.default_rate = inner.default_rate
        self.default_concurrency = inner.default_concurrency
        self._inner = inner
        self._crash = crash
        self.crashes: list[str] = []

    async def send(self, event: Event) -> None:
        if self._crash(event):
            self.crashes.append(event.id)
            raise KeyError("blocks")
        await self._inner.send(event)


def _webhook(server: ScriptedServer, session: aiohttp.ClientSession) -> Sink:
    entry = WebhookSinkConfig.model_validate({"name": "ops", "type": "webhook", "url": server.url})
    return build_sink(entry, SinkContext(session, status_url=None))


def _received(server: ScriptedServer) -> list[str]:
    """The event ids the receiver got, in order."""
    return [json.loads(seen.body)["id"] for seen in server.seen]


def _events(count: int) -> list[Event]:
    """Failures of tasks 1, 2, …, a second apart (so each has its own id)."""
    return [
        make_task_event(
            EventType.TASK_FAILED, time=T0 + timedelta(seconds=n), id=n, name=f"Export {n}"
        )
        for n in range(1, count + 1)
    ]


def _outbox_gauge(registry: CollectorRegistry, sink: str) -> float | None:
    return registry.get_sample_value("batchmon_outbox_events", {"tenant": "default", "sink": sink})


class TestUnexpectedErrors:
    """Exceptions other than DeliveryError: bounded retries, then given up."""

    async def test_given_up_after_repeated_crashes_and_the_next_goes_out(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """A bug that hits one event every time costs that event, not the queue behind it."""
        poison, after = _events(2)
        scripted.replies.extend(Reply(204, "") for _ in range(2))
        sink = Buggy(_webhook(scripted, session), lambda e: e.id == poison.id)
        time_ = VirtualTime()
        dispatcher = Dispatcher([Subscription(sink, Route())], store, now=time_, sleep=time_.sleep)
        with capture_logs() as logs:
            async with dispatching(dispatcher):
                await dispatcher.commit([poison, after])
                await until(lambda: len(scripted.seen) == 1 and dispatcher.given_up["ops"] == 1)

        assert [after.id] == _received(scripted)
        assert [poison.id] * MAX_CRASHES == sink.crashes
        assert (1, MAX_CRASHES, 1, 0) == (
            dispatcher.delivered["ops"],
            dispatcher.failed["ops"],
            dispatcher.given_up["ops"],
            dispatcher.queued("ops"),
        )
        assert {} == await store.pending_counts()
        # The traceback once; a warning for each retry; one give-up naming the bug.
        [crashed] = [e for e in logs if e["event"] == "sink_crashed"]
        assert isinstance(crashed["exc_info"], KeyError)
        assert ("error", poison.id) == (crashed["log_level"], crashed["event_id"])
        retried = [e for e in logs if e["event"] == "delivery_failed"]
        assert MAX_CRASHES - 1 == len(retried)
        assert all("exc_info" not in e for e in retried)
        [given_up] = [e for e in logs if e["event"] == "delivery_given_up"]
        assert "internal error" in given_up["reason"]
        assert "KeyError: 'blocks'" == given_up["error"]
        assert (poison.id, MAX_CRASHES) == (given_up["event_id"], given_up["attempts"])

    async def test_a_few_crashes_per_event_are_retried_through(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """Crashes are counted per delivery: each event may crash up to the bound and still go."""
        events = _events(3)
        scripted.replies.extend(Reply(204, "") for _ in events)
        left = {e.id: MAX_CRASHES - 1 for e in events}

        def crash(event: Event) -> bool:
            left[event.id] -= 1
            return left[event.id] >= 0

        sink = Buggy(_webhook(scripted, session), crash)
        time_ = VirtualTime()
        dispatcher = Dispatcher([Subscription(sink, Route())], store, now=time_, sleep=time_.sleep)
        async with dispatching(dispatcher):
            await dispatcher.commit(events)
            await until(lambda: len(scripted.seen) == len(events))

        # One event per task: a task waiting for its retry holds up no other.
        assert sorted(e.id for e in events) == sorted(_received(scripted))
        assert (0, 3 * (MAX_CRASHES - 1)) == (dispatcher.given_up["ops"], dispatcher.failed["ops"])

    async def test_destination_errors_are_not_counted_as_crashes(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """Many 503s and a crash in between: still retried, since only one was a bug."""
        [event] = _events(1)
        scripted.replies.extend([*(Reply(503, "busy") for _ in range(MAX_CRASHES)), Reply(204)])
        calls = []

        def crash(_: Event) -> bool:
            calls.append(1)
            return len(calls) == 2

        sink = Buggy(_webhook(scripted, session), crash)
        time_ = VirtualTime()
        dispatcher = Dispatcher([Subscription(sink, Route())], store, now=time_, sleep=time_.sleep)
        async with dispatching(dispatcher):
            await dispatcher.commit([event])
            await until(lambda: dispatcher.delivered["ops"] == 1)

        assert (MAX_CRASHES + 1, 0) == (dispatcher.failed["ops"], dispatcher.given_up["ops"])

    async def test_drain_gives_up_too(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """At shutdown a crash stops that sink's flush; crashes add up across flushes.

        The flush that gives the event up goes on with the next one.
        """
        poison, after = _events(2)
        scripted.replies.append(Reply(204, ""))
        sink = Buggy(_webhook(scripted, session), lambda e: e.id == poison.id)
        time_ = VirtualTime()
        dispatcher = Dispatcher(
            [Subscription(sink, Route())], store, now=time_, sleep=time_.sleep, backoff_base=0
        )
        await dispatcher.start()
        await dispatcher.commit([poison, after])
        for _ in range(MAX_CRASHES - 1):
            await dispatcher.drain()
        assert [] == _received(scripted)
        assert [poison.id] * (MAX_CRASHES - 1) == sink.crashes

        await dispatcher.drain()
        assert [poison.id] * MAX_CRASHES == sink.crashes
        assert [after.id] == _received(scripted)
        assert (1, 0) == (dispatcher.given_up["ops"], dispatcher.queued("ops"))


class TestStoredRows:
    """Rows an earlier version left in the outbox."""

    @staticmethod
    def _insert(store: SqliteStore, text: str, event_id: str = "queued-before") -> None:
        with sqlite3.connect(store.path) as db:
            db.execute(
                "INSERT INTO outbox (sink, event_id, type, event, created) "
                "VALUES ('ops', ?, 'task.failed', ?, ?)",
                (event_id, text, time.time()),
            )
        db.close()

    async def test_half_an_emoji_is_delivered_as_a_replacement_character(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """stdlib json kept '\\ud83d': the event goes out with U+FFFD, then the next one."""
        old = make_task_event(name="Report \ud83d", time=T0)
        self._insert(store, json.dumps(old.to_dict()))
        [new] = _events(1)
        scripted.replies.extend(Reply(204, "") for _ in range(2))
        dispatcher = Dispatcher([Subscription(_webhook(scripted, session), Route())], store)
        async with dispatching(dispatcher):
            await dispatcher.commit([new])
            await until(lambda: len(scripted.seen) == 2)

        assert [old.id, new.id] == _received(scripted)
        first = json.loads(scripted.seen[0].body.decode("utf-8"))
        assert f"Report {REPLACEMENT}" == first["data"]["task"]["name"]
        assert (2, 0, 0) == (
            dispatcher.delivered["ops"],
            dispatcher.failed["ops"],
            dispatcher.given_up["ops"],
        )

    async def test_outbox_gauge_after_an_unreadable_row(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """The store drops a row it cannot read; batchmon_outbox_events counts it out at once."""
        self._insert(store, "{not json")
        delivered, waiting = _events(2)
        scripted.replies.extend([Reply(204, ""), *(Reply(503, "busy") for _ in range(5))])
        dispatcher = Dispatcher(
            [Subscription(_webhook(scripted, session), Route())], store, backoff_base=60
        )
        tenant = TenantState("default", Tracker(Rules()), ApiHealth(3), RequestStats(), dispatcher)
        registry = make_registry(BatchmonCollector(lambda: [tenant]))
        await dispatcher.start()
        assert 1 == _outbox_gauge(registry, "ops")

        async with anyio.create_task_group() as group:
            group.start_soon(dispatcher.run)
            await dispatcher.commit([delivered, waiting])
            await until(lambda: dispatcher.failed["ops"] == 1)
            # One delivered, one waiting for its retry, the unreadable one gone.
            assert 1 == _outbox_gauge(registry, "ops")
            group.cancel_scope.cancel()

        assert [delivered.id, waiting.id] == _received(scripted)
        assert (1, 1) == (dispatcher.delivered["ops"], sum((await store.pending_counts()).values()))

    async def test_count_stays_right_while_events_keep_coming(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """Commits while the worker delivers: the count ends at zero, with the outbox."""
        events = _events(30)
        scripted.replies.extend(Reply(204, "") for _ in events)
        dispatcher = Dispatcher([Subscription(_webhook(scripted, session), Route())], store)
        async with dispatching(dispatcher):
            for event in events:
                await dispatcher.commit([event])
            await until(lambda: len(scripted.seen) == len(events))
            await until(lambda: dispatcher.queued("ops") == 0)

        assert 0 == dispatcher.queued("ops")
        assert sum((await store.pending_counts()).values()) == 0
        assert [e.id for e in events] == _received(scripted)
