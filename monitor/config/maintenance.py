"""The ``[maintenance]`` section: when API outages and stalls are expected, not alarming.

TOML cannot hold both a ``[maintenance]`` table and a ``[[maintenance]]`` array, so the
windows are ``[[maintenance.windows]]`` entries beside the preset's switch::

    [maintenance]
    superoffice_online = true      # the windows SuperOffice Online publishes

    [[maintenance.windows]]
    name = "ERP import"
    days = "Mon-Fri"               # Sat, Mon-Fri, Fri-Mon, Mon,Thu
    start = "22:00"
    end = "07:00"                  # at or before start: the next day
    time_zone = "Europe/Oslo"

The published windows are in "CET (UTC+1 in winter)": Central European wall-clock time,
which moves to CEST (UTC+2) in summer, so the preset uses the IANA zone ``CET`` (the rules
of Europe/Berlin and Europe/Oslo), not a fixed UTC+1 that would be an hour off all summer.
"""

# ruff: noqa: RUF012 - pydantic copies mutable defaults (see config/poll.py)

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field, field_validator, model_validator

from monitor.config.base import _Section
from monitor.config.errors import _invalid, _problem
from monitor.windows import Window, parse_days, parse_time, zone

__all__ = ["SUPEROFFICE_ONLINE", "MaintenanceConfig", "MaintenanceWindow"]

#: SuperOffice Online's published weekly windows (docs: getting-started/app-envir.mdx).  The
#: customer upgrades (some Tuesdays and Fridays, every third week, 20:00 up to 05:00) are not
#: weekly: the tenant state (OnlineMaintenance, OfflineMaintenance) covers them.
SUPEROFFICE_ONLINE: Final = (
    ("SuperOffice Online application pool recycle", "Mon-Sun", "01:00", "03:00"),
    ("SuperOffice Online maintenance", "Sat", "20:00", "06:00"),
    ("SuperOffice Online patches", "Thu", "22:00", "06:00"),
)
#: The zone the published windows are given in (see the module docstring).
SUPEROFFICE_ONLINE_ZONE: Final = "CET"


class MaintenanceWindow(_Section):
    """One ``[[maintenance.windows]]`` entry: a weekly span of wall-clock time."""

    #: Shown in events, metrics and the status page; ``days start-end`` when not given.
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    #: The weekdays the window starts on: ``Sat``, ``Mon-Fri``, ``Fri-Mon``, ``Mon,Thu``.
    days: str
    #: ``HH:MM``; the window covers whole days when both start and end are left out.
    start: str = "00:00"
    #: ``HH:MM`` (``24:00`` allowed); at or before ``start``: the next day.
    end: str = "00:00"
    #: The IANA zone of ``start`` and ``end``, e.g. ``Europe/Oslo``.
    time_zone: str

    @field_validator("days")
    @classmethod
    def _days(cls, days: str) -> str:
        parse_days(days)
        return days

    @field_validator("start")
    @classmethod
    def _start(cls, start: str) -> str:
        parse_time(start)
        return start

    @field_validator("end")
    @classmethod
    def _end(cls, end: str) -> str:
        parse_time(end, end=True)
        return end

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, name: str) -> str:
        zone(name)
        return name

    @property
    def window(self) -> Window:
        """The :class:`~monitor.windows.Window` this entry describes."""
        return _window(self.name, self.days, self.start, self.end, self.time_zone)


class MaintenanceConfig(_Section):
    """Maintenance windows: ``api_down`` and stalls are recorded, not sent to people."""

    #: Adds :data:`SUPEROFFICE_ONLINE`'s windows.
    superoffice_online: bool = False
    #: ``[[maintenance.windows]]`` entries.
    windows: list[MaintenanceWindow] = []

    @model_validator(mode="after")
    def _named_uniquely(self) -> MaintenanceConfig:
        """A name labels a metric series: two windows must not share one."""
        seen = {name for name, *_ in SUPEROFFICE_ONLINE} if self.superoffice_online else set()
        problems = []
        for index, entry in enumerate(self.windows):
            name = entry.window.name
            if name in seen:
                message = f"duplicate maintenance window name {name!r}"
                problems.append(_problem(("windows", index, "name"), message))
            seen.add(name)
        if problems:
            raise _invalid(type(self).__name__, problems)
        return self

    @property
    def all_windows(self) -> list[Window]:
        """The configured windows, the preset's first."""
        preset = SUPEROFFICE_ONLINE if self.superoffice_online else ()
        return [
            _window(name, days, start, end, SUPEROFFICE_ONLINE_ZONE)
            for name, days, start, end in preset
        ] + [entry.window for entry in self.windows]


def _window(name: str | None, days: str, start: str, end: str, time_zone: str) -> Window:
    window = Window(parse_days(days), parse_time(start), parse_time(end, end=True), zone(time_zone))
    return Window(window.days, window.start, window.end, window.tz, name or window.description)
