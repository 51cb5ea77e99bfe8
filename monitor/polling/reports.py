"""What the poller logs once per streak, not on every cycle: bad answers and anomalies."""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from monitor.superoffice.errors import ApiError, MalformedResponse
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState, TaskListing

__all__ = ["Reports"]

log = structlog.get_logger("batchmon.poller")


class Reports:
    """Which tasks and lists are in a streak of bad answers, so each streak is logged once."""

    def __init__(self) -> None:
        self._malformed: set[int] = set()
        #: States whose list answers are unreadable.
        self._malformed_lists: set[BatchTaskState] = set()
        self._anomalies: dict[int, tuple[str, ...]] = {}

    def drop(self, task_ids: Iterable[int]) -> None:
        """Forget what is kept per task."""
        for task_id in task_ids:
            self._anomalies.pop(task_id, None)
            self._malformed.discard(task_id)

    def sizes(self) -> tuple[int, int]:
        """How many tasks each per-task table holds (they must stay bounded)."""
        return len(self._malformed), len(self._anomalies)

    def listing(self, state: BatchTaskState, answer: TaskListing | ApiError) -> None:
        """A list answer that cannot be read is said once (its tasks are fetched by id)."""
        if isinstance(answer, MalformedResponse):
            if state not in self._malformed_lists:
                self._malformed_lists.add(state)
                log.warning(
                    "list_answer_malformed",
                    state=state.value,
                    error=str(answer),
                    instead="fetching its tasks by id",
                )
        elif not isinstance(answer, ApiError) and state in self._malformed_lists:
            self._malformed_lists.discard(state)
            log.info("list_answer_valid_again", state=state.value)

    def failure(self, task_id: int, error: ApiError) -> None:
        """A GET that failed: a malformed answer is said once per streak, the rest at debug."""
        if isinstance(error, MalformedResponse):
            if task_id not in self._malformed:
                self._malformed.add(task_id)
                log.warning(
                    "task_answer_malformed",
                    task_id=task_id,
                    error=str(error),
                    error_type=error.error_type,
                    kept="last known state",
                )
            return
        log.debug("task_poll_failed", task_id=task_id, reason=error.reason, error=str(error))

    def answer(self, info: BatchTaskInfo, *, listed: bool) -> None:
        """A valid answer: the end of a malformed streak, anomalies once.

        A clean list row ends neither a malformed streak nor an anomaly of the task's own
        GET (the two answers differ in what they carry): only a GET does.
        """
        if info.id in self._malformed and not listed:
            self._malformed.discard(info.id)
            log.info("task_answer_valid_again", task_id=info.id)
        if info.anomalies and self._anomalies.get(info.id) != info.anomalies:
            log.warning("task_answer_anomalous", task_id=info.id, anomalies=list(info.anomalies))
        if info.anomalies:
            self._anomalies[info.id] = info.anomalies
        elif not listed:
            self._anomalies.pop(info.id, None)
