"""The schedule's decisions as tables: no event loop, no server, time as an argument."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.config import PollConfig
from monitor.polling.schedule import (
    BULK_STATES,
    FETCH,
    SWEEP_EVERY,
    UNCHANGED,
    UNKNOWN_RECHECK,
    Later,
    Listings,
    Row,
    Schedule,
)
from monitor.polling.shard import Shard
from monitor.superoffice.errors import ApiError, MalformedResponse, ServerError
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState, TaskListing
from monitor.tracking.memory import TaskMemory

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NEW, AQUIRED, STARTED = BULK_STATES
#: Sent times of the list calls, by state.
SENT = {state: 100.0 + index for index, state in enumerate(BULK_STATES)}


class FixedRandom(random.Random):
    """A random source that always draws ``value`` (0 ≤ value < 1)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def make_schedule(
    *,
    draw: float = 0.0,
    wants: Any = None,
    shard: Shard | None = None,
    workers: int = 8,
    max_requests_per_second: float = 1000.0,
    **poll: Any,
) -> Schedule:
    """A schedule with ``interval`` 10 s, ``idle_interval`` 60 s, jitter 10 %, ``draw`` drawn."""
    config = PollConfig.model_validate(
        {"interval": "10s", "idle_interval": "60s", "jitter": 0.1, **poll}
    )
    return Schedule(
        config,
        rng=FixedRandom(draw),
        shard=shard,
        wants=wants,
        workers=workers,
        max_requests_per_second=max_requests_per_second,
    )


def row(task_id: int, state: str = "Started", **fields: Any) -> dict[str, Any]:
    """A list row as the API sends it."""
    return {"Id": task_id, "State": state, **fields}


def info(task_id: int, state: str = "Started", **fields: Any) -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(row(task_id, state, **fields))


def memory(
    task_id: int,
    state: str = "Started",
    *,
    first_seen: datetime = T0,
    terminal_since: datetime | None = None,
    gone: bool = False,
) -> TaskMemory:
    """What the tracker would remember of a task."""
    return TaskMemory(
        info=info(task_id, state),
        first_seen=first_seen,
        last_change=first_seen,
        last_seen=first_seen,
        terminal_since=terminal_since,
        gone=gone,
    )


def listing(*rows: dict[str, Any]) -> TaskListing:
    """A list answer; a row whose ``Id`` is not an integer is unusable (listed under ``Key``)."""
    return TaskListing({item.get("Key", item["Id"]): item for item in rows}, [], UTC)


def unusable(task_id: int) -> dict[str, Any]:
    """A row listed under ``task_id`` that cannot be read as a task."""
    return {"Key": task_id, "Id": "not a number", "State": "Started"}


class TestWatching:
    """Which ids are watched, and what is kept of them."""

    def test_watch_is_due_at_once_and_new_once(self) -> None:
        """A watched id is due at ``now``; watching it again changes nothing."""
        schedule = make_schedule()

        assert [1, 2] == schedule.watch([1, 2], 5.0)
        assert [] == schedule.watch([1], 9.0)
        assert 0.0 == schedule.due_in(1, 5.0)
        assert {1, 2} == schedule.watched

    def test_other_shards_ids_are_left_alone(self) -> None:
        """Shard 1/2 watches only the ids that hash to it."""
        shard = Shard(1, 2)
        schedule = make_schedule(shard=shard)

        added = schedule.watch(range(1, 101), 0.0)

        assert [i for i in range(1, 101) if shard.owns(i)] == added
        assert 30 < len(added) < 70

    def test_pinned_and_unwatch(self) -> None:
        """Pinned ids stay pinned when dropped (a sweep), not when unwatched."""
        schedule = make_schedule()
        schedule.watch([1, 2], 0.0, pinned=True)
        schedule.drop([1])
        schedule.unwatch([2])

        assert (True, False) == (schedule.pinned(1), schedule.pinned(2))
        assert frozenset() == schedule.watched

    def test_per_task_state_is_bounded(self) -> None:
        """Every table kept per task empties when its tasks are unwatched."""
        schedule = make_schedule()
        schedule.watch([1, 2], 0.0, pinned=True)
        schedule.unknown(1, 0.0)
        schedule.informed(2, 0.0, (1,))
        assert (2, 2, 1, 1, 1) == schedule.sizes()

        schedule.unwatch([1, 2])

        assert (0, 0, 0, 0, 0) == schedule.sizes()


class TestTime:
    """Deadlines, jitter, sweeps and the loop's wake-up."""

    @pytest.mark.parametrize(
        ("draw", "due"),
        [(0.0, 10.0), (0.5, 9.5), (0.999, 9.001)],
    )
    def test_jitter_only_brings_a_deadline_forward(self, draw: float, due: float) -> None:
        """Due within ``interval``: jitter (10 %) takes up to a tenth off, never adds."""
        schedule = make_schedule(draw=draw)
        schedule.watch([1], 0.0)

        schedule.reschedule(1, 10.0, 0.0)

        assert due == pytest.approx(schedule.due_in(1, 0.0))

    def test_reschedule_of_an_unwatched_id_watches_nothing(self) -> None:
        """Rescheduling never starts polling a task that is not watched."""
        schedule = make_schedule()

        schedule.reschedule(1, 10.0, 0.0)

        assert None is schedule.due_in(1, 0.0)
        assert frozenset() == schedule.watched

    def test_due_in_is_never_negative(self) -> None:
        """A task overdue is due now."""
        schedule = make_schedule()
        schedule.watch([1], 0.0)

        assert 0.0 == schedule.due_in(1, 30.0)

    def test_a_cycle_takes_what_falls_due_within_half_an_interval(self) -> None:
        """One cycle per half interval, not one per jittered deadline."""
        schedule = make_schedule()
        schedule.watch([1, 2, 3], 0.0)
        schedule.reschedule(2, 5.0, 0.0)
        schedule.reschedule(3, 5.1, 0.0)

        assert [1, 2] == schedule.due(0.0)

    def test_sweep_every_minute(self) -> None:
        """The first loop sweeps, then once every 60 s."""
        schedule = make_schedule()

        assert [True, False, False, True] == [
            schedule.sweep_due(now) for now in (0.0, 1.0, SWEEP_EVERY - 0.1, SWEEP_EVERY)
        ]

    def test_wake_at(self) -> None:
        """The loop wakes for the next deadline or sweep; with nothing watched, an interval on."""
        schedule = make_schedule()
        assert schedule.wake_at(0.0) < 0.0, "a loop that never swept wakes at once"
        schedule.sweep_due(0.0)
        assert 10.0 == schedule.wake_at(0.0)
        schedule.watch([1], 4.0)
        assert 4.0 == schedule.wake_at(0.0)
        schedule.reschedule(1, 100.0, 0.0)
        assert SWEEP_EVERY == schedule.wake_at(0.0)

    @pytest.mark.parametrize(("draw", "delay"), [(0.0, 27.0), (0.5, 30.0), (0.999, 32.994)])
    def test_discovery_delay_is_jittered_both_ways(self, draw: float, delay: float) -> None:
        """A rule runs every ``every`` seconds, give or take the jitter."""
        assert delay == pytest.approx(make_schedule(draw=draw).discovery_delay(30.0))


def plan_for(
    tasks: Mapping[int, TaskMemory], due: list[int], now: float = 0.0, **kwargs: Any
) -> tuple[tuple[BatchTaskState, ...], set[int], int]:
    schedule = make_schedule(**kwargs)
    schedule.watch(due, 0.0)
    plan = schedule.plan(due, tasks, now)
    return plan.states, set(plan.singles), plan.budget


class TestPlan:
    """Bulk versus GET, first sights and the request budget."""

    @pytest.mark.parametrize(
        ("memories", "states", "singles"),
        [
            pytest.param(
                [memory(1), memory(2), memory(3)], (STARTED,), set(), id="3 started: list"
            ),
            pytest.param([memory(1), memory(2)], (), {1, 2}, id="2 started: GETs"),
            pytest.param(
                [memory(1, "New"), memory(2, "Aquired"), memory(3)],
                (),
                {1, 2, 3},
                id="3 active in 3 states: GETs",
            ),
            pytest.param(
                [memory(1, "Succeeded", terminal_since=T0), memory(2, "Failed", terminal_since=T0)],
                (),
                {1, 2},
                id="finished: GETs",
            ),
            pytest.param(
                [memory(1, gone=True), memory(2, gone=True), memory(3, gone=True)],
                (),
                {1, 2, 3},
                id="gone: GETs",
            ),
            pytest.param(
                [memory(1, "Unknown"), memory(2, "Unknown"), memory(3, "Unknown")],
                (),
                {1, 2, 3},
                id="unknown state: GETs",
            ),
            pytest.param(
                [memory(1, "New"), memory(2, "New"), memory(3, "New"), memory(4)],
                (NEW,),
                {4},
                id="3 new listed, 1 started fetched",
            ),
        ],
    )
    def test_bulk_threshold(
        self, memories: list[TaskMemory], states: tuple[BatchTaskState, ...], singles: set[int]
    ) -> None:
        """A state is listed when at least ``bulk_threshold`` (3) due tasks were last seen in it."""
        tasks = {m.info.id: m for m in memories}

        assert (states, singles) == plan_for(tasks, list(tasks))[:2]

    def test_a_never_tried_id_is_fetched(self) -> None:
        """An id never seen and never tried is fetched by id, no list needed."""
        assert ((), {7}) == plan_for({}, [7])[:2]

    def test_first_sights_are_spread_over_cycles(self) -> None:
        """Four first GETs per worker and cycle; the rest are looked for in every active list."""
        states, singles, _ = plan_for({}, list(range(1, 11)), workers=2)

        assert BULK_STATES == states
        assert set(range(1, 9)) == singles

    @pytest.mark.parametrize(
        ("since_404", "fetched"),
        [(0.0, False), (UNKNOWN_RECHECK * 60.0 - 1, False), (UNKNOWN_RECHECK * 60.0, True)],
    )
    def test_unknown_id_is_fetched_again_every_30_idle_intervals(
        self, since_404: float, fetched: bool
    ) -> None:
        """An id the API answered 404 for is looked for in the lists, by id every 30 idle
        intervals."""
        schedule = make_schedule()
        schedule.watch([7], 0.0)
        assert schedule.unknown(7, 0.0)

        plan = schedule.plan([7], {}, since_404)

        assert (fetched, () if fetched else BULK_STATES) == (7 in plan.singles, plan.states)

    @pytest.mark.parametrize(
        ("rate", "workers", "budget"),
        [(1000.0, 8, 5000 - 1), (1.0, 8, 8 - 1), (float("inf"), 8, 10**9 - 1)],
    )
    def test_request_budget(self, rate: float, workers: int, budget: int) -> None:
        """A cycle may send what the rate allows in half an interval (at least one per
        worker), less its list calls."""
        tasks = {i: memory(i) for i in (1, 2, 3)}

        assert (
            budget == plan_for(tasks, [1, 2, 3], workers=workers, max_requests_per_second=rate)[2]
        )

    def test_lists_go_out_in_lifecycle_order(self) -> None:
        """New, Aquired, Started: a task moving on between them is in one of them."""
        tasks = {i: memory(i, state) for i, state in enumerate(["Started", "Aquired", "New"] * 3)}

        assert BULK_STATES == plan_for(tasks, list(tasks))[0]


def covered(
    due: list[int],
    listings: Listings,
    tasks: Mapping[int, TaskMemory],
    *,
    watched: Sequence[int] = (),
    missing: Sequence[int] = (),
    **kwargs: Any,
) -> list[int]:
    schedule = make_schedule(**kwargs)
    schedule.watch([*due, *watched, *missing], 0.0)
    for task_id in missing:
        schedule.unknown(task_id, 0.0)
    return schedule.covered(schedule.plan(due, tasks, 0.0), listings, tasks)


class TestCovered:
    """Which tasks a cycle's lists speak for."""

    def test_without_lists_only_the_due_tasks(self) -> None:
        """No list call: the due tasks, nothing else."""
        assert [1, 2] == covered([1, 2], {}, {3: memory(3)}, watched=[3])

    def test_every_watched_task_last_seen_in_a_listed_state(self) -> None:
        """Listed or not: one missing from its list finished or vanished."""
        tasks = {1: memory(1), 2: memory(2, "New"), 3: memory(3, gone=True), 4: memory(4)}
        listings: Listings = {STARTED: listing(row(1))}

        assert [1, 4] == covered([1], listings, tasks, watched=[2, 3, 4])

    def test_ids_the_api_never_knew_when_every_active_state_is_listed(self) -> None:
        """An id that got a 404 is covered by the active lists only when all three went out."""
        all_lists: Listings = {state: listing() for state in BULK_STATES}
        one_list: Listings = {STARTED: listing()}

        assert [1, 7] == covered([1], all_lists, {1: memory(1)}, missing=[7])
        assert [1] == covered([1], one_list, {1: memory(1)}, missing=[7])
        assert [1] == covered([1], all_lists, {1: memory(1)}, watched=[9])

    def test_rows_of_watched_remembered_or_wanted_tasks(self) -> None:
        """A row is covered if its task is watched, remembered (a re-run), or a rule wants it."""
        tasks = {1: memory(1), 2: memory(2, "Succeeded", terminal_since=T0)}
        listings: Listings = {
            NEW: ServerError("503", status=503),
            STARTED: listing(row(1), row(2), row(3), row(4, Name="Export"), row(5), unusable(6)),
        }

        def wants(info: BatchTaskInfo) -> bool:
            return info.name == "Export"

        assert [1, 2, 3, 4] == covered([1], listings, tasks, watched=[3], wants=wants)

    def test_a_refused_row_is_not_read_again_while_unchanged(self) -> None:
        """The rules see a row once while it stays the same; a changed row is read again,
        and a row no list shows any more is no longer remembered."""
        seen: list[int] = []

        def wants(info: BatchTaskInfo) -> bool:
            seen.append(info.id)
            return False

        schedule = make_schedule(wants=wants)
        first: Listings = {STARTED: listing(row(3), row(4))}
        changed: Listings = {STARTED: listing(row(3), row(4, ProgressPercent=50))}
        for listings in (first, first, changed, {STARTED: listing()}, first):
            schedule.covered(schedule.plan([], {}, 0.0), listings, {})

        assert [3, 4, 4, 3, 4] == seen

    def test_rows_of_other_shards_are_not_wanted(self) -> None:
        """A rule wants only the tasks of this shard."""
        shard = Shard(1, 2)
        mine, theirs = (
            next(i for i in range(1, 99) if shard.owns(i)),
            next(i for i in range(1, 99) if not shard.owns(i)),
        )
        listings: Listings = {STARTED: listing(row(mine), row(theirs))}

        assert [mine] == covered([], listings, {}, wants=lambda _: True, shard=shard)

    def test_without_rules_no_row_is_wanted(self) -> None:
        """No discovery rule: an unknown row is nobody's."""
        assert [] == covered([], {STARTED: listing(row(3))}, {})


class TestDecide:
    """What the lists say about each covered task."""

    @pytest.mark.parametrize(
        ("memories", "due", "listings", "decision"),
        [
            pytest.param(
                [memory(1)],
                [1],
                {NEW: ServerError("503", status=503), STARTED: listing(row(1, ProgressPercent=5))},
                Row(info(1, ProgressPercent=5), SENT[STARTED], ()),
                id="changed row: observed from it",
            ),
            pytest.param(
                [memory(1)], [1], {STARTED: listing(unusable(1))}, FETCH, id="unusable row: GET"
            ),
            pytest.param(
                [], [1], {STARTED: listing(unusable(1))}, Later(5.0), id="unusable unknown: wait"
            ),
            pytest.param([], [1], {STARTED: listing()}, Later(5.0), id="not there yet"),
            pytest.param(
                [memory(1, gone=True)], [1], {STARTED: listing()}, Later(5.0), id="gone: wait"
            ),
            pytest.param(
                [memory(1)], [], {STARTED: listing()}, Later(5.0), id="not watched: nothing"
            ),
            pytest.param([memory(1)], [1], {STARTED: listing()}, FETCH, id="left the list: GET"),
            pytest.param(
                [memory(1)],
                [1],
                {STARTED: ServerError("503", status=503)},
                Later(10.0),
                id="its list failed: keep the state",
            ),
            pytest.param(
                [memory(1)],
                [1],
                {STARTED: MalformedResponse("not JSON")},
                FETCH,
                id="its list unreadable: GET",
            ),
            pytest.param(
                [memory(1, "Succeeded", terminal_since=T0)],
                [1],
                {STARTED: listing()},
                FETCH,
                id="finished, not listed: GET",
            ),
        ],
    )
    def test_decisions(
        self,
        memories: list[TaskMemory],
        due: list[int],
        listings: dict[BatchTaskState, TaskListing | ApiError],
        decision: object,
    ) -> None:
        """Row, fetch, or wait (half an interval; a whole one while the API fails)."""
        schedule = make_schedule()
        schedule.watch(due, 0.0)
        tasks = {m.info.id: m for m in memories}

        found = schedule.decide(1, listings, SENT, tasks)

        if isinstance(found, Row):
            assert isinstance(decision, Row)
            assert (decision.info, decision.sent) == (found.info, found.sent)
        else:
            assert decision == found

    def test_a_row_as_last_listed_is_unchanged(self) -> None:
        """The same poll fields as the last row taken in: only the stall clock runs."""
        schedule = make_schedule()
        schedule.watch([1], 0.0)
        listings: Listings = {STARTED: listing(row(1, ProgressPercent=5))}
        tasks = {1: memory(1)}
        first = schedule.decide(1, listings, SENT, tasks)
        assert isinstance(first, Row)
        schedule.informed(1, first.sent, first.values)

        assert UNCHANGED is schedule.decide(1, listings, SENT, tasks)
        schedule.informed(1, 200.0, None)  # a GET: the next row is compared afresh
        assert isinstance(schedule.decide(1, listings, SENT, tasks), Row)

    def test_a_gone_task_listed_again_is_a_row(self) -> None:
        """A task that was gone is taken from its row even if the row looks as before."""
        schedule = make_schedule()
        schedule.watch([1], 0.0)
        schedule.informed(1, 0.0, listing(row(1)).poll_values(1))

        decision = schedule.decide(1, {STARTED: listing(row(1))}, SENT, {1: memory(1, gone=True)})

        assert isinstance(decision, Row)


class TestDiscovered:
    """Which rows of a discovery rule's list are taken in."""

    def test_rows(self) -> None:
        """This shard's readable rows the rule matches, unless known as they are."""
        shard = Shard(1, 2)
        mine = [i for i in range(1, 99) if shard.owns(i)][:4]
        theirs = next(i for i in range(1, 99) if not shard.owns(i))
        schedule = make_schedule(shard=shard)
        rows = listing(
            row(mine[0]), row(mine[1], Name="Other"), unusable(mine[2]), row(mine[3]), row(theirs)
        )
        schedule.informed(mine[3], 0.0, rows.poll_values(mine[3]))
        tasks = {mine[3]: memory(mine[3])}

        taken = [
            schedule.discovered(i, rows, 50.0, tasks, lambda info: info.name != "Other")
            for i in rows
        ]

        assert [mine[0]] == [r.info.id for r in taken if r is not None]
        assert 50.0 == next(r.sent for r in taken if r is not None)


class TestBlind:
    """The GETs no list answers for."""

    @pytest.mark.parametrize(("fetched", "expected"), [(0, [2, 3, 1]), (4997, [2, 3]), (6000, [])])
    def test_known_first_within_the_budget(self, fetched: int, expected: list[int]) -> None:
        """Known tasks before first sights; what the budget leaves stays due."""
        schedule = make_schedule(bulk_threshold=2)
        tasks = {2: memory(2, "Succeeded", terminal_since=T0), 3: memory(3, "New")}
        tasks |= {i: memory(i) for i in (10, 11)}
        plan = schedule.plan([1, 2, 3, 10, 11], tasks, 0.0)
        assert (STARTED,) == plan.states

        assert expected == schedule.blind(plan, fetched, tasks)


class TestAnswers:
    """Feeding answers back: order, failures, 404s, and when a task is due again."""

    def test_older_answers_are_refused(self) -> None:
        """An answer to a request sent before the one the memory holds would go back in time."""
        schedule = make_schedule()
        assert schedule.accepts(1, 0.0)
        schedule.informed(1, 10.0, None)

        assert [False, True, True] == [schedule.accepts(1, sent) for sent in (9.9, 10.0, 11.0)]

    @pytest.mark.parametrize(("state", "due"), [("Started", 5.0), ("Succeeded", 0.0)])
    def test_a_listed_row(self, state: str, due: float) -> None:
        """A row of an active state: the lists watch the task, due in half an interval."""
        schedule = make_schedule()
        schedule.watch([1], 0.0)

        schedule.listed(info(1, state), 0.0)

        assert due == schedule.due_in(1, 0.0)

    def test_a_failure_keeps_the_state_for_an_interval(self) -> None:
        """A failed request: due again after ``interval``."""
        schedule = make_schedule()
        schedule.watch([1], 0.0)

        schedule.failed(1, 3.0)

        assert 10.0 == schedule.due_in(1, 3.0)

    def test_unknown_id(self) -> None:
        """A 404 for an id never seen: said the first time, due after an interval, kept."""
        schedule = make_schedule()
        schedule.watch([7], 0.0)

        assert [True, False] == [schedule.unknown(7, 0.0), schedule.unknown(7, 1.0)]
        assert 10.0 == schedule.due_in(7, 1.0)

    def test_gone(self) -> None:
        """A 404 for a known task: polled no more."""
        schedule = make_schedule()
        schedule.watch([1], 0.0)
        schedule.informed(1, 0.0, (1,))

        schedule.gone(1)

        assert (frozenset(), (0, 0, 0, 0, 1)) == (schedule.watched, schedule.sizes())

    @pytest.mark.parametrize(
        ("state", "finished", "first_seen", "linger", "pinned", "due"),
        [
            pytest.param("Started", None, T0, 0, False, 10.0, id="active: interval"),
            pytest.param("New", None, T0, 0, False, 10.0, id="queued: interval"),
            pytest.param(
                "Succeeded", 0, T0 - timedelta(hours=1), 0, False, 10.0, id="just finished: confirm"
            ),
            pytest.param("Succeeded", -5, T0 - timedelta(hours=1), 0, False, None, id="confirmed"),
            pytest.param("Succeeded", -5, T0 - timedelta(hours=1), 30, False, 10.0, id="lingering"),
            pytest.param(
                "Succeeded", -30, T0 - timedelta(hours=1), 30, False, None, id="linger over"
            ),
            pytest.param(
                "Succeeded", -5, T0 - timedelta(hours=1), 0, True, 600.0, id="pinned: finished_iv"
            ),
            pytest.param(
                "Failed", -5, T0 - timedelta(hours=1), 0, False, 600.0, id="failed: finished_iv"
            ),
            pytest.param(
                "Succeeded", -5, T0 - timedelta(seconds=5), 0, False, None, id="first seen"
            ),
            pytest.param(
                "Succeeded", -5, T0 - timedelta(seconds=5), 0, True, 600.0, id="first seen, pinned"
            ),
        ],
    )
    def test_when_due_after_an_answer(
        self,
        state: str,
        finished: float | None,
        first_seen: datetime,
        linger: float,
        pinned: bool,
        due: float | None,
    ) -> None:
        """Active: every interval.  Finished: confirmed once (and polled while it lingers),
        then every ``finished_interval`` if pinned or failed, else dropped; a discovered task
        first seen finished needs no confirmation."""
        schedule = make_schedule(draw=0.0, terminal_linger=f"{linger}s")
        schedule.watch([1], 0.0, pinned=pinned)
        since = None if finished is None else T0 + timedelta(seconds=finished)
        if since is not None and first_seen > since:
            first_seen = since
        remembered = memory(1, state, first_seen=first_seen, terminal_since=since)

        stopped = schedule.answered(remembered, 0.0, T0)

        assert (due, due is None) == (schedule.due_in(1, 0.0), stopped)

    def test_an_answer_ends_the_unknown_id_rechecks(self) -> None:
        """Once the API knows the id, it is no longer fetched as a missing one."""
        schedule = make_schedule()
        schedule.watch([7], 0.0)
        schedule.unknown(7, 0.0)

        schedule.answered(memory(7), 1.0, T0)

        assert (1, 0, 0, 0, 0) == schedule.sizes()
