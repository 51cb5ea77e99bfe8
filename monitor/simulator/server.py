"""The simulator itself: an aiohttp app serving the BatchTask API, scriptable from tests.

What is left once tasks, the scenario, tenant routing and authentication live in their own
modules: the routes, the middleware that records requests, serves scripted faults and checks
tenant and credentials, the BatchTask handlers, and the server's lifecycle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import anyio
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from monitor.simulator.auth import (
    Credentials,
    OAuthApp,
    SystemUserApp,
    oauth_token,
    system_user_login,
)
from monitor.simulator.listen import listen
from monitor.simulator.responses import Fault, dumps, error_response
from monitor.simulator.scenario import Scenario
from monitor.simulator.space import TaskSpace, get_task, list_tasks, stop_batch_job
from monitor.simulator.stopping import RecordedRequest
from monitor.simulator.tasks import SimTask, date_forms, update_task
from monitor.simulator.tenant import OnlineTenant, set_tenant_state, tenant_refusal, tenant_status

__all__ = ["Simulator"]

_JSON_TYPE = "application/json; charset=utf-8"


def _utc_now() -> datetime:
    return datetime.now(UTC)


#: Routes that take no API credentials: the login and tenant-status hosts.
_PUBLIC_ROUTES = frozenset(
    {"oauth-tokens", "system-user", "jwks", "tenant-state", "tenant-control"}
)
_API_ROUTES = (
    ("GET", "/v1/BatchTask/{id}", "_get_task"),
    ("POST", "/v1/Agents/Batch/GetBatchTaskInfosByAssociates", "_by_associates"),
    ("POST", "/v1/Agents/Batch/GetBatchTaskInfosByAssociatesAndState", "_by_associates_and_state"),
    ("POST", "/v1/Agents/Batch/StopBatchJob", "_stop_batch_job"),
)


class Simulator:
    """A SuperOffice WebAPI tenant on loopback, scriptable from tests.

    Serves ``GET /api/v1/BatchTask/{id}`` and the ``Agents/Batch`` list calls
    ``GetBatchTaskInfosByAssociates`` and ``GetBatchTaskInfosByAssociatesAndState``, and
    ``StopBatchJob`` (:mod:`~monitor.simulator.stopping`: a task that may be stopped shows
    ``Failed`` ``stop_delay`` after it was; each such request is kept in
    :attr:`stop_requests`).  Each
    request is recorded in :attr:`requests`, may be answered by a fault queued with
    :meth:`fail_next`, :meth:`hang_next` or :meth:`truncate_next`, must authenticate, and
    advances the scenario to ``clock()``.

    SuperOffice Online is opt-in, one piece per argument: ``tenant`` serves the tenant-status
    API (``GET /api/state/{context_id}``) and the same API under ``/{node}/{context_id}/api``;
    ``oauth`` the token endpoint (``POST /login/common/oauth/tokens``); ``system_user`` the
    system user login (``POST /Login/api/PartnerSystemUser/Authenticate``) and the JWKS of the
    simulator's own signing key, made at start-up (:attr:`federation_key_pem`).  Tokens and
    tickets they issue expire after their lifetime on ``clock()``, or at once with
    :meth:`expire_credentials`.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        username: str = "batchmon",
        password: str = "batchmon",  # noqa: S107 - a loopback simulator's well-known default
        first_id: int = 200,
        ticket: str | None = None,
        token: str | None = None,
        tz_style: str = "offset",
        tenant: OnlineTenant | None = None,
        oauth: OAuthApp | None = None,
        system_user: SystemUserApp | None = None,
        stop_delay: timedelta = timedelta(seconds=1),
    ) -> None:
        date_forms(tz_style)  # refuse an unknown style now, not at the first request
        if system_user is not None and tenant is None:
            msg = "a system user logs in to a tenant: give tenant= too"
            raise ValueError(msg)
        self._space = TaskSpace(scenario)
        self.requests: list[str] = []
        self.stop_delay = stop_delay
        self.tenant = tenant
        self.oauth = oauth
        self.system_user = system_user
        self._clock = clock or _utc_now
        self._credentials = Credentials(
            self._clock, basic=f"{username}:{password}".encode(), ticket=ticket, token=token
        )
        self._tz_style = tz_style
        self._next_id = first_id
        self._faults: deque[Fault] = deque()
        self._released: anyio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._origin: str | None = None
        self.app = web.Application(middlewares=[self._serve])
        router = self.app.router
        for method, path, handler in _API_ROUTES:
            router.add_route(method, "/api" + path, getattr(self, handler))
            router.add_route(method, "/{node}/{context}/api" + path, getattr(self, handler))
        router.add_post("/login/common/oauth/tokens", self._oauth_token, name="oauth-tokens")
        router.add_post(
            "/Login/api/PartnerSystemUser/Authenticate", self._system_user, name="system-user"
        )
        router.add_get("/login/.well-known/jwks", self._jwks, name="jwks")
        router.add_get("/api/state/{context}", self._tenant_state, name="tenant-state")
        # The simulator's own control: set the tenant's state (maintenance, suspended, ...).
        router.add_put("/simulator/tenant", self._set_tenant_state, name="tenant-control")

    @property
    def scenario(self) -> Scenario | None:
        """The scenario moving the tasks, if any."""
        return self._space.scenario

    @scenario.setter
    def scenario(self, scenario: Scenario | None) -> None:
        """A new scenario takes over from the next request."""
        self._space.scenario = scenario

    @property
    def tasks(self) -> dict[int, SimTask]:
        """The tasks by id, as the API shows them after the last request."""
        return self._space.tasks

    @property
    def stop_requests(self) -> list[RecordedRequest]:
        """Every ``StopBatchJob`` request, whole, in the order they came."""
        return self._space.stop_requests

    # --- lifecycle

    @property
    def url(self) -> str:
        """The API base, e.g. ``http://127.0.0.1:41234/api``; the client adds ``/v1/...``."""
        return self.environment_url + "/api"

    @property
    def environment_url(self) -> str:
        """The simulator as the environment's host (login, tenant status): no path."""
        if self._origin is None:
            msg = "the simulator is not started"
            raise RuntimeError(msg)
        return self._origin

    @property
    def tenant_url(self) -> str:
        """The online tenant's current API base, e.g. ``http://127.0.0.1:41234/online1/Cust1/api``."""
        if self.tenant is None:
            msg = "the simulator has no online tenant"
            raise RuntimeError(msg)
        return f"{self.environment_url}/{self.tenant.node}/{self.tenant.context_id}/api"

    @property
    def federation_key_pem(self) -> bytes:
        """The public half of the key the system user JWTs are signed with (PEM)."""
        key = self._credentials.signing_key
        if key is None:
            msg = "the simulator signs JWTs only with system_user= and once started"
            raise RuntimeError(msg)
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port) and return the API base URL."""
        if self._runner is not None:
            msg = "the simulator is already started"
            raise RuntimeError(msg)
        if self.system_user is not None:
            self._credentials.ensure_signing_key()
        self._released = anyio.Event()
        self._runner, self._origin = await listen(self.app, host, port)
        return self.url

    async def stop(self) -> None:
        """Stop listening (hanging requests are let go first); safe to call twice."""
        runner, self._runner, self._origin = self._runner, None, None
        if self._released is not None:
            self._released.set()
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

    def add_task(self, **fields: object) -> SimTask:
        """Add a hand-scripted task (state New, created now); the scenario never touches it."""
        task_id = fields.pop("id", None)
        if task_id is None:
            task_id = self._free_id()
        elif not isinstance(task_id, int):
            msg = f"id must be an int, got {task_id!r}"
            raise TypeError(msg)
        elif self._space.owns(task_id):
            msg = f"task {task_id} already exists"
            raise ValueError(msg)
        task = SimTask(id=task_id, created=self._clock())
        update_task(task, fields)
        self.tasks[task_id] = task
        return task

    def set_task(self, task_id: int, **fields: object) -> None:
        """Change fields of a task, e.g. ``set_task(201, state=BatchTaskState.FAILED)``."""
        update_task(self.tasks[task_id], fields)

    def delete_task(self, task_id: int) -> None:
        """Delete a task: GET answers 404 and list calls leave it out."""
        self.tasks[task_id].deleted = True

    def fail_next(
        self,
        count: int,
        status: int = 503,
        body: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` before any other handling.

        ``body`` defaults to a SuperOffice error object; any body is sent as JSON unless
        ``headers`` set another Content-Type, so a malformed body reaches the JSON parser.
        A 429 or 503 with ``headers={"Retry-After": "3"}`` is how throttling looks.
        """
        self._faults.extend([self._fault(count, status, body, headers)] * count)

    def hang_next(self, count: int = 1) -> None:
        """Leave the next ``count`` requests unanswered until the simulator stops."""
        fault = replace(self._fault(count, 504, None, None), mode="hang")
        self._faults.extend([fault] * count)

    def truncate_next(self, count: int = 1, body: str | bytes | None = None) -> None:
        """Answer the next ``count`` requests 200 with half a body, then close the connection."""
        if body is None:
            body = dumps({"Id": 1, "Name": "Cut off in the middle", "State": "Started"})
        fault = replace(self._fault(count, 200, body, None), mode="truncate")
        self._faults.extend([fault] * count)

    def expire_credentials(self) -> None:
        """Refuse every access token and ticket issued so far, as when they run out."""
        self._credentials.expire()

    def _fault(
        self, count: int, status: int, body: str | bytes | None, headers: dict[str, str] | None
    ) -> Fault:
        if count < 0:
            msg = f"count must not be negative, got {count}"
            raise ValueError(msg)
        if not 200 <= status <= 599:
            msg = f"status must be 200..599, got {status}"
            raise ValueError(msg)
        if body is None:
            error = {
                "Error": True,
                "ErrorType": "SimulatedFault",
                "ErrorMessage": f"Simulated fault: HTTP {status}",
                "ErrorSource": "batchmon simulator",
            }
            body = dumps(error)
        merged = CIMultiDict({hdrs.CONTENT_TYPE: _JSON_TYPE})
        merged.update(headers or {})
        payload = body.encode() if isinstance(body, str) else body
        return Fault(status, payload, merged)

    def _free_id(self) -> int:
        while self._space.owns(self._next_id):
            self._next_id += 1
        self._next_id += 1
        return self._next_id - 1

    # --- request handling

    @web.middleware
    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record the request, serve a queued fault, route the tenant, check credentials."""
        self.requests.append(f"{request.method} {request.path}")
        if self._faults:
            assert self._released is not None  # set at start
            return await self._faults.popleft().respond(request, self._released)
        if request.match_info.route.name in _PUBLIC_ROUTES:
            return await handler(request)
        if "node" in request.match_info:
            refusal = tenant_refusal(
                self.tenant, request.match_info["node"], request.match_info["context"]
            )
            if refusal is not None:
                return refusal
        if not self._credentials.authorized(request, self.system_user):
            return error_response(
                401,
                "SoAuthenticationException",
                "Authentication failed: invalid or missing credentials",
                headers={hdrs.WWW_AUTHENTICATE: 'Basic realm="SuperOffice"'},
            )
        self._space.advance(self._clock())
        return await handler(request)

    # The login and tenant-status hosts: auth and tenant answer, with the pieces as they are now.

    async def _oauth_token(self, request: web.Request) -> web.Response:
        return await oauth_token(request, self.oauth, self.tenant, self._credentials)

    async def _system_user(self, request: web.Request) -> web.Response:
        return await system_user_login(request, self.system_user, self.tenant, self._credentials)

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self._credentials.jwks(), dumps=dumps)

    async def _tenant_state(self, request: web.Request) -> web.Response:
        """``GET /api/state/{context}``: where the tenant lives and whether it runs."""
        origin = f"{request.scheme}://{request.host}"
        status = tenant_status(self.tenant, request.match_info["context"], self._clock(), origin)
        return web.json_response(status, dumps=dumps)

    async def _set_tenant_state(self, request: web.Request) -> web.Response:
        return await set_tenant_state(request, self.tenant, self._clock())

    async def _get_task(self, request: web.Request) -> web.Response:
        return get_task(request, self._space, self._tz_style)

    async def _by_associates(self, request: web.Request) -> web.Response:
        return await list_tasks(request, self._space, self._tz_style, with_state=False)

    async def _by_associates_and_state(self, request: web.Request) -> web.Response:
        return await list_tasks(request, self._space, self._tz_style, with_state=True)

    async def _stop_batch_job(self, request: web.Request) -> web.Response:
        """``StopBatchJob``: ``true`` and a stop ``stop_delay`` from now, or ``false``."""
        return await stop_batch_job(request, self._space, self._clock(), self.stop_delay)
