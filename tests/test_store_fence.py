"""A replica's pipeline writes under its lease: once another replica took the lease over (or
it ran out), the old holder's writes change nothing and say so."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from monitor.delivery.leases import Fence, LeaseLostError
from monitor.delivery.postgres import PostgresStore
from tests.test_store import drain, events_for, first_memory, info

NOW = 1_800_000_000.0


@pytest.fixture(name="root")
async def _root(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = await PostgresStore.open(pg_url)
    yield store
    await store.close()


async def _lease(pg_url: str, holder: str, epoch: int, seconds: int = 60) -> None:
    """Set the lease of tenant ``acme`` as the keepers would (the database's clock)."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as db:
        await db.execute(
            "INSERT INTO leases (name, holder, epoch, expires) "
            "VALUES ('acme', %s, %s, now() + make_interval(secs => %s)) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "epoch = excluded.epoch, expires = excluded.expires",
            [holder, epoch, seconds],
        )


class TestFencedWrites:
    """Writes pass while the lease is held with the fence's epoch, and fail whole after."""

    async def test_a_taken_over_lease_stops_every_write(
        self, root: PostgresStore, pg_url: str
    ) -> None:
        await _lease(pg_url, "r1", 1)
        mine = root.for_tenant("acme").fenced(Fence("acme", "r1", 1))
        first, second = events_for(7, {"State": "Started"}, {"State": "Failed"})
        await mine.commit([first_memory(info(7))], [("ops", first)], NOW, [first])
        await mine.add_watch(7)

        await _lease(pg_url, "r2", 2)  # the other replica took it over
        with pytest.raises(LeaseLostError, match="lease acme \\(epoch 1\\) is no longer held"):
            await mine.commit([], [("ops", second)], NOW, [second])
        for write in (mine.add_watch(8), mine.remove_watch(7), mine.drop_acks([7])):
            with pytest.raises(LeaseLostError):
                await write
        with pytest.raises(LeaseLostError):
            await mine.claim("ops", NOW)

        theirs = root.for_tenant("acme").fenced(Fence("acme", "r2", 2))
        assert [first] == await drain(theirs, "ops", NOW)
        assert [7] == await theirs.watches()
        assert {first.id} == await theirs.known_events([first.id, second.id])
        await mine.close()  # gives back its claims (none): never refused
        await theirs.close()

    async def test_a_lease_run_out_fences_too(self, root: PostgresStore, pg_url: str) -> None:
        await _lease(pg_url, "r1", 1, seconds=-1)
        mine = root.for_tenant("acme").fenced(Fence("acme", "r1", 1))
        with pytest.raises(LeaseLostError):
            await mine.add_watch(7)
        assert [] == await root.for_tenant("acme").watches()

    async def test_an_unfenced_view_writes_as_before(self, root: PostgresStore) -> None:
        view = root.for_tenant("acme")
        await view.add_watch(7)
        assert [7] == await view.watches()
