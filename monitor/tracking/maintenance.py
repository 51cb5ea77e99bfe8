"""Maintenance: which events people are spared while SuperOffice is worked on, and what
they are told when it is over.

During a maintenance (a configured window, or the tenant state OnlineMaintenance or
OfflineMaintenance) the API going down and tasks stalling are expected: those events
(:data:`HELD`) are recorded (the log sink, the store, metrics) and Alertmanager gets them
marked, but chat and webhook sinks do not.  A failure still goes out.  The end of a held
condition that nobody was told of (the API recovering, a stalled task resuming) is held too.

When the maintenance ends, one ``monitor.maintenance_ended`` event says what failed, stalled
or went down during it, and each held condition still firing is announced then.

While the tenant is unavailable (Suspended, Deleted, OfflineMaintenance) the API is known to
be down: ``monitor.api_down`` then reaches the log alone (``monitor.tenant_unavailable`` or
the maintenance says it), and is announced when the tenant is back only if the API still
fails then.

Pure: :class:`Hold` is a value, every function takes the time it needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

from monitor.tracking.events import KINDS, Event, EventType, event_id
from monitor.windows import Window

__all__ = [
    "HELD",
    "MARKING",
    "RECORDING",
    "TENANT",
    "Hold",
    "Ledger",
    "admit",
    "also",
    "announced",
    "begin",
    "end",
    "held",
    "reannounced",
    "started",
    "summary",
    "tenant_change",
    "tenant_down",
    "tenant_maintenance",
    "windows_end",
]

#: The events people are spared during a maintenance.
HELD = frozenset({EventType.MONITOR_API_DOWN, EventType.TASK_STALLED})
#: Sink types that keep the record: they get every event.
RECORDING = frozenset({"log"})
#: Sink types that get held events marked as such (``maintenance="true"``), so their own
#: routes can mute them.
MARKING = frozenset({"alertmanager"})
#: The name a maintenance announced by the tenant state goes by.
TENANT = "SuperOffice tenant state"
#: Tenant states that are a maintenance (the status API's names).
MAINTENANCE_STATES = frozenset({"OnlineMaintenance", "OfflineMaintenance"})
#: Tenant states in which the API answers, or is expected back soon.
_EXPECTED = frozenset({"Running"}) | MAINTENANCE_STATES

#: A condition: its type and task (``None`` for the API).
Condition = tuple[EventType, int | None]


@dataclass(frozen=True, slots=True)
class Ledger:
    """What happened during one maintenance, for its summary."""

    started: datetime
    #: What made it a maintenance (window names, the tenant state), in order of appearance.
    names: tuple[str, ...]
    #: Tasks that failed, by id, with their names.
    failed: Mapping[int, str | None] = field(default_factory=dict)
    #: Tasks that stalled, by id, with their names.
    stalled: Mapping[int, str | None] = field(default_factory=dict)
    #: Whether ``monitor.api_down`` fired during it.
    api_down: bool = False
    #: Whether ``monitor.maintenance_started`` was committed (a restart in between says it).
    announced: bool = False
    #: When the windows open at its start were expected to end (``None``: unknown).
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """The state of the decision: the maintenance under way, and what people were not told."""

    #: The maintenance under way, ``None`` outside one.
    ledger: Ledger | None = None
    #: The tenant is not running: the API is expected to be down.
    tenant_down: bool = False
    #: Held conditions still firing, by condition, with the event that raised each.
    unannounced: Mapping[Condition, Event] = field(default_factory=dict)


def admit(hold: Hold, event: Event) -> tuple[Hold, frozenset[str] | None]:
    """The next state, and the sink types ``event`` is restricted to (``None``: all)."""
    ledger = hold.ledger
    if ledger is not None:
        ledger = _record(ledger, event)
    unannounced = dict(hold.unannounced)
    ends = KINDS[event.type].ends
    ended = [key for key in unannounced if key[0] in ends and key[1] == event.task_id]
    for key in ended:
        del unannounced[key]
    reach: frozenset[str] | None = None
    if event.type in HELD and (hold.ledger is not None or _quiet_api(hold, event)):
        unannounced[event.type, event.task_id] = event
        reach = RECORDING if _quiet_api(hold, event) else RECORDING | MARKING
    elif ended and event.type in _QUIET_ENDS:
        # Only the end of something people were never told of: as quiet as its start.
        reach = RECORDING | MARKING
    return replace(hold, ledger=ledger, unannounced=MappingProxyType(unannounced)), reach


#: Events that only end a held condition (others, a failure say, are news of their own).
_QUIET_ENDS = frozenset({EventType.TASK_RESUMED, EventType.MONITOR_API_RECOVERED})


def _quiet_api(hold: Hold, event: Event) -> bool:
    return hold.tenant_down and event.type is EventType.MONITOR_API_DOWN


def _record(ledger: Ledger, event: Event) -> Ledger:
    task = event.task
    if event.type is EventType.TASK_FAILED and task is not None:
        return replace(ledger, failed=MappingProxyType({**ledger.failed, task.id: task.name}))
    if event.type is EventType.TASK_STALLED and task is not None:
        return replace(ledger, stalled=MappingProxyType({**ledger.stalled, task.id: task.name}))
    if event.type is EventType.MONITOR_API_DOWN:
        return replace(ledger, api_down=True)
    return ledger


def begin(
    hold: Hold, names: Sequence[str], at: datetime, until: datetime | None
) -> tuple[Hold, Event]:
    """A maintenance starts at ``at`` (expected to end at ``until``, if known)."""
    # An outage held back already (the tenant went down before its maintenance was known).
    down = (EventType.MONITOR_API_DOWN, None) in hold.unannounced
    ledger = Ledger(started=at, names=tuple(names), api_down=down, until=until)
    return replace(hold, ledger=ledger), started(ledger)


def started(ledger: Ledger) -> Event:
    """``monitor.maintenance_started``; its id is the maintenance's, so a restart that says it
    again (it was not known to be committed) makes no second one."""
    until = ledger.until
    expected = f" until {until:%a %H:%M %Z}" if until is not None else ""
    return Event(
        id=event_id(EventType.MONITOR_MAINTENANCE_STARTED.value, ledger.started.isoformat()),
        type=EventType.MONITOR_MAINTENANCE_STARTED,
        time=ledger.started,
        message=f"{_names(ledger.names)}{expected}: API outages and stalls go to the log only.",
    )


def announced(hold: Hold) -> Hold:
    """``monitor.maintenance_started`` was committed."""
    ledger = hold.ledger
    return replace(hold, ledger=replace(ledger, announced=True)) if ledger is not None else hold


def also(hold: Hold, names: Iterable[str]) -> Hold:
    """More reasons join the maintenance under way (an overlapping window, the tenant)."""
    ledger = hold.ledger
    if ledger is None:
        return hold
    added = tuple(name for name in names if name not in ledger.names)
    return replace(hold, ledger=replace(ledger, names=ledger.names + added)) if added else hold


def end(hold: Hold, at: datetime) -> tuple[Hold, list[Event]]:
    """The maintenance is over: its summary, then each held condition still firing.

    An API outage while the tenant is still down stays unannounced (the tenant's own
    event covers it).
    """
    ledger = hold.ledger
    if ledger is None:
        return hold, []
    hold = replace(hold, ledger=None)
    events = [summary(ledger, hold.unannounced, at)]
    hold, again = reannounced(hold, at, "Still so when the maintenance ended.")
    return hold, events + again


def reannounced(hold: Hold, at: datetime, why: str) -> tuple[Hold, list[Event]]:
    """Announce the held conditions still firing (``why`` says when), but for an API outage
    while the tenant is down, and none during a maintenance."""
    keep = {
        key: event
        for key, event in hold.unannounced.items()
        if hold.ledger is not None or (hold.tenant_down and key[1] is None)
    }
    announced = [
        replace(
            event,
            id=event_id(event.id, "announced", at.isoformat()),
            time=at,
            message=_joined(event.message, why),
        )
        for key, event in hold.unannounced.items()
        if key not in keep
    ]
    return replace(hold, unannounced=MappingProxyType(keep)), announced


def summary(ledger: Ledger, still: Mapping[Condition, Event], at: datetime) -> Event:
    """``monitor.maintenance_ended``: what failed, stalled or went down during it."""
    lines = [f"{_names(ledger.names)}: {_span(ledger.started, at)}."]
    if ledger.failed:
        lines.append(f"Failed: {_tasks(ledger.failed)}.")
    if ledger.stalled:
        lines.append(f"Stalled: {_tasks(ledger.stalled)}.")
    stalled = {
        key[1]: event.task.name
        for key, event in still.items()
        if key[1] is not None and event.task is not None
    }
    if stalled:
        lines.append(f"Still stalled: {_tasks(stalled)}.")
    if ledger.api_down:
        down = (EventType.MONITOR_API_DOWN, None) in still
        lines.append("The API was down, and still is." if down else "The API was down.")
    if len(lines) == 1:
        lines.append("Nothing failed or stalled, and no API outage was seen.")
    return Event(
        id=event_id(EventType.MONITOR_MAINTENANCE_ENDED.value, ledger.started.isoformat()),
        type=EventType.MONITOR_MAINTENANCE_ENDED,
        time=at,
        message="\n".join(lines),
    )


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


def _span(start: datetime, end: datetime) -> str:
    minutes = max(round((end - start).total_seconds() / 60), 0)
    hours, minutes = divmod(minutes, 60)
    length = f"{hours} h {minutes} min" if hours else f"{minutes} min"
    return f"{start:%Y-%m-%d %H:%M %Z} to {end:%H:%M %Z} ({length})"


def _tasks(tasks: Mapping[int, str | None]) -> str:
    return ", ".join(
        f"{name} (#{task_id})" if name else f"#{task_id}" for task_id, name in sorted(tasks.items())
    )


def _joined(first: str | None, second: str) -> str:
    return f"{first}\n{second}" if first else second


def held(hold: Hold, event: Event) -> bool:
    """Whether ``event``'s condition is one people were not told of (its reminders wait)."""
    return (event.type, event.task_id) in hold.unannounced


def tenant_maintenance(state: str | None) -> bool:
    """Whether the tenant state is a maintenance."""
    return state in MAINTENANCE_STATES


def tenant_down(state: str | None) -> bool:
    """Whether the tenant's API is known to be down: offline maintenance, or not running."""
    return state is not None and (state == "OfflineMaintenance" or state not in _EXPECTED)


def tenant_change(previous: str | None, state: str, at: datetime) -> Event | None:
    """``monitor.tenant_unavailable`` when the tenant stops running for another reason than
    maintenance (Suspended, Deleted, …), ``monitor.tenant_available`` when it is back."""
    was = previous is not None and previous not in _EXPECTED
    now = state not in _EXPECTED
    if now and not was:
        kind = EventType.MONITOR_TENANT_UNAVAILABLE
        message = (
            f"The tenant state is {state}: its API does not answer.  API outages go to the "
            "log until it runs again."
        )
    elif was and not now:
        kind = EventType.MONITOR_TENANT_AVAILABLE
        message = f"The tenant state is {state} again (it was {previous})."
    else:
        return None
    return Event(
        id=event_id(kind.value, state, at.isoformat()), type=kind, time=at, message=message
    )


def windows_end(windows: Sequence[Window], at: datetime) -> datetime | None:
    """When the windows active at ``at`` (and those they run into) are all over.

    ``None`` when that never happens (a window of every day, all day).
    """
    moment = at
    for _ in range(len(windows) * 14 + 1):  # each window changes at most twice a day
        ends = [window.next_change(moment) for window in windows if window.active(moment)]
        if not ends:
            return moment
        if None in ends:
            return None
        moment = min(end for end in ends if end is not None)
    return None
