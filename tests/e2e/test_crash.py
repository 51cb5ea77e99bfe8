"""Crashes and restarts: ``kill -9`` mid-run, broken state databases, unwritable state.

The kill test drives 40 tasks through their lives in the simulator while batchmon is killed
ten times at seeded random moments (during start-up, mid-poll, mid-delivery) and started
again on the same state database.  Half of the tasks move on only once their last event
was delivered ("lockstep"), so every one of their transitions must arrive; the others move
on a timer, also while batchmon is down, so only their first sighting and their end can be
expected.  A webhook receiver, slow on purpose so that kills land mid-delivery, records
every ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.conftest import make_task_event
from tests.e2e.conftest import (
    Batchmon,
    Peers,
    Receiver,
    base_config,
    http,
    require_tool,
    wait_until,
)

EX_CANTCREAT = 73
KILLS = 10
SEED = 20261128
HOOK = "/hook"
TYPE_PREFIX = "com.superoffice.batchmon."

#: (state, progress) of each step of a task's life, and the event that step must cause.
STEPS = [
    (BatchTaskState.NEW, 0, "task.discovered"),
    (BatchTaskState.AQUIRED, 0, "task.state_changed"),
    (BatchTaskState.STARTED, 0, "task.started"),
    (BatchTaskState.STARTED, 50, "task.progress"),
]


@dataclass
class Life:
    """One simulated task: when it appears, how it ends, how far it got."""

    task_id: int
    lockstep: bool
    fails: bool
    appear_at: float
    step: int = -1
    next_at: float = 0.0

    @property
    def last_kind(self) -> str:
        return "task.failed" if self.fails else "task.succeeded"

    def done(self) -> bool:
        """A method, not a property: it changes as ``step`` moves within one loop turn."""
        return self.step == len(STEPS)


class Deliveries:
    """The webhook receiver's hits, as (task id, event type) seen so far."""

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._read = 0
        self.seen: set[tuple[int, str]] = set()

    def update(self) -> set[tuple[int, str]]:
        hits = self._receiver.hits
        for hit in hits[self._read :]:
            if hit.status < 300 and hit.path == HOOK:
                event = hit.json()
                task = event["data"]["task"]
                if task is not None:
                    self.seen.add((task["id"], event["type"].removeprefix(TYPE_PREFIX)))
        self._read = len(hits)
        return self.seen


def driver(
    simulator: Simulator, lives: list[Life], deliveries: Deliveries, rng: random.Random
) -> Callable[[], Any]:
    """The coroutine that moves the tasks along (runs on the peers' loop)."""

    def hold() -> float:
        return rng.uniform(0.1, 0.4)

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not all(life.done() for life in lives):
            now = loop.time()
            seen = deliveries.update()
            for life in lives:
                if life.done():
                    continue
                if life.step == -1:
                    if now - start >= life.appear_at:
                        simulator.add_task(id=life.task_id, name=f"Crash test task {life.task_id}")
                        life.step, life.next_at = 0, now + hold()
                    continue
                if now < life.next_at:
                    continue
                if life.lockstep and (life.task_id, STEPS[life.step][2]) not in seen:
                    continue
                if not life.lockstep:
                    life.next_at = now + rng.uniform(0.3, 1.5)
                life.step += 1
                if life.done():
                    state = BatchTaskState.FAILED if life.fails else BatchTaskState.SUCCEEDED
                    simulator.set_task(life.task_id, state=state, progress=100, result="done")
                else:
                    state, progress, _ = STEPS[life.step]
                    fields: dict[str, Any] = {"state": state, "progress": progress}
                    if life.step == 2:
                        fields.update(start_count=1, last_started=datetime.now(UTC))
                    simulator.set_task(life.task_id, **fields)
                if life.lockstep:
                    life.next_at = now + hold()
            await asyncio.sleep(0.05)

    return drive


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of a database nobody has open, read-only (no recovery)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
        db.close()
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return str(verdict)


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(sql).fetchall()
    db.close()
    return rows


class TestKillNine:
    """``kill -9`` at random points of a busy run loses nothing and repeats only in-flight ids."""

    def test_ten_kills(self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path) -> None:
        """Every event arrives, once per id; the database stays consistent across kills."""
        rng = random.Random(SEED)
        simulator = peers.simulator(Simulator())
        receiver = peers.receiver(Receiver(delay=0.05, seed=SEED))
        lives = [
            Life(1000 + n, lockstep=n % 2 == 0, fails=n % 4 == 1, appear_at=rng.uniform(0, 15))
            for n in range(40)
        ]
        state = tmp_path / "state" / "state.db"
        config = base_config(
            simulator.url,
            state,
            watch={"ids": [life.task_id for life in lives]},
            poll={"interval": "0.25s", "idle_interval": "0.25s", "progress_min_interval": 0},
            sinks=[
                {"name": "hook", "type": "webhook", "url": receiver.url(HOOK), "rate": 1000},
                {"name": "log", "type": "log", "events": ["monitor.*"]},
            ],
        )
        batchmon = launch(config, start=False)
        deliveries = Deliveries(receiver)
        peers.background(driver(simulator, lives, deliveries, random.Random(SEED + 1)))
        verdicts = []
        for _ in range(KILLS):
            batchmon.start()
            time.sleep(rng.uniform(0.4, 2.5))
            batchmon.kill()
            verdicts.append(integrity(state) if state.exists() else "no database yet")
        batchmon.start()
        expected = {
            (life.task_id, kind)
            for life in lives
            for kind in ("task.discovered", life.last_kind)
            + (tuple(step[2] for step in STEPS[1:]) if life.lockstep else ())
        }
        wait_until(
            lambda: expected <= peers.call(deliveries.update),
            90,
            "every expected event delivered",
            every=0.5,
        )
        # Deliveries in flight at the end are part of the run: let the outbox empty first.
        wait_until(lambda: not query(state, "SELECT 1 FROM outbox LIMIT 1"), 30, "the outbox empty")
        assert 0 == batchmon.stop()

        hits = [hit for hit in receiver.hits if hit.path == HOOK and hit.status < 300]
        ids_by_transition: dict[tuple[Any, ...], set[str]] = defaultdict(set)
        deliveries_by_id: dict[str, int] = defaultdict(int)
        for hit in hits:
            event = hit.json()
            task = event["data"]["task"] or {}
            key: tuple[Any, ...] = (
                task.get("id"),
                event["type"],
                task.get("state"),
                task.get("progress"),
            )
            if event["type"].endswith("discovered"):
                key = (task.get("id"), event["type"])
            ids_by_transition[key].add(hit.headers["webhook-id"])
            deliveries_by_id[hit.headers["webhook-id"]] += 1
        repeated = {i: n for i, n in deliveries_by_id.items() if n > 1}
        final = dict(query(state, "SELECT id, json_extract(memory, '$.info.State') FROM tasks"))
        # Shown with -s, and with a failure: what the kills caught.
        print(
            f"{len(hits)} deliveries, {len(repeated)} ids delivered twice, "
            f"{verdicts.count('no database yet')} kills before the database existed"
        )

        assert set() == set(verdicts) - {"ok", "no database yet"}, verdicts
        assert expected <= peers.call(deliveries.update)
        assert {} == {k: v for k, v in ids_by_transition.items() if len(v) > 1}
        # At most the one delivery each kill caught in flight goes out twice (same id).
        assert len(repeated) <= KILLS, repeated
        assert "ok" == integrity(state)
        assert {life.task_id: "Failed" if life.fails else "Succeeded" for life in lives} == final
        assert [] == [
            line for line in batchmon.lines(every_run=True) if line.get("level") == "error"
        ]


# --- broken state databases ---------------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(1).randbytes(8192))


def _header_then_garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + random.Random(2).randbytes(8192))


def _filled(path: Path) -> bytes:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE filler (x BLOB)")
        db.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(500),) for _ in range(2000)])
    db.close()
    return path.read_bytes()


def _truncated(path: Path) -> None:
    data = _filled(path)
    path.write_bytes(data[: len(data) // 2])


def _pages_overwritten(path: Path) -> None:
    data = bytearray(_filled(path))
    data[8192:24576] = random.Random(3).randbytes(16384)
    path.write_bytes(bytes(data))


def _foreign(path: Path) -> None:
    """Another program's SQLite database, with a ``meta`` table of its own."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (a, b, c)")
    db.close()


BROKEN = {
    "random bytes": _garbage,
    "SQLite header, then random bytes": _header_then_garbage,
    "cut in half": _truncated,
    "two pages overwritten": _pages_overwritten,
    "another program's database": _foreign,
}


class TestBrokenStateDatabase:
    """A corrupt or unreadable state database is moved aside, said clearly, and replaced."""

    @pytest.mark.parametrize("damage", list(BROKEN), ids=list(BROKEN))
    def test_moved_aside_and_fresh_start(
        self,
        peers: Peers,
        launch: Callable[..., Batchmon],
        tmp_path: Path,
        damage: str,
    ) -> None:
        """One error line names both paths; batchmon starts with empty state and works."""
        simulator = peers.simulator(Simulator())
        task = peers.call(simulator.add_task, name="Export", state=BatchTaskState.STARTED)
        state = tmp_path / "state" / "state.db"
        state.parent.mkdir()
        BROKEN[damage](state)
        broken = state.read_bytes()
        batchmon = launch(base_config(simulator.url, state, watch={"ids": [task.id]}))
        url = batchmon.wait_started()

        [error] = batchmon.events("state_database_corrupt")
        aside = Path(error["moved_to"])
        assert ("error", str(state)) == (error["level"], error["path"])
        assert state.parent == aside.parent
        assert aside.name.startswith("state.db.corrupt-")
        assert broken[:16] == aside.read_bytes()[:16]
        assert "starting with empty state" in error["consequence"]
        batchmon.wait_for(
            lambda line: line.get("event") == "task.discovered", 30, "the task discovered"
        )
        assert 200 == http(url + "/readyz").status
        assert 0 == batchmon.stop()
        assert "ok" == integrity(state)

    @pytest.mark.parametrize("damage", ["two pages overwritten", "another program's database"])
    def test_the_copy_moved_aside_is_untouched(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path, damage: str
    ) -> None:
        """The database moved aside has the bytes it had, and its write-ahead log goes along."""
        simulator = peers.simulator(Simulator())
        state = tmp_path / "state" / "state.db"
        state.parent.mkdir()
        BROKEN[damage](state)
        broken = state.read_bytes()
        state.with_name("state.db-wal").write_bytes(b"a write-ahead log to keep")
        batchmon = launch(base_config(simulator.url, state))
        batchmon.wait_started()
        [error] = batchmon.events("state_database_corrupt")
        aside = Path(error["moved_to"])
        assert 0 == batchmon.stop()

        assert broken == aside.read_bytes()
        assert b"a write-ahead log to keep" == aside.with_name(aside.name + "-wal").read_bytes()

    def test_unreadable_rows_are_skipped(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """A task row that no longer parses is logged and forgotten; the task is found again."""
        simulator = peers.simulator(Simulator())
        task = peers.call(simulator.add_task, name="Export", state=BatchTaskState.STARTED)
        state = tmp_path / "state" / "state.db"
        config = base_config(simulator.url, state, watch={"ids": [task.id]})
        first = launch(config, name="first")
        first.wait_for(lambda line: line.get("event") == "task.discovered", 30, "discovery")
        assert 0 == first.stop()
        with sqlite3.connect(state) as db:
            db.execute("UPDATE tasks SET memory = '{\"info\": 5'")
        db.close()

        second = launch(config, name="second")
        second.wait_for(lambda line: line.get("event") == "task.discovered", 30, "rediscovery")

        [unreadable] = second.events("stored_task_unreadable")
        assert ("error", task.id) == (unreadable["level"], unreadable["task_id"])
        assert second.alive
        assert 0 == second.stop()

    def _queue_row_and_restart(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path, row: str, what: str
    ) -> None:
        """Put ``row`` at the head of the webhook's queue, restart, and expect delivery to go on."""
        simulator = peers.simulator(Simulator())
        receiver = peers.receiver(Receiver())
        task = peers.call(simulator.add_task, name="Export", state=BatchTaskState.STARTED)
        state = tmp_path / "state" / "state.db"
        config = base_config(
            simulator.url,
            state,
            watch={"ids": [task.id]},
            sinks=[{"name": "hook", "type": "webhook", "url": receiver.url(HOOK)}],
        )
        first = launch(config, name="first")
        first.wait_started()
        assert 0 == first.stop()
        with sqlite3.connect(state) as db:
            db.execute(
                "INSERT INTO outbox (sink, event_id, type, event, created) "
                "VALUES ('hook', 'queued-before', 'task.failed', ?, ?)",
                (row, time.time()),
            )
        db.close()

        second = launch(config, name="second")
        second.wait_started()
        peers.call(simulator.set_task, task.id, state=BatchTaskState.FAILED)

        def delivered() -> bool:
            if not second.alive:
                pytest.fail(f"batchmon exited ({second.returncode}):\n{second.stderr()[-2000:]}")
            return any(
                hit.json()["type"].endswith("task.failed") and hit.json()["subject"] == str(task.id)
                for hit in receiver.taken(HOOK)
            )

        wait_until(delivered, 10, f"delivery going on after {what} in the outbox")
        assert 0 == second.stop()

    @pytest.mark.parametrize(
        ("row", "what"),
        [
            ("{not json", "text that is not JSON"),
            (
                (
                    '{"id": "x", "type": "task.paused", "time": "2026-11-28T12:00:00+00:00",'
                    ' "task": null}'
                ),
                "an event type this version does not know (a downgrade)",
            ),
        ],
        ids=["not-json", "unknown-type"],
    )
    def test_unreadable_outbox_row(
        self,
        peers: Peers,
        launch: Callable[..., Batchmon],
        tmp_path: Path,
        row: str,
        what: str,
    ) -> None:
        """An outbox row that cannot be read is logged and set aside; batchmon keeps running."""
        self._queue_row_and_restart(peers, launch, tmp_path, row, what)

    def test_queued_event_with_half_an_emoji(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """A queued event whose task name ends in half an emoji does not hold up the queue."""
        old = make_task_event(name="Report \ud83d", time=datetime.now(UTC))
        row = json.dumps(old.to_dict())
        assert "\\ud83d" in row

        self._queue_row_and_restart(peers, launch, tmp_path, row, "a lone surrogate")


# --- state that cannot be written ---------------------------------------------------------------


def _under_a_file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("not a directory")
    return tmp / "a-file" / "state" / "state.db"


def _a_directory(tmp: Path) -> Path:
    (tmp / "state" / "state.db").mkdir(parents=True)
    return tmp / "state" / "state.db"


def _chattr(path: Path) -> None:
    """``chattr +i``: even root cannot write there (skipped where the file system says no)."""
    chattr = require_tool("e2fsprogs", "chattr")
    done = subprocess.run([chattr, "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not possible here: {done.stderr.decode().strip()}")


def _immutable_directory(tmp: Path) -> Path:
    directory = tmp / "state"
    directory.mkdir()
    _chattr(directory)
    return directory / "state.db"


def _immutable_database(tmp: Path) -> Path:
    directory = tmp / "state"
    directory.mkdir()
    with sqlite3.connect(directory / "state.db") as db:
        db.execute("PRAGMA journal_mode=WAL")
    db.close()
    _chattr(directory / "state.db")
    _chattr(directory)
    return directory / "state.db"


def _read_only_filesystem(tmp: Path) -> Path:
    probe = Path("/sys/batchmon-e2e-probe")
    try:
        probe.touch()
    except OSError:
        return Path("/sys/state.db")
    probe.unlink()
    pytest.skip("/sys is writable here")


UNWRITABLE = {
    "under a regular file": (_under_a_file, "cannot create the state directory"),
    "the path is a directory": (_a_directory, "cannot write the state database"),
    "immutable directory (chattr +i)": (_immutable_directory, "cannot write the state database"),
    "immutable database file": (_immutable_database, "cannot write the state database"),
    "read-only file system (/sys)": (_read_only_filesystem, "cannot write the state database"),
}


class TestUnwritableState:
    """State that cannot be written is one clear line at start-up and exit 73."""

    @pytest.mark.parametrize("case", list(UNWRITABLE), ids=list(UNWRITABLE))
    def test_exit_73(self, launch: Callable[..., Batchmon], tmp_path: Path, case: str) -> None:
        """Nothing starts; stderr says what and where in one line, without a traceback."""
        make, message = UNWRITABLE[case]
        place = tmp_path / "place"
        place.mkdir()
        state = make(place)
        try:
            batchmon = launch(base_config("http://127.0.0.1:9/api", state))
            assert batchmon.process is not None
            code = batchmon.process.wait(30)
        finally:
            chattr = shutil.which("chattr")
            if chattr is not None:
                for path in (place / "state" / "state.db", place / "state"):
                    if path.exists():
                        subprocess.run([chattr, "-i", str(path)], capture_output=True, check=False)

        stderr = batchmon.stderr().strip()
        assert EX_CANTCREAT == code
        assert 1 == len(stderr.splitlines()), stderr
        assert stderr.startswith(f"batchmon: {message}")
        assert str(state.parent if "directory" in message else state) in stderr
        assert "Traceback" not in stderr + batchmon.stdout()
        assert [] == batchmon.events("batchmon_started")
