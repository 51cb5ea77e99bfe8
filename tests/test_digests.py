"""Digests: what one message for many events says, in every chat format, and how the
dispatcher sends a chat sink's outbox as digests (window, quiet hours, cap) in simulated time."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from monitor.delivery.dispatcher import Dispatcher, Subscription
from monitor.delivery.grouping import Grouping, quiet_hours
from monitor.delivery.sqlite import SqliteStore
from monitor.sinks.base import Route
from monitor.sinks.digest import digest_message, digest_of, ids_query, tasks_url
from monitor.sinks.http import ChatSink
from monitor.sinks.render import Renderer
from monitor.sinks.slack import SlackSink
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import Event, EventType
from monitor.windows import parse_window
from tests.chat_formats import discord_problems, slack_problems, teams_problems
from tests.conftest import Reply, ScriptedServer, make_task_event
from tests.test_delivery import T0, VirtualTime, dispatching, until
from tests.test_sinks_chat import STATUS, _sink


def failure(task_id: int, at: float = 0.0, kind: EventType = EventType.TASK_FAILED) -> Event:
    """Task ``task_id`` ("Export <id>") failed (or ``kind``) ``at`` seconds after T0."""
    state = BatchTaskState.SUCCEEDED if kind is EventType.TASK_SUCCEEDED else BatchTaskState.FAILED
    return make_task_event(
        kind,
        time=T0 + timedelta(seconds=at),
        id=task_id,
        name=f"Export {task_id}",
        state=state,
        progress=100 if state is BatchTaskState.SUCCEEDED else 40,
    )


STORM = [failure(task_id, at=task_id / 20) for task_id in range(1, 201)]


class TestWhatADigestSays:
    def test_a_storm_names_twenty_and_counts_the_rest(self) -> None:
        """200 failures: one section, 20 tasks named, 180 counted with a filtered link."""
        message = digest_message(digest_of(STORM), STATUS)

        assert "📋 200 failed" == message.title
        assert (("Failed", "200"),) == message.facts
        lines = message.text.splitlines()
        assert "Failed (200):" == lines[0]
        assert "• Export 1 — Failed · 40 % · https://batchmon.example.com/tasks/1" == lines[1]
        assert 20 == sum(line.startswith("• ") for line in lines)
        assert "… and 180 more: https://batchmon.example.com/?ids=21-200" == lines[-1]
        assert "https://batchmon.example.com/?ids=1-200" == message.link
        assert "batchmon digest · 200 events · 200 tasks" == message.footer

    def test_a_condition_that_ended_is_reported_as_ended(self) -> None:
        """Failed then finished: listed as "Failed, since finished", in a good tone."""
        digest = digest_of([failure(7), failure(7, 60, EventType.TASK_SUCCEEDED), failure(8)])
        message = digest_message(digest, None)

        assert "📋 1 failed, since finished, 1 failed" == message.title
        assert "Failed, since finished (1):" == message.text.splitlines()[0]
        assert (2, 3) == (len(digest.entries), digest.events)
        assert message.link is None

    def test_monitor_events_pair_up(self) -> None:
        """API down then recovered is one entry, ended; another monitor event stays apart."""
        events = [
            Event("d", EventType.MONITOR_API_DOWN, T0, message="3 cycles failed"),
            Event("a", EventType.MONITOR_AUTH_FAILED, T0),
            Event("r", EventType.MONITOR_API_RECOVERED, T0),
        ]
        sections = [entry.section for entry in digest_of(events).entries]

        assert [
            "SuperOffice API down, since SuperOffice API recovered",
            "Credentials rejected",
        ] == (sections)

    def test_held_back_and_quiet_are_said(self) -> None:
        """The cap's count and quiet hours show in the message."""
        message = digest_message(digest_of(STORM[:5], held_back=5, after_quiet=True), STATUS)

        assert message.title.endswith("(during quiet hours)")
        assert ("Held back", "5 more events held back by the hourly cap") in message.facts

    def test_same_events_same_id(self) -> None:
        """A retried digest is the same message (its id comes from its events)."""
        assert digest_of(STORM[:3]).id == digest_of(STORM[:3]).id != digest_of(STORM[:4]).id

    @pytest.mark.parametrize(
        ("ids", "query"),
        [([5], "5"), ([1, 2, 3, 7, 9, 10], "1-3,7,9-10"), ([3, 1, 2, 2], "1-3")],
    )
    def test_ids_query(self, ids: list[int], query: str) -> None:
        """Runs of ids become ranges: a storm of 200 is a short link."""
        assert query == ids_query(ids)

    def test_too_many_scattered_ids_link_the_whole_page(self) -> None:
        """A link that would be too long for a chat button is the status page itself."""
        assert STATUS == tasks_url(STATUS, list(range(1, 4000, 2)))
        assert "https://h/x/?ids=1" == tasks_url("https://h/x", [1])


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("slack", slack_problems),
        ("discord", discord_problems),
        ("teams", teams_problems),
        ("mattermost", None),
        ("googlechat", None),
    ],
)
async def test_each_format_posts_a_valid_digest(
    scripted: ScriptedServer, session: aiohttp.ClientSession, kind: str, check: Any
) -> None:
    """A 200-task digest, with hostile names, passes each format's own validator."""
    hostile = [failure(i) for i in range(1, 30)]
    hostile.append(make_task_event(id=999, name="@everyone <!channel> " + "x" * 500))
    sink = _sink(kind, scripted.url, session)
    assert isinstance(sink, ChatSink)
    for events in (STORM, hostile):
        scripted.replies.append(Reply(200, "ok"))
        await sink.send_digest(digest_of(events))
    for seen in scripted.seen:
        payload = json.loads(seen.body)
        assert "200" in seen.body.decode() or "30" in seen.body.decode()
        if check is not None:
            assert [] == check(payload)
        assert len(seen.body) < 28_000


def slack(server: ScriptedServer, session: aiohttp.ClientSession) -> SlackSink:
    """A real Slack sink posting to the loopback receiver."""
    return SlackSink(
        "chat", server.url, session, renderer=Renderer("chat", template=None, status_url=STATUS)
    )


def texts(server: ScriptedServer) -> list[str]:
    """The fallback text of every message the receiver got."""
    return [json.loads(seen.body)["text"] for seen in server.seen]


async def run_until(
    dispatcher: Dispatcher, server: ScriptedServer, messages: int, events: Sequence[Event] = ()
) -> None:
    """Run the dispatcher, commit ``events`` in one go, until ``messages`` went out, all of it."""
    async with dispatching(dispatcher):
        if events:
            await dispatcher.commit(events)
        await until(
            lambda: len(server.seen) >= messages and dispatcher.queued("chat") == 0, within=20
        )


class TestDispatching:
    async def test_a_storm_is_one_digest(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """200 failures within the window: one message, the outbox emptied."""
        clock = VirtualTime()
        subscription = Subscription(
            slack(scripted, session), Route(), grouping=Grouping(window=30.0)
        )
        dispatcher = Dispatcher([subscription], store, now=clock, sleep=clock.sleep)
        scripted.replies.extend(Reply(200, "ok") for _ in range(5))
        await run_until(dispatcher, scripted, 1, STORM)

        assert ["📋 200 failed"] == texts(scripted)
        assert [] == await store.queued("chat")
        assert 200 == dispatcher.delivered["chat"]

    async def test_few_tasks_go_alone_after_the_window(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """Three tasks (``group_min``) in a window: three messages, as without a window."""
        clock = VirtualTime()
        subscription = Subscription(
            slack(scripted, session), Route(), grouping=Grouping(window=30.0)
        )
        dispatcher = Dispatcher([subscription], store, now=clock, sleep=clock.sleep)
        scripted.replies.extend(Reply(200, "ok") for _ in range(5))
        await run_until(dispatcher, scripted, 3, STORM[:3])

        assert ["❌ Export 1 failed", "❌ Export 2 failed", "❌ Export 3 failed"] == texts(scripted)
        assert clock.now >= T0 + timedelta(seconds=30)

    async def test_quiet_hours_end_in_one_digest_of_what_ended(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """A failure and its recovery on a quiet Saturday: one digest on Monday, as ended."""
        clock = VirtualTime()  # T0 is Saturday 2026-11-28 12:00 UTC
        quiet = quiet_hours([parse_window("Sat-Sun", "UTC")])
        subscription = Subscription(
            slack(scripted, session), Route(), grouping=Grouping(quiet_until=quiet)
        )
        dispatcher = Dispatcher([subscription], store, now=clock, sleep=clock.sleep)
        scripted.replies.extend(Reply(200, "ok") for _ in range(5))
        events = [failure(7), failure(7, 60, EventType.TASK_SUCCEEDED)]

        await run_until(dispatcher, scripted, 1, events)

        assert ["📋 1 failed, since finished (during quiet hours)"] == texts(scripted)
        assert clock.now >= T0 + timedelta(hours=36)  # Monday 00:00

    async def test_the_cap_folds_the_rest_into_one_digest(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """``max_per_hour = 2`` and five failures: one alone, then one digest of four."""
        clock = VirtualTime()
        subscription = Subscription(
            slack(scripted, session), Route(), grouping=Grouping(max_per_hour=2)
        )
        dispatcher = Dispatcher([subscription], store, now=clock, sleep=clock.sleep)
        scripted.replies.extend(Reply(200, "ok") for _ in range(5))
        await run_until(dispatcher, scripted, 2, STORM[:5])

        assert ["❌ Export 1 failed", "📋 4 failed"] == texts(scripted)
        held = json.loads(scripted.seen[1].body)["blocks"][1]["fields"]
        assert "4 more events held back by the hourly cap" in json.dumps(held)

    async def test_the_cap_outlives_a_restart(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """``max_per_hour = 2``, two messages sent 20 minutes apart, a restart: what comes
        within the hour waits for room and goes as one held-back digest, not out alone in a
        fresh hour."""
        path = tmp_path / "state.db"
        clock = VirtualTime()
        grouping = Grouping(max_per_hour=2)
        scripted.replies.extend(Reply(200, "ok") for _ in range(5))
        first = await SqliteStore.open(path)
        dispatcher = Dispatcher(
            [Subscription(slack(scripted, session), Route(), grouping=grouping)],
            first,
            now=clock,
            sleep=clock.sleep,
        )
        async with dispatching(dispatcher):
            for sent, event in enumerate(STORM[:2], start=1):
                clock.now = T0 + timedelta(minutes=20 * (sent - 1))
                await dispatcher.commit([event])
                with anyio.fail_after(10):  # the post recorded, not only seen by the receiver
                    while len(await first.posts("chat", 0.0)) < sent:  # noqa: ASYNC110 - the worker's write
                        await anyio.sleep(0.005)
        await first.close()

        clock.now = T0 + timedelta(minutes=30)
        second = await SqliteStore.open(path)
        again = Dispatcher(
            [Subscription(slack(scripted, session), Route(), grouping=grouping)],
            second,
            now=clock,
            sleep=clock.sleep,
        )
        await run_until(again, scripted, 3, STORM[2:5])
        await second.close()

        assert ["❌ Export 1 failed", "❌ Export 2 failed", "📋 3 failed"] == texts(scripted)
        held = json.loads(scripted.seen[2].body)["blocks"][1]["fields"]
        assert "3 more events held back by the hourly cap" in json.dumps(held)
        assert clock.now >= T0 + timedelta(hours=1)

    async def test_a_failed_digest_is_kept_whole_and_sent_once(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, store: SqliteStore
    ) -> None:
        """A 503 keeps all rows for one retry of the same digest; nothing goes out alone."""
        clock = VirtualTime()
        subscription = Subscription(
            slack(scripted, session), Route(), grouping=Grouping(window=30.0)
        )
        dispatcher = Dispatcher([subscription], store, now=clock, sleep=clock.sleep)
        scripted.replies.extend([Reply(503, "busy"), Reply(200, "ok"), Reply(200, "ok")])
        await run_until(dispatcher, scripted, 2, STORM[:10])

        assert ["📋 10 failed", "📋 10 failed"] == texts(scripted)
        assert (1, 10) == (dispatcher.failed["chat"], dispatcher.delivered["chat"])

    async def test_rows_survive_a_restart_mid_window(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """Stopped while the window is open: the next run sends the digest, once."""
        path = tmp_path / "state.db"
        clock = VirtualTime()
        grouping = Grouping(window=3600.0)
        first = await SqliteStore.open(path)
        dispatcher = Dispatcher(
            [Subscription(slack(scripted, session), Route(), grouping=grouping)],
            first,
            now=clock,
            sleep=clock.sleep,
        )
        await dispatcher.commit(STORM[:50])
        await dispatcher.drain()  # a shutdown mid-window sends nothing of a held digest
        await first.close()
        assert [] == scripted.seen

        clock.now += timedelta(hours=2)
        second = await SqliteStore.open(path)
        again = Dispatcher(
            [Subscription(slack(scripted, session), Route(), grouping=grouping)],
            second,
            now=clock,
            sleep=clock.sleep,
        )
        scripted.replies.append(Reply(200, "ok"))
        await run_until(again, scripted, 1)
        await second.close()

        assert ["📋 50 failed"] == texts(scripted)
