"""The SQLite schema of the state database, and its shape for telling batchmon's from others'."""

from __future__ import annotations

import sqlite3
from functools import cache

__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "layout", "migrate", "schema_layout"]

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
}

#: Stored in ``meta``; an older database is migrated when opened, a newer one is not opened.
SCHEMA_VERSION = max(MIGRATIONS)
if sorted(MIGRATIONS) != list(range(2, SCHEMA_VERSION + 1)):  # one step per version, no gap
    raise RuntimeError(f"MIGRATIONS {sorted(MIGRATIONS)} have a gap before {SCHEMA_VERSION}")

#: Version 1, as the first release made it.
_VERSION_1 = """
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

#: The whole schema of a new database.
SCHEMA = _VERSION_1 + "".join(
    f"{statement};\n" for version in sorted(MIGRATIONS) for statement in MIGRATIONS[version]
)


def migrate(connection: sqlite3.Connection, found: int) -> None:
    """Bring a database of version ``found`` to :data:`SCHEMA_VERSION` (inside the caller's
    transaction)."""
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[version]:
            connection.execute(statement)
    connection.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
    )


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
def schema_layout() -> dict[str, tuple[str, ...]]:
    """The layout :data:`SCHEMA` creates."""
    connection = sqlite3.connect(":memory:")
    try:
        connection.executescript(SCHEMA)
        return layout(connection)
    finally:
        connection.close()
