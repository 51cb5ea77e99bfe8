"""The per-task metric families, formatted once per change and joined per scrape.

prometheus_client formats every sample on every scrape, about 10 µs each; with
10,000 tasks the per-task families hold 130,000 samples, which is more than a
second of event-loop time per scrape.  Here each task's lines are formatted
when the tracker says its memory changed, and a scrape only joins them (or,
with nothing changed, reuses the last join).  The lines are the ones prometheus_client would write
(its float formatting, its label escaping, labels sorted); the family headers
come from prometheus_client's own encoder for the negotiated format.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime, timedelta

from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from monitor.superoffice.models import BatchTaskState
from monitor.tracking.memory import GONE, TaskMemory, state_name
from monitor.tracking.tracker import Tracker

__all__ = ["STATES", "Encoder", "TaskSeries", "render"]

#: One-hot states; ``Gone`` stands for a task the API answers 404 for.
STATES = [*(s.value for s in BatchTaskState), GONE]

#: The families, in the order a task's lines are kept; empty (headers only).
_FAMILIES: tuple[Metric, ...] = (
    GaugeMetricFamily(
        "batchmon_task_state",
        "Current state of a watched task: 1 for its state, 0 for the others.",
        labels=["task_id", "state", "tenant"],
    ),
    GaugeMetricFamily(
        "batchmon_task_progress_ratio",
        "Task progress, 0..1 (ProgressPercent / 100, clamped).",
        labels=["task_id", "tenant"],
    ),
    GaugeMetricFamily(
        "batchmon_task_last_progress_timestamp_seconds",
        "When the task's state, progress or progress description last changed.",
        labels=["task_id", "tenant"],
    ),
    GaugeMetricFamily(
        "batchmon_task_last_started_timestamp_seconds",
        "When the task was last started (LastStarted).",
        labels=["task_id", "tenant"],
    ),
    GaugeMetricFamily(
        "batchmon_task_eta_timestamp_seconds",
        "Estimated completion time of a running task, from its progress rate.",
        labels=["task_id", "tenant"],
    ),
    InfoMetricFamily(
        "batchmon_task", "Descriptive labels of a watched task.", labels=["task_id", "tenant"]
    ),
)

#: What each family's samples are called (``name[]`` filters on either).
_NAMES = tuple(
    {family.name, family.name + "_info"} if family.type == "info" else {family.name}
    for family in _FAMILIES
)

Encoder = Callable[[Collector], bytes]
#: prometheus_client's float formatting (Go's), typed.
_number: Callable[[float], str] = floatToGoString


class _One(Collector):
    """A registry stand-in holding one family, to have an encoder write its header."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterator[Metric]:
        yield self._family


def _label(value: str) -> str:
    """A label value escaped as prometheus_client escapes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _lines(memory: TaskMemory, eta: datetime | None, tenant: str) -> tuple[bytes, ...]:
    """One task's samples, one chunk per family."""
    task = memory.info
    task_id = _label(str(task.id))
    current = state_name(memory)
    state = "".join(
        f'batchmon_task_state{{state="{name}",task_id="{task_id}",tenant="{tenant}"}} '
        f"{'1.0' if name == current else '0.0'}\n"
        for name in STATES
    )
    ratio = task.progress_ratio
    labels = f'{{task_id="{task_id}",tenant="{tenant}"}}'

    def gauge(name: str, value: float | None) -> str:
        return "" if value is None else f"{name}{labels} {_number(value)}\n"

    info = (
        f'batchmon_task_info{{associate_id="{task.associate_id or 0}",'
        f'name="{_label(task.name or "")}",request="{_label(task.request or "")}",'
        f'task_id="{task_id}",tenant="{tenant}"}} 1.0\n'
    )
    started = task.last_started
    return tuple(
        text.encode()
        for text in (
            state,
            gauge("batchmon_task_progress_ratio", ratio),
            gauge("batchmon_task_last_progress_timestamp_seconds", memory.last_change.timestamp()),
            gauge(
                "batchmon_task_last_started_timestamp_seconds",
                None if started is None else started.timestamp(),
            ),
            gauge("batchmon_task_eta_timestamp_seconds", None if eta is None else eta.timestamp()),
            info,
        )
    )


class TaskSeries:
    """Every exported task's samples, kept per task and redone only for tasks that changed.

    One per tenant (its samples carry ``tenant``); :func:`render` joins the
    tenants' under one header per family.  The tracker says which tasks
    changed since the last scrape; a task drops out ``retention`` after it ended
    or disappeared.  Runs on the event loop with no await inside, so a scrape
    sees one cycle's state, never half of one; with nothing changed a scrape
    costs the headers and one join.
    """

    def __init__(
        self,
        tracker: Tracker,
        *,
        tenant: str = "default",
        retention: timedelta = timedelta(hours=1),
    ) -> None:
        self._tracker = tracker
        #: Label-safe by the configuration's check: written without escaping.
        self._tenant = tenant
        self._retention = retention
        self._chunks: dict[int, tuple[bytes, ...]] = {}
        #: (when it ended, id) of exported tasks that ended: the next to age out first.
        self._ending: list[tuple[datetime, int]] = []
        #: Each family's samples joined, until a task changes or ages out.
        self._joined: tuple[bytes, ...] | None = None

    def render(
        self, now: datetime, encoder: Encoder, format_key: str, names: Collection[str] = ()
    ) -> list[bytes]:
        """This tenant's families alone (see :func:`render`)."""
        return render([self], now, encoder, format_key, names)

    def refresh(self, now: datetime) -> tuple[bytes, ...]:
        """Each family's samples of this tenant, joined (the same objects while none changed)."""
        horizon = now - self._retention
        tasks = self._tracker.tasks
        for task_id in sorted(self._tracker.take_changed()):
            self._update(task_id, tasks.get(task_id), horizon)
        while self._ending and self._ending[0][0] < horizon:
            _, task_id = heapq.heappop(self._ending)
            if task_id in self._chunks:
                self._update(task_id, tasks.get(task_id), horizon)
        if self._joined is None:
            chunks = self._chunks.values()
            self._joined = tuple(
                b"".join([lines[index] for lines in chunks]) for index in range(len(_FAMILIES))
            )
        return self._joined

    def _update(self, task_id: int, memory: TaskMemory | None, horizon: datetime) -> None:
        """Format a task's lines again, or drop them if it is forgotten or aged out."""
        self._joined = None
        ended = None if memory is None else _ended(memory)
        if memory is None or (ended is not None and ended < horizon):
            self._chunks.pop(task_id, None)
            return
        # The estimate as of the snapshot: a function of the memory alone.
        eta = self._tracker.eta(task_id, memory.last_seen)
        self._chunks[task_id] = _lines(memory, eta, self._tenant)
        if ended is not None:
            heapq.heappush(self._ending, (ended, task_id))


#: The family headers per exposition format, as prometheus_client's encoder writes them.
_HEADERS: dict[tuple[Encoder, str], tuple[bytes, ...]] = {}


def render(
    series: Sequence[TaskSeries],
    now: datetime,
    encoder: Encoder,
    format_key: str,
    names: Collection[str] = (),
) -> list[bytes]:
    """The families of every tenant's series in the format ``encoder`` writes (``format_key``
    names it), in parts: one header per family, then each tenant's samples.

    Parts, not one string: joining megabytes costs a copy the caller may not
    need (a compressor takes them one by one).  ``names`` keeps only
    families with those (family or sample) names, as prometheus_client's
    ``name[]`` does; empty keeps all.
    """
    headers = _HEADERS.get((encoder, format_key))
    if headers is None:
        headers = tuple(_header(encoder, family) for family in _FAMILIES)
        _HEADERS[encoder, format_key] = headers
    joined = [one.refresh(now) for one in series]
    out: list[bytes] = []
    for index, header in enumerate(headers):
        if not names or _NAMES[index] & set(names):
            out.append(header)
            out += (samples[index] for samples in joined)
    return out


def _ended(memory: TaskMemory) -> datetime | None:
    """When the task stopped being worth a series: it disappeared, or reached its end."""
    return memory.ended


def _header(encoder: Encoder, family: Metric) -> bytes:
    """HELP and TYPE of an empty family, as the encoder writes them (without ``# EOF``)."""
    text = encoder(_One(family))
    return text.removesuffix(b"# EOF\n")
