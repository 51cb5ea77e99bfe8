"""Opening the state database: nothing is written to a file before it is known to be ours.

A damaged file, or another program's database, is moved aside byte for byte with the
files SQLite keeps beside it; a healthy one, even one a ``kill -9`` left with an
unmerged write-ahead log, is reopened with everything in it.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from monitor.delivery.outbox import StoreError
from monitor.delivery.sqlite import SqliteStore
from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.detect import detect
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import Rules, TaskMemory

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SIDECARS = ("-wal", "-shm", "-journal")
OUR_META = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def first_memory(snapshot: BatchTaskInfo) -> TaskMemory:
    """The memory of a task first seen at T0."""
    return detect(None, snapshot, T0, Rules()).memory


def info(task_id: int = 7) -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(
        {"Id": task_id, "Name": "Export", "State": "Started", "ProgressPercent": 30}
    )


def event(name: str) -> Event:
    return Event(id=name, type=EventType.MONITOR_API_DOWN, time=T0, task=None, message=name)


def files(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory``, by name."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def asides(directory: Path) -> list[Path]:
    """The databases moved aside (not the files moved along with them)."""
    return sorted(
        path for path in directory.glob("state.db.corrupt-*") if not path.name.endswith(SIDECARS)
    )


async def open_logged(path: Path) -> tuple[SqliteStore, list[MutableMapping[str, Any]]]:
    """Open a store, with what it logged meanwhile."""
    with capture_logs() as logs:
        store = await SqliteStore.open(path)
    return store, logs


async def assert_usable(store: SqliteStore) -> None:
    """The store opened works: a task memory goes in and comes back."""
    await store.commit([first_memory(info())], [], 0.0)
    assert [7] == list(await store.load_tasks())
    await store.close()


def assert_moved_aside(
    path: Path, logs: list[MutableMapping[str, Any]], before: dict[str, bytes]
) -> Path:
    """One error names both paths; the copy aside has the old bytes, sidecars included."""
    [aside] = asides(path.parent)
    [error] = [line for line in logs if line["event"] == "state_database_corrupt"]
    assert ("error", str(path), str(aside)) == (
        error["log_level"],
        error["path"],
        error["moved_to"],
    )
    assert "starting with empty state" in error["consequence"]
    moved = {
        name.replace(path.name, aside.name, 1): data
        for name, data in before.items()
        if name.startswith(path.name)
    }
    assert moved == {name: data for name, data in files(path.parent).items() if name in moved}
    return aside


def filled(path: Path) -> None:
    """Another program's database, big enough to have pages past the first few."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE filler (x BLOB)")
        db.executemany(
            "INSERT INTO filler VALUES (?)",
            [(random.Random(n).randbytes(500),) for n in range(500)],
        )
    db.close()


def wal_pages(wal: Path) -> set[int]:
    """The page numbers a write-ahead log holds frames for."""
    data = wal.read_bytes()
    page_size = int.from_bytes(data[8:12], "big")
    return {
        int.from_bytes(data[offset : offset + 4], "big")
        for offset in range(32, len(data) - 24 - page_size + 1, 24 + page_size)
    }


def verdict_of_main_file_alone(path: Path) -> str:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return str(verdict)


class TestBrokenFilesAreMovedAsideUntouched:
    """Nothing is written to a file batchmon does not recognise as its own and sound."""

    async def test_damaged_pages_behind_an_intact_header(self, tmp_path: Path) -> None:
        """quick_check runs before WAL mode is set: the header's bytes 18-19 stay as they were.

        The -wal and -shm go along under the same name, never deleted.
        """
        path = tmp_path / "state.db"
        filled(path)
        data = bytearray(path.read_bytes())
        data[8192:16384] = random.Random(3).randbytes(8192)
        path.write_bytes(bytes(data))
        path.with_name("state.db-wal").write_bytes(b"a write-ahead log to keep")
        path.with_name("state.db-shm").write_bytes(b"shared memory to keep")
        before = files(tmp_path)

        store, logs = await open_logged(path)

        aside = assert_moved_aside(path, logs, before)
        assert b"a write-ahead log to keep" == Path(f"{aside}-wal").read_bytes()
        assert b"shared memory to keep" == Path(f"{aside}-shm").read_bytes()
        assert (1, 1) == (before["state.db"][18], before["state.db"][19])
        await assert_usable(store)

    @pytest.mark.parametrize(
        "schema",
        [
            "CREATE TABLE meta (a, b, c)",
            f"{OUR_META}; CREATE TABLE users (name TEXT)",
            f"{OUR_META}; INSERT INTO meta VALUES ('schema_version', '99')",
            "CREATE VIEW tasks AS SELECT 1",
        ],
        ids=["meta of its own", "another table", "a newer batchmon's", "a view"],
    )
    async def test_another_programs_database(self, tmp_path: Path, schema: str) -> None:
        """Not batchmon's: moved aside as it was, without batchmon's tables added to it."""
        path = tmp_path / "state.db"
        with sqlite3.connect(path) as db:
            db.executescript(schema)
        db.close()
        before = files(tmp_path)

        store, logs = await open_logged(path)

        aside = assert_moved_aside(path, logs, before)
        with sqlite3.connect(f"file:{aside}?mode=ro", uri=True) as db:
            names = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        db.close()
        assert "outbox" not in names
        await assert_usable(store)

    async def test_garbage(self, tmp_path: Path) -> None:
        """Not SQLite at all: moved aside, and the error says why."""
        path = tmp_path / "state.db"
        path.write_bytes(random.Random(1).randbytes(8192))
        before = files(tmp_path)

        store, logs = await open_logged(path)

        assert_moved_aside(path, logs, before)
        [error] = logs
        assert "not a database" in error["error"]
        await assert_usable(store)

    async def test_an_empty_file_with_a_log_beside_it(self, tmp_path: Path) -> None:
        """SQLite would delete that log on open; it goes aside with the empty file instead."""
        path = tmp_path / "state.db"
        path.touch()
        path.with_name("state.db-wal").write_bytes(b"a write-ahead log to keep")
        before = files(tmp_path)

        store, logs = await open_logged(path)

        assert_moved_aside(path, logs, before)
        await assert_usable(store)

    async def test_a_second_copy_does_not_replace_the_first(self, tmp_path: Path) -> None:
        """Two broken starts in the same second keep both copies."""
        path = tmp_path / "state.db"
        for n in range(2):
            path.write_bytes(f"broken {n}".encode() * 100)
            store = await SqliteStore.open(path)
            await store.close()
            for suffix in SIDECARS:
                path.with_name(path.name + suffix).unlink(missing_ok=True)

        assert [b"broken 0", b"broken 1"] == sorted(p.read_bytes()[:8] for p in asides(tmp_path))


class TestOwnDatabasesAreKept:
    """A fresh start, and batchmon's own database however it was left, open without a word."""

    async def test_an_empty_file(self, tmp_path: Path) -> None:
        """An empty file is a new database (as SQLite sees it too)."""
        path = tmp_path / "state.db"
        path.touch()

        store, logs = await open_logged(path)

        assert [] == logs
        assert [] == asides(tmp_path)
        await assert_usable(store)

    async def test_reopened_with_its_data(self, tmp_path: Path) -> None:
        """Tasks, the outbox and watches survive a close and an open."""
        path = tmp_path / "state.db"
        store = await SqliteStore.open(path)
        await store.commit([first_memory(info())], [("ops", event("e1"))], 0.0)
        await store.add_watch(9)
        await store.close()

        store, logs = await open_logged(path)

        assert [] == logs
        assert [] == asides(tmp_path)
        assert [7] == list(await store.load_tasks())
        assert {"ops": 1} == await store.pending_counts()
        assert [9] == await store.watches()
        await store.close()

    async def test_left_by_kill_nine_with_its_log(self, tmp_path: Path) -> None:
        """What was only in the write-ahead log (never checkpointed) is there after a restart."""
        live, copy = tmp_path / "live", tmp_path / "copy"
        copy.mkdir()
        store = await SqliteStore.open(live / "state.db")
        await store.commit([first_memory(info())], [("ops", event("e1"))], 0.0)
        for name in files(live):  # what a kill -9 leaves: the files as they are, still open
            shutil.copy(live / name, copy / name)
        await store.close()
        assert (copy / "state.db-wal").stat().st_size > 0

        reopened, logs = await open_logged(copy / "state.db")

        assert [] == logs
        assert [] == asides(copy)
        assert [7] == list(await reopened.load_tasks())
        assert {"ops": 1} == await reopened.pending_counts()
        await reopened.close()

    async def test_main_file_half_checkpointed(self, tmp_path: Path) -> None:
        """A kill mid-checkpoint leaves the main file broken on its own, sound with its log.

        It is judged through the log, as SQLite will read it.
        """
        live, copy = tmp_path / "live", tmp_path / "copy"
        copy.mkdir()
        store = await SqliteStore.open(live / "state.db")
        await store.commit([first_memory(info(n)) for n in range(1, 200)], [], 0.0)
        await store.close()  # checkpointed: every page is in the main file
        store = await SqliteStore.open(live / "state.db")
        await store.commit([first_memory(info(n)) for n in range(1, 200)], [], 1.0)
        for name in files(live):
            shutil.copy(live / name, copy / name)
        await store.close()
        main = copy / "state.db"
        page = max(wal_pages(copy / "state.db-wal") - {1})
        data = bytearray(main.read_bytes())
        data[(page - 1) * 4096 : page * 4096] = random.Random(4).randbytes(4096)
        main.write_bytes(bytes(data))
        assert "ok" != verdict_of_main_file_alone(main)

        reopened, logs = await open_logged(main)

        assert [] == logs
        assert [] == asides(copy)
        assert 199 == len(await reopened.load_tasks())
        await reopened.close()

    async def test_a_first_start_cut_short(self, tmp_path: Path) -> None:
        """Some of batchmon's tables and no schema version yet: batchmon's, completed."""
        path = tmp_path / "state.db"
        with sqlite3.connect(path) as db:
            db.execute(OUR_META)
        db.close()

        store, logs = await open_logged(path)

        assert [] == logs
        assert [] == asides(tmp_path)
        await assert_usable(store)

    async def test_a_directory_in_the_way(self, tmp_path: Path) -> None:
        """A directory where the file should be is unusable state (exit 73), not moved aside."""
        (tmp_path / "state.db").mkdir()

        with pytest.raises(StoreError, match=r"cannot write the state database .*state\.db"):
            await SqliteStore.open(tmp_path / "state.db")
        assert [] == asides(tmp_path)


class TestUnreadableOutboxRow:
    """A queued row that cannot be read is dropped, and whoever counts the queue is told."""

    async def test_dropped_and_counted_out(self, store: SqliteStore) -> None:
        """The next readable row comes back, and the claim counts the one dropped."""
        await store.commit([], [("ops", event("bad")), ("ops", event("good"))], 0.0)
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE outbox SET event = '{not json' WHERE event_id = 'bad'")
        db.close()

        with capture_logs() as logs:
            claim = await store.claim("ops", 0.0)

        assert claim.delivery is not None
        assert ("good", 1) == (claim.delivery.event.id, claim.dropped)
        assert ["outbox_row_unreadable"] == [line["event"] for line in logs]
        assert {"ops": 1} == await store.pending_counts()


@pytest.fixture(name="loose_umask")
def _loose_umask() -> Iterator[None]:
    """The umask of a shell outside systemd (022): new files readable by everyone."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


class TestPrivateFiles:
    """The state database and the files beside it are readable by batchmon's user only."""

    @pytest.mark.usefixtures("loose_umask")
    async def test_created_0600_with_umask_022(self, tmp_path: Path) -> None:
        """A new database, its write-ahead log and shared memory are 0600; its directory 0700."""
        path = tmp_path / "state" / "state.db"
        store = await SqliteStore.open(path)
        await store.commit([first_memory(info())], [], 0.0)

        assert {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600} == {
            p.name: mode(p) for p in path.parent.iterdir()
        }
        assert 0o700 == mode(path.parent)
        await store.close()

    @pytest.mark.usefixtures("loose_umask")
    async def test_existing_files_lose_group_and_other(self, tmp_path: Path) -> None:
        """A database an earlier batchmon left 0644 (log and all) is made 0600 when opened."""
        path = tmp_path / "state.db"
        store = await SqliteStore.open(path)
        await store.commit([first_memory(info())], [], 0.0)
        for file in tmp_path.iterdir():
            file.chmod(0o644)
        shutil.copytree(tmp_path, tmp_path / "copy")  # the files as a kill -9 leaves them
        await store.close()
        copy = tmp_path / "copy" / "state.db"

        store = await SqliteStore.open(copy)

        assert {0o600} == {mode(p) for p in copy.parent.iterdir()}
        await assert_usable(store)


class TestSymlinks:
    """A ``state.path`` that is a symbolic link is refused: nothing is written where it leads."""

    @pytest.mark.parametrize("target", ["database", "empty", "missing"])
    async def test_refused(self, tmp_path: Path, target: str) -> None:
        """Whatever the link points to, opening fails naming the link; the target is untouched."""
        elsewhere = tmp_path / "elsewhere.db"
        if target == "database":
            store = await SqliteStore.open(elsewhere)
            await store.close()
        elif target == "empty":
            elsewhere.touch()
        before = files(tmp_path)
        link = tmp_path / "state.db"
        link.symlink_to(elsewhere)

        with pytest.raises(StoreError, match=r"state\.db is a symbolic link"):
            await SqliteStore.open(link)
        assert {"state.db", *before} == {p.name for p in tmp_path.iterdir()}
        assert before == {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.is_symlink()}

    async def test_a_linked_write_ahead_log_is_refused(self, tmp_path: Path) -> None:
        """A link where SQLite keeps its log would send the writes elsewhere too."""
        (tmp_path / "state.db-wal").symlink_to(tmp_path / "elsewhere")

        with pytest.raises(StoreError, match=r"state\.db-wal is a symbolic link"):
            await SqliteStore.open(tmp_path / "state.db")
        assert not (tmp_path / "elsewhere").exists()

    async def test_a_linked_directory_is_fine(self, tmp_path: Path) -> None:
        """The directory may be a link (systemd's DynamicUser= makes /var/lib/NAME one)."""
        (tmp_path / "private").mkdir()
        (tmp_path / "state").symlink_to(tmp_path / "private")

        store = await SqliteStore.open(tmp_path / "state" / "state.db")

        await assert_usable(store)
        assert (tmp_path / "private" / "state.db").is_file()
