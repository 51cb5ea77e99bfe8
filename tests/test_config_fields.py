"""Single fields of every section refuse what would fail later, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import parse_config
from tests.config_helpers import (
    problems,
    with_,
)


class TestFields:
    """Single fields refuse what would fail later, saying why."""

    @pytest.mark.parametrize(
        ("path", "value", "expected"),
        [
            ("superoffice.url", "ftp://x/api", "expected an http(s) URL with a host"),
            ("superoffice.url", "https:///api", "expected an http(s) URL with a host"),
            ("superoffice.url", "crm.example.com", "expected an http(s) URL with a host"),
            ("superoffice.url", "https://u:p@crm/api", "must not contain credentials"),
            ("superoffice.url", "https://crm/api?x=1", "without '?' or '#'"),
            ("superoffice.url", "https://crm:99999/api", "invalid port"),
            ("superoffice.tenant_time_zone", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
            ("superoffice.timeout", 0, "must be greater than 0, got 0"),
            ("superoffice.max_concurrency", 0, "must be greater than or equal to 1, got 0"),
            ("superoffice.max_concurrency", "4", "expected an integer, got a string"),
            ("superoffice.max_concurrency", True, "expected an integer, got a boolean"),
            ("superoffice.max_requests_per_second", 0, "must be greater than 0, got 0"),
            ("superoffice.max_requests_per_second", float("inf"), "finite"),
            ("watch.ids", [0], "[0]: must be greater than 0, got 0"),
            ("watch.ids", 212, "expected an array, got an integer"),
            ("poll.progress_step", 101, "must be less than or equal to 100, got 101"),
            ("poll.api_down_after", 0, "must be greater than or equal to 1, got 0"),
            ("poll.jitter", -0.1, "must be greater than or equal to 0, got -0.1"),
            ("state.path", "", "must not be empty"),
            ("log.format", "fancy", "must be 'auto', 'json' or 'console', got 'fancy'"),
        ],
    )
    def test_refused(self, path: str, value: object, expected: str) -> None:
        """The problem is reported at the field's path."""
        (problem,) = problems(with_(path, value))

        assert problem.startswith(path)
        assert expected in problem

    @pytest.mark.parametrize(
        ("poll", "expected"),
        [
            ({"interval": "2m"}, "poll.interval: must not be longer than poll.idle_interval"),
            ({"interval": 0}, "poll.interval: must be greater than 0, got 0"),
            ({"idle_interval": "1s"}, "poll.interval: must not be longer than poll.idle_interval"),
        ],
    )
    def test_poll_intervals(self, poll: dict[str, object], expected: str) -> None:
        """Active tasks are polled at a positive interval, at least as often as idle ones."""
        (problem,) = problems(with_("poll", poll))

        assert problem.startswith(expected)

    def test_poll_intervals_equal(self) -> None:
        """interval may equal idle_interval."""
        config = parse_config(
            with_("poll", {"interval": 10, "idle_interval": "10s"}), base_dir=Path()
        )

        assert config.poll.interval == config.poll.idle_interval

    def test_missing_section(self) -> None:
        """[superoffice] is required."""
        assert problems({}) == [
            "superoffice: required, but not given (or give [[tenants]] entries)"
        ]
