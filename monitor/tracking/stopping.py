"""Whether a task may be asked to stop, and which stalled tasks are stopped by themselves.

Pure: SuperOffice says in ``CancellationBehaviour`` whether a task may be stopped
(``CanCancel``; ``CancelWithWarning``, where its own UI asks "are you sure?";
``CannotCancel``).  batchmon asks ``StopBatchJob`` only when that allows it, and
for a warned task only with ``force``, as a person clicking through the warning.
``[poll] stop_stalled_after`` stops a stalled task that is known to be safe to
stop, once per run of the task: the event of an automatic stop has an id made of
the task and its run (:func:`auto_stop_id`), so the store remembers it across
restarts.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.superoffice.models import BatchTaskInfo, CancellationBehaviour
from monitor.tracking.events import EventType, event_id
from monitor.tracking.memory import TaskMemory

__all__ = ["Decision", "Verdict", "auto_stop_id", "due_auto_stops", "may_stop", "stop_answer"]


class Verdict(enum.StrEnum):
    """What may be done with a request to stop a task."""

    #: Ask SuperOffice to stop it.
    STOP = "stop"
    #: ``CannotCancel``: SuperOffice does not let it be stopped.
    CANNOT_CANCEL = "cannot_cancel"
    #: ``CancelWithWarning`` and no ``force``: SuperOffice's own UI warns first.
    NEEDS_FORCE = "needs_force"
    #: The task is not queued or running: there is nothing to stop.
    NOT_RUNNING = "not_running"


@dataclass(frozen=True, slots=True)
class Decision:
    """A :class:`Verdict` and the sentence that explains it to whoever asked."""

    verdict: Verdict
    reason: str


def may_stop(info: BatchTaskInfo, *, force: bool) -> Decision:
    """Whether to call ``StopBatchJob`` for the task as the API just showed it.

    An unknown ``CancellationBehaviour`` is treated as ``CancelWithWarning``: asking
    is allowed, but only knowingly.
    """
    label = f"task {info.id}" + (f" ({info.name})" if info.name else "")
    if not info.state.is_active:
        return Decision(
            Verdict.NOT_RUNNING,
            f"{label} is {info.state.value}: only a queued or running task stops",
        )
    behaviour = info.cancellation_behaviour
    if behaviour is CancellationBehaviour.CANNOT_CANCEL:
        return Decision(
            Verdict.CANNOT_CANCEL,
            f"{label} cannot be stopped: SuperOffice marks it CannotCancel",
        )
    if behaviour is not CancellationBehaviour.CAN_CANCEL and not force:
        why = (
            "SuperOffice marks it CancelWithWarning (its own UI warns before stopping it)"
            if behaviour is CancellationBehaviour.CANCEL_WITH_WARNING
            else "its CancellationBehaviour is unknown"
        )
        return Decision(
            Verdict.NEEDS_FORCE,
            f'{label} is stopped only when forced (batchmon stop --force, or {{"force": true}}): {why}',
        )
    return Decision(Verdict.STOP, f"{label} may be stopped")


def stop_answer(by: str, stopped: bool) -> str:
    """The ``task.stop_requested`` message: who asked and what SuperOffice answered."""
    answer = "stopping it" if stopped else "answered false: not stopped"
    return f"Stop requested by {by}; SuperOffice {answer}"


def auto_stop_id(info: BatchTaskInfo) -> str:
    """The id of the automatic stop of this run of the task (the same after a restart)."""
    run = info.last_started.isoformat() if info.last_started else ""
    return event_id(EventType.TASK_STOP_REQUESTED.value, "auto", info.id, info.start_count, run)


def due_auto_stops(
    memories: Iterable[TaskMemory],
    *,
    stall_after: timedelta,
    stop_after: timedelta | None,
    now: datetime,
) -> list[TaskMemory]:
    """Stalled tasks stalled for ``stop_after`` (after ``stall_after`` without change).

    Only tasks that may be stopped without force: ``CanCancel``, or not known yet
    (a bulk poll does not select the field; the stop reads the task again and
    refuses anything else).  ``None``: automatic stops are off.
    """
    if stop_after is None:
        return []
    return [
        memory
        for memory in memories
        if memory.stalled
        and not memory.gone
        and memory.info.state.is_active
        and memory.info.cancellation_behaviour in {None, CancellationBehaviour.CAN_CANCEL}
        and now - memory.last_change >= stall_after + stop_after
    ]
