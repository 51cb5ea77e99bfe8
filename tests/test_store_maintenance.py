"""The maintenance's state in each store, and the SQLite migration that brought its table
(PostgreSQL's: tests/test_store_postgres.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from monitor.delivery.schema import SCHEMA_VERSION
from monitor.delivery.sqlite import SqliteStore
from monitor.tracking.events import EventType
from monitor.tracking.maintenance import Hold, Ledger
from monitor.types import DeliveryStore
from tests.conftest import StoreOpener, make_task_event
from tests.state_files import older_database, stored_version

AT = datetime(2026, 12, 5, 20, 0, tzinfo=UTC)


def _hold() -> Hold:
    """A maintenance under way with a failure, two stalls (one still held) and an outage."""
    stall = make_task_event(EventType.TASK_STALLED, id=212, name="Export", time=AT)
    return Hold(
        ledger=Ledger(
            started=AT,
            names=("Saturday", "SuperOffice tenant state OnlineMaintenance"),
            failed=MappingProxyType({213: "Import"}),
            stalled=MappingProxyType({212: "Export", 214: None}),
            api_down=True,
            announced=True,
            until=datetime(2026, 12, 6, 5, 0, tzinfo=UTC),
        ),
        tenant_down=True,
        unannounced=MappingProxyType({(EventType.TASK_STALLED, 212): stall}),
    )


class TestHold:
    """Stored, replaced, deleted when empty; kept across a reopen."""

    async def test_round_trip(self, open_backend: StoreOpener) -> None:
        """What is put comes back after a reopen, the last one winning."""
        store = await open_backend()
        assert Hold() == await store.hold()
        await store.put_hold(Hold(ledger=Ledger(started=AT, names=("Saturday",))))
        await store.put_hold(_hold())
        await store.close()

        store = await open_backend()
        stored = await store.hold()
        await store.close()
        assert _hold() == stored
        assert stored.ledger is not None
        assert "2026-12-05T20:00:00+00:00" == stored.ledger.started.isoformat()

    async def test_an_empty_hold_is_deleted(self, backend: DeliveryStore) -> None:
        """Nothing under way and nothing held: nothing is kept."""
        await backend.put_hold(_hold())
        await backend.put_hold(Hold())
        assert Hold() == await backend.hold()


class TestMigration:
    """A state database of version 3 gains the maintenance table in place."""

    async def test_version_3_gains_the_maintenance_table(self, tmp_path: Path) -> None:
        """Silences kept, the table added, the version raised."""
        path = tmp_path / "state.db"
        older_database(path, 3)

        store = await SqliteStore.open(path)
        await store.put_hold(_hold())
        watches, hold = await store.watches(), await store.hold()
        await store.close()

        assert not list(tmp_path.glob("*.corrupt-*"))  # not moved aside
        assert ([212], _hold(), str(SCHEMA_VERSION)) == (watches, hold, stored_version(path))
