"""psycopg 3 against asyncpg on the PostgreSQL store's own statements, side by side (issue 16).

``python -m bench.pg_drivers`` starts a throwaway cluster (:mod:`tests.pgcluster`,
Debian's ``postgresql`` binaries), gives each driver a database with the store's
schema (:mod:`monitor.delivery.postgres_schema`), and runs the statements of
:mod:`monitor.delivery.postgres` through each, alternating (ABAB) so that the
machine's noise falls on all alike:

- **commit**: one transaction storing a batch of task memories, as many outbox rows
  and history rows, and pruning the history (the poller's commit);
- **claim/finish**: one statement finishing the last delivery and claiming the next
  head (a sink worker's round trip).

psycopg runs three ways: parameters in text (its default for ``str``: every element of
an array is escaped in Python), in binary (``%b``) with ``transaction()``, and binary
with the whole transaction sent at once in pipeline mode (the store's way, its
``_one_round_trip``).  asyncpg is
imported by name, not a dependency of batchmon (``pip install asyncpg`` to compare).
``fsync`` is off in the throwaway cluster: the figures are the drivers' and the round
trips', not the disk's.  ``--latency-ms`` puts a proxy in between that holds every
packet that long each way, as a database on another machine would.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import anyio
import psycopg

from monitor.delivery.postgres import (
    _CLAIM,
    _PRUNE,
    _QUEUE,
    _RECORD,
    _UPSERT_TASKS,
    _one_round_trip,
)
from monitor.delivery.postgres_schema import MIGRATIONS
from tests.pgcluster import find_bindir, running_cluster

#: Stand-ins of the size the store writes (a task memory and an event, as JSON).
MEMORY = '{"info": {"Id": 0, "Name": "Export"}, "pad": "' + "m" * 1400 + '"}'
EVENT = '{"id": "e", "type": "task.failed", "pad": "' + "e" * 1400 + '"}'
TENANT = "default"
_PLACEHOLDER = re.compile(r"%(?:\((\w+)\))?b")


def numbered(sql: str) -> tuple[str, list[str | int]]:
    """psycopg's ``%b`` / ``%(name)b`` as asyncpg's ``$1``…, and the argument of each number."""
    order: list[str | int] = []

    def number(match: re.Match[str]) -> str:
        key: str | int = match.group(1) or len(order)
        if key not in order or isinstance(key, int):
            order.append(key)
        return f"${order.index(key) + 1}"

    return _PLACEHOLDER.sub(number, sql), order


def batch(start: int, size: int, now: float) -> list[tuple[str, Any]]:
    """The store's commit statements with their arguments, for ``size`` tasks from ``start``."""
    ids = list(range(start, start + size))
    events = [f"event-{i}" for i in ids]
    queued = [["ops"] * size, events, ids, ["task.failed"] * size, [EVENT] * size]
    return [
        (_UPSERT_TASKS, [TENANT, ids, [MEMORY] * size]),
        (_QUEUE, [TENANT, now, *queued]),
        (_RECORD, [TENANT, events, ids, [EVENT] * size]),
        (_PRUNE, {"tenant": TENANT, "tasks": ids, "monitor": False, "keep": 20}),
    ]


def claim_args(done: Sequence[int]) -> dict[str, Any]:
    """The store's claim statement's arguments: one delivery of sink "ops"."""
    return {
        "tenant": TENANT,
        "sink": "ops",
        "now": 0.0,
        "me": "bench",
        "until": 1e12,
        "limit": 1,
        "done": done,
    }


class Psycopg:
    """The statements through psycopg 3's async connection."""

    def __init__(
        self, connection: psycopg.AsyncConnection[Any], *, binary: bool, pipeline: bool
    ) -> None:
        self.db = connection
        self._pipeline = pipeline
        self._binary = binary
        self.name = "psycopg 3, " + ("binary" if binary else "text") + " parameters"
        if pipeline:
            self.name = "psycopg 3, binary, pipeline"

    def _sql(self, sql: str) -> bytes:
        return (sql if self._binary else re.sub(r"(%(?:\(\w+\))?)b", r"\1t", sql)).encode()

    async def commit(self, start: int, size: int) -> None:
        if self._pipeline:
            await _one_round_trip(self.db, batch(start, size, 0.0))
        else:
            async with self.db.transaction():
                for sql, args in batch(start, size, 0.0):
                    await self.db.execute(self._sql(sql), args)

    async def claim(self, done: Sequence[int]) -> int | None:
        cursor = await self.db.execute(self._sql(_CLAIM), claim_args(done))
        row = await cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])


class Asyncpg:
    """The same statements through asyncpg (prepared and cached by asyncpg itself)."""

    name = "asyncpg"

    def __init__(self, connection: Any) -> None:
        self.db = connection

    @staticmethod
    def _args(sql: str, args: Sequence[Any] | dict[str, Any]) -> tuple[str, list[Any]]:
        text, order = numbered(sql)
        if isinstance(args, dict):
            return text, [args[str(key)] for key in order]
        return text, list(args)

    async def commit(self, start: int, size: int) -> None:
        async with self.db.transaction():
            for sql, args in batch(start, size, 0.0):
                text, values = self._args(sql, args)
                await self.db.execute(text, *values)

    async def claim(self, done: Sequence[int]) -> int | None:
        text, args = self._args(_CLAIM, claim_args(list(done)))
        row = await self.db.fetchrow(text, *args)
        return None if row is None or row[0] is None else int(row[0])


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy one direction, each chunk held back ``delay`` seconds (order kept)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                writer.close()
                return
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    while data := await reader.read(65536):
        queue.put_nowait((loop.time() + delay, data))
    queue.put_nowait((0.0, b""))
    await sender


async def delaying_proxy(
    port: int, delay: float, connections: set[asyncio.Task[Any]]
) -> asyncio.Server:
    """A loopback TCP proxy to ``port`` that holds every packet ``delay`` seconds each way.

    ``connections`` receives the task of each connection, to be awaited at the end.
    """

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(asyncio.current_task())  # type: ignore[arg-type]
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(
            _pipe(reader, upstream_writer, delay), _pipe(upstream_reader, writer, delay)
        )

    return await asyncio.start_server(connect, "127.0.0.1", 0)


async def median_of(action: Callable[[], Awaitable[object]], times: int) -> float:
    """The median seconds of ``times`` calls."""
    spent = []
    for _ in range(times):
        begin = time.perf_counter()
        await action()
        spent.append(time.perf_counter() - begin)
    return statistics.median(spent)


async def measure(rounds: int, size: int, claims: int, latency: float) -> None:
    """Run every driver against one throwaway cluster and print the table."""
    try:
        asyncpg: Any = importlib.import_module("asyncpg")
    except ModuleNotFoundError:
        raise SystemExit(
            "asyncpg is not installed (not a dependency): pip install asyncpg"
        ) from None
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL's initdb and pg_ctl not found (apt-get install postgresql)")
    with running_cluster(bindir) as cluster:
        connections: set[asyncio.Task[Any]] = set()
        proxy = await delaying_proxy(cluster.port, latency / 1000, connections) if latency else None
        port = proxy.sockets[0].getsockname()[1] if proxy else cluster.port
        drivers: list[Any] = []
        for name in ("text", "binary", "pipeline", "asyncpg"):
            cluster.create_database(f"bench_{name}")
            url = cluster.url(f"bench_{name}").replace(f":{cluster.port}/", f":{port}/")
            setup = await psycopg.AsyncConnection.connect(url, autocommit=True)
            for migration in MIGRATIONS:
                await setup.execute(migration.encode())
            if name == "asyncpg":
                drivers.append(Asyncpg(await asyncpg.connect(url)))
            else:
                connection = await psycopg.AsyncConnection.connect(url, autocommit=True)
                binary, pipeline = name != "text", name == "pipeline"
                drivers.append(Psycopg(connection, binary=binary, pipeline=pipeline))
            # A queue as the store meets it: some rows, and statistics (autovacuum's job).
            await drivers[-1].commit(10**9, 1000)
            await setup.execute(b"ANALYZE")
            round_trip = await median_of(partial(setup.execute, b"SELECT 1"), 50)
            await setup.close()
        commits: dict[str, list[float]] = {d.name: [] for d in drivers}
        cycles: dict[str, list[float]] = {d.name: [] for d in drivers}
        next_id = dict.fromkeys(commits, 1)
        for round_ in range(rounds):
            for driver in drivers if round_ % 2 == 0 else drivers[::-1]:
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
            await driver.db.close()
        if proxy is not None:
            proxy.close()
            await asyncio.wait(connections)
    base = statistics.median(commits["asyncpg"]), statistics.median(cycles["asyncpg"])
    print(
        f"PostgreSQL {bindir.parent.name}, {rounds} rounds (ABAB), commit of {size} tasks, "
        f"round trip (SELECT 1) {round_trip * 1e3:.2f} ms"
    )
    print(f"{'driver':28} {'commit p50':>12} {'ratio':>7} {'claim/finish p50':>18} {'ratio':>7}")
    for name, times in commits.items():
        commit, cycle = statistics.median(times), statistics.median(cycles[name])
        print(
            f"{name:28} {commit * 1e3:9.2f} ms {commit / base[0]:6.2f}x "
            f"{cycle * 1e3:15.3f} ms {cycle / base[1]:6.2f}x"
        )


def main() -> None:
    """``python -m bench.pg_drivers [--rounds N] [--size N] [--claims N] [--latency-ms MS]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--size", type=int, default=100, help="tasks per commit")
    parser.add_argument("--claims", type=int, default=300, help="claim/finish per round")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added each way")
    args = parser.parse_args()
    anyio.run(measure, args.rounds, args.size, args.claims, args.latency_ms)


if __name__ == "__main__":
    main()
