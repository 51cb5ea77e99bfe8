"""``[[watch.discover]]``: each rule's list calls on its own schedule, and which rows it wants.

Every row of a rule's list that matches the rule is discovered at once,
observed from that row (a task first seen finished is announced with its
outcome); a known task's row only if it changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from functools import partial

import anyio
import structlog

from monitor.config import DiscoverRule
from monitor.polling.batching import SETTLE_SLICE, Batcher, News
from monitor.polling.schedule import Row, Schedule
from monitor.superoffice.client import SuperOfficeClient
from monitor.superoffice.errors import ApiError
from monitor.superoffice.models import BatchTaskInfo, TaskListing
from monitor.tracking.events import Event
from monitor.tracking.memory import TaskMemory

__all__ = ["Discovery", "TakeRow", "rule_matches"]

log = structlog.get_logger("batchmon.poller")

#: Observes a row: its events, and the task's memory if it changed in a way worth storing.
TakeRow = Callable[[Row], tuple[list[Event], TaskMemory | None]]


def rule_matches(rule: DiscoverRule, info: BatchTaskInfo) -> bool:
    """Whether a discovery rule's list call would find this task (as last seen)."""
    associate = info.associate_id
    if rule.associates == [0]:
        owned = associate == 0
    elif rule.associates == [-1]:
        owned = associate is not None and associate != 0
    else:
        owned = not rule.associates or associate in rule.associates
    named = rule.name is None or fnmatchcase(info.name or "", rule.name)
    return owned and named and info.state.value in rule.states


class Discovery:
    """Runs the discovery rules' list calls and takes in the rows they want."""

    def __init__(
        self,
        client: SuperOfficeClient,
        rules: Sequence[DiscoverRule],
        schedule: Schedule,
        tasks: Mapping[int, TaskMemory],
        take: TakeRow,
        batcher: Batcher,
    ) -> None:
        self._client = client
        self._rules = list(rules)
        self._schedule = schedule
        self._tasks = tasks
        self._take = take
        self._batcher = batcher
        #: Rules whose list calls fail (logged once per failure streak).
        self._failing: set[int] = set()

    async def run(self) -> None:
        """Run each rule on its own schedule, forever."""
        async with anyio.create_task_group() as group:
            for rule in self._rules:
                group.start_soon(self._every, rule)

    async def _every(self, rule: DiscoverRule) -> None:
        while True:
            await self.discover(rule)
            await anyio.sleep(self._schedule.discovery_delay(rule.every))

    async def discover(self, rule: DiscoverRule) -> list[int]:
        """Run one rule's list calls; watch the matching tasks; returns the new ids."""
        found: list[int] = []
        for state in rule.states:
            sent = anyio.current_time()
            listing = await self._list(rule, state)
            if listing is not None:
                found.extend(await self._take_rows(rule, listing, sent))
        if found:
            log.info("tasks_discovered", count=len(found), ids=found[:20])
        return found

    async def _list(self, rule: DiscoverRule, state: str) -> TaskListing | None:
        """One list call of a rule (``None``: it failed, said once per failure streak)."""
        key = id(rule)
        try:
            listing = await self._client.list_tasks_in_state(
                rule.associates, state, select=BatchTaskInfo.POLL_FIELDS
            )
        except ApiError as exc:
            if key not in self._failing:
                self._failing.add(key)
                log.warning("discovery_failed", state=state, reason=exc.reason, error=str(exc))
            return None
        if key in self._failing:
            self._failing.discard(key)
            log.info("discovery_recovered", state=state)
        return listing

    async def _take_rows(self, rule: DiscoverRule, listing: TaskListing, sent: float) -> list[int]:
        """Observe the rows the rule wants; returns the ids watched anew."""
        found: list[int] = []
        news = News()
        matches = partial(rule_matches, rule)
        for index, task_id in enumerate(listing):
            if index % SETTLE_SLICE == 0:
                await self._batcher.flush(news)
            row = self._schedule.discovered(task_id, listing, sent, self._tasks, matches)
            if row is None:
                continue
            if self._schedule.watch([task_id], anyio.current_time()):
                found.append(task_id)
            news.add(*self._take(row))
            self._schedule.listed(row.info, anyio.current_time())
        await self._batcher.flush(news)
        return found
