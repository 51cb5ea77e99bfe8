"""Leases kept in PostgreSQL, by which replicas split the tenants between them.

Each replica runs a :class:`LeaseKeeper`.  Every ``ttl / 3`` seconds one transaction
heartbeats its row in ``replicas``, renews the leases it holds and reads who holds the
others; :func:`decide` (pure) says which leases were lost, which to hand back (above the
fair share ``ceil(names / live replicas)``, or no longer configured) and which free ones to
take.  Every time is the database's (``now()``): the replicas' clocks are never compared.

- **Told first.**  A lease lost or handed back is reported (``on_loss``, awaited: the
  pipeline stops) before it is given up; a lease taken is reported with its epoch
  (``on_gain``), which grows at every grant, so a pipeline's commits name their tenure.
- **Self-fencing.**  A replica that cannot reach the database gives up its leases
  (``on_loss``) once ``ttl - ttl / 5`` passed on its own monotonic clock since the start of
  its last good round, so before the leases run out on the database's clock and anyone else
  may take them.
- **Fenced commits.**  :class:`Fence` gives the statement a commit runs first: it fails the
  transaction unless the lease is still held with that epoch, and holds the row
  (``FOR SHARE``) so that a takeover (and a renewal) waits for the commit to end.
- **Hand-over.**  A cancelled keeper stops its pipelines, releases its leases and deletes
  its row: a rolling restart hands over at once, not after ``ttl``.

The keeper has a connection of its own: its rounds never queue behind the store's pool
(a busy pool must not fence a healthy replica), and it is that connection whose silence
the self-fencing measures.  It imports nothing of the store, which imports :class:`Fence`.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import anyio
import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from monitor.config.service import redacted_url
from monitor.delivery.outbox import StoreError
from monitor.superoffice.redact import Redactor

__all__ = [
    "LEASE_LOST",
    "LEASE_TTL",
    "Decision",
    "Fence",
    "LeaseKeeper",
    "LeaseLostError",
    "LeaseRow",
    "decide",
    "fair_share",
    "fence_at",
    "new_replica_id",
    "preferred",
    "wake_at",
]

log = structlog.get_logger("batchmon.leases")

#: Seconds a lease holds unless renewed (``[state] lease_ttl``).
LEASE_TTL = 15.0
#: The SQLSTATE of ``batchmon_fence()`` refusing a commit (migration 7).
LEASE_LOST = "L0001"
#: The keeper's connection as ``pg_stat_activity`` shows it.
APPLICATION_NAME = "batchmon-leases"
#: Seconds after which a replica not seen, or a lease run out, is deleted.
FORGET_REPLICAS = 86400.0

#: Told a lease was taken, with its epoch: start the pipeline (fenced by that epoch).
OnGain = Callable[[str, int], Coroutine[Any, Any, None]]
#: Told a lease is lost or given up: stop the pipeline, and return once it stopped.
OnLoss = Callable[[str], Coroutine[Any, Any, None]]

#: Replicas not seen, and leases run out (a tenant removed from the configuration, say), for
#: FORGET_REPLICAS go: nothing any replica keeps grows with every replica or tenant there was.
#: A lease forgotten starts again at epoch 1, for a holder new since (a replica's id is new at
#: each start), so no fence of its old holders can match it.
_FORGET = (
    "WITH gone AS (DELETE FROM leases WHERE expires < now() - make_interval(secs => %(after)b)) "
    "DELETE FROM replicas WHERE seen < now() - make_interval(secs => %(after)b)"
)
_HEARTBEAT = (
    "INSERT INTO replicas (id, host, pid, started, seen) VALUES (%b, %b, %b, now(), now()) "
    "ON CONFLICT (id) DO UPDATE SET seen = now()"
)
#: Only (name, epoch) pairs still this replica's are renewed: those not returned are lost.
_RENEW = (
    "UPDATE leases l SET expires = now() + make_interval(secs => %(ttl)b) "
    "FROM unnest(%(names)b::text[], %(epochs)b::bigint[]) AS h(name, epoch) "
    "WHERE l.name = h.name AND l.epoch = h.epoch AND l.holder = %(me)b "
    "RETURNING l.name, l.epoch"
)
_LIVE = "SELECT count(*) FROM replicas WHERE seen > now() - make_interval(secs => %b)"
_ROWS = (
    "SELECT name, holder, epoch, expires > now(), "
    "greatest(extract(epoch FROM expires - now()), 0)::float8 "
    "FROM leases WHERE name = ANY(%b::text[])"
)
#: Free leases (run out, or this replica's own left from before) are taken, each only if
#: its epoch is still the one the round read (0: no row): a take whose answer this keeper
#: never had (its round given up with the COMMIT sent) changes nothing once a later one
#: went through.  The epoch grows at every grant; names in order, so that two takes lock
#: rows in the same order.
_TAKE = (
    "INSERT INTO leases AS l (name, holder, epoch, expires) "
    "SELECT name, %(me)b, seen + 1, now() + make_interval(secs => %(ttl)b) "
    "FROM unnest(%(names)b::text[], %(seen)b::bigint[]) AS t(name, seen) ORDER BY name "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, "
    "expires = excluded.expires WHERE l.epoch + 1 = excluded.epoch "
    "AND (l.expires <= now() OR l.holder = excluded.holder) "
    "RETURNING l.name, l.epoch"
)
#: Given up, each at the epoch held: free at once for anyone.
_RELEASE = (
    "UPDATE leases l SET expires = now() "
    "FROM unnest(%(names)b::text[], %(epochs)b::bigint[]) AS h(name, epoch) "
    "WHERE l.name = h.name AND l.epoch = h.epoch AND l.holder = %(me)b AND l.expires > now()"
)
_RELEASE_ALL = "UPDATE leases SET expires = now() WHERE holder = %b AND expires > now()"
_LEAVE = "DELETE FROM replicas WHERE id = %b"
_HOLDERS = "SELECT name, holder FROM leases WHERE expires > now() ORDER BY name"


class LeaseLostError(StoreError):
    """A commit was refused: its pipeline's lease is no longer held with its epoch."""


@dataclass(frozen=True, slots=True)
class Fence:
    """One tenure of a lease, which a pipeline's commits are checked against."""

    name: str
    holder: str
    epoch: int

    def statement(self) -> tuple[str, list[Any]]:
        """The statement a commit runs first in its transaction (SQL and parameters).

        It fails (SQLSTATE :data:`LEASE_LOST`) unless the lease is still held with this
        epoch, which makes the server skip the rest of the transaction and roll it back;
        the row it reads stays locked (``FOR SHARE``) until the transaction ends.
        """
        return ("SELECT batchmon_fence(%b, %b, %b)", [self.name, self.holder, self.epoch])

    def lost(self, exc: BaseException) -> LeaseLostError | None:
        """The error to raise instead of ``exc`` when ``exc`` is this fence's refusal."""
        if isinstance(exc, psycopg.Error) and exc.sqlstate == LEASE_LOST:
            return LeaseLostError(
                f"lease {self.name} (epoch {self.epoch}) is no longer held by {self.holder}"
            )
        return None


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """A lease as a round read it: who holds it, at which epoch, whether it has not yet
    run out, and in how many seconds it does (on the database's clock)."""

    holder: str
    epoch: int
    live: bool
    left: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What a round does: names lost, handed back and taken, in that order."""

    lost: tuple[str, ...] = ()
    hand_back: tuple[str, ...] = ()
    #: The free leases, the most preferred first, to take until ``room`` are taken (another
    #: replica may take some of them first).
    free: tuple[str, ...] = ()
    room: int = 0


def new_replica_id() -> str:
    """A name for this replica, new at each start, that says where it runs (host, pid)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fair_share(names: int, live: int) -> int:
    """The most leases one of ``live`` replicas holds: ``ceil(names / live)``."""
    return -(-names // max(live, 1))


def preferred(me: str, names: Iterable[str]) -> list[str]:
    """``names`` in the order this replica prefers them (a hash of both: each replica
    its own order, so that replicas starting together rarely reach for the same name)."""
    return sorted(names, key=lambda name: hashlib.sha256(f"{me}\0{name}".encode()).digest())


def decide(
    me: str,
    names: Collection[str],
    held: Mapping[str, int],
    renewed: Mapping[str, int],
    live: int,
    rows: Mapping[str, LeaseRow],
) -> Decision:
    """One round's decision from what it read.

    ``held``: the leases held before the round, name → epoch; ``renewed``: those the round
    renewed; ``live``: replicas seen within ``ttl`` (this one included); ``rows``: the
    leases of ``names`` as read.  A held lease not renewed with its epoch is lost; of the
    others, those not configured and those above the fair share (the least preferred) are
    handed back; free leases (run out, never taken, or this replica's own but not held)
    are taken, the most preferred first, up to the fair share (``room`` more).
    """
    kept = {name for name, epoch in held.items() if renewed.get(name) == epoch}
    lost = tuple(sorted(set(held) - kept))
    share = fair_share(len(names), live)
    configured = [name for name in preferred(me, kept) if name in names]
    hand_back = tuple(sorted(kept - set(names))) + tuple(configured[share:])
    room = share - len(configured[:share])
    free = [
        name
        for name in preferred(me, names)
        if name not in held and (name not in rows or not rows[name].live or rows[name].holder == me)
    ]
    if room == 0:
        return Decision(lost, hand_back)
    return Decision(lost, hand_back, tuple(free), room)


#: Seconds after a lease runs out that a round looks again (the database's clock and the
#: replica's are compared only through a round trip; a round a little early just looks again).
_AFTER_EXPIRY = 0.05


def wake_at(started: float, me: str, rows: Mapping[str, LeaseRow]) -> float:
    """When (monotonic) a round started at ``started`` should look again because another
    replica's lease runs out then: a dead replica's tenants are taken as soon as they are
    free, not up to a round later.  Leases renewed in time never come due before the next
    round."""
    due = [row.left for row in rows.values() if row.live and row.holder != me]
    return started + min(due) + _AFTER_EXPIRY if due else float("inf")


def fence_at(last_good: float | None, held: bool, ttl: float) -> float:
    """When (monotonic) a replica must give up its leases without a good round since the
    one that started at ``last_good``: ``ttl / 5`` before they run out on the database's
    clock, for the time its pipelines take to stop and for the clocks' drift."""
    if not held or last_good is None:
        return float("inf")
    return last_good + ttl - ttl / 5


class LeaseKeeper:
    """This replica's leases on ``names``, kept in the database at ``url``.

    ``replica`` names this replica in the tables; it must be new at each start
    (:func:`new_replica_id`): a keeper takes back the leases its name still holds.
    :meth:`run` keeps the leases until cancelled, then hands them over.
    """

    def __init__(
        self,
        url: str,
        replica: str,
        names: Iterable[str],
        *,
        on_gain: OnGain,
        on_loss: OnLoss,
        ttl: float = LEASE_TTL,
    ) -> None:
        if not ttl > 0:
            msg = f"a lease's ttl must be a positive number of seconds, not {ttl!r}"
            raise ValueError(msg)
        self._url = url
        #: The database as messages name it (no password, no query).
        self.database = redacted_url(url)
        try:
            password = conninfo_to_dict(url).get("password")
        except psycopg.ProgrammingError:
            msg = f"state.url {self.database}: not a PostgreSQL URL libpq can read"
            raise StoreError(msg) from None
        self._redact = Redactor([url, *([str(password)] if password else [])])
        self.replica = replica
        self.names = frozenset(names)
        self.ttl = ttl
        #: Seconds between rounds, and the most a round trip may take.
        self.interval = ttl / 3
        self._on_gain = on_gain
        self._on_loss = on_loss
        self._held: dict[str, int] = {}
        #: The leases held, name → epoch.
        self.held: Mapping[str, int] = MappingProxyType(self._held)
        #: Replicas seen within ``ttl`` at the last good round, this one included.
        self.live_replicas = 0
        self._last_good: float | None = None
        #: When (monotonic) another replica's lease runs out, as the last round read it.
        self._expiry = float("inf")
        self._db: psycopg.AsyncConnection[Any] | None = None
        self._lock = anyio.Lock()
        self._host = socket.gethostname()
        self._pid = os.getpid()

    @property
    def healthy(self) -> bool:
        """Whether a round succeeded within ``ttl`` (for ``/readyz``)."""
        return self._last_good is not None and time.monotonic() - self._last_good < self.ttl

    def configure(self, names: Iterable[str]) -> None:
        """Lease these names from the next round on; leases of others are handed back."""
        self.names = frozenset(names)

    def fence(self, name: str) -> Fence:
        """The fence of a held lease, for its pipeline's commits."""
        return Fence(name, self.replica, self._held[name])

    async def holders(self) -> dict[str, str]:
        """Who holds each lease not run out, name → replica (for the status page)."""
        try:
            with anyio.fail_after(self.interval):
                (rows,) = await self._transaction([(_HOLDERS, [])])
        except (psycopg.Error, OSError, TimeoutError) as exc:
            msg = f"state database {self.database}: {self._error(exc)}"
            raise StoreError(msg) from None
        return dict(rows)

    async def run(self) -> None:
        """Keep the leases, a round every :attr:`interval`, until cancelled; then stop the
        pipelines, release the leases and leave."""
        try:
            while True:
                started = time.monotonic()
                await self._round(started)
                if time.monotonic() >= self._fence_at():
                    log.warning("leases_fenced", database=self.database, names=sorted(self._held))
                    await self._lose(list(self._held), "fenced")
                next_round = min(started + self.interval, self._fence_at(), self._expiry)
                await anyio.sleep(max(0.0, next_round - time.monotonic()))
        finally:
            with anyio.CancelScope(shield=True):
                await self._hand_over()

    def _fence_at(self) -> float:
        return fence_at(self._last_good, bool(self._held), self.ttl)

    async def _round(self, started: float) -> None:
        """Heartbeat, renew and read; tell of what was lost or is handed back; release and
        take.  A round that fails (no answer in time, an error) is logged and changes
        nothing here; what it did in the database the next round reads."""
        try:
            with anyio.fail_after(max(0.0, min(self.interval, self._fence_at() - started))):
                renewed, seen = await self._renew()
            self._last_good = started
            decision = decide(
                self.replica, self.names, self._held, renewed, self.live_replicas, seen
            )
            await self._lose(decision.lost, "lost")
            given = {name: self._held[name] for name in decision.hand_back}
            await self._lose(decision.hand_back, "handed_back")
            statements: list[tuple[str, Any]] = []
            if given:
                release = {"me": self.replica, "names": list(given), "epochs": list(given.values())}
                statements.append((_RELEASE, release))
            await self._take(statements, decision, seen)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.warning("lease_round_failed", database=self.database, error=self._error(exc))

    async def _take(
        self, statements: list[tuple[str, Any]], decision: Decision, seen: Mapping[str, LeaseRow]
    ) -> None:
        """Run ``statements`` (a release) with a first take of free leases; while another
        replica took some of them first, take the next ones, up to the room there is."""
        left, free = decision.room, list(decision.free)
        while statements or (left > 0 and free):
            names, free = sorted(free[:left]), free[left:]
            if names:
                read = [seen[name].epoch if name in seen else 0 for name in names]
                take = {"me": self.replica, "ttl": self.ttl, "names": names, "seen": read}
                statements.append((_TAKE, take))
            with anyio.fail_after(self.interval):
                results = await self._transaction(statements)
            statements = []
            if names:
                gained = dict(results[-1])
                left -= len(gained)
                await self._gain(gained)

    async def _renew(self) -> tuple[dict[str, int], dict[str, LeaseRow]]:
        """One transaction: forget long-gone replicas, heartbeat, renew the leases held and
        count the live replicas; the leases renewed and those of interest as read."""
        renew = {
            "ttl": self.ttl,
            "names": list(self._held),
            "epochs": list(self._held.values()),
            "me": self.replica,
        }
        results = await self._transaction(
            [
                (_FORGET, {"after": FORGET_REPLICAS}),
                (_HEARTBEAT, [self.replica, self._host, self._pid]),
                (_RENEW, renew),
                (_LIVE, [self.ttl]),
                (_ROWS, [sorted(self.names | set(self._held))]),
            ]
        )
        _, _, renewed, ((live,),), rows = results
        self.live_replicas = live
        seen = {
            name: LeaseRow(holder, epoch, alive, left) for name, holder, epoch, alive, left in rows
        }
        self._expiry = wake_at(time.monotonic(), self.replica, seen)
        return dict(renewed), seen

    def _error(self, exc: BaseException) -> str:
        """What went wrong, as a message may say it (no password)."""
        return self._redact(str(exc)).strip() or f"no answer within {self.interval:g} s"

    async def _transaction(self, statements: Sequence[tuple[str, Any]]) -> list[list[Any]]:
        """Run ``statements`` in one transaction on this keeper's connection (opened when
        needed, and closed on any failure: its state is then unknown)."""
        async with self._lock:
            try:
                if self._db is None:
                    self._db = await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, application_name=APPLICATION_NAME
                    )
                    # A statement this keeper gave up on ends in the server too, instead
                    # of holding rows locked (or committing) long after its round.
                    timeout = f"{math.ceil(self.interval * 1000)}ms"
                    await self._db.execute(
                        "SELECT set_config('statement_timeout', %b, false)", [timeout]
                    )
                results: list[list[Any]] = []
                async with self._db.transaction():
                    for sql, params in statements:
                        cursor = await self._db.execute(sql, params)
                        results.append(await cursor.fetchall() if cursor.description else [])
                return results
            except BaseException:
                await self._disconnect()
                raise

    async def _disconnect(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with anyio.CancelScope(shield=True):
                await db.close()

    async def _lose(self, names: Sequence[str], why: str) -> None:
        """Forget ``names`` and tell of each (stopping its pipeline), all at once."""
        if not names:
            return
        for name in names:
            del self._held[name]
        log.info("leases_given_up", names=list(names), reason=why)
        # Shielded: a keeper cancelled meanwhile must not leave a pipeline half stopped.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for name in names:
                    group.start_soon(self._on_loss, name)

    async def _gain(self, taken: Mapping[str, int]) -> None:
        """Hold the leases taken and tell of each (starting its pipeline), all at once."""
        if not taken:
            return
        self._held.update(taken)
        log.info("leases_taken", leases=taken)
        # Shielded: a pipeline is started whole, so that on_loss finds it whole.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for name, epoch in taken.items():
                    group.start_soon(self._on_gain, name, epoch)

    async def _hand_over(self) -> None:
        """Stop every pipeline, then release every lease and leave the replicas."""
        await self._lose(list(self._held), "shutdown")
        try:
            with anyio.fail_after(self.interval):
                await self._transaction([(_RELEASE_ALL, [self.replica]), (_LEAVE, [self.replica])])
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.warning(
                "leases_not_released",
                database=self.database,
                error=self._error(exc),
                held_for=self.ttl,
            )
        finally:
            await self._disconnect()
