"""Retry-After in both of its forms, and the nonsense servers send."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monitor.retry import MAX_RETRY_AFTER, parse_retry_after

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("3", 3.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("nan", None),
        ("1e9", MAX_RETRY_AFTER),
        ("Sat, 28 Nov 2026 12:00:30 GMT", 30.0),
        ("Sat, 28 Nov 2026 11:00:00 GMT", 0.0),
        ("Sat, 28 Nov 2026 12:00:30", None),
        ("soon", None),
        ("Sat, 99 Foo 2026", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Seconds or an HTTP-date give a bounded wait; anything else gives None."""
    assert expected == parse_retry_after(value, NOW)
