"""One tenant's batch tasks and the BatchTask API over them, shared by every simulator.

Apart from the server so that a simulator serving one tenant and one serving many answer with
the same handlers: a :class:`TaskSpace` holds what a tenant's API shows (its tasks, the scenario
moving them, the stops asked for, the edits a test pinned), and the functions here answer the
BatchTask calls from a space given to them, so many tenants cost their data, not a copy of the
handlers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiohttp import web

from monitor.simulator.responses import bad_request, dumps, error_response, json_object
from monitor.simulator.scenario import Scenario
from monitor.simulator.stopping import PendingStop, RecordedRequest, accept_stop, apply_stops
from monitor.simulator.tasks import (
    SimTask,
    apply_select,
    owned_by,
    selected_keys,
    state_filter,
    update_task,
)
from monitor.superoffice.models import BatchTaskState

__all__ = ["TaskSpace", "get_task", "list_tasks", "stop_batch_job"]

_INTEGER = re.compile(r"-?[0-9]{1,10}")


@dataclass(slots=True, eq=False)
class TaskSpace:
    """What one tenant's BatchTask API shows; task ids are unique only within a space."""

    scenario: Scenario | None = None
    tasks: dict[int, SimTask] = field(default_factory=dict)
    #: Every ``StopBatchJob`` request, whole, in the order they came.
    stop_requests: list[RecordedRequest] = field(default_factory=list)
    stops: dict[int, PendingStop] = field(default_factory=dict)
    #: Fields a control request set on a task, kept over what the scenario says.
    pins: dict[int, dict[str, object]] = field(default_factory=dict)

    def advance(self, now: datetime) -> None:
        """Move the tasks to ``now``: stops, the scenario and the pins, stops again."""
        # Before the scenario moves on: whether a stop found its task still running is
        # decided on the task as last seen; after it: a stopped task stays stopped.
        apply_stops(self.tasks, self.stops, now)
        if self.scenario is None and not self.pins:
            return
        if self.scenario is not None:
            self.scenario.apply(self.tasks, now)
        for task_id, fields_ in self.pins.items():
            task = self.tasks.get(task_id)
            if task is not None:
                update_task(task, fields_)
        apply_stops(self.tasks, self.stops, now)

    def owns(self, task_id: int) -> bool:
        """Whether the task exists or the scenario will make it."""
        return task_id in self.tasks or (
            self.scenario is not None and task_id in self.scenario.task_ids
        )


def get_task(request: web.Request, space: TaskSpace, tz_style: str) -> web.Response:
    """``GET /v1/BatchTask/{id}``."""
    raw = request.match_info["id"]
    if not _INTEGER.fullmatch(raw):
        return bad_request(f"The value '{raw}' is not a valid BatchTask id")
    task = space.tasks.get(int(raw))
    if task is None or task.deleted:
        return error_response(
            404,
            "SoNotFoundException",
            f"BatchTask id {int(raw)} not found",
            source="SuperOffice.Services.Implementation",
        )
    return web.json_response(task.to_json(tz_style), dumps=dumps)


async def list_tasks(
    request: web.Request, space: TaskSpace, tz_style: str, *, with_state: bool
) -> web.Response:
    """Answer an ``Agents/Batch`` list call, honouring ``$select``."""
    body = await json_object(request)
    if isinstance(body, web.Response):
        return body
    # ASP.NET binds carrier properties case-insensitively.
    carrier = {str(key).casefold(): value for key, value in body.items()}
    associate_ids = carrier.get("associateids")
    if not isinstance(associate_ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in associate_ids
    ):
        return bad_request("AssociateIds must be an array of integers")
    states: frozenset[BatchTaskState] | None = None
    if with_state:
        states = state_filter(carrier.get("state"))
        if states is None:
            return bad_request(f"State {carrier.get('state')!r} is not a BatchTaskState")
    query = request.query.get("$select", "")
    select = selected_keys(query) if query.strip() else None
    answer = [
        apply_select(task.to_json(tz_style), select)
        for task in sorted(space.tasks.values(), key=lambda task: task.id)
        if not task.deleted
        and owned_by(task, associate_ids)
        and (states is None or task.state in states)
    ]
    return web.json_response(answer, dumps=dumps)


async def stop_batch_job(
    request: web.Request, space: TaskSpace, now: datetime, delay: timedelta
) -> web.Response:
    """``StopBatchJob``: ``true`` and a stop ``delay`` from ``now``, or ``false``.

    An unknown task is ``false`` too: the reference documents no other answer.
    """
    body = await request.read()
    space.stop_requests.append(
        RecordedRequest(
            request.method, request.path, dict(request.query), dict(request.headers), body
        )
    )
    carrier = await json_object(request)
    if isinstance(carrier, web.Response):
        return carrier
    task_id = {str(key).casefold(): value for key, value in carrier.items()}.get("id")
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        return bad_request("Id must be an integer")
    task = space.tasks.get(task_id)
    stopped = task is not None and accept_stop(task)
    if task is not None and stopped and task_id not in space.stops:
        space.stops[task_id] = PendingStop(now + delay, task.start_count)
    return web.json_response(stopped, dumps=dumps)
