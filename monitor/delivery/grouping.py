"""Which of a chat sink's queued deliveries go out now, and whether alone or as one digest.

A storm of 200 failures must not become 200 messages, a quiet night must not
ping anyone, and a sink must not post more than it is allowed to in an hour.
The decision is pure: given the sink's queued rows, the time, its rules and
when it posted in the last hour, :func:`plan` says which messages to send now
and when to look again.  The rows stay in the outbox until their message went
out, so a restart decides the same again from the same rows.

- **Window** (``group_window``): the oldest queued row opens it; nothing goes
  out before it closes.  Then, if the rows name more than ``group_min`` tasks,
  they go as one digest, else one message each, as without a window.  So a lone
  event waits at most ``group_window``: the latency bought for grouping.
- **Quiet hours** (``quiet``): while quiet, rows wait (those of a
  ``quiet_except`` type do not); afterwards, everything that arrived while quiet
  goes as one digest, so a condition that ended meanwhile is reported as ended.
- **Cap** (``max_per_hour``): at most that many messages in any hour.  When the
  due messages need more than the room left, the last one that fits is a digest
  of all the rest, saying how many events were held back; with no room, rows
  wait until a message of the last hour is an hour old.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from monitor.delivery.outbox import Queued
from monitor.windows import Window

__all__ = ["HOUR", "Batch", "Grouping", "Plan", "plan", "quiet_hours"]

#: The cap's period, in seconds.
HOUR = 3600.0


#: Quiet windows that overlap or follow each other are one quiet period, followed this far.
_QUIET_HORIZON = 8 * 24 * HOUR


def _never_quiet(_: float) -> float | None:
    return None


def quiet_hours(windows: Sequence[Window]) -> Callable[[float], float | None]:
    """For :attr:`Grouping.quiet_until`: when the quiet period around a moment ends.

    Back-to-back windows (``Mon-Fri 22:00-07:00`` then ``Sat-Sun``) make one period.
    Quiet all week long: the period is followed for 8 days, then looked at again.
    """
    if not windows:
        return _never_quiet

    def quiet_until(at: float) -> float | None:
        moment = datetime.fromtimestamp(at, UTC)
        limit = at + _QUIET_HORIZON
        while moment.timestamp() < limit:
            active = [w for w in windows if w.active(moment)]
            if not active:
                return None if moment.timestamp() == at else moment.timestamp()
            ends = [w.next_change(moment) for w in active]
            moment = max((end for end in ends if end is not None), default=moment)
            if all(end is None for end in ends):
                break
        return limit

    return quiet_until


@dataclass(frozen=True, slots=True)
class Grouping:
    """One sink's rules for grouping (the defaults: every row alone, at once)."""

    #: Seconds a window stays open (``0``: no window).
    window: float = 0.0
    #: More tasks than this in a window make a digest.
    group_min: int = 3
    #: Messages per hour at most (``None``: no cap).
    max_per_hour: int | None = None
    #: The end (epoch seconds) of the quiet period around an epoch time, ``None`` if not quiet.
    quiet_until: Callable[[float], float | None] = _never_quiet
    #: Event types that are sent during quiet hours anyway.
    quiet_except: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        """Whether any rule is set: else the sink's deliveries go out one by one, as ever."""
        return (
            self.window > 0 or self.max_per_hour is not None or self.quiet_until is not _never_quiet
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """One message to send: one delivery, or a digest of several."""

    seqs: tuple[int, ...]
    digest: bool = False
    #: Events in this digest because the hour's cap left no room for them alone.
    held_back: int = 0
    #: Whether some of its rows waited for quiet hours to end.
    after_quiet: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send now, in order, and when to look again (``None``: at the next news)."""

    batches: list[Batch] = field(default_factory=list)
    wake_at: float | None = None


def _key(row: Queued) -> int | None:
    """Rows of one task (or of the monitor, ``None``) keep their order."""
    return row.task_id


def plan(rows: Sequence[Queued], now: float, rules: Grouping, sent: Sequence[float] = ()) -> Plan:
    """The messages to send at ``now`` (epoch seconds) from a sink's queued ``rows``.

    ``sent``: when the sink posted messages (epoch seconds); only the last
    hour's count, for the cap.  A task's rows keep their order: once one of
    them waits (for its retry, for quiet hours to end), its later rows wait too.
    """
    wake: list[float] = []
    waiting: set[int | None] = set()
    quiet_end = rules.quiet_until(now)
    due: list[Queued] = []
    for row in sorted(rows, key=lambda r: r.seq):
        key = _key(row)
        if key in waiting:
            continue
        if row.next_attempt > now:
            waiting.add(key)
            wake.append(row.next_attempt)
        elif quiet_end is not None and row.type not in rules.quiet_except:
            waiting.add(key)
            wake.append(quiet_end)
        else:
            due.append(row)
    held_quiet = [
        r
        for r in due
        if r.type not in rules.quiet_except and rules.quiet_until(r.created) is not None
    ]
    batches: list[Batch] = []
    if held_quiet:
        batches.append(Batch(tuple(r.seq for r in due), digest=True, after_quiet=True))
    elif due and rules.window > 0 and now < (opened := min(r.created for r in due)) + rules.window:
        wake.append(opened + rules.window)
    elif due and rules.window > 0 and len({_key(r) for r in due}) > rules.group_min:
        batches.append(Batch(tuple(r.seq for r in due), digest=True))
    else:
        batches.extend(Batch((r.seq,)) for r in due)
    if rules.max_per_hour is not None and batches:
        batches = _capped(batches, now, rules.max_per_hour, sent, wake)
    return Plan(batches, min(wake, default=None))


def _capped(
    batches: list[Batch], now: float, cap: int, sent: Sequence[float], wake: list[float]
) -> list[Batch]:
    """The batches that fit in the hour's room; the rest folded into the last one, or waiting."""
    recent = sorted(t for t in sent if t > now - HOUR)
    room = cap - len(recent)
    if room <= 0:
        wake.append(recent[len(recent) - cap] + HOUR)
        return []
    if len(batches) <= room:
        return batches
    kept, rest = batches[: room - 1], batches[room - 1 :]
    seqs = tuple(seq for batch in rest for seq in batch.seqs)
    folded = Batch(
        seqs,
        digest=True,
        held_back=len(seqs),
        after_quiet=any(batch.after_quiet for batch in rest),
    )
    return [*kept, folded]
