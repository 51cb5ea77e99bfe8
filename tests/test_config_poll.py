"""``[watch]`` and ``[poll]``: discovery rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import parse_config
from tests.config_helpers import (
    problems,
    with_,
)


class TestDiscovery:
    """``[[watch.discover]]`` rules."""

    def test_defaults_and_values(self) -> None:
        """A rule defaults to all associates, the active states and every 30 s."""
        config = parse_config(
            with_(
                "watch",
                {
                    "discover": [
                        {},
                        {
                            "associates": [-1],
                            "states": ["Failed"],
                            "name": "Export*",
                            "every": "5m",
                        },
                    ]
                },
            ),
            base_dir=Path("/nonexistent"),
        )
        default, custom = config.watch.discover

        assert ([], ["New", "Aquired", "Started"], None, 30.0) == (
            default.associates,
            default.states,
            default.name,
            default.every,
        )
        assert ([-1], ["Failed"], "Export*", 300.0) == (
            custom.associates,
            custom.states,
            custom.name,
            custom.every,
        )

    def test_states_are_kept_in_lifecycle_order(self) -> None:
        """Listed in the order tasks go through them, so a task moving on is in one list."""
        config = parse_config(
            with_(
                "watch",
                {"discover": [{"states": ["Failed", "Started", "New", "Started", "Aquired"]}]},
            ),
            base_dir=Path("/nonexistent"),
        )

        assert ["New", "Aquired", "Started", "Failed"] == config.watch.discover[0].states

    @pytest.mark.parametrize(
        ("rule", "expected"),
        [
            (
                {"states": ["Acquired"]},
                "watch.discover[0].states[0]: unknown state 'Acquired' (did you mean 'Aquired'?)",
            ),
            ({"states": ["All"]}, "watch.discover[0].states[0]: unknown state 'All'"),
            (
                {"states": []},
                "watch.discover[0].states: must not be empty; leave it out for New, Aquired and Started",
            ),
            ({"every": "0s"}, "watch.discover[0].every: must be greater than 0"),
            ({"tenant": "x"}, "watch.discover[0].tenant: unknown key"),
        ],
    )
    def test_refused(self, rule: dict[str, object], expected: str) -> None:
        """Misspelt states, empty lists and unknown keys are refused by path."""
        found = problems(with_("watch", {"discover": [rule]}))

        assert [expected] == [p for p in found if p.startswith("watch.")]


class TestStopStalledAfter:
    """``[poll] stop_stalled_after``: off unless given, a positive duration."""

    def test_off_by_default_and_read(self) -> None:
        """Absent: ``None``; given: seconds."""
        default = parse_config(with_("poll", {}), base_dir=Path("/nonexistent"))
        given = parse_config(
            with_("poll", {"stop_stalled_after": "1h30m"}), base_dir=Path("/nonexistent")
        )
        assert (None, 5400.0) == (default.poll.stop_stalled_after, given.poll.stop_stalled_after)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("0s", "poll.stop_stalled_after: must be greater than 0"),
            ("-5m", "poll.stop_stalled_after: a duration must not be negative, got '-5m'"),
            (True, "poll.stop_stalled_after: "),
        ],
    )
    def test_refused(self, value: object, expected: str) -> None:
        """Zero, negative and non-durations are refused by key."""
        found = problems(with_("poll", {"stop_stalled_after": value}))
        assert [p for p in found if p.startswith(expected)], found
