"""The PostgreSQL store: the SQLite store's contract, in a database several processes share.

It keeps the contract of :class:`monitor.types.DeliveryStore` as
:mod:`monitor.delivery.sqlite` does (one transaction per commit, before any sink
sees an event; at least once; a task's deliveries in order), with what a shared
database needs besides:

- **Claims live in the rows.**  A claim sets ``claimed_by`` (this store's id, new
  at each start) and ``claimed_until`` (``now`` + ``claim_ttl``), chosen with
  ``FOR UPDATE SKIP LOCKED`` so that two workers, of this process or another,
  never take the same delivery.  This store's own claims hold until settled, as in
  SQLite; another's are taken over once ``claimed_until`` has passed (a process
  killed while sending), keeping the delivery's ``seq`` and event id, so a receiver
  can drop the repeat.  A clean :meth:`close` gives this store's claims back.
- **Migrations** (:mod:`monitor.delivery.postgres_schema`) run at :meth:`open`,
  under an advisory lock, before the first read.
- **Round trips.**  A claim (with the deliveries it finishes) is one statement; a
  commit is one transaction sent at once in pipeline mode: one round trip each.
  Array parameters go in binary (``%b``), which ``bench/pg_drivers.py`` found twice
  as fast as text for JSON.
- **Cancellation.**  Each call runs shielded (within :data:`ANSWER_TIMEOUT`), so
  what the database did reaches the caller, as SQLite's worker thread's answer does.
- **Tenants.**  Every row belongs to one.  The store :meth:`~PostgresStore.open`
  returns is the view of the tenant ``default``; :meth:`~PostgresStore.for_tenant`
  gives the view of another on the same pool, with the same claimer.  Every
  statement of a view names its tenant as a parameter (no round trip more), and
  every index leads with the tenant.  Only the store that opened the pool closes
  it; a view's :meth:`~PostgresStore.close` gives its tenant's claims back.

The URL is a secret: messages name the database by :func:`redacted_url`, and
whatever the server or libpq says is passed through a redactor that knows the
password.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from monitor.config.service import redacted_url
from monitor.delivery.leases import Fence
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
from monitor.delivery.postgres_schema import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION
from monitor.delivery.serial import (
    event_from_json,
    event_to_json,
    hold_from_json,
    hold_to_json,
    memory_from_json,
    memory_to_json,
)
from monitor.delivery.sqlite import COALESCED, HISTORY_PER_TASK, TENANT_TABLES
from monitor.superoffice.redact import Redactor
from monitor.tracking.acks import Ack
from monitor.tracking.events import Event
from monitor.tracking.maintenance import Hold
from monitor.tracking.memory import TaskMemory
from monitor.tracking.silences import Silence

__all__ = ["CLAIM_TTL", "PostgresStore"]

log = structlog.get_logger("batchmon.store")

#: Seconds another process's claim holds before this one may take the delivery over.
CLAIM_TTL = 30.0
#: Seconds to wait for the server at start-up, and for a free connection later.
CONNECT_TIMEOUT = 10.0
#: Connections kept open: the poller's commits, each sink worker's claims, the web pages.
POOL_SIZE = 8
#: Seconds the database has to answer one store call (a connection included).
ANSWER_TIMEOUT = 60.0

# Every statement names its tenant: the first parameter of those without names.
_UPSERT_TASKS = (
    "INSERT INTO tasks (tenant, task_id, memory) "
    "SELECT %b::text, * FROM unnest(%b::bigint[], %b::text[]) "
    "ON CONFLICT (tenant, task_id) DO UPDATE SET memory = excluded.memory"
)
# attempts = 0: never replace one that is or was being tried.
_COALESCE = (
    "DELETE FROM outbox o "
    "USING unnest(%b::text[], %b::bigint[], %b::text[], %b::text[]) AS n(sink, task_id, type, id) "
    "WHERE o.tenant = %b AND o.sink = n.sink AND o.task_id = n.task_id AND o.type = n.type "
    "AND o.event_id <> n.id AND o.attempts = 0 "
    "RETURNING o.sink"
)
_QUEUE = (
    "INSERT INTO outbox (tenant, sink, event_id, task_id, type, event, created) "
    "SELECT %b::text, sink, event_id, task_id, type, event, %b::float8 FROM unnest("
    "%b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[]) "
    "WITH ORDINALITY AS n(sink, event_id, task_id, type, event, i) ORDER BY i "
    "ON CONFLICT (tenant, sink, event_id) DO NOTHING RETURNING sink"
)
_RECORD = (
    "INSERT INTO history (tenant, event_id, task_id, event) "
    "SELECT %b::text, * FROM unnest(%b::text[], %b::bigint[], %b::text[]) "
    "ON CONFLICT (tenant, event_id) DO NOTHING"
)
_PRUNE = (
    "DELETE FROM history WHERE seq IN (SELECT seq FROM ("
    "SELECT seq, row_number() OVER (PARTITION BY task_id ORDER BY seq DESC) AS r "
    "FROM history WHERE tenant = %(tenant)b "
    "AND (task_id = ANY(%(tasks)b::bigint[]) OR (%(monitor)b AND task_id IS NULL))"
    ") AS ranked WHERE r > %(keep)b)"
)
_UNTOLD = (
    "DELETE FROM escalations e USING unnest(%b::text[], %b::bigint[]) AS n(sink, task_id) "
    "WHERE e.tenant = %b AND e.sink = n.sink AND e.task_id = n.task_id"
)
_TOLD = (
    "INSERT INTO escalations (tenant, sink, task_id, condition, due) "
    "SELECT %b::text, * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::float8[]) "
    "ON CONFLICT (tenant, sink, task_id) DO UPDATE SET "
    "condition = excluded.condition, due = excluded.due"
)
_PUT_ACKS = (
    "INSERT INTO acks (tenant, task_id, condition, taken_by, comment, taken_at) "
    "SELECT %b::text, * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[]) "
    "ON CONFLICT (tenant, task_id) DO UPDATE SET "
    "condition = excluded.condition, taken_by = excluded.taken_by, "
    "comment = excluded.comment, taken_at = excluded.taken_at"
)
_DROP_ACKS = "DELETE FROM acks WHERE tenant = %b AND task_id = ANY(%b::bigint[])"
#: A head is a task's oldest delivery to the sink, ``done`` (deleted by the same statement)
#: left out: a later one never overtakes it.
_HEAD = (
    "NOT EXISTS (SELECT FROM outbox e WHERE e.tenant = o.tenant AND e.sink = o.sink "
    "AND coalesce(e.task_id, 0) = coalesce(o.task_id, 0) AND e.seq < o.seq "
    "AND e.seq <> ALL(%(done)b::bigint[]))"
)
#: Free: not claimed, or claimed by another process whose claim ran out.
_FREE = "(o.claimed_by IS NULL OR (o.claimed_by <> %(me)b AND o.claimed_until <= %(now)b))"
#: One statement, so one round trip and its own transaction: delete ``done``, claim up to
#: ``limit`` due free heads (rows: the deliveries, and whether more were claimable); with
#: none claimed, one row saying when a head not held by this process becomes claimable.
#: Composed of the constants above; every value is a parameter.
_CLAIM = (
    "WITH finished AS ("  # noqa: S608
    "DELETE FROM outbox WHERE tenant = %(tenant)b AND seq = ANY(%(done)b::bigint[])), "
    "candidates AS ("
    "SELECT o.seq FROM outbox o WHERE o.tenant = %(tenant)b AND o.sink = %(sink)b "
    "AND o.next_attempt <= %(now)b "
    f"AND o.seq <> ALL(%(done)b::bigint[]) AND {_FREE} AND {_HEAD} "
    "ORDER BY o.seq LIMIT %(limit)b + 1 FOR UPDATE OF o SKIP LOCKED"
    "), chosen AS (SELECT seq FROM candidates ORDER BY seq LIMIT %(limit)b), "
    "claimed AS (UPDATE outbox SET attempts = attempts + 1, claimed_by = %(me)b, "
    "claimed_until = %(until)b FROM chosen WHERE outbox.seq = chosen.seq "
    "RETURNING outbox.seq, outbox.event, outbox.attempts - 1 AS attempts, "
    "outbox.next_attempt, outbox.created) "
    "SELECT seq, event, attempts, next_attempt, created, "
    "(SELECT count(*) FROM candidates) > %(limit)b, NULL::float8 FROM claimed "
    "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, false, ("
    "SELECT min(CASE WHEN o.claimed_by IS NULL THEN o.next_attempt "
    "ELSE greatest(o.next_attempt, o.claimed_until) END) FROM outbox o "
    "WHERE o.tenant = %(tenant)b AND o.sink = %(sink)b AND o.claimed_by IS DISTINCT FROM %(me)b "
    f"AND o.seq <> ALL(%(done)b::bigint[]) AND {_HEAD}"
    ") WHERE NOT EXISTS (SELECT FROM claimed) ORDER BY 1"
)
_FINISH = "DELETE FROM outbox WHERE tenant = %b AND seq = ANY(%b::bigint[])"
#: A digest's rows by seq, those free only (as :data:`_CLAIM` takes them), heads or not: the
#: digest worker's plan chose them.  One statement.
_CLAIM_SEQS = (
    "WITH chosen AS ("  # noqa: S608
    "SELECT o.seq FROM outbox o WHERE o.tenant = %(tenant)b AND o.sink = %(sink)b "
    "AND o.seq = ANY(%(seqs)b::bigint[]) "
    f"AND {_FREE} FOR UPDATE OF o SKIP LOCKED) "
    "UPDATE outbox SET attempts = attempts + 1, claimed_by = %(me)b, "
    "claimed_until = %(until)b FROM chosen WHERE outbox.seq = chosen.seq "
    "RETURNING outbox.seq, outbox.event, outbox.attempts - 1, outbox.next_attempt, "
    "outbox.created"
)
#: A sink's queue for its digest worker: the rows nobody holds a live claim on.
_QUEUED = (
    "SELECT o.seq, o.task_id, o.type, o.created, o.next_attempt FROM outbox o "  # noqa: S608
    f"WHERE o.tenant = %(tenant)b AND o.sink = %(sink)b AND {_FREE} ORDER BY o.seq"
)

_RETRY_LATER = (
    "UPDATE outbox SET next_attempt = %b, last_error = %b, claimed_by = NULL, "
    "claimed_until = NULL WHERE seq = %b AND tenant = %b AND claimed_by = %b"
)
_GIVE_BACK = (
    "UPDATE outbox SET attempts = attempts - 1, claimed_by = NULL, "
    "claimed_until = NULL "
    "WHERE seq = ANY(%b::bigint[]) AND tenant = %b AND claimed_by = %b "
    "AND attempts > 0"
)
_TAKE_OVER = (
    "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
    "WHERE tenant = %b AND claimed_by IS NOT NULL AND claimed_by <> %b RETURNING seq"
)
_ADD_WATCH = (
    "INSERT INTO watches (tenant, task_id, added) VALUES (%b, %b, %b) ON CONFLICT DO NOTHING"
)
_PUT_HOLD = (
    "INSERT INTO maintenance (tenant, hold) VALUES (%b, %b) "
    "ON CONFLICT (tenant) DO UPDATE SET hold = excluded.hold"
)


class PostgresStore:
    """A tenant's view of the state database in PostgreSQL, through a small pool of
    connections."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        name: str,
        redact: Redactor,
        *,
        claim_ttl: float,
        tenant: str = DEFAULT_TENANT,
        root: PostgresStore | None = None,
        fence: Fence | None = None,
    ) -> None:
        self._pool = pool
        #: The database as messages name it (no password, no query).
        self.name = name
        self._redact = redact
        self._claim_ttl = claim_ttl
        self._tenant = tenant
        #: The store that opened the pool (``None``: this one).
        self._root = root
        #: ``claimed_by`` of this store's claims, its views' included.
        self.claimer: str = root.claimer if root is not None else uuid.uuid4().hex
        #: The lease this view writes under (a replica's pipeline); ``None``: unfenced.
        self._fence = fence

    @classmethod
    async def open(cls, url: str, *, claim_ttl: float = CLAIM_TTL) -> PostgresStore:
        """Connect, migrate the schema, and keep a pool; :class:`StoreError` saying why not."""
        name = redacted_url(url)
        try:
            password = conninfo_to_dict(url).get("password")
        except psycopg.ProgrammingError:
            msg = f"state.url {name}: not a PostgreSQL URL libpq can read"
            raise StoreError(msg) from None
        redact = Redactor([url, *([str(password)] if password else [])])
        try:
            connection = await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
            )
        except psycopg.Error as exc:
            msg = f"cannot connect to the state database {name}: {redact(str(exc)).strip()}"
            raise StoreError(msg) from None
        try:
            applied = await _migrate(connection, name)
        except psycopg.Error as exc:
            msg = f"cannot prepare the state database {name}: {redact(str(exc)).strip()}"
            raise StoreError(msg) from None
        finally:
            await connection.close()
        if applied:
            log.info("state_database_migrated", database=name, versions=applied)
        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            timeout=CONNECT_TIMEOUT,
            kwargs={"autocommit": True},
            open=False,
            name="batchmon-state",
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            await pool.close()
            msg = f"cannot connect to the state database {name}: {redact(str(exc)).strip()}"
            raise StoreError(msg) from None
        return cls(pool, name, redact, claim_ttl=claim_ttl)

    @property
    def tenant(self) -> str:
        """The tenant whose rows this view reads and writes."""
        return self._tenant

    def for_tenant(self, name: str) -> PostgresStore:
        """The view of tenant ``name``, on this store's pool and with its claimer;
        :class:`ValueError` for a name a tenant cannot have."""
        return PostgresStore(
            self._pool,
            self.name,
            self._redact,
            claim_ttl=self._claim_ttl,
            tenant=tenant_name(name),
            root=self._root or self,
        )

    def fenced(self, fence: Fence) -> PostgresStore:
        """This view with every write checked against ``fence`` first, in its transaction:
        once the lease is lost (taken over, or run out) the view writes nothing more and
        raises :class:`~monitor.delivery.leases.LeaseLostError`."""
        return PostgresStore(
            self._pool,
            self.name,
            self._redact,
            claim_ttl=self._claim_ttl,
            tenant=self._tenant,
            root=self._root or self,
            fence=fence,
        )

    async def _write(self, statements: Sequence[tuple[str, Any]]) -> list[list[tuple[Any, ...]]]:
        """Run writes in one transaction sent at once; a fenced view's begin with its fence
        (no round trip more), so a lease lost makes the whole transaction write nothing."""
        fence = self._fence
        async with self._connection() as db:
            if fence is None:
                if len(statements) == 1:
                    cursor = await db.execute(*statements[0])
                    return [await cursor.fetchall() if cursor.description is not None else []]
                return await _one_round_trip(db, statements)
            try:
                results = await _one_round_trip(db, [fence.statement(), *statements])
            except psycopg.Error as exc:
                lost = fence.lost(exc)
                if lost is None:
                    raise
                raise lost from None
            return results[1:]

    async def take_over_claims(self) -> int:
        """Free the tenant's deliveries other replicas claimed: its lease is this view's now,
        so their holders (dead, or fenced) deliver nothing more of it; how many.  A delivery
        that was in flight at a holder's death goes out again with the same event id."""
        (rows,) = await self._write([(_TAKE_OVER, [self._tenant, self.claimer])])
        return len(rows)

    async def close(self) -> None:
        """Give the claims back (their attempts stay counted): the store that opened the
        pool gives back every tenant's and disconnects; a view gives back its tenant's and
        leaves the pool open (after the tenant's last write).

        A database gone by then keeps them until they run out (``claim_ttl``).
        """
        try:
            async with self._connection() as db:
                await db.execute(
                    "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
                    "WHERE claimed_by = %b AND (%b OR tenant = %b)",
                    [self.claimer, self._root is None, self._tenant],
                )
        except StoreError as exc:
            log.warning("claims_not_given_back", error=str(exc), held_for=self._claim_ttl)
        finally:
            if self._root is None:
                await self._pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; a database error becomes a :class:`StoreError` naming it.

        What runs on it is shielded from cancellation, within :data:`ANSWER_TIMEOUT`:
        a claim the database made must reach its caller (a dispatcher stopped for a
        reload settles what it holds), as SQLite's worker thread always answers.
        """
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(ANSWER_TIMEOUT):
                async with self._pool.connection() as connection:
                    yield connection
        except TimeoutError:
            msg = f"state database {self.name}: no answer within {ANSWER_TIMEOUT:g} s"
            raise StoreError(msg) from None
        except (psycopg.Error, OverflowError) as exc:
            msg = f"state database {self.name}: {self._redact(str(exc)).strip()}"
            raise StoreError(msg) from exc

    # --- tasks

    async def load_tasks(self) -> dict[int, TaskMemory]:
        """Every stored task memory; unreadable rows are logged and skipped."""
        async with self._connection() as db:
            cursor = await db.execute(
                "SELECT task_id, memory FROM tasks WHERE tenant = %b", [self._tenant]
            )
            rows = await cursor.fetchall()
        memories: dict[int, TaskMemory] = {}
        for task_id, text in rows:
            try:
                memories[task_id] = memory_from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("stored_task_unreadable", task_id=task_id, error=str(exc))
        return memories

    async def forget_tasks(self, task_ids: Iterable[int]) -> None:
        """Drop the memory, history, acknowledgements and escalation records of tasks no
        longer watched."""
        ids = list(task_ids)
        if not ids:
            return
        params = [self._tenant, ids]
        await self._write(
            [
                ("DELETE FROM tasks WHERE tenant = %b AND task_id = ANY(%b::bigint[])", params),
                (
                    "DELETE FROM history WHERE tenant = %b AND task_id = ANY(%b::bigint[])",
                    params,
                ),
                (_DROP_ACKS, params),
                (
                    "DELETE FROM escalations WHERE tenant = %b AND task_id = ANY(%b::bigint[])",
                    params,
                ),
            ],
        )

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
        """Store task memories, queue deliveries and record events, in one transaction.

        Each task keeps its last :data:`HISTORY_PER_TASK` events.  A queued
        delivery of a :data:`COALESCED` type replaces the older ones of the same
        task and sink never tried (in this commit too); nothing else is ever
        replaced.  ``claim``: deliveries to claim per sink in the same
        transaction, as :meth:`claim` would.  ``told`` and ``untold``: escalation
        records written and dropped with them; ``acks`` and ``unacked``:
        acknowledgements stored and dropped with them.
        """
        tasks = {m.info.id: memory_to_json(m) for m in memories}
        texts = {e.id: event_to_json(e) for _, e in deliveries}
        queued = _coalesced_in_batch(deliveries)
        events = {e.id: e for _, e in deliveries}
        events.update((e.id, e) for e in history)
        tenant = self._tenant
        statements: list[tuple[str, Any]] = []
        if tasks:
            statements.append((_UPSERT_TASKS, [tenant, list(tasks), list(tasks.values())]))
        replacing = [
            (sink, e.task_id, e.type.value, e.id)
            for sink, e in queued
            if e.type.value in COALESCED and e.task_id is not None
        ]
        if replacing:
            statements.append((_COALESCE, [*_columns(replacing, 4), tenant]))
        if queued:
            outbox = [(s, e.id, e.task_id, e.type.value, texts[e.id]) for s, e in queued]
            statements.append((_QUEUE, [tenant, now, *_columns(outbox, 5)]))
        if events:
            recorded = [
                (e.id, e.task_id, texts.get(e.id) or event_to_json(e)) for e in events.values()
            ]
            ids = sorted({e.task_id for e in events.values() if e.task_id is not None})
            monitor = any(e.task_id is None for e in events.values())
            statements.append((_RECORD, [tenant, *_columns(recorded, 3)]))
            prune = {"tenant": tenant, "tasks": ids, "monitor": monitor, "keep": HISTORY_PER_TASK}
            statements.append((_PRUNE, prune))
        if untold:
            statements.append((_UNTOLD, [*_columns(untold, 2), tenant]))
        if told:
            records = {(t.sink, t.task_id): (t.sink, t.task_id, t.condition, t.due) for t in told}
            statements.append((_TOLD, [tenant, *_columns(list(records.values()), 4)]))
        if unacked:
            statements.append((_DROP_ACKS, [tenant, list(unacked)]))
        if acks:
            latest = {ack.task_id: _ack_row(ack) for ack in acks}
            statements.append((_PUT_ACKS, [tenant, *_columns(list(latest.values()), 5)]))
        claiming = [(sink, count) for sink, count in (claim or {}).items() if count > 0]
        statements += [
            (_CLAIM, self._claim_params(sink, now, count, ())) for sink, count in claiming
        ]
        results = await self._write(statements)
        growth: dict[str, int] = {}
        for (sql, _), rows in zip(statements, results, strict=True):
            if sql in (_COALESCE, _QUEUE):
                for (sink,) in rows:
                    growth[sink] = growth.get(sink, 0) + (1 if sql == _QUEUE else -1)
        claimed = {
            sink: [row[:5] for row in rows if row[0] is not None]
            for (sink, _), rows in zip(
                claiming, results[len(results) - len(claiming) :], strict=True
            )
        }
        for sink in {sink for sink, _ in deliveries}:
            growth.setdefault(sink, 0)
        taken: list[Delivery] = []
        for sink, rows in claimed.items():
            readable, unreadable = _deliveries(sink, rows)
            taken += readable
            if unreadable:
                await self.finish(unreadable)
                growth[sink] = growth.get(sink, 0) - len(unreadable)
        return Committed(growth, taken)

    def _claim_params(
        self, sink: str, now: float, count: int, done: Sequence[int]
    ) -> dict[str, Any]:
        return {
            "tenant": self._tenant,
            "sink": sink,
            "now": now,
            "me": self.claimer,
            "until": now + self._claim_ttl,
            "limit": count,
            "done": list(done),
        }

    # --- outbox

    async def claim(self, sink: str, now: float, *, done: Sequence[int] = ()) -> Claim:
        """Delete ``done``, then claim the oldest due head of a task with nothing claimed.

        One statement, one round trip.  A row that cannot be read is logged and
        deleted, and counted in :attr:`Claim.dropped`.
        """
        finished: Sequence[int] = done
        dropped = 0
        while True:
            (rows,) = await self._write([(_CLAIM, self._claim_params(sink, now, 1, finished))])
            if rows[0][0] is None:
                return Claim(None, rows[0][6], dropped=dropped)
            deliveries, unreadable = _deliveries(sink, [row[:5] for row in rows])
            if deliveries:
                return Claim(deliveries[0], more=bool(rows[0][5]), dropped=dropped)
            finished, dropped = unreadable, dropped + len(unreadable)

    async def finish(self, seqs: Sequence[int]) -> None:
        """Deliveries are done: delivered or given up."""
        if seqs:
            await self._write([(_FINISH, [self._tenant, list(seqs)])])

    async def retry_later(self, seq: int, next_attempt: float, error: str) -> None:
        """Keep a delivery (claimed by this store) for another try at ``next_attempt``."""
        await self._write(
            [
                (
                    _RETRY_LATER,
                    [next_attempt, error, seq, self._tenant, self.claimer],
                )
            ]
        )

    async def release(self, seqs: Sequence[int]) -> None:
        """Claimed deliveries were not tried after all: take back the attempt counted."""
        if seqs:
            await self._write(
                [
                    (
                        _GIVE_BACK,
                        [list(seqs), self._tenant, self.claimer],
                    )
                ]
            )

    async def pending_counts(self) -> dict[str, int]:
        """Pending deliveries per sink."""
        async with self._connection() as db:
            cursor = await db.execute(
                "SELECT sink, count(*) FROM outbox WHERE tenant = %b GROUP BY sink", [self._tenant]
            )
            return {sink: count for sink, count in await cursor.fetchall()}

    async def drop_sinks_except(self, sinks: Iterable[str]) -> dict[str, int]:
        """Delete the tenant's deliveries for sinks no longer configured; how many, per sink."""
        keep = [self._tenant, sorted(set(sinks))]
        where = "WHERE tenant = %b AND sink <> ALL(%b::text[])"
        dropped, _, _ = await self._write(
            [
                (
                    (
                        f"WITH gone AS (DELETE FROM outbox {where} RETURNING sink) "  # noqa: S608 - a constant
                        "SELECT sink, count(*) FROM gone GROUP BY sink"
                    ),
                    keep,
                ),
                (f"DELETE FROM escalations {where}", keep),  # noqa: S608 - a constant
                (f"DELETE FROM posts {where}", keep),  # noqa: S608 - a constant
            ],
        )
        return {sink: count for sink, count in dropped}

    async def drop_tenants_except(self, names: Iterable[str]) -> dict[str, int]:
        """Delete every row of the tenants not named, whichever view is asked; how many
        rows, per tenant dropped.  One transaction, one round trip."""
        keep = [sorted(set(names))]
        async with self._connection() as db:
            counted = await _one_round_trip(
                db,
                [
                    (
                        (
                            f"WITH gone AS (DELETE FROM {table} "  # noqa: S608 - constants
                            "WHERE tenant <> ALL(%b::text[]) RETURNING tenant) "
                            "SELECT tenant, count(*) FROM gone GROUP BY tenant"
                        ),
                        keep,
                    )
                    for table in TENANT_TABLES
                ],
            )
        gone: dict[str, int] = {}
        for rows in counted:
            for tenant, count in rows:
                gone[tenant] = gone.get(tenant, 0) + count
        return gone

    async def known_events(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids were recorded already (queued or delivered)."""
        if not event_ids:
            return set()
        async with self._connection() as db:
            cursor = await db.execute(
                "SELECT event_id FROM history WHERE tenant = %b AND event_id = ANY(%b::text[])",
                [self._tenant, list(event_ids)],
            )
            return {event_id for (event_id,) in await cursor.fetchall()}

    async def recent_events(self, task_id: int | None) -> list[Event]:
        """A task's last recorded events, oldest first (``None``: monitor events)."""
        async with self._connection() as db:
            if task_id is None:
                cursor = await db.execute(
                    "SELECT event FROM history WHERE tenant = %b AND task_id IS NULL ORDER BY seq",
                    [self._tenant],
                )
            else:
                cursor = await db.execute(
                    "SELECT event FROM history WHERE tenant = %b AND task_id = %b ORDER BY seq",
                    [self._tenant, task_id],
                )
            return [event_from_json(text) for (text,) in await cursor.fetchall()]

    # --- digests: one worker reads a sink's queue and claims rows by seq
    #
    # The protocol gives these calls no time: a claim's lease runs on the wall clock, as the
    # dispatcher's does (its ``now`` is the wall clock's outside tests).

    async def queued(self, sink: str) -> list[Queued]:
        """The sink's deliveries nobody holds a live claim on, oldest first, without events."""
        async with self._connection() as db:
            cursor = await db.execute(
                _QUEUED,
                {"tenant": self._tenant, "sink": sink, "me": self.claimer, "now": time.time()},
            )
            return [Queued(*row) for row in await cursor.fetchall()]

    async def claim_seqs(self, sink: str, seqs: Sequence[int]) -> list[Delivery]:
        """Claim these deliveries (an attempt each), in the order given; held or gone ones
        are left out, unreadable ones logged and deleted."""
        if not seqs:
            return []
        now = time.time()
        params = {
            "tenant": self._tenant,
            "sink": sink,
            "seqs": list(seqs),
            "me": self.claimer,
            "now": now,
            "until": now + self._claim_ttl,
        }
        (rows,) = await self._write([(_CLAIM_SEQS, params)])
        order = {seq: index for index, seq in enumerate(seqs)}
        deliveries, unreadable = _deliveries(sink, sorted(rows, key=lambda row: order[row[0]]))
        if unreadable:
            await self.finish(unreadable)
        return deliveries

    # --- watches added at run time

    async def watches(self) -> list[int]:
        """Task ids watched through the HTTP API."""
        async with self._connection() as db:
            cursor = await db.execute(
                "SELECT task_id FROM watches WHERE tenant = %b ORDER BY task_id", [self._tenant]
            )
            return [task_id for (task_id,) in await cursor.fetchall()]

    async def add_watch(self, task_id: int) -> None:
        """Persist a watch added at run time."""
        await self._write(
            [
                (
                    _ADD_WATCH,
                    [self._tenant, task_id, time.time()],
                )
            ]
        )

    async def remove_watch(self, task_id: int) -> None:
        """Forget a watch added at run time."""
        await self._write(
            [("DELETE FROM watches WHERE tenant = %b AND task_id = %b", [self._tenant, task_id])]
        )

    # --- acknowledgements

    async def told(self) -> list[Told]:
        """What escalation sinks were told of, one per sink and task."""
        async with self._connection() as db:
            cursor = await db.execute(
                "SELECT sink, task_id, condition, due FROM escalations WHERE tenant = %b "
                "ORDER BY sink, task_id",
                [self._tenant],
            )
            return [Told(*row) for row in await cursor.fetchall()]

    async def record_post(self, sink: str, at: float, *, keep_after: float) -> None:
        """A capped sink posted at ``at``; its posts up to ``keep_after`` are dropped."""
        await self._write(
            [
                (
                    "INSERT INTO posts (tenant, sink, at) VALUES (%b, %b, %b)",
                    [self._tenant, sink, at],
                ),
                (
                    "DELETE FROM posts WHERE tenant = %b AND sink = %b AND at <= %b",
                    [self._tenant, sink, keep_after],
                ),
            ],
        )

    async def posts(self, sink: str, since: float) -> list[float]:
        """When a capped sink posted after ``since``, oldest first."""
        async with self._connection() as db:
            cursor = await db.execute(
                "SELECT at FROM posts WHERE tenant = %b AND sink = %b AND at > %b ORDER BY at",
                [self._tenant, sink, since],
            )
            return [at for (at,) in await cursor.fetchall()]

    async def acks(self) -> list[Ack]:
        """Every stored acknowledgement (lapsed ones too: the caller judges)."""
        async with self._connection() as db:
            cursor = await db.execute(
                "SELECT task_id, condition, taken_by, comment, taken_at FROM acks "
                "WHERE tenant = %b ORDER BY task_id",
                [self._tenant],
            )
            rows = await cursor.fetchall()
        return [
            Ack(task_id, condition, by, comment, datetime.fromisoformat(at))
            for task_id, condition, by, comment, at in rows
        ]

    async def put_ack(self, ack: Ack) -> None:
        """Store a task's acknowledgement, replacing the one it had."""
        await self._write([(_PUT_ACKS, [self._tenant, *([value] for value in _ack_row(ack))])])

    async def drop_acks(self, task_ids: Iterable[int]) -> None:
        """Delete these tasks' acknowledgements (taken back, or lapsed)."""
        ids = list(task_ids)
        if ids:
            await self._write([(_DROP_ACKS, [self._tenant, ids])])

    # --- silences

    async def silences(self) -> list[Silence]:
        """Every stored silence, ended ones not yet swept included, by end time."""
        async with self._connection() as db:
            cursor = await db.execute(
                "SELECT silence FROM silences WHERE tenant = %b ORDER BY ends, id", [self._tenant]
            )
            rows = await cursor.fetchall()
        return [Silence.from_dict(json.loads(text)) for (text,) in rows]

    async def add_silence(self, silence: Silence) -> None:
        """Persist a new silence."""
        row = [self._tenant, silence.id, silence.ends.timestamp(), json.dumps(silence.to_dict())]
        await self._write(
            [("INSERT INTO silences (tenant, id, ends, silence) VALUES (%b, %b, %b, %b)", row)]
        )

    async def remove_silences(self, silence_ids: Sequence[str]) -> set[str]:
        """Delete silences (ended or swept); which of them were stored."""
        if not silence_ids:
            return set()
        (rows,) = await self._write(
            [
                (
                    "DELETE FROM silences WHERE tenant = %b AND id = ANY(%b::text[]) RETURNING id",
                    [self._tenant, list(silence_ids)],
                )
            ]
        )
        return {silence_id for (silence_id,) in rows}

    # --- maintenance

    async def hold(self) -> Hold:
        """The maintenance under way and the conditions it held back, as last stored."""
        async with self._connection() as db:
            cursor = await db.execute(
                "SELECT hold FROM maintenance WHERE tenant = %b", [self._tenant]
            )
            row = await cursor.fetchone()
        return hold_from_json(row[0]) if row is not None else Hold()

    async def put_hold(self, hold: Hold) -> None:
        """Store the maintenance's state; an empty one (nothing under way) is deleted."""
        if hold == Hold():
            await self._write([("DELETE FROM maintenance WHERE tenant = %b", [self._tenant])])
        else:
            await self._write(
                [
                    (
                        _PUT_HOLD,
                        [self._tenant, hold_to_json(hold)],
                    )
                ]
            )


async def _one_round_trip(
    db: psycopg.AsyncConnection[Any], statements: Sequence[tuple[str, Any]]
) -> list[list[tuple[Any, ...]]]:
    """Run ``statements`` in one transaction, all sent at once; the rows of each.

    BEGIN and COMMIT go as statements of the pipeline: psycopg's ``transaction()``
    waits for the server when it opens and closes one, which took four round trips
    instead of one (``bench/pg_drivers.py --latency-ms``).  A statement that fails
    makes the server skip the rest, COMMIT included; the transaction is rolled back.
    """
    cursors = []
    try:
        async with db.pipeline():
            await db.execute("BEGIN")
            cursors = [await db.execute(sql, params) for sql, params in statements]
            await db.execute("COMMIT")
    except psycopg.Error:
        if db.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            await db.execute("ROLLBACK")
        raise
    return [await c.fetchall() if c.description is not None else [] for c in cursors]


async def _migrate(connection: psycopg.AsyncConnection[Any], name: str) -> list[int]:
    """Apply the migrations this database lacks, in one transaction; their numbers.

    A database a newer batchmon migrated is refused, not used as it is.
    """
    applied: list[int] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%b)", [MIGRATION_LOCK])
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await connection.execute("SELECT max(version) FROM schema_version")
        (current,) = await cursor.fetchone() or (None,)
        current = current or 0
        if current > SCHEMA_VERSION:
            msg = (
                f"the state database {name} has schema version {current}, "
                f"this batchmon knows version {SCHEMA_VERSION}"
            )
            raise StoreError(msg)
        for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
            await connection.execute(migration.encode())
            await connection.execute("INSERT INTO schema_version (version) VALUES (%b)", [version])
            applied.append(version)
    return applied


def _coalesced_in_batch(deliveries: Sequence[tuple[str, Event]]) -> list[tuple[str, Event]]:
    """The deliveries, less those a later one of the same batch replaces (latest wins)."""
    last: dict[tuple[str, int, str], int] = {}
    for index, (sink, event) in enumerate(deliveries):
        if event.type.value in COALESCED and event.task_id is not None:
            last[(sink, event.task_id, event.type.value)] = index
    return [
        (sink, event)
        for index, (sink, event) in enumerate(deliveries)
        if event.type.value not in COALESCED
        or event.task_id is None
        or last[(sink, event.task_id, event.type.value)] == index
    ]


def _ack_row(ack: Ack) -> tuple[int, str, str, str | None, str]:
    """An acknowledgement's columns (``taken_at`` as ISO text, as SQLite keeps it)."""
    return (ack.task_id, ack.condition, ack.by, ack.comment, ack.at.isoformat())


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as columns, one array parameter each (for ``unnest``)."""
    return [[row[i] for row in rows] for i in range(width)]


def _deliveries(sink: str, rows: Iterable[tuple[Any, ...]]) -> tuple[list[Delivery], list[int]]:
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
