"""The SQLite schema of the state database, and its shape for telling batchmon's from others'."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from functools import cache

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TENANTS_VERSION",
    "layout",
    "schema_layout",
    "statements",
]

#: Version 1, as the first release made it.
_VERSION_1: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, memory TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS watches (id INTEGER PRIMARY KEY, added REAL NOT NULL)",
    (
        "CREATE TABLE IF NOT EXISTS outbox ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " sink TEXT NOT NULL,"
        " event_id TEXT NOT NULL,"
        " task_id INTEGER,"
        " type TEXT NOT NULL,"
        " event TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt REAL NOT NULL DEFAULT 0,"
        " created REAL NOT NULL,"
        " last_error TEXT,"
        " UNIQUE (sink, event_id))"
    ),
    "CREATE INDEX IF NOT EXISTS outbox_by_sink ON outbox (sink, seq)",
    (
        "CREATE TABLE IF NOT EXISTS history ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " event_id TEXT NOT NULL UNIQUE,"
        " task_id INTEGER,"
        " event TEXT NOT NULL)"
    ),
    "CREATE INDEX IF NOT EXISTS history_by_task ON history (task_id, seq)",
)

#: The version that gives every row a tenant (issue 16).
TENANTS_VERSION = 6
#: The column that scopes a row to its tenant; every key leads with it, so that one
#: tenant's queries stay index scans.  Rows from before it belong to ``default``.
_TENANT = "tenant TEXT NOT NULL DEFAULT 'default'"


def _rebuilt(table: str, create: str, columns: str, *, where: str = "") -> tuple[str, ...]:
    """Statements that rebuild ``table`` as ``create`` makes it (``{name}``), keeping its rows.

    SQLite cannot change a table's keys in place.  The rows are copied (``columns``; a
    new column takes its default), and an ``AUTOINCREMENT`` counter is carried over, so
    that no number is ever given twice.
    """
    new = f"{table}_{TENANTS_VERSION}"
    return (
        create.format(name=new),
        f"INSERT INTO {new} ({columns}) SELECT {columns} FROM {table} {where}",  # noqa: S608 - constants
        f"DELETE FROM sqlite_sequence WHERE name = '{new}'",  # noqa: S608 - constants
        (
            f"INSERT INTO sqlite_sequence (name, seq) SELECT '{new}', seq "  # noqa: S608 - constants
            f"FROM sqlite_sequence WHERE name = '{table}'"
        ),
        f"DROP TABLE {table}",
        f"ALTER TABLE {new} RENAME TO {table}",
    )


#: What each version adds to the one before, statement by statement: applied in order, in
#: one transaction, to a database of an older version when it is opened.  A new table, index
#: or column is a new version at the end; the versions before stay as they were, so that every
#: older database has a way up.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # Acknowledgements: one per task, for the condition it was given for (issue 14).
    2: (
        (
            "CREATE TABLE IF NOT EXISTS acks ("
            " task_id INTEGER PRIMARY KEY,"
            " condition TEXT NOT NULL,"
            " taken_by TEXT NOT NULL,"
            " comment TEXT,"
            " taken_at TEXT NOT NULL)"
        ),
    ),
    # Silences: one JSON row each, kept until they end (issue 15).
    3: (
        (
            "CREATE TABLE IF NOT EXISTS silences ("
            " id TEXT PRIMARY KEY,"
            " ends REAL NOT NULL,"
            " silence TEXT NOT NULL)"
        ),
    ),
    # What escalation sinks were told of, one row per sink and task (issue 14); when capped
    # sinks posted, kept for an hour: both outlive a restart, neither grows with time.
    4: (
        (
            "CREATE TABLE IF NOT EXISTS escalations ("
            " sink TEXT NOT NULL,"
            " task_id INTEGER NOT NULL,"
            " condition TEXT NOT NULL,"
            " due REAL NOT NULL,"
            " PRIMARY KEY (sink, task_id))"
        ),
        "CREATE TABLE IF NOT EXISTS posts (sink TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS posts_by_sink ON posts (sink, at)",
    ),
    # The maintenance under way and what it held back: one row at most, so that a restart
    # neither says it started twice nor loses what its summary tells.
    5: ("CREATE TABLE IF NOT EXISTS maintenance (id INTEGER PRIMARY KEY, hold TEXT NOT NULL)",),
    # Tenants (issue 16): every row belongs to one and every key leads with it (task ids
    # and event ids are unique within a tenant only); the maintenance hold is one per tenant.
    TENANTS_VERSION: (
        *_rebuilt(
            "tasks",
            f"CREATE TABLE {{name}} ({_TENANT}, id INTEGER NOT NULL, memory TEXT NOT NULL,"
            " PRIMARY KEY (tenant, id))",
            "id, memory",
        ),
        *_rebuilt(
            "watches",
            f"CREATE TABLE {{name}} ({_TENANT}, id INTEGER NOT NULL, added REAL NOT NULL,"
            " PRIMARY KEY (tenant, id))",
            "id, added",
        ),
        *_rebuilt(
            "outbox",
            "CREATE TABLE {name} ("
            f" seq INTEGER PRIMARY KEY AUTOINCREMENT, {_TENANT},"
            " sink TEXT NOT NULL,"
            " event_id TEXT NOT NULL,"
            " task_id INTEGER,"
            " type TEXT NOT NULL,"
            " event TEXT NOT NULL,"
            " attempts INTEGER NOT NULL DEFAULT 0,"
            " next_attempt REAL NOT NULL DEFAULT 0,"
            " created REAL NOT NULL,"
            " last_error TEXT,"
            " UNIQUE (tenant, sink, event_id))",
            "seq, sink, event_id, task_id, type, event, attempts, next_attempt, created,"
            " last_error",
        ),
        "CREATE INDEX outbox_by_sink ON outbox (tenant, sink, seq)",
        *_rebuilt(
            "history",
            "CREATE TABLE {name} ("
            f" seq INTEGER PRIMARY KEY AUTOINCREMENT, {_TENANT},"
            " event_id TEXT NOT NULL,"
            " task_id INTEGER,"
            " event TEXT NOT NULL,"
            " UNIQUE (tenant, event_id))",
            "seq, event_id, task_id, event",
        ),
        "CREATE INDEX history_by_task ON history (tenant, task_id, seq)",
        *_rebuilt(
            "acks",
            f"CREATE TABLE {{name}} ({_TENANT},"
            " task_id INTEGER NOT NULL,"
            " condition TEXT NOT NULL,"
            " taken_by TEXT NOT NULL,"
            " comment TEXT,"
            " taken_at TEXT NOT NULL,"
            " PRIMARY KEY (tenant, task_id))",
            "task_id, condition, taken_by, comment, taken_at",
        ),
        *_rebuilt(
            "silences",
            f"CREATE TABLE {{name}} ({_TENANT},"
            " id TEXT NOT NULL, ends REAL NOT NULL, silence TEXT NOT NULL,"
            " PRIMARY KEY (tenant, id))",
            "id, ends, silence",
        ),
        *_rebuilt(
            "escalations",
            f"CREATE TABLE {{name}} ({_TENANT},"
            " sink TEXT NOT NULL,"
            " task_id INTEGER NOT NULL,"
            " condition TEXT NOT NULL,"
            " due REAL NOT NULL,"
            " PRIMARY KEY (tenant, sink, task_id))",
            "sink, task_id, condition, due",
        ),
        f"ALTER TABLE posts ADD COLUMN {_TENANT}",
        "DROP INDEX posts_by_sink",
        "CREATE INDEX posts_by_sink ON posts (tenant, sink, at)",
        # The single row (id 1) becomes the tenant 'default''s.
        *_rebuilt(
            "maintenance",
            f"CREATE TABLE {{name}} ({_TENANT} PRIMARY KEY, hold TEXT NOT NULL)",
            "hold",
            where="WHERE id = 1",
        ),
    ),
}

#: Stored in ``meta``; an older database is migrated when opened, a newer one is not opened.
SCHEMA_VERSION = max(MIGRATIONS)
if sorted(MIGRATIONS) != list(range(2, SCHEMA_VERSION + 1)):  # one step per version, no gap
    raise RuntimeError(f"MIGRATIONS {sorted(MIGRATIONS)} have a gap before {SCHEMA_VERSION}")


def statements(found: int | None, upto: int = SCHEMA_VERSION) -> Iterator[str]:
    """What brings a database of version ``found`` to version ``upto``, statement by statement.

    ``None``: a new database, or one whose first start was cut short before it had a
    number (an older batchmon created its tables one by one): version 1 is created where
    missing, then every migration runs.  The caller runs them in one transaction.
    """
    if found is None:
        yield from _VERSION_1
    for version in range(max(found or 1, 1) + 1, upto + 1):
        yield from MIGRATIONS[version]


def layout(connection: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """The objects of a database: tables with their columns, other objects with their table."""
    found: dict[str, tuple[str, ...]] = {}
    objects = connection.execute(
        "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'"
    ).fetchall()
    for kind, name, table in objects:
        if kind == "table":
            columns = connection.execute(
                "SELECT name, type FROM pragma_table_info(?) ORDER BY cid", (name,)
            ).fetchall()
            found[name] = (kind, *(f"{column} {declared}" for column, declared in columns))
        else:
            found[name] = (kind, table)
    return found


@cache
def schema_layout(version: int = SCHEMA_VERSION) -> dict[str, tuple[str, ...]]:
    """The layout of a database of ``version``, as batchmon made or migrated it."""
    connection = sqlite3.connect(":memory:")
    try:
        for statement in statements(None, version):
            connection.execute(statement)
        return layout(connection)
    finally:
        connection.close()
