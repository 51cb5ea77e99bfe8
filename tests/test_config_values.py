"""Durations and the other value types of the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import (
    parse_config,
    parse_duration,
)
from tests.config_helpers import (
    problems,
    with_,
)


class TestParseDuration:
    """parse_duration reads seconds and unit strings and refuses everything else."""

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            (90, 90.0),
            (1.5, 1.5),
            (0, 0.0),
            ("90", 90.0),
            ("1.5", 1.5),
            ("90s", 90.0),
            ("5m", 300.0),
            ("1h30m", 5400.0),
            ("250ms", 0.25),
            ("2h", 7200.0),
            ("1d", 86400.0),
            ("1m30s", 90.0),
            ("1.5h", 5400.0),
            ("1h0m0s500ms", 3600.5),
            (" 5m ", 300.0),
        ],
    )
    def test_valid(self, value: object, seconds: float) -> None:
        """Each accepted form gives its number of seconds."""
        assert parse_duration(value) == seconds

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("", "expected a duration like '90s', '5m' or '1h30m', got ''"),
            ("5x", "got '5x'"),
            ("soon", "expected a duration like '90s', '5m' or '1h30m', got 'soon'"),
            ("30m1h", "got '30m1h'"),
            ("5 m", "got '5 m'"),
            ("1h1h", "got '1h1h'"),
            ("m", "got 'm'"),
            (-1, "must not be negative, got -1"),
            (-0.5, "must not be negative, got -0.5"),
            ("-5m", "must not be negative, got '-5m'"),
            (True, "got true"),
            (False, "got false"),
            (None, "got None"),
            ([5], "got an array"),
            (float("inf"), "must be finite"),
            (float("nan"), "must be finite"),
        ],
    )
    def test_invalid(self, value: object, message: str) -> None:
        """Each refused value gives a ValueError that says what was expected."""
        with pytest.raises(ValueError, match="duration") as info:
            parse_duration(value)
        assert message in str(info.value)

    def test_in_a_section(self) -> None:
        """A Duration field in the configuration accepts the same forms."""
        config = parse_config(with_("poll", {"interval": "1m", "stall_after": 90}), base_dir=Path())
        assert (config.poll.interval, config.poll.stall_after) == (60.0, 90.0)

    def test_error_in_a_section(self) -> None:
        """A bad duration is reported by path, without pydantic's prefix."""
        assert problems(with_("poll", {"stall_after": "soon"})) == [
            "poll.stall_after: expected a duration like '90s', '5m' or '1h30m', got 'soon'"
        ]
