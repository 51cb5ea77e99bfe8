"""The Prometheus collector: batchmon's own families, fresh from its state on every scrape.

A custom collector (not global gauges) so that concurrent scrapes cannot
race.  ``collect()`` only reads in-memory state; the poller does the I/O.
These families are small (per state, per sink, per event type); the
per-task ones, thousands of series, are :mod:`monitor.task_metrics`'.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

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

__all__ = ["BatchmonCollector", "Replication", "TenantState", "make_registry"]


@dataclass(frozen=True, slots=True)
class TenantState:
    """What the collector reads of one tenant's pipeline."""

    name: str
    tracker: Tracker
    health: ApiHealth
    requests: RequestStats
    dispatcher: Dispatcher
    cycle_requests: Callable[[], int] | None = None
    maintenance: Maintenance | None = None


@dataclass(frozen=True, slots=True)
class Replication:
    """What a replica knows of the others: the leases it holds, the replicas alive."""

    held: Callable[[], int]
    replicas: Callable[[], int]


class BatchmonCollector(Collector):
    """Reads tracker, API and delivery state of every tenant into metric families.

    ``tenants`` is asked on each scrape: with replicas, the tenants a process
    runs change as leases move.  Every per-tenant series carries ``tenant``.
    """

    def __init__(
        self,
        tenants: Callable[[], Iterable[TenantState]],
        *,
        configured: int = 1,
        replication: Replication | None = None,
    ) -> None:
        self._tenants = tenants
        self._configured = configured
        self._replication = replication

    def collect(self) -> Iterator[Metric]:
        """Build every family from the current state."""
        tenants = list(self._tenants())
        yield from self._aggregate_families(tenants)
        yield from self._api_families(tenants)
        yield from self._delivery_families(tenants)
        yield from self._maintenance_families(tenants)
        yield GaugeMetricFamily(
            "batchmon_tenants",
            "Tenants in the configuration (with replicas: to be held by one of them each).",
            value=self._configured,
        )
        if self._replication is not None:
            yield GaugeMetricFamily(
                "batchmon_leases_held",
                "Tenants whose lease this replica holds (it polls and delivers for them).",
                value=self._replication.held(),
            )
            yield GaugeMetricFamily(
                "batchmon_replicas",
                "Replicas alive (seen in the database within lease_ttl), this one included.",
                value=self._replication.replicas(),
            )
        build = InfoMetricFamily("batchmon_build", "batchmon version and Python runtime.")
        build.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield build

    @staticmethod
    def _aggregate_families(tenants: Sequence[TenantState]) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "batchmon_tasks", "Watched tasks by current state.", labels=["tenant", "state"]
        )
        transitions = CounterMetricFamily(
            "batchmon_task_transitions",
            "State transitions observed, by old and new state.",
            labels=["tenant", "from_state", "to_state"],
        )
        events = CounterMetricFamily(
            "batchmon_events", "Events emitted, by event type.", labels=["tenant", "type"]
        )
        for tenant in tenants:
            tracker, name = tenant.tracker, tenant.name
            counts = tracker.state_counts
            for state in STATES:
                tasks.add_metric([name, state], counts.get(state, 0))
            for (old, new), count in sorted(tracker.transitions.items()):
                transitions.add_metric([name, old, new], count)
            for kind in EMITTED:
                events.add_metric([name, kind.value], tracker.event_counts[kind])
        yield from (tasks, transitions, events)

    @staticmethod
    def _api_families(tenants: Sequence[TenantState]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "batchmon_api_requests", "Requests sent to the SuperOffice API.", labels=["tenant"]
        )
        failures = CounterMetricFamily(
            "batchmon_api_request_failures",
            "Requests to the SuperOffice API that gave no usable answer, by reason.",
            labels=["tenant", "reason"],
        )
        durations = HistogramMetricFamily(
            "batchmon_api_request_duration_seconds",
            "Duration of HTTP requests to SuperOffice (retries and logins included).",
            labels=["tenant"],
        )
        per_cycle = GaugeMetricFamily(
            "batchmon_api_requests_per_cycle",
            "Requests the last poll cycle sent (per-id GETs plus list calls).",
            labels=["tenant"],
        )
        up = GaugeMetricFamily(
            "batchmon_api_up",
            "1 if the last poll cycle reached the SuperOffice API, else 0.",
            labels=["tenant"],
        )
        last = GaugeMetricFamily(
            "batchmon_last_successful_poll_timestamp_seconds",
            "When a poll cycle last reached the SuperOffice API.",
            labels=["tenant"],
        )
        for tenant in tenants:
            stats, health, name = tenant.requests, tenant.health, tenant.name
            requests.add_metric([name], stats.requests)
            for reason, count in sorted(stats.failures.items()):
                failures.add_metric([name, reason], count)
            durations.add_metric([name], stats.durations.cumulative(), stats.durations.sum)
            if tenant.cycle_requests is not None:
                per_cycle.add_metric([name], tenant.cycle_requests())
            up.add_metric([name], 1.0 if health.up else 0.0)
            if health.last_success is not None:
                last.add_metric([name], health.last_success.timestamp())
        yield from (requests, failures, durations, per_cycle, up, last)

    @staticmethod
    def _delivery_families(tenants: Sequence[TenantState]) -> Iterator[Metric]:
        labels = ["tenant", "sink"]
        delivered = CounterMetricFamily(
            "batchmon_deliveries", "Events delivered, by sink.", labels=labels
        )
        failed = CounterMetricFamily(
            "batchmon_delivery_failures", "Deliveries that failed, by sink.", labels=labels
        )
        given_up = CounterMetricFamily(
            "batchmon_deliveries_given_up",
            "Deliveries abandoned (rejected by the destination, too old, or the sink kept "
            "crashing), by sink.",
            labels=labels,
        )
        queued = GaugeMetricFamily(
            "batchmon_outbox_events", "Events waiting for delivery, by sink.", labels=labels
        )
        latency = HistogramMetricFamily(
            "batchmon_delivery_latency_seconds",
            "Seconds from detecting an event to its delivery, by sink.",
            labels=labels,
        )
        for tenant in tenants:
            dispatcher = tenant.dispatcher
            for name in dispatcher.sink_names:
                key = [tenant.name, name]
                delivered.add_metric(key, dispatcher.delivered[name])
                failed.add_metric(key, dispatcher.failed[name])
                given_up.add_metric(key, dispatcher.given_up[name])
                queued.add_metric(key, dispatcher.queued(name))
                histogram = dispatcher.latency[name]
                latency.add_metric(key, histogram.cumulative(), histogram.sum)
        yield from (delivered, failed, given_up, queued, latency)

    @staticmethod
    def _maintenance_families(tenants: Sequence[TenantState]) -> Iterator[Metric]:
        windows = GaugeMetricFamily(
            "batchmon_maintenance",
            "1 while a maintenance window (or the tenant state's maintenance) is open, by name.",
            labels=["tenant", "name"],
        )
        states = GaugeMetricFamily(
            "batchmon_tenant_state",
            "1 for the tenant's state as the tenant-status API last named it.",
            labels=["tenant", "state"],
        )
        for tenant in tenants:
            maintenance = tenant.maintenance
            if maintenance is None:
                continue
            for name, open_now in maintenance.openings():
                windows.add_metric([tenant.name, name], 1.0 if open_now else 0.0)
            if maintenance.tenant is None:
                continue
            current = maintenance.tenant_state
            names = list(TENANT_STATES)
            if current is not None and current not in names:
                names.append(current)
            for state in names:
                states.add_metric([tenant.name, state], 1.0 if state == current else 0.0)
        yield windows
        if states.samples:
            yield states


def make_registry(collector: BatchmonCollector) -> CollectorRegistry:
    """A private registry holding only batchmon's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry
