"""structlog set up once, at the edge (the CLI): JSON lines or short console lines.

Under systemd stdout goes to the journal, where one JSON object per line is
what log shippers want; each line starts with its syslog priority (``<4>`` for a
warning, sd-daemon(3)), so that ``journalctl -p warning`` finds the failures.
On a terminal people want one short line per happening: the time of day, the
event, the task and its state first; ids and changed fields only at ``debug``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog

from monitor.text import visible

__all__ = ["ConsoleLines", "configure_logging"]

#: Syslog priorities of the levels: the ``<N>`` prefix journald reads off a stdout line.
_PRIORITIES: Final = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
#: The level column of a console line, five characters wide.
_LEVEL_TAGS: Final = {"debug": "debug", "info": "info ", "warning": "warn ", "error": "error"}
_LEVEL_STYLES: Final = {"debug": "\x1b[2m", "warning": "\x1b[33m", "error": "\x1b[1;31m"}
_BOLD, _DIM, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"
#: Wide enough for every event type but ``monitor.api_recovered``.
_EVENT_WIDTH: Final = 18
#: Fields a console line shows in its own way, or not at all.
_OWN: Final = frozenset({"event", "level", "timestamp", "logger", "exception"})
#: The task and what it is doing: shown first, without their keys.
_TASK: Final = ("task_id", "task", "state", "progress")
#: Shown after the task, without their keys: the words a person reads.
_TEXT: Final = ("step", "result", "message")
#: Shown last, as the time of day: ``ETA 15:26:10``.
_ETA: Final = "eta"
#: Bookkeeping for machines and for debugging: on the console only at ``debug``.
_DEBUG_ONLY: Final = frozenset({"event_id", "changed", "id", "uuid"})


class ConsoleLines:
    """A structlog renderer: ``15:25:33 warn  task.failed        #217 Quote PDF · Failed 37 %``.

    Every string from outside (task names, API text, error messages) goes
    through :func:`~monitor.text.visible`, so no control character reaches the
    terminal.
    """

    def __init__(self, *, colors: bool, verbose: bool) -> None:
        self._colors = colors
        self._verbose = verbose

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> str:
        """The line for one log event (and its traceback, if any, on the lines after)."""
        level = str(event_dict.get("level", "info"))
        clock = str(event_dict.get("timestamp", ""))[11:19]
        event = visible(str(event_dict.get("event", "")))
        tag = _LEVEL_TAGS.get(level, level[:5].ljust(5))
        line = [
            self._paint(clock, _DIM),
            self._paint(tag, _LEVEL_STYLES.get(level, "")),
            self._paint(event.ljust(_EVENT_WIDTH), _BOLD),
        ]
        line.append(" · ".join(part for part in self._parts(event_dict) if part))
        text = " ".join(line).rstrip()
        exception = event_dict.get("exception")
        if exception:
            text += "\n" + visible(str(exception)).rstrip()
        return text

    def _parts(self, fields: Mapping[str, Any]) -> list[str]:
        """The task, its words, then every other field as ``key=value``."""
        task = []
        if "task_id" in fields:
            task.append(f"#{fields['task_id']}")
        if fields.get("task"):
            task.append(visible(str(fields["task"])))
        state = visible(str(fields.get("state") or ""))
        progress = fields.get("progress")
        if progress is not None and (progress or state == "Started"):
            state += f" {progress} %"
        words = [visible(str(fields[key])) for key in _TEXT if fields.get(key)]
        eta = fields.get(_ETA)
        if isinstance(eta, str) and len(eta) >= 19:
            words.append(f"ETA {visible(eta[11:19])}")
        shown = _OWN.union(_TASK, _TEXT, {_ETA})
        if not self._verbose:
            shown |= _DEBUG_ONLY
        rest = " ".join(
            f"{key}={_value(value)}" for key, value in fields.items() if key not in shown
        )
        return [" ".join(task), state.strip(), *words, rest]

    def _paint(self, text: str, style: str) -> str:
        return f"{style}{text}{_RESET}" if self._colors and style else text


def _value(value: object) -> str:
    """A field's value: strings as they are unless they need quotes, the rest as Python shows it."""
    if isinstance(value, str):
        return visible(value) if value and " " not in value else repr(value)
    return visible(repr(value)) if not isinstance(value, int | float) else str(value)


def journal_priority(renderer: structlog.processors.JSONRenderer) -> structlog.typing.Processor:
    """``renderer``'s line behind the level's syslog priority, ``<4>{"event": …}``."""

    def render(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        priority = _PRIORITIES.get(str(event_dict.get("level")), 6)
        line = renderer(logger, name, event_dict)
        return f"<{priority}>{line if isinstance(line, str) else line.decode()}"

    return render


def to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is systemd's journal stream (``$JOURNAL_STREAM``, systemd.exec(5))."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process.

    ``fmt`` is ``auto`` (console on a TTY, JSON otherwise), ``json`` or
    ``console``; ``level`` a standard level name.
    """
    out = stream if stream is not None else sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    threshold = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if console:
        shared.append(structlog.processors.format_exc_info)
        renderer = ConsoleLines(colors=out.isatty(), verbose=threshold <= logging.DEBUG)
    else:
        shared.append(structlog.processors.dict_tracebacks)
        json_lines = structlog.processors.JSONRenderer()
        renderer = journal_priority(json_lines) if to_journal(out) else json_lines
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
