"""SQLite state files as an older batchmon left them, for the migration tests."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from monitor.delivery.schema import _VERSION_1, MIGRATIONS

__all__ = ["older_database", "stored_version"]


def older_database(path: Path, version: int) -> None:
    """A state file at schema ``version``: its tables, its number, and task 212 watched."""
    with closing(sqlite3.connect(path)) as db, db:
        for statement in _VERSION_1:
            db.execute(statement)
        for step in range(2, version + 1):
            for statement in MIGRATIONS[step]:
                db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
        db.execute("INSERT INTO watches VALUES (212, 0)")


def stored_version(path: Path) -> str:
    """The schema version a state file says it has."""
    with closing(sqlite3.connect(path)) as db:
        (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return str(version)
