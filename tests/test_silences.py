"""Silences: what they cover, what they mute when, what is said when they end, and that they
last across restarts and end, on a manual clock."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.delivery.dispatcher import Dispatcher, Subscription
from monitor.delivery.schema import SCHEMA_VERSION
from monitor.delivery.silences import Silencer, SilenceRequest, SilenceRequestError
from monitor.delivery.sqlite import SqliteStore
from monitor.sinks.base import Route
from monitor.sinks.log import LogSink
from monitor.tracking.events import Event, EventType
from monitor.tracking.silences import Silence, end_announcements, muting, split_ended
from monitor.types import DeliveryStore
from tests.conftest import ManualClock, StoreOpener, make_task_event
from tests.state_files import older_database, stored_version

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def silence(**fields: Any) -> Silence:
    values: dict[str, Any] = {
        "id": "s1",
        "reason": "upgrade",
        "created": T0,
        "ends": T0 + 2 * H,
    }
    values.update(fields)
    return Silence(**values)


def task_event(task_id: int = 212, name: str | None = "Export") -> Event:
    event = make_task_event(id=task_id, name=name)
    return replace(event, id=f"{event.id}-{task_id}")


API_DOWN = Event(id="down", type=EventType.MONITOR_API_DOWN, time=T0)

# (case, silence, event, minutes after T0, muted)
MUTING: list[tuple[str, Silence, Event, int, bool]] = [
    ("by id", silence(ids=(212,)), task_event(), 10, True),
    ("another id", silence(ids=(213,)), task_event(), 10, False),
    ("by glob", silence(names=("Exp*",)), task_event(), 10, True),
    ("glob is case-sensitive", silence(names=("exp*",)), task_event(), 10, False),
    ("glob on a task without name", silence(names=("*",)), task_event(name=None), 10, True),
    ("all, a task", silence(all=True), task_event(), 10, True),
    ("all, the monitor", silence(all=True), API_DOWN, 10, True),
    ("ids spare the monitor", silence(ids=(212,)), API_DOWN, 10, False),
    ("names spare the monitor", silence(names=("*",)), API_DOWN, 10, False),
    ("a minute before the end", silence(ids=(212,)), task_event(), 119, True),
    ("at the end", silence(ids=(212,)), task_event(), 120, False),
    ("after the end", silence(ids=(212,)), task_event(), 600, False),
]


class TestMuting:
    """Which silence keeps an event from chat and alerts, at a given time."""

    @pytest.mark.parametrize(
        ("rule", "event", "minutes", "muted"), [c[1:] for c in MUTING], ids=[c[0] for c in MUTING]
    )
    def test_table(self, rule: Silence, event: Event, minutes: int, muted: bool) -> None:
        """Ids and globs cover tasks, all covers everything, until the end time."""
        now = T0 + timedelta(minutes=minutes)
        assert muted == (muting(event, [rule], now) is rule)

    def test_split(self) -> None:
        """Active ones go on; ended ones are swept."""
        short, long = silence(id="a", ends=T0 + H), silence(id="b", ends=T0 + 3 * H)
        assert ([long], [short]) == split_ended([short, long], T0 + 2 * H)

    def test_round_trip(self) -> None:
        """Stored as JSON, read back the same; one selector each."""
        for rule in (silence(ids=(1, 2)), silence(names=("Ex*",)), silence(all=True, by="ann")):
            assert rule == Silence.from_dict(json.loads(json.dumps(rule.to_dict())))
        assert {"all": True} == {k: v for k, v in silence(all=True).to_dict().items() if k == "all"}


FAILED = task_event(212, "Export")
STALLED = replace(task_event(213, "Import"), type=EventType.TASK_STALLED)


class TestEndAnnouncements:
    """What is said when silences end."""

    def test_still_failing_is_announced(self) -> None:
        """A covered condition still firing is announced, with a new id and the silence named."""
        ended = silence(ids=(212,))
        (announced,) = end_announcements([ended], [], [FAILED, STALLED], T0 + 2 * H)

        assert EventType.TASK_FAILED is announced.type
        assert FAILED.id != announced.id
        assert T0 + 2 * H == announced.time
        assert "Silence s1 ended (upgrade): still failed" == announced.message

    def test_same_id_twice(self) -> None:
        """The announcement's id is fixed by silence and condition: a repeat is recognised."""
        first = end_announcements([silence(all=True)], [], [FAILED], T0 + 2 * H)
        again = end_announcements([silence(all=True)], [], [FAILED], T0 + 3 * H)
        assert [e.id for e in first] == [e.id for e in again]

    def test_still_covered_by_another(self) -> None:
        """A condition another silence still covers stays quiet."""
        other = silence(id="s2", names=("Exp*",), ends=T0 + 5 * H)
        assert [] == end_announcements([silence(ids=(212,))], [other], [FAILED], T0 + 2 * H)

    def test_nothing_firing(self) -> None:
        """Nothing firing: nothing said."""
        assert [] == end_announcements([silence(all=True)], [], [], T0 + 2 * H)

    def test_stalled_wording(self) -> None:
        """A stalled task is said to be still stalled."""
        (announced,) = end_announcements([silence(all=True)], [], [STALLED], T0 + 2 * H)
        assert (announced.message or "").endswith("still stalled")


# (case, body, the problem's start, or None when valid)
REQUESTS: list[tuple[str, object, str | None]] = [
    ("ids", {"for": "2h", "reason": "r", "ids": [212]}, None),
    ("names", {"for": "30m", "reason": "r", "names": ["Export*"]}, None),
    ("all", {"for": 60, "reason": "r", "all": True}, None),
    ("a week", {"for": "7d", "reason": "r", "all": True}, None),
    ("more than a week", {"for": "7d1s", "reason": "r", "all": True}, "for: must be more than 0"),
    ("zero", {"for": "0s", "reason": "r", "all": True}, "for: must be more than 0"),
    ("not a duration", {"for": "soon", "reason": "r", "all": True}, "for: expected a duration"),
    ("no selector", {"for": "1h", "reason": "r"}, 'give exactly one of "ids"'),
    ("two selectors", {"for": "1h", "reason": "r", "ids": [1], "all": True}, "give exactly one"),
    ("all false", {"for": "1h", "reason": "r", "all": False}, "all: Input should be True"),
    ("empty ids", {"for": "1h", "reason": "r", "ids": []}, "ids: List should have at least"),
    ("id zero", {"for": "1h", "reason": "r", "ids": [0]}, "ids.0: Input should be greater"),
    ("id as text", {"for": "1h", "reason": "r", "ids": ["212"]}, "ids.0: Input should be"),
    ("blank reason", {"for": "1h", "reason": "  ", "all": True}, "reason must say why"),
    ("no reason", {"for": "1h", "all": True}, "reason: Field required"),
    ("unknown key", {"for": "1h", "reason": "r", "all": True, "until": 1}, "until: Extra"),
    ("no for", {"reason": "r", "all": True}, "for: Field required"),
    ("not an object", [1], "the body must be a JSON object"),
]


class TestRequest:
    """``POST /api/v1/silences`` bodies: exactly one selector, at most a week, a reason."""

    @pytest.mark.parametrize(
        ("body", "problem"), [c[1:] for c in REQUESTS], ids=[c[0] for c in REQUESTS]
    )
    def test_table(self, body: object, problem: str | None) -> None:
        """Valid bodies parse; each invalid one says what is wrong."""
        if problem is None:
            assert SilenceRequest.parse(body).seconds > 0
            return
        with pytest.raises(SilenceRequestError) as raised:
            SilenceRequest.parse(body)
        assert str(raised.value).startswith(problem), str(raised.value)


class Recording:
    """A chat-like sink: records what it is sent."""

    default_rate = float("inf")
    default_concurrency = 1

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Event] = []

    async def send(self, event: Event) -> None:
        self.sent.append(event)


class Holding(Recording):
    """A sink that keeps conditions, as Alertmanager's does."""

    def restore(self, firing: object) -> None:
        """Nothing to rebuild here."""


@pytest.fixture(name="silencer")
async def _silencer(backend: DeliveryStore, clock: ManualClock) -> Silencer:
    silencer = Silencer(backend, clock=clock, firing=list)
    await silencer.load()
    return silencer


class TestSilencer:
    """Silences in the store and at fan-out, on a manual clock."""

    async def test_fan_out_spares_the_log(self, backend: DeliveryStore, clock: ManualClock) -> None:
        """A silenced task's events are queued for log sinks only; others' for everyone."""
        silencer = Silencer(backend, clock=clock, firing=list)
        chat, log = Recording("chat"), LogSink("log")
        subscriptions = [Subscription(chat, Route()), Subscription(log, Route())]
        dispatcher = Dispatcher(subscriptions, backend, now=clock, silenced=silencer.mutes)
        await silencer.add({"for": "1h", "reason": "r", "ids": [212]}, by="ann")

        await dispatcher.commit([task_event(212), task_event(213)])

        assert {"log": 2, "chat": 1} == await backend.pending_counts()

    async def test_ends_reach_a_sink_that_keeps_conditions(
        self, backend: DeliveryStore, clock: ManualClock
    ) -> None:
        """Alertmanager still hears a condition end (else it fires it for good); chat does not."""
        silencer = Silencer(backend, clock=clock, firing=list)
        chat, alerts = Recording("chat"), Holding("am")
        subscriptions = [Subscription(chat, Route()), Subscription(alerts, Route())]
        dispatcher = Dispatcher(subscriptions, backend, now=clock, silenced=silencer.mutes)
        await silencer.add({"for": "1h", "reason": "r", "ids": [212]}, by="ann")
        succeeded = replace(task_event(212), type=EventType.TASK_SUCCEEDED)

        await dispatcher.commit([task_event(212), succeeded])

        assert {"am": 1} == await backend.pending_counts()

    async def test_durable_and_ends_on_time(
        self, open_backend: StoreOpener, clock: ManualClock
    ) -> None:
        """A silence survives a restart; at its end it is swept from the store, and the
        failure it kept quiet is announced."""
        backend = await open_backend()
        first = Silencer(backend, clock=clock, firing=list)
        made = await first.add({"for": "2h", "reason": "upgrade", "names": ["Exp*"]}, by="ann")
        await backend.close()
        assert T0.replace(day=28, month=11) + 2 * H == made.ends  # the clock's start + 2h

        backend = await open_backend()
        try:
            announced: list[Event] = []

            async def announce(events: Any) -> None:
                announced.extend(events)

            again = Silencer(backend, clock=clock, firing=lambda: [FAILED])
            again.announce = announce
            await again.load()
            assert [made] == again.active()
            assert again.mutes(FAILED)
            clock.advance(2 * 3600 - 1)
            assert [] == await again.sweep()
            clock.advance(1)
            assert [made] == await again.sweep()
            assert not again.mutes(FAILED)
            assert [] == await backend.silences()
            assert ["Silence " + made.id + " ended (upgrade): still failed"] == [
                e.message for e in announced
            ]
        finally:
            await backend.close()

    async def test_ended_early(self, silencer: Silencer, backend: DeliveryStore) -> None:
        """DELETE ends it at once; ending it twice finds nothing."""
        made = await silencer.add({"for": "1h", "reason": "r", "all": True}, by="ann")
        assert made == await silencer.end(made.id)
        assert await silencer.end(made.id) is None
        assert [] == silencer.active()
        assert [] == await backend.silences()

    async def test_ended_early_announces_to_chat(
        self, backend: DeliveryStore, clock: ManualClock
    ) -> None:
        """``--end``: what the silence kept quiet and still fails reaches chat, not only the log."""
        silencer = Silencer(backend, clock=clock, firing=lambda: [FAILED])
        chat = Recording("chat")
        dispatcher = Dispatcher(
            [Subscription(chat, Route())], backend, now=clock, silenced=silencer.mutes
        )
        silencer.announce = dispatcher.commit
        made = await silencer.add({"for": "2h", "reason": "upgrade", "all": True}, by="ann")
        clock.advance(600)

        await silencer.end(made.id)

        assert {"chat": 1} == await backend.pending_counts()

    async def test_limit(self, backend: DeliveryStore, clock: ManualClock) -> None:
        """Past the limit a new silence is refused, saying so; an ended one makes room."""
        silencer = Silencer(backend, clock=clock, firing=list, limit=2)
        first = await silencer.add({"for": "1h", "reason": "r", "ids": [1]}, by="ann")
        await silencer.add({"for": "2h", "reason": "r", "ids": [2]}, by="ann")
        with pytest.raises(SilenceRequestError, match="2 silences are in force"):
            await silencer.add({"for": "1h", "reason": "r", "ids": [3]}, by="ann")
        await silencer.end(first.id)
        await silencer.add({"for": "1h", "reason": "r", "ids": [3]}, by="ann")

    async def test_by_and_covering(self, silencer: Silencer) -> None:
        """Who asked is kept; the covering silence of a task is found by id or name."""
        made = await silencer.add(
            {"for": "1h", "reason": "r", "names": ["Imp*"], "by": "bo"}, by="x"
        )
        assert "bo" == made.by
        assert made == silencer.covering(5, "Import")
        assert silencer.covering(5, "Export") is None


class TestStoredSilences:
    """Each store keeps silences until they are removed, and says which it removed."""

    async def test_by_end_and_removed(self, backend: DeliveryStore) -> None:
        """Listed soonest end first, ended ones too; removing names what was stored."""
        late = silence(id="late", ends=T0 + 3 * H, names=("Exp*",), by="ann")
        ended = silence(id="ended", ends=T0 - H, all=True)
        soon = silence(id="soon", ids=(1, 2))
        for rule in (late, ended, soon):
            await backend.add_silence(rule)

        assert [ended, soon, late] == await backend.silences()
        assert {"ended", "late"} == await backend.remove_silences(["ended", "late", "gone"])
        assert set() == await backend.remove_silences([])
        assert [soon] == await backend.silences()


class TestMigration:
    """A SQLite file of version 1 gains the silences table; nothing is lost (PostgreSQL's
    migrations: tests/test_store_postgres.py)."""

    async def test_version_1_is_migrated(self, tmp_path: Path) -> None:
        """Opened, it is not moved aside: its task stays and silences can be stored."""
        path = tmp_path / "state.db"
        older_database(path, 1)

        store = await SqliteStore.open(path)
        try:
            await store.add_silence(silence())
            assert [212] == await store.watches()
            assert [silence()] == await store.silences()
        finally:
            await store.close()
        assert str(SCHEMA_VERSION) == stored_version(path)
        assert [] == [p.name for p in tmp_path.iterdir() if ".corrupt" in p.name]


class TestReminders:
    """Reminders of a silenced task are held back, and not sent late when the silence ends."""

    async def test_held_reminder_is_not_sent_after_the_end(
        self, backend: DeliveryStore, clock: ManualClock
    ) -> None:
        """A reminder due during the silence counts as given; the next period's goes out."""
        silencer = Silencer(backend, clock=clock, firing=list)
        chat = Recording("chat")
        dispatcher = Dispatcher(
            [Subscription(chat, Route(), remind_every=3600)],
            backend,
            now=clock,
            silenced=silencer.mutes,
        )
        await silencer.add({"for": "90m", "reason": "r", "all": True}, by="ann")
        conditions = [replace(FAILED, time=clock())]
        queued = []
        for minutes in (61, 30, 30):  # 1h01 (silenced), 1h31 (ended), 2h01
            clock.advance(minutes * 60)
            await silencer.sweep()
            await dispatcher.remind_once(conditions)
            queued.append(await backend.pending_counts())

        assert [{}, {}, {"chat": 1}] == queued
