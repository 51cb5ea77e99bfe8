"""One chat message for many events: what a digest says, before any format's escaping.

A storm of failures, a night of quiet hours or an hour over the cap ends in
one message per sink instead of one per event (the decision is
:mod:`monitor.delivery.grouping`'s).  Nothing is dropped: each task is named
(up to :data:`LISTED`) or counted, by what happened to it last.  A task whose
condition started and ended within the digest (failed, then succeeded) is
listed as ended ("failed, since finished"), not as a fresh alarm.  The result
is a :class:`~monitor.sinks.render.Message`, so every chat format shows a
digest with the escaping and limits it uses for a single event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from monitor.links import DEFAULT_TENANT, named_tenant, task_url, with_tenant
from monitor.sinks.render import Message, Tone, tenant_named
from monitor.tracking.events import KINDS, Event, EventType, event_id

__all__ = [
    "LISTED",
    "Digest",
    "Entry",
    "digest_message",
    "digest_of",
    "ids_query",
    "tasks_url",
]

#: Tasks named in one digest; the others are counted, with a link to them on the status page.
LISTED = 20
#: The listing's text stops growing here, whatever :data:`LISTED` says, so that every
#: format's limit (Slack's 3,000 per section is the smallest) keeps the counts after it.
TEXT_BUDGET = 2400
#: A task name in a listing line is cut to this.
NAME_MAX = 60
#: A status page link listing more ids than fit here links the whole page instead (a long
#: URL is refused by some formats, and a reader's browser may cut it).
IDS_QUERY_MAX = 1500

#: How each event type reads as a section of a digest.
_LABELS = {
    EventType.TASK_DISCOVERED: "Watching",
    EventType.TASK_STARTED: "Started",
    EventType.TASK_PROGRESS: "Progressing",
    EventType.TASK_SUCCEEDED: "Finished",
    EventType.TASK_FAILED: "Failed",
    EventType.TASK_STATE_CHANGED: "State changed",
    EventType.TASK_RESTARTED: "Ran again",
    EventType.TASK_STALLED: "Stalled",
    EventType.TASK_RESUMED: "Resumed",
    EventType.TASK_GONE: "Vanished",
    EventType.TASK_REMOVED: "Cleaned up",
    EventType.TASK_EXPIRED: "No longer tracked",
    EventType.MONITOR_API_DOWN: "SuperOffice API down",
    EventType.MONITOR_API_RECOVERED: "SuperOffice API recovered",
    EventType.MONITOR_AUTH_FAILED: "Credentials rejected",
    EventType.BATCHMON_TEST: "Test message",
}
#: Worst first: the digest takes the tone of its worst section.
_TONE_ORDER = (Tone.BAD, Tone.WARNING, Tone.INFO, Tone.GOOD)


def _lower(label: str) -> str:
    """A label inside a sentence; a name stays as it is spelt."""
    return label if label.startswith("SuperOffice") else label.lower()


@dataclass(frozen=True, slots=True)
class Entry:
    """A task (or the monitor) in a digest: its latest event, and what ended before it."""

    latest: Event
    #: Conditions that started and ended within the digest, in order (``failed``, …).
    ended: tuple[EventType, ...] = ()

    @property
    def section(self) -> str:
        """Where it is listed: ``Failed``, or ``Failed, since finished`` for an ended one."""
        label = _LABELS[self.latest.type]
        if not self.ended:
            return label
        began = ", ".join(dict.fromkeys(_LABELS[kind] for kind in self.ended))
        return f"{began}, since {_lower(label)}"


@dataclass(frozen=True, slots=True)
class Digest:
    """The events of one digest, by task."""

    #: One per task (and one for monitor events), in the order of their first event.
    entries: tuple[Entry, ...]
    #: Events summed up.
    events: int
    #: When the latest of them was detected.
    time: datetime
    #: Events that waited because the sink's hourly cap was reached.
    held_back: int = 0
    #: Whether some of its events waited for quiet hours to end.
    after_quiet: bool = False
    #: Stable for the same events (a card id; a retry sends the same).
    id: str = ""

    @property
    def task_ids(self) -> list[int]:
        """The tasks it names or counts."""
        return [e.latest.task_id for e in self.entries if e.latest.task_id is not None]


def _subject(event: Event) -> int | EventType:
    """Whose entry an event joins: its task's; a monitor event, its condition's."""
    if event.task_id is not None:
        return event.task_id
    ends = KINDS[event.type].ends
    return min(ends) if ends else event.type


def digest_of(events: Sequence[Event], *, held_back: int = 0, after_quiet: bool = False) -> Digest:
    """The digest of ``events`` (in the order they happened), one entry per task."""
    history: dict[int | EventType, list[Event]] = {}
    for event in events:
        history.setdefault(_subject(event), []).append(event)
    entries = []
    for seen in history.values():
        latest = seen[-1]
        ends = KINDS[latest.type].ends
        ended = tuple(e.type for e in seen[:-1] if e.type in ends)
        entries.append(Entry(latest, ended))
    return Digest(
        tuple(entries),
        len(events),
        max(e.time for e in events),
        held_back=held_back,
        after_quiet=after_quiet,
        id=event_id("digest", *(e.id for e in events)),
    )


def ids_query(ids: Sequence[int]) -> str:
    """``1-5,9``: task ids for the status page's ``ids`` filter, runs as ranges (short URLs)."""
    ordered = sorted(set(ids))
    runs: list[str] = []
    start = previous = None
    for task_id in [*ordered, None]:
        if previous is not None and task_id == previous + 1:
            previous = task_id
            continue
        if start is not None:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = task_id
    return ",".join(runs)


def tasks_url(status_url: str | None, ids: Sequence[int], tenant: str | None = None) -> str | None:
    """The status page listing just these tasks (``?ids=``, and ``&tenant=`` for a tenant
    other than the default); ``None`` without a status page."""
    if status_url is None:
        return None
    query = ids_query(ids)
    if not ids or len(query) > IDS_QUERY_MAX:
        return with_tenant(status_url, tenant)
    parts = urlsplit(status_url)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return with_tenant(urlunsplit(parts._replace(path=path, query=f"ids={query}")), tenant)


def _line(entry: Entry, status_url: str | None, tenant: str | None) -> str:
    """``• Export 17 — Failed · 40 % · https://…/tasks/17``."""
    event = entry.latest
    task = event.task
    if task is None:
        return f"• {event.message or _LABELS[event.type]}"
    name = task.name or f"Task {task.id}"
    if len(name) > NAME_MAX:
        name = name[: NAME_MAX - 1] + "…"
    parts = [f"• {name} — {task.state.value}"]
    if task.progress is not None:
        parts.append(f"{min(max(task.progress, 0), 100)} %")
    link = task_url(status_url, task.id, tenant)
    if link:
        parts.append(link)
    return " · ".join(parts)


def _tone(entries: Sequence[Entry]) -> Tone:
    tones = {
        Tone.GOOD if entry.ended else (KINDS[entry.latest.type].tone or Tone.INFO)
        for entry in entries
    }
    return next((tone for tone in _TONE_ORDER if tone in tones), Tone.INFO)


def digest_message(digest: Digest, status_url: str | None, tenant: str = DEFAULT_TENANT) -> Message:
    """The digest as a chat message: counts by section, then up to :data:`LISTED` tasks.

    A tenant other than the default one is named as in a single event's message.
    """
    named = named_tenant(tenant)
    sections: dict[str, list[Entry]] = {}
    for entry in digest.entries:
        sections.setdefault(entry.section, []).append(entry)
    counts = [f"{len(entries)} {_lower(label)}" for label, entries in sections.items()]
    title = "📋 " + ", ".join(counts)
    if digest.after_quiet:
        title += " (during quiet hours)"
    facts = [(label, str(len(entries))) for label, entries in sections.items()]
    if digest.held_back:
        facts.append(("Held back", f"{digest.held_back} more events held back by the hourly cap"))
    lines: list[str] = []
    listed = size = 0
    for label, entries in sections.items():
        shown = []
        for entry in entries:
            line = _line(entry, status_url, named)
            if listed >= LISTED or size + len(line) > TEXT_BUDGET:
                break
            shown.append(line)
            listed += 1
            size += len(line) + 1
        lines.append(f"{label} ({len(entries)}):")
        lines.extend(shown)
        rest = entries[len(shown) :]
        if rest:
            more = f"… and {len(rest)} more"
            link = tasks_url(
                status_url, [e.latest.task_id for e in rest if e.latest.task_id], named
            )
            lines.append(f"{more}: {link}" if link else more)
    tasks = len(digest.task_ids)
    footer = f"batchmon digest · {digest.events} events · {tasks} tasks"
    return Message(
        title=tenant_named(named, title),
        tone=_tone(digest.entries),
        facts=tuple(facts),
        text="\n".join(lines),
        footer=tenant_named(named, footer),
        link=tasks_url(status_url, digest.task_ids, named),
        task_id=None,
        event_id=digest.id,
        tenant=named,
    )
