"""The SQLite state database: round trips, the outbox's rules, damage and permissions."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from monitor.store import Store, StoreError
from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.detect import detect
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import Rules, TaskMemory

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

    async def test_round_trip(self, store: Store) -> None:
        """A memory comes back equal, snapshot, clocks, history and anomalies included."""
        memory = replace(
            first_memory(info(State=3, ProgressPercent=150)),
            stalled=True,
            last_progress_event=T0,
            history=((T0, 10), (T0 + timedelta(seconds=5), 20)),
        )
        await store.commit([memory], [], 0.0)

        (loaded,) = (await store.load_tasks()).values()
        assert memory == loaded
        assert (
            "State sent as number 3",
            "ProgressPercent 150 is outside 0..100",
        ) == loaded.info.anomalies

    async def test_forget(self, store: Store) -> None:
        """Forgotten tasks are gone from the database."""
        await store.commit([first_memory(info(1)), first_memory(info(2))], [], 0.0)
        await store.forget_tasks([1])

        assert [2] == list(await store.load_tasks())


class TestOutbox:
    """The outbox keeps order, deduplicates and coalesces progress."""

    async def test_order_and_dedup(self, store: Store) -> None:
        """Deliveries come out in commit order; the same event twice is queued once."""
        events = events_for(7, {"State": "New"}, {"State": "Started"}, {"State": "Failed"})
        await store.commit([], [("ops", e) for e in events], 0.0)
        await store.commit([], [("ops", events[1])], 0.0)

        seen = []
        while (row := await store.next_delivery("ops")) is not None:
            seen.append(row.event)
            await store.remove(row.seq)
        assert [e.to_dict() for e in events] == [e.to_dict() for e in seen]

    async def test_progress_is_coalesced_state_is_kept(self, store: Store) -> None:
        """Queued progress of a task is replaced by the latest; state changes all stay."""
        events = events_for(
            7,
            {"ProgressPercent": 0},
            {"ProgressPercent": 20},
            {"State": "Failed", "ProgressPercent": 20},
            {
                "State": "Started",
                "StartCount": 2,
                "LastStarted": "2026-11-28T12:10:00Z",
                "ProgressPercent": 0,
            },
            {
                "State": "Started",
                "StartCount": 2,
                "LastStarted": "2026-11-28T12:10:00Z",
                "ProgressPercent": 30,
            },
            {
                "State": "Started",
                "StartCount": 2,
                "LastStarted": "2026-11-28T12:10:00Z",
                "ProgressPercent": 60,
            },
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
        growth = [(await store.commit([], [("ops", e)], 0.0)).growth for e in events]

        assert {"ops": 0} == growth[-1], "one progress replaced by another"
        assert {"ops": 5} == await store.outbox_counts()
        queued = []
        while (row := await store.next_delivery("ops")) is not None:
            queued.append(row.event)
            await store.remove(row.seq)
        assert [e.to_dict() for e in (events[0], events[2], events[3], events[4], events[6])] == [
            e.to_dict() for e in queued
        ]

    async def test_a_delivery_being_tried_is_not_replaced(self, store: Store) -> None:
        """Progress already handed to a sink is not coalesced away."""
        first, second = events_for(7, {"ProgressPercent": 0}, {"ProgressPercent": 50})[0:2]
        await store.commit([], [("ops", second)], 0.0)
        row = await store.next_delivery("ops", claim_until=0.0)
        assert row is not None
        later = events_for(
            7, {"ProgressPercent": 0}, {"ProgressPercent": 50}, {"ProgressPercent": 80}
        )[2]
        await store.commit([], [("ops", later)], 0.0)

        assert {"ops": 2} == await store.outbox_counts()
        assert first.type is EventType.TASK_DISCOVERED

    async def test_one_round_trip_per_delivery(self, store: Store) -> None:
        """``done`` is deleted and the next head claimed in the same call; not a later one."""
        first, second, third = events_for(7, {}, {"State": "Failed"}, {"State": "Started"})
        await store.commit([], [("ops", first), ("ops", second), ("ops", third)], 100.0)

        head = await store.next_delivery("ops", claim_until=100.0)
        assert head is not None
        following = await store.next_delivery("ops", done=[head.seq], claim_until=100.0)
        assert following is not None
        await store.retry_later(following.seq, 130.0, "HTTP 503")
        early = await store.next_delivery("ops", claim_until=100.0)
        due = await store.next_delivery("ops", claim_until=130.0)
        assert due is not None
        last = await store.next_delivery("ops", done=[due.seq], claim_until=130.0)
        assert last is not None
        unclaimed = await store.next_delivery("ops")

        assert [first.id, second.id, third.id] == [head.event.id, due.event.id, last.event.id]
        assert early is not None
        assert (1, 1) == (early.attempts, due.attempts)
        assert unclaimed is not None
        assert (last.seq, 1) == (unclaimed.seq, unclaimed.attempts)
        assert {"ops": 1} == await store.outbox_counts()
        assert await store.next_delivery("ops", done=[last.seq]) is None

    async def test_claimed_deliveries_come_back_as_read_back(self, store: Store) -> None:
        """``claim`` queues deliveries already being tried and returns them, as if read."""
        first, second, third = events_for(7, {}, {"State": "Failed"}, {"State": "Started"})
        committed = await store.commit(
            [], [("ops", first), ("ops", second), ("ops", third)], 100.0, claim={0, 2}
        )

        assert {"ops": 3} == committed.growth
        assert [first.to_dict(), third.to_dict()] == [r.event.to_dict() for r in committed.claimed]
        assert [(0, 0.0, 100.0, "ops")] * 2 == [
            (r.attempts, r.next_attempt, r.created, r.sink) for r in committed.claimed
        ]
        stored = []
        done: list[int] = []
        while (row := await store.next_delivery("ops", done=done)) is not None:
            stored.append((row.seq, row.attempts))
            done = [row.seq]
        assert [committed.claimed[0].seq, committed.claimed[1].seq] == [stored[0][0], stored[2][0]]
        assert [1, 0, 1] == [attempts for _, attempts in stored], "claimed: one attempt counted"

    async def test_a_claimed_progress_is_not_replaced(self, store: Store) -> None:
        """A delivery claimed as it is queued is being tried: coalescing leaves it alone."""
        progress = [
            e
            for e in events_for(
                7, {"ProgressPercent": 10}, {"ProgressPercent": 50}, {"ProgressPercent": 80}
            )
            if e.type is EventType.TASK_PROGRESS
        ]
        committed = await store.commit([], [("ops", progress[0])], 0.0, claim={0})
        growth = (await store.commit([], [("ops", progress[1])], 0.0)).growth

        assert ({"ops": 1}, 1) == (growth, len(committed.claimed))
        assert {"ops": 2} == await store.outbox_counts()

    async def test_finished_deliveries_go_with_a_commit_or_a_removal(self, store: Store) -> None:
        """``done`` is deleted in the commit's transaction; ``remove`` takes several at once."""
        events = events_for(7, {}, {"State": "Failed"}, {"State": "Started"})
        assert 3 == len(events)
        claimed = (
            await store.commit([], [("ops", e) for e in events], 0.0, claim={0, 1, 2})
        ).claimed
        await store.commit([], [], 0.0, history=events[:1], done=[claimed[0].seq])
        assert {"ops": 2} == await store.outbox_counts()
        await store.remove(claimed[1].seq, claimed[2].seq)
        assert {} == await store.outbox_counts()

    async def test_reads_skip_what_the_reader_finished(self, store: Store) -> None:
        """``from_seq``: rows before it are finished, their deletion on its way."""
        first, second = events_for(7, {}, {"State": "Failed"})
        await store.commit([], [("ops", first), ("ops", second)], 0.0)
        head = await store.next_delivery("ops")
        assert head is not None
        following = await store.next_delivery("ops", from_seq=head.seq + 1)
        assert following is not None
        assert second.id == following.event.id
        assert {"ops": 2} == await store.outbox_counts()

    async def test_release_takes_back_a_claim(self, store: Store) -> None:
        """A claimed delivery that was not tried after all has its attempt taken back, once."""
        (event,) = events_for(7, {})
        (claimed,) = (await store.commit([], [("ops", event)], 0.0, claim={0})).claimed
        await store.release([claimed.seq])
        await store.release([claimed.seq])  # never below zero
        row = await store.next_delivery("ops")
        assert row is not None
        assert (claimed.seq, 0) == (row.seq, row.attempts)

    async def test_retry_later_and_removed_sinks(self, store: Store) -> None:
        """A retry keeps its place with a later time; sinks no longer configured are dropped."""
        (event,) = events_for(7, {})
        await store.commit([], [("ops", event), ("old", event)], 100.0)
        row = await store.next_delivery("ops", claim_until=100.0)
        assert row is not None
        assert 0 == row.attempts
        await store.retry_later(row.seq, 130.0, "HTTP 503")

        again = await store.next_delivery("ops")
        assert again is not None
        assert (1, 130.0, 100.0) == (again.attempts, again.next_attempt, again.created)
        assert {"old": 1} == await store.drop_sinks_except(["ops"])
        assert {"ops": 1} == await store.outbox_counts()


class TestWatches:
    """Watches added at run time persist."""

    async def test_add_remove(self, store: Store) -> None:
        """Added ids are listed until removed; adding twice is harmless."""
        for task_id in (5, 3, 5):
            await store.add_watch(task_id)
        await store.remove_watch(5)

        assert [3] == await store.watches()


class TestDamage:
    """A damaged or unwritable database is handled with a clear message."""

    async def test_corrupt_database_is_moved_aside(self, tmp_path: Path) -> None:
        """Garbage in the file: moved aside, logged, and a fresh database works."""
        path = tmp_path / "state.db"
        path.write_bytes(b"this is not a database" * 100)
        with capture_logs() as logs:
            store = await Store.open(path)
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
                await Store.open(tmp_path / "state.db")
        finally:
            tmp_path.chmod(0o700)

    async def test_unwritable_location(self, tmp_path: Path) -> None:
        """A path under a regular file cannot be a state directory, and says so."""
        (tmp_path / "file").write_text("x")

        with pytest.raises(StoreError, match="cannot create the state directory"):
            await Store.open(tmp_path / "file" / "state.db")

    async def test_read_only_file(self, tmp_path: Path) -> None:
        """A database file opened read-only fails at start-up, not at the first event."""
        path = tmp_path / "state.db"
        store = await Store.open(path)
        await store.close()
        path.chmod(0o400)
        (tmp_path / "state.db-wal").unlink(missing_ok=True)
        try:
            if os.geteuid() == 0:
                pytest.skip("root can write read-only files")
            with pytest.raises(StoreError, match="cannot write the state database"):
                await Store.open(path)
        finally:
            path.chmod(0o600)
