"""Many SuperOffice Online tenants in one simulator, as a partner hosting customers sees them.

``batchmon simulate --tenants N`` runs it, and the tests of a monitor watching many tenants run
it on loopback.  Each tenant lives under its own base, ``/{ContextIdentifier}/api``, as
SuperOffice Online routes ``https://online.superoffice.com/Cust12345/api``; it has its own
tasks (ids repeat across tenants, as they do in SuperOffice), its own seeded story, its own
``StopBatchJob`` and its own entry in the tenant-status API (``GET /api/state/{context}``).
The same credentials open every tenant, but a request only ever sees its own tenant's tasks.

The handlers are shared: a tenant is its data (:class:`FleetTenant`), and one middleware finds
it from the path, so 200 tenants cost 200 task sets, not 200 applications.  Tests and demos
steer a tenant through the control API under ``/simulator/tenants``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from monitor.simulator.auth import Credentials
from monitor.simulator.listen import listen
from monitor.simulator.responses import bad_request, dumps, error_response
from monitor.simulator.scenario import Scenario
from monitor.simulator.space import TaskSpace, get_task, list_tasks, stop_batch_job
from monitor.simulator.tasks import SimTask, date_forms
from monitor.simulator.tenant import OnlineTenant, set_tenant_state, tenant_refusal, tenant_status
from monitor.superoffice.models import BatchTaskState

__all__ = ["MAX_TENANTS", "Fleet", "FleetTenant", "tenant_names"]

#: The most tenants one simulator serves (``--tenants`` is checked against it).
MAX_TENANTS = 1000

_FIRST_NUMBER = 10001
#: Distinct stories (seeded scenarios); more tenants share them, each from a start of its own,
#: so 200 tenants hold the scripts of 32 (the scripts are most of a tenant's memory).
_STORIES = 32
#: Seconds a tenant's story may start after the first tenant's.
_MAX_LAG = 30.0
#: What ``PUT /simulator/tenants/{name}/tasks/{id}`` may set, and the type each takes.
_TASK_FIELDS: Mapping[str, type] = {
    "state": str,
    "progress": int,
    "progress_description": str,
    "result": str,
    "response": str,
    "deleted": bool,
}
#: Routes that take no API credentials: the tenant-status API and the simulator's control.
_PUBLIC_ROUTES = frozenset({"tenant-state", "tenants", "tenant-control", "task-control"})


def _utc_now() -> datetime:
    return datetime.now(UTC)


def tenant_names(count: int, seed: int) -> list[str]:
    """``count`` context identifiers like ``Cust10342``, in order; the same seed, the same names."""
    if not 1 <= count <= MAX_TENANTS:
        msg = f"the number of tenants must be 1..{MAX_TENANTS}, got {count}"
        raise ValueError(msg)
    rng = random.Random(seed)  # noqa: S311 - names for a simulation, not secrets
    numbers = rng.sample(range(_FIRST_NUMBER, _FIRST_NUMBER + 10 * MAX_TENANTS), count)
    return [f"Cust{number}" for number in sorted(numbers)]


@dataclass(slots=True, eq=False)
class FleetTenant:
    """One tenant: its entry in the tenant-status API and what its BatchTask API shows."""

    online: OnlineTenant
    space: TaskSpace
    #: API requests addressed to this tenant, whatever their answer.
    requests: int = 0

    @property
    def name(self) -> str:
        """The tenant's context identifier, e.g. ``Cust10342``."""
        return self.online.context_id

    @property
    def tasks(self) -> dict[int, SimTask]:
        """The tenant's tasks by id, as its API showed them at the last request."""
        return self.space.tasks


_TENANT = web.RequestKey("tenant", FleetTenant)


class Fleet:
    """``count`` SuperOffice Online tenants on loopback, each with ``tasks`` seeded tasks.

    Tenant names come from ``seed`` (:func:`tenant_names`), and so does each tenant's story:
    one of up to 32 seeded by it (:meth:`Scenario.generate`), told from a start of its own up to
    30 s after ``start`` (the first tenant's), so the tenants do not move in step.
    Authentication is basic (``username``/``password``) for every tenant.
    ``on_request`` is called with a tenant's name at each API request addressed to it, before
    any refusal, on the simulator's loop: a test timing a replica's takeover learns from it
    when each tenant was asked again.
    """

    def __init__(
        self,
        count: int,
        *,
        seed: int = 1,
        tasks: int = 8,
        start: datetime | None = None,
        speed: float = 1.0,
        loop: bool = False,
        clock: Callable[[], datetime] | None = None,
        username: str = "batchmon",
        password: str = "batchmon",  # noqa: S107 - a loopback simulator's well-known default
        tz_style: str = "offset",
        stop_delay: timedelta = timedelta(seconds=1),
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        date_forms(tz_style)  # refuse an unknown style now, not at the first request
        if tasks < 0:
            msg = f"tasks must not be negative, got {tasks}"
            raise ValueError(msg)
        self._clock = clock or _utc_now
        self._tz_style = tz_style
        self.stop_delay = stop_delay
        self._on_request = on_request
        self._credentials = Credentials(
            self._clock, basic=f"{username}:{password}".encode(), ticket=None, token=None
        )
        begin = start or self._clock()
        rng = random.Random(seed)  # noqa: S311 - the seed must reproduce every story
        stories = [
            Scenario.generate(
                seed=rng.getrandbits(32), count=tasks, start=begin, speed=speed, loop=loop
            )
            for _ in range(min(count, _STORIES) if tasks else 0)
        ]
        #: The tenants by name, in name order.
        self.tenants: dict[str, FleetTenant] = {}
        for index, name in enumerate(tenant_names(count, seed)):
            scenario = None
            if stories:
                # Its own timeline: the story starts a few seconds later than the others'.
                lag = timedelta(seconds=rng.uniform(0.0, _MAX_LAG) / speed) if index else None
                story = stories[index % len(stories)]
                scenario = story.starting_at(begin + lag) if lag else story
            online = OnlineTenant(context_id=name, node="")
            self.tenants[name] = FleetTenant(online, TaskSpace(scenario))
        # Context identifiers are case-insensitive in SuperOffice's routing.
        self._by_folded = {name.casefold(): tenant for name, tenant in self.tenants.items()}
        self._runner: web.AppRunner | None = None
        self._origin: str | None = None
        self.app = web.Application(middlewares=[self._serve])
        router = self.app.router
        router.add_get("/{tenant}/api/v1/BatchTask/{id}", self._get_task)
        batch = "/{tenant}/api/v1/Agents/Batch/"
        router.add_post(batch + "GetBatchTaskInfosByAssociates", self._by_associates)
        router.add_post(batch + "GetBatchTaskInfosByAssociatesAndState", self._by_state)
        router.add_post(batch + "StopBatchJob", self._stop_batch_job)
        router.add_get("/api/state/{context}", self._tenant_state, name="tenant-state")
        router.add_get("/simulator/tenants", self._list_tenants, name="tenants")
        router.add_put("/simulator/tenants/{tenant}", self._set_state, name="tenant-control")
        router.add_put(
            "/simulator/tenants/{tenant}/tasks/{id}", self._set_task_fields, name="task-control"
        )

    # --- lifecycle

    @property
    def environment_url(self) -> str:
        """The environment's host (tenant status, control): no path."""
        if self._origin is None:
            msg = "the simulator is not started"
            raise RuntimeError(msg)
        return self._origin

    @property
    def state_url(self) -> str:
        """The tenant-status API; a context identifier is added: ``.../api/state/Cust10342``."""
        return self.environment_url + "/api/state"

    def url(self, name: str) -> str:
        """A tenant's API base, e.g. ``http://127.0.0.1:41234/Cust10342/api``."""
        return f"{self.environment_url}/{self.tenant(name).name}/api"

    def tenant(self, name: str) -> FleetTenant:
        """The tenant called ``name`` (case-insensitive); :class:`KeyError` if there is none."""
        try:
            return self._by_folded[name.casefold()]
        except KeyError:
            msg = f"no tenant {name!r} in this simulator"
            raise KeyError(msg) from None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port) and return the environment's URL."""
        if self._runner is not None:
            msg = "the simulator is already started"
            raise RuntimeError(msg)
        self._runner, self._origin = await listen(self.app, host, port)
        return self._origin

    async def stop(self) -> None:
        """Stop listening; safe to call twice."""
        runner, self._runner, self._origin = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- scripting

    def set_task(self, tenant: str, task_id: int, /, **fields: object) -> SimTask:
        """Pin fields of one tenant's task over its story, e.g. ``state=BatchTaskState.FAILED``.

        A task the tenant does not have yet is added (New, created now).  The pinned fields
        stay whatever the scenario says later; the other fields move on with it.  A task given
        a state stays listed too (``deleted=False``) unless ``deleted`` says otherwise.
        """
        if "state" in fields:
            fields.setdefault("deleted", False)
        space = self.tenant(tenant).space
        now = self._clock()
        space.advance(now)
        if task_id not in space.tasks:
            space.tasks[task_id] = SimTask(id=task_id, created=now)
        space.pins.setdefault(task_id, {}).update(fields)
        space.advance(now)
        return space.tasks[task_id]

    # --- request handling

    @web.middleware
    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Find the tenant, refuse it if unknown or down, check credentials, advance its story."""
        route = request.match_info.route.name
        if route in _PUBLIC_ROUTES and route != "tenant-state":
            name = request.match_info.get("tenant")
            if name is not None and name.casefold() not in self._by_folded:
                return error_response(404, "NoTenant", f"The simulator has no tenant {name}")
        if route in _PUBLIC_ROUTES:
            return await handler(request)
        name = request.match_info["tenant"]
        tenant = self._by_folded.get(name.casefold())
        if tenant is not None:
            tenant.requests += 1
            if self._on_request is not None:
                self._on_request(tenant.name)
        refusal = tenant_refusal(tenant.online if tenant else None, "", name)
        if refusal is not None:
            return refusal
        assert tenant is not None  # refused above otherwise
        if not self._credentials.authorized(request, None):
            return error_response(
                401,
                "SoAuthenticationException",
                "Authentication failed: invalid or missing credentials",
                headers={hdrs.WWW_AUTHENTICATE: 'Basic realm="SuperOffice"'},
            )
        tenant.space.advance(self._clock())
        request[_TENANT] = tenant
        return await handler(request)

    async def _get_task(self, request: web.Request) -> web.Response:
        return get_task(request, request[_TENANT].space, self._tz_style)

    async def _by_associates(self, request: web.Request) -> web.Response:
        return await list_tasks(request, request[_TENANT].space, self._tz_style, with_state=False)

    async def _by_state(self, request: web.Request) -> web.Response:
        return await list_tasks(request, request[_TENANT].space, self._tz_style, with_state=True)

    async def _stop_batch_job(self, request: web.Request) -> web.Response:
        space = request[_TENANT].space
        return await stop_batch_job(request, space, self._clock(), self.stop_delay)

    async def _tenant_state(self, request: web.Request) -> web.Response:
        """``GET /api/state/{context}``: the tenant's entry, or ``Unknown`` for a stranger."""
        context = request.match_info["context"]
        tenant = self._by_folded.get(context.casefold())
        origin = f"{request.scheme}://{request.host}"
        online = tenant.online if tenant else None
        return web.json_response(tenant_status(online, context, self._clock(), origin), dumps=dumps)

    async def _list_tenants(self, request: web.Request) -> web.Response:
        """``GET /simulator/tenants``: every tenant's status entry, in name order."""
        origin = f"{request.scheme}://{request.host}"
        now = self._clock()
        answer = [tenant_status(t.online, name, now, origin) for name, t in self.tenants.items()]
        return web.json_response(answer, dumps=dumps)

    async def _set_state(self, request: web.Request) -> web.Response:
        """``PUT /simulator/tenants/{name}`` ``{"state": ..., "valid_for": s}``: as
        ``PUT /simulator/tenant`` does for the one-tenant simulator."""
        tenant = self.tenant(request.match_info["tenant"])
        return await set_tenant_state(request, tenant.online, self._clock())

    async def _set_task_fields(self, request: web.Request) -> web.Response:
        """``PUT /simulator/tenants/{name}/tasks/{id}`` ``{"state": "Failed", "result": ...}``:
        pin fields of a tenant's task (:meth:`set_task`); answers the task as its API shows it."""
        raw_id = request.match_info["id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        fields = _task_fields(body)
        if not raw_id.isdigit() or len(raw_id) > 10 or isinstance(fields, str):
            problem = fields if isinstance(fields, str) else f"{raw_id!r} is not a task id"
            return bad_request(problem)
        task = self.set_task(request.match_info["tenant"], int(raw_id), **fields)
        return web.json_response(task.to_json(self._tz_style), dumps=dumps)


def _task_fields(body: object) -> dict[str, object] | str:
    """The task fields a control request sets, or what is wrong with it."""
    expected = "Expected an object with some of " + ", ".join(_TASK_FIELDS)
    if not isinstance(body, dict) or not body or body.keys() - _TASK_FIELDS.keys():
        return expected
    fields: dict[str, object] = {}
    for key, value in body.items():
        kind = _TASK_FIELDS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key} must be a {kind.__name__}"
        fields[key] = value
    state = fields.get("state")
    if isinstance(state, str):
        try:
            fields["state"] = BatchTaskState(state)
        except ValueError:
            return "state must be one of " + ", ".join(BatchTaskState)
    progress = fields.get("progress")
    if isinstance(progress, int) and not 0 <= progress <= 100:
        return "progress must be 0..100"
    return fields
