"""What the outbox holds and gives back, whatever the backend.

The values here cross the store protocol (:class:`monitor.types.DeliveryStore`):
plain data, no database handles, so a second backend returns the same ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from monitor.tracking.events import Event

__all__ = [
    "DEFAULT_TENANT",
    "TENANT_NAME",
    "Claim",
    "Committed",
    "Delivery",
    "Queued",
    "StoreError",
    "Told",
    "tenant_name",
]

#: The tenant of a configuration without ``[[tenants]]``, and of every row stored before
#: there were tenants: the store's root is its view.
DEFAULT_TENANT = "default"
#: What a tenant may be called: label-safe (a metric label, a path segment, a column value).
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class StoreError(Exception):
    """The state database cannot be used (unwritable directory, disk full)."""


def tenant_name(name: str) -> str:
    """``name``, if a tenant may be called so; :class:`ValueError` saying why not."""
    if not TENANT_NAME.fullmatch(name):
        msg = f"tenant name {name!r}: not {TENANT_NAME.pattern} (lower case, digits, _ and -)"
        raise ValueError(msg)
    return name


@dataclass(frozen=True, slots=True)
class Delivery:
    """One pending delivery of one event to one sink."""

    #: The delivery's id in the outbox: increasing in the order deliveries were queued,
    #: and kept across restarts (and, with a shared backend, across replicas).
    seq: int
    sink: str
    event: Event
    #: Attempts before this one (a claim counts the attempt it makes).
    attempts: int
    #: Wall-clock epoch seconds before which it must not be tried again.
    next_attempt: float
    #: Epoch seconds when it entered the outbox.
    created: float


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim found: a delivery to try now, or when to ask again."""

    #: The delivery claimed for the caller (``None``: none is claimable now).
    delivery: Delivery | None = None
    #: With no delivery: epoch seconds when a waiting delivery becomes due (``None``:
    #: none waits; a commit or a settled claim is the next news).
    due_at: float | None = None
    #: With a delivery: whether another was claimable too (another worker may ask now).
    more: bool = False
    #: Unreadable deliveries deleted on the way (written by another version, or damaged).
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Committed:
    """What a commit did to the outbox."""

    #: How the outbox grew per sink (it shrinks when deliveries coalesce).
    growth: dict[str, int]
    #: Deliveries claimed in the commit's transaction, for workers that were idle.
    claimed: list[Delivery]


@dataclass(frozen=True, slots=True)
class Queued:
    """A pending delivery as the outbox's columns describe it, without its event.

    Enough to decide whether it goes out now, alone or in a digest
    (:mod:`monitor.delivery.grouping`), without parsing every queued event.
    """

    seq: int
    task_id: int | None
    #: The event type's dotted name.
    type: str
    #: Epoch seconds when it entered the outbox.
    created: float
    #: Epoch seconds before which it must not be tried (again).
    next_attempt: float


@dataclass(frozen=True, slots=True)
class Told:
    """An escalation sink was sent a task's condition (:mod:`monitor.delivery.escalation`).

    Stored with the escalation's delivery, one per sink and task, so that a restart
    neither sends it again nor forgets where the condition's end must go.
    """

    sink: str
    task_id: int
    #: The condition's key.
    condition: str
    #: Epoch seconds when its escalation was due: its reminders count from then.
    due: float
