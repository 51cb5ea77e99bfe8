"""Terminal views for ``batchmon status`` and ``batchmon watch``: a rich table and a live bar.

Tasks come from a running daemon's JSON API, read with the standard library
(a one-shot command needs no connection pool), or, for ``watch --config``,
straight from SuperOffice through the one API client.  Task text comes from
the API and is untrusted: it is rendered as plain :class:`~rich.text.Text`,
never as rich markup, so a task named ``[blink]`` stays just that.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

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
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState
from monitor.tracking.memory import GONE, Rules
from monitor.tracking.tracker import Tracker

__all__ = [
    "ApiSource",
    "DaemonSource",
    "SourceError",
    "StatusReport",
    "TaskView",
    "api_source",
    "follow",
    "read_status",
    "status_view",
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


class SourceError(Exception):
    """The daemon or the API gave no usable answer; the message is one line for the user."""


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
    #: SuperOffice's ``Result`` text (only when read from the API).
    result: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskView:
        """A task as ``/api/v1/tasks`` renders it."""
        eta = data.get("eta")
        return cls(
            id=int(data["id"]),
            name=str(data.get("name") or ""),
            state=str(data["state"]),
            percent=data.get("percent"),
            step=str(data.get("step") or ""),
            eta=datetime.fromisoformat(eta) if eta else None,
            elapsed=data.get("elapsed"),
            stalled=bool(data.get("stalled")),
        )

    @classmethod
    def from_info(cls, info: BatchTaskInfo, *, eta: datetime | None, now: datetime) -> TaskView:
        """A task as the SuperOffice API answered it."""
        running = info.state.is_active and info.last_started is not None
        return cls(
            id=info.id,
            name=info.name or "",
            state=info.state.value,
            percent=None if info.progress_ratio is None else round(info.progress_ratio * 100),
            step=info.progress_description or "",
            eta=eta,
            elapsed=duration_text((now - info.last_started).total_seconds())
            if running and info.last_started
            else None,
            result=info.result or "",
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


# --- the daemon's JSON API ------------------------------------------------------------------


def _get(url: str, *, ok: Sequence[int] = (200,)) -> Any:
    """GET ``url`` and parse its JSON; other statuses and network errors raise."""
    if urllib.parse.urlsplit(url).scheme not in {"http", "https"}:
        msg = f"{url}: only http:// and https:// URLs are supported"
        raise SourceError(msg)
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as response:  # noqa: S310 - scheme checked above
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, body = exc.code, exc.read()
    except OSError as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        msg = f"cannot reach batchmon at {url}: {reason}"
        raise SourceError(msg) from None
    if status not in ok:
        msg = f"{url}: HTTP {status} {_error_text(body)}".rstrip()
        raise SourceError(msg)
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


def read_status(base_url: str) -> StatusReport:
    """The daemon's tasks (``/api/v1/tasks``) and readiness (``/readyz``)."""
    base = base_url.rstrip("/")
    tasks = _get(f"{base}/api/v1/tasks")["tasks"]
    ready = _get(f"{base}/readyz", ok=(200, 503))
    return StatusReport(
        url=base,
        tasks=[TaskView.from_json(t) for t in tasks],
        ready=bool(ready.get("ready")),
        problems=[str(p) for p in ready.get("problems", [])],
    )


def _progress_cell(view: TaskView) -> ProgressBar | Text:
    if view.percent is None:
        return Text("")
    style = "red" if view.state in _FAILED else "green" if view.succeeded else "blue"
    return ProgressBar(total=100, completed=view.percent, width=20, complete_style=style)


def status_view(report: StatusReport, now: datetime) -> Group:
    """The table ``batchmon status`` prints, with a header line."""
    active = sum(1 for t in report.tasks if t.active)
    header = Text.assemble(
        ("batchmon", "bold"),
        f" at {report.url} · {len(report.tasks)} tasks, {active} active · ",
        ("ready", "green") if report.ready else ("not ready: " + "; ".join(report.problems), "red"),
    )
    table = Table(
        Column("ID", justify="right", no_wrap=True),
        Column("Task", overflow="fold"),
        Column("State", no_wrap=True),
        Column("Progress", no_wrap=True),
        Column("%", justify="right", no_wrap=True),
        Column("ETA", no_wrap=True),
        Column("Running for", no_wrap=True),
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
        table.add_row("", Text("No tasks watched yet.", style="dim"), "", "", "", "", "")
    return Group(header, table)


# --- following one task ---------------------------------------------------------------------


class TaskSource(Protocol):
    """Where ``watch`` reads a task from."""

    async def read(self) -> TaskView:
        """The task now; :class:`SourceError` when there is no answer."""
        ...


class DaemonSource:
    """A task as a running daemon sees it (``/api/v1/tasks/{id}``)."""

    def __init__(self, base_url: str, task_id: int) -> None:
        self._url = f"{base_url.rstrip('/')}/api/v1/tasks/{int(task_id)}"

    async def read(self) -> TaskView:
        """Ask the daemon (in a worker thread: urllib blocks)."""
        data = await anyio.to_thread.run_sync(_get, self._url)
        return TaskView.from_json(data)


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
                raise SourceError(msg) from None
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
        SpinnerColumn(finished_text="•"),
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
