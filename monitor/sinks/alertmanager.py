"""The ``alertmanager`` sink: failed, stalled and vanished tasks and API outages as alerts.

Alertmanager's API v2 takes a JSON list of alerts on ``POST /api/v2/alerts``.
An alert's identity is its label set; it is active until its ``endsAt``.
Senders are expected to re-post active alerts regularly, so that an alert
whose sender died resolves by itself.  This sink therefore remembers the
alerts it considers firing and re-posts them from :meth:`AlertmanagerSink.run`;
deduplication between replicas, grouping, silences and routing are
Alertmanager's job.

=========================  ====================  =========  ================================
event                      fires                 severity   resolves
=========================  ====================  =========  ================================
``task.failed``            ``BatchTaskFailed``   warning    ``BatchTaskStalled``
``task.stalled``           ``BatchTaskStalled``  warning
``task.gone``              ``BatchTaskGone``     warning
``monitor.api_down``       ``BatchmonApiDown``   critical
``monitor.tenant_          ``BatchmonTenant      critical
unavailable``              Unavailable``
``task.succeeded``                                          Failed, Stalled and Gone
``task.restarted``                                          Failed, Stalled and Gone
``task.removed``                                            Failed, Stalled and Gone
``task.expired``                                            Failed, Stalled and Gone
``task.resumed``                                            ``BatchTaskStalled``
``monitor.api_recovered``                                   ``BatchmonApiDown``
``monitor.tenant_                                           ``BatchmonTenantUnavailable``
available``
=========================  ====================  =========  ================================

Severity: a failed, stalled or vanished task needs a look in working hours
(``warning``, as kubernetes-mixin's ``KubeJobFailed``); the API being down
leaves batchmon blind to every task, so that no other alert can fire
(``critical``).

Labels are ``alertname``, ``tenant``, ``task_id``, ``task_name``, ``severity`` and
``source="batchmon"`` (monitor alerts have no task labels).  ``tenant`` is on every alert,
``tenant="default"`` included: task ids are unique only within a tenant, and the metrics
Prometheus' rules alert on carry the same label, so one route can group both by it.  The
summary of a tenant other than the default one starts with its name (``acme · …``), as
chat messages do.  During a maintenance (see
:mod:`monitor.tracking.maintenance`) an API outage or a stall fires with
``maintenance="true"`` too, so a route can mute it; when the maintenance ends and it still
fires, it is fired again without, which resolves the marked one.  No host or
replica label: two replicas send the same alert and Alertmanager dedups it.

Times: ``startsAt`` is when the condition was detected.  A firing alert is
posted with ``endsAt`` = now + 4 * ``resend_every`` (Prometheus' rule), so
that it resolves by itself after four missed re-posts if batchmon stops.  A
resolution is the alert posted again with ``endsAt`` = now, re-posted with
each resend for ``resolved_for`` (5 minutes, as Alertmanager's docs advise,
so that the resolved notification goes out).  A resolution is sent even when
this process never saw the alert fire: after a restart it cannot know, and
Alertmanager only records a resolved alert it never had, notifying nobody.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import aiohttp
import anyio
import structlog

from monitor.config.sinks import AlertmanagerSinkConfig
from monitor.links import DEFAULT_TENANT, named_tenant, task_url
from monitor.sinks.base import DeliveryError
from monitor.sinks.http import Request, json_body, post_json
from monitor.sinks.render import escape_plain, tenant_named
from monitor.tracking.events import KINDS, Event, EventType, TaskSummary
from monitor.tracking.maintenance import HELD

__all__ = ["Alert", "AlertChange", "AlertmanagerSink", "alerts_for"]

log = structlog.get_logger("batchmon.sinks")


def _fired(kind: EventType) -> str:
    alert = KINDS[kind].alert
    if alert is None:  # pragma: no cover - a mistake in KINDS, caught at import
        raise AssertionError(f"{kind} fires no alert")
    return alert


#: The alerts, named in :data:`~monitor.tracking.events.KINDS`; ``batchmon test-sink``'s
#: alert fires once and ends by itself (nothing re-posts it).
FAILED, STALLED, GONE, API_DOWN, TEST = (
    _fired(kind)
    for kind in (
        EventType.TASK_FAILED,
        EventType.TASK_STALLED,
        EventType.TASK_GONE,
        EventType.MONITOR_API_DOWN,
        EventType.BATCHMON_TEST,
    )
)

#: The tenant state says the tenant is not running: every task is out of reach (critical).
TENANT_DOWN = _fired(EventType.MONITOR_TENANT_UNAVAILABLE)

_SEVERITY = {
    FAILED: "warning",
    STALLED: "warning",
    GONE: "warning",
    API_DOWN: "critical",
    TEST: "none",
    TENANT_DOWN: "critical",
}
_WHAT = {FAILED: "failed", STALLED: "stalled", GONE: "is gone (the API answers 404)"}

#: Bounds on untrusted text, in characters: labels and the summary are one
#: line, the description a few.
LABEL_MAX = 200
SUMMARY_MAX = 300
DESCRIPTION_MAX = 2000
#: How much of an error answer is read, and how much of it is quoted.
#: Firing alerts are posted to end this many resend intervals from now.
_LIFETIMES = 4

#: An alert's key in this sink: its name and task (``""`` for monitor alerts).
AlertKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert, without its end: the sink decides that when it posts."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime

    @property
    def key(self) -> AlertKey:
        """Which condition of which task this is (stable when the task is renamed)."""
        return self.labels["alertname"], self.labels.get("task_id", "")


@dataclass(frozen=True, slots=True)
class AlertChange:
    """What one event means for Alertmanager."""

    fired: Alert | None
    resolved: tuple[Alert, ...]


def alerts_for(
    event: Event, *, maintenance: bool = False, tenant: str = DEFAULT_TENANT
) -> AlertChange:
    """The alert an event fires and those it resolves (pure; the table above).

    ``maintenance``: one is under way, and an outage or a stall fires marked;
    ``tenant``: whose event it is (the ``tenant`` label).
    """
    kind = KINDS[event.type]
    fires = kind.alert
    fired = _alert(fires, event, _description(event), tenant) if fires is not None else None
    if fired is not None and maintenance and event.type in HELD:
        fired = replace(fired, labels={**fired.labels, "maintenance": "true"})
    resolved_by = f"Resolved by {event.type.value}."
    resolved = tuple(
        _alert(name, event, f"{resolved_by}\n{_description(event)}".strip(), tenant, ended=True)
        for name in (_fired(ended) for ended in EventType if ended in kind.ends)
    )
    return AlertChange(fired, resolved)


def _alert(
    alertname: str, event: Event, description: str, tenant: str, *, ended: bool = False
) -> Alert:
    labels = {"alertname": alertname, "tenant": tenant}
    task = event.task
    if task is not None:
        labels["task_id"] = str(task.id)
        name = _line(task.name or "", LABEL_MAX)
        if name:
            labels["task_name"] = name
    labels |= {"severity": _SEVERITY[alertname], "source": "batchmon"}
    summary = tenant_named(named_tenant(tenant), _summary(alertname, task))
    annotations = {"summary": _line(summary, SUMMARY_MAX)}
    description = _text(description, DESCRIPTION_MAX)
    if description:
        annotations["description"] = description
    if ended:
        # Why it ended (restarted, succeeded, removed, expired, ...); the event type for
        # the ends without a reason of their own (a stalled task that failed).
        annotations["ended"] = event.reason.value if event.reason else event.type.value
    return Alert(labels, annotations, event.time)


def _summary(alertname: str, task: TaskSummary | None) -> str:
    """One line that names the condition; the same when it fires and when it resolves."""
    if alertname == API_DOWN:
        return "batchmon cannot reach the SuperOffice API"
    if alertname == TEST:
        return "Test alert from batchmon test-sink; please ignore"
    if alertname == TENANT_DOWN:
        return "The SuperOffice tenant is not running"
    if task is None:
        who = "A batch task"
    else:
        who = f"Batch task {task.id} ({task.name})" if task.name else f"Batch task {task.id}"
    return f"{who} {_WHAT[alertname]}"


def _description(event: Event) -> str:
    lines = []
    task = event.task
    if task is not None:
        state = task.state.value
        if task.state_raw is not None and str(task.state_raw) != state:
            state = f"{state} ({task.state_raw})"
        lines.append(f"State: {state}")
        if task.progress is not None:
            step = f" ({task.progress_description})" if task.progress_description else ""
            lines.append(f"Progress: {task.progress}%{step}")
        if task.result:
            lines.append(f"Result: {task.result}")
    if event.message:
        lines.append(event.message)
    return "\n".join(lines)


def _text(value: str, limit: int) -> str:
    """Valid UTF-8 (lone surrogates from JSON escapes replaced), no control characters
    but line breaks and tabs, no mention, at most ``limit`` characters.

    Alertmanager's default Slack and other chat templates put labels and annotations
    into messages unescaped, so ``<!channel>`` or ``@everyone`` in a task name would
    ping: they are broken as in the chat sinks' plain text (:func:`escape_plain`).
    """
    value = escape_plain(value.encode("utf-8", "replace").decode("utf-8"))
    value = "".join(
        c if c in "\n\t" or unicodedata.category(c) != "Cc" else " " for c in value
    ).strip()
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _line(value: str, limit: int) -> str:
    return _text(" ".join(value.split()), limit)


def _label_set(alert: Alert) -> tuple[tuple[str, str], ...]:
    """Alertmanager's identity of an alert."""
    return tuple(sorted(alert.labels.items()))


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AlertmanagerSink:
    """Posts alerts to one Alertmanager (``{url}/api/v2/alerts``) and keeps them alive.

    ``send`` posts what one event changes, once; ``run`` re-posts the active
    alerts every ``resend_every`` seconds until cancelled.  Both share one
    lock, so a re-post never overtakes the resolution of the same alert.
    """

    default_rate = 10.0
    #: Alerts are posted by the sink's own loop; send() only updates what it holds.
    default_concurrency = 1

    def __init__(
        self,
        name: str,
        url: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
        generator_url: str | None = None,
        resend_every: float = 60.0,
        resolved_for: float = 300.0,
        clock: Callable[[], datetime] = _utcnow,
        in_maintenance: Callable[[], bool] = lambda: False,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self.name = name
        #: Whose alerts these are: the ``tenant`` label of each.
        self.tenant = tenant
        # The URL may carry credentials: it stays here and in no message.
        self._endpoint = url.rstrip("/") + "/api/v2/alerts"
        self._session = session
        self._timeout = timeout
        self._generator_url = generator_url
        self._resend_every = resend_every
        self._lifetime = timedelta(seconds=_LIFETIMES * resend_every)
        self._resolved_for = timedelta(seconds=resolved_for)
        self._clock = clock
        self._in_maintenance = in_maintenance
        self._lock = anyio.Lock()
        #: What this sink considers firing, by condition and task.
        self._firing: dict[AlertKey, Alert] = {}
        #: Recent resolutions and when they ended, by label set.
        self._resolved: dict[tuple[tuple[str, str], ...], tuple[Alert, datetime]] = {}

    @classmethod
    def from_config(
        cls,
        config: AlertmanagerSinkConfig,
        session: aiohttp.ClientSession,
        *,
        status_url: str | None,
        in_maintenance: Callable[[], bool] = lambda: False,
        tenant: str = DEFAULT_TENANT,
    ) -> AlertmanagerSink:
        """The sink a validated ``[[sinks]]`` entry of type ``alertmanager`` describes."""
        return cls(
            config.name,
            config.url.get_secret_value(),
            session,
            timeout=config.timeout,
            generator_url=status_url,
            in_maintenance=in_maintenance,
            tenant=tenant,
        )

    @property
    def firing(self) -> list[Alert]:
        """The alerts this sink keeps alive."""
        return list(self._firing.values())

    def restore(self, firing: Iterable[Event]) -> None:
        """Seed the active alerts at start-up from the events of tasks still failed,
        stalled or gone (and an API still down); :meth:`run` then posts them."""
        for event in firing:
            change = alerts_for(event, tenant=self.tenant)
            for alert in change.resolved:
                self._firing.pop(alert.key, None)
            if change.fired is not None:
                self._firing[change.fired.key] = change.fired

    async def send(self, event: Event) -> None:
        """Post the alerts the event fires or resolves; events that do neither are ignored."""
        change = alerts_for(event, maintenance=self._in_maintenance(), tenant=self.tenant)
        if change.fired is None and not change.resolved:
            return
        async with self._lock:
            now = self._clock()
            self._prune(now)
            batch = [self._resolve(alert, now) for alert in change.resolved]
            if change.fired is not None:
                batch.extend(self._fire(change.fired, now))
            await self._post(batch)

    async def run(self) -> None:
        """Re-post the active (and recently resolved) alerts until cancelled.

        The first post is immediate, so alerts seeded by :meth:`restore` reach
        Alertmanager before it resolves them by timeout.  A failed post is
        logged and tried again at the next interval (or when the server says).
        """
        while True:
            delay = self._resend_every
            try:
                await self._resend()
            except DeliveryError as exc:
                log.warning(
                    "alertmanager_resend_failed",
                    sink=self.name,
                    error=str(exc),
                    status=exc.status,
                    permanent=exc.permanent,
                )
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
            await anyio.sleep(delay)

    def _fire(self, alert: Alert, now: datetime) -> list[dict[str, object]]:
        """Remember a firing alert; resolve the one it replaces if its labels changed."""
        batch = []
        known = self._firing.get(alert.key)
        if known is not None:
            if _label_set(known) == _label_set(alert):
                alert = replace(alert, starts_at=min(known.starts_at, alert.starts_at))
            else:
                batch.append(self._resolve(known, now))
        self._firing[alert.key] = alert
        self._resolved.pop(_label_set(alert), None)
        batch.append(self._wire(alert, now + self._lifetime))
        return batch

    def _resolve(self, alert: Alert, now: datetime) -> dict[str, object]:
        """Forget a firing alert; Alertmanager is told with the labels it fired with."""
        known = self._firing.pop(alert.key, None)
        if known is not None:
            alert = replace(alert, labels=known.labels, starts_at=known.starts_at)
        self._resolved[_label_set(alert)] = (alert, now)
        return self._wire(alert, now)

    async def _resend(self) -> None:
        async with self._lock:
            now = self._clock()
            self._prune(now)
            batch = [self._wire(alert, now + self._lifetime) for alert in self._firing.values()]
            batch += [self._wire(alert, ended) for alert, ended in self._resolved.values()]
            if batch:
                await self._post(batch)

    def _prune(self, now: datetime) -> None:
        """Forget resolutions re-posted long enough (also when :meth:`run` is not running)."""
        self._resolved = {
            labels: (alert, ended)
            for labels, (alert, ended) in self._resolved.items()
            if now - ended < self._resolved_for
        }

    def _wire(self, alert: Alert, ends_at: datetime) -> dict[str, object]:
        """The alert as ``postableAlert``; ``startsAt`` never after ``endsAt`` (400 otherwise)."""
        body: dict[str, object] = {
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "startsAt": _rfc3339(min(alert.starts_at, ends_at)),
            "endsAt": _rfc3339(ends_at),
        }
        task_id = alert.labels.get("task_id")
        link = task_url(
            self._generator_url, int(task_id) if task_id else None, named_tenant(self.tenant)
        )
        if link:
            body["generatorURL"] = link
        return body

    async def _post(self, batch: list[dict[str, object]]) -> None:
        """One POST; the answer classified for the dispatcher, never retried here."""
        request = Request(body=json_body(batch), content_type="application/json")
        await post_json(
            self._session, self._endpoint, request, sink=self.name, seconds=self._timeout
        )
