"""``StopBatchJob`` in the simulator: which tasks stop, when, and the requests as they came.

A stop asked for a task that may be stopped (not ``CannotCancel``) and is queued or
running is answered ``true`` and takes effect ``delay`` later, as the batch service
notices it: the task then shows ``Failed`` with a "stopped" result for the rest of
that run, whatever the scenario would have it do.  Every other stop is answered
``false``.  The requests are kept whole (:class:`RecordedRequest`) so that a test can
check one against SuperOffice's OpenAPI description.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from monitor.simulator.tasks import SimTask
from monitor.superoffice.models import BatchTaskState, CancellationBehaviour

__all__ = ["STOPPED_RESULT", "PendingStop", "RecordedRequest", "accept_stop", "apply_stops"]

#: The ``Result`` of a stopped task.
STOPPED_RESULT = "Stopped: the batch job was stopped by a StopBatchJob request"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class PendingStop:
    """A stop answered ``true``: effective from ``at``, for the run it was asked in."""

    at: datetime
    start_count: int
    #: Whether it took effect (the task was still queued or running at ``at``).
    applied: bool = False
    #: Where the task's progress stood then: a stopped task moves no further.
    progress: int = 0


def accept_stop(task: SimTask) -> bool:
    """Whether ``StopBatchJob`` stops this task (its answer)."""
    return (
        not task.deleted
        and task.state.is_active
        and task.cancellation is not CancellationBehaviour.CANNOT_CANCEL
    )


def apply_stops(tasks: dict[int, SimTask], stops: dict[int, PendingStop], now: datetime) -> None:
    """Make the stopped tasks show ``Failed`` from their stop on, for the run that was stopped.

    A task that ended by itself before its stop took effect is left as it ended.  The
    simulator calls it before the scenario moves the tasks on (so a stop is judged on the
    task as it was last seen) and again after (so the scenario cannot undo it).
    """
    for task_id, stop in list(stops.items()):
        task = tasks.get(task_id)
        if task is None or task.start_count != stop.start_count:  # gone, or ran again
            del stops[task_id]
            continue
        if not stop.applied:
            if now < stop.at:
                continue
            if not task.state.is_active:
                del stops[task_id]
                continue
            stop.applied, stop.progress = True, task.progress
        task.state = BatchTaskState.FAILED
        task.progress = stop.progress
        task.result = STOPPED_RESULT
        task.response = f"Stopped at {stop.progress} %"
