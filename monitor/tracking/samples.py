"""A longer progress history per task, for the task page's chart, in bounded memory.

:attr:`TaskMemory.history` keeps the 16 samples the ETA needs; a chart of a
run wants its whole shape.  :class:`ProgressSamples` keeps, per task, the
samples of the current run as (time, percent), at most ``capacity`` of them:

- a plateau keeps only its first and last sample (the points between add
  nothing to a line chart), so a run crawling 0→100 % needs about 100;
- when a run still outgrows ``capacity``, every other older sample is
  dropped (the first and the newest stay): the whole run stays drawn, at
  half the resolution of what came before.

Times are stored as float seconds and percents as bytes: at most about
9 bytes a sample, under 2 KB a task.  Pure: what it records comes from the
memories the tracker keeps (it records each one it is given, and forgets a
task's samples with the task), with their own times.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from monitor.superoffice.models import BatchTaskInfo
from monitor.tracking.detect import ran_again
from monitor.tracking.memory import TaskMemory

__all__ = ["CAPACITY", "ProgressSamples"]

#: Samples kept per task.
CAPACITY = 200


@dataclass(slots=True)
class _Run:
    """The samples of one task's current run."""

    #: The snapshot the last sample came from (to see a new run begin).
    info: BatchTaskInfo
    times: array[float] = field(default_factory=lambda: array("d"))
    percents: bytearray = field(default_factory=bytearray)


class ProgressSamples:
    """(time, percent) samples of each task's current run, by task id."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 4:
            raise ValueError("capacity: at least 4 samples")
        self.capacity = capacity
        self._runs: dict[int, _Run] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def record(self, memory: TaskMemory) -> None:
        """Add the memory's progress at its ``last_seen``; a new run starts afresh."""
        info = memory.info
        if memory.gone:
            return
        run = self._runs.get(info.id)
        if run is None or ran_again(run.info, info):
            run = _Run(info)
            self._runs[info.id] = run
            # After a restart the memory brings the last samples the store kept.
            for when, percent in memory.history:
                self._append(run, when, percent)
        run.info = info
        if info.progress_percent is not None:
            self._append(run, memory.last_seen, info.progress_percent)

    def _append(self, run: _Run, when: datetime, percent: int) -> None:
        seconds = when.timestamp()
        percent = min(max(percent, 0), 100)
        times, percents = run.times, run.percents
        if times and seconds <= times[-1]:
            if seconds == times[-1]:
                percents[-1] = percent
            return
        if len(percents) >= 2 and percents[-1] == percents[-2] == percent:
            times[-1] = seconds  # the plateau goes on: move its end
            return
        if len(times) >= self.capacity:
            # Every other sample before the newest: the first stays, the newest stays.
            run.times = times = array("d", times[:-1][::2]) + times[-1:]
            run.percents = percents = bytearray(percents[:-1][::2]) + percents[-1:]
        times.append(seconds)
        percents.append(percent)

    def series(self, memory: TaskMemory) -> list[tuple[datetime, int]]:
        """The task's samples, oldest first; its memory's own history if none were recorded."""
        run = self._runs.get(memory.info.id)
        if run is None or ran_again(run.info, memory.info):
            return list(memory.history)
        return [
            (datetime.fromtimestamp(seconds, UTC), percent)
            for seconds, percent in zip(run.times, run.percents, strict=True)
        ]

    def forget(self, task_ids: Iterable[int]) -> None:
        """Drop the samples of tasks no longer tracked."""
        for task_id in task_ids:
            self._runs.pop(task_id, None)
