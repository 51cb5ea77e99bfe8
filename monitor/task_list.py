"""Which tracked tasks a view lists, in which order, one page at a time.

``/api/v1/tasks`` and the status page both list through :func:`select`, so they
agree on the order: active tasks (New, Aquired, Started) first, then the other
states, then the gone ones; newest id first within each group.  A cursor is
the (group, id) of the last task of a page, made opaque; the next page starts
after it.  Pages never repeat or skip a task that stays in its group while a
reader pages; one that moves (it finished, say) may be listed twice or not
at all, as in any live listing.  Pure: the caller passes the tracker's tasks.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from monitor.config.errors import _did_you_mean
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.memory import GONE, TaskMemory, state_name

__all__ = [
    "DEFAULT_LIMIT",
    "KNOWN_STATES",
    "MAX_LIMIT",
    "QueryError",
    "TaskPage",
    "TaskQuery",
    "decode_cursor",
    "encode_cursor",
    "order_key",
    "select",
]

#: Every state a task can be listed in, as the API and the page name them.
KNOWN_STATES: tuple[str, ...] = (*(s.value for s in BatchTaskState), GONE)
#: Tasks per answer of ``/api/v1/tasks`` unless ``limit`` says otherwise.
DEFAULT_LIMIT = 500
#: The largest ``limit`` accepted: a bigger answer is better fetched in pages.
MAX_LIMIT = 5000
_CURSOR_VERSION = "v1"
_BY_FOLDED_NAME = {name.casefold(): name for name in KNOWN_STATES}


class QueryError(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def order_key(memory: TaskMemory) -> tuple[int, int]:
    """Where a task is listed: (group, -id), smallest first.

    Group 0 is active, 1 finished (or Unknown), 2 gone.
    """
    if memory.gone:
        group = 2
    elif memory.info.state.is_active:
        group = 0
    else:
        group = 1
    return group, -memory.info.id


def _parse_states(values: Iterable[str]) -> frozenset[str]:
    """State names from repeated and comma-separated ``state`` values, any case."""
    states = set()
    for value in values:
        for part in value.split(","):
            name = _BY_FOLDED_NAME.get(part.strip().casefold())
            if name is None:
                hint = _did_you_mean(part.strip(), KNOWN_STATES)
                known = ", ".join(KNOWN_STATES)
                raise QueryError(f"state: unknown state {part.strip()!r}{hint}; known: {known}")
            states.add(name)
    return frozenset(states)


def _parse_limit(value: str | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise QueryError(f"limit: expected a whole number, got {value!r}") from None
    if not 1 <= limit <= maximum:
        raise QueryError(f"limit: expected 1 to {maximum}, got {limit}")
    return limit


#: Ids one ``ids`` filter may name (a digest links its tasks as runs: ``ids=21-200``).
MAX_IDS = 100_000


def _parse_ids(value: str) -> frozenset[int]:
    """``21-200,7``: task ids and runs of them, as a chat digest links its tasks."""
    ids: set[int] = set()
    for part in value.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            start, end = int(first), int(last if dash else first)
        except ValueError:
            msg = f"ids: expected ids and ranges like '7,21-200', got {part.strip()!r}"
            raise QueryError(msg) from None
        if not 0 < start <= end or len(ids) + end - start >= MAX_IDS:
            msg = f"ids: expected ranges of up to {MAX_IDS} positive ids, got {part.strip()!r}"
            raise QueryError(msg)
        ids.update(range(start, end + 1))
    return frozenset(ids)


def encode_cursor(key: tuple[int, int]) -> str:
    """The opaque form of an order key (URL-safe, no padding)."""
    group, negative_id = key
    raw = f"{_CURSOR_VERSION}:{group}:{-negative_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """The order key a cursor stands for; :class:`QueryError` for anything else."""
    problem = QueryError("cursor: not a cursor this server gave (take it from 'next')")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        version, group, task_id = raw.split(":")
        key = int(group), -int(task_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise problem from None
    if version != _CURSOR_VERSION or key[0] not in (0, 1, 2):
        raise problem
    return key


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """What to list: states (empty: all), how many, after which cursor, which ids (``None``: all)."""

    states: frozenset[str] = frozenset()
    limit: int = DEFAULT_LIMIT
    after: tuple[int, int] | None = None
    ids: frozenset[int] | None = None

    @classmethod
    def parse(
        cls,
        states: Iterable[str],
        limit: str | None,
        cursor: str | None,
        *,
        default_limit: int = DEFAULT_LIMIT,
        max_limit: int = MAX_LIMIT,
        ids: str | None = None,
    ) -> TaskQuery:
        """From query string values; :class:`QueryError` naming the bad parameter."""
        return cls(
            states=_parse_states(states),
            limit=_parse_limit(limit, default_limit, max_limit),
            after=None if cursor is None else decode_cursor(cursor),
            ids=None if ids is None else _parse_ids(ids),
        )


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a listing."""

    #: The tasks of this page, in listing order.
    memories: list[TaskMemory]
    #: How many tasks match the states (on every page, not only after the cursor).
    total: int
    #: The cursor of the next page, ``None`` on the last one.
    next: str | None


def select(tasks: Mapping[int, TaskMemory], query: TaskQuery) -> TaskPage:
    """The page of ``tasks`` that ``query`` asks for.

    One pass over the tasks and a heap of ``limit + 1``: a page of 300 out of
    10,000 tasks does not sort the other 9,700.
    """
    states, ids = query.states, query.ids
    matching = [
        m
        for m in tasks.values()
        if (not states or state_name(m) in states) and (ids is None or m.info.id in ids)
    ]
    after = query.after
    rest = matching if after is None else [m for m in matching if order_key(m) > after]
    page = heapq.nsmallest(query.limit + 1, rest, key=order_key)
    more = len(page) > query.limit
    del page[query.limit :]
    return TaskPage(
        memories=page,
        total=len(matching),
        next=encode_cursor(order_key(page[-1])) if more else None,
    )
