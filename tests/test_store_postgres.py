"""What the PostgreSQL store adds to the protocol: migrations, claims shared between processes,
and errors that name the database without its password."""

from __future__ import annotations

from collections import defaultdict

import anyio
import anyio.lowlevel
import psycopg
import pytest
from structlog.testing import capture_logs

from monitor.delivery.outbox import StoreError
from monitor.delivery.postgres import PostgresStore
from monitor.delivery.postgres_schema import SCHEMA_VERSION
from monitor.tracking.events import Event
from tests.pgcluster import Cluster
from tests.test_store import events_for


async def versions(url: str) -> list[int]:
    """The migrations recorded in the database."""
    async with await psycopg.AsyncConnection.connect(url) as db:
        cursor = await db.execute("SELECT version FROM schema_version ORDER BY version")
        return [version for (version,) in await cursor.fetchall()]


class TestMigrations:
    """The schema is created and versioned at open, once."""

    async def test_a_fresh_database_is_migrated_once(self, pg_url: str) -> None:
        """The first open applies every migration and says so; the next applies none."""
        with capture_logs() as logs:
            for _ in range(2):
                store = await PostgresStore.open(pg_url)
                await store.close()

        assert list(range(1, SCHEMA_VERSION + 1)) == await versions(pg_url)
        migrated = [e for e in logs if e["event"] == "state_database_migrated"]
        assert [list(range(1, SCHEMA_VERSION + 1))] == [e["versions"] for e in migrated]

    async def test_processes_starting_at_once_migrate_one_after_the_other(
        self, pg_url: str
    ) -> None:
        """Three stores opened together all work, and each migration ran once."""
        stores: list[PostgresStore] = []

        async def open_one() -> None:
            stores.append(await PostgresStore.open(pg_url))

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(open_one)
        for store in stores:
            await store.close()

        assert list(range(1, SCHEMA_VERSION + 1)) == await versions(pg_url)

    async def test_a_newer_schema_is_refused(self, pg_url: str) -> None:
        """A database a newer batchmon migrated is not used as it is."""
        store = await PostgresStore.open(pg_url)
        await store.close()
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as db:
            await db.execute("INSERT INTO schema_version (version) VALUES (%s)", [99])

        with pytest.raises(
            StoreError, match=f"schema version 99, this batchmon knows version {SCHEMA_VERSION}"
        ):
            await PostgresStore.open(pg_url)


class TestSharedClaims:
    """Two processes on one database: one holder per delivery, takeover of a dead one's."""

    async def test_another_process_waits_for_a_claim_then_takes_it_over(self, pg_url: str) -> None:
        """A live claim holds the task for everyone; once it ran out, the delivery keeps its id."""
        first, second = events_for(7, {}, {"State": "Failed"})
        (other,) = events_for(8, {})
        a = await PostgresStore.open(pg_url, claim_ttl=30.0)
        b = await PostgresStore.open(pg_url, claim_ttl=30.0)
        try:
            await a.commit([], [("ops", first), ("ops", second), ("ops", other)], 100.0)
            held = (await a.claim("ops", 100.0)).delivery
            assert held is not None
            meanwhile = await b.claim("ops", 100.0)
            assert meanwhile.delivery is not None
            assert other.id == meanwhile.delivery.event.id, "task 7 is a's until 130"
            waiting = await b.claim("ops", 129.0, done=[meanwhile.delivery.seq])
            assert (None, 130.0) == (waiting.delivery, waiting.due_at)

            taken = (await b.claim("ops", 130.0)).delivery
            assert taken is not None
            assert (held.seq, first.id, 1) == (taken.seq, taken.event.id, taken.attempts)
            # a's settling comes too late: b holds the claim now.
            await a.retry_later(held.seq, 130.0, "HTTP 503")
            assert (await a.claim("ops", 130.0)).delivery is None
            following = await b.claim("ops", 130.0, done=[taken.seq])
            assert following.delivery is not None
            assert second.id == following.delivery.event.id
        finally:
            await a.close()
            await b.close()

    async def test_a_clean_stop_gives_its_claims_back(self, pg_url: str) -> None:
        """What a stopped process held is claimable at once by the next one."""
        (event,) = events_for(7, {})
        a = await PostgresStore.open(pg_url)
        await a.commit([], [("ops", event)], 0.0)
        assert (await a.claim("ops", 0.0)).delivery is not None
        await a.close()

        b = await PostgresStore.open(pg_url)
        try:
            again = (await b.claim("ops", 0.0)).delivery
            assert again is not None
            assert (event.id, 1) == (again.event.id, again.attempts)
        finally:
            await b.close()

    async def test_workers_of_two_processes_never_share_a_delivery(self, pg_url: str) -> None:
        """Eight workers over two stores: every delivery once, each task's in order."""
        queued: list[tuple[str, Event]] = []
        for task_id in range(1, 31):
            steps: list[dict[str, object]] = [{"ProgressPercent": 10}, {"State": "Failed"}]
            queued += [("ops", e) for e in events_for(task_id, {}, *steps)]
        stores = [await PostgresStore.open(pg_url) for _ in range(2)]
        sent: dict[int | None, list[str]] = defaultdict(list)
        taken: list[str] = []

        async def worker(store: PostgresStore) -> None:
            done: list[int] = []
            while (delivery := (await store.claim("ops", 0.0, done=done)).delivery) is not None:
                taken.append(delivery.event.id)
                sent[delivery.event.task_id].append(delivery.event.id)
                await anyio.lowlevel.checkpoint()
                done = [delivery.seq]
            await store.finish(done)

        try:
            await stores[0].commit([], queued, 0.0)
            async with anyio.create_task_group() as group:
                for index in range(8):
                    group.start_soon(worker, stores[index % 2])
        finally:
            for store in stores:
                await store.close()

        assert sorted(e.id for _, e in queued) == sorted(taken)
        by_task: dict[int | None, list[str]] = defaultdict(list)
        for _, event in queued:
            by_task[event.task_id].append(event.id)
        assert by_task == sent


class TestErrors:
    """A database that cannot be used is named, its password never."""

    async def test_a_wrong_password(self, pg_cluster: Cluster) -> None:
        """The server's refusal is passed on, with the URL shown without its password."""
        url = pg_cluster.url().replace(pg_cluster.password, "not-the-password-x1")

        with pytest.raises(StoreError) as caught:
            await PostgresStore.open(url)

        message = str(caught.value)
        assert "password authentication failed" in message
        assert f"postgresql://batchmon@127.0.0.1:{pg_cluster.port}/postgres" in message
        assert "not-the-password-x1" not in message

    async def test_nobody_listening(self, pg_cluster: Cluster) -> None:
        """A port without a server: cannot connect, and where to."""
        url = f"postgresql://batchmon:secret-password-x2@127.0.0.1:{pg_cluster.port + 1}/db"

        with pytest.raises(StoreError, match="cannot connect to the state database") as caught:
            await PostgresStore.open(url)

        assert "secret-password-x2" not in str(caught.value)


class TestUnreadableOutboxRow:
    """A queued row that cannot be read is dropped, and whoever counts the queue is told."""

    async def test_dropped_and_counted_out(self, pg_url: str) -> None:
        """The next readable row comes back, and the claim counts the one dropped."""
        bad, good = events_for(7, {}, {"State": "Failed"})
        store = await PostgresStore.open(pg_url)
        try:
            await store.commit([], [("ops", bad), ("ops", good)], 0.0)
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as db:
                await db.execute(
                    "UPDATE outbox SET event = '{not json' WHERE event_id = %s", [bad.id]
                )

            with capture_logs() as logs:
                claim = await store.claim("ops", 0.0)

            assert claim.delivery is not None
            assert (good.id, 1) == (claim.delivery.event.id, claim.dropped)
            assert ["outbox_row_unreadable"] == [line["event"] for line in logs]
            assert {"ops": 1} == await store.pending_counts()
        finally:
            await store.close()
