"""The HTTP side: /metrics, /healthz, /readyz, a JSON view of the tasks and a status page.

A small aiohttp shell around state other modules own: the collector renders
/metrics, the poller says whether the loop is alive, the tracker lists tasks.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import anyio
from aiohttp import hdrs, web
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from monitor.chart import Box, ChartInput, progress_chart
from monitor.http_access import (
    Access,
    access_middleware,
    add_security_headers,
    bearer,
    machine_names,
    token_matches,
)
from monitor.http_listener import (
    CONNECTIONS,
    SERVER_LOG,
    Connections,
    GuardedSite,
    Limits,
    track_requests,
)
from monitor.polling import Poller, Shard
from monitor.polling.stop import StopFailedError
from monitor.task_list import (
    DEFAULT_LIMIT,
    KNOWN_STATES,
    MAX_LIMIT,
    QueryError,
    TaskPage,
    TaskQuery,
    select,
)
from monitor.task_metrics import TaskSeries
from monitor.task_metrics import render as render_series
from monitor.tracking.acks import BY_MAX, COMMENT_MAX, AckRefusedError, Refusal, text_problem
from monitor.tracking.detect import condition
from monitor.tracking.events import Event, EventType
from monitor.tracking.memory import TaskMemory, state_name
from monitor.tracking.silences import Silence
from monitor.tracking.tracker import Tracker
from monitor.types import Acknowledger, DeliveryStore, Silences, Stopper, Watches

__all__ = [
    "MAX_TASK_ID",
    "Replicas",
    "TenantView",
    "WatchLimitReachedError",
    "WebState",
    "make_app",
    "parse_task_id",
    "serve",
]

_templates = Environment(
    loader=PackageLoader("monitor", "templates"),
    autoescape=select_autoescape(default=True),
)


class WatchLimitReachedError(Exception):
    """No more tasks may be watched at run time (``http.max_watches``); says so in a sentence."""


@dataclass(frozen=True, slots=True)
class TenantView:
    """What the HTTP handlers read of one tenant's pipeline."""

    name: str
    tracker: Tracker
    poller: Poller
    #: The tenant's per-task families.
    series: TaskSeries
    store: DeliveryStore
    watches: Watches
    #: Acknowledgements of failed, stalled and gone tasks (``None``: not offered).
    acks: Acknowledger | None = None
    #: Stops tasks (``POST /api/v1/tasks/{id}/stop``); ``None``: not offered.
    stopper: Stopper | None = None
    #: The silences (``/api/v1/silences``); ``None``: not offered.
    silences: Silences | None = None
    #: What makes now a maintenance (window names, the tenant state), and the tenant's state.
    maintenance: Callable[[], tuple[Sequence[str], str | None]] = lambda: ((), None)


@dataclass(frozen=True, slots=True)
class Replicas:
    """What a replica says of the replicated set (PostgreSQL leases) on /readyz and the page."""

    #: This replica's id (``host:pid``).
    replica: str
    #: Whether its last lease round reached the database in time.
    healthy: Callable[[], bool]
    #: Replicas alive.
    alive: Callable[[], int]
    #: Every configured tenant and the replica holding it (``None``: nobody yet).
    holders: Callable[[], Awaitable[Mapping[str, str | None]]]


@dataclass(frozen=True, slots=True)
class WebState:
    """What the HTTP handlers read."""

    #: The tenants this process runs now, by name (replicas: those whose lease it holds; the
    #: mapping changes as leases move).
    tenants: Mapping[str, TenantView]
    registry: CollectorRegistry
    clock: Callable[[], datetime]
    #: The loop is dead when no cycle ended for this long (seconds).
    stale_after: float
    #: Bearer token for changing watches; ``None`` disables PUT/DELETE.
    api_token: str | None
    #: Token required, when set, for everything but /healthz and /readyz.
    read_token: str | None = None
    #: Names the Host header may carry besides IP addresses, localhost and this machine's name.
    host_names: frozenset[str] = frozenset()
    #: Every tenant of the configuration, held here or not (for messages and the overview).
    configured: Sequence[str] = ()
    #: The replicated set, when the state is in PostgreSQL.
    replicas: Replicas | None = None
    #: Tenants split into shards: each shard's name, in order (shard k of n is the k-th).
    shards: Mapping[str, Sequence[str]] = field(default_factory=dict)


STATE = web.AppKey("state", WebState)
_B = TypeVar("_B", bound=BaseModel)
#: zlib's window bits for a gzip wrapper (header and CRC) around the deflate stream.
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class GzippedPrefix:
    """The task families gzip-compressed once, and reused while they are the same parts.

    Thousands of tasks make megabytes of very repetitive text: level 1 shrinks it
    almost as well as the default level for a third of the CPU (8 ms for 10,000
    tasks).  While no task changed, :class:`~monitor.task_metrics.TaskSeries`
    gives back the very same parts; then a copy of zlib's state after them
    compresses only what follows (the registry's few families), and the body is
    still one gzip member (curl reads only the first of several).
    """

    def __init__(self) -> None:
        self._parts: tuple[bytes, ...] = ()
        self._state = zlib.compressobj(1, zlib.DEFLATED, _GZIP_WBITS)
        self._out = b""

    def compress(self, prefix: Sequence[bytes], rest: bytes) -> bytes:
        """One gzip member of ``prefix`` and then ``rest``."""
        if len(prefix) != len(self._parts) or any(
            mine is not theirs for mine, theirs in zip(self._parts, prefix, strict=True)
        ):
            state = zlib.compressobj(1, zlib.DEFLATED, _GZIP_WBITS)
            self._out = b"".join([state.compress(part) for part in prefix])
            self._state, self._parts = state, tuple(prefix)
        tail = self._state.copy()
        return b"".join((self._out, tail.compress(rest), tail.flush()))


GZIPPED = web.AppKey("gzipped", GzippedPrefix)


def _elapsed(seconds: float) -> str:
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _firing(memory: TaskMemory) -> str | None:
    """The condition the task is in (``task.failed``, ``task.stalled``, ``task.gone``)."""
    kind = condition(memory)
    return kind.value if kind is not None else None


def _task_view(memory: TaskMemory, view: TenantView, now: datetime) -> dict[str, Any]:
    info = memory.info
    eta = view.tracker.eta(info.id, now)
    running = info.state.is_active and info.last_started is not None
    return {
        "id": info.id,
        "tenant": view.name,
        "name": info.name,
        "state": state_name(memory),
        "state_raw": info.state_raw,
        "percent": None if info.progress_ratio is None else round(info.progress_ratio * 100),
        "step": info.progress_description,
        "result": memory.info.outcome,
        "stalled": memory.stalled,
        "firing": _firing(memory),
        "eta": eta.isoformat(timespec="seconds") if eta else None,
        "elapsed": _elapsed((now - info.last_started).total_seconds())
        if running and info.last_started
        else None,
        "last_change": memory.last_change.isoformat(timespec="seconds"),
        "last_seen": memory.last_seen.isoformat(timespec="seconds"),
        "anomalies": list(info.anomalies),
        "ack": _ack_view(view, info.id),
        "silenced": _silenced_by(view, info.id, info.name),
    }


def _ack_view(view: TenantView, task_id: int) -> dict[str, object] | None:
    ack = view.acks.current(task_id) if view.acks is not None else None
    return ack.to_dict() if ack is not None else None


def _silenced_by(view: TenantView, task_id: int, name: str | None) -> str | None:
    """The id of the silence keeping the task's events from chat and alerts, if any."""
    found = view.silences.covering(task_id, name) if view.silences is not None else None
    return found.id if found is not None else None


#: Rows on the status page unless ``limit`` asks for more (up to :data:`PAGE_MAX_ROWS`).
PAGE_ROWS = 300
PAGE_MAX_ROWS = 1000


def _listing(
    request: web.Request, view: TenantView, default_limit: int, max_limit: int
) -> tuple[TaskQuery, TaskPage, str | None]:
    """The query string's ``state``, ``limit`` and ``cursor``; the page and the next one's query.

    Raises :class:`~monitor.task_list.QueryError` for a bad parameter.
    """
    query = TaskQuery.parse(
        request.query.getall("state", []),
        request.query.get("limit"),
        request.query.get("cursor"),
        default_limit=default_limit,
        max_limit=max_limit,
        ids=request.query.get("ids"),
    )
    page = select(view.tracker.tasks, query)
    following = None
    if page.next is not None:
        following = "?" + request.rel_url.update_query(cursor=page.next).query_string
    return query, page, following


def _counts(view: TenantView) -> dict[str, int]:
    """Tracked tasks by state, in :data:`KNOWN_STATES` order, states with none left out."""
    counts = view.tracker.state_counts
    return {name: counts[name] for name in KNOWN_STATES if counts.get(name, 0) > 0}


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus exposition: the cached per-task lines, then the registry's families.

    Content negotiation, ``name[]`` and gzip as prometheus_client's own handler.
    On the loop: handing the compression to a thread measured slower, for the
    scrape and for the poll cycle it lands in.
    """
    state = request.app[STATE]
    encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, [])))
    names = request.query.getall("name[]", [])
    registry = state.registry.restricted_registry(names) if names else state.registry
    series = [view.series for view in state.tenants.values()]
    tasks = render_series(series, state.clock(), encoder, content_type, names)
    rest = encoder(registry)
    headers = {hdrs.CONTENT_TYPE: content_type, hdrs.VARY: hdrs.ACCEPT_ENCODING}
    if gzip_accepted(request.headers.get(hdrs.ACCEPT_ENCODING, "")):
        headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=request.app[GZIPPED].compress(tasks, rest), headers=headers)
    return web.Response(body=b"".join([*tasks, rest]), headers=headers)


async def _healthz(request: web.Request) -> web.Response:
    """200 while every tenant's poll loop keeps working (the same test as the systemd
    watchdog); the fewest cycles and the oldest cycle's age of them."""
    state = request.app[STATE]
    pollers = [view.poller for view in state.tenants.values()]
    now = anyio.current_time()
    ends = [p.last_cycle_end for p in pollers]
    age = None if not ends or None in ends else max(now - end for end in ends if end is not None)
    alive = all(p.alive(state.stale_after) for p in pollers)
    body = {
        "status": "ok" if alive else "stalled",
        "cycles": min((p.cycles for p in pollers), default=0),
        "last_cycle_age_seconds": age,
    }
    return web.json_response(body, status=200 if alive else 503)


def _api_problem(poller: Poller) -> str | None:
    """Why the API is not usable right now, as /readyz and the status page say it."""
    health = poller.health
    if poller.cycles == 0:
        return "no poll cycle completed yet"
    if health.auth_failed:
        return f"SuperOffice rejected the credentials: {health.last_error}"
    if not health.up:
        return f"SuperOffice API unreachable: {health.last_error}"
    return None


def _api_headline(poller: Poller) -> str:
    """The status page's few words on the API, from the same state as :func:`_api_problem`."""
    health = poller.health
    if poller.cycles == 0:
        return "waiting for the first poll"
    if health.auth_failed:
        return "credentials rejected"
    if health.down_since is not None:
        return f"API down since {health.down_since:%Y-%m-%d %H:%M:%S} UTC"
    if not health.up:
        return "API failing"
    return "API reachable"


async def _readyz(request: web.Request) -> web.Response:
    """200 once a poll cycle reached the API; otherwise says what is missing.

    With several tenants one tenant's dead API is that tenant's problem (listed under
    ``tenants``): the process is unready only when no tenant's API is usable.  A replica
    is unready only while its leases cannot be kept (the database is out of reach).
    """
    state = request.app[STATE]
    found = {name: _api_problem(view.poller) for name, view in state.tenants.items()}
    tenants = {name: problem for name, problem in found.items() if problem is not None}
    # A replica is there to hold leases: a tenant's dead API is that tenant's problem.
    several = len(found) > 1 or state.replicas is not None
    everyone = bool(tenants) and len(tenants) == len(found)
    problems = list(tenants.values()) if everyone and state.replicas is None else []
    body: dict[str, object] = {"ready": False, "problems": problems}
    if several:
        body["tenants"] = tenants
    if state.replicas is not None:
        if not state.replicas.healthy():
            problems.append("the leases cannot be kept: the database is out of reach")
        body["replica"] = state.replicas.replica
        body["leases"] = sorted(state.tenants)
        body["replicas"] = state.replicas.alive()
    body["ready"] = not problems
    return web.json_response(body, status=503 if problems else 200)


def _shard_of(request: web.Request, tenant: str, shards: Sequence[str]) -> str:
    """The shard of ``tenant`` that watches the request's task (a route without one must
    name a shard)."""
    if "task_id" not in request.match_info:
        names = ", ".join(shards)
        message = f"tenant {tenant!r} is split into shards: name one of {names}"
        raise _problem(web.HTTPBadRequest, message)
    task_id = _task_id(request)
    count = len(shards)
    return next(s for k, s in enumerate(shards, 1) if Shard(k, count).owns(task_id))


def _tenant(request: web.Request) -> TenantView:
    """The tenant ``?tenant=`` names; without it the only one (or ``default``)."""
    state = request.app[STATE]
    name = request.query.get("tenant")
    if name is None:
        if len(state.tenants) == 1:
            return next(iter(state.tenants.values()))
        if "default" in state.tenants:
            return state.tenants["default"]
        names = ", ".join(state.configured or sorted(state.tenants))
        raise _problem(web.HTTPBadRequest, f"name the tenant with ?tenant= (one of {names})")
    shards = state.shards.get(name)
    if shards is not None:
        name = _shard_of(request, name, shards)
    view = state.tenants.get(name)
    if view is not None:
        return view
    if name in state.configured:
        message = f"tenant {name!r} is watched by another replica (see /readyz of the others)"
        raise _problem(web.HTTPMisdirectedRequest, message)
    raise _problem(web.HTTPNotFound, f"no tenant {name!r} is watched here")


async def _tasks(request: web.Request) -> web.Response:
    """The tracked tasks a page at a time, in :mod:`monitor.task_list`'s order."""
    state, view = request.app[STATE], _tenant(request)
    try:
        _, page, following = _listing(request, view, DEFAULT_LIMIT, MAX_LIMIT)
    except QueryError as exc:
        raise _problem(web.HTTPBadRequest, str(exc)) from None
    now = state.clock()
    next_url = None if following is None else request.path + following
    body = {
        "tenant": view.name,
        "tasks": [_task_view(m, view, now) for m in page.memories],
        "total": page.total,
        "counts": _counts(view),
        "cursor": page.next,
        "next": next_url,
    }
    return web.json_response(body)


#: SuperOffice ids are int32.
MAX_TASK_ID: Final = 2**31 - 1


def parse_task_id(text: str) -> int:
    """A task id from a URL: ASCII digits only, 1 to 2,147,483,647; else :class:`ValueError`.

    ``int()`` alone takes ``"٣"`` (Arabic-Indic three), ``"1_0"``, ``" 7"`` and numbers
    SQLite cannot hold.
    """
    digits = text.isascii() and text.isdigit() and len(text) <= len(str(MAX_TASK_ID))
    if not digits or not 1 <= int(text) <= MAX_TASK_ID:
        raise ValueError(f"the task id must be a number from 1 to {MAX_TASK_ID} in ASCII digits")
    return int(text)


def _task_id(request: web.Request) -> int:
    try:
        return parse_task_id(request.match_info["task_id"])
    except ValueError as exc:
        raise _problem(web.HTTPBadRequest, str(exc)) from None


def _problem(
    kind: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An HTTP error with a JSON body saying what was wrong."""
    return kind(
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )


async def _task(request: web.Request) -> web.Response:
    state, tenant = request.app[STATE], _tenant(request)
    task_id = _task_id(request)
    memory = tenant.tracker.tasks.get(task_id)
    if memory is None:
        raise _problem(web.HTTPNotFound, f"task {task_id} is not watched")
    view = _task_view(memory, tenant, state.clock())
    view["events"] = [e.to_dict() for e in await tenant.store.recent_events(task_id)]
    return web.json_response(view)


def _authorize(request: web.Request) -> None:
    """Changes (watches, stops, silences) need ``Authorization: Bearer <http.api_token>``."""
    token = request.app[STATE].api_token
    if token is None:
        raise _problem(
            web.HTTPForbidden,
            "changes over the API are disabled: set http.api_token to enable them",
        )
    if not token_matches(bearer(request.headers.get(hdrs.AUTHORIZATION)), token):
        raise _problem(
            web.HTTPUnauthorized,
            "a valid bearer token is required",
            {"WWW-Authenticate": "Bearer"},
        )


async def _put_watch(request: web.Request) -> web.Response:
    _authorize(request)
    task_id = _task_id(request)
    try:
        added = await _tenant(request).watches.add(task_id)
    except WatchLimitReachedError as exc:
        raise _problem(web.HTTPConflict, str(exc)) from None
    return web.json_response({"task_id": task_id, "watched": True}, status=201 if added else 200)


async def _delete_watch(request: web.Request) -> web.Response:
    _authorize(request)
    task_id = _task_id(request)
    try:
        removed = await _tenant(request).watches.remove(task_id)
    except ValueError as exc:
        raise _problem(web.HTTPConflict, str(exc)) from None
    if not removed:
        raise _problem(web.HTTPNotFound, f"task {task_id} is not watched at run time")
    return web.json_response({"task_id": task_id, "watched": False})


#: Bytes an acknowledgement's body may have: a name and a comment, with room for escapes.
_ACK_BODY_MAX = 16 * 1024


def _person(by: str) -> str:
    """A name as people read it in chat: one line, bounded, no control characters."""
    by = " ".join(by.split())
    problem = text_problem(by, BY_MAX) if by else "must not be blank"
    if problem is not None:
        raise ValueError(problem)
    return by


class _AckBody(BaseModel):
    """``{"by": "...", "comment": "..."}``: who takes the task, and what they say."""

    model_config = ConfigDict(extra="forbid", strict=True)

    by: str = Field(min_length=1)
    comment: str | None = None

    @field_validator("by")
    @classmethod
    def _plain_by(cls, by: str) -> str:
        return _person(by)

    @field_validator("comment")
    @classmethod
    def _plain_comment(cls, comment: str | None) -> str | None:
        if comment is None or not comment.strip():
            return None
        problem = text_problem(comment.strip(), COMMENT_MAX)
        if problem is not None:
            raise ValueError(problem)
        return comment.strip()


class _UnackBody(BaseModel):
    """``{"by": "..."}`` (optional): who gives the task back."""

    model_config = ConfigDict(extra="forbid", strict=True)

    by: str | None = None

    @field_validator("by")
    @classmethod
    def _plain_by(cls, by: str | None) -> str | None:
        return None if by is None else _person(by)


async def _json_body(request: web.Request, model: type[_B]) -> _B | None:
    """The request's body, read as JSON whatever its content type says (``curl -d`` says a
    form), as ``model``: ``None`` when empty; 400 or 413 saying what is wrong."""
    size = request.content_length
    raw = (
        b""
        if size is not None and size > _ACK_BODY_MAX
        else await request.content.read(_ACK_BODY_MAX + 1)
    )
    if len(raw) > _ACK_BODY_MAX or (size is not None and size > _ACK_BODY_MAX):
        raise web.HTTPRequestEntityTooLarge(
            max_size=_ACK_BODY_MAX,
            actual_size=size or len(raw),
            text=json.dumps({"error": f"the body may have at most {_ACK_BODY_MAX} bytes"}),
            content_type="application/json",
        )
    if not raw.strip():
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise _problem(web.HTTPBadRequest, problems) from None


def _acks(request: web.Request) -> Acknowledger:
    acks = _tenant(request).acks
    if acks is None:
        raise _problem(web.HTTPNotFound, "acknowledgements are not offered here")
    return acks


async def _post_ack(request: web.Request) -> web.Response:
    """Take a failed, stalled or gone task: 201 (200 when the same person had it already)."""
    _authorize(request)
    task_id = _task_id(request)
    body = await _json_body(request, _AckBody)
    if body is None:
        raise _problem(web.HTTPBadRequest, 'a JSON body is required: {"by": "your name"}')
    try:
        ack, fresh = await _acks(request).acknowledge(task_id, body.by, body.comment)
    except AckRefusedError as exc:
        kind = web.HTTPNotFound if exc.refusal is Refusal.UNKNOWN_TASK else web.HTTPConflict
        raise _problem(kind, str(exc)) from None
    return web.json_response(
        {"task_id": task_id, "ack": ack.to_dict()}, status=201 if fresh else 200
    )


async def _delete_ack(request: web.Request) -> web.Response:
    """Give a task back: its condition fires again; 409 when nobody had it."""
    _authorize(request)
    task_id = _task_id(request)
    body = await _json_body(request, _UnackBody)
    if task_id not in _tenant(request).tracker.tasks:
        raise _problem(web.HTTPNotFound, f"task {task_id} is not tracked")
    withdrawn = await _acks(request).withdraw(task_id, body.by if body else None)
    if withdrawn is None:
        raise _problem(web.HTTPConflict, f"task {task_id} has no acknowledgement to take back")
    return web.json_response({"task_id": task_id, "ack": None, "withdrawn": withdrawn.to_dict()})


async def _stop_task(request: web.Request) -> web.Response:
    """Ask SuperOffice to stop a task: 409 with the reason when it may not be (or not without
    ``force``), 200 with SuperOffice's answer otherwise (``stopped: false`` happens)."""
    _authorize(request)
    task_id = _task_id(request)
    stopper = _tenant(request).stopper
    if stopper is None:
        raise _problem(web.HTTPServiceUnavailable, "stopping tasks is not available")
    force, by = await _stop_body(request)
    try:
        outcome = await stopper.stop(task_id, force=force, by=by)
    except StopFailedError as exc:
        kind = web.HTTPNotFound if exc.not_found else web.HTTPBadGateway
        raise _problem(kind, str(exc)) from None
    if outcome.stopped is None:
        raise _problem(web.HTTPConflict, outcome.decision.reason)
    return web.json_response(outcome.to_dict())


class _StopBody(BaseModel):
    """``{"force": true, "by": "who"}``, both optional."""

    model_config = ConfigDict(extra="forbid", strict=True)

    force: bool = False
    by: str | None = None

    @field_validator("by")
    @classmethod
    def _plain_by(cls, by: str | None) -> str | None:
        return None if by is None else _person(by)


async def _stop_body(request: web.Request) -> tuple[bool, str]:
    """What a stop request asks, read as every write body is (:func:`_json_body`)."""
    body = await _json_body(request, _StopBody) or _StopBody()
    return body.force, body.by or f"the HTTP API ({request.remote})"


def _silences(request: web.Request) -> Silences:
    silences = _tenant(request).silences
    if silences is None:
        raise _problem(web.HTTPServiceUnavailable, "silences are not available")
    return silences


def _silence_view(silence: Silence) -> dict[str, Any]:
    return {**silence.to_dict(), "covers": silence.scope}


async def _list_silences(request: web.Request) -> web.Response:
    """The silences in force now, soonest end first."""
    return web.json_response({"silences": [_silence_view(s) for s in _silences(request).active()]})


async def _add_silence(request: web.Request) -> web.Response:
    """Silence tasks for a while: 201 with the silence, its id and its end; 400 saying why not."""
    _authorize(request)
    silences = _silences(request)
    try:
        body = await request.json()
    except ValueError:
        raise _problem(web.HTTPBadRequest, "the body must be a JSON object") from None
    try:
        silence = await silences.add(body, by=f"the HTTP API ({request.remote})")
    except ValueError as exc:
        raise _problem(web.HTTPBadRequest, str(exc)) from None
    return web.json_response(_silence_view(silence), status=201)


async def _end_silence(request: web.Request) -> web.Response:
    """End a silence now; what it kept quiet and still fires is announced."""
    _authorize(request)
    silence_id = request.match_info["silence_id"]
    ended = await _silences(request).end(silence_id)
    if ended is None:
        raise _problem(web.HTTPNotFound, f"no active silence {silence_id}")
    now = request.app[STATE].clock()
    return web.json_response({**_silence_view(ended), "ended": now.isoformat()})


def _html(template: str, status: int = 200, **values: Any) -> web.Response:
    html = _templates.get_template(template).render(**values)
    return web.Response(text=html, status=status, content_type="text/html")


def _page_tenant(request: web.Request, home: str) -> TenantView | web.Response:
    """The page's tenant (as :func:`_tenant` finds it), or the error page saying why not."""
    try:
        return _tenant(request)
    except web.HTTPException as exc:
        message = json.loads(exc.text or "{}").get("error", exc.reason)
        return _html("error.html", exc.status, title=exc.reason, message=message, home=home)


def _several(state: WebState) -> bool:
    """Whether this process shows more than one tenant (pages then name and group them)."""
    return len(state.configured) > 1 or len(state.tenants) > 1 or state.replicas is not None


async def _status_page(request: web.Request) -> web.Response:
    """Counts by state, then a page of tasks (``?state=``, ``limit``, ``cursor`` as the API);
    with several tenants and no ``?tenant=``, one line per tenant with its health."""
    state = request.app[STATE]
    if _several(state) and "tenant" not in request.query:
        return await _tenants_page(state)
    view = _page_tenant(request, "./")
    if isinstance(view, web.Response):
        return view
    try:
        query, page, following = _listing(request, view, PAGE_ROWS, PAGE_MAX_ROWS)
    except QueryError as exc:
        return _html("error.html", 400, title="Bad request", message=str(exc), home="./")
    now = state.clock()
    counts = _counts(view)
    shown: Counter[str] = Counter(state_name(m) for m in page.memories)
    last = view.poller.health.last_success
    polled = view.poller.cycles
    maintenance, tenant_state = view.maintenance()
    return _html(
        "status.html",
        tenant=view.name if _several(state) else None,
        tq=f"tenant={view.name}&" if _several(state) else "",
        tasks=[_task_view(m, view, now) for m in page.memories],
        total=page.total,
        tracked=sum(counts.values()),
        counts=counts,
        not_shown={
            name: n - shown[name]
            for name, n in counts.items()
            if n > shown[name] and (not query.states or name in query.states)
        },
        states=sorted(query.states, key=KNOWN_STATES.index),
        next=following,
        active=sum(counts.get(name, 0) for name in ("New", "Aquired", "Started")),
        api_tone=_api_tone(view.poller),
        api_headline=_api_headline(view.poller),
        api_problem=_api_problem(view.poller) if polled else None,
        last_poll=last.isoformat(timespec="seconds") if last else None,
        refresh=5,
        silences=[
            {**_silence_view(s), "ends": s.ends.isoformat(timespec="seconds")}
            for s in (view.silences.active() if view.silences is not None else [])
        ],
        maintenance=list(maintenance),
        tenant_state=tenant_state,
    )


def _api_tone(poller: Poller) -> str:
    return "waiting" if poller.cycles == 0 else "up" if poller.health.up else "down"


def _tenant_line(view: TenantView, holder: str | None) -> dict[str, Any]:
    """One tenant on the overview (and in ``/api/v1/tenants``): its API, counts, conditions."""
    counts = _counts(view)
    maintenance, tenant_state = view.maintenance()
    firing = Counter(kind for m in view.tracker.tasks.values() if (kind := _firing(m)))
    last = view.poller.health.last_success
    return {
        "name": view.name,
        "replica": holder,
        "api": _api_tone(view.poller),
        "api_headline": _api_headline(view.poller),
        "api_problem": _api_problem(view.poller) if view.poller.cycles else None,
        "last_poll": last.isoformat(timespec="seconds") if last else None,
        "tracked": sum(counts.values()),
        "active": sum(counts.get(name, 0) for name in ("New", "Aquired", "Started")),
        "counts": counts,
        "firing": dict(firing),
        "maintenance": list(maintenance),
        "tenant_state": tenant_state,
    }


async def _tenant_lines(state: WebState) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """Every configured tenant: the ones run here in full, the others with their holder."""
    holders = dict(await state.replicas.holders()) if state.replicas is not None else {}
    here = state.replicas.replica if state.replicas is not None else None
    parents = {shard: tenant for tenant, shards in state.shards.items() for shard in shards}
    lines = []
    for name in state.configured or sorted(state.tenants):
        view = state.tenants.get(name)
        if view is not None:
            line = _tenant_line(view, here)
        else:
            line = {"name": name, "replica": holders.get(name), "api": "elsewhere"}
        if name in parents:  # one shard of a tenant: the tenant's name, for ?tenant=
            line["tenant"] = parents[name]
        lines.append(line)
    return lines, holders


async def _tenants_page(state: WebState) -> web.Response:
    """The overview: one line per tenant, worst first, each linking to its own page."""
    lines, _ = await _tenant_lines(state)
    order = {"down": 0, "waiting": 1, "up": 2, "elsewhere": 3}
    lines.sort(key=lambda line: (order[line["api"]], -sum(line.get("firing", {}).values())))
    return _html(
        "tenants.html",
        tenants=lines,
        replica=state.replicas.replica if state.replicas is not None else None,
        replicas=state.replicas.alive() if state.replicas is not None else None,
        refresh=5,
    )


async def _tenants(request: web.Request) -> web.Response:
    """``/api/v1/tenants``: the overview as JSON."""
    state = request.app[STATE]
    lines, _ = await _tenant_lines(state)
    body: dict[str, object] = {"tenants": lines}
    if state.replicas is not None:
        body["replica"] = state.replicas.replica
        body["replicas"] = state.replicas.alive()
    return web.json_response(body)


#: The chart's sizes: the wide one for screens, the narrow one for phones (CSS picks).
_WIDE = Box()
_NARROW = Box(width=400, height=240, left=44, right=12)


def _chart(memory: TaskMemory, state: TenantView, now: datetime) -> ChartInput:
    """What the task's progress chart shows: up to now while active, up to its end otherwise."""
    info = memory.info
    samples = state.tracker.samples.series(memory)
    active = info.state.is_active and not memory.gone
    end_label = None
    if active:
        end = now
    else:
        end = max([memory.terminal_since or memory.last_seen, *(t for t, _ in samples[-1:])])
        end_label = f"{state_name(memory)} {end:%H:%M}"
    return ChartInput(
        samples=samples,
        now=end,
        eta=state.tracker.eta(info.id, now) if active else None,
        stall_at=memory.last_change + state.tracker.rules.stall_after if active else None,
        tone="stalled" if memory.stalled else state_name(memory),
        title=f"Progress of task {info.id} over time",
        end_label=end_label,
    )


def _event_row(event: Event) -> dict[str, Any]:
    """One line of the task page's history: when, what, state, progress and what it said."""
    task = event.task
    details = event.message
    if details is None and task is not None:
        reason = task.outcome
        failed = event.type is EventType.TASK_FAILED
        details = reason if failed and reason else task.progress_description
    return {
        "time": event.time.isoformat(timespec="seconds"),
        "type": event.type.value,
        "state": task.state.value if task is not None else None,
        "progress": task.progress if task is not None else None,
        "details": details,
    }


def _iso(value: datetime | None) -> str | None:
    """In UTC, as the page labels its times (the API may give a tenant's offset)."""
    return None if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


async def _task_page(request: web.Request) -> web.Response:
    """One task: its fields, its progress chart and its recorded events."""
    view = _page_tenant(request, "../")
    if isinstance(view, web.Response):
        return view
    state = request.app[STATE]
    task_id = _task_id(request)
    memory = view.tracker.tasks.get(task_id)
    if memory is None:
        message = f"Task {task_id} is not tracked (not watched, not found, or forgotten)."
        return _html("error.html", 404, title="Task not found", message=message, home="../")
    now = state.clock()
    info = memory.info
    events = [_event_row(e) for e in await view.store.recent_events(task_id)]
    chart = _chart(memory, view, now)
    return _html(
        "task.html",
        tenant=view.name if _several(state) else None,
        task=_task_view(memory, view, now),
        info={
            "description": info.description,
            "request": info.request,
            "associate_id": info.associate_id,
            "created": _iso(info.created),
            "last_started": _iso(info.last_started),
            "start_count": info.start_count,
            "first_seen": _iso(memory.first_seen),
        },
        # progress_chart escapes every text it writes.
        chart_wide=Markup(progress_chart(chart, _WIDE)),  # noqa: S704
        chart_narrow=Markup(progress_chart(chart, _NARROW)),  # noqa: S704
        samples=len(chart.samples),
        eta=chart.eta is not None,
        stall=chart.stall_at is not None,
        events=events[::-1],
        today=now.isoformat()[:10],
        refresh=5 if info.state.is_active and not memory.gone else None,
    )


def make_app(state: WebState) -> web.Application:
    """The aiohttp application with every route."""
    access = Access(state.host_names | machine_names(), state.read_token, state.api_token)
    app = web.Application(middlewares=[track_requests, access_middleware(access)])
    app.on_response_prepare.append(add_security_headers)
    app[STATE] = state
    app[GZIPPED] = GzippedPrefix()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/api/v1/tenants", _tenants)
    app.router.add_get("/api/v1/tasks", _tasks)
    app.router.add_get("/api/v1/tasks/{task_id}", _task)
    app.router.add_put("/api/v1/watches/{task_id}", _put_watch)
    app.router.add_delete("/api/v1/watches/{task_id}", _delete_watch)
    app.router.add_post("/api/v1/tasks/{task_id}/ack", _post_ack)
    app.router.add_delete("/api/v1/tasks/{task_id}/ack", _delete_ack)
    app.router.add_post("/api/v1/tasks/{task_id}/stop", _stop_task)
    app.router.add_get("/api/v1/silences", _list_silences)
    app.router.add_post("/api/v1/silences", _add_silence)
    app.router.add_delete("/api/v1/silences/{silence_id}", _end_silence)
    app.router.add_get("/", _status_page)
    app.router.add_get("/tasks/{task_id}", _task_page)
    return app


async def serve(
    app: web.Application, host: str, port: int, limits: Limits | None = None
) -> tuple[web.AppRunner, int]:
    """Bind and start the app; the runner (to clean up) and the bound port.

    Connections are capped and timed (:mod:`monitor.http_listener`); by default the cap
    fits the process's open-file limit.
    """
    limits = limits or Limits().within_open_files()
    app[CONNECTIONS] = connections = Connections(limits)
    runner = web.AppRunner(
        app, access_log=None, keepalive_timeout=limits.head_timeout, logger=SERVER_LOG
    )
    await runner.setup()
    site = GuardedSite(runner, host, port, connections)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
