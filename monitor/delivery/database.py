"""Opening the SQLite state file: private, never through a link, examined first, WAL mode."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import structlog

from monitor.delivery.outbox import StoreError
from monitor.delivery.recovery import SIDECARS, examine, move_aside
from monitor.delivery.schema import SCHEMA_VERSION, statements

__all__ = ["WAL_LIMIT", "connect", "reclaim"]

log = structlog.get_logger("batchmon.store")

#: What the write-ahead log is cut back to after a checkpoint: a burst (thousands of tasks
#: found at once) grows it, and without a limit it keeps that size for good.
WAL_LIMIT = 4 * 1024 * 1024
#: Free pages are given back once they are more than this share of the file.
_FREE_SHARE = 0.25


def connect(path: Path) -> sqlite3.Connection:
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
    problem = examine(path)
    if problem is not None:
        aside = move_aside(path)
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
    for name in (path.name, *(path.name + suffix for suffix in SIDECARS)):
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
    for suffix in SIDECARS:
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists() and stat.S_IMODE(sidecar.stat().st_mode) & 0o077:
            sidecar.chmod(stat.S_IMODE(sidecar.stat().st_mode) & 0o700)


def _version(connection: sqlite3.Connection) -> int | None:
    """The schema version stored in the database (``None``: a new one)."""
    tables = connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
    if tables is None:
        return None
    row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else int(row[0])


def _prepare(path: Path) -> sqlite3.Connection:
    """Open the examined database for writing: private, WAL mode, schema, and a probe write."""
    _make_private(path)
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        # isolation_level=None leaves transactions to "with connection:" blocks below,
        # which need the default mode; set it after the pragmas and the migration.
        _incremental_vacuum(connection)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        _migrate(connection, path)
        connection.isolation_level = "DEFERRED"
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


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Create or migrate the schema, in one transaction (an explicit one: with the module's
    own, a ``CREATE`` before the first write would run outside it)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        found = _version(connection)
        if found is None or found < SCHEMA_VERSION:
            for statement in statements(found):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    if found is not None and found < SCHEMA_VERSION:
        log.info("state_database_migrated", path=str(path), version=SCHEMA_VERSION)


def _incremental_vacuum(connection: sqlite3.Connection) -> None:
    """Let the file shrink when tasks are forgotten (``reclaim``).

    A new file takes the mode before its first table; a file made before it
    (auto-vacuum off, SQLite's default) is rebuilt once by ``VACUUM``.
    """
    connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
    (mode,) = connection.execute("PRAGMA auto_vacuum").fetchone()
    if mode != 2:
        connection.execute("VACUUM")


def reclaim(connection: sqlite3.Connection) -> int:
    """Give free pages back to the file system when they are many; the number given back.

    Forgetting tasks after a burst frees most of the file; SQLite would keep the
    pages for reuse forever.  ``executescript`` because the pragma frees one page
    per step and only a script steps it to the end.
    """
    (free,) = connection.execute("PRAGMA freelist_count").fetchone()
    (pages,) = connection.execute("PRAGMA page_count").fetchone()
    if free <= pages * _FREE_SHARE:
        return 0
    connection.executescript("PRAGMA incremental_vacuum;")
    return int(free)
