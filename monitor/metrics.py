"""The Prometheus collector: batchmon's own families, fresh from its state on every scrape.

A custom collector (not global gauges) so that concurrent scrapes cannot
race.  ``collect()`` only reads in-memory state; the poller does the I/O.
These families are small (per state, per sink, per event type); the
per-task ones, thousands of series, are :mod:`monitor.task_metrics`'.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

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
from monitor.delivery.dispatcher import Dispatcher
from monitor.delivery.maintenance import Maintenance
from monitor.superoffice.client import RequestStats
from monitor.superoffice.tenant import TENANT_STATES
from monitor.task_metrics import STATES
from monitor.tracking.events import EMITTED
from monitor.tracking.health import ApiHealth
from monitor.tracking.tracker import Tracker

__all__ = ["BatchmonCollector", "make_registry"]


class BatchmonCollector(Collector):
    """Reads tracker, API and delivery state into metric families."""

    def __init__(
        self,
        tracker: Tracker,
        health: ApiHealth,
        requests: RequestStats,
        dispatcher: Dispatcher,
        *,
        cycle_requests: Callable[[], int] | None = None,
        maintenance: Maintenance | None = None,
    ) -> None:
        self._cycle_requests = cycle_requests
        self._maintenance = maintenance
        self._tracker = tracker
        self._health = health
        self._requests = requests
        self._dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        """Build every family from the current state."""
        yield from self._aggregate_families()
        yield from self._api_families()
        yield from self._delivery_families()
        if self._maintenance is not None:
            yield from self._maintenance_families(self._maintenance)
        build = InfoMetricFamily("batchmon_build", "batchmon version and Python runtime.")
        build.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield build

    def _aggregate_families(self) -> Iterator[Metric]:
        counts = self._tracker.state_counts
        tasks = GaugeMetricFamily(
            "batchmon_tasks", "Watched tasks by current state.", labels=["state"]
        )
        for name in STATES:
            tasks.add_metric([name], counts.get(name, 0))
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
        for kind in EMITTED:
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
            "Deliveries abandoned (rejected by the destination, too old, or the sink kept "
            "crashing), by sink.",
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

    @staticmethod
    def _maintenance_families(maintenance: Maintenance) -> Iterator[Metric]:
        windows = GaugeMetricFamily(
            "batchmon_maintenance",
            "1 while a maintenance window (or the tenant state's maintenance) is open, by name.",
            labels=["name"],
        )
        for name, open_now in maintenance.openings():
            windows.add_metric([name], 1.0 if open_now else 0.0)
        yield windows
        if maintenance.tenant is not None:
            current = maintenance.tenant_state
            states = GaugeMetricFamily(
                "batchmon_tenant_state",
                "1 for the tenant's state as the tenant-status API last named it.",
                labels=["state"],
            )
            names = list(TENANT_STATES)
            if current is not None and current not in names:
                names.append(current)
            for state in names:
                states.add_metric([state], 1.0 if state == current else 0.0)
            yield states


def make_registry(collector: BatchmonCollector) -> CollectorRegistry:
    """A private registry holding only batchmon's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry
