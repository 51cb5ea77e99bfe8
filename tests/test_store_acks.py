"""Acknowledgements in each store, and the SQLite migration that brought their table (PostgreSQL's:
tests/test_store_postgres.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.delivery.outbox import StoreError
from monitor.delivery.schema import SCHEMA_VERSION
from monitor.delivery.sqlite import SqliteStore
from monitor.tracking.acks import Ack
from monitor.tracking.events import EventType
from monitor.types import DeliveryStore
from tests.conftest import StoreOpener, make_task_event
from tests.state_files import older_database, stored_version

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _ack(task_id: int, by: str = "alice", comment: str | None = "on it") -> Ack:
    return Ack(task_id, f"task.failed|{task_id}|1|-|{AT.isoformat()}", by, comment, AT)


class TestAcks:
    """Stored, replaced, dropped; forgotten with their task."""

    async def test_round_trip(self, open_backend: StoreOpener) -> None:
        """What is put comes back after a reopen, one per task, the last one winning."""
        store = await open_backend()
        await store.put_ack(_ack(1))
        await store.put_ack(_ack(2, comment=None))
        await store.put_ack(_ack(1, by="bob", comment="mine now"))
        await store.close()

        store = await open_backend()
        stored = await store.acks()
        await store.close()
        assert [_ack(1, by="bob", comment="mine now"), _ack(2, comment=None)] == stored
        assert ["2026-12-03T12:00:00+00:00"] * 2 == [ack.at.isoformat() for ack in stored]

    async def test_dropped_and_forgotten(self, backend: DeliveryStore) -> None:
        """Taken back or lapsed: dropped; a forgotten task takes its acknowledgement along."""
        for task_id in (1, 2, 3, 4):
            await backend.put_ack(_ack(task_id))
        await backend.drop_acks([1])
        await backend.drop_acks([])
        await backend.forget_tasks([2, 4])
        assert [3] == [ack.task_id for ack in await backend.acks()]


class TestMigration:
    """A state database of version 1 is brought to the current version in place."""

    async def test_version_1_gains_the_acks_table(self, tmp_path: Path) -> None:
        """Tasks and watches kept, the acks table added, the version raised."""
        path = tmp_path / "state.db"
        older_database(path, 1)

        store = await SqliteStore.open(path)
        await store.put_ack(_ack(212))
        watches, acks = await store.watches(), await store.acks()
        await store.close()

        assert not list(tmp_path.glob("*.corrupt-*"))  # not moved aside
        assert ([212], [_ack(212)], str(SCHEMA_VERSION)) == (watches, acks, stored_version(path))


class TestWithTheirEvent:
    """An acknowledgement is stored (or dropped) in the commit that announces it."""

    async def test_stored_and_dropped_with_the_event(self, open_backend: StoreOpener) -> None:
        """Committed with its event: both there after a reopen; taken back: gone with its own."""
        store = await open_backend()
        taken = make_task_event(EventType.TASK_ACKNOWLEDGED, id=1)
        await store.commit([], [("ops", taken)], 0.0, acks=[_ack(1), _ack(2)])
        await store.close()

        store = await open_backend()
        found = (await store.acks(), await store.pending_counts())
        back = make_task_event(EventType.TASK_FAILED, id=1, message="Acknowledgement taken back")
        await store.commit([], [("ops", back)], 0.0, unacked=[1])
        left = (await store.acks(), await store.pending_counts())
        await store.close()
        assert ([_ack(1), _ack(2)], {"ops": 1}) == found
        assert ([_ack(2)], {"ops": 2}) == left

    async def test_neither_when_the_commit_fails(self, backend: DeliveryStore) -> None:
        """A commit that fails (a task id no column can hold) stores no acknowledgement."""
        unstorable = make_task_event(EventType.TASK_ACKNOWLEDGED, id=2**70)
        with pytest.raises(StoreError):
            await backend.commit([], [("ops", unstorable)], 0.0, acks=[_ack(1)])
        assert ([], {}) == (await backend.acks(), await backend.pending_counts())
