"""The ``[watch]`` and ``[poll]`` sections: which tasks to watch, and how often to poll them."""

# pydantic copies a mutable default for each instance; ruff cannot see across modules that
# _Section is a pydantic model (astral-sh/ruff#13630), so it would flag ``= []`` as shared.
# ruff: noqa: RUF012

from __future__ import annotations

from typing import Annotated, Final, Self

from pydantic import Field, Strict, field_validator, model_validator

from monitor.config.base import _Section
from monitor.config.errors import _did_you_mean, _invalid, _problem
from monitor.config.values import _INT32_MAX, Duration, _Float, _Int, _TaskId

__all__ = ["DISCOVERABLE_STATES", "DiscoverRule", "PollConfig", "WatchConfig"]

#: The states a discovery rule can ask for (``All`` is a wildcard, ``Unknown`` no state).
DISCOVERABLE_STATES: Final = (
    "New",
    "Aquired",
    "Started",
    "Succeeded",
    "Failed",
    "SucceededManualCleanup",
)


class DiscoverRule(_Section):
    """Watch tasks found by an ``Agents/Batch`` list call, not only listed ids."""

    #: ``[]`` all tasks, ``[0]`` system tasks, ``[-1]`` all user tasks, else these associates.
    associates: list[Annotated[int, Strict(), Field(ge=-1, le=_INT32_MAX)]] = []
    #: Only tasks in these states are watched.
    states: list[str] = ["New", "Aquired", "Started"]
    #: A glob on the task name (``"Export*"``); ``None`` means any.
    name: Annotated[str, Field(min_length=1)] | None = None
    #: How often the list call runs.
    every: Annotated[Duration, Field(gt=0)] = 30.0

    @field_validator("states")
    @classmethod
    def _known_states(cls, states: list[str]) -> list[str]:
        """Refuse a misspelt state (``Acquired``): the rule would silently find nothing.

        Kept in lifecycle order, the order the lists are asked for: a task that moves on
        while they are answered is then in one of them, whatever order the file gave.
        """
        if not states:
            raise ValueError("must not be empty; leave it out for New, Aquired and Started")
        problems = []
        for index, state in enumerate(states):
            if state not in DISCOVERABLE_STATES:
                hint = _did_you_mean(state, DISCOVERABLE_STATES)
                problems.append(_problem((index,), f"unknown state {state!r}{hint}"))
        if problems:
            raise _invalid(cls.__name__, problems)
        return sorted(set(states), key=DISCOVERABLE_STATES.index)


class WatchConfig(_Section):
    """The tasks to watch: listed ids, and tasks that discovery rules find."""

    #: Task ids, duplicates dropped, order kept.
    ids: list[_TaskId] = []
    #: ``[[watch.discover]]`` rules.
    discover: list[DiscoverRule] = []
    #: A task finished or gone this long is forgotten (memory, store, API, page, metrics);
    #: watched ids stay watched.  A task first seen finished is announced with its
    #: outcome only if its run began within this long.
    forget_after: Annotated[Duration, Field(gt=0)] = 86400.0

    @field_validator("ids")
    @classmethod
    def _unique(cls, ids: list[int]) -> list[int]:
        """Drop repeated ids: watching a task twice would announce everything twice."""
        return list(dict.fromkeys(ids))


class PollConfig(_Section):
    """When tasks are polled, and when silence or failure becomes an event."""

    #: For active tasks.
    interval: Annotated[Duration, Field(gt=0)] = 5.0
    #: For watched ids the API does not know (yet): a typo, or a task not created yet.
    idle_interval: Annotated[Duration, Field(gt=0)] = 60.0
    #: A finished task watched by id (or failed) is fetched again this often, to see it
    #: run again or be cleaned up, until it is gone or forgotten.
    finished_interval: Annotated[Duration, Field(gt=0)] = 600.0
    #: An active task without progress for this long is ``task.stalled``.
    stall_after: Annotated[Duration, Field(gt=0)] = 900.0
    #: Percentage points between ``task.progress`` events.
    progress_step: Annotated[_Int, Field(ge=1, le=100)] = 10
    #: At most one ``task.progress`` per task per this long.
    progress_min_interval: Duration = 30.0
    #: Random spread of each interval, as a fraction of it.
    jitter: Annotated[_Float, Field(ge=0, le=0.5)] = 0.1
    #: A finished task is polled once more to confirm it, and for this long after (it may
    #: be restarted, or deleted); then no more.
    terminal_linger: Duration = 0.0
    #: From this many due tasks in the same state up, one list call replaces their GETs.
    bulk_threshold: Annotated[_Int, Field(ge=2)] = 3
    #: Consecutive failed poll cycles before ``monitor.api_down``.
    api_down_after: Annotated[_Int, Field(ge=1)] = 3
    #: A task stalled this long more (after ``stall_after``) is stopped, once, when
    #: SuperOffice marks it CanCancel (``StopBatchJob``); ``None``: never.
    stop_stalled_after: Annotated[Duration, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _interval_within_idle(self) -> Self:
        """Active tasks are the ones worth watching closely, so they are polled at least as often."""
        if self.interval > self.idle_interval:
            message = (
                f"must not be longer than poll.idle_interval ({self.idle_interval:g}s), "
                f"got {self.interval:g}s"
            )
            raise _invalid(type(self).__name__, [_problem(("interval",), message)])
        return self
