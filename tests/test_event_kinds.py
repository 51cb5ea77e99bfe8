"""The table of event types: one row each, and the readers agree with it."""

from __future__ import annotations

from datetime import UTC, datetime

from monitor.sinks.alertmanager import alerts_for
from monitor.sinks.render import Renderer
from monitor.tracking.events import EMITTED, KINDS, Event, EventType

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _event(kind: EventType) -> Event:
    return Event(id=f"id-{kind.value}", type=kind, time=T0)


def test_every_event_type_has_exactly_one_row() -> None:
    """A new type without a row fails here (and at import), not as a silent default."""
    assert list(KINDS) == list(EventType)


def test_every_type_has_its_own_title() -> None:
    """No type falls back to another's headline (the old ``case _: "Watching …"``)."""
    renderer = Renderer("ops", template=None, status_url=None)
    titles = [renderer.render(_event(kind)).title for kind in EventType]
    assert len(set(titles)) == len(titles)


def test_the_conditions_that_end_are_the_ones_that_fire() -> None:
    """Every type some event ends fires an alert; reminded types are conditions too."""
    firing = {kind for kind, row in KINDS.items() if row.alert is not None}
    for row in KINDS.values():
        assert row.ends <= firing
    assert {kind for kind, row in KINDS.items() if row.reminds} <= firing


def test_alertmanager_reads_the_table() -> None:
    """The alert an event fires and those it resolves are the table's."""
    for kind in EMITTED:
        change = alerts_for(_event(kind))
        fired = change.fired.labels["alertname"] if change.fired is not None else None
        assert fired == KINDS[kind].alert
        resolved = {alert.labels["alertname"] for alert in change.resolved}
        assert resolved == {KINDS[ended].alert for ended in KINDS[kind].ends}


def test_only_progress_coalesces() -> None:
    """Queued copies are replaced only for progress: every other event is a fact to keep."""
    assert [kind for kind, row in KINDS.items() if row.coalesces] == [EventType.TASK_PROGRESS]
