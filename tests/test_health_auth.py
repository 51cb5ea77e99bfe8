"""Rejected credentials and the outage clock of the API health state machine.

Refused credentials are their own edge: the API answers, so they never count
towards ``api_down``, and the event comes once until a cycle succeeds again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.tracking.events import Event, EventType
from monitor.tracking.health import ApiHealth

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _cycle(health: ApiHealth, outcome: str, now: datetime) -> Event | None:
    if outcome == "ok":
        return health.success(now)
    if outcome == "auth":
        return health.auth_failure(now, "HTTP 401")
    return health.failure(now, "HTTP 503")


@pytest.mark.parametrize(
    ("outcomes", "expected", "up"),
    [
        ("auth", [EventType.MONITOR_AUTH_FAILED], False),
        ("auth auth auth auth", [EventType.MONITOR_AUTH_FAILED], False),
        ("ok auth", [EventType.MONITOR_AUTH_FAILED], False),
        ("auth ok", [EventType.MONITOR_AUTH_FAILED], True),
        ("auth ok auth", [EventType.MONITOR_AUTH_FAILED] * 2, False),
        # not an outage: two refusals between two failures leave the count at two
        ("fail auth auth fail", [EventType.MONITOR_AUTH_FAILED], False),
        ("fail fail fail auth", [EventType.MONITOR_API_DOWN, EventType.MONITOR_AUTH_FAILED], False),
    ],
)
def test_auth_edges(outcomes: str, expected: list[EventType], up: bool) -> None:
    """One event per refusal spell; ``up`` only after a cycle that succeeded."""
    health = ApiHealth(down_after=3)
    events = []
    for minute, outcome in enumerate(outcomes.split()):
        event = _cycle(health, outcome, T0 + timedelta(minutes=minute))
        if event is not None:
            events.append(event.type)

    assert (expected, up) == (events, health.up)


def test_auth_failure_says_why() -> None:
    """The event and ``last_error`` carry the refusal."""
    health = ApiHealth(down_after=3)

    event = health.auth_failure(T0, "HTTP 401 invalid_client")

    assert event is not None
    assert "invalid_client" in (event.message or "")
    assert "HTTP 401 invalid_client" == health.last_error


def test_down_since_lasts_while_down() -> None:
    """``down_since`` is the down edge's time until the recovery, which names it."""
    health = ApiHealth(down_after=2)
    assert health.down_since is None

    health.failure(T0, "HTTP 503")
    assert health.down_since is None
    health.failure(T0 + timedelta(minutes=1), "HTTP 503")
    health.failure(T0 + timedelta(minutes=2), "HTTP 503")
    assert T0 + timedelta(minutes=1) == health.down_since

    recovered = health.success(T0 + timedelta(minutes=3))
    assert recovered is not None
    assert "the SuperOffice API answers again (down since 2026-11-28 12:01:00Z)" == (
        recovered.message
    )
    assert health.down_since is None
