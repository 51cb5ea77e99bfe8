"""A state database that cannot be used as it is: found without writing, moved aside.

Nothing is written before the file is known to be healthy and batchmon's own:
it is examined read-only, and a damaged file or another program's database is
moved aside as it is, its write-ahead log and shared memory along, so that
someone can look at it later.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from itertools import chain, count
from pathlib import Path
from urllib.parse import quote

from monitor.delivery.outbox import StoreError
from monitor.delivery.schema import SCHEMA_VERSION, layout, schema_layout

__all__ = ["SIDECARS", "examine", "move_aside"]

#: The files SQLite keeps beside a database; they belong to it and move with it.
SIDECARS = ("-wal", "-shm", "-journal")

#: SQLite's primary result codes that mean the bytes are not a (sound) database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def _damaged(exc: sqlite3.Error) -> bool:
    return exc.sqlite_errorcode & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def examine(path: Path) -> str | None:
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


def _not_ours(connection: sqlite3.Connection) -> str | None:
    """Why a database is not batchmon's state (None: it is, or it has nothing in it yet).

    Every object must be one batchmon creates, shaped as one version of batchmon creates
    it (a start cut short leaves only some of them, and no schema version yet).
    """
    found = layout(connection)
    foreign = min(
        (
            sorted(name for name, shape in found.items() if known.get(name) != shape)
            for known in map(schema_layout, range(1, SCHEMA_VERSION + 1))
        ),
        key=len,
    )
    if foreign:
        return f"not batchmon's state database (not batchmon's: {', '.join(foreign)})"
    if "meta" in found:
        row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and not (row[0].isdigit() and int(row[0]) <= SCHEMA_VERSION):
            return f"schema version {row[0]}, this batchmon knows version {SCHEMA_VERSION}"
    return None


def move_aside(path: Path) -> Path:
    """Rename the database and the files beside it to a free ``.corrupt-<stamp>`` name."""
    stamp = f"{path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    names = chain([stamp], (f"{stamp}.{n}" for n in count(2)))
    # Never over an earlier copy (two starts in one second).
    name = next(
        n for n in names if not any(path.with_name(n + s).exists() for s in ("", *SIDECARS))
    )
    aside = path.with_name(name)
    try:
        # The log first: a log left beside a new database would be replayed into it.
        for suffix in SIDECARS:
            sidecar = path.with_name(path.name + suffix)
            if sidecar.exists():
                sidecar.rename(aside.with_name(aside.name + suffix))
        path.rename(aside)
    except OSError as exc:
        msg = f"cannot move the broken state database {path} aside: {exc.strerror}"
        raise StoreError(msg) from None
    return aside
