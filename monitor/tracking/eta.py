"""When a running task should be done: its progress rate in the current run.

Pure: the samples and the time come in as arguments.  Detection keeps the
samples (:func:`add_sample`) in the task's memory and starts them afresh when
the task runs again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from monitor.superoffice.models import BatchTaskInfo

__all__ = ["HISTORY_LENGTH", "MAX_ETA", "Samples", "add_sample", "estimate_eta"]

#: How many progress samples the ETA is computed from.
HISTORY_LENGTH = 16
#: Estimates further out than this are not estimates.
MAX_ETA = timedelta(days=365)

#: (time, percent) samples of one run, oldest first.
Samples = tuple[tuple[datetime, int], ...]


def add_sample(history: Samples, percent: int | None, now: datetime) -> Samples:
    """The samples with ``percent`` seen at ``now`` (kept only when it changed)."""
    if percent is None or (history and history[-1][1] == percent):
        return history
    return (*history, (now, percent))[-HISTORY_LENGTH:]


def estimate_eta(history: Samples, info: BatchTaskInfo, now: datetime) -> datetime | None:
    """When the task should reach 100 %, from the samples of its current run.

    The rate is taken between the oldest and newest samples; when there is
    only one sample, the run's LastStarted at 0 % serves as the first one.
    No estimate for tasks that are not running, or not moving.
    """
    percent = info.progress_percent
    if not info.state.is_active or percent is None or not 0 < percent < 100:
        return None
    samples = history
    if len(samples) < 2:
        if info.last_started is None or info.last_started >= now:
            return None
        samples = ((info.last_started, 0), *samples)
    (t0, p0), (t1, p1) = samples[0], samples[-1]
    seconds = (t1 - t0).total_seconds()
    if p1 <= p0 or seconds <= 0:
        return None
    remaining = (100 - p1) / ((p1 - p0) / seconds)
    if remaining > MAX_ETA.total_seconds():
        # A run crawling for decades (or a bogus LastStarted) has no useful estimate.
        return None
    return t1 + timedelta(seconds=remaining)
