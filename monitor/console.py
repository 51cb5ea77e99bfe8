"""Terminal views for ``batchmon status`` and ``batchmon watch``: a rich table and a live bar.

Tasks come from a running daemon's JSON API, read with the standard library
(a one-shot command needs no connection pool), or, for ``watch --config``,
straight from SuperOffice through the one API client.  Task text comes from
the API and is untrusted: it is rendered as plain :class:`~rich.text.Text`,
never as rich markup, so a task named ``[blink]`` stays just that, and its
control characters are shown as escapes (:func:`~monitor.text.visible`), so a
name holding ``ESC [ 2 J`` does not clear the screen.
"""

from __future__ import annotations

import enum
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text

from monitor.config import SuperOfficeConfig
from monitor.superoffice.client import SuperOfficeClient, open_client
from monitor.superoffice.errors import ApiError, NotFound
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState, outcome
from monitor.text import visible
from monitor.tracking.memory import GONE, Rules
from monitor.tracking.tracker import Tracker
from monitor.types import TaskSource

__all__ = [
    "ApiSource",
    "DaemonSource",
    "Problem",
    "SourceError",
    "StatusReport",
    "TaskView",
    "api_source",
    "daemon_tenants",
    "follow",
    "read_status",
    "status_view",
    "tenant_query",
]

_SUCCEEDED = frozenset(
    {BatchTaskState.SUCCEEDED.value, BatchTaskState.SUCCEEDED_MANUAL_CLEANUP.value}
)
_FAILED = frozenset({BatchTaskState.FAILED.value, GONE})
_ACTIVE = frozenset(s.value for s in BatchTaskState if s.is_active)
_STYLES = {
    "New": "magenta",
    "Aquired": "magenta",
    "Started": "blue",
    "Succeeded": "green",
    "SucceededManualCleanup": "green",
    "Failed": "bold red",
    GONE: "dim",
    "Unknown": "dim",
}
#: Seconds a request to the daemon may take.
REQUEST_TIMEOUT = 5.0


class Problem(enum.Enum):
    """Why ``status`` or ``watch`` got no usable answer; each has its own exit code."""

    #: No answer at all: nothing listens, the network failed, or the answer made no sense.
    UNREACHABLE = "unreachable"
    #: The daemon answers but does not track the task (or SuperOffice has no such task).
    NOT_TRACKED = "not tracked"
    #: The daemon answers but has not reached the API yet, or lost it: try again later.
    NOT_READY = "not ready"
    #: The daemon wants a read token (``http.read_token``), and none or a wrong one was given.
    REFUSED = "refused"


class SourceError(Exception):
    """The daemon or the API gave no usable answer; the message is one line for the user."""

    def __init__(self, message: str, problem: Problem = Problem.UNREACHABLE) -> None:
        super().__init__(visible(message))
        self.problem = problem


def duration_text(seconds: float) -> str:
    """``4m05s`` or ``1h02m``: short enough for a table cell."""
    total = max(int(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass(frozen=True, slots=True)
class TaskView:
    """What the terminal shows of one task, from either source."""

    id: int
    name: str
    state: str
    percent: int | None = None
    step: str = ""
    eta: datetime | None = None
    elapsed: str | None = None
    stalled: bool = False
    #: Why it ended so: SuperOffice's ``Result``, else its ``Response``.
    result: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskView:
        """A task as ``/api/v1/tasks`` renders it (text made :func:`visible`)."""
        eta = data.get("eta")
        return cls(
            id=int(data["id"]),
            name=visible(str(data.get("name") or "")),
            state=visible(str(data["state"])),
            percent=data.get("percent"),
            step=visible(str(data.get("step") or "")),
            eta=datetime.fromisoformat(eta) if eta else None,
            elapsed=data.get("elapsed"),
            stalled=bool(data.get("stalled")),
            result=visible(_reason(data)),
        )

    @classmethod
    def from_info(cls, info: BatchTaskInfo, *, eta: datetime | None, now: datetime) -> TaskView:
        """A task as the SuperOffice API answered it."""
        running = info.state.is_active and info.last_started is not None
        return cls(
            id=info.id,
            name=visible(info.name or ""),
            state=info.state.value,
            percent=None if info.progress_ratio is None else round(info.progress_ratio * 100),
            step=visible(info.progress_description or ""),
            eta=eta,
            elapsed=duration_text((now - info.last_started).total_seconds())
            if running and info.last_started
            else None,
            result=visible(info.outcome or ""),
        )

    @property
    def finished(self) -> bool:
        """Whether the task will not change any more (or is gone)."""
        return self.state in _SUCCEEDED or self.state in _FAILED

    @property
    def succeeded(self) -> bool:
        """Whether it ended well: ``watch`` exits 0 for this and only this."""
        return self.state in _SUCCEEDED

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.state in _ACTIVE

    def title(self) -> Text:
        """``#212 Export contacts``, as plain text."""
        return Text(f"#{self.id} {self.name or '(no name)'}")

    def state_text(self) -> Text:
        """The state in its colour; a stalled task says so in yellow."""
        if self.stalled:
            return Text(f"{self.state} · stalled", style="bold yellow")
        return Text(self.state, style=_STYLES.get(self.state, ""))

    def summary(self) -> Text:
        """The last line of ``watch``: title, final state and, on failure, SuperOffice's result."""
        line = Text.assemble(self.title(), ": ", self.state_text())
        if self.result and not self.succeeded:
            line.append(f" ({self.result})")
        return line

    def eta_text(self, now: datetime) -> str:
        """``in 4m05s`` while running, ``due`` once the estimate passed, else empty."""
        if self.eta is None or self.finished:
            return ""
        left = (self.eta - now).total_seconds()
        return f"in {duration_text(left)}" if left > 0 else "due"


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _reason(data: Mapping[str, Any]) -> str:
    """Why the task ended so: the view's ``result``, else the last event's Result or Response.

    Daemons that do not put ``result`` into the task view still carry it in each
    event's task (``/api/v1/tasks/{id}`` lists them, oldest first).
    """
    if isinstance(data.get("result"), str):
        return str(data["result"])
    for event in reversed(data.get("events") or []):
        task = event.get("task") if isinstance(event, Mapping) else None
        if isinstance(task, Mapping):
            reason = outcome(_text_or_none(task.get("result")), _text_or_none(task.get("response")))
            if reason:
                return reason
    return ""


# --- the daemon's JSON API ------------------------------------------------------------------


class HttpError(SourceError):
    """The daemon answered with an unexpected status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _get(url: str, token: str | None, *, ok: Sequence[int] = (200,)) -> Any:
    """GET ``url`` (with the read token, if any) and parse its JSON; other statuses and
    network errors raise."""
    if urllib.parse.urlsplit(url).scheme not in {"http", "https"}:
        msg = f"{url}: only http:// and https:// URLs are supported"
        raise SourceError(msg)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:  # noqa: S310 - scheme checked above
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, body = exc.code, exc.read()
    except OSError as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        msg = f"cannot reach batchmon at {url}: {reason}"
        raise SourceError(msg) from None
    if status == 401 and 401 not in ok:
        given = "the token given was refused" if token else "none was given"
        msg = f"{url}: batchmon wants its read token (http.read_token); {given}: use --token-file"
        raise SourceError(msg, Problem.REFUSED)
    if status not in ok:
        msg = f"{url}: HTTP {status} {_error_text(body)}".rstrip()
        raise HttpError(msg, status)
    try:
        return json.loads(body)
    except ValueError as exc:
        msg = f"{url}: not a JSON answer ({exc})"
        raise SourceError(msg) from None


def _error_text(body: bytes) -> str:
    """What an error answer says: its JSON ``error`` field, else its text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else body.decode(errors="replace").strip()


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One look at a running daemon: its tasks and whether it is ready."""

    url: str
    tasks: list[TaskView]
    ready: bool
    problems: list[str]
    #: With several tenants and none chosen: one line per tenant (``/api/v1/tenants``).
    tenants: list[dict[str, Any]] = field(default_factory=list)
    #: The tenant the tasks are of, when one was chosen.
    tenant: str | None = None


def daemon_tenants(base_url: str, token: str | None = None) -> list[str]:
    """The names of the tenants a running daemon watches (``/api/v1/tenants``), configuration
    order, then those split into shards; raises :class:`SourceError` as ``status`` does when there is no usable answer."""
    lines = _get(f"{base_url.rstrip('/')}/api/v1/tenants", token)["tenants"]
    names = [str(line["name"]) for line in lines]
    # A tenant split into shards answers by its own name too (its task routes find the shard).
    sharded = [str(line["tenant"]) for line in lines if line.get("tenant")]
    return list(dict.fromkeys([*names, *sharded]))


def tenant_query(tenant: str | None) -> str:
    """``?tenant=NAME`` (URL-quoted) for a chosen tenant, else nothing."""
    return "" if tenant is None else "?tenant=" + urllib.parse.quote(tenant, safe="")


#: Tasks asked for per page of ``/api/v1/tasks`` (its maximum).
PAGE_LIMIT = 5000


def read_status(base_url: str, token: str | None = None, tenant: str | None = None) -> StatusReport:
    """The daemon's tasks (``/api/v1/tasks``, every page) and readiness (``/readyz``); with
    several tenants and none chosen, the tenants' lines instead of tasks."""
    base = base_url.rstrip("/")
    if tenant is None:
        lines = _get(f"{base}/api/v1/tenants", token)["tenants"]
        if len(lines) > 1:
            ready, problems = _readiness(base, token)
            return StatusReport(
                url=base, tasks=[], ready=ready, problems=problems, tenants=list(lines)
            )
    tasks: list[Any] = []
    chosen = "" if tenant is None else "&tenant=" + urllib.parse.quote(tenant, safe="")
    page: str | None = f"/api/v1/tasks?limit={PAGE_LIMIT}{chosen}"
    while page is not None:
        answer = _get(urllib.parse.urljoin(base + "/", page.lstrip("/")), token)
        tasks += answer["tasks"]
        page = answer.get("next")
    ready, problems = _readiness(base, token)
    return StatusReport(
        url=base,
        tasks=[TaskView.from_json(t) for t in tasks],
        ready=ready,
        problems=problems,
        tenant=tenant,
    )


def _readiness(base: str, token: str | None) -> tuple[bool, list[str]]:
    """Whether the daemon is ready (``/readyz``), and if not, why (text made visible)."""
    answer = _get(f"{base}/readyz", token, ok=(200, 503))
    return bool(answer.get("ready")), [visible(str(p)) for p in answer.get("problems", [])]


def _progress_cell(view: TaskView) -> ProgressBar | Text:
    if view.percent is None:
        return Text("")
    style = "red" if view.state in _FAILED else "green" if view.succeeded else "blue"
    return ProgressBar(total=100, completed=view.percent, width=10, complete_style=style)


def status_view(report: StatusReport, now: datetime) -> Group:
    """The table ``batchmon status`` prints, with a header line."""
    if report.tenants:
        return _tenants_view(report)
    active = sum(1 for t in report.tasks if t.active)
    of = f" · tenant {visible(report.tenant)}" if report.tenant else ""
    header = Text.assemble(
        ("batchmon", "bold"),
        f" at {visible(report.url)}{of} · {len(report.tasks)} tasks, {active} active · ",
        _readiness_text(report),
    )
    table = Table(
        Column("ID", justify="right", no_wrap=True),
        # Wrapped at spaces; a word too long for the column is cut with "…", never split.
        Column("Task", overflow="ellipsis", min_width=16),
        Column("State"),
        Column("Progress", no_wrap=True),
        Column("%", justify="right", no_wrap=True),
        Column("ETA", no_wrap=True),
        Column("Running", no_wrap=True),
        expand=False,
        header_style="bold",
    )
    for view in report.tasks:
        name = Text(view.name or "(no name)")
        if view.step:
            name.append(f"\n{view.step}", style="dim")
        table.add_row(
            str(view.id),
            name,
            view.state_text(),
            _progress_cell(view),
            "" if view.percent is None else f"{view.percent} %",
            view.eta_text(now),
            view.elapsed or "",
        )
    if not report.tasks:
        empty = "No tasks watched yet." if report.ready else "No tasks seen yet: not ready."
        table.add_row("", Text(empty, style="dim"), "", "", "", "", "")
    return Group(header, table)


def _readiness_text(report: StatusReport) -> tuple[str, str]:
    if report.ready:
        return ("ready", "green")
    return ("not ready: " + "; ".join(report.problems), "red")


def _tenants_view(report: StatusReport) -> Group:
    """One line per tenant: its API, its tasks, what fires (``--tenant`` shows its tasks)."""
    header = Text.assemble(
        ("batchmon", "bold"),
        f" at {visible(report.url)} · {len(report.tenants)} tenants · ",
        _readiness_text(report),
    )
    # Replicas sharing PostgreSQL say who holds each tenant; one process holds them all.
    replicas = any(line.get("replica") for line in report.tenants)
    table = Table(
        Column("Tenant", no_wrap=True),
        Column("API"),
        Column("Tasks", justify="right", no_wrap=True),
        Column("Active", justify="right", no_wrap=True),
        Column("Firing"),
        *([Column("Replica")] if replicas else []),
        expand=False,
        header_style="bold",
    )
    tones = {"up": "green", "down": "red", "waiting": "yellow"}
    for line in report.tenants:
        api = str(line.get("api", ""))
        headline = line.get("api_headline") or (
            "watched by another replica" if api == "elsewhere" else api
        )
        firing = line.get("firing") or {}
        table.add_row(
            visible(str(line.get("name", ""))),
            Text(visible(str(headline)), style=tones.get(api, "dim")),
            str(line.get("tracked", "")),
            str(line.get("active", "")),
            ", ".join(
                f"{n} {visible(str(kind)).removeprefix('task.')}" for kind, n in firing.items()
            ),
            *([visible(str(line.get("replica") or ""))] if replicas else []),
        )
    hint = Text("batchmon status --tenant NAME shows one tenant's tasks.", style="dim")
    return Group(header, table, hint)


# --- following one task ---------------------------------------------------------------------


class DaemonSource:
    """A task as a running daemon sees it (``/api/v1/tasks/{id}``)."""

    def __init__(
        self, base_url: str, task_id: int, token: str | None = None, tenant: str | None = None
    ) -> None:
        self._base = base_url.rstrip("/")
        self._task_id = int(task_id)
        self._token = token
        self._tenant = tenant

    async def read(self) -> TaskView:
        """Ask the daemon (in a worker thread: urllib blocks)."""
        return await anyio.to_thread.run_sync(self._read)

    def _read(self) -> TaskView:
        try:
            url = f"{self._base}/api/v1/tasks/{self._task_id}{tenant_query(self._tenant)}"
            return TaskView.from_json(_get(url, self._token))
        except HttpError as exc:
            if exc.status != 404:
                raise
        ready, problems = _readiness(self._base, self._token)
        if not ready:
            msg = f"batchmon at {self._base} is not ready ({'; '.join(problems)}); try again later"
            raise SourceError(msg, Problem.NOT_READY)
        msg = (
            f"batchmon at {self._base} does not track task {self._task_id} (it is not"
            " watched, or SuperOffice does not know it yet); watch it with [watch] ids or"
            f" PUT {self._base}/api/v1/watches/{self._task_id} (bearer http.api_token),"
            " or ask SuperOffice directly with --config"
        )
        raise SourceError(msg, Problem.NOT_TRACKED)


class ApiSource:
    """A task straight from the SuperOffice API, with an ETA from a local tracker."""

    def __init__(self, client: SuperOfficeClient, task_id: int, label: str) -> None:
        self._label = label
        self._client = client
        self._task_id = task_id
        self._tracker = Tracker(Rules())
        self._last: TaskView | None = None

    async def read(self) -> TaskView:
        """Ask the API; a 404 for a task seen before means it is gone."""
        now = datetime.now(UTC)
        try:
            info = await self._client.get_task(self._task_id)
        except NotFound:
            if self._last is None:
                msg = f"task {self._task_id} does not exist (404 from {self._label})"
                raise SourceError(msg, Problem.NOT_TRACKED) from None
            return replace(self._last, state=GONE, eta=None)
        except ApiError as exc:
            msg = f"SuperOffice API at {self._label}: {exc}"
            raise SourceError(msg) from None
        self._tracker.observe(info, now)
        self._last = TaskView.from_info(info, eta=self._tracker.eta(info.id, now), now=now)
        return self._last


@asynccontextmanager
async def api_source(config: SuperOfficeConfig, task_id: int) -> AsyncIterator[ApiSource]:
    """An :class:`ApiSource` with its own client: auth and tenant routing as in the daemon."""
    async with open_client(config) as client:
        yield ApiSource(client, task_id, config.url or "the tenant's SuperOffice API")


class _StateColumn(ProgressColumn):
    """The task's state in its colour."""

    def render(self, task: Task) -> Text:
        view: TaskView = task.fields["view"]
        return view.state_text()


class _EtaColumn(ProgressColumn):
    """batchmon's estimate (from the task's own progress rate), not rich's guess."""

    def render(self, task: Task) -> Text:
        view: TaskView = task.fields["view"]
        note: str = task.fields["note"]
        if note:
            return Text(note, style="yellow")
        eta = view.eta_text(datetime.now(UTC))
        return Text(f"ETA {eta}" if eta else "", style="cyan")


def _description(view: TaskView) -> str:
    """``#212 Export · Row 400 of 1000`` (the view's text is already :func:`visible`)."""
    return f"#{view.id} {view.name or '(no name)'}" + (f" · {view.step}" if view.step else "")


def _update(progress: Progress, bar: Any, view: TaskView, note: str = "") -> None:
    progress.update(
        bar,
        description=_description(view),
        total=None if view.percent is None else 100,
        completed=view.percent or 0,
        view=view,
        note=note,
    )


async def follow(source: TaskSource, *, interval: float, console: Console) -> TaskView:
    """Show a live bar for one task until it ends; the last view.

    The first read must work (its :class:`SourceError` propagates); later
    failures are shown on the bar and retried, so a daemon restart does not end
    the watch.
    """
    view = await source.read()
    progress = Progress(
        SpinnerColumn(),
        TextColumn(
            "{task.description}",
            markup=False,
            table_column=Column(no_wrap=True, overflow="ellipsis", max_width=60),
        ),
        BarColumn(),
        TaskProgressColumn(),
        _StateColumn(),
        _EtaColumn(),
        console=console,
        # The live bar goes when the task ends; the summary line that follows says how.
        transient=True,
    )
    with progress:
        bar = progress.add_task(_description(view), total=100, view=view, note="")
        _update(progress, bar, view)
        while not view.finished:
            await anyio.sleep(interval)
            try:
                view = await source.read()
            except SourceError as exc:
                _update(progress, bar, view, note=f"retrying: {exc}")
                continue
            _update(progress, bar, view)
        progress.stop_task(bar)
    return view
