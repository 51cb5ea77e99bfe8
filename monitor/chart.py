"""A task's progress over time as inline SVG: the geometry and the markup, nothing else.

The task page draws it server-side (no JavaScript, no assets: the page's CSP
allows neither).  What a person must see at a glance:

- the run so far, a solid line through the samples, held flat up to now;
- where it is heading: a dashed line from now to 100 % at the ETA;
- when the stall check flags it: a dashed line at ``last change + stall_after``
  and a shaded band after it (the task is stalled once now is inside it).

Future marks stretch the time axis to at most twice the run so far; one
further out is drawn to the edge and labelled with its time.  Pure: every
time comes in as an argument, and every text is escaped here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

__all__ = [
    "Box",
    "ChartInput",
    "Scale",
    "domain",
    "path",
    "progress_chart",
    "projection",
    "time_ticks",
]

#: Tick spacings the time axis chooses from, shortest first.
TICK_STEPS: tuple[timedelta, ...] = tuple(
    timedelta(seconds=s)
    for s in (
        1, 2, 5, 10, 15, 30,
        60, 120, 300, 600, 900, 1800,
        3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600,
        86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400,
    )
)  # fmt: skip
#: The shortest time axis: a run of a few seconds still gets a readable chart.
MIN_SPAN = timedelta(seconds=10)
#: Colours by tone, as the status page uses them.
COLOURS = {
    "Started": "#1f6feb",
    "New": "#8250df",
    "Aquired": "#8250df",
    "Succeeded": "#1a7f37",
    "SucceededManualCleanup": "#1a7f37",
    "Failed": "#cf222e",
    "stalled": "#9a6700",
}
_GREY = "#6e7781"
_GRID = "#e3e6ec"
_AMBER = "#9a6700"
#: Individual samples get a dot while there are at most this many.
_DOTS_UP_TO = 40


@dataclass(frozen=True, slots=True)
class Box:
    """The chart's size and the plot area inside it, in SVG units."""

    width: float = 720
    height: float = 260
    left: float = 48
    right: float = 20
    top: float = 16
    bottom: float = 34

    @property
    def plot_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> float:
        return self.height - self.top - self.bottom


@dataclass(frozen=True, slots=True)
class Scale:
    """Maps (time, percent) into the plot area of a box."""

    start: datetime
    end: datetime
    box: Box = Box()

    def x(self, when: datetime) -> float:
        span = (self.end - self.start).total_seconds()
        share = (when - self.start).total_seconds() / span if span > 0 else 0.0
        return self.box.left + min(max(share, 0.0), 1.0) * self.box.plot_width

    def y(self, percent: float) -> float:
        share = min(max(percent, 0.0), 100.0) / 100
        return self.box.top + (1 - share) * self.box.plot_height


@dataclass(frozen=True, slots=True)
class ChartInput:
    """What the chart shows of one task."""

    #: (time, percent) samples of the current run, oldest first.
    samples: Sequence[tuple[datetime, int]]
    #: Where the observed line ends: now for an active task, when it finished otherwise.
    now: datetime
    #: The completion estimate (active tasks only).
    eta: datetime | None = None
    #: When the stall check flags the task: last change + ``stall_after`` (active tasks only).
    stall_at: datetime | None = None
    #: The colour of the line: a state name, or ``stalled``.
    tone: str = "Started"
    #: The chart's accessible name (may be API text: it is escaped).
    title: str = "Progress over time"
    #: Written at the line's end, e.g. ``Failed 09:11`` for a finished task.
    end_label: str | None = None


def domain(chart: ChartInput) -> tuple[datetime, datetime]:
    """The time axis: from the first sample to now, stretched for ETA and stall mark.

    At least :data:`MIN_SPAN` wide (reaching back before the first sample);
    stretched to at most twice the run so far.
    """
    start = chart.samples[0][0] if chart.samples else chart.now - MIN_SPAN
    start = min(start, chart.now - MIN_SPAN)
    end = chart.now
    horizon = chart.now + (chart.now - start)
    for mark in (chart.eta, chart.stall_at):
        if mark is not None and mark > end:
            end = min(mark, horizon)
    return start, end


def time_ticks(start: datetime, end: datetime, most: int = 6) -> list[tuple[datetime, str]]:
    """Round times between ``start`` and ``end`` (at most ``most``), with their labels."""
    span = end - start
    step = next((s for s in TICK_STEPS if span / s <= most - 1), TICK_STEPS[-1])
    seconds = int(step.total_seconds())
    epoch = int(start.timestamp())
    first = datetime.fromtimestamp(epoch + (-epoch % seconds), UTC)
    if step < timedelta(minutes=1):
        fmt = "%H:%M:%S"
    elif step < timedelta(days=1):
        fmt = "%H:%M"
    else:
        fmt = "%b %d"
    ticks = []
    when = first
    while when <= end:
        ticks.append((when, when.strftime(fmt)))
        when += step
    return ticks


def path(points: Sequence[tuple[float, float]]) -> str:
    """An SVG path through ``points``: ``M x y L x y …`` with one decimal."""
    return "".join(f"{'M' if i == 0 else 'L'}{x:.1f} {y:.1f}" for i, (x, y) in enumerate(points))


def projection(
    last: tuple[datetime, float], eta: datetime, end: datetime
) -> tuple[tuple[datetime, float], tuple[datetime, float]]:
    """The straight line from ``last`` to 100 % at ``eta``, cut at ``end``."""
    start, percent = last
    if eta <= end or eta <= start:
        return last, (max(eta, start), 100.0)
    share = (end - start) / (eta - start)
    return last, (end, percent + (100.0 - percent) * share)


def _text(x: float, y: float, text: str, *, anchor: str = "middle", fill: str = _GREY) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}" '
        f'font-size="11">{escape(text)}</text>'
    )


def _vline(x: float, box: Box, colour: str, *, dashed: bool) -> str:
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return (
        f'<line x1="{x:.1f}" y1="{box.top:.1f}" x2="{x:.1f}" '
        f'y2="{box.top + box.plot_height:.1f}" stroke="{colour}"{dash}/>'
    )


def _label_time(when: datetime, span: timedelta) -> str:
    return when.strftime("%H:%M:%S" if span < timedelta(minutes=10) else "%H:%M")


def _axes(scale: Scale) -> list[str]:
    box = scale.box
    parts = []
    for percent in (0, 25, 50, 75, 100):
        y = scale.y(percent)
        parts.append(
            f'<line x1="{box.left:.1f}" y1="{y:.1f}" x2="{box.left + box.plot_width:.1f}" '
            f'y2="{y:.1f}" stroke="{_GRID}"/>'
        )
        parts.append(_text(box.left - 6, y + 4, f"{percent} %", anchor="end"))
    bottom = box.top + box.plot_height
    for when, label in time_ticks(scale.start, scale.end, most=max(3, int(box.plot_width // 100))):
        x = scale.x(when)
        parts.append(
            f'<line x1="{x:.1f}" y1="{bottom:.1f}" x2="{x:.1f}" y2="{bottom + 4:.1f}" '
            f'stroke="{_GREY}"/>'
        )
        parts.append(_text(x, bottom + 17, label))
    return parts


def _stall(chart: ChartInput, scale: Scale) -> list[str]:
    """The stall threshold: a dashed line and a band after it, or a note at the edge."""
    if chart.stall_at is None:
        return []
    box = scale.box
    span = scale.end - scale.start
    stalled = chart.stall_at <= chart.now
    label = "stalled" if stalled else f"stall check {_label_time(chart.stall_at, span)}"
    if chart.stall_at > scale.end:
        edge = box.left + box.plot_width
        return [_text(edge, box.top + 12, f"{label} \u2192", anchor="end", fill=_AMBER)]
    x = scale.x(max(chart.stall_at, scale.start))
    band = (
        f'<rect class="stall" x="{x:.1f}" y="{box.top:.1f}" '
        f'width="{box.left + box.plot_width - x:.1f}" height="{box.plot_height:.1f}" '
        f'fill="{_AMBER}" fill-opacity="0.12"/>'
    )
    anchor = "end" if x > box.left + box.plot_width * 0.8 else "start"
    offset = -4 if anchor == "end" else 4
    return [
        band,
        _vline(x, box, _AMBER, dashed=True),
        _text(x + offset, box.top + 12, label, anchor=anchor, fill=_AMBER),
    ]


def _eta(chart: ChartInput, scale: Scale, last: tuple[datetime, float]) -> list[str]:
    """The dashed projection to 100 % at the ETA."""
    if chart.eta is None:
        return []
    begin, finish = projection(last, chart.eta, scale.end)
    colour = COLOURS.get(chart.tone, _GREY)
    line = (
        f'<path class="eta" d="{path([(scale.x(begin[0]), scale.y(begin[1])), (scale.x(finish[0]), scale.y(finish[1]))])}" '
        f'fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="6 4"/>'
    )
    clipped = finish[1] < 100.0
    when = (
        chart.eta.strftime("%Y-%m-%d %H:%M")
        if clipped
        else _label_time(chart.eta, scale.end - scale.start)
    )
    label = f"ETA {when}" + (" \u2192" if clipped else "")
    x, y = scale.x(finish[0]), scale.y(finish[1])
    return [line, _text(x - 4, y - 6 if not clipped else y + 14, label, anchor="end", fill=colour)]


def progress_chart(chart: ChartInput, box: Box = Box()) -> str:
    """The whole chart as one ``<svg>`` element."""
    start, end = domain(chart)
    scale = Scale(start, end, box)
    colour = COLOURS.get(chart.tone, _GREY)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {box.width:g} '
        f'{box.height:g}" role="img" aria-label="{escape(chart.title)}">'
    )
    parts = [
        svg,
        f"<title>{escape(chart.title)}</title>",
        *_axes(scale),
        *_stall(chart, scale),
    ]
    if end > chart.now:
        x = scale.x(chart.now)
        parts += [_vline(x, box, _GREY, dashed=False), _text(x, box.top - 4, "now")]
    if not chart.samples:
        parts.append(
            _text(
                box.left + box.plot_width / 2,
                box.top + box.plot_height / 2,
                "no progress reported yet",
            )
        )
        parts.append("</svg>")
        return "".join(parts)
    points = [(when, float(percent)) for when, percent in chart.samples]
    if points[-1][0] < chart.now:
        points.append((chart.now, points[-1][1]))
    parts.extend(_eta(chart, scale, points[-1]))
    parts.append(
        f'<path class="progress" d="{path([(scale.x(t), scale.y(p)) for t, p in points])}" '
        f'fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>'
    )
    dots = chart.samples if len(chart.samples) <= _DOTS_UP_TO else chart.samples[-1:]
    parts.extend(
        f'<circle cx="{scale.x(t):.1f}" cy="{scale.y(p):.1f}" r="3" fill="{colour}"/>'
        for t, p in dots
    )
    if chart.end_label:
        x, y = scale.x(points[-1][0]), scale.y(points[-1][1])
        below = y < box.top + 20
        parts.append(
            _text(x - 4, y + 16 if below else y - 8, chart.end_label, anchor="end", fill=colour)
        )
    parts.append("</svg>")
    return "".join(parts)
