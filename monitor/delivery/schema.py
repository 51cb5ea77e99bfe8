"""The SQLite schema of the state database, and its shape for telling batchmon's from others'."""

from __future__ import annotations

import sqlite3
from functools import cache

__all__ = ["SCHEMA", "SCHEMA_VERSION", "layout", "schema_layout"]

#: Stored in ``meta``; a database of another version is not opened as it is.
SCHEMA_VERSION = 1

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
