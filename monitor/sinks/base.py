"""What a sink is, and which events it wants.

A sink delivers one event to one destination.  It raises
:class:`DeliveryError` when the destination refused or could not be reached;
the dispatcher decides what happens next.  Routing is data (:class:`Route`):
event types, task ids and task-name globs, all optional.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from monitor.tracking.events import Event

__all__ = ["DeliveryError", "Route"]


class DeliveryError(Exception):
    """The destination did not take the event.

    ``permanent`` means retrying is pointless (a 4xx other than 429);
    ``retry_after`` is the destination's own word on when to try again
    (``Retry-After``, Discord's ``retry_after``), in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True, slots=True)
class Route:
    """Which events a sink receives; ``None`` means no restriction."""

    #: Event type names or globs (``task.*``).
    events: Sequence[str] | None = None
    #: Task-name globs, case-sensitive (``Export*``).
    names: Sequence[str] | None = None
    #: Task ids.
    ids: Sequence[int] | None = None

    def matches(self, event: Event) -> bool:
        """Whether the sink wants this event.

        Task filters (``names``, ``ids``) apply to task events only: a sink
        filtered to some tasks still hears that the API is down.
        """
        if self.events is not None and not any(
            fnmatchcase(event.type.value, pattern) for pattern in self.events
        ):
            return False
        task = event.task
        if task is None:
            return True
        if self.ids is not None and task.id not in self.ids:
            return False
        return self.names is None or any(
            fnmatchcase(task.name or "", pattern) for pattern in self.names
        )
