"""Maintenance, decided: what is held back from whom, and what the end of a window says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.tracking import maintenance as decide
from monitor.tracking.events import Event, EventType, event_id
from monitor.tracking.maintenance import MARKING, RECORDING, Hold, Ledger
from monitor.windows import parse_window, zone
from tests.conftest import make_task_event

T0 = datetime(2026, 12, 5, 19, 0, tzinfo=UTC)  # Saturday 20:00 in Oslo
QUIET = RECORDING | MARKING
OSLO = zone("Europe/Oslo")


def _oslo(*args: int) -> datetime:
    year, month, day, hour, minute = args
    return datetime(year, month, day, hour, minute, tzinfo=OSLO)


def _api(kind: EventType, minutes: int = 0) -> Event:
    at = T0 + timedelta(minutes=minutes)
    return Event(id=event_id(kind.value, at), type=kind, time=at, message="connection refused")


def _task(kind: EventType, task_id: int = 212, name: str | None = "Export") -> Event:
    return make_task_event(kind, time=T0, id=task_id, name=name)


def _in_window() -> Hold:
    hold, _ = decide.begin(Hold(), ["Saturday"], T0, None)
    return hold


def _run(hold: Hold, *events: Event) -> tuple[Hold, list[frozenset[str] | None]]:
    reaches = []
    for event in events:
        hold, reach = decide.admit(hold, event)
        reaches.append(reach)
    return hold, reaches


# (events, in a window?, tenant down?) → where each event may go (None: every sink).
ADMIT = [
    # Outside a window, everything goes everywhere.
    ([_api(EventType.MONITOR_API_DOWN), _task(EventType.TASK_STALLED)], False, False, [None, None]),
    # In a window: outages and stalls to the log and (marked) Alertmanager; failures to all.
    (
        [
            _api(EventType.MONITOR_API_DOWN),
            _task(EventType.TASK_STALLED),
            _task(EventType.TASK_FAILED, 213),
        ],
        True,
        False,
        [QUIET, QUIET, None],
    ),
    # The end of what people were not told of is as quiet as its start.
    (
        [
            _api(EventType.MONITOR_API_DOWN),
            _api(EventType.MONITOR_API_RECOVERED, 5),
            _task(EventType.TASK_STALLED),
            _task(EventType.TASK_RESUMED),
        ],
        True,
        False,
        [QUIET, QUIET, QUIET, QUIET],
    ),
    # A resumption of a stall people were told of (before the window) goes out.
    ([_task(EventType.TASK_RESUMED)], True, False, [None]),
    # Another task's resumption is not the held one's.
    (
        [_task(EventType.TASK_STALLED), _task(EventType.TASK_RESUMED, 213)],
        True,
        False,
        [QUIET, None],
    ),
    # A stalled task that fails: the failure is news, whatever held the stall.
    ([_task(EventType.TASK_STALLED), _task(EventType.TASK_FAILED)], True, False, [QUIET, None]),
    # Tenant down: the outage reaches the log alone (no alert either), window or not.
    ([_api(EventType.MONITOR_API_DOWN)], False, True, [RECORDING]),
    ([_api(EventType.MONITOR_API_DOWN)], True, True, [RECORDING]),
    # ... but a stall outside a window goes out: only the API is known to be down.
    ([_task(EventType.TASK_STALLED)], False, True, [None]),
    # News goes everywhere.
    ([_task(EventType.TASK_SUCCEEDED), _task(EventType.TASK_PROGRESS)], True, False, [None, None]),
]


@pytest.mark.parametrize(("events", "window", "tenant_down", "expected"), ADMIT)
def test_admit(
    events: list[Event], window: bool, tenant_down: bool, expected: list[frozenset[str] | None]
) -> None:
    """Which sink types each event of a sequence reaches."""
    hold = Hold(ledger=_in_window().ledger if window else None, tenant_down=tenant_down)
    assert expected == _run(hold, *events)[1]


def test_held_conditions_wait_for_reminders() -> None:
    """A held stall's reminders wait; a stall people were told of is reminded as usual."""
    hold, _ = _run(_in_window(), _task(EventType.TASK_STALLED))
    assert decide.held(hold, _task(EventType.TASK_STALLED))
    assert not decide.held(hold, _task(EventType.TASK_STALLED, 213))
    hold, _ = _run(hold, _task(EventType.TASK_RESUMED))
    assert not decide.held(hold, _task(EventType.TASK_STALLED))


class TestEnd:
    def test_summary_of_a_busy_window(self) -> None:
        """One summary: failed, stalled, still stalled, the API; then what still fires."""
        hold, _ = _run(
            _in_window(),
            _api(EventType.MONITOR_API_DOWN),
            _task(EventType.TASK_FAILED, 300, "Import"),
            _task(EventType.TASK_STALLED, 212, "Export"),
            _task(EventType.TASK_STALLED, 213, None),
            _task(EventType.TASK_RESUMED, 213, None),
        )
        later = T0 + timedelta(hours=10, minutes=5)
        hold, events = decide.end(hold, later)
        summary, *again = events
        assert EventType.MONITOR_MAINTENANCE_ENDED == summary.type
        assert later == summary.time
        assert (
            "Saturday: 2026-12-05 19:00 UTC to 05:05 UTC (10 h 5 min).\n"
            "Failed: Import (#300).\n"
            "Stalled: Export (#212), #213.\n"
            "Still stalled: Export (#212).\n"
            "The API was down, and still is."
        ) == summary.message
        assert [EventType.MONITOR_API_DOWN, EventType.TASK_STALLED] == [e.type for e in again]
        for event in again:
            assert later == event.time
            assert event.message is not None
            assert event.message.endswith("Still so when the maintenance ended.")
        # Announced now: their ends go out as usual.
        assert (Hold(), [None]) == _run(hold, _task(EventType.TASK_RESUMED))

    def test_summary_of_a_quiet_window(self) -> None:
        """Nothing happened: the summary says so, and nothing else is announced."""
        hold, events = decide.end(_in_window(), T0 + timedelta(minutes=30))
        expected = (
            "Saturday: 2026-12-05 19:00 UTC to 19:30 UTC (30 min).\n"
            "Nothing failed or stalled, and no API outage was seen."
        )
        assert [expected] == [event.message for event in events]
        assert Hold() == hold

    def test_an_outage_that_ended_is_not_announced(self) -> None:
        """The API went down and came back inside the window: said in the summary only."""
        hold, _ = _run(
            _in_window(), _api(EventType.MONITOR_API_DOWN), _api(EventType.MONITOR_API_RECOVERED)
        )
        _, events = decide.end(hold, T0 + timedelta(hours=1))
        assert ["The API was down."] == [
            line for e in events for line in (e.message or "").splitlines()[1:]
        ]

    def test_no_window_no_summary(self) -> None:
        """Ending when nothing is under way says nothing."""
        assert (Hold(), []) == decide.end(Hold(), T0)

    def test_outage_while_the_tenant_is_down_waits_for_the_tenant(self) -> None:
        """Offline maintenance ends but the tenant is still down: the outage stays held,
        and is announced when the tenant is back and it still fires."""
        hold = Hold(ledger=_in_window().ledger, tenant_down=True)
        hold, _ = _run(hold, _api(EventType.MONITOR_API_DOWN), _task(EventType.TASK_STALLED))
        hold, events = decide.end(hold, T0 + timedelta(hours=1))
        assert [EventType.MONITOR_MAINTENANCE_ENDED, EventType.TASK_STALLED] == [
            e.type for e in events
        ]
        assert decide.held(hold, _api(EventType.MONITOR_API_DOWN))
        back = T0 + timedelta(hours=2)
        hold, again = decide.reannounced(
            Hold(tenant_down=False, unannounced=hold.unannounced), back, "Back."
        )
        assert [("connection refused\nBack.", back)] == [(e.message, e.time) for e in again]
        assert not hold.unannounced
        # An event without a message of its own gets the reason alone.
        bare = Event(id="x", type=EventType.MONITOR_API_DOWN, time=T0)
        held, _ = _run(Hold(tenant_down=True), bare)
        _, again = decide.reannounced(Hold(unannounced=held.unannounced), back, "Back.")
        assert ["Back."] == [e.message for e in again]

    def test_nothing_is_announced_during_a_maintenance(self) -> None:
        """The tenant comes back inside a window: held conditions wait for its end."""
        hold, _ = _run(Hold(ledger=_in_window().ledger), _task(EventType.TASK_STALLED))
        assert (hold, []) == decide.reannounced(hold, T0, "Back.")


class TestBegin:
    def test_started_event(self) -> None:
        """The start names the windows and, when known, the expected end."""
        until = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
        hold, event = decide.begin(Hold(), ["Saturday", "Nightly"], T0, until)
        assert EventType.MONITOR_MAINTENANCE_STARTED == event.type
        assert (
            "Saturday, Nightly until Sun 05:00 UTC: API outages and stalls go to the log only."
        ) == event.message
        assert Ledger(started=T0, names=("Saturday", "Nightly"), until=until) == hold.ledger
        _, unknown = decide.begin(Hold(), ["SuperOffice tenant state OfflineMaintenance"], T0, None)
        assert unknown.message is not None
        assert "OfflineMaintenance: API" in unknown.message

    def test_an_outage_held_before_the_start_counts(self) -> None:
        """The tenant went down (the outage held) before its maintenance was known: the
        maintenance's summary still says the API was down."""
        hold, _ = _run(Hold(tenant_down=True), _api(EventType.MONITOR_API_DOWN))
        hold, _ = decide.begin(hold, ["SuperOffice tenant state OfflineMaintenance"], T0, None)
        assert hold.ledger is not None
        assert hold.ledger.api_down

    def test_also(self) -> None:
        """Overlapping reasons join the one maintenance; outside one, nothing happens."""
        hold = decide.also(_in_window(), ["Saturday", "Nightly"])
        assert hold.ledger is not None
        assert ("Saturday", "Nightly") == hold.ledger.names
        assert hold is decide.also(hold, ["Nightly"])
        assert Hold() == decide.also(Hold(), ["Nightly"])


class TestTenant:
    @pytest.mark.parametrize(
        ("state", "maintenance", "down"),
        [
            (None, False, False),
            ("Running", False, False),
            ("OnlineMaintenance", True, False),
            ("OfflineMaintenance", True, True),
            ("Suspended", False, True),
            ("Deleted", False, True),
            ("MigrationPending", False, True),
        ],
    )
    def test_states(self, state: str | None, maintenance: bool, down: bool) -> None:
        """Online and offline maintenance are maintenance; offline and not running are down."""
        assert maintenance is decide.tenant_maintenance(state)
        assert down is decide.tenant_down(state)

    @pytest.mark.parametrize(
        ("previous", "state", "expected"),
        [
            (None, "Running", None),
            (None, "Suspended", EventType.MONITOR_TENANT_UNAVAILABLE),
            ("Running", "Deleted", EventType.MONITOR_TENANT_UNAVAILABLE),
            ("OfflineMaintenance", "Suspended", EventType.MONITOR_TENANT_UNAVAILABLE),
            ("Suspended", "Deleted", None),  # still unavailable: one event, not a storm
            ("Suspended", "Running", EventType.MONITOR_TENANT_AVAILABLE),
            ("Deleted", "OnlineMaintenance", EventType.MONITOR_TENANT_AVAILABLE),
            ("Running", "OfflineMaintenance", None),  # a maintenance, not unavailability
            ("OfflineMaintenance", "Running", None),
        ],
    )
    def test_change(self, previous: str | None, state: str, expected: EventType | None) -> None:
        """One event when the tenant stops running for another reason, one when it is back."""
        event = decide.tenant_change(previous, state, T0)
        assert expected == (event.type if event is not None else None)
        if event is not None:
            assert event.message is not None
            assert state in event.message


class TestWindowsEnd:
    @pytest.mark.parametrize(
        ("windows", "at", "expected"),
        [
            (["Sat 20:00-06:00"], _oslo(2026, 12, 5, 21, 0), _oslo(2026, 12, 6, 6, 0)),
            # Overlapping windows run into each other: the later end.
            (
                ["Sat 20:00-06:00", "Mon-Sun 01:00-03:00", "Sun 05:00-08:00"],
                _oslo(2026, 12, 5, 21, 0),
                _oslo(2026, 12, 6, 8, 0),
            ),
            # Not in a window: now.
            (["Sat 20:00-06:00"], _oslo(2026, 12, 5, 12, 0), _oslo(2026, 12, 5, 12, 0)),
            # Every day, all day: never.
            (["Mon-Sun"], _oslo(2026, 12, 5, 12, 0), None),
            # Two windows that always overlap each other: never either.
            (["Mon-Sun 22:00-06:00", "Mon-Sun 05:00-23:00"], _oslo(2026, 12, 5, 12, 0), None),
        ],
    )
    def test_end(self, windows: list[str], at: datetime, expected: datetime | None) -> None:
        """When the windows open at ``at`` are all closed."""
        parsed = [parse_window(text, OSLO) for text in windows]
        assert expected == decide.windows_end(parsed, at)
