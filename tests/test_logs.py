"""What the log shows: levels per event type, journal priorities, short console lines."""

from __future__ import annotations

import io
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from monitor.logs import configure_logging
from monitor.sinks.log import LEVELS, LogSink
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import Event, EventType
from tests.conftest import make_task_event

EVIL = "evil\x1b]0;TITLE\x07\x1b[2J\x1b[31mRED\x1b]52;c;SGVsbG8=\x07"

#: (event type, level it is logged at): what needs a person is a warning or an error.
LOUDNESS = [
    (EventType.TASK_FAILED, "warning"),
    (EventType.TASK_STALLED, "warning"),
    (EventType.TASK_GONE, "warning"),
    (EventType.MONITOR_API_DOWN, "error"),
    (EventType.MONITOR_AUTH_FAILED, "error"),
    (EventType.TASK_RESUMED, "info"),
    (EventType.MONITOR_API_RECOVERED, "info"),
    (EventType.TASK_SUCCEEDED, "info"),
    (EventType.TASK_DISCOVERED, "info"),
    (EventType.TASK_STARTED, "info"),
    (EventType.TASK_PROGRESS, "info"),
]


def _event(kind: EventType, **task: Any) -> Event:
    state = BatchTaskState.FAILED if kind is EventType.TASK_FAILED else BatchTaskState.STARTED
    return make_task_event(kind, **{"state": state, **task})


async def _log(event: Event, fmt: str, level: str = "info") -> str:
    stream = io.StringIO()
    configure_logging(fmt, level, stream)
    await LogSink().send(event)
    return stream.getvalue()


class TestLevels:
    """``journalctl -p warning`` shows failures, stalls, lost tasks and outages."""

    def test_every_event_type_has_a_level(self) -> None:
        """The table covers every event type: none falls back to a default."""
        assert set(EventType) == set(LEVELS)

    @pytest.mark.parametrize(("kind", "level"), LOUDNESS)
    async def test_level_of_each_type(self, kind: EventType, level: str) -> None:
        """Each event's JSON line carries its level."""
        [line] = (await _log(_event(kind), "json")).splitlines()

        assert (kind.value, level) == (json.loads(line)["event"], json.loads(line)["level"])

    @pytest.mark.parametrize(
        ("kind", "priority"),
        [
            (EventType.TASK_FAILED, "<4>"),
            (EventType.MONITOR_API_DOWN, "<3>"),
            (EventType.TASK_RESUMED, "<6>"),
        ],
    )
    async def test_journal_lines_carry_their_priority(
        self, kind: EventType, priority: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On systemd's journal stream each JSON line starts with its syslog priority."""
        path = tmp_path / "journal"
        with path.open("w") as stream:
            status = os.fstat(stream.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
            configure_logging("json", "info", stream)
            await LogSink().send(_event(kind))
        line = path.read_text()

        assert line.startswith(priority + "{")
        assert kind.value == json.loads(line.removeprefix(priority))["event"]

    async def test_no_priority_elsewhere(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A pipe or a file that is not the journal gets bare JSON lines."""
        monkeypatch.setenv("JOURNAL_STREAM", "1:1")

        assert (await _log(_event(EventType.TASK_FAILED), "json")).startswith("{")


class TestConsole:
    """A line a person reads: time of day, event, task and state first."""

    async def test_short_line_with_task_and_state_first(self) -> None:
        """``HH:MM:SS warn  task.failed  #212 Export · Failed 40 % · …``, no ids or changes."""
        event = _event(EventType.TASK_FAILED)
        [line] = (await _log(event, "console")).splitlines()

        assert re.fullmatch(
            r"\d\d:\d\d:\d\d warn  task\.failed +#212 Export · Failed 40 %"
            r" · Timeout while writing the file",
            line,
        ), line
        assert event.id not in line

    async def test_running_task_with_its_step_and_eta(self) -> None:
        """A running task shows its step and the ETA as a time of day; a queued one no 0 %."""
        running = make_task_event(
            EventType.TASK_PROGRESS,
            state=BatchTaskState.STARTED,
            result=None,
            eta=datetime(2026, 11, 28, 12, 30, tzinfo=UTC),
        )
        queued = make_task_event(
            EventType.TASK_DISCOVERED, state=BatchTaskState.NEW, progress=0, result=None
        )
        [progress] = (await _log(running, "console")).splitlines()
        [discovered] = (await _log(queued, "console")).splitlines()

        assert progress.endswith("#212 Export · Started 40 % · Exporting contacts · ETA 12:30:00")
        assert discovered.endswith("#212 Export · New · Exporting contacts")

    async def test_ids_and_changes_at_debug(self) -> None:
        """At debug the event id and the changed fields follow."""
        event = make_task_event(EventType.TASK_PROGRESS, state=BatchTaskState.STARTED)
        event = Event(event.id, event.type, event.time, event.task, {"progress": 30})
        text = await _log(event, "console", "debug")

        assert f"event_id={event.id}" in text
        assert "changed={'progress': 30}" in text

    async def test_control_characters_are_shown_not_obeyed(self) -> None:
        """A task name full of terminal escapes reaches the console as visible text."""
        text = await _log(_event(EventType.TASK_FAILED, name=EVIL, result=EVIL), "console")

        assert "\x1b" not in text
        assert "\x07" not in text
        assert r"evil\x1b]0;TITLE\x07\x1b[2J" in text

    def test_other_log_lines(self) -> None:
        """Lines that are not events show their fields as key=value, escapes made visible."""
        stream = io.StringIO()
        configure_logging("console", "info", stream)
        structlog.get_logger("t").warning("poll_failed", error="refused \x1b[2J", attempt=3)

        assert re.fullmatch(
            r"\d\d:\d\d:\d\d warn  poll_failed +error='refused \\x1b\[2J' attempt=3\n",
            stream.getvalue(),
        )
