"""The ``[maintenance]`` section: windows, the SuperOffice Online preset, and refusals by key."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from monitor.cli import EX_CONFIG, main
from monitor.config import parse_config
from monitor.config.maintenance import SUPEROFFICE_ONLINE, MaintenanceConfig
from monitor.windows import zone
from tests.config_helpers import EXAMPLE, minimal, problems, with_

WINDOW = {"days": "Mon-Fri", "start": "22:00", "end": "07:00", "time_zone": "Europe/Oslo"}
OSLO = zone("Europe/Oslo")


def _config(maintenance: dict[str, Any]) -> MaintenanceConfig:
    data = minimal() | {"maintenance": maintenance}
    return parse_config(data, base_dir=Path("/nonexistent")).maintenance


class TestWindows:
    def test_none_by_default(self) -> None:
        """No section: no windows."""
        assert [] == parse_config(minimal(), base_dir=Path("/")).maintenance.all_windows

    def test_entries(self) -> None:
        """Each entry is a window; a name defaults to the window itself."""
        config = _config(
            {
                "windows": [
                    WINDOW | {"name": "ERP import"},
                    {"days": "Sat-Sun", "time_zone": "UTC"},
                ]
            }
        )
        erp, weekend = config.all_windows
        assert ("ERP import", frozenset(range(5)), OSLO) == (erp.name, erp.days, erp.tz)
        assert "Sat-Sun UTC" == weekend.name
        assert weekend.active(datetime(2026, 12, 5, 23, 59, tzinfo=UTC))

    def test_example(self) -> None:
        """The shipped example's section loads."""
        section = tomllib.loads(EXAMPLE.read_text())["maintenance"]
        assert ["ERP import"] == [w.name for w in _config(section).all_windows]

    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            ("days", "Sa", "maintenance.windows[0].days: unknown day 'Sa' in 'Sa'"),
            ("days", "Mon-Mon", "maintenance.windows[0].days: day range 'Mon-Mon'"),
            ("start", "25:00", "maintenance.windows[0].start: time '25:00' is not HH:MM"),
            ("start", "24:00", "maintenance.windows[0].start: time '24:00' is not HH:MM"),
            ("end", "7", "maintenance.windows[0].end: time '7' is not HH:MM"),
            ("time_zone", "CEST", "maintenance.windows[0].time_zone: unknown time zone 'CEST'"),
            ("time_zone", "Europe", "maintenance.windows[0].time_zone: unknown time zone"),
            ("name", "", "maintenance.windows[0].name:"),
            ("nmae", "x", "maintenance.windows[0].nmae: unknown key (did you mean 'name'?)"),
        ],
    )
    def test_refused_by_key(self, key: str, value: str, expected: str) -> None:
        """A bad value is refused, naming the key."""
        found = problems(with_("maintenance.windows", [WINDOW | {key: value}]))
        assert [p for p in found if p.startswith(expected)], found

    def test_required_keys(self) -> None:
        """days and time_zone must be given."""
        found = problems(with_("maintenance.windows", [{"start": "01:00"}]))
        assert {
            "maintenance.windows[0].days: required, but not given",
            "maintenance.windows[0].time_zone: required, but not given",
        } == set(found)

    @pytest.mark.parametrize(
        ("preset", "names", "index"),
        [
            (False, ["Nightly", "Nightly"], 1),
            (True, ["SuperOffice Online patches"], 0),
        ],
    )
    def test_names_are_unique(self, preset: bool, names: list[str], index: int) -> None:
        """Two windows of one name would share a metric series: refused."""
        found = problems(
            with_(
                "maintenance",
                {
                    "superoffice_online": preset,
                    "windows": [WINDOW | {"name": name} for name in names],
                },
            )
        )
        assert [f"maintenance.windows[{index}].name: duplicate maintenance window name"] == [
            p[: p.index(" '")] for p in found
        ]

    def test_bad_config_exits_78(self, tmp_path: Path) -> None:
        """check-config refuses a bad window with EX_CONFIG, naming the key."""
        path = tmp_path / "batchmon.toml"
        path.write_text(
            '[superoffice]\nurl = "https://crm.example.com/api"\n'
            '[superoffice.auth]\ntype = "basic"\nusername = "u"\npassword = "p"\n'
            "[maintenance]\nsuperoffice_online = true\n"
            '[[maintenance.windows]]\ndays = "Sat"\nstart = "20:00"\nend = "6"\n'
            'time_zone = "Europe/Oslo"\n'
        )
        result = CliRunner().invoke(main, ["check-config", str(path)])
        assert EX_CONFIG == result.exit_code == 78
        assert "maintenance.windows[0].end: time '6' is not HH:MM" in result.stderr


def _oslo(*args: int) -> datetime:
    year, month, day, hour, minute = args
    return datetime(year, month, day, hour, minute, tzinfo=OSLO)


RECYCLE = "SuperOffice Online application pool recycle"
WEEKEND = "SuperOffice Online maintenance"

# Week of Monday 30 November 2026 (CET) and of Monday 22 June 2026 (CEST).
PRESET = [
    (_oslo(2026, 12, 2, 1, 30), ["SuperOffice Online application pool recycle"]),  # Wed night
    (_oslo(2026, 12, 2, 3, 0), []),
    (_oslo(2026, 12, 2, 0, 59), []),
    (_oslo(2026, 12, 3, 21, 59), []),  # Thursday, before the patches
    (_oslo(2026, 12, 3, 22, 0), ["SuperOffice Online patches"]),
    (
        _oslo(2026, 12, 4, 2, 0),
        ["SuperOffice Online application pool recycle", "SuperOffice Online patches"],
    ),
    (_oslo(2026, 12, 4, 6, 0), []),  # Friday morning: over
    (_oslo(2026, 12, 5, 20, 0), ["SuperOffice Online maintenance"]),  # Saturday evening
    (_oslo(2026, 12, 6, 5, 59), ["SuperOffice Online maintenance"]),  # Sunday morning
    (_oslo(2026, 12, 6, 6, 0), []),
    (_oslo(2026, 12, 1, 20, 30), []),  # Tuesday: the customer upgrades are not weekly
    # Summer: the same wall-clock times (CEST, UTC+2), not an hour off.
    (_oslo(2026, 6, 27, 20, 0), ["SuperOffice Online maintenance"]),
    (_oslo(2026, 6, 27, 19, 59), []),
    (datetime(2026, 6, 27, 18, 0, tzinfo=UTC), ["SuperOffice Online maintenance"]),
    (datetime(2026, 12, 5, 18, 59, tzinfo=UTC), []),  # 19:59 CET
    # The nights the clocks change (Saturday nights: inside the weekend window too): the
    # recycle window follows the wall clock.
    (datetime(2026, 3, 29, 0, 30, tzinfo=UTC), [RECYCLE, WEEKEND]),  # 01:30 CET
    (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), [WEEKEND]),  # 03:00 CEST: the jump ends it
    (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), [RECYCLE, WEEKEND]),  # 02:30 CEST
    (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), [RECYCLE, WEEKEND]),  # 02:30 CET, again
    (datetime(2026, 10, 25, 2, 0, tzinfo=UTC), [WEEKEND]),  # 03:00 CET
]


@pytest.mark.parametrize(("at", "expected"), PRESET)
def test_superoffice_online_preset(at: datetime, expected: list[str]) -> None:
    """The published windows, in Central European wall-clock time all year."""
    windows = _config({"superoffice_online": True}).all_windows
    assert [name for name, *_ in SUPEROFFICE_ONLINE] == [w.name for w in windows]
    assert expected == [w.name for w in windows if w.active(at)]


def test_the_readme_example_loads() -> None:
    """The example under "### Maintenance windows" loads as written: the preset and two windows."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Maintenance windows", 1)[1].split("\n### ", 1)[0]
    example = tomllib.loads(section.split("```toml\n", 1)[1].split("```", 1)[0])

    config = _config(example["maintenance"])

    assert config.superoffice_online
    assert ["ERP import", "Weekend"] == [window.name for window in config.windows]
