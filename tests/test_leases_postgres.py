"""Lease keepers on a real PostgreSQL: they split the tenants fairly, hand over at once when
stopped, fence themselves when cut off before anyone else takes over, and a fenced commit
of a holder that lost its lease writes nothing."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest
from structlog.testing import capture_logs

from monitor.delivery.leases import Fence, LeaseKeeper, LeaseLostError
from monitor.delivery.outbox import StoreError
from monitor.delivery.postgres import PostgresStore, _one_round_trip
from tests.partition import partition
from tests.pgcluster import Cluster

#: A short lease so that a takeover (ttl + a round) comes within a second or two; the default
#: 15 s would make each test take a minute, and the keeper's logic does not depend on it.
TTL = 1.0
#: The most any test waits for the keepers to settle: a bound, not a measurement.
SETTLE = 30.0
NAMES = [f"tenant-{i:02}" for i in range(20)]

#: (what, replica, name, epoch): every gain and loss of every keeper, in the order told.
Told = tuple[str, str, str, int | None]


@pytest.fixture(name="url")
async def _url(pg_url: str) -> str:
    """A migrated database (the store's migrations create the lease tables)."""
    store = await PostgresStore.open(pg_url)
    await store.close()
    return pg_url


class Replicas:
    """Keepers on one database in this process, each a replica, all telling one log."""

    def __init__(self, url: str, group: anyio.abc.TaskGroup) -> None:
        self._url = url
        self._group = group
        self.told: list[Told] = []
        self._changed = anyio.Event()
        self._running: dict[str, tuple[anyio.CancelScope, anyio.Event]] = {}
        self.keepers: dict[str, LeaseKeeper] = {}

    def _tell(self, entry: Told) -> None:
        self.told.append(entry)
        self._changed.set()

    async def start(
        self,
        replica: str,
        names: Iterable[str] = NAMES,
        *,
        url: str | None = None,
        ttl: float = TTL,
    ) -> LeaseKeeper:
        """A keeper named ``replica`` running until :meth:`stop`."""

        async def gained(name: str, epoch: int) -> None:
            self._tell(("gain", replica, name, epoch))

        async def lost(name: str) -> None:
            self._tell(("loss", replica, name, None))

        keeper = LeaseKeeper(
            url or self._url, replica, names, on_gain=gained, on_loss=lost, ttl=ttl
        )
        scope, done = anyio.CancelScope(), anyio.Event()

        async def run() -> None:
            with scope:
                await keeper.run()
            done.set()

        self._group.start_soon(run)
        self.keepers[replica] = keeper
        self._running[replica] = (scope, done)
        return keeper

    async def stop(self, replica: str) -> None:
        """Cancel a keeper, and wait until it handed over."""
        scope, done = self._running.pop(replica)
        scope.cancel()
        await done.wait()

    async def until(self, settled: Callable[[], bool]) -> None:
        """Wait until ``settled()``, checked at every gain and loss, and every round
        (for what the keepers are not heard telling: their count of live replicas)."""
        with anyio.fail_after(SETTLE):
            while not settled():
                self._changed = anyio.Event()
                with anyio.move_on_after(TTL / 3):
                    await self._changed.wait()

    def running(self, replica: str) -> dict[str, int]:
        """The pipelines ``replica`` was told to run and not yet to stop, name → epoch."""
        running: dict[str, int] = {}
        for what, r, name, epoch in self.told:
            if r == replica and what == "gain" and epoch is not None:
                running[name] = epoch
            elif r == replica:
                running.pop(name, None)
        return running

    def split(self, *counts: int) -> Callable[[], bool]:
        """Settled when the running keepers run these counts of pipelines, each name in one,
        and what each keeper holds is what it runs."""

        def settled() -> bool:
            running = {r: self.running(r) for r in self._running}
            names = sorted(name for pipelines in running.values() for name in pipelines)
            return (
                sorted(len(pipelines) for pipelines in running.values()) == sorted(counts)
                and names == NAMES
                and all(self.keepers[r].held == pipelines for r, pipelines in running.items())
            )

        return settled


@asynccontextmanager
async def replicas(url: str) -> AsyncIterator[Replicas]:
    """Keepers started in the block are stopped (handing over) when it ends."""
    async with anyio.create_task_group() as group:
        world = Replicas(url, group)
        try:
            yield world
        finally:
            for replica in list(world._running):
                await world.stop(replica)
    one_holder_at_a_time(world.told)


def one_holder_at_a_time(told: list[Told]) -> None:
    """No name was ever held by two keepers at once (a gain comes after the last holder's
    loss), and its epoch grew at every gain."""
    holders: dict[str, str] = {}
    epochs: dict[str, int] = {}
    for what, replica, name, epoch in told:
        if what == "gain":
            assert epoch is not None
            assert name not in holders, f"{replica} took {name} from {holders[name]} untold"
            assert epoch > epochs.get(name, 0), f"{name}: epoch {epoch} after {epochs[name]}"
            holders[name], epochs[name] = replica, epoch
        else:
            assert replica == holders.pop(name)


async def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of one query, on a connection of the test's own."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        return await (await db.execute(sql, params)).fetchall()


def epochs_of(told: list[Told], replica: str) -> dict[str, int]:
    """The epoch of each lease ``replica`` was last told it took."""
    return {
        name: epoch for what, r, name, epoch in told if what == "gain" and r == replica if epoch
    }


def losses(told: list[Told], replica: str) -> list[str]:
    """The names ``replica`` was told it lost, sorted."""
    return sorted(name for what, r, name, _ in told if what == "loss" and r == replica)


@pytest.mark.parametrize(("count", "split"), [(2, (10, 10)), (3, (7, 7, 6))])
async def test_keepers_split_the_names_fairly(url: str, count: int, split: tuple[int, ...]) -> None:
    """Keepers started together share 20 names out evenly (at most ceil(20 / n) each), and
    the database, the keepers' views and their counts agree."""
    async with replicas(url) as world:
        for i in range(count):
            await world.start(f"r{i}")
        await world.until(world.split(*split))
        await world.until(lambda: all(k.live_replicas == count for k in world.keepers.values()))

        holders = await world.keepers["r0"].holders()
        assert {name: r for r, k in world.keepers.items() for name in k.held} == holders
        assert all(k.healthy for k in world.keepers.values())


async def test_a_keeper_that_joins_gets_its_share(url: str) -> None:
    """One keeper holds every name; a second one starting gets half of them, handed back by
    the first (told to stop first), under a new epoch."""
    async with replicas(url) as world:
        await world.start("a")
        await world.until(world.split(20))
        first = epochs_of(world.told, "a")
        await world.start("b")
        await world.until(world.split(10, 10))

        moved = epochs_of(world.told, "b")
        assert {name: first[name] + 1 for name in moved} == moved
        assert sorted(moved) == losses(world.told, "a")


async def test_a_stopped_keeper_hands_over_at_once(url: str) -> None:
    """A keeper cancelled (a rolling restart) stops its pipelines, releases its leases and
    leaves before it returns, without waiting for them to run out; the others take them
    under new epochs."""
    async with replicas(url) as world:
        for replica in ("a", "b", "c"):
            await world.start(replica)
        await world.until(world.split(7, 7, 6))
        leaving = dict(world.keepers["c"].held)
        settled = len(world.told)

        await world.stop("c")

        assert sorted(leaving) == losses(world.told[settled:], "c")
        still = "SELECT count(*) FROM leases WHERE holder = %s AND expires > now()"
        assert [(0,)] == await rows(url, still, "c")
        assert [] == await rows(url, "SELECT id FROM replicas WHERE id = %s", "c")
        await world.until(world.split(10, 10))
        after = world.told[settled:]
        taken = {**epochs_of(after, "a"), **epochs_of(after, "b")}
        assert set(leaving) <= set(taken)
        assert all(taken[name] > epoch for name, epoch in leaving.items())


async def test_a_keeper_cut_off_fences_itself_before_another_takes_over(
    url: str, pg_cluster: Cluster
) -> None:
    """A keeper that no longer reaches the database (a partition: its packets are lost)
    gives up its leases on its own clock before they run out on the database's, so the
    other keeper's takeover comes after; once it reaches the database again, it gets its
    share back."""
    async with partition(pg_cluster.port) as relay, replicas(url) as world:
        cut_off = await world.start("a", url=url.replace(f":{pg_cluster.port}/", f":{relay.port}/"))
        await world.start("b")
        await world.until(world.split(10, 10))
        before = dict(cut_off.held)

        with capture_logs() as logs:
            relay.cut = True
            await world.until(world.split(0, 20))
            assert not cut_off.healthy

        fenced = [e for e in logs if e["event"] == "leases_fenced"]
        assert [sorted(before)] == [e["names"] for e in fenced]
        relay.cut = False
        await world.until(world.split(10, 10))
    # one_holder_at_a_time (on leaving the block): every loss of "a" came before the gain
    # of the same name by "b", and every takeover raised the epoch.


async def test_a_keeper_stopped_while_cut_off_still_stops_its_pipelines(
    url: str, pg_cluster: Cluster
) -> None:
    """Cancelled while the database cannot be reached, a keeper still stops every pipeline
    (its leases run out by themselves) and says that it could not release them."""
    async with partition(pg_cluster.port) as relay, replicas(url) as world:
        keeper = await world.start("a", url=url.replace(f":{pg_cluster.port}/", f":{relay.port}/"))
        await world.until(world.split(20))
        relay.cut = True
        with capture_logs() as logs:
            await world.stop("a")

        assert NAMES == losses(world.told, "a")
        assert {} == keeper.held
        assert ["leases_not_released"] == [e["event"] for e in logs if e["log_level"] == "warning"]


async def test_a_connection_lost_once_costs_no_lease(url: str) -> None:
    """The server ending the keeper's connection (a restart of the backend) costs a round:
    the next one reconnects, and the leases are kept with their epochs."""
    async with replicas(url) as world:
        # Reconnecting (TCP, SCRAM) must fit in the rounds before the fence: on a loaded
        # machine a second's lease leaves too little of them.
        keeper = await world.start("a", names=["acme"], ttl=5 * TTL)
        await world.until(lambda: "acme" in keeper.held)
        (pid,) = await pids(url)
        await rows(url, "SELECT pg_terminate_backend(%s)", pid)
        # Renewed since: the replica row was seen after the new connection began.
        renewed = (
            "SELECT count(*) FROM replicas r, pg_stat_activity a WHERE r.id = 'a' "
            "AND a.application_name = 'batchmon-leases' AND a.pid <> %s "
            "AND r.seen > a.backend_start"
        )
        with anyio.fail_after(SETTLE):
            while await rows(url, renewed, pid) == [(0,)]:  # noqa: ASYNC110 - the server's rows
                await anyio.sleep(TTL / 10)

        assert [("gain", "a", "acme", 1)] == world.told
        assert {"acme": 1} == keeper.held


async def pids(url: str) -> list[int]:
    """The backends of the keepers' connections (their application name)."""
    found = await rows(
        url, "SELECT pid FROM pg_stat_activity WHERE application_name = 'batchmon-leases'"
    )
    return [pid for (pid,) in found]


async def test_names_no_longer_configured_are_handed_back(url: str) -> None:
    """A keeper told of fewer names (a reload) hands the others back at its next round."""
    async with replicas(url) as world:
        keeper = await world.start("a", names=["acme", "globex"])
        await world.until(lambda: len(keeper.held) == 2)
        keeper.configure(["acme"])
        await world.until(lambda: list(keeper.held) == ["acme"])

        free = "SELECT name FROM leases WHERE expires <= now()"
        assert [("globex",)] == await rows(url, free)


async def test_holders_says_why_not_without_the_password(pg_cluster: Cluster) -> None:
    """A keeper that cannot reach the database answers for the status page with a
    StoreError naming the database, not its password."""
    keeper = LeaseKeeper(
        pg_cluster.url("nothere"), "a", NAMES, on_gain=_never, on_loss=_never, ttl=TTL
    )
    with pytest.raises(StoreError, match="nothere") as raised:
        await keeper.holders()
    assert pg_cluster.password not in str(raised.value)


def test_a_url_libpq_cannot_read_is_refused() -> None:
    """A keeper on a malformed URL is refused at once, without its password."""
    with pytest.raises(StoreError, match="not a PostgreSQL URL") as raised:
        LeaseKeeper("postgresql://u:secretpw@[::1/d", "a", NAMES, on_gain=_never, on_loss=_never)
    assert "secretpw" not in str(raised.value)


@pytest.mark.parametrize("ttl", [0.0, -1.0, math.nan])
def test_a_ttl_that_is_not_positive_is_refused(ttl: float) -> None:
    """A lease that never holds (or holds a negative time) is a configuration error."""
    with pytest.raises(ValueError, match="positive number of seconds"):
        LeaseKeeper(
            "postgresql://localhost/db", "a", NAMES, on_gain=_never, on_loss=_never, ttl=ttl
        )


async def _never(*_: object) -> None:
    raise AssertionError


class TestFence:
    """A commit beginning with its pipeline's fence writes only while the lease is held."""

    async def test_a_commit_after_a_takeover_writes_nothing(self, url: str) -> None:
        """Once another replica took the lease over, the old holder's fenced transaction
        fails with LeaseLostError and none of it is written; the new holder's goes in."""
        async with replicas(url) as world:
            old = await world.start("a", names=["acme"])
            await world.until(lambda: "acme" in old.held)
            stale = old.fence("acme")
            await world.stop("a")
            new = await world.start("b", names=["acme"])
            await world.until(lambda: "acme" in new.held)
            current = new.fence("acme")

            assert ("acme", "b", stale.epoch + 1) == (current.name, current.holder, current.epoch)
            with pytest.raises(LeaseLostError, match="acme"):
                await fenced_write(url, stale, task_id=1)
            await fenced_write(url, current, task_id=2)
            # Any other failure of a fenced commit stays what it is.
            with pytest.raises(psycopg.errors.UniqueViolation):
                await fenced_write(url, current, task_id=2)

            assert [(2,)] == await rows(url, "SELECT task_id FROM watches")

    async def test_a_run_out_lease_fences_its_own_holder(self, url: str) -> None:
        """A lease past its expiry fences even the replica still named its holder."""
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
            await db.execute(
                "INSERT INTO leases VALUES ('acme', 'a', 4, now() - interval '1 second')"
            )
        with pytest.raises(LeaseLostError):
            await fenced_write(url, Fence("acme", "a", 4), task_id=1)
        assert [] == await rows(url, "SELECT task_id FROM watches")

    async def test_a_takeover_waits_for_a_fenced_commit(self, url: str) -> None:
        """The fence holds the lease's row until its transaction ends: a takeover cannot
        slip in between the check and the writes."""
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
            await db.execute("INSERT INTO leases VALUES ('acme', 'a', 4, now() + interval '1h')")
            sql, params = Fence("acme", "a", 4).statement()
            async with db.transaction():
                await db.execute(sql, params)
                async with await psycopg.AsyncConnection.connect(url) as other:
                    await other.execute("SET lock_timeout = '10ms'")
                    with pytest.raises(psycopg.errors.LockNotAvailable):
                        await other.execute("UPDATE leases SET holder = 'b', epoch = 5")


async def fenced_write(url: str, fence: Fence, *, task_id: int) -> None:
    """A watch added in a transaction that begins with ``fence``, as the store's commit
    sends it (one round trip); a refusal raised as the fence's LeaseLostError."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        write = ("INSERT INTO watches (task_id, added) VALUES (%b, %b)", [task_id, 0.0])
        try:
            await _one_round_trip(db, [fence.statement(), write])
        except psycopg.Error as exc:
            lost = fence.lost(exc)
            if lost is None:
                raise
            raise lost from None


async def test_replicas_and_leases_long_gone_are_forgotten(url: str) -> None:
    """A replica unseen and a lease run out for a day (a killed replica, a tenant removed
    from the configuration) go at the next round; fresher ones stay."""
    await rows(
        url,
        "INSERT INTO replicas (id, host, pid, started, seen) VALUES "
        "('dead', 'h', 1, now() - interval '3 days', now() - interval '2 days'), "
        "('recent', 'h', 2, now() - interval '1 hour', now() - interval '1 hour') "
        "RETURNING id",
    )
    await rows(
        url,
        "INSERT INTO leases (name, holder, epoch, expires) VALUES "
        "('removed', 'dead', 4, now() - interval '2 days'), "
        "('lapsed', 'recent', 2, now() - interval '1 hour') RETURNING name",
    )
    async with replicas(url) as world:
        keeper = await world.start("r1", ["tenant-00"])
        await world.until(lambda: "tenant-00" in keeper.held)
        assert [("recent",), ("r1",)] == await rows(url, "SELECT id FROM replicas ORDER BY started")
        assert [("lapsed",), ("tenant-00",)] == await rows(
            url, "SELECT name FROM leases ORDER BY name"
        )
