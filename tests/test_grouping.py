"""Which queued deliveries of a chat sink go out when, alone or as a digest: tables with a clock."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from monitor.delivery.grouping import HOUR, Batch, Grouping, Plan, plan, quiet_hours
from monitor.delivery.outbox import Queued
from monitor.windows import parse_window

T0 = 1_000_000.0


def row(
    seq: int,
    task: int | None,
    created: float = T0,
    *,
    kind: str = "task.failed",
    next_attempt: float | None = None,
) -> Queued:
    """A queued row, due when it was queued unless ``next_attempt`` says later."""
    return Queued(seq, task, kind, created, created if next_attempt is None else next_attempt)


def quiet_between(start: float, end: float) -> Grouping:
    """Rules with one quiet period [start, end)."""
    return Grouping(quiet_until=lambda t: end if start <= t < end else None)


WINDOW = Grouping(window=30.0, group_min=3)
FOUR = [row(i, i, T0 + i) for i in range(1, 5)]
THREE = [row(i, i, T0 + i) for i in range(1, 4)]

CASES = [
    pytest.param(
        Grouping(),
        [row(1, 1), row(2, 2)],
        T0,
        Plan([Batch((1,)), Batch((2,))]),
        id="no-rules-at-once",
    ),
    pytest.param(WINDOW, FOUR, T0 + 10, Plan([], T0 + 31), id="window-open-waits-for-its-end"),
    pytest.param(
        WINDOW,
        FOUR,
        T0 + 31,
        Plan([Batch((1, 2, 3, 4), digest=True)]),
        id="more-than-min-tasks-digest",
    ),
    pytest.param(
        WINDOW, THREE, T0 + 31, Plan([Batch((1,)), Batch((2,)), Batch((3,))]), id="min-tasks-alone"
    ),
    pytest.param(
        WINDOW,
        [row(1, 7, T0), row(2, 7, T0 + 1), row(3, 7, T0 + 2), row(4, 7, T0 + 3)],
        T0 + 31,
        Plan([Batch((1,)), Batch((2,)), Batch((3,)), Batch((4,))]),
        id="many-events-of-one-task-alone",
    ),
    pytest.param(
        WINDOW, [row(1, 1)], T0 + 29.9, Plan([], T0 + 30), id="lone-event-waits-at-most-the-window"
    ),
    pytest.param(
        WINDOW,
        [row(1, 1, next_attempt=T0 + 100), row(2, 1, T0 + 1), row(3, 2, T0 + 2)],
        T0 + 50,
        Plan([Batch((3,))], T0 + 100),
        id="retry-holds-the-tasks-later-rows",
    ),
]


@pytest.mark.parametrize(("rules", "rows", "now", "expected"), CASES)
def test_plan(rules: Grouping, rows: list[Queued], now: float, expected: Plan) -> None:
    """What goes out at ``now``, and when to look again."""
    assert expected == plan(rows, now, rules)


class TestQuiet:
    def test_rows_wait_until_quiet_ends(self) -> None:
        """While quiet, nothing goes out; the plan wakes at the period's end."""
        rules = quiet_between(T0, T0 + 600)
        assert Plan([], T0 + 600) == plan([row(1, 1, T0 + 5)], T0 + 10, rules)

    def test_after_quiet_one_digest_even_of_one_task(self) -> None:
        """A failure and its recovery while quiet go as one digest, not as a fresh alarm."""
        rules = quiet_between(T0, T0 + 600)
        rows = [row(1, 1, T0 + 5), row(2, 1, T0 + 50, kind="task.succeeded")]
        expected = Plan([Batch((1, 2), digest=True, after_quiet=True)])
        assert expected == plan(rows, T0 + 600, rules)

    def test_after_quiet_new_rows_join_the_digest(self) -> None:
        """Rows queued after the quiet period join the digest of those that waited."""
        rules = quiet_between(T0, T0 + 600)
        rows = [row(1, 1, T0 + 5), row(2, 2, T0 + 601)]
        expected = Plan([Batch((1, 2), digest=True, after_quiet=True)])
        assert expected == plan(rows, T0 + 602, rules)

    def test_exempt_types_go_out_during_quiet(self) -> None:
        """``quiet_except`` types are sent while quiet; the others wait."""
        base = quiet_between(T0, T0 + 600)
        rules = Grouping(quiet_until=base.quiet_until, quiet_except=frozenset({"monitor.api_down"}))
        rows = [row(1, None, T0 + 1, kind="monitor.api_down"), row(2, 5, T0 + 2)]
        assert Plan([Batch((1,))], T0 + 600) == plan(rows, T0 + 3, rules)

    def test_outside_quiet_hours_nothing_changes(self) -> None:
        """Rows queued outside the quiet period go alone, at once."""
        rules = quiet_between(T0 + 1000, T0 + 2000)
        assert Plan([Batch((1,))]) == plan([row(1, 1, T0)], T0, rules)


class TestCap:
    def test_room_left_sends_all(self) -> None:
        """Under the cap, messages go as usual."""
        rules = Grouping(max_per_hour=3)
        assert Plan([Batch((1,)), Batch((2,))]) == plan(
            [row(1, 1), row(2, 2)], T0, rules, sent=[T0 - 10]
        )

    def test_last_message_that_fits_is_a_digest_of_the_rest(self) -> None:
        """With room for 2 and 4 due, one goes alone and the other 3 go as one digest."""
        rules = Grouping(max_per_hour=3)
        rows = [row(i, i) for i in range(1, 5)]
        expected = Plan([Batch((1,)), Batch((2, 3, 4), digest=True, held_back=3)])
        assert expected == plan(rows, T0, rules, sent=[T0 - 10])

    def test_no_room_waits_until_a_message_is_an_hour_old(self) -> None:
        """At the cap, rows wait until the oldest message of the hour ages out."""
        rules = Grouping(max_per_hour=2)
        sent = [T0 - 100, T0 - 50, T0 - 4000]
        assert Plan([], T0 - 100 + HOUR) == plan([row(1, 1)], T0, rules, sent)

    def test_room_again_after_an_hour(self) -> None:
        """Messages older than an hour no longer count."""
        rules = Grouping(max_per_hour=1)
        assert Plan([Batch((1,))]) == plan([row(1, 1)], T0, rules, sent=[T0 - HOUR])


def test_rules_off_by_default() -> None:
    """Without any rule, a sink is served by the ordinary workers."""
    assert not Grouping().active
    assert Grouping(window=1.0).active
    assert Grouping(max_per_hour=5).active
    assert quiet_between(0, 1).active


OSLO_NIGHTS = quiet_hours(
    [parse_window("Mon-Fri 22:00-07:00", "Europe/Oslo"), parse_window("Sat-Sun", "Europe/Oslo")]
)


def _oslo(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Oslo")).timestamp()


@pytest.mark.parametrize(
    ("at", "until"),
    [
        ("2026-12-02 12:00", None),  # a Wednesday noon: not quiet
        ("2026-12-02 23:00", "2026-12-03 07:00"),  # a weeknight
        ("2026-12-03 07:00", None),  # the end itself is no longer quiet
        ("2026-12-04 23:00", "2026-12-07 00:00"),  # Friday night runs into the weekend
        ("2026-12-05 12:00", "2026-12-07 00:00"),  # Saturday
        ("2026-03-29 01:30", "2026-03-30 00:00"),  # the spring-forward Sunday
    ],
)
def test_quiet_hours(at: str, until: str | None) -> None:
    """Back-to-back windows are one quiet period, in the zone's wall-clock time."""
    assert (None if until is None else _oslo(until)) == OSLO_NIGHTS(_oslo(at))


def test_quiet_all_week_is_looked_at_again_after_eight_days() -> None:
    """A window that never ends is followed for 8 days, then the plan wakes to look again."""
    always = quiet_hours([parse_window("Mon-Sun", "UTC")])
    assert T0 + 8 * 24 * HOUR == always(T0)
    assert quiet_hours([])(T0) is None
