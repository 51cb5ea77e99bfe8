"""Listing tracked tasks: filters, limits, cursors, order; with thousands of tasks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.superoffice.models import BatchTaskInfo
from monitor.task_list import (
    DEFAULT_LIMIT,
    KNOWN_STATES,
    QueryError,
    TaskQuery,
    decode_cursor,
    encode_cursor,
    order_key,
    select,
)
from monitor.tracking.memory import Rules, state_name
from monitor.tracking.tracker import Tracker

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
#: Of every ten tasks: three Started, one New, four Succeeded, one Failed, one gone.
PATTERN = ["Started"] * 3 + ["New"] + ["Succeeded"] * 4 + ["Failed", "Gone"]


def _info(task_id: int, state: str) -> BatchTaskInfo:
    return BatchTaskInfo.model_validate(
        {"Id": task_id, "Name": f"Task {task_id}", "State": state, "ProgressPercent": 50}
    )


def _tracker(count: int) -> Tracker:
    """``count`` tasks, ids 1…count, in the states of :data:`PATTERN`."""
    tracker = Tracker(Rules())
    for task_id in range(1, count + 1):
        state = PATTERN[task_id % len(PATTERN)]
        tracker.observe(_info(task_id, "Started" if state == "Gone" else state), T0)
        if state == "Gone":
            tracker.observe_gone(task_id, T0 + timedelta(seconds=1))
    return tracker


class TestQuery:
    """Query string values into a query, or a clear error."""

    @pytest.mark.parametrize(
        ("states", "expected"),
        [
            ([], frozenset()),
            (["Failed"], {"Failed"}),
            (["failed,GONE"], {"Failed", "Gone"}),
            (["New", "Aquired, Started"], {"New", "Aquired", "Started"}),
            (["succeededmanualcleanup"], {"SucceededManualCleanup"}),
        ],
    )
    def test_states(self, states: list[str], expected: set[str]) -> None:
        """Repeated or comma-separated, any case, named as the API names them."""
        assert expected == TaskQuery.parse(states, None, None).states

    @pytest.mark.parametrize(
        ("states", "limit", "cursor", "message"),
        [
            (["Faild"], None, None, "state: unknown state 'Faild' (did you mean 'Failed'?)"),
            (["Failed,"], None, None, "state: unknown state ''"),
            (["Running"], None, None, "known: Unknown, New, Aquired, Started"),
            ([], "0", None, "limit: expected 1 to 5000, got 0"),
            ([], "5001", None, "limit: expected 1 to 5000, got 5001"),
            ([], "-3", None, "limit: expected 1 to 5000, got -3"),
            ([], "ten", None, "limit: expected a whole number, got 'ten'"),
            ([], "", None, "limit: expected a whole number, got ''"),
            ([], None, "not-a-cursor", "cursor: not a cursor this server gave"),
            ([], None, "djE6OTo1", "cursor: not a cursor"),  # v1:9:5, no such group
            ([], None, "djI6MDo1", "cursor: not a cursor"),  # v2:0:5
            ([], None, "", "cursor: not a cursor"),
        ],
    )
    def test_bad_values(
        self, states: list[str], limit: str | None, cursor: str | None, message: str
    ) -> None:
        """Each bad value is refused with the parameter's name and what was expected."""
        with pytest.raises(QueryError) as caught:
            TaskQuery.parse(states, limit, cursor)
        assert message in str(caught.value)

    def test_limits(self) -> None:
        """500 unless asked; the page passes its own default and maximum."""
        assert DEFAULT_LIMIT == TaskQuery.parse([], None, None).limit
        assert 5000 == TaskQuery.parse([], "5000", None).limit
        assert 300 == TaskQuery.parse([], None, None, default_limit=300, max_limit=1000).limit
        with pytest.raises(QueryError, match="expected 1 to 1000"):
            TaskQuery.parse([], "1001", None, default_limit=300, max_limit=1000)

    @given(group=st.integers(0, 2), task_id=st.integers(-(2**31), 2**31 - 1))
    def test_cursor_round_trip(self, group: int, task_id: int) -> None:
        """A cursor decodes to the key it was made from, and is URL-safe."""
        cursor = encode_cursor((group, -task_id))
        assert (group, -task_id) == decode_cursor(cursor)
        assert cursor.replace("-", "").replace("_", "").isalnum()

    def test_known_states(self) -> None:
        """Every state of the API, Unknown and Gone."""
        assert {
            "Unknown",
            "New",
            "Aquired",
            "Started",
            "Succeeded",
            "Failed",
            "SucceededManualCleanup",
            "Gone",
        } == set(KNOWN_STATES)


class TestSelect:
    """Pages over thousands of tracked tasks."""

    def test_active_first_then_finished_then_gone(self) -> None:
        """Group order, newest id first within a group."""
        tracker = _tracker(30)
        page = select(tracker.tasks, TaskQuery(limit=30))
        groups = [order_key(m)[0] for m in page.memories]
        states = [state_name(m) for m in page.memories]

        assert sorted(groups) == groups
        assert {"Started", "New"} == set(states[: groups.count(0)])
        assert {"Gone"} == set(states[len(states) - groups.count(2) :])
        first_active = [m.info.id for m in page.memories if order_key(m)[0] == 0]
        assert sorted(first_active, reverse=True) == first_active
        assert page.next is None

    def test_paging_through_5000_tasks(self) -> None:
        """Following ``next`` lists every task exactly once, in order, 500 at a time."""
        tracker = _tracker(5000)
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = select(tracker.tasks, TaskQuery.parse([], None, cursor))
            pages += 1
            assert 5000 == page.total
            seen.extend(m.info.id for m in page.memories)
            if page.next is None:
                break
            cursor = page.next

        assert 10 == pages
        assert 5000 == len(seen) == len(set(seen))
        keys = [order_key(tracker.tasks[i]) for i in seen]
        assert sorted(keys) == keys

    def test_filter_by_state(self) -> None:
        """Only the states asked for; the total counts them all, the page at most limit."""
        tracker = _tracker(3000)
        page = select(tracker.tasks, TaskQuery.parse(["Failed,Gone"], "100", None))

        assert 600 == page.total
        assert 100 == len(page.memories)
        assert {"Failed"} == {state_name(m) for m in page.memories}  # finished before gone
        failed = select(tracker.tasks, TaskQuery.parse(["Failed"], "1000", None))
        assert 300 == failed.total == len(failed.memories)
        assert failed.next is None

    def test_a_task_that_stays_in_its_group_is_never_skipped(self) -> None:
        """Tasks finishing between two pages do not make the cursor skip active ones."""
        tracker = _tracker(2000)
        first = select(tracker.tasks, TaskQuery(limit=100))
        last_id = first.memories[-1].info.id
        for memory in first.memories[:50]:  # finish half of the page already read
            tracker.observe(_info(memory.info.id, "Succeeded"), T0 + timedelta(minutes=1))
        second = select(tracker.tasks, TaskQuery.parse([], "100", first.next))

        still_active = sorted(
            (m.info.id for m in tracker.tasks.values() if order_key(m)[0] == 0), reverse=True
        )
        expected = [i for i in still_active if i < last_id][:100]
        assert expected == [m.info.id for m in second.memories]

    def test_empty(self) -> None:
        """No tasks: an empty last page."""
        page = select(Tracker(Rules()).tasks, TaskQuery())
        assert ([], 0, None) == (page.memories, page.total, page.next)


class TestIds:
    """``ids``: the tasks a chat digest links to, as ids and runs of ids."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("7", {7}), ("1-3,7", {1, 2, 3, 7}), (" 5 , 9-10", {5, 9, 10}), ("4-4", {4})],
    )
    def test_parsed(self, text: str, expected: set[int]) -> None:
        """Ids and ranges, with spaces."""
        assert frozenset(expected) == TaskQuery.parse([], None, None, ids=text).ids

    @pytest.mark.parametrize("text", ["", "a", "3-1", "0", "-5", "1-1000000"])
    def test_refused(self, text: str) -> None:
        """Anything else is a 400 naming ``ids``."""
        with pytest.raises(QueryError, match=r"^ids: "):
            TaskQuery.parse([], None, None, ids=text)

    def test_selects_only_those(self) -> None:
        """Only the named tasks are listed and counted, with the state filter too."""
        tracker = _tracker(50)
        page = select(tracker.tasks, TaskQuery(ids=frozenset(range(1, 21))))
        failed = select(
            tracker.tasks, TaskQuery(states=frozenset({"Failed"}), ids=frozenset({8, 9}))
        )

        assert (20, sorted(range(1, 21))) == (page.total, sorted(m.info.id for m in page.memories))
        assert [8] == [m.info.id for m in failed.memories]
