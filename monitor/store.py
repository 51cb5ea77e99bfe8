"""Durable state in SQLite: what batchmon knew about each task, and the outbox.

Why it exists: a restart must neither re-announce what was announced nor miss
what happened while batchmon was down, and a chat outage must not lose a
notification.  So the tracker's memory of a task and the deliveries its new
events cause are written in *one* transaction, before any sink sees them; a
delivery leaves the outbox only when it was delivered or given up.

Event ids are derived from what happened, so if batchmon dies between
detecting and committing, the next start detects the same transition again
with the same id: at-least-once, never silently lost.

SQLite runs in a worker thread (one at a time, through a capacity limiter of
one), so no query blocks the event loop.  The database is in WAL mode.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from itertools import chain, count
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread
import structlog

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import TaskMemory

__all__ = ["Committed", "OutboxRow", "Store", "StoreError"]

log = structlog.get_logger("batchmon.store")

SCHEMA_VERSION = 1
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    memory TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS watches (id INTEGER PRIMARY KEY, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    event_id TEXT NOT NULL,
    task_id INTEGER,
    type TEXT NOT NULL,
    event TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_error TEXT,
    UNIQUE (sink, event_id)
);
CREATE INDEX IF NOT EXISTS outbox_by_sink ON outbox (sink, seq);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    task_id INTEGER,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_task ON history (task_id, seq);
"""

#: Events kept per task for the HTTP API (older ones are pruned).
HISTORY_PER_TASK = 20


class StoreError(Exception):
    """The state database cannot be used (unwritable directory, disk full)."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One pending delivery of one event to one sink."""

    seq: int
    sink: str
    event: Event
    attempts: int
    #: Wall-clock epoch seconds before which it must not be tried again.
    next_attempt: float
    #: Epoch seconds when it entered the outbox.
    created: float


@dataclass(frozen=True, slots=True)
class Committed:
    """What :meth:`Store.commit` did to the outbox."""

    #: How the outbox grew per sink (it can shrink when progress is coalesced).
    growth: dict[str, int]
    #: The deliveries queued as claimed, in the order given.
    claimed: list[OutboxRow]


def _read_back(text: str) -> Event:
    """An outbox row's event as the outbox gives it back (lone surrogates replaced)."""
    return Event.from_dict(json.loads(text))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _date(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def memory_to_json(memory: TaskMemory) -> str:
    """Serialise a task's memory (the snapshot in its API spelling)."""
    return json.dumps(
        {
            "info": memory.info.model_dump(mode="json", by_alias=True),
            "first_seen": memory.first_seen.isoformat(),
            "last_change": memory.last_change.isoformat(),
            "last_seen": memory.last_seen.isoformat(),
            "stalled": memory.stalled,
            "announced_progress": memory.announced_progress,
            "announced_description": memory.announced_description,
            "last_progress_event": _iso(memory.last_progress_event),
            "history": [[t.isoformat(), p] for t, p in memory.history],
            "terminal_since": _iso(memory.terminal_since),
            "gone": memory.gone,
            "gone_since": _iso(memory.gone_since),
        }
    )


def memory_from_json(text: str) -> TaskMemory:
    """The inverse of :func:`memory_to_json`."""
    data: dict[str, Any] = json.loads(text)
    return TaskMemory(
        info=BatchTaskInfo.model_validate(data["info"], context={"tz": UTC}),
        first_seen=datetime.fromisoformat(data["first_seen"]),
        last_change=datetime.fromisoformat(data["last_change"]),
        last_seen=datetime.fromisoformat(data["last_seen"]),
        stalled=data["stalled"],
        announced_progress=data["announced_progress"],
        announced_description=data["announced_description"],
        last_progress_event=_date(data["last_progress_event"]),
        history=tuple((datetime.fromisoformat(t), int(p)) for t, p in data["history"]),
        terminal_since=_date(data["terminal_since"]),
        gone=data["gone"],
        gone_since=_date(data.get("gone_since")),
    )


class Store:
    """The state database; every method runs its SQL in a worker thread."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (or create) the database; a corrupt one is moved aside and replaced."""
        connection = await anyio.to_thread.run_sync(_connect, path)
        return cls(connection, path)

    async def close(self) -> None:
        """Close the database (after the last write)."""
        await self._run(self._db.close)

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
            return self._db.execute("SELECT id, memory FROM tasks").fetchall()

        memories: dict[int, TaskMemory] = {}
        for task_id, text in await self._run(load):
            try:
                memories[task_id] = memory_from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("stored_task_unreadable", task_id=task_id, error=str(exc))
        return memories

    async def forget_tasks(self, task_ids: Iterable[int]) -> None:
        """Drop the memory and history of tasks no longer watched."""
        ids = [(task_id,) for task_id in task_ids]

        def forget() -> None:
            with self._db:
                self._db.executemany("DELETE FROM tasks WHERE id = ?", ids)
                self._db.executemany("DELETE FROM history WHERE task_id = ?", ids)

        await self._run(forget)

    async def commit(
        self,
        memories: Sequence[TaskMemory],
        deliveries: Sequence[tuple[str, Event]],
        now: float,
        history: Sequence[Event] = (),
        *,
        claim: Collection[int] = (),
        done: Sequence[int] = (),
    ) -> Committed:
        """Store task memories, queue deliveries and record events, atomically.

        ``history`` are events to record for the HTTP API even if no sink wants
        them (the events of ``deliveries`` are recorded anyway); each task keeps
        its last :data:`HISTORY_PER_TASK`.

        A queued ``task.progress`` replaces the older progress deliveries of
        the same task and sink that are still waiting (latest wins); nothing
        else is ever replaced.

        ``claim`` (indices into ``deliveries``) are queued already marked as
        being tried, as :meth:`next_delivery` would mark them, and come back as
        :class:`OutboxRow` (as read back), so that a sink with nothing queued
        can send them without reading them from the database first.  ``done``
        are finished deliveries to delete in the same transaction.
        """
        rows = [(m.info.id, memory_to_json(m)) for m in memories]
        texts = {e.id: json.dumps(e.to_dict()) for _, e in deliveries}
        queued = [
            (sink, e.id, e.task_id, e.type.value, texts[e.id], now, int(index in claim))
            for index, (sink, e) in enumerate(deliveries)
        ]
        events = {e.id: e for _, e in deliveries}
        events.update((e.id, e) for e in history)
        recorded = [
            (e.id, e.task_id, texts.get(e.id) or json.dumps(e.to_dict())) for e in events.values()
        ]

        def write() -> tuple[dict[str, int], dict[int, int]]:
            growth: dict[str, int] = {}
            claimed: dict[int, int] = {}  # index in deliveries -> seq
            with self._db:
                self._delete_deliveries(done)
                self._db.executemany(
                    "INSERT INTO tasks (id, memory) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET memory = excluded.memory",
                    rows,
                )
                for index, row in enumerate(queued):
                    sink, _, task_id, kind = row[:4]
                    if kind == EventType.TASK_PROGRESS.value and task_id is not None:
                        # attempts = 0: never replace one that is being tried right now.
                        dropped = self._db.execute(
                            "DELETE FROM outbox WHERE sink = ? AND task_id = ? AND type = ? "
                            "AND attempts = 0",
                            (sink, task_id, kind),
                        ).rowcount
                        growth[sink] = growth.get(sink, 0) - dropped
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO outbox "
                        "(sink, event_id, task_id, type, event, created, attempts) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    growth[sink] = growth.get(sink, 0) + cursor.rowcount
                    if row[6] and cursor.rowcount and cursor.lastrowid is not None:
                        claimed[index] = cursor.lastrowid
                self._db.executemany(
                    "INSERT OR IGNORE INTO history (event_id, task_id, event) VALUES (?, ?, ?)",
                    recorded,
                )
                for task_id in {task_id for _, task_id, _ in recorded}:
                    self._db.execute(
                        "DELETE FROM history WHERE task_id IS ? AND seq NOT IN "
                        "(SELECT seq FROM history WHERE task_id IS ? ORDER BY seq DESC LIMIT ?)",
                        (task_id, task_id, HISTORY_PER_TASK),
                    )
            return growth, claimed

        growth, claimed = await self._run(write)
        read_back = []
        for index, seq in claimed.items():
            sink, event = deliveries[index]
            read_back.append(OutboxRow(seq, sink, _read_back(texts[event.id]), 0, 0.0, now))
        return Committed(growth, read_back)

    # --- outbox

    async def next_delivery(
        self,
        sink: str,
        *,
        lane: tuple[int, int] = (0, 1),
        done: Sequence[int] = (),
        claim_until: float | None = None,
        on_drop: Callable[[str], object] | None = None,
        from_seq: int = 0,
    ) -> OutboxRow | None:
        """The oldest pending delivery of a sink (deliveries go out in order).

        ``lane`` (index, count) narrows it to the tasks whose id modulo ``count``
        is ``index`` (events without a task count as id 0), so that several lanes
        can deliver at once while each task's events stay in order.  One transaction, so
        that a delivery costs one store round trip: first ``done`` (deliveries finished,
        delivered or given up) are deleted; then a
        head due by ``claim_until`` (epoch seconds) is marked as being tried (its
        attempts counted, so coalescing leaves it alone).  The row returned
        carries the attempts before this one.  A row that cannot be read is
        logged and deleted on the way, and ``on_drop`` called with its sink, so
        that whoever counts the queue can count it out.  Rows before ``from_seq``
        are skipped: the caller finished them and their deletion is on its way.
        """

        def step(finished: Sequence[int]) -> tuple[Any, ...] | None:
            with self._db:
                self._delete_deliveries(finished)
                row: tuple[Any, ...] | None = self._db.execute(
                    "SELECT seq, sink, event, attempts, next_attempt, created FROM outbox "
                    "WHERE sink = ? AND seq >= ? AND abs(coalesce(task_id, 0)) % ? = ? "
                    "ORDER BY seq LIMIT 1",
                    (sink, from_seq, count, index),
                ).fetchone()
                if row is not None and claim_until is not None and row[4] <= claim_until:
                    self._db.execute(
                        "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (row[0],)
                    )
            return row

        index, count = lane
        finished = done
        while (row := await self._run(partial(step, finished))) is not None:
            seq, name, text, attempts, next_attempt, created = row
            try:
                event = _read_back(text)
            except (ValueError, KeyError, TypeError) as exc:
                # Written by another version, or damaged: it can never be sent, and keeping
                # it at the head of the queue would stop this sink for good.
                log.error("outbox_row_unreadable", seq=seq, sink=name, error=str(exc))
                finished = (seq,)
                if on_drop is not None:
                    on_drop(name)
                continue
            return OutboxRow(seq, name, event, attempts, next_attempt, created)
        return None

    async def retry_later(self, seq: int, next_attempt: float, error: str) -> None:
        """Keep a delivery for another try at ``next_attempt`` (epoch seconds)."""

        def later() -> None:
            with self._db:
                self._db.execute(
                    "UPDATE outbox SET next_attempt = ?, last_error = ? WHERE seq = ?",
                    (next_attempt, error, seq),
                )

        await self._run(later)

    def _delete_deliveries(self, seqs: Iterable[int]) -> None:
        """Delete outbox rows by seq (in the worker thread, inside the caller's transaction)."""
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])

    async def remove(self, *seqs: int) -> None:
        """Deliveries are done: delivered or given up."""

        def delete() -> None:
            with self._db:
                self._delete_deliveries(seqs)

        await self._run(delete)

    async def release(self, seqs: Sequence[int]) -> None:
        """Claimed deliveries were not tried after all: take back the attempt counted."""

        def release() -> None:
            with self._db:
                self._db.executemany(
                    "UPDATE outbox SET attempts = attempts - 1 WHERE seq = ? AND attempts > 0",
                    [(s,) for s in seqs],
                )

        await self._run(release)

    async def outbox_counts(self) -> dict[str, int]:
        """Pending deliveries per sink."""

        def count() -> list[tuple[str, int]]:
            return self._db.execute("SELECT sink, COUNT(*) FROM outbox GROUP BY sink").fetchall()

        return dict(await self._run(count))

    async def drop_sinks_except(self, sinks: Iterable[str]) -> dict[str, int]:
        """Delete deliveries for sinks no longer configured; how many, per sink."""
        keep = sorted(set(sinks))

        def drop() -> dict[str, int]:
            marks = ",".join("?" * len(keep))
            with self._db:
                gone = dict(
                    self._db.execute(
                        f"SELECT sink, COUNT(*) FROM outbox WHERE sink NOT IN ({marks}) "  # noqa: S608 - only placeholders
                        "GROUP BY sink",
                        keep,
                    ).fetchall()
                )
                self._db.execute(f"DELETE FROM outbox WHERE sink NOT IN ({marks})", keep)  # noqa: S608
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
                    f"SELECT event_id FROM history WHERE event_id IN ({marks})",  # noqa: S608 - only placeholders
                    chunk,
                ).fetchall()
                found.update(event_id for (event_id,) in rows)
            return found

        return await self._run(known) if ids else set()

    async def recent_events(self, task_id: int | None) -> list[Event]:
        """A task's last recorded events, oldest first (``None``: monitor events)."""

        def load() -> list[tuple[str]]:
            return self._db.execute(
                "SELECT event FROM history WHERE task_id IS ? ORDER BY seq", (task_id,)
            ).fetchall()

        return [Event.from_dict(json.loads(text)) for (text,) in await self._run(load)]

    # --- watches added at run time

    async def watches(self) -> list[int]:
        """Task ids watched through the HTTP API."""

        def load() -> list[tuple[int]]:
            return self._db.execute("SELECT id FROM watches ORDER BY id").fetchall()

        return [task_id for (task_id,) in await self._run(load)]

    async def add_watch(self, task_id: int) -> None:
        """Persist a watch added at run time."""

        def add() -> None:
            with self._db:
                self._db.execute(
                    "INSERT OR IGNORE INTO watches (id, added) VALUES (?, ?)",
                    (task_id, time.time()),
                )

        await self._run(add)

    async def remove_watch(self, task_id: int) -> None:
        """Forget a watch added at run time."""

        def remove() -> None:
            with self._db:
                self._db.execute("DELETE FROM watches WHERE id = ?", (task_id,))

        await self._run(remove)


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database, moving a broken one aside; refuse an unwritable place clearly.

    Nothing is written before the file is known to be healthy and batchmon's own:
    it is first examined read-only, and a damaged file or another program's
    database is moved aside as it is, its write-ahead log and shared memory along.
    A symbolic link is refused, whatever it points to: batchmon would write its
    state wherever the link leads.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the state directory {path.parent}: {exc.strerror}"
        raise StoreError(msg) from None
    _refuse_links(path)
    problem = _examine(path)
    if problem is not None:
        aside = _move_aside(path)
        log.error(
            "state_database_corrupt",
            path=str(path),
            moved_to=str(aside),
            error=problem,
            consequence="starting with empty state: tasks are rediscovered, "
            "undelivered events in the old database are not sent",
        )
    try:
        return _prepare(path)
    except sqlite3.DatabaseError as exc:
        msg = f"cannot write the state database {path}: {exc}"
        raise StoreError(msg) from None
    except OSError as exc:
        msg = f"cannot write the state database {path}: {exc.strerror}"
        raise StoreError(msg) from None


def _refuse_links(path: Path) -> None:
    """:class:`StoreError` if the database or a file SQLite keeps beside it is a symlink.

    The directory may be one (systemd's ``DynamicUser=`` links ``/var/lib/batchmon``
    to ``/var/lib/private/batchmon``); the files in it may not.
    """
    for name in (path.name, *(path.name + suffix for suffix in _SIDECARS)):
        if path.with_name(name).is_symlink():
            msg = (
                f"the state database {path.with_name(name)} is a symbolic link; "
                "refusing to write through it (set state.path to the real file)"
            )
            raise StoreError(msg)


def _make_private(path: Path) -> None:
    """Create the database file 0600, or take group and other access from an existing one.

    SQLite gives its write-ahead log and shared memory the database file's mode,
    so they are private too, whatever the umask.  ``O_NOFOLLOW``: a link put in
    place since :func:`_refuse_links` looked is not followed either.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)
    for suffix in _SIDECARS:
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists() and stat.S_IMODE(sidecar.stat().st_mode) & 0o077:
            sidecar.chmod(stat.S_IMODE(sidecar.stat().st_mode) & 0o700)


#: The files SQLite keeps beside a database; they belong to it and move with it.
_SIDECARS = ("-wal", "-shm", "-journal")

#: SQLite's primary result codes that mean the bytes are not a (sound) database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def _damaged(exc: sqlite3.Error) -> bool:
    return exc.sqlite_errorcode & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _examine(path: Path) -> str | None:
    """Why the file at ``path`` must be moved aside, found without writing to it.

    ``None``: it is batchmon's and sound, or empty or missing (a fresh start).
    With a write-ahead log, the database is judged as SQLite presents it, read
    through the log (``mode=ro``: the database and its log are not written, the
    -shm index may be rebuilt); the main file alone can be half checkpointed.
    Otherwise the main file alone is judged (``immutable``: no lock, no recovery).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        msg = f"cannot read the state database {path}: {exc.strerror}"
        raise StoreError(msg) from None
    if not path.is_file():
        msg = f"cannot write the state database {path}: not a regular file"
        raise StoreError(msg)
    wal = path.with_name(path.name + "-wal")
    if size == 0:
        # SQLite deletes the log of an empty database on open; batchmon never leaves
        # one (it writes the header first), so a log beside an empty file is kept.
        if wal.is_file() and wal.stat().st_size > 0:
            return "an empty database file with a write-ahead log beside it"
        return None
    uri = f"file:{quote(str(path.absolute()))}"
    if _is_wal(wal):
        try:
            return _check(f"{uri}?mode=ro")
        except sqlite3.Error as exc:
            if _damaged(exc):
                return str(exc)
            # Not readable without a write (no -shm in a read-only directory):
            # judge the main file alone.
    try:
        return _check(f"{uri}?mode=ro&immutable=1")
    except sqlite3.Error as exc:
        if _damaged(exc):
            return str(exc)
        msg = f"cannot read the state database {path}: {exc}"
        raise StoreError(msg) from None


def _is_wal(path: Path) -> bool:
    """Whether ``path`` starts like a write-ahead log (SQLite ignores one that does not)."""
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError:
        return False
    return magic in (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


def _check(uri: str) -> str | None:
    """What is wrong with the database at ``uri``, opened read-only (None: nothing)."""
    connection = sqlite3.connect(uri, uri=True)
    try:
        (verdict,) = connection.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            return f"integrity check failed: {verdict}"
        return _not_ours(connection)
    finally:
        connection.close()


def _layout(connection: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """The objects of a database: tables with their columns, other objects with their table."""
    layout: dict[str, tuple[str, ...]] = {}
    objects = connection.execute(
        "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'"
    ).fetchall()
    for kind, name, table in objects:
        if kind == "table":
            columns = connection.execute(
                "SELECT name, type FROM pragma_table_info(?) ORDER BY cid", (name,)
            ).fetchall()
            layout[name] = (kind, *(f"{column} {declared}" for column, declared in columns))
        else:
            layout[name] = (kind, table)
    return layout


@cache
def _schema_layout() -> dict[str, tuple[str, ...]]:
    """The layout :data:`_SCHEMA` creates."""
    connection = sqlite3.connect(":memory:")
    try:
        connection.executescript(_SCHEMA)
        return _layout(connection)
    finally:
        connection.close()


def _not_ours(connection: sqlite3.Connection) -> str | None:
    """Why a database is not batchmon's state (None: it is, or it has nothing in it yet).

    Every object must be one batchmon creates, shaped as batchmon creates it (a start
    cut short leaves only some of them, and no schema version yet).
    """
    layout = _layout(connection)
    foreign = sorted(name for name, shape in layout.items() if _schema_layout().get(name) != shape)
    if foreign:
        return f"not batchmon's state database (not batchmon's: {', '.join(foreign)})"
    if "meta" in layout:
        row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] != str(SCHEMA_VERSION):
            return f"schema version {row[0]}, this batchmon knows version {SCHEMA_VERSION}"
    return None


def _move_aside(path: Path) -> Path:
    """Rename the database and the files beside it to a free ``.corrupt-<stamp>`` name."""
    stamp = f"{path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    names = chain([stamp], (f"{stamp}.{n}" for n in count(2)))
    # Never over an earlier copy (two starts in one second).
    name = next(
        n for n in names if not any(path.with_name(n + s).exists() for s in ("", *_SIDECARS))
    )
    aside = path.with_name(name)
    try:
        # The log first: a log left beside a new database would be replayed into it.
        for suffix in _SIDECARS:
            sidecar = path.with_name(path.name + suffix)
            if sidecar.exists():
                sidecar.rename(aside.with_name(aside.name + suffix))
        path.rename(aside)
    except OSError as exc:
        msg = f"cannot move the broken state database {path} aside: {exc.strerror}"
        raise StoreError(msg) from None
    return aside


def _prepare(path: Path) -> sqlite3.Connection:
    """Open the examined database for writing: private, WAL mode, schema, and a probe write."""
    _make_private(path)
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        # isolation_level=None leaves transactions to "with connection:" blocks below,
        # which need the default mode; set it after the pragmas.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.isolation_level = "DEFERRED"
        with connection:
            connection.executescript(_SCHEMA)
            connection.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        # A probe write: a read-only file or directory must fail now, not at the first event.
        with connection:
            connection.execute(
                "INSERT INTO meta (key, value) VALUES ('opened', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (datetime.now(UTC).isoformat(),),
            )
    except BaseException:
        connection.close()
        raise
    return connection
