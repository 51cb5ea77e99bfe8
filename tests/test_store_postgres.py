"""What the PostgreSQL store adds to the protocol: migrations, claims shared between processes,
and errors that name the database without its password."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import psycopg
import pytest
from structlog.testing import capture_logs

from monitor.delivery.outbox import StoreError
from monitor.delivery.postgres import PostgresStore
from monitor.delivery.postgres_schema import MIGRATIONS, SCHEMA_VERSION
from monitor.tracking.acks import Ack
from monitor.tracking.events import Event
from monitor.tracking.silences import Silence
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

    @pytest.mark.parametrize("found", range(1, SCHEMA_VERSION))
    async def test_an_older_database_is_migrated(self, pg_url: str, found: int) -> None:
        """A database an older batchmon made keeps its rows and gains the later tables
        (acknowledgements: 2, silences: 3)."""
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as db:
            await db.execute(
                "CREATE TABLE schema_version ("
                "version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
            )
            for version, migration in enumerate(MIGRATIONS[:found], start=1):
                await db.execute(migration.encode())
                await db.execute("INSERT INTO schema_version (version) VALUES (%s)", [version])
            await db.execute("INSERT INTO watches (task_id, added) VALUES (212, 0)")
        at = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
        ack = Ack(212, "task.failed|212|1|-|2026-12-03T12:00:00+00:00", "ann", None, at)
        quiet = Silence(id="s1", reason="upgrade", created=at, ends=at, all=True)

        with capture_logs() as logs:
            store = await PostgresStore.open(pg_url)
        try:
            await store.put_ack(ack)
            await store.add_silence(quiet)
            kept = (await store.watches(), await store.acks(), await store.silences())
        finally:
            await store.close()

        assert ([212], [ack], [quiet]) == kept
        assert list(range(1, SCHEMA_VERSION + 1)) == await versions(pg_url)
        migrated = [e["versions"] for e in logs if e["event"] == "state_database_migrated"]
        assert [list(range(found + 1, SCHEMA_VERSION + 1))] == migrated


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


class TestSharedDigestClaims:
    """A digest worker's reads and claims by seq keep one holder per row across processes."""

    async def test_a_live_claim_is_left_out_a_lapsed_one_taken_over(self, pg_url: str) -> None:
        """Another process's live claim hides its rows; once run out, they are claimable again,
        keeping their seq and attempts counted; a store's own claims hold until settled."""
        first, second = events_for(7, {}, {"State": "Failed"})
        (other,) = events_for(8, {})
        a = await PostgresStore.open(pg_url, claim_ttl=30.0)
        b = await PostgresStore.open(pg_url, claim_ttl=30.0)
        lapsing = await PostgresStore.open(pg_url, claim_ttl=0.0)  # runs out at once
        try:
            await a.commit([], [("chat", first), ("chat", second), ("chat", other)], 0.0)
            seqs = [q.seq for q in await a.queued("chat")]
            held = await a.claim_seqs("chat", seqs[:2])
            assert [first.id, second.id] == [d.event.id for d in held]
            assert [seqs[2]] == [q.seq for q in await b.queued("chat")], "a's rows left out"
            assert [] == await b.claim_seqs("chat", seqs[:2])

            assert 1 == len(await lapsing.claim_seqs("chat", [seqs[2]]))
            assert [] == await lapsing.queued("chat"), "its own claim holds for itself"
            assert [seqs[2]] == [q.seq for q in await b.queued("chat")]
            (taken,) = await b.claim_seqs("chat", [seqs[2]])
            assert (seqs[2], other.id, 1) == (taken.seq, taken.event.id, taken.attempts)
            assert [] == await lapsing.claim_seqs("chat", [seqs[2]]), "b holds it now"
            assert [] == await a.queued("chat")
        finally:
            for store in (a, b, lapsing):
                await store.close()

    async def test_digest_workers_of_two_processes_never_share_a_row(self, pg_url: str) -> None:
        """Eight workers over two stores read the queue and claim it in small batches:
        every row is claimed once, at its first attempt."""
        queued: list[tuple[str, Event]] = []
        for task_id in range(1, 31):
            steps: list[dict[str, object]] = [{"ProgressPercent": 10}, {"State": "Failed"}]
            queued += [("chat", e) for e in events_for(task_id, {}, *steps)]
        stores = [await PostgresStore.open(pg_url) for _ in range(2)]
        taken: Counter[int] = Counter()
        attempts: set[int] = set()

        async def worker(store: PostgresStore, index: int) -> None:
            while rows := await store.queued("chat"):
                seqs = [row.seq for row in rows]
                seqs = seqs[index % len(seqs) :] + seqs[: index % len(seqs)]
                for start in range(0, len(seqs), 4):
                    claimed = await store.claim_seqs("chat", seqs[start : start + 4])
                    taken.update(d.seq for d in claimed)
                    attempts.update(d.attempts for d in claimed)
                    await anyio.lowlevel.checkpoint()
                    await store.finish([d.seq for d in claimed])

        try:
            await stores[0].commit([], queued, 0.0)
            everything = {q.seq for q in await stores[0].queued("chat")}
            async with anyio.create_task_group() as group:
                for index in range(8):
                    group.start_soon(worker, stores[index % 2], index)
            assert {} == await stores[0].pending_counts()
        finally:
            for store in stores:
                await store.close()

        assert len(queued) == len(everything)
        assert everything == set(taken)
        assert ({1}, {0}) == (set(taken.values()), attempts)


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
