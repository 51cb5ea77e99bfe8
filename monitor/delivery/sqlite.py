"""The SQLite store: task memories, the outbox, history and watches in one local file.

Why it exists: a restart must neither re-announce what was announced nor miss
what happened while batchmon was down, and a chat outage must not lose a
notification.  So the tracker's memory of a task and the deliveries its new
events cause are written in *one* transaction, before any sink sees them; a
delivery leaves the outbox only when it was delivered or given up.  It keeps
the contract of :class:`monitor.types.DeliveryStore`.

SQLite runs in a worker thread (one at a time, through a capacity limiter of
one), so no query blocks the event loop.  The database is in WAL mode.  One
process owns the file, so claims are kept in memory: a restart drops them,
and the attempt each counted stays counted.

Every row belongs to a tenant.  The store :meth:`~SqliteStore.open` returns is
the view of the tenant ``default``; :meth:`~SqliteStore.for_tenant` gives the
view of another, sharing the connection, the worker thread and the claims, and
every query of a view is scoped to its tenant.  Only the store that opened the
file closes it; a view's :meth:`~SqliteStore.close` gives its tenant's claims back.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import structlog

from monitor.delivery.database import connect, reclaim
from monitor.delivery.outbox import (
    DEFAULT_TENANT,
    Claim,
    Committed,
    Delivery,
    Queued,
    StoreError,
    Told,
    tenant_name,
)
from monitor.delivery.serial import (
    event_from_json,
    event_to_json,
    hold_from_json,
    hold_to_json,
    memory_from_json,
    memory_to_json,
)
from monitor.tracking.acks import Ack
from monitor.tracking.events import KINDS, Event
from monitor.tracking.maintenance import Hold
from monitor.tracking.memory import TaskMemory
from monitor.tracking.silences import Silence

__all__ = ["COALESCED", "HISTORY_PER_TASK", "TENANT_TABLES", "SqliteStore"]

log = structlog.get_logger("batchmon.store")

_T = TypeVar("_T")

#: Events kept per task for the HTTP API (older ones are pruned).
HISTORY_PER_TASK = 20

#: Event types whose queued deliveries coalesce: a new one replaces the older ones of the
#: same task and sink never tried (latest wins).
COALESCED = frozenset(kind.value for kind, row in KINDS.items() if row.coalesces)


# Every statement's first parameter is the tenant.
_PUT_ACK = (
    "INSERT INTO acks (tenant, task_id, condition, taken_by, comment, taken_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, task_id) DO UPDATE SET "
    "condition = excluded.condition, taken_by = excluded.taken_by, "
    "comment = excluded.comment, taken_at = excluded.taken_at"
)
_DROP_ACK = "DELETE FROM acks WHERE tenant = ? AND task_id = ?"
_TOLD = (
    "INSERT OR REPLACE INTO escalations (tenant, sink, task_id, condition, due) "
    "VALUES (?, ?, ?, ?, ?)"
)
_UNTOLD = "DELETE FROM escalations WHERE tenant = ? AND sink = ? AND task_id = ?"
#: The tables with a tenant's rows (every table but ``meta``), for dropping a tenant; the
#: same in PostgreSQL.
TENANT_TABLES = (
    "tasks",
    "watches",
    "outbox",
    "history",
    "acks",
    "silences",
    "escalations",
    "posts",
    "maintenance",
)


def _ack_row(tenant: str, ack: Ack) -> tuple[str, int, str, str, str | None, str]:
    return (tenant, ack.task_id, ack.condition, ack.by, ack.comment, ack.at.isoformat())


class SqliteStore:
    """A tenant's view of the state database; every method runs its SQL in a worker thread."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        *,
        tenant: str = DEFAULT_TENANT,
        root: SqliteStore | None = None,
    ) -> None:
        self._db = connection
        self.path = path
        self._tenant = tenant
        #: The store that opened the file (``None``: this one), whose thread and claims
        #: every view shares.
        self._root = root
        self._limiter: anyio.CapacityLimiter = (
            root._limiter if root is not None else anyio.CapacityLimiter(1)
        )
        #: Claimed deliveries (seq -> task key), per tenant and sink.
        self._every_claim: dict[str, dict[str, dict[int, int]]] = (
            root._every_claim if root is not None else {}
        )
        #: This tenant's, per sink.
        self._claims = self._every_claim.setdefault(tenant, {})

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Open (or create) the database; a corrupt one is moved aside and replaced.

        The store is the view of the tenant ``default``.
        """
        connection = await anyio.to_thread.run_sync(connect, path)
        return cls(connection, path)

    @property
    def tenant(self) -> str:
        """The tenant whose rows this view reads and writes."""
        return self._tenant

    def for_tenant(self, name: str) -> SqliteStore:
        """The view of tenant ``name``, on this store's connection; :class:`ValueError` for
        a name a tenant cannot have."""
        root = self._root or self
        return SqliteStore(self._db, self.path, tenant=tenant_name(name), root=root)

    async def close(self) -> None:
        """The store that opened the database closes it (after the last write); a view gives
        back its tenant's claims (after the tenant's last write) and leaves it open."""
        if self._root is None:
            await self._run(self._db.close)
        else:
            await self._run(self._claims.clear)

    async def _run(self, function: Callable[[], _T]) -> _T:
        try:
            return await anyio.to_thread.run_sync(function, limiter=self._limiter)
        except (sqlite3.Error, OverflowError) as exc:  # an integer SQLite cannot hold
            msg = f"state database {self.path}: {exc}"
            raise StoreError(msg) from exc

    # --- tasks

    async def load_tasks(self) -> dict[int, TaskMemory]:
        """Every stored task memory; unreadable rows are logged and skipped."""

        def load() -> list[tuple[int, str]]:
            return self._db.execute(
                "SELECT id, memory FROM tasks WHERE tenant = ?", (self._tenant,)
            ).fetchall()

        memories: dict[int, TaskMemory] = {}
        for task_id, text in await self._run(load):
            try:
                memories[task_id] = memory_from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("stored_task_unreadable", task_id=task_id, error=str(exc))
        return memories

    async def forget_tasks(self, task_ids: Iterable[int]) -> None:
        """Drop the memory, history, acknowledgements and escalation records of tasks no
        longer watched, and give the space back."""
        ids = [(self._tenant, task_id) for task_id in task_ids]

        def forget() -> None:
            with self._db:
                self._db.executemany("DELETE FROM tasks WHERE tenant = ? AND id = ?", ids)
                self._db.executemany("DELETE FROM history WHERE tenant = ? AND task_id = ?", ids)
                self._db.executemany(_DROP_ACK, ids)
                self._db.executemany(
                    "DELETE FROM escalations WHERE tenant = ? AND task_id = ?", ids
                )
            reclaim(self._db)

        await self._run(forget)

    async def commit(
        self,
        memories: Sequence[TaskMemory],
        deliveries: Sequence[tuple[str, Event]],
        now: float,
        history: Sequence[Event] = (),
        *,
        claim: Mapping[str, int] | None = None,
        told: Sequence[Told] = (),
        untold: Sequence[tuple[str, int]] = (),
        acks: Sequence[Ack] = (),
        unacked: Sequence[int] = (),
    ) -> Committed:
        """Store task memories, queue deliveries and record events, atomically.

        Each task keeps its last :data:`HISTORY_PER_TASK` events.  A queued
        delivery of a :data:`COALESCED` type replaces the older ones of the same
        task and sink never tried; nothing else is ever replaced.  ``claim``:
        deliveries to claim per sink in the same transaction, as :meth:`claim` would.
        ``told`` and ``untold``: escalation records written and dropped with them;
        ``acks`` and ``unacked``: acknowledgements stored and dropped with them.
        """
        tenant = self._tenant
        rows = [(tenant, m.info.id, memory_to_json(m)) for m in memories]
        texts = {e.id: event_to_json(e) for _, e in deliveries}
        queued = [
            (tenant, sink, e.id, e.task_id, e.type.value, texts[e.id], now)
            for sink, e in deliveries
        ]
        events = {e.id: e for _, e in deliveries}
        events.update((e.id, e) for e in history)
        recorded = [
            (tenant, e.id, e.task_id, texts.get(e.id) or event_to_json(e)) for e in events.values()
        ]
        also: list[tuple[str, Sequence[tuple[Any, ...]]]] = [
            (_UNTOLD, [(tenant, sink, task_id) for sink, task_id in untold]),
            (_TOLD, [(tenant, t.sink, t.task_id, t.condition, t.due) for t in told]),
            (_DROP_ACK, [(tenant, task_id) for task_id in unacked]),
            (_PUT_ACK, [_ack_row(tenant, ack) for ack in acks]),
        ]

        def write() -> tuple[dict[str, int], dict[str, list[tuple[Any, ...]]]]:
            growth: dict[str, int] = {}
            taken: dict[str, list[tuple[Any, ...]]] = {}
            try:
                self._write(rows, queued, recorded, growth, claim or {}, now, taken, also)
            except BaseException:  # rolled back: not claimed either
                self._settle(row[0] for claimed in taken.values() for row in claimed)
                raise
            return growth, taken

        growth, taken = await self._run(write)
        claimed: list[Delivery] = []
        for sink, rows in taken.items():
            readable, unreadable = self._read(sink, rows)
            claimed += readable
            if unreadable:
                await self.finish(unreadable)
                growth[sink] = growth.get(sink, 0) - len(unreadable)
        return Committed(growth, claimed)

    def _write(
        self,
        rows: Sequence[tuple[str, int, str]],
        queued: Sequence[tuple[Any, ...]],
        recorded: Sequence[tuple[str, str, int | None, str]],
        growth: dict[str, int],
        claim: Mapping[str, int],
        now: float,
        taken: dict[str, list[tuple[Any, ...]]],
        also: Sequence[tuple[str, Sequence[tuple[Any, ...]]]],
    ) -> None:
        """A commit's transaction (in the worker thread): fills ``growth`` and ``taken``.

        ``also``: further statements with their rows (escalation records, acknowledgements).
        """
        with self._db:
            for statement, params in also:
                self._db.executemany(statement, params)
            self._db.executemany(
                "INSERT INTO tasks (tenant, id, memory) VALUES (?, ?, ?) "
                "ON CONFLICT (tenant, id) DO UPDATE SET memory = excluded.memory",
                rows,
            )
            for row in queued:
                tenant, sink, _, task_id, kind = row[:5]
                if kind in COALESCED and task_id is not None:
                    # attempts = 0: never replace one that is or was being tried.
                    dropped = self._db.execute(
                        "DELETE FROM outbox WHERE tenant = ? AND sink = ? AND task_id = ? "
                        "AND type = ? AND attempts = 0",
                        (tenant, sink, task_id, kind),
                    ).rowcount
                    growth[sink] = growth.get(sink, 0) - dropped
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO outbox "
                    "(tenant, sink, event_id, task_id, type, event, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                growth[sink] = growth.get(sink, 0) + cursor.rowcount
            self._db.executemany(
                "INSERT OR IGNORE INTO history (tenant, event_id, task_id, event) "
                "VALUES (?, ?, ?, ?)",
                recorded,
            )
            for task_id in {task_id for _, _, task_id, _ in recorded}:
                self._db.execute(
                    "DELETE FROM history WHERE tenant = ? AND task_id IS ? AND seq NOT IN "
                    "(SELECT seq FROM history WHERE tenant = ? AND task_id IS ? "
                    "ORDER BY seq DESC LIMIT ?)",
                    (self._tenant, task_id, self._tenant, task_id, HISTORY_PER_TASK),
                )
            for sink, count in claim.items():
                if count > 0:
                    taken[sink] = self._take(sink, now, count)[0]

    # --- outbox

    async def claim(self, sink: str, now: float, *, done: Sequence[int] = ()) -> Claim:
        """Delete ``done``, then claim the oldest due head of a task with nothing claimed.

        A task's head is its oldest delivery to the sink: a later one never
        overtakes it, whether the head is claimed or waits for its retry.  One
        transaction, one round trip.  A row that cannot be read is logged and
        deleted, and counted in :attr:`Claim.dropped`.
        """

        def step(finished: Sequence[int]) -> tuple[list[tuple[Any, ...]], float | None, bool]:
            taken: list[tuple[Any, ...]] = []
            try:
                with self._db:
                    self._delete(finished)
                    taken, due_at, more = self._take(sink, now, 1)
            except BaseException:
                self._settle(row[0] for row in taken)  # rolled back: not claimed either
                raise
            return taken, due_at, more

        finished: Sequence[int] = done
        dropped = 0
        while True:
            rows, due_at, more = await self._run(partial(step, finished))
            if not rows:
                return Claim(None, due_at, dropped=dropped)
            deliveries, unreadable = self._read(sink, rows)
            if deliveries:
                return Claim(deliveries[0], more=more, dropped=dropped)
            finished, dropped = unreadable, dropped + len(unreadable)

    def _take(
        self, sink: str, now: float, count: int
    ) -> tuple[list[tuple[Any, ...]], float | None, bool]:
        """Claim up to ``count`` due heads of tasks with nothing claimed (in the worker thread).

        Also when the next waiting head is due (with none taken), and whether more
        were claimable.  Claims change only here and in :meth:`_settle`: one at a
        time, in the thread.
        """
        claims = self._claims.setdefault(sink, {})
        busy = set(claims.values())
        heads = self._db.execute(
            "SELECT min(seq), next_attempt, coalesce(task_id, 0) AS task FROM outbox "
            "WHERE tenant = ? AND sink = ? GROUP BY task ORDER BY 1",
            (self._tenant, sink),
        ).fetchall()
        due = [(seq, task) for seq, at, task in heads if task not in busy and at <= now]
        if not due:
            waiting = [at for _, at, task in heads if task not in busy]
            return [], min(waiting, default=None), False
        rows = []
        for seq, task in due[:count]:
            # A head just read, by its seq: the tenant is known to match.
            self._db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (seq,))
            rows.append(
                self._db.execute(
                    "SELECT seq, event, attempts - 1, next_attempt, created FROM outbox "
                    "WHERE seq = ?",
                    (seq,),
                ).fetchone()
            )
            claims[seq] = task
        return rows, None, len(due) > count

    @staticmethod
    def _read(sink: str, rows: Iterable[tuple[Any, ...]]) -> tuple[list[Delivery], list[int]]:
        """The claimed rows as deliveries, and the seqs of those that cannot be read."""
        deliveries: list[Delivery] = []
        unreadable: list[int] = []
        for seq, text, attempts, next_attempt, created in rows:
            try:
                event = event_from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                # Written by another version, or damaged: it can never be sent, and keeping
                # it at the head of its task would stop that task's deliveries for good.
                log.error("outbox_row_unreadable", seq=seq, sink=sink, error=str(exc))
                unreadable.append(seq)
                continue
            deliveries.append(Delivery(seq, sink, event, attempts, next_attempt, created))
        return deliveries, unreadable

    def _settle(self, seqs: Iterable[int]) -> None:
        """Claims on these deliveries end, whichever of the tenant's sinks holds them (in the
        worker thread)."""
        ended = list(seqs)  # read once: a generator would be spent on the first sink
        for claims in self._claims.values():
            for seq in ended:
                claims.pop(seq, None)

    def _delete(self, seqs: Sequence[int]) -> None:
        """Delete outbox rows by seq (in the worker thread, inside the caller's transaction)."""
        self._settle(seqs)
        self._db.executemany(
            "DELETE FROM outbox WHERE seq = ? AND tenant = ?",
            [(seq, self._tenant) for seq in seqs],
        )

    async def finish(self, seqs: Sequence[int]) -> None:
        """Deliveries are done: delivered or given up."""

        def delete() -> None:
            with self._db:
                self._delete(seqs)

        await self._run(delete)

    async def retry_later(self, seq: int, next_attempt: float, error: str) -> None:
        """Keep a delivery for another try at ``next_attempt`` (epoch seconds)."""

        def later() -> None:
            with self._db:
                self._db.execute(
                    "UPDATE outbox SET next_attempt = ?, last_error = ? "
                    "WHERE seq = ? AND tenant = ?",
                    (next_attempt, error, seq, self._tenant),
                )
            self._settle((seq,))

        await self._run(later)

    async def release(self, seqs: Sequence[int]) -> None:
        """Claimed deliveries were not tried after all: take back the attempt counted."""

        def release() -> None:
            with self._db:
                self._db.executemany(
                    "UPDATE outbox SET attempts = attempts - 1 "
                    "WHERE seq = ? AND tenant = ? AND attempts > 0",
                    [(s, self._tenant) for s in seqs],
                )
            self._settle(seqs)

        await self._run(release)

    async def pending_counts(self) -> dict[str, int]:
        """Pending deliveries per sink."""

        def count() -> list[tuple[str, int]]:
            return self._db.execute(
                "SELECT sink, COUNT(*) FROM outbox WHERE tenant = ? GROUP BY sink", (self._tenant,)
            ).fetchall()

        return dict(await self._run(count))

    async def drop_sinks_except(self, sinks: Iterable[str]) -> dict[str, int]:
        """Delete the tenant's deliveries for sinks no longer configured; how many, per sink."""
        keep = [self._tenant, *sorted(set(sinks))]

        def drop() -> dict[str, int]:
            marks = ",".join("?" * (len(keep) - 1))
            with self._db:
                gone = dict(
                    self._db.execute(
                        "SELECT sink, COUNT(*) FROM outbox "  # noqa: S608 - only placeholders
                        f"WHERE tenant = ? AND sink NOT IN ({marks}) GROUP BY sink",
                        keep,
                    ).fetchall()
                )
                for table in ("outbox", "escalations", "posts"):
                    self._db.execute(
                        f"DELETE FROM {table} WHERE tenant = ? AND sink NOT IN ({marks})",  # noqa: S608
                        keep,
                    )
            return gone

        return await self._run(drop)

    async def drop_tenants_except(self, names: Iterable[str]) -> dict[str, int]:
        """Delete every row of the tenants not named, whichever view is asked; how many
        rows, per tenant dropped."""
        keep = sorted(set(names))

        def drop() -> dict[str, int]:
            marks = ",".join("?" * len(keep))
            gone: dict[str, int] = {}
            with self._db:
                for table in TENANT_TABLES:
                    counted = self._db.execute(
                        f"SELECT tenant, COUNT(*) FROM {table} "  # noqa: S608 - only placeholders
                        f"WHERE tenant NOT IN ({marks}) GROUP BY tenant",
                        keep,
                    ).fetchall()
                    for tenant, count in counted:
                        gone[tenant] = gone.get(tenant, 0) + count
                    self._db.execute(f"DELETE FROM {table} WHERE tenant NOT IN ({marks})", keep)  # noqa: S608
            for tenant in gone:
                self._every_claim.get(tenant, {}).clear()
            reclaim(self._db)
            return gone

        return await self._run(drop)

    async def known_events(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids were recorded already (queued or delivered)."""
        ids = list(event_ids)

        def known() -> set[str]:
            found: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT event_id FROM history WHERE tenant = ? AND event_id IN ({marks})",  # noqa: S608 - only placeholders
                    [self._tenant, *chunk],
                ).fetchall()
                found.update(event_id for (event_id,) in rows)
            return found

        return await self._run(known) if ids else set()

    async def recent_events(self, task_id: int | None) -> list[Event]:
        """A task's last recorded events, oldest first (``None``: monitor events)."""

        def load() -> list[tuple[str]]:
            return self._db.execute(
                "SELECT event FROM history WHERE tenant = ? AND task_id IS ? ORDER BY seq",
                (self._tenant, task_id),
            ).fetchall()

        return [event_from_json(text) for (text,) in await self._run(load)]

    # --- digests: one worker reads a sink's queue and claims rows by seq

    async def queued(self, sink: str) -> list[Queued]:
        """The sink's deliveries nobody holds a claim on, oldest first, without events."""

        def load() -> list[tuple[int, int | None, str, float, float]]:
            return self._db.execute(
                "SELECT seq, task_id, type, created, next_attempt FROM outbox "
                "WHERE tenant = ? AND sink = ? ORDER BY seq",
                (self._tenant, sink),
            ).fetchall()

        rows = await self._run(load)
        claimed = self._claims.get(sink, {})
        return [Queued(*row) for row in rows if row[0] not in claimed]

    async def claim_seqs(self, sink: str, seqs: Sequence[int]) -> list[Delivery]:
        """Claim these deliveries (an attempt each); claimed or gone ones are left out."""

        def take() -> list[tuple[Any, ...]]:
            claims = self._claims.setdefault(sink, {})
            rows = []
            with self._db:
                for seq in seqs:
                    if seq in claims:
                        continue
                    self._db.execute(
                        "UPDATE outbox SET attempts = attempts + 1 "
                        "WHERE seq = ? AND tenant = ? AND sink = ?",
                        (seq, self._tenant, sink),
                    )
                    row = self._db.execute(
                        "SELECT seq, event, attempts - 1, next_attempt, created, "
                        "coalesce(task_id, 0) FROM outbox WHERE seq = ? AND tenant = ? AND sink = ?",
                        (seq, self._tenant, sink),
                    ).fetchone()
                    if row is not None:
                        rows.append(row[:5])
                        claims[seq] = row[5]
            return rows

        deliveries, unreadable = self._read(sink, await self._run(take))
        if unreadable:
            await self.finish(unreadable)
        return deliveries

    # --- watches added at run time

    async def watches(self) -> list[int]:
        """Task ids watched through the HTTP API."""

        def load() -> list[tuple[int]]:
            return self._db.execute(
                "SELECT id FROM watches WHERE tenant = ? ORDER BY id", (self._tenant,)
            ).fetchall()

        return [task_id for (task_id,) in await self._run(load)]

    async def add_watch(self, task_id: int) -> None:
        """Persist a watch added at run time."""

        def add() -> None:
            with self._db:
                self._db.execute(
                    "INSERT OR IGNORE INTO watches (tenant, id, added) VALUES (?, ?, ?)",
                    (self._tenant, task_id, time.time()),
                )

        await self._run(add)

    async def remove_watch(self, task_id: int) -> None:
        """Forget a watch added at run time."""

        def remove() -> None:
            with self._db:
                self._db.execute(
                    "DELETE FROM watches WHERE tenant = ? AND id = ?", (self._tenant, task_id)
                )

        await self._run(remove)

    # --- what escalation sinks were told of, and when capped sinks posted

    async def told(self) -> list[Told]:
        """What escalation sinks were told of, one per sink and task."""

        def load() -> list[tuple[str, int, str, float]]:
            return self._db.execute(
                "SELECT sink, task_id, condition, due FROM escalations WHERE tenant = ? "
                "ORDER BY sink, task_id",
                (self._tenant,),
            ).fetchall()

        return [Told(*row) for row in await self._run(load)]

    async def record_post(self, sink: str, at: float, *, keep_after: float) -> None:
        """A capped sink posted at ``at``; its posts up to ``keep_after`` are dropped."""

        def record() -> None:
            with self._db:
                self._db.execute(
                    "INSERT INTO posts (tenant, sink, at) VALUES (?, ?, ?)",
                    (self._tenant, sink, at),
                )
                self._db.execute(
                    "DELETE FROM posts WHERE tenant = ? AND sink = ? AND at <= ?",
                    (self._tenant, sink, keep_after),
                )

        await self._run(record)

    async def posts(self, sink: str, since: float) -> list[float]:
        """When a capped sink posted after ``since``, oldest first."""

        def load() -> list[tuple[float]]:
            return self._db.execute(
                "SELECT at FROM posts WHERE tenant = ? AND sink = ? AND at > ? ORDER BY at",
                (self._tenant, sink, since),
            ).fetchall()

        return [at for (at,) in await self._run(load)]

    # --- acknowledgements

    async def acks(self) -> list[Ack]:
        """Every stored acknowledgement (lapsed ones too: the caller judges)."""

        def load() -> list[tuple[int, str, str, str | None, str]]:
            return self._db.execute(
                "SELECT task_id, condition, taken_by, comment, taken_at FROM acks "
                "WHERE tenant = ? ORDER BY task_id",
                (self._tenant,),
            ).fetchall()

        return [
            Ack(task_id, condition, by, comment, datetime.fromisoformat(at))
            for task_id, condition, by, comment, at in await self._run(load)
        ]

    async def put_ack(self, ack: Ack) -> None:
        """Store a task's acknowledgement, replacing the one it had."""
        row = _ack_row(self._tenant, ack)

        def put() -> None:
            with self._db:
                self._db.execute(_PUT_ACK, row)

        await self._run(put)

    async def drop_acks(self, task_ids: Iterable[int]) -> None:
        """Delete these tasks' acknowledgements (taken back, or lapsed)."""
        ids = [(self._tenant, task_id) for task_id in task_ids]

        def drop() -> None:
            with self._db:
                self._db.executemany(_DROP_ACK, ids)

        await self._run(drop)

    async def silences(self) -> list[Silence]:
        """Every stored silence, ended ones not yet swept included, by end time."""

        def load() -> list[tuple[str]]:
            return self._db.execute(
                "SELECT silence FROM silences WHERE tenant = ? ORDER BY ends, id", (self._tenant,)
            ).fetchall()

        return [Silence.from_dict(json.loads(text)) for (text,) in await self._run(load)]

    async def add_silence(self, silence: Silence) -> None:
        """Persist a new silence."""

        def add() -> None:
            with self._db:
                self._db.execute(
                    "INSERT INTO silences (tenant, id, ends, silence) VALUES (?, ?, ?, ?)",
                    (
                        self._tenant,
                        silence.id,
                        silence.ends.timestamp(),
                        json.dumps(silence.to_dict()),
                    ),
                )

        await self._run(add)

    async def remove_silences(self, silence_ids: Sequence[str]) -> set[str]:
        """Delete silences (ended or swept); which of them were stored."""

        def remove() -> set[str]:
            removed = set()
            with self._db:
                for silence_id in silence_ids:
                    cursor = self._db.execute(
                        "DELETE FROM silences WHERE tenant = ? AND id = ?",
                        (self._tenant, silence_id),
                    )
                    if cursor.rowcount:
                        removed.add(silence_id)
            return removed

        return await self._run(remove) if silence_ids else set()

    # --- maintenance

    async def hold(self) -> Hold:
        """The maintenance under way and the conditions it held back, as last stored."""

        def load() -> tuple[str] | None:
            row: tuple[str] | None = self._db.execute(
                "SELECT hold FROM maintenance WHERE tenant = ?", (self._tenant,)
            ).fetchone()
            return row

        row = await self._run(load)
        return hold_from_json(row[0]) if row is not None else Hold()

    async def put_hold(self, hold: Hold) -> None:
        """Store the maintenance's state; an empty one (nothing under way) is deleted."""
        text = None if hold == Hold() else hold_to_json(hold)

        def put() -> None:
            with self._db:
                if text is None:
                    self._db.execute("DELETE FROM maintenance WHERE tenant = ?", (self._tenant,))
                else:
                    self._db.execute(
                        "INSERT INTO maintenance (tenant, hold) VALUES (?, ?) "
                        "ON CONFLICT (tenant) DO UPDATE SET hold = excluded.hold",
                        (self._tenant, text),
                    )

        await self._run(put)
