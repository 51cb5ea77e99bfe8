"""The SQLite schema of the state database, and its shape for telling batchmon's from others'."""

from __future__ import annotations

import sqlite3
from functools import cache

__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "layout", "migrate", "schema_layout"]

#: Version 1, as the first release made it.
SCHEMA = """
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

#: Each step takes a database of version N (its index + 1) to N + 1.  A new table, index or
#: column is a new step at the end; :data:`SCHEMA` and the steps before stay as they were, so
#: that every older database has a way up.
MIGRATIONS: tuple[str, ...] = (
    # 2: silences (one JSON row each, kept until they end).
    """
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    ends REAL NOT NULL,
    silence TEXT NOT NULL
);
""",
)

#: Stored in ``meta``; an older database is migrated, a newer one is not opened as it is.
SCHEMA_VERSION = 1 + len(MIGRATIONS)


def migrate(connection: sqlite3.Connection) -> None:
    """Create the schema or bring it up to :data:`SCHEMA_VERSION`, in the caller's transaction."""
    connection.executescript(SCHEMA)
    connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1')")
    (stored,) = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    for step in MIGRATIONS[int(stored) - 1 :]:
        connection.executescript(step)
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
        connection.executescript(SCHEMA + "".join(MIGRATIONS))
        return layout(connection)
    finally:
        connection.close()
