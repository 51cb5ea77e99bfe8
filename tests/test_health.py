"""The API health state machine: edges, not levels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.tracking.events import EventType
from monitor.tracking.health import ApiHealth

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class TestApiHealth:
    """ApiHealth emits one event per edge."""

    @pytest.mark.parametrize(
        ("outcomes", "expected"),
        [
            ("ok ok ok", []),
            ("fail fail ok", []),
            ("fail fail fail", [EventType.MONITOR_API_DOWN]),
            (
                "fail fail fail fail fail fail ok ok",
                [EventType.MONITOR_API_DOWN, EventType.MONITOR_API_RECOVERED],
            ),
            (
                "fail fail fail ok fail fail fail ok",
                [EventType.MONITOR_API_DOWN, EventType.MONITOR_API_RECOVERED] * 2,
            ),
            ("fail fail ok fail fail ok", []),
        ],
    )
    def test_edges(self, outcomes: str, expected: list[EventType]) -> None:
        """A sequence of poll outcomes gives one down and one recovery per outage."""
        health = ApiHealth(down_after=3)
        events = []
        for minute, outcome in enumerate(outcomes.split()):
            now = T0 + timedelta(minutes=minute)
            event = health.success(now) if outcome == "ok" else health.failure(now, "HTTP 503")
            if event is not None:
                events.append(event.type)

        assert expected == events

    def test_down_says_why_and_up_reflects_last_cycle(self) -> None:
        """The down event carries the reason; ``up`` is the last cycle's outcome."""
        health = ApiHealth(down_after=1)

        assert not health.up
        event = health.failure(T0, "connection refused")
        assert event is not None
        assert "connection refused" in (event.message or "")
        assert not health.up
        health.success(T0 + timedelta(minutes=1))
        assert health.up
