"""What /metrics would serve for a tracker, parsed back by prometheus_client's own parser."""

from __future__ import annotations

from datetime import datetime

from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from monitor.delivery.dispatcher import Dispatcher
from monitor.metrics import BatchmonCollector, TenantState, make_registry
from monitor.superoffice.client import RequestStats
from monitor.task_metrics import TaskSeries
from monitor.tracking.health import ApiHealth
from monitor.tracking.tracker import Tracker

__all__ = ["Scrape", "scrape"]

#: What /metrics answers an OpenMetrics scrape with (openmetrics' own generate_latest, typed).
generate_latest, _ = choose_encoder("application/openmetrics-text")


class Scrape:
    """Every sample of one OpenMetrics exposition, by name and labels."""

    def __init__(self, text: bytes) -> None:
        self.text = text
        # prometheus_client's OpenMetrics parser is not annotated.
        families = text_string_to_metric_families(text.decode())  # type: ignore[no-untyped-call]
        self._samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in families
            for sample in family.samples
        }

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The sample's value, ``None`` if it is not exported (as ``get_sample_value``); labels
        without ``tenant`` mean the single form's tenant ``default`` where the series has one."""
        given = dict(labels or {})
        found = self._samples.get((name, frozenset(given.items())))
        if found is None and "tenant" not in given:
            return self._samples.get((name, frozenset({**given, "tenant": "default"}.items())))
        return found

    def names(self) -> set[tuple[str, frozenset[tuple[str, str]]]]:
        """Every (name, labels) exported."""
        return set(self._samples)


def scrape(
    tracker: Tracker, now: datetime, dispatcher: Dispatcher, series: TaskSeries | None = None
) -> Scrape:
    """The task series (a fresh one unless given), then the collector's families."""
    tenant = TenantState("default", tracker, ApiHealth(3), RequestStats(), dispatcher)
    registry = make_registry(BatchmonCollector(lambda: [tenant]))
    tasks = (series or TaskSeries(tracker)).render(now, generate_latest, "openmetrics")
    return Scrape(b"".join([*tasks, generate_latest(registry)]))
