"""Weekly windows: parsing, midnight, weekday ranges that wrap, and DST in Europe/Oslo."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.windows import (
    Window,
    format_days,
    parse_days,
    parse_time,
    parse_window,
    zone,
)

OSLO = zone("Europe/Oslo")
#: Thursday 3 December 2026 in Oslo (CET, UTC+1); the week's dates follow from it.
THU = datetime(2026, 12, 3, tzinfo=OSLO)
#: Sunday 29 March 2026: at 02:00 CET the clock jumps to 03:00 CEST.
SPRING = datetime(2026, 3, 29, tzinfo=OSLO)
#: Sunday 25 October 2026: at 03:00 CEST the clock goes back to 02:00 CET.
AUTUMN = datetime(2026, 10, 25, tzinfo=OSLO)


def _oslo(day: int, hour: int, minute: int = 0, *, fold: int = 0) -> datetime:
    """A wall-clock moment in Oslo in the week of ``THU`` (day 0 = Monday 30 November)."""
    monday = datetime(2026, 11, 30, tzinfo=OSLO)
    return (monday + timedelta(days=day, hours=hour, minutes=minute)).replace(fold=fold)


def _utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


class TestParseDays:
    @pytest.mark.parametrize(
        ("text", "days"),
        [
            ("Sat", {5}),
            ("sat", {5}),
            ("Saturday", {5}),
            ("Mon-Fri", {0, 1, 2, 3, 4}),
            ("Sat-Sun", {5, 6}),
            ("Fri-Mon", {4, 5, 6, 0}),  # wraps the week
            ("Sun-Mon", {6, 0}),
            ("Mon-Sun", set(range(7))),
            ("Tue-Mon", set(range(7))),
            ("Mon,Wed,Fri", {0, 2, 4}),
            ("Mon-Tue, Thu", {0, 1, 3}),
            (" Tue - Thu ", {1, 2, 3}),
        ],
    )
    def test_reads(self, text: str, days: set[int]) -> None:
        """Names, ranges (wrapping Sunday to Monday) and lists are sets of weekdays."""
        assert frozenset(days) == parse_days(text)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("Sa", "unknown day 'Sa' in 'Sa'"),
            ("", "unknown day ''"),
            ("Mon-", "unknown day '' in 'Mon-'"),
            ("Mon-Fri-Sat", "unknown day 'Fri-Sat'"),
            ("Mon,,Tue", "unknown day ''"),
            ("Mon-Mon", "'Mon-Mon' starts and ends on the same day: write 'Mon'"),
            ("Sat-saturday", "same day"),
        ],
    )
    def test_refuses(self, text: str, message: str) -> None:
        """A bad day spec says which part is wrong and what would do."""
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_days(text)

    @given(st.frozensets(st.integers(0, 6), min_size=1))
    def test_format_reads_back(self, days: frozenset[int]) -> None:
        """What :func:`format_days` writes, :func:`parse_days` reads as the same days."""
        assert days == parse_days(format_days(days))

    @pytest.mark.parametrize(
        ("days", "text"),
        [
            ({5}, "Sat"),
            ({0, 1, 2, 3, 4}, "Mon-Fri"),
            ({5, 6, 0}, "Sat-Mon"),
            ({1, 3}, "Tue,Thu"),
            ({0, 2, 3, 6}, "Wed-Thu,Sun-Mon"),
            (set(range(7)), "Mon-Sun"),
        ],
    )
    def test_format(self, days: set[int], text: str) -> None:
        """Runs of days are ranges, a run across the week's end stays one range."""
        assert text == format_days(frozenset(days))


class TestParseTime:
    @pytest.mark.parametrize(
        ("text", "end", "expected"),
        [
            ("00:00", False, time(0)),
            ("7:05", False, time(7, 5)),
            ("23:59", False, time(23, 59)),
            (" 22:00 ", False, time(22)),
            ("24:00", True, time(0)),
            ("06:00", True, time(6)),
        ],
    )
    def test_reads(self, text: str, end: bool, expected: time) -> None:
        """HH:MM on a 24-hour clock; 24:00 only as an end."""
        assert expected == parse_time(text, end=end)

    @pytest.mark.parametrize(
        ("text", "end", "message"),
        [
            ("24:00", False, r"time '24:00' is not HH:MM on a 24-hour clock \(00:00-23:59\)$"),
            ("24:01", True, r"\(00:00-23:59, or 24:00 for an end\)$"),
            ("12:60", False, "'12:60'"),
            ("noon", False, "'noon'"),
            ("1200", False, "'1200'"),
            ("12:00:00", False, "'12:00:00'"),
            ("-1:00", False, "'-1:00'"),
        ],
    )
    def test_refuses(self, text: str, end: bool, message: str) -> None:
        """A bad time names itself and the form expected."""
        with pytest.raises(ValueError, match=message):
            parse_time(text, end=end)


class TestParseWindow:
    @pytest.mark.parametrize(
        ("text", "days", "start", "end"),
        [
            ("Mon-Fri 22:00-07:00", {0, 1, 2, 3, 4}, time(22), time(7)),
            ("Sat-Sun", {5, 6}, time(0), time(0)),
            ("Sat 20:00-24:00", {5}, time(20), time(0)),
            ("  Thu   22:00-06:00 ", {3}, time(22), time(6)),
        ],
    )
    def test_reads(self, text: str, days: set[int], start: time, end: time) -> None:
        """The compact form and the days-only form (whole days)."""
        window = parse_window(text, "Europe/Oslo", "patches")
        assert Window(frozenset(days), start, end, OSLO, "patches") == window

    def test_takes_a_zone_object(self) -> None:
        """A tzinfo (a fixed offset, say) is used as it is."""
        cet = timezone(timedelta(hours=1), "CET")
        assert cet == parse_window("Sat", cet).tz

    @pytest.mark.parametrize(
        ("text", "tz", "message"),
        [
            ("", "UTC", "window '' is not 'DAYS' or 'DAYS HH:MM-HH:MM'"),
            ("Mon 10:00 - 12:00", "UTC", "is not 'DAYS' or 'DAYS HH:MM-HH:MM'"),
            ("Mon 10:00", "UTC", "hours '10:00' in window 'Mon 10:00' are not HH:MM-HH:MM"),
            ("Mon 10:00-25:00", "UTC", "time '25:00'"),
            ("Mon 24:00-10:00", "UTC", "time '24:00'"),
            ("Mo 10:00-12:00", "UTC", "unknown day 'Mo'"),
            ("Mon", "Europe/Olso", "unknown time zone 'Europe/Olso'"),
            ("Mon", "../etc", "unknown time zone '../etc'"),
            ("Mon", "Europe", "unknown time zone 'Europe'"),
        ],
    )
    def test_refuses(self, text: str, tz: str, message: str) -> None:
        """Each mistake gets its own sentence."""
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_window(text, tz)


class TestWindowChecks:
    @pytest.mark.parametrize(
        ("days", "start", "message"),
        [
            (frozenset(), time(1), "days must be weekday numbers 0-6"),
            (frozenset({7}), time(1), r"got \[7\]"),
            (frozenset({1}), time(1, tzinfo=UTC), "start must be a wall-clock time"),
        ],
    )
    def test_refuses(self, days: frozenset[int], start: time, message: str) -> None:
        """Days outside the week and zoned times are refused when the window is made."""
        with pytest.raises(ValueError, match=message):
            Window(days, start, time(2), UTC)

    def test_naive_moment(self) -> None:
        """A moment without a zone is ambiguous: refused, not guessed."""
        window = parse_window("Mon", "UTC")
        with pytest.raises(ValueError, match="naive 2026-12-03T00:00:00"):
            window.active(datetime(2026, 12, 3))  # noqa: DTZ001 - the point of the test
        with pytest.raises(ValueError, match="needs a time zone"):
            window.next_change(datetime(2026, 12, 3))  # noqa: DTZ001 - the point of the test

    @pytest.mark.parametrize(
        ("text", "description"),
        [
            ("Mon-Fri 22:00-07:00", "Mon-Fri 22:00-07:00 Europe/Oslo"),
            ("Sat-Sun", "Sat-Sun Europe/Oslo"),
            ("sunday-monday 00:00-12:00", "Sun-Mon 00:00-12:00 Europe/Oslo"),
        ],
    )
    def test_description(self, text: str, description: str) -> None:
        """What messages show: days, hours unless whole days, the zone."""
        assert description == parse_window(text, OSLO).description


# Week of Monday 30 November 2026 (day 0) to Sunday 6 December (day 6), Oslo (CET, no DST).
ACTIVE = [
    # Inside the same day.
    ("Thu 10:00-12:00", _oslo(3, 9, 59), False),
    ("Thu 10:00-12:00", _oslo(3, 10), True),  # the start belongs to the window
    ("Thu 10:00-12:00", _oslo(3, 11, 59), True),
    ("Thu 10:00-12:00", _oslo(3, 12), False),  # the end does not
    ("Thu 10:00-12:00", _oslo(2, 11), False),  # another day
    # Across midnight: a Thursday window ends on Friday.
    ("Thu 22:00-06:00", _oslo(3, 21, 59), False),
    ("Thu 22:00-06:00", _oslo(3, 23, 59), True),
    ("Thu 22:00-06:00", _oslo(4, 0), True),
    ("Thu 22:00-06:00", _oslo(4, 5, 59), True),
    ("Thu 22:00-06:00", _oslo(4, 6), False),
    ("Thu 22:00-06:00", _oslo(3, 3), False),  # Wednesday's night is not Thursday's
    ("Sat 20:00-24:00", _oslo(5, 23, 59), True),
    ("Sat 20:00-24:00", _oslo(6, 0), False),
    # Weekday ranges, also wrapping the week.
    ("Mon-Fri 22:00-07:00", _oslo(0, 6), False),  # Sunday night is not in Mon-Fri
    ("Mon-Fri 22:00-07:00", _oslo(0, 23), True),
    ("Mon-Fri 22:00-07:00", _oslo(5, 6, 59), True),  # Friday night ends on Saturday
    ("Mon-Fri 22:00-07:00", _oslo(5, 22), False),
    ("Fri-Mon 08:00-09:00", _oslo(6, 8, 30), True),
    ("Fri-Mon 08:00-09:00", _oslo(0, 8, 30), True),
    ("Fri-Mon 08:00-09:00", _oslo(1, 8, 30), False),
    # Whole days; start == end is 24 hours.
    ("Sat-Sun", _oslo(4, 23, 59), False),
    ("Sat-Sun", _oslo(5, 0), True),
    ("Sat-Sun", _oslo(6, 23, 59), True),
    ("Sat-Sun", _oslo(7, 0), False),
    ("Wed 12:00-12:00", _oslo(3, 11, 59), True),
    ("Wed 12:00-12:00", _oslo(3, 12), False),
    # The zone of the moment does not matter, only the instant.
    ("Thu 10:00-12:00", _utc(2026, 12, 3, 9, 30), True),  # 10:30 in Oslo
    ("Thu 10:00-12:00", _utc(2026, 12, 3, 11, 0), False),  # 12:00 in Oslo
]


@pytest.mark.parametrize(("text", "at", "expected"), ACTIVE)
def test_active(text: str, at: datetime, expected: bool) -> None:
    """Start inclusive, end exclusive, midnight crossed into the next day."""
    assert expected is parse_window(text, OSLO).active(at)


NEXT = [
    ("Thu 10:00-12:00", _oslo(3, 9), _oslo(3, 10)),
    ("Thu 10:00-12:00", _oslo(3, 10), _oslo(3, 12)),  # at a start: its end
    ("Thu 10:00-12:00", _oslo(3, 12), _oslo(10, 10)),  # at an end: next week's start
    ("Thu 22:00-06:00", _oslo(3, 23), _oslo(4, 6)),
    ("Mon-Fri 22:00-07:00", _oslo(5, 6), _oslo(5, 7)),
    ("Mon-Fri 22:00-07:00", _oslo(5, 7), _oslo(7, 22)),  # over the weekend
    # Back-to-back whole days are one span.
    ("Sat-Sun", _oslo(3, 12), _oslo(5, 0)),
    ("Sat-Sun", _oslo(5, 0), _oslo(7, 0)),
    ("Fri-Mon", _oslo(5, 12), _oslo(8, 0)),
    ("Mon-Sat", _oslo(6, 12), _oslo(7, 0)),
    ("Mon-Sun", _oslo(3, 12), None),  # always on: no change
    ("Thu 10:00-10:00", _oslo(3, 12), _oslo(4, 10)),
    ("Mon-Sun 10:00-10:00", _oslo(3, 12), None),
]


@pytest.mark.parametrize(("text", "at", "expected"), NEXT)
def test_next_change(text: str, at: datetime, expected: datetime | None) -> None:
    """The next start or end, skipping boundaries where one span hands over to the next."""
    change = parse_window(text, OSLO).next_change(at)
    assert expected == change
    if change is not None:
        assert OSLO == change.tzinfo


def _changes(window: Window, start: datetime, end: datetime) -> list[datetime]:
    changes = []
    at: datetime | None = start
    while (at := window.next_change(at)) is not None and at < end:  # type: ignore[arg-type]
        changes.append(at.astimezone(UTC))
    return changes


class TestDaylightSaving:
    """Europe/Oslo: CET (UTC+1) in winter, CEST (UTC+2) from the last Sunday of March."""

    def test_skipped_hour_window_never_opens(self) -> None:
        """02:00-03:00 does not exist on 29 March 2026: the window lasts no time that day."""
        window = parse_window("Sun 02:00-03:00", OSLO)
        for minute in range(0, 24 * 60, 5):
            assert not window.active(SPRING + timedelta(minutes=minute)), minute
        # The Sundays before and after have it, as one hour each.
        assert [
            _utc(2026, 3, 22, 1),
            _utc(2026, 3, 22, 2),
            _utc(2026, 4, 5, 0),
            _utc(2026, 4, 5, 1),
        ] == _changes(window, SPRING - timedelta(days=7), SPRING + timedelta(days=8))

    def test_end_in_the_skipped_hour(self) -> None:
        """01:00-02:30 on the spring-forward day ends when the clock jumps (02:00 CET)."""
        window = parse_window("Sun 01:00-02:30", OSLO)
        assert [_utc(2026, 3, 29, 0), _utc(2026, 3, 29, 1)] == _changes(
            window, SPRING, SPRING + timedelta(days=1)
        )

    def test_start_in_the_skipped_hour(self) -> None:
        """02:30-04:00 on the spring-forward day starts at the jump (03:00 CEST)."""
        window = parse_window("Sun 02:30-04:00", OSLO)
        assert [_utc(2026, 3, 29, 1), _utc(2026, 3, 29, 2)] == _changes(
            window, SPRING, SPRING + timedelta(days=1)
        )

    def test_repeated_hour_window_lasts_three_hours(self) -> None:
        """01:00-03:00 on 25 October 2026 covers both passes of 02:00-03:00: three hours."""
        window = parse_window("Sun 01:00-03:00", OSLO)
        assert [_utc(2026, 10, 24, 23), _utc(2026, 10, 25, 2)] == _changes(
            window, AUTUMN, AUTUMN + timedelta(days=1)
        )
        second_pass = datetime(2026, 10, 25, 2, 30, tzinfo=OSLO, fold=1)
        assert window.active(second_pass)
        assert timedelta(hours=1) == second_pass.utcoffset()

    def test_end_in_the_repeated_hour(self) -> None:
        """01:00-02:30 on the fall-back day ends at the last 02:30 and does not open twice."""
        window = parse_window("Sun 01:00-02:30", OSLO)
        assert [_utc(2026, 10, 24, 23), _utc(2026, 10, 25, 1, 30)] == _changes(
            window, AUTUMN, AUTUMN + timedelta(days=1)
        )

    def test_start_in_the_repeated_hour(self) -> None:
        """02:30-04:00 on the fall-back day starts at the first 02:30 (CEST)."""
        window = parse_window("Sun 02:30-04:00", OSLO)
        assert [_utc(2026, 10, 25, 0, 30), _utc(2026, 10, 25, 3)] == _changes(
            window, AUTUMN, AUTUMN + timedelta(days=1)
        )

    def test_overnight_across_the_change(self) -> None:
        """Sat 20:00 - Sun 06:00 is nine hours in spring and eleven in autumn."""
        window = parse_window("Sat 20:00-06:00", OSLO)
        spring = _changes(window, SPRING - timedelta(days=1), SPRING + timedelta(days=1))
        autumn = _changes(window, AUTUMN - timedelta(days=1), AUTUMN + timedelta(days=1))
        assert timedelta(hours=9) == spring[1] - spring[0]
        assert timedelta(hours=11) == autumn[1] - autumn[0]

    @pytest.mark.parametrize(
        "text",
        ["Sun 02:00-03:00", "Sun 01:00-03:00", "Sun 01:00-02:30", "Sat-Sun", "Sat 22:00-02:30"],
    )
    @pytest.mark.parametrize("sunday", [SPRING, AUTUMN])
    def test_changes_match_a_minute_by_minute_scan(self, text: str, sunday: datetime) -> None:
        """Every minute of the DST weekend: active changes exactly at the next_change points."""
        window = parse_window(text, OSLO)
        begin = (sunday - timedelta(days=2)).astimezone(UTC)
        minutes = [begin + timedelta(minutes=n) for n in range(4 * 24 * 60)]
        scanned = [
            later
            for earlier, later in itertools.pairwise(minutes)
            if window.active(earlier) != window.active(later)
        ]
        assert scanned == _changes(window, begin, minutes[-1] + timedelta(seconds=1))


WINDOWS = st.builds(
    Window,
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
    end=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
    tz=st.sampled_from([OSLO, UTC, zone("America/New_York"), zone("Australia/Lord_Howe")]),
)
# Naive bounds are what hypothesis wants; the moments it draws carry UTC.
MOMENTS = st.datetimes(
    min_value=datetime(2026, 1, 1),  # noqa: DTZ001
    max_value=datetime(2027, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@settings(max_examples=200, deadline=None)
@given(WINDOWS, MOMENTS, st.lists(st.floats(0, 1, exclude_max=True), max_size=5))
def test_active_is_constant_between_changes(
    window: Window, at: datetime, fractions: list[float]
) -> None:
    """Between ``at`` and next_change(at), active stays as it is; at the change it flips."""
    now = window.active(at)
    change = window.next_change(at)
    if change is None:
        later = [at + timedelta(days=n) for n in range(8)]
        assert all(window.active(moment) == now for moment in later)
        return
    assert change > at
    assert timedelta(days=8) >= change - at
    microseconds = (change - at) // timedelta(microseconds=1)
    for fraction in fractions:
        assert now == window.active(at + timedelta(microseconds=int(microseconds * fraction)))
    assert now != window.active(change)
