"""The state store: round trips, watches and the outbox's contract for each backend; SQLite's damage
and permissions."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from monitor.delivery.database import WAL_LIMIT
from monitor.delivery.outbox import StoreError
from monitor.delivery.sqlite import SqliteStore
from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.detect import detect
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import Rules, TaskMemory
from monitor.types import DeliveryStore
from tests.conftest import make_task_event

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def info(task_id: int = 7, **fields: object) -> BatchTaskInfo:
    """A snapshot in API spelling, with defaults."""
    data: dict[str, object] = {
        "Id": task_id,
        "Name": "Export",
        "State": "Started",
        "ProgressPercent": 30,
        "StartCount": 1,
        "LastStarted": "2026-11-28T11:00:00.1234567+01:00",
        "ParameterObject": {"a": "b"},
        "Weird": [1, 2],
    }
    data.update(fields)
    return BatchTaskInfo.model_validate(data)


def first_memory(snapshot: BatchTaskInfo) -> TaskMemory:
    """The memory of a task first seen at T0."""
    return detect(None, snapshot, T0, Rules()).memory


def events_for(task_id: int, *steps: dict[str, object]) -> list[Event]:
    """The events of a task going through ``steps``, one minute apart."""
    memory: TaskMemory | None = None
    found: list[Event] = []
    for minute, fields in enumerate(steps):
        snapshot = info(task_id, **fields)
        now = T0 + timedelta(minutes=minute)
        # forget_after 0: the first sighting is task.discovered alone (its run is older).
        rules = Rules(progress_min_interval=timedelta(0), forget_after=timedelta(0))
        new, memory = detect(memory, snapshot, now, rules)
        found += new
    return found


class TestTasks:
    """Task memories survive a round trip."""

    async def test_round_trip(self, backend: DeliveryStore) -> None:
        """A memory comes back equal, snapshot, clocks, history and anomalies included."""
        memory = replace(
            first_memory(info(State=3, ProgressPercent=150)),
            stalled=True,
            last_progress_event=T0,
            history=((T0, 10), (T0 + timedelta(seconds=5), 20)),
        )
        await backend.commit([memory], [], 0.0)

        (loaded,) = (await backend.load_tasks()).values()
        assert memory == loaded
        assert (
            "State sent as number 3",
            "ProgressPercent 150 is outside 0..100",
        ) == loaded.info.anomalies

    async def test_forget(self, backend: DeliveryStore) -> None:
        """Forgotten tasks are gone from the database."""
        await backend.commit([first_memory(info(1)), first_memory(info(2))], [], 0.0)
        await backend.forget_tasks([1])

        assert [2] == list(await backend.load_tasks())

    async def test_forgetting_a_burst_shrinks_the_file(self, tmp_path: Path) -> None:
        """After a burst is forgotten, the file and its write-ahead log shrink again.

        SQLite keeps freed pages for reuse and a grown log at its size; a daemon that
        once saw thousands of tasks at once would carry that size for months.
        """
        path = tmp_path / "state.db"
        wal = path.with_name(path.name + "-wal")
        store = await SqliteStore.open(path)
        await store.commit([first_memory(info(1))], [], 0.0)
        await store.close()
        empty = path.stat().st_size
        store = await SqliteStore.open(path)
        burst = range(100, 3100)
        history = [e for i in burst for e in events_for(i, {"State": 3}, {"State": 5})]
        await store.commit([first_memory(info(i)) for i in burst], [], 0.0, history)
        grown = wal.stat().st_size
        await store.forget_tasks(burst)
        await store.commit([first_memory(info(2))], [], 0.0)  # the log starts over
        await store.commit([first_memory(info(3))], [], 0.0)

        assert grown > WAL_LIMIT
        assert wal.stat().st_size <= WAL_LIMIT
        await store.close()
        assert path.stat().st_size <= 2 * empty
        store = await SqliteStore.open(path)
        assert [1, 2, 3] == sorted(await store.load_tasks())
        await store.close()

    async def test_a_file_made_before_is_converted(self, tmp_path: Path) -> None:
        """A state file without incremental vacuum (batchmon before 0.x) gets it at open."""
        path = tmp_path / "state.db"
        old = sqlite3.connect(path)
        old.execute("CREATE TABLE unrelated_probe (x)")
        old.execute("DROP TABLE unrelated_probe")
        old.close()
        store = await SqliteStore.open(path)
        await store.close()

        connection = sqlite3.connect(path)
        assert (2,) == connection.execute("PRAGMA auto_vacuum").fetchone()
        connection.close()


async def drain(store: DeliveryStore, sink: str, now: float = 0.0) -> list[Event]:
    """Claim and finish the sink's deliveries one at a time, as one worker would."""
    sent: list[Event] = []
    done: list[int] = []
    while (delivery := (await store.claim(sink, now, done=done)).delivery) is not None:
        sent.append(delivery.event)
        done = [delivery.seq]
    return sent


class TestOutboxContract:
    """The rules of :class:`monitor.types.DeliveryStore` every backend keeps."""

    async def test_order_and_dedup(self, backend: DeliveryStore) -> None:
        """Deliveries come out in commit order; the same event twice is queued once."""
        events = events_for(7, {"State": "New"}, {"State": "Started"}, {"State": "Failed"})
        await backend.commit([], [("ops", e) for e in events], 0.0)
        await backend.commit([], [("ops", events[1])], 0.0)

        assert [e.to_dict() for e in events] == [e.to_dict() for e in await drain(backend, "ops")]
        assert {} == await backend.pending_counts()

    async def test_progress_is_coalesced_state_is_kept(self, backend: DeliveryStore) -> None:
        """Queued progress of a task is replaced by the latest; state changes all stay."""
        restarted = {"State": "Started", "StartCount": 2, "LastStarted": "2026-11-28T12:10:00Z"}
        events = events_for(
            7,
            {"ProgressPercent": 0},
            {"ProgressPercent": 20},
            {"State": "Failed", "ProgressPercent": 20},
            {**restarted, "ProgressPercent": 0},
            {**restarted, "ProgressPercent": 30},
            {**restarted, "ProgressPercent": 60},
        )
        kinds = [e.type for e in events]
        assert [
            EventType.TASK_DISCOVERED,
            EventType.TASK_PROGRESS,
            EventType.TASK_FAILED,
            EventType.TASK_RESTARTED,
            EventType.TASK_STARTED,
            EventType.TASK_PROGRESS,
            EventType.TASK_PROGRESS,
        ] == kinds
        growth = [(await backend.commit([], [("ops", e)], 0.0)).growth for e in events]

        assert {"ops": 0} == growth[-1], "one progress replaced by another"
        assert {"ops": 5} == await backend.pending_counts()
        assert [e.to_dict() for e in (events[0], events[2], events[3], events[4], events[6])] == [
            e.to_dict() for e in await drain(backend, "ops")
        ]

    async def test_a_delivery_being_tried_is_not_replaced(self, backend: DeliveryStore) -> None:
        """Progress claimed by a worker is not coalesced away, nor after a failed try."""
        progress = [
            e
            for e in events_for(
                7,
                {"ProgressPercent": 10},
                {"ProgressPercent": 50},
                {"ProgressPercent": 80},
                {"ProgressPercent": 95},
            )
            if e.type is EventType.TASK_PROGRESS
        ]
        assert 3 == len(progress)
        await backend.commit([], [("ops", progress[0])], 0.0)
        claimed = (await backend.claim("ops", 0.0)).delivery
        assert claimed is not None
        assert {"ops": 1} == (await backend.commit([], [("ops", progress[1])], 0.0)).growth
        await backend.retry_later(claimed.seq, 0.0, "HTTP 503")
        assert {"ops": 0} == (await backend.commit([], [("ops", progress[2])], 0.0)).growth

        assert [progress[0].id, progress[2].id] == [e.id for e in await drain(backend, "ops")]

    async def test_one_round_trip_per_delivery(self, backend: DeliveryStore) -> None:
        """``done`` is finished and the next delivery claimed in the same call."""
        first, second = events_for(7, {}, {"State": "Failed"})
        await backend.commit([], [("ops", first), ("ops", second)], 100.0)

        head = (await backend.claim("ops", 100.0)).delivery
        assert head is not None
        following = (await backend.claim("ops", 100.0, done=[head.seq])).delivery
        assert following is not None
        assert (first.id, second.id) == (head.event.id, following.event.id)
        assert {"ops": 1} == await backend.pending_counts()

    async def test_one_task_at_a_time_other_tasks_meanwhile(self, backend: DeliveryStore) -> None:
        """While a task's delivery is claimed its later ones wait; other tasks' go out."""
        seven = events_for(7, {}, {"State": "Failed"})
        eight = events_for(8, {}, {"State": "Failed"})
        await backend.commit([], [("ops", e) for e in (*seven, *eight)], 0.0)

        claims = [await backend.claim("ops", 0.0) for _ in range(3)]

        assert [seven[0].id, eight[0].id, None] == [
            c.delivery.event.id if c.delivery else None for c in claims
        ]
        assert [True, False, False] == [c.more for c in claims]
        assert (None, None) == (claims[2].due_at, claims[2].delivery)
        assert claims[0].delivery is not None
        assert claims[1].delivery is not None
        # Task 8 finishes first: its next goes out while task 7's first is still in flight.
        after = await backend.claim("ops", 0.0, done=[claims[1].delivery.seq])
        assert after.delivery is not None
        assert eight[1].id == after.delivery.event.id

    async def test_a_retry_holds_its_task_back(self, backend: DeliveryStore) -> None:
        """A delivery waiting for its retry keeps its place: the task's later ones wait too."""
        first, second = events_for(7, {}, {"State": "Failed"})
        (other,) = events_for(8, {})
        await backend.commit([], [("ops", first), ("ops", second), ("ops", other)], 100.0)
        head = (await backend.claim("ops", 100.0)).delivery
        assert head is not None
        await backend.retry_later(head.seq, 130.0, "HTTP 503")

        meanwhile = await backend.claim("ops", 100.0)
        assert meanwhile.delivery is not None
        assert other.id == meanwhile.delivery.event.id
        early = await backend.claim("ops", 100.0, done=[meanwhile.delivery.seq])
        assert (None, 130.0) == (early.delivery, early.due_at)
        due = (await backend.claim("ops", 130.0)).delivery
        assert due is not None
        assert (first.id, 1, 130.0, 100.0) == (
            due.event.id,
            due.attempts,
            due.next_attempt,
            due.created,
        )
        rest = (await backend.claim("ops", 130.0, done=[due.seq])).delivery
        assert rest is not None
        assert second.id == rest.event.id

    async def test_a_commit_claims_for_idle_workers(self, backend: DeliveryStore) -> None:
        """A commit claims what it is asked to, by the rules of ``claim``, in its transaction."""
        first, second = events_for(7, {}, {"State": "Failed"})
        (other,) = events_for(8, {})
        queued = [("ops", first), ("ops", second), ("ops", other), ("log", other)]

        committed = await backend.commit([], queued, 50.0, claim={"ops": 3, "log": 0})

        assert {"ops": 3, "log": 1} == committed.growth
        assert [(first.id, 0, 50.0), (other.id, 0, 50.0)] == [
            (d.event.id, d.attempts, d.created) for d in committed.claimed
        ], "one per task, the task's oldest first"
        assert (await backend.claim("ops", 50.0)).delivery is None
        again = await backend.claim("ops", 50.0, done=[d.seq for d in committed.claimed])
        assert again.delivery is not None
        assert second.id == again.delivery.event.id

    async def test_release_takes_back_a_claim(self, backend: DeliveryStore) -> None:
        """A claim not tried after all is given up, its attempt taken back, never below zero."""
        (event,) = events_for(7, {})
        await backend.commit([], [("ops", event)], 0.0)
        claimed = (await backend.claim("ops", 0.0)).delivery
        assert claimed is not None
        await backend.release([claimed.seq])
        await backend.release([claimed.seq])
        again = (await backend.claim("ops", 0.0)).delivery
        assert again is not None
        assert (claimed.seq, 0) == (again.seq, again.attempts)

    async def test_a_failed_commit_stores_nothing(self, backend: DeliveryStore) -> None:
        """One transaction: a commit the database refuses leaves nothing, and the store works on."""
        (event,) = events_for(7, {})
        huge = make_task_event(id=2**64)

        with pytest.raises(StoreError):
            await backend.commit([first_memory(info(7))], [("ops", event), ("ops", huge)], 0.0)
        assert ({}, {}) == (await backend.load_tasks(), await backend.pending_counts())
        await backend.commit([first_memory(info(7))], [("ops", event)], 0.0)
        assert ([7], {"ops": 1}) == (
            list(await backend.load_tasks()),
            await backend.pending_counts(),
        )

    async def test_removed_sinks(self, backend: DeliveryStore) -> None:
        """Sinks no longer configured lose their deliveries, counted per sink."""
        (event,) = events_for(7, {})
        await backend.commit([], [("ops", event), ("old", event)], 100.0)
        assert {"old": 1} == await backend.drop_sinks_except(["ops"])
        assert {"ops": 1} == await backend.pending_counts()
        await backend.finish([])
        assert {"ops": 1} == await backend.pending_counts()

    async def test_queued_and_claimed_by_seq(self, backend: DeliveryStore) -> None:
        """A digest's worker reads the queue without events and claims exactly the rows it sends."""
        first, second = events_for(7, {}, {"State": "Failed"})
        (other,) = events_for(8, {})
        await backend.commit([], [("ops", first), ("ops", second), ("ops", other)], 10.0)
        await backend.commit([], [("log", other)], 10.0)

        queued = await backend.queued("ops")
        assert [(7, first.type.value, 10.0, 0.0), (7, second.type.value, 10.0, 0.0)] == [
            (q.task_id, q.type, q.created, q.next_attempt) for q in queued[:2]
        ]
        seqs = [q.seq for q in queued]
        claimed = await backend.claim_seqs("ops", [seqs[0], seqs[2], 10**9])
        assert [(first.id, 0), (other.id, 0)] == [(d.event.id, d.attempts) for d in claimed]
        assert [seqs[1]] == [q.seq for q in await backend.queued("ops")], "claimed: left out"
        assert [] == await backend.claim_seqs("ops", [seqs[0]]), "one holder at a time"
        await backend.retry_later(seqs[0], 99.0, "503")
        [again] = await backend.claim_seqs("ops", [seqs[0]])
        assert (1, 99.0) == (again.attempts, again.next_attempt)
        await backend.finish([seqs[0], seqs[2]])
        assert [seqs[1]] == [q.seq for q in await backend.queued("ops")]
        assert 1 == len(await backend.queued("log"))


class TestWatches:
    """Watches added at run time persist."""

    async def test_add_remove(self, backend: DeliveryStore) -> None:
        """Added ids are listed until removed; adding twice is harmless."""
        for task_id in (5, 3, 5):
            await backend.add_watch(task_id)
        await backend.remove_watch(5)

        assert [3] == await backend.watches()


class TestDamage:
    """A damaged or unwritable database is handled with a clear message."""

    async def test_corrupt_database_is_moved_aside(self, tmp_path: Path) -> None:
        """Garbage in the file: moved aside, logged, and a fresh database works."""
        path = tmp_path / "state.db"
        path.write_bytes(b"this is not a database" * 100)
        with capture_logs() as logs:
            store = await SqliteStore.open(path)
        await store.commit([first_memory(info())], [], 0.0)
        await store.close()

        (aside,) = tmp_path.glob("state.db.corrupt-*")
        assert b"this is not a database" in aside.read_bytes()
        assert ["state_database_corrupt"] == [e["event"] for e in logs]
        with sqlite3.connect(path) as check:
            assert [(7,)] == check.execute("SELECT id FROM tasks").fetchall()

    @pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
    async def test_read_only_directory(self, tmp_path: Path) -> None:
        """A directory batchmon cannot write to is reported by path at start-up."""
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(StoreError, match=r"state\.db"):
                await SqliteStore.open(tmp_path / "state.db")
        finally:
            tmp_path.chmod(0o700)

    async def test_unwritable_location(self, tmp_path: Path) -> None:
        """A path under a regular file cannot be a state directory, and says so."""
        (tmp_path / "file").write_text("x")

        with pytest.raises(StoreError, match="cannot create the state directory"):
            await SqliteStore.open(tmp_path / "file" / "state.db")

    async def test_read_only_file(self, tmp_path: Path) -> None:
        """A database file opened read-only fails at start-up, not at the first event."""
        path = tmp_path / "state.db"
        store = await SqliteStore.open(path)
        await store.close()
        path.chmod(0o400)
        (tmp_path / "state.db-wal").unlink(missing_ok=True)
        try:
            if os.geteuid() == 0:
                pytest.skip("root can write read-only files")
            with pytest.raises(StoreError, match="cannot write the state database"):
                await SqliteStore.open(path)
        finally:
            path.chmod(0o600)
