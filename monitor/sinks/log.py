"""The ``log`` sink: every event as one structlog event.

Rendering (short console lines on a TTY, JSON lines otherwise) is configured
once, in the CLI; this sink only chooses the fields and the level.  A tenant other
than the default one is a field of every line (``tenant=acme``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import structlog

from monitor.links import DEFAULT_TENANT, named_tenant
from monitor.text import without_surrogates
from monitor.tracking.events import KINDS, Event, EventType

__all__ = ["LEVELS", "LogSink"]

#: The level each event is logged at (``KINDS``).  What needs a person is a warning (an error
#: when the monitor itself cannot work), so ``journalctl -p warning`` lists exactly those;
#: recoveries and the ordinary course of a task are info.
LEVELS: Final[Mapping[EventType, int]] = MappingProxyType(
    {kind: row.level for kind, row in KINDS.items()}
)


class LogSink:
    """Writes events to the structured log (``batchmon.events``)."""

    default_rate = math.inf
    default_concurrency = 1

    def __init__(self, name: str = "log", *, tenant: str = DEFAULT_TENANT) -> None:
        self.name = name
        self._log = structlog.get_logger("batchmon.events")
        self._tenant = named_tenant(tenant)

    async def send(self, event: Event) -> None:
        """Log the event with its task's state, progress and name."""
        fields: dict[str, Any] = {} if self._tenant is None else {"tenant": self._tenant}
        task = event.task
        if task is not None:
            fields.update(
                task_id=task.id,
                task=task.name,
                state=task.state.value,
                progress=task.progress,
            )
            if task.progress_description and not task.state.is_terminal:
                fields["step"] = task.progress_description
            if task.state.is_terminal and task.result:
                fields["result"] = task.result
        if event.previous:
            fields["changed"] = event.to_dict()["previous"]
        if event.eta is not None:
            fields["eta"] = event.eta.isoformat(timespec="seconds")
        if event.message:
            fields["message"] = event.message
        fields["event_id"] = event.id
        # A lone surrogate would fail the console renderer's write to a UTF-8 terminal.
        self._log.log(
            LEVELS[event.type],
            event.type.value,
            **{key: without_surrogates(value) for key, value in fields.items()},
        )
