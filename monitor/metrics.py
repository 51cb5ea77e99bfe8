"""The Prometheus collector: fresh metric families from the tracker's state on every scrape.

A custom collector (not global gauges) so that concurrent scrapes cannot
race and a task that ages out stops being exported.  ``collect()`` only reads
in-memory state; the poller does the I/O.  Per-task series drop out
``retention`` after the task ended or disappeared.
"""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from monitor import __version__
from monitor.sinks.dispatcher import Dispatcher
from monitor.superoffice.client import RequestStats
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import EventType
from monitor.tracking.health import ApiHealth
from monitor.tracking.memory import TaskMemory
from monitor.tracking.tracker import Tracker

__all__ = ["BatchmonCollector", "make_registry"]

#: One-hot states; ``Gone`` stands for a task the API answers 404 for.
_GONE = "Gone"
_STATES = [*(s.value for s in BatchTaskState), _GONE]


class BatchmonCollector(Collector):
    """Reads tracker, API and delivery state into metric families."""

    def __init__(
        self,
        tracker: Tracker,
        health: ApiHealth,
        requests: RequestStats,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], datetime],
        cycle_requests: Callable[[], int] | None = None,
        retention: timedelta = timedelta(hours=1),
    ) -> None:
        self._cycle_requests = cycle_requests
        self._tracker = tracker
        self._health = health
        self._requests = requests
        self._dispatcher = dispatcher
        self._clock = clock
        self._retention = retention

    def _exported(self, now: datetime) -> Iterator[TaskMemory]:
        horizon = now - self._retention
        for memory in self._tracker.tasks.values():
            ended = memory.last_seen if memory.gone else memory.terminal_since
            if ended is None or ended >= horizon:
                yield memory

    def collect(self) -> Iterator[Metric]:
        """Build every family from the current state."""
        now = self._clock()
        yield from self._task_families(now)
        yield from self._aggregate_families()
        yield from self._api_families()
        yield from self._delivery_families()
        build = InfoMetricFamily("batchmon_build", "batchmon version and Python runtime.")
        build.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield build

    def _task_families(self, now: datetime) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "batchmon_task_state",
            "Current state of a watched task: 1 for its state, 0 for the others.",
            labels=["task_id", "state"],
        )
        progress = GaugeMetricFamily(
            "batchmon_task_progress_ratio",
            "Task progress, 0..1 (ProgressPercent / 100, clamped).",
            labels=["task_id"],
        )
        last_change = GaugeMetricFamily(
            "batchmon_task_last_progress_timestamp_seconds",
            "When the task's state, progress or progress description last changed.",
            labels=["task_id"],
        )
        last_started = GaugeMetricFamily(
            "batchmon_task_last_started_timestamp_seconds",
            "When the task was last started (LastStarted).",
            labels=["task_id"],
        )
        eta = GaugeMetricFamily(
            "batchmon_task_eta_timestamp_seconds",
            "Estimated completion time of a running task, from its progress rate.",
            labels=["task_id"],
        )
        info = InfoMetricFamily(
            "batchmon_task",
            "Descriptive labels of a watched task.",
            labels=["task_id"],
        )
        for memory in self._exported(now):
            task = memory.info
            task_id = str(task.id)
            current = _GONE if memory.gone else task.state.value
            for name in _STATES:
                state.add_metric([task_id, name], 1.0 if name == current else 0.0)
            if task.progress_ratio is not None:
                progress.add_metric([task_id], task.progress_ratio)
            last_change.add_metric([task_id], memory.last_change.timestamp())
            if task.last_started is not None:
                last_started.add_metric([task_id], task.last_started.timestamp())
            estimate = self._tracker.eta(task.id, now)
            if estimate is not None:
                eta.add_metric([task_id], estimate.timestamp())
            info.add_metric(
                [task_id],
                {
                    "name": task.name or "",
                    "request": task.request or "",
                    "associate_id": str(task.associate_id or 0),
                },
            )
        yield from (state, progress, last_change, last_started, eta, info)

    def _aggregate_families(self) -> Iterator[Metric]:
        counts: Counter[str] = Counter(
            _GONE if m.gone else m.info.state.value for m in self._tracker.tasks.values()
        )
        tasks = GaugeMetricFamily(
            "batchmon_tasks", "Watched tasks by current state.", labels=["state"]
        )
        for name in _STATES:
            tasks.add_metric([name], counts[name])
        transitions = CounterMetricFamily(
            "batchmon_task_transitions",
            "State transitions observed, by old and new state.",
            labels=["from_state", "to_state"],
        )
        for (old, new), count in sorted(self._tracker.transitions.items()):
            transitions.add_metric([old, new], count)
        events = CounterMetricFamily(
            "batchmon_events", "Events emitted, by event type.", labels=["type"]
        )
        for kind in EventType:
            events.add_metric([kind.value], self._tracker.event_counts[kind])
        yield from (tasks, transitions, events)

    def _api_families(self) -> Iterator[Metric]:
        stats = self._requests
        yield CounterMetricFamily(
            "batchmon_api_requests", "Requests sent to the SuperOffice API.", value=stats.requests
        )
        failures = CounterMetricFamily(
            "batchmon_api_request_failures",
            "Requests to the SuperOffice API that gave no usable answer, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(stats.failures.items()):
            failures.add_metric([reason], count)
        yield failures
        durations = HistogramMetricFamily(
            "batchmon_api_request_duration_seconds",
            "Duration of HTTP requests to SuperOffice (retries and logins included).",
        )
        durations.add_metric([], stats.durations.cumulative(), stats.durations.sum)
        yield durations
        if self._cycle_requests is not None:
            yield GaugeMetricFamily(
                "batchmon_api_requests_per_cycle",
                "Requests the last poll cycle sent (per-id GETs plus list calls).",
                value=self._cycle_requests(),
            )
        yield GaugeMetricFamily(
            "batchmon_api_up",
            "1 if the last poll cycle reached the SuperOffice API, else 0.",
            value=1.0 if self._health.up else 0.0,
        )
        if self._health.last_success is not None:
            yield GaugeMetricFamily(
                "batchmon_last_successful_poll_timestamp_seconds",
                "When a poll cycle last reached the SuperOffice API.",
                value=self._health.last_success.timestamp(),
            )

    def _delivery_families(self) -> Iterator[Metric]:
        delivered = CounterMetricFamily(
            "batchmon_deliveries", "Events delivered, by sink.", labels=["sink"]
        )
        failed = CounterMetricFamily(
            "batchmon_delivery_failures", "Deliveries that failed, by sink.", labels=["sink"]
        )
        given_up = CounterMetricFamily(
            "batchmon_deliveries_given_up",
            "Deliveries abandoned (rejected by the destination, or too old), by sink.",
            labels=["sink"],
        )
        queued = GaugeMetricFamily(
            "batchmon_outbox_events", "Events waiting for delivery, by sink.", labels=["sink"]
        )
        latency = HistogramMetricFamily(
            "batchmon_delivery_latency_seconds",
            "Seconds from detecting an event to its delivery, by sink.",
            labels=["sink"],
        )
        dispatcher = self._dispatcher
        for name in dispatcher.sink_names:
            delivered.add_metric([name], dispatcher.delivered[name])
            failed.add_metric([name], dispatcher.failed[name])
            given_up.add_metric([name], dispatcher.given_up[name])
            queued.add_metric([name], dispatcher.queued(name))
            histogram = dispatcher.latency[name]
            latency.add_metric([name], histogram.cumulative(), histogram.sum)
        yield from (delivered, failed, given_up, queued, latency)


def make_registry(collector: BatchmonCollector) -> CollectorRegistry:
    """A private registry holding only batchmon's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry
