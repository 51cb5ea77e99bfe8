"""Weekly time windows in a time zone: maintenance, quiet hours.

A window is a wall-clock span (``22:00-07:00``) that starts on some weekdays (``Mon-Fri``)
in an IANA zone.  It may cross midnight (it then ends on the next day) and ``start == end``
is a whole 24 hours, which is what the days-only form ``Sat-Sun`` means (00:00-00:00).

Daylight saving time decides where a wall-clock time falls on the time line:

- a time the clock skips (02:30 on the spring-forward day in Europe/Oslo) is the moment of
  the jump, so a ``02:00-03:00`` window lasts no time at all that day, and ``01:00-02:30``
  ends at 02:00 CET, when the clock jumps to 03:00;
- a time the clock shows twice (02:30 on the fall-back day) starts a window at its first
  pass and ends one at its last, so ``01:00-03:00`` on that day lasts three hours and no
  window opens twice.

Everything here is pure: the moment is an argument, never the clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DAY_NAMES",
    "Window",
    "format_days",
    "parse_days",
    "parse_time",
    "parse_window",
    "zone",
]

#: Weekday numbers as :meth:`date.weekday` counts them: Monday is 0.
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY = {name.lower(): n for n, name in enumerate(DAY_NAMES)} | {
    name: n for n, name in enumerate(_FULL_NAMES)
}
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_DAY_LENGTH = timedelta(days=1)


@dataclass(frozen=True)
class Window:
    """A span of wall-clock time that starts on ``days`` at ``start`` and ends at ``end``.

    ``end`` at or before ``start`` ends on the next day; ``end == start`` lasts 24 hours.
    """

    #: The weekdays the window starts on (0 = Monday).
    days: frozenset[int]
    start: time
    end: time
    tz: tzinfo
    name: str = ""

    def __post_init__(self) -> None:
        if not self.days or not self.days <= frozenset(range(7)):
            msg = f"days must be weekday numbers 0-6 (Monday is 0), got {sorted(self.days)}"
            raise ValueError(msg)
        for which, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is not None:
                msg = f"{which} must be a wall-clock time without a zone, got {value}"
                raise ValueError(msg)

    def active(self, at: datetime) -> bool:
        """Whether ``at`` (an aware moment) lies inside the window."""
        return any(start <= at < end for start, end in self._around(_aware(at)))

    def next_change(self, at: datetime) -> datetime | None:
        """The first moment after ``at`` at which :meth:`active` changes, in the window's zone.

        ``None`` when it never does (every day, all day).  Back-to-back spans (``Sat-Sun``)
        are one span: the change is where the last one ends.
        """
        at = _aware(at)
        now = self.active(at)
        first = at.astimezone(self.tz).date()
        # One week and a day ahead holds a change unless there is none: a span that daylight
        # saving time shrinks to nothing comes back a week later.
        bounds = sorted(
            {moment for span in self._spans(first - 2 * _DAY_LENGTH, 17) for moment in span}
        )
        for moment in bounds:
            if moment > at and self.active(moment) != now:
                return moment.astimezone(self.tz)
        return None

    @property
    def description(self) -> str:
        """``Mon-Fri 22:00-07:00 Europe/Oslo``: what a message or a page shows."""
        whole_day = self.start == self.end == time(0)
        hours = "" if whole_day else f" {self.start:%H:%M}-{self.end:%H:%M}"
        return f"{format_days(self.days)}{hours} {self.tz}"

    def _around(self, at: datetime) -> list[tuple[datetime, datetime]]:
        """The spans that may hold ``at``: those starting from two days before to a day after."""
        return self._spans(at.astimezone(self.tz).date() - 2 * _DAY_LENGTH, 4)

    def _spans(self, first: date, count: int) -> list[tuple[datetime, datetime]]:
        """The non-empty spans starting on the ``count`` days from ``first``, as UTC moments."""
        length = datetime.combine(date.min, self.end) - datetime.combine(date.min, self.start)
        if length <= timedelta(0):
            length += _DAY_LENGTH
        spans = []
        for offset in range(count):
            day = first + offset * _DAY_LENGTH
            if day.weekday() not in self.days:
                continue
            wall = datetime.combine(day, self.start)
            start = _moment(wall, self.tz, last=False)
            end = _moment(wall + length, self.tz, last=True)
            if start < end:
                spans.append((start, end))
        return spans


def _aware(at: datetime) -> datetime:
    if at.utcoffset() is None:
        msg = f"a moment needs a time zone, got the naive {at.isoformat()}"
        raise ValueError(msg)
    return at


def _wall(moment: datetime, tz: tzinfo) -> datetime:
    return moment.astimezone(tz).replace(tzinfo=None)


def _moment(wall: datetime, tz: tzinfo, *, last: bool) -> datetime:
    """The UTC moment at which the clock in ``tz`` shows ``wall``.

    Shown twice (fall-back): the first pass, or the last with ``last``.  Never shown (the
    clock jumps over it): the moment of the jump, the first at which the clock shows a later
    time.
    """
    readings = [wall.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1)]
    real = [moment for moment in readings if _wall(moment, tz) == wall]
    if real:
        return max(real) if last else min(real)
    # In the gap the clock shows an earlier time at the earlier reading and a later one at the
    # later reading; the jump lies between, on a whole second.
    before, after = int(min(readings).timestamp()), int(max(readings).timestamp())
    while after - before > 1:
        middle = (before + after) // 2
        if _wall(datetime.fromtimestamp(middle, UTC), tz) >= wall:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Europe/Oslo``), or a ValueError that names it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
        msg = f"unknown time zone {name!r}: use an IANA name such as 'Europe/Oslo' or 'UTC'"
        raise ValueError(msg) from None


def parse_days(text: str) -> frozenset[int]:
    """``Sat``, ``Mon-Fri``, ``Fri-Mon`` (wrapping the week), ``Mon,Wed,Fri``, ``Mon-Sun``."""
    days: set[int] = set()
    for item in text.split(","):
        first, dash, last = item.strip().partition("-")
        if not dash:
            days.add(_day(first, text))
            continue
        begin, finish = _day(first, text), _day(last, text)
        if begin == finish:
            msg = (
                f"day range {item.strip()!r} starts and ends on the same day: "
                f"write {DAY_NAMES[begin]!r} for one day or 'Mon-Sun' for the whole week"
            )
            raise ValueError(msg)
        days.update((begin + n) % 7 for n in range((finish - begin) % 7 + 1))
    return frozenset(days)


def _day(name: str, text: str) -> int:
    try:
        return _DAY[name.strip().lower()]
    except KeyError:
        msg = (
            f"unknown day {name.strip()!r} in {text!r}: use {', '.join(DAY_NAMES)}, "
            "ranges such as 'Mon-Fri', or lists such as 'Mon,Thu'"
        )
        raise ValueError(msg) from None


def parse_time(text: str, *, end: bool = False) -> time:
    """``HH:MM`` on a 24-hour clock; an end may also be ``24:00`` (midnight)."""
    match = _TIME.fullmatch(text.strip())
    hour, minute = (int(match[1]), int(match[2])) if match else (-1, -1)
    if end and (hour, minute) == (24, 0):
        return time(0)
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        msg = f"time {text!r} is not HH:MM on a 24-hour clock (00:00-23:59"
        msg += ", or 24:00 for an end)" if end else ")"
        raise ValueError(msg)
    return time(hour, minute)


def parse_window(text: str, tz: str | tzinfo, name: str = "") -> Window:
    """A window from ``Mon-Fri 22:00-07:00`` (days and hours) or ``Sat-Sun`` (whole days)."""
    parts = text.split()
    if len(parts) not in (1, 2):
        msg = (
            f"window {text!r} is not 'DAYS' or 'DAYS HH:MM-HH:MM', "
            "e.g. 'Sat-Sun' or 'Mon-Fri 22:00-07:00'"
        )
        raise ValueError(msg)
    days = parse_days(parts[0])
    if len(parts) == 1:
        start = end = time(0)
    else:
        first, dash, last = parts[1].partition("-")
        if not dash:
            msg = f"hours {parts[1]!r} in window {text!r} are not HH:MM-HH:MM, e.g. 22:00-07:00"
            raise ValueError(msg)
        start, end = parse_time(first), parse_time(last, end=True)
    return Window(days, start, end, zone(tz) if isinstance(tz, str) else tz, name)


def format_days(days: frozenset[int]) -> str:
    """The shortest spelling :func:`parse_days` reads back: ``Mon-Fri``, ``Sat-Mon``, ``Tue,Thu``."""
    if len(days) == 7:
        return "Mon-Sun"
    # Runs of consecutive days, begun at a day whose previous day is not in the set, so a run
    # that wraps the week (Sat-Mon) stays whole.
    runs = []
    for begin in sorted(d for d in days if (d - 1) % 7 not in days):
        length = 1
        while (begin + length) % 7 in days:
            length += 1
        runs.append((begin, (begin + length - 1) % 7))
    return ",".join(
        DAY_NAMES[begin] if begin == finish else f"{DAY_NAMES[begin]}-{DAY_NAMES[finish]}"
        for begin, finish in runs
    )
