"""What escalation sinks were told of, and when capped sinks posted, in each store: kept across
restarts, bounded (one record per sink and task; posts of the last hour), and the SQLite migration
that brought their tables (PostgreSQL's: tests/test_store_postgres.py)."""

from __future__ import annotations

from pathlib import Path

from monitor.delivery.outbox import Told
from monitor.delivery.schema import SCHEMA_VERSION
from monitor.delivery.sqlite import SqliteStore
from monitor.tracking.events import EventType
from monitor.types import DeliveryStore
from tests.conftest import StoreOpener, make_task_event
from tests.state_files import older_database, stored_version

NOW = 1_800_000_000.0
HOUR = 3600.0


def _told(task_id: int, sink: str = "boss", since: int = 0) -> Told:
    return Told(sink, task_id, f"task.failed|{task_id}|{since}", NOW + since)


class TestTold:
    """Written with the escalation's delivery, one per sink and task, dropped with its end."""

    async def test_kept_with_the_delivery_across_a_restart(self, open_backend: StoreOpener) -> None:
        """A commit queues the escalation and records it; a reopened store still knows."""
        store = await open_backend()
        event = make_task_event(EventType.TASK_FAILED, id=7)
        await store.commit([], [("boss", event)], NOW, told=[_told(7)])
        await store.close()

        store = await open_backend()
        told, pending = await store.told(), await store.pending_counts()
        await store.close()
        assert ([_told(7)], {"boss": 1}) == (told, pending)

    async def test_one_per_sink_and_task(self, backend: DeliveryStore) -> None:
        """A later condition of the task replaces the sink's record; other sinks keep theirs."""
        await backend.commit([], [], NOW, told=[_told(7), _told(7, "lead"), _told(8)])
        await backend.commit([], [], NOW, told=[_told(7, since=60)])
        assert [_told(7, since=60), _told(7, "lead"), _told(8)] == sorted(
            await backend.told(), key=lambda t: (t.task_id, t.sink)
        )

    async def test_dropped_when_the_condition_ends(self, backend: DeliveryStore) -> None:
        """A task failing and recovering a hundred times leaves at most one record."""
        sizes = set()
        for run in range(100):
            await backend.commit([], [], NOW + run, told=[_told(7, since=run)])
            sizes.add(len(await backend.told()))
            await backend.commit([], [], NOW + run, untold=[("boss", 7)])
        assert ({1}, []) == (sizes, await backend.told())

    async def test_forgotten_with_the_task_or_the_sink(self, backend: DeliveryStore) -> None:
        """A forgotten task, a sink no longer configured: their records go."""
        await backend.commit([], [], NOW, told=[_told(1), _told(2), _told(3, "gone")])
        await backend.forget_tasks([1])
        await backend.drop_sinks_except(["boss"])
        assert [_told(2)] == await backend.told()


class TestPosts:
    """When a capped sink posted: kept an hour, per sink."""

    async def test_the_last_hour_across_a_restart(self, open_backend: StoreOpener) -> None:
        """Posts older than an hour are dropped as new ones come; the rest survive a reopen."""
        store = await open_backend()
        for minute in (0, 30, 50, 70, 95):
            at = NOW + minute * 60
            await store.record_post("chat", at, keep_after=at - HOUR)
        await store.record_post("other", NOW, keep_after=NOW - HOUR)
        await store.close()

        store = await open_backend()
        since = NOW + 95 * 60 - HOUR
        kept = await store.posts("chat", since)
        everything = await store.posts("chat", 0.0)
        other = await store.posts("other", 0.0)
        await store.close()
        assert [NOW + m * 60 for m in (50, 70, 95)] == kept == everything
        assert [NOW] == other

    async def test_a_removed_sink_takes_its_posts(self, backend: DeliveryStore) -> None:
        """No longer configured: its posts go."""
        await backend.record_post("chat", NOW, keep_after=NOW - HOUR)
        await backend.drop_sinks_except([])
        assert [] == await backend.posts("chat", 0.0)


class TestMigration:
    """A state database of version 3 gains both tables in place."""

    async def test_version_3_is_migrated(self, tmp_path: Path) -> None:
        """Its watches stay; records and posts can be stored; the version is raised."""
        path = tmp_path / "state.db"
        older_database(path, 3)

        store = await SqliteStore.open(path)
        await store.commit([], [], NOW, told=[_told(212)])
        await store.record_post("chat", NOW, keep_after=NOW - HOUR)
        found = (await store.watches(), await store.told(), await store.posts("chat", 0.0))
        await store.close()

        assert not list(tmp_path.glob("*.corrupt-*"))
        assert ([212], [_told(212)], [NOW]) == found
        assert str(SCHEMA_VERSION) == stored_version(path)
