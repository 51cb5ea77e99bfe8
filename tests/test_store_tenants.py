"""Tenants in each store: a view sees and changes its own tenant's rows only, the same task and
event ids in two tenants never meet, a removed tenant's rows go, and a state database from before
tenants keeps every row under ``default``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from monitor.delivery.outbox import DEFAULT_TENANT, Told
from monitor.delivery.postgres import PostgresStore
from monitor.delivery.postgres_schema import MIGRATIONS as PG_MIGRATIONS
from monitor.delivery.postgres_schema import SCHEMA_VERSION as PG_VERSION
from monitor.delivery.schema import (
    SCHEMA_VERSION,
    TENANTS_VERSION,
    layout,
    schema_layout,
    statements,
)
from monitor.delivery.serial import event_to_json, hold_to_json, memory_to_json
from monitor.delivery.sqlite import TENANT_TABLES, SqliteStore
from monitor.tracking.acks import Ack
from monitor.tracking.maintenance import Hold, Ledger
from monitor.tracking.silences import Silence
from monitor.types import DeliveryStore
from tests.state_files import older_database, stored_version
from tests.test_store import drain, events_for, first_memory, info

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
NOW = 1_800_000_000.0


def _ack(task_id: int, by: str) -> Ack:
    return Ack(task_id, f"task.failed|{task_id}|1|-|{AT.isoformat()}", by, None, AT)


def _silence(reason: str) -> Silence:
    return Silence(id="s1", reason=reason, created=AT, ends=AT, all=True)


def _hold(name: str) -> Hold:
    return Hold(ledger=Ledger(started=AT, names=(name,)))


@pytest.fixture(name="tenants")
async def _tenants(backend: DeliveryStore) -> AsyncIterator[tuple[DeliveryStore, DeliveryStore]]:
    """The views of tenants ``acme`` and ``globex`` of one store; closed before the store."""
    acme, globex = backend.for_tenant("acme"), backend.for_tenant("globex")
    yield acme, globex
    await acme.close()
    await globex.close()


class TestViews:
    """What a view is: a tenant's name on the root's connection."""

    async def test_the_root_is_the_default_tenant(self, backend: DeliveryStore) -> None:
        """The store opened from ``[state]`` and ``for_tenant("default")`` see the same rows."""
        await backend.commit([first_memory(info(7))], [], 0.0)
        default = backend.for_tenant(DEFAULT_TENANT)

        assert ("default", "default", "acme") == (
            backend.tenant,
            default.tenant,
            default.for_tenant("acme").tenant,
        )
        assert [7] == list(await default.load_tasks())
        assert {} == await backend.for_tenant("acme").load_tasks()

    @pytest.mark.parametrize("name", ["", "Acme", "acme corp", "-acme", "a" * 64, "acme/x"])
    async def test_a_name_a_tenant_cannot_have(self, backend: DeliveryStore, name: str) -> None:
        """Not label-safe: refused, saying what a name may be."""
        with pytest.raises(ValueError, match=r"tenant name .*lower case, digits"):
            backend.for_tenant(name)

    async def test_closing_a_view_gives_its_claims_back_and_keeps_the_connection(
        self, backend: DeliveryStore
    ) -> None:
        """Two views of a tenant share its claims; closing one gives them back (the attempt
        stays counted) and every view, the root included, works on."""
        (event,) = events_for(7, {})
        first = backend.for_tenant("acme")
        await first.commit([], [("ops", event)], 0.0)
        held = (await first.claim("ops", 0.0)).delivery
        assert held is not None
        second = backend.for_tenant("acme")
        assert (await second.claim("ops", 0.0)).delivery is None, "the tenant's claim holds"

        await first.close()

        again = (await second.claim("ops", 0.0)).delivery
        assert again is not None
        assert (held.seq, 1) == (again.seq, again.attempts)
        await backend.commit([first_memory(info(8))], [], 0.0)
        assert ([8], [7]) == (list(await backend.load_tasks()), await _watched(first, 7))


async def _watched(store: DeliveryStore, task_id: int) -> list[int]:
    """Add a watch through ``store`` and read its watches back (the store still works)."""
    await store.add_watch(task_id)
    return await store.watches()


class TestIsolation:
    """Two tenants with the same task ids and the same event ids never see each other's rows."""

    async def test_tasks_and_their_forgetting(
        self, tenants: tuple[DeliveryStore, DeliveryStore]
    ) -> None:
        """Task 7 of each tenant is its own; forgetting it in one leaves the other's."""
        acme, globex = tenants
        await acme.commit([first_memory(info(7, Name="Acme export"))], [], 0.0)
        await globex.commit(
            [first_memory(info(7, Name="Globex import")), first_memory(info(8))], [], 0.0
        )

        assert ["Acme export"] == [m.info.name for m in (await acme.load_tasks()).values()]
        await acme.forget_tasks([7, 8])
        assert ({}, [7, 8]) == (await acme.load_tasks(), sorted(await globex.load_tasks()))

    async def test_the_same_events_queue_and_go_out_in_each_tenant(
        self, tenants: tuple[DeliveryStore, DeliveryStore]
    ) -> None:
        """The same event ids to the same sink: queued once per tenant, claimed per tenant
        (task 7 claimed in one does not hold task 7 back in the other), finished per tenant."""
        acme, globex = tenants
        events = events_for(7, {}, {"State": "Failed"})
        queued = [("ops", e) for e in events]
        assert {"ops": 2} == (await acme.commit([], queued, 0.0)).growth
        assert {"ops": 2} == (await globex.commit([], queued, 0.0)).growth
        assert {"ops": 0} == (await globex.commit([], queued, 0.0)).growth, "deduplicated"

        mine = (await acme.claim("ops", 0.0)).delivery
        theirs = (await globex.claim("ops", 0.0)).delivery
        assert mine is not None
        assert theirs is not None
        assert (events[0].id, events[0].id) == (mine.event.id, theirs.event.id)
        assert mine.seq != theirs.seq
        await acme.finish([theirs.seq])
        await acme.retry_later(theirs.seq, 99.0, "not mine")
        await acme.release([theirs.seq])
        assert ({"ops": 2}, 1) == (
            await globex.pending_counts(),
            len(await globex.queued("ops")),
        ), "another tenant's seqs: no effect, the claim holds"

        await acme.finish([mine.seq])
        assert [events[1].id] == [e.id for e in await drain(acme, "ops")]
        assert ({}, {"ops": 2}) == (await acme.pending_counts(), await globex.pending_counts())
        after = await globex.claim("ops", 0.0, done=[theirs.seq])
        assert after.delivery is not None
        assert (events[1].id, 0) == (after.delivery.event.id, after.delivery.attempts)

    async def test_a_claim_never_returns_another_tenants_delivery(
        self, tenants: tuple[DeliveryStore, DeliveryStore]
    ) -> None:
        """Deliveries of one tenant only: the other's claims, commits' claims, digest reads
        and claims by seq find nothing, and nothing waiting either."""
        acme, globex = tenants
        (event,) = events_for(7, {})
        (other,) = events_for(8, {})
        await acme.commit([], [("ops", event)], 0.0)
        await acme.commit([], [("later", other)], 0.0)
        seqs = [q.seq for q in await acme.queued("ops")]

        nothing = await globex.claim("ops", 0.0)
        assert (None, None) == (nothing.delivery, nothing.due_at)
        assert [] == (await globex.commit([], [], 0.0, claim={"ops": 5, "later": 5})).claimed
        assert ([], []) == (await globex.queued("ops"), await globex.claim_seqs("ops", seqs))
        assert {} == await globex.pending_counts()
        assert [event.id] == [e.id for e in await drain(acme, "ops")]

    async def test_history_per_tenant(self, tenants: tuple[DeliveryStore, DeliveryStore]) -> None:
        """Recorded events and known event ids are the tenant's own."""
        acme, globex = tenants
        events = events_for(7, {}, {"State": "Failed"})
        await acme.commit([], [], 0.0, events)
        await globex.commit([], [], 0.0, events[1:])

        ids = [e.id for e in events]
        assert (set(ids), {ids[1]}) == (
            await acme.known_events(ids),
            await globex.known_events(ids),
        )
        assert (ids, ids[1:]) == (
            [e.id for e in await acme.recent_events(7)],
            [e.id for e in await globex.recent_events(7)],
        )
        await globex.forget_tasks([7])
        assert (2, 0) == (len(await acme.recent_events(7)), len(await globex.recent_events(7)))

    async def test_watches_acks_silences_and_the_hold(
        self, tenants: tuple[DeliveryStore, DeliveryStore]
    ) -> None:
        """Each tenant has its own watches, acknowledgements, silences (the same id in both)
        and maintenance hold; removing or emptying them in one leaves the other's."""
        acme, globex = tenants
        for store, name in ((acme, "acme"), (globex, "globex")):
            await store.add_watch(7)
            await store.put_ack(_ack(7, name))
            await store.add_silence(_silence(name))
            await store.put_hold(_hold(name))

        await acme.remove_watch(7)
        await acme.drop_acks([7])
        assert {"s1"} == await acme.remove_silences(["s1"])
        await acme.put_hold(Hold())

        assert ([], [], [], Hold()) == (
            await acme.watches(),
            await acme.acks(),
            await acme.silences(),
            await acme.hold(),
        )
        assert ([7], [_ack(7, "globex")], [_silence("globex")], _hold("globex")) == (
            await globex.watches(),
            await globex.acks(),
            await globex.silences(),
            await globex.hold(),
        )

    async def test_acks_and_escalations_of_a_commit(
        self, tenants: tuple[DeliveryStore, DeliveryStore]
    ) -> None:
        """What a commit records (acknowledgements, escalation records) and drops is the
        tenant's; forgetting a task drops only the tenant's."""
        acme, globex = tenants
        told = Told("boss", 7, "task.failed|7", NOW)
        for store, name in ((acme, "acme"), (globex, "globex")):
            await store.commit([], [], NOW, told=[told], acks=[_ack(7, name)])
        await acme.commit([], [], NOW, untold=[("boss", 7)], unacked=[7])

        assert ([], []) == (await acme.told(), await acme.acks())
        assert ([told], [_ack(7, "globex")]) == (await globex.told(), await globex.acks())
        await acme.commit([], [], NOW, told=[told], acks=[_ack(7, "acme")])
        await globex.forget_tasks([7])
        assert ([told], [_ack(7, "acme")], [], []) == (
            await acme.told(),
            await acme.acks(),
            await globex.told(),
            await globex.acks(),
        )

    async def test_posts_and_removed_sinks(
        self, tenants: tuple[DeliveryStore, DeliveryStore]
    ) -> None:
        """A capped sink's posts are counted per tenant; a sink removed from one tenant's
        configuration loses that tenant's deliveries and records only."""
        acme, globex = tenants
        (event,) = events_for(7, {})
        for store in (acme, globex):
            await store.commit(
                [], [("chat", event), ("ops", event)], NOW, told=[Told("chat", 7, "c", NOW)]
            )
            await store.record_post("chat", NOW, keep_after=0.0)
        await acme.record_post("chat", NOW + 1, keep_after=NOW)

        assert ([NOW + 1], [NOW]) == (
            await acme.posts("chat", 0.0),
            await globex.posts("chat", 0.0),
        )
        assert {"chat": 1} == await acme.drop_sinks_except(["ops"])
        assert ({"ops": 1}, [], []) == (
            await acme.pending_counts(),
            await acme.posts("chat", 0.0),
            await acme.told(),
        )
        assert ({"chat": 1, "ops": 1}, [NOW], 1) == (
            await globex.pending_counts(),
            await globex.posts("chat", 0.0),
            len(await globex.told()),
        )


class TestDroppedTenants:
    """Tenants removed from the configuration lose their rows, counted per tenant."""

    async def test_every_row_of_a_removed_tenant_goes(self, backend: DeliveryStore) -> None:
        """All tables, one count per tenant dropped; the tenants kept keep everything."""
        (event,) = events_for(7, {})
        for name in ("default", "acme", "globex"):
            store = backend.for_tenant(name)
            await store.commit(
                [first_memory(info(7))],
                [("ops", event)],
                NOW,
                told=[Told("ops", 7, "c", NOW)],
                acks=[_ack(7, name)],
            )
            await store.add_watch(7)
            await store.add_silence(_silence(name))
            await store.record_post("ops", NOW, keep_after=0.0)
            await store.put_hold(_hold(name))
        globex = backend.for_tenant("globex")
        held = (await globex.claim("ops", NOW)).delivery
        assert held is not None

        # task, delivery, history, escalation, acknowledgement, watch, silence, post, hold
        assert {"globex": 9} == await backend.drop_tenants_except(["default", "acme", "initech"])
        assert {} == await backend.drop_tenants_except(["default", "acme"])

        assert (
            {},
            {},
            [],
            [],
            [],
            [],
            [],
            Hold(),
        ) == (
            await globex.load_tasks(),
            await globex.pending_counts(),
            await globex.recent_events(7),
            await globex.told(),
            await globex.acks(),
            await globex.watches(),
            await globex.silences(),
            await globex.hold(),
        )
        for name in ("default", "acme"):
            store = backend.for_tenant(name)
            assert ([7], {"ops": 1}, [7], _hold(name)) == (
                list(await store.load_tasks()),
                await store.pending_counts(),
                await store.watches(),
                await store.hold(),
            )


#: Writes the rows of a state database from before tenants: SQL with ``?`` and its values.
Write = Callable[[str, tuple[Any, ...]], None]


def _rows_before_tenants(write: Write, version: int, *, task_key: str = "id") -> None:
    """A row in every table a database of ``version`` has (task 212 is watched already);
    outbox and history numbers 1 and 2 given out, 2 delivered.  ``task_key``: the tasks
    table's key column."""
    events = events_for(7, {}, {"State": "Failed"})
    write(
        f"INSERT INTO tasks ({task_key}, memory) VALUES (?, ?)",
        (7, memory_to_json(first_memory(info(7)))),
    )
    for seq, event in enumerate(events, start=1):
        text = event_to_json(event)
        write(
            "INSERT INTO outbox (sink, event_id, task_id, type, event, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            ("ops", event.id, 7, event.type.value, text, NOW),
        )
        write(
            "INSERT INTO history (event_id, task_id, event) VALUES (?, ?, ?)", (event.id, 7, text)
        )
        if seq == 2:
            write("DELETE FROM outbox WHERE event_id = ?", (event.id,))
            write("DELETE FROM history WHERE event_id = ?", (event.id,))
    ack = _ack(7, "ann")
    if version >= 2:
        write(
            "INSERT INTO acks (task_id, condition, taken_by, comment, taken_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (7, ack.condition, ack.by, ack.comment, ack.at.isoformat()),
        )
    if version >= 3:
        silence = _silence("upgrade")
        write(
            "INSERT INTO silences (id, ends, silence) VALUES (?, ?, ?)",
            (silence.id, silence.ends.timestamp(), json.dumps(silence.to_dict())),
        )
    if version >= 4:
        write(
            "INSERT INTO escalations (sink, task_id, condition, due) VALUES ('ops', 7, 'c', ?)",
            (NOW,),
        )
        write("INSERT INTO posts (sink, at) VALUES ('ops', ?)", (NOW,))
    if version >= 5:
        write(
            "INSERT INTO maintenance (id, hold) VALUES (1, ?)", (hold_to_json(_hold("Saturday")),)
        )


async def _kept_under_default(store: DeliveryStore, version: int) -> None:
    """Every row written by :func:`_rows_before_tenants` is the root's (tenant ``default``),
    none another tenant's; the outbox's numbers go on after the highest ever given."""
    (first, second) = events_for(7, {}, {"State": "Failed"})
    other = store.for_tenant("acme")
    assert [7] == list(await store.load_tasks())
    assert [212] == await store.watches()
    assert {first.id} == await store.known_events([first.id, second.id])
    assert [first.id] == [e.id for e in await store.recent_events(7)]
    assert [_ack(7, "ann")] * (version >= 2) == await store.acks()
    assert [_silence("upgrade")] * (version >= 3) == await store.silences()
    assert [Told("ops", 7, "c", NOW)] * (version >= 4) == await store.told()
    assert [NOW] * (version >= 4) == await store.posts("ops", 0.0)
    assert (_hold("Saturday") if version >= 5 else Hold()) == await store.hold()
    assert ({}, [], [], Hold(), set()) == (
        await other.load_tasks(),
        await other.watches(),
        await other.acks(),
        await other.hold(),
        await other.known_events([first.id]),
    )
    (later,) = events_for(9, {})
    await store.commit([], [("ops", later)], NOW)
    queued = await store.queued("ops")
    assert [(1, 7), (3, 9)] == [(q.seq, q.task_id) for q in queued], "seq 2 is never given again"
    assert [first.id, later.id] == [e.id for e in await drain(store, "ops", NOW)]


class TestMigration:
    """A state database from before tenants keeps every row, all under ``default``."""

    @pytest.mark.parametrize("version", range(1, TENANTS_VERSION))
    async def test_sqlite(self, tmp_path: Path, version: int) -> None:
        """A state file of each older version: rows kept, layout as a new file's, version
        raised, nothing moved aside."""
        path = tmp_path / "state.db"
        older_database(path, version)
        with closing(sqlite3.connect(path)) as db, db:

            def write(sql: str, values: tuple[Any, ...]) -> None:
                db.execute(sql, values)

            _rows_before_tenants(write, version)

        store = await SqliteStore.open(path)
        try:
            await _kept_under_default(store, version)
        finally:
            await store.close()

        with closing(sqlite3.connect(path)) as db:
            assert schema_layout() == layout(db)
        assert (str(SCHEMA_VERSION), []) == (
            stored_version(path),
            list(tmp_path.glob("state.db.corrupt-*")),
        )

    async def test_postgres(self, pg_url: str) -> None:
        """A database at migration 5 with a row in every table."""
        before = TENANTS_VERSION - 1
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as db:
            await db.execute(
                "CREATE TABLE schema_version ("
                "version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
            )
            for version, migration in enumerate(PG_MIGRATIONS[:before], start=1):
                await db.execute(migration.encode())
                await db.execute("INSERT INTO schema_version (version) VALUES (%s)", [version])
            await db.execute("INSERT INTO watches (task_id, added) VALUES (212, 0)")
            rows: list[tuple[str, tuple[Any, ...]]] = []
            _rows_before_tenants(
                lambda sql, values: rows.append((sql, values)), before, task_key="task_id"
            )
            for sql, values in rows:
                await db.execute(sql.replace("?", "%s").encode(), values)

        store = await PostgresStore.open(pg_url)
        try:
            await _kept_under_default(store, before)
        finally:
            await store.close()
        async with await psycopg.AsyncConnection.connect(pg_url) as db:
            cursor = await db.execute("SELECT max(version) FROM schema_version")
            assert (PG_VERSION,) == await cursor.fetchone()


class TestLayout:
    """Every key and index of a tenant's rows leads with the tenant (SQLite; PostgreSQL's
    indexes are read from its catalogue)."""

    def test_sqlite_keys_lead_with_the_tenant(self) -> None:
        """Primary keys, unique constraints and indexes of every table but ``meta``."""
        with closing(sqlite3.connect(":memory:")) as db:
            for statement in statements(None):
                db.execute(statement)
            indexes = db.execute(
                "SELECT m.name, i.name FROM sqlite_master m, pragma_index_list(m.name) i "
                "WHERE m.type = 'table' AND m.name NOT IN ('meta', 'sqlite_sequence')"
            ).fetchall()
            first = {
                (table, index): db.execute(
                    "SELECT name FROM pragma_index_info(?) WHERE seqno = 0", (index,)
                ).fetchone()[0]
                for table, index in indexes
            }
        assert 10 <= len(first)
        assert {"tenant"} == set(first.values()), first

    def test_sqlite_every_table_has_a_tenant(self) -> None:
        """Every table but ``meta`` holds a tenant's rows, and a dropped tenant's go from all."""
        tables = {name for name, shape in schema_layout().items() if shape[0] == "table"}
        with_tenant = {name for name in tables if "tenant TEXT" in schema_layout()[name]}
        assert (tables - {"meta"}, set(TENANT_TABLES)) == (with_tenant, with_tenant)

    async def test_postgres_indexes_lead_with_the_tenant(self, pg_url: str) -> None:
        """Every index of a tenant's tables but the outbox's and history's sequence keys (the
        leases and the replicas belong to no tenant)."""
        store = await PostgresStore.open(pg_url)
        await store.close()
        async with await psycopg.AsyncConnection.connect(pg_url) as db:
            cursor = await db.execute(
                "SELECT indexrelid::regclass::text, a.attname FROM pg_index i "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indrelid::regclass::text <> ALL(%b::text[]) "
                "AND i.indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)",
                [["schema_version", "leases", "replicas"]],
            )
            first: dict[str, str] = dict(await cursor.fetchall())
        keys = {
            name: column
            for name, column in first.items()
            if name not in ("outbox_pkey", "history_pkey")
        }
        assert 10 <= len(keys)
        assert {"tenant"} == set(keys.values()), first

    async def test_postgres_tables_with_a_tenant(self, pg_url: str) -> None:
        """A dropped tenant's rows go from every table that has a tenant column."""
        store = await PostgresStore.open(pg_url)
        await store.close()
        async with await psycopg.AsyncConnection.connect(pg_url) as db:
            cursor = await db.execute(
                "SELECT table_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_name = 'tenant'"
            )
            tables = {table for (table,) in await cursor.fetchall()}
        assert set(TENANT_TABLES) == tables
