"""The progress chart's geometry and markup, as tables."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import pytest

from monitor.chart import (
    Box,
    ChartInput,
    Scale,
    domain,
    path,
    progress_chart,
    projection,
    time_ticks,
)

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _parse(svg: str) -> ElementTree.Element:
    """The chart as XML: it must be well-formed to be inline SVG."""
    return ElementTree.fromstring(svg)


class TestGeometry:
    """Scales, ticks, paths and the ETA line."""

    @pytest.mark.parametrize(
        ("when", "percent", "expected"),
        [
            (_at(0), 0, (48.0, 226.0)),
            (_at(10), 100, (700.0, 16.0)),
            (_at(5), 50, (374.0, 121.0)),
            (_at(-5), 150, (48.0, 16.0)),  # clamped into the plot
            (_at(20), -10, (700.0, 226.0)),
        ],
    )
    def test_scale(self, when: datetime, percent: float, expected: tuple[float, float]) -> None:
        """Time left to right, percent bottom to top, inside the margins."""
        scale = Scale(_at(0), _at(10), Box())
        assert expected == (scale.x(when), scale.y(percent))

    @pytest.mark.parametrize(
        ("start", "end", "labels"),
        [
            (_at(0), _at(1), ["12:00:00", "12:00:15", "12:00:30", "12:00:45", "12:01:00"]),
            (_at(0.5), _at(30), ["12:10", "12:20", "12:30"]),
            (_at(3), _at(4 * 60), ["13:00", "14:00", "15:00", "16:00"]),
            (_at(0), _at(3 * 24 * 60), ["Nov 29", "Nov 30", "Dec 01"]),
        ],
    )
    def test_time_ticks(self, start: datetime, end: datetime, labels: list[str]) -> None:
        """Round times, at most six, labelled as precisely as their spacing needs."""
        assert labels == [label for _, label in time_ticks(start, end)]

    @pytest.mark.parametrize(
        ("points", "expected"),
        [
            ([], ""),
            ([(1, 2)], "M1.0 2.0"),
            ([(1, 2), (3.25, 4.75)], "M1.0 2.0L3.2 4.8"),
        ],
    )
    def test_path(self, points: list[tuple[float, float]], expected: str) -> None:
        """Move to the first point, lines to the rest, one decimal."""
        assert expected == path(points)

    @pytest.mark.parametrize(
        ("eta", "end", "expected_end"),
        [
            (_at(20), _at(30), (_at(20), 100.0)),  # inside: reaches 100 %
            (_at(30), _at(20), (_at(20), 70.0)),  # beyond: cut at the edge
            (_at(5), _at(30), (_at(10), 100.0)),  # an ETA already past: straight up
        ],
    )
    def test_projection(
        self, eta: datetime, end: datetime, expected_end: tuple[datetime, float]
    ) -> None:
        """From the last point to 100 % at the ETA, cut at the axis' end."""
        last = (_at(10), 40.0)
        assert (last, expected_end) == projection(last, eta, end)

    @pytest.mark.parametrize(
        ("chart", "expected"),
        [
            (ChartInput([(_at(0), 0)], now=_at(10)), (_at(0), _at(10))),
            (ChartInput([], now=_at(10)), (_at(10) - timedelta(seconds=10), _at(10))),
            # at least ten seconds
            (ChartInput([(_at(9.99), 0)], now=_at(10)), (_at(10) - timedelta(seconds=10), _at(10))),
            (ChartInput([(_at(0), 0)], now=_at(10), eta=_at(15)), (_at(0), _at(15))),
            (ChartInput([(_at(0), 0)], now=_at(10), eta=_at(90)), (_at(0), _at(20))),
            (ChartInput([(_at(0), 0)], now=_at(10), stall_at=_at(12)), (_at(0), _at(12))),
            (ChartInput([(_at(0), 0)], now=_at(10), stall_at=_at(4)), (_at(0), _at(10))),
        ],
    )
    def test_domain(self, chart: ChartInput, expected: tuple[datetime, datetime]) -> None:
        """The run so far, stretched for ETA and stall mark up to twice its length."""
        assert expected == domain(chart)


class TestMarkup:
    """The SVG element the page embeds."""

    def test_running_task(self) -> None:
        """Line through the samples and on to now, dashed to 100 % at the ETA, stall mark ahead."""
        samples = [(_at(m), 4 * m) for m in range(11)]
        svg = progress_chart(
            ChartInput(samples, now=_at(12), eta=_at(22), stall_at=_at(20), tone="Started")
        )
        root = _parse(svg)
        progress = root.find(f"{SVG}path[@class='progress']")
        eta = root.find(f"{SVG}path[@class='eta']")
        stall = root.find(f"{SVG}rect[@class='stall']")
        texts = [t.text for t in root.iter(f"{SVG}text")]

        assert progress is not None
        assert eta is not None
        assert stall is not None
        assert 12 == progress.get("d", "").count("L") + 1  # 11 samples and now
        assert eta.get("d", "").endswith(" 16.0")  # reaches the 100 % line
        assert "ETA 12:22" in texts
        assert "stall check 12:20" in texts
        assert "now" in texts
        assert 11 == len(list(root.iter(f"{SVG}circle")))

    def test_stalled_task(self) -> None:
        """A band from the stall threshold on, labelled stalled; no ETA."""
        svg = progress_chart(
            ChartInput([(_at(0), 10), (_at(2), 35)], now=_at(20), stall_at=_at(12), tone="stalled")
        )
        root = _parse(svg)
        stall = root.find(f"{SVG}rect[@class='stall']")

        assert stall is not None
        assert root.find(f"{SVG}path[@class='eta']") is None
        assert "stalled" in [t.text for t in root.iter(f"{SVG}text")]
        assert "#9a6700" == root.find(f"{SVG}path[@class='progress']").get("stroke")  # type: ignore[union-attr]
        # the band starts at 12 of 20 minutes
        assert pytest.approx(48 + 652 * 12 / 20, abs=0.1) == float(stall.get("x", ""))

    def test_far_marks_are_labelled_at_the_edge(self) -> None:
        """An ETA and a stall check beyond twice the run: cut at the edge, with their times."""
        svg = progress_chart(
            ChartInput([(_at(0), 0), (_at(10), 1)], now=_at(10), eta=_at(600), stall_at=_at(900))
        )
        texts = [t.text or "" for t in _parse(svg).iter(f"{SVG}text")]
        assert "ETA 2026-11-28 22:00 \u2192" in texts
        assert any(t.startswith("stall check") and t.endswith("\u2192") for t in texts)

    def test_200_samples_no_dots(self) -> None:
        """Many samples: one line, a dot only on the newest."""
        samples = [(_at(m), m // 2) for m in range(200)]
        root = _parse(progress_chart(ChartInput(samples, now=_at(199), tone="Failed")))
        progress = root.find(f"{SVG}path[@class='progress']")
        assert progress is not None
        assert 200 == len(re.findall(r"[ML]", progress.get("d", "")))
        assert 1 == len(list(root.iter(f"{SVG}circle")))
        assert "#cf222e" == progress.get("stroke")

    def test_no_samples(self) -> None:
        """A task that never reported progress says so."""
        root = _parse(progress_chart(ChartInput([], now=_at(5), tone="New")))
        assert "no progress reported yet" in [t.text for t in root.iter(f"{SVG}text")]

    def test_title_is_escaped(self) -> None:
        """API text in the title stays text."""
        svg = progress_chart(ChartInput([], now=_at(5), title='<script>"x" & y</script>'))
        root = _parse(svg)
        assert "<script>" not in svg
        assert '<script>"x" & y</script>' == root.get("aria-label")
        assert '<script>"x" & y</script>' == root.findtext(f"{SVG}title")
