"""psycopg 3 against asyncpg on the store's own work, side by side in one run (issue 16).

``python -m bench.pg_drivers`` starts a throwaway cluster (:mod:`tests.pgcluster`,
Debian's ``postgresql`` binaries), gives each driver a database with the store's
schema (:mod:`monitor.delivery.postgres_schema`), and times the same statements
through both, alternating (ABAB) so the machine's noise falls on both alike:

- **commit**: one transaction storing a batch of task memories and as many outbox
  rows and history rows (the poller's commit);
- **claim/finish**: one transaction finishing the last delivery and claiming the
  next head (a sink worker's round trip).

psycopg runs three ways: parameters in text (its default for ``str``: every element
of an array is escaped in Python), in binary (``%b``), and binary in pipeline mode
(statements sent without waiting for each answer).  asyncpg is imported by name: it is not a
dependency of batchmon (``pip install asyncpg`` to compare).  ``fsync`` is off in the
throwaway cluster, so the figures are the drivers' and the round trips', not the disk's.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import statistics
import time
from collections.abc import Sequence
from typing import Any

import anyio
import psycopg

from monitor.delivery.postgres_schema import MIGRATIONS
from tests.pgcluster import find_bindir, running_cluster

#: Stand-ins of the size the store writes (a task memory and an event, as JSON).
MEMORY = '{"info": {"Id": 0, "Name": "Export"}, "pad": "' + "m" * 1400 + '"}'
EVENT = '{"id": "e", "type": "task.progress", "pad": "' + "e" * 1400 + '"}'

UPSERT_TASKS = (
    "INSERT INTO tasks (task_id, memory) SELECT * FROM unnest(%s::bigint[], %s::text[]) "
    "ON CONFLICT (task_id) DO UPDATE SET memory = excluded.memory"
)
QUEUE = (
    "INSERT INTO outbox (sink, event_id, task_id, type, event, created) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], "
    "%s::float8[]) ON CONFLICT (sink, event_id) DO NOTHING"
)
RECORD = (
    "INSERT INTO history (event_id, task_id, event) "
    "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[]) "
    "ON CONFLICT (event_id) DO NOTHING"
)
FINISH = "DELETE FROM outbox WHERE seq = ANY(%s::bigint[])"
CLAIM = (
    "UPDATE outbox SET attempts = attempts + 1, claimed_by = 'bench', claimed_until = 1e12 "
    "WHERE seq = (SELECT o.seq FROM outbox o WHERE o.sink = %s AND o.claimed_by IS NULL "
    "AND NOT EXISTS (SELECT FROM outbox e WHERE e.sink = o.sink "
    "AND coalesce(e.task_id, 0) = coalesce(o.task_id, 0) AND e.seq < o.seq) "
    "ORDER BY o.seq LIMIT 1 FOR UPDATE SKIP LOCKED) "
    "RETURNING seq, event, attempts - 1, next_attempt, created"
)


def numbered(sql: str) -> str:
    """psycopg's ``%s`` placeholders as asyncpg's ``$1``, ``$2``…"""
    counter = itertools.count(1)
    parts = sql.split("%s")
    return parts[0] + "".join(f"${next(counter)}{part}" for part in parts[1:])


def batch(start: int, size: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Arguments of UPSERT_TASKS, QUEUE and RECORD for ``size`` tasks from id ``start``."""
    ids = list(range(start, start + size))
    events = [f"event-{i}" for i in ids]
    tasks = [ids, [MEMORY] * size]
    queued = [["ops"] * size, events, ids, ["task.progress"] * size, [EVENT] * size]
    queued.append([0.0] * size)
    return tasks, queued, [events, ids, [EVENT] * size]


class Psycopg:
    """The statements through psycopg 3's async connection."""

    def __init__(
        self, connection: psycopg.AsyncConnection[Any], *, binary: bool, pipeline: bool
    ) -> None:
        self._db = connection
        self._pipeline = pipeline
        self._format = "%b" if binary else "%t"
        self.name = "psycopg 3, " + ("binary" if binary else "text") + " parameters"
        if pipeline:
            self.name = "psycopg 3, binary, pipeline"

    def _sql(self, sql: str) -> bytes:
        return sql.replace("%s", self._format).encode()

    async def commit(self, start: int, size: int) -> None:
        tasks, queued, recorded = batch(start, size)
        if self._pipeline:
            async with self._db.pipeline(), self._db.transaction():
                await self._statements(tasks, queued, recorded)
        else:
            async with self._db.transaction():
                await self._statements(tasks, queued, recorded)

    async def _statements(self, tasks: list[Any], queued: list[Any], recorded: list[Any]) -> None:
        await self._db.execute(self._sql(UPSERT_TASKS), tasks)
        await self._db.execute(self._sql(QUEUE), queued)
        await self._db.execute(self._sql(RECORD), recorded)

    async def claim(self, done: Sequence[int]) -> int | None:
        if self._pipeline:
            async with self._db.pipeline(), self._db.transaction():
                return await self._claim(done)
        async with self._db.transaction():
            return await self._claim(done)

    async def _claim(self, done: Sequence[int]) -> int | None:
        await self._db.execute(self._sql(FINISH), [list(done)])
        cursor = await self._db.execute(self._sql(CLAIM), ["ops"])
        row = await cursor.fetchone()
        return None if row is None else int(row[0])


class Asyncpg:
    """The same statements through asyncpg (prepared and cached by asyncpg itself)."""

    name = "asyncpg"

    def __init__(self, connection: Any) -> None:
        self._db = connection

    async def commit(self, start: int, size: int) -> None:
        tasks, queued, recorded = batch(start, size)
        async with self._db.transaction():
            await self._db.execute(numbered(UPSERT_TASKS), *tasks)
            await self._db.execute(numbered(QUEUE), *queued)
            await self._db.execute(numbered(RECORD), *recorded)

    async def claim(self, done: Sequence[int]) -> int | None:
        async with self._db.transaction():
            await self._db.execute(numbered(FINISH), list(done))
            row = await self._db.fetchrow(numbered(CLAIM), "ops")
            return None if row is None else int(row[0])


async def measure(rounds: int, size: int, claims: int) -> None:
    """Run both drivers against one throwaway cluster and print the table."""
    asyncpg: Any = importlib.import_module("asyncpg")
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL's initdb and pg_ctl not found (apt-get install postgresql)")
    with running_cluster(bindir) as cluster:
        drivers: list[Any] = []
        for name in ("text", "binary", "pipeline", "asyncpg"):
            url = cluster.create_database(f"bench_{name}")
            setup = await psycopg.AsyncConnection.connect(url, autocommit=True)
            for migration in MIGRATIONS:
                await setup.execute(migration.encode())
            if name == "asyncpg":
                drivers.append(Asyncpg(await asyncpg.connect(url)))
            else:
                connection = await psycopg.AsyncConnection.connect(url)
                binary, pipeline = name != "text", name == "pipeline"
                drivers.append(Psycopg(connection, binary=binary, pipeline=pipeline))
            # A queue as the store meets it: some rows, and statistics (autovacuum's job).
            await drivers[-1].commit(10**9, 1000)
            await setup.execute(b"ANALYZE")
            await setup.close()
        commits: dict[str, list[float]] = {d.name: [] for d in drivers}
        cycles: dict[str, list[float]] = {d.name: [] for d in drivers}
        next_id = dict.fromkeys(commits, 1)
        for round_ in range(rounds):
            order = drivers if round_ % 2 == 0 else drivers[::-1]
            for driver in order:
                for _ in range(10):
                    begin = time.perf_counter()
                    await driver.commit(next_id[driver.name], size)
                    commits[driver.name].append(time.perf_counter() - begin)
                    next_id[driver.name] += size
                done: list[int] = []
                for _ in range(claims):
                    begin = time.perf_counter()
                    seq = await driver.claim(done)
                    cycles[driver.name].append(time.perf_counter() - begin)
                    done = [] if seq is None else [seq]
        for driver in drivers:
            await driver._db.close()
    base = statistics.median(commits["asyncpg"]), statistics.median(cycles["asyncpg"])
    print(f"PostgreSQL {bindir.parent.name}, {rounds} rounds (ABAB), commit of {size} tasks")
    print(f"{'driver':24} {'commit p50':>12} {'ratio':>7} {'claim/finish p50':>18} {'ratio':>7}")
    for name, times in commits.items():
        commit, cycle = statistics.median(times), statistics.median(cycles[name])
        print(
            f"{name:24} {commit * 1e3:9.2f} ms {commit / base[0]:6.2f}x "
            f"{cycle * 1e3:15.3f} ms {cycle / base[1]:6.2f}x"
        )


def main() -> None:
    """``python -m bench.pg_drivers [--rounds N] [--size N] [--claims N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--size", type=int, default=100, help="tasks per commit")
    parser.add_argument("--claims", type=int, default=300, help="claim/finish per round")
    args = parser.parse_args()
    anyio.run(measure, args.rounds, args.size, args.claims)


if __name__ == "__main__":
    main()
