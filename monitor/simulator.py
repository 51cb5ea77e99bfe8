"""A fake SuperOffice WebAPI: a real aiohttp server whose batch tasks progress by themselves.

``batchmon demo`` and ``batchmon simulate`` run it so the daemon has something to watch without a
tenant; the tests run it on loopback so the client and the poller meet real HTTP, real JSON and
scripted faults instead of mocks.  Its answers follow the vendor's OpenAPI description of
``BatchTaskInfo`` and what SuperOffice documents about errors, dates, ``$select`` and
``AssociateIds``.

Time never comes from a sleep: every request first advances the :class:`Scenario` to the
simulator's clock, so a test with a manual clock replays a timeline exactly.

SuperOffice Online is opt-in (:class:`OnlineTenant`, :class:`OAuthApp`, :class:`SystemUserApp`):
the tenant-status API and numbered hosts that move, the OAuth token endpoint and the system user
login, with tokens and tickets that expire on the same clock.  Faults are scripted per request:
error statuses and bodies, 429/503 with ``Retry-After``, hangs and truncated bodies.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
import json
import random
import re
import secrets
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from types import TracebackType
from typing import Self

import anyio
import jwt
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm
from multidict import CIMultiDict
from yarl import URL

from monitor.superoffice.models import BatchTaskState, CancellationBehaviour

__all__ = [
    "RUNNING_STATES",
    "TENANT_TZ",
    "OAuthApp",
    "OnlineTenant",
    "Scenario",
    "SimTask",
    "Simulator",
    "SystemUserApp",
]

#: The simulated tenant's base time zone: fixed and not UTC, so clients must honour offsets.
TENANT_TZ = timezone(timedelta(hours=1), "Tenant")

_JSON_TYPE = "application/json; charset=utf-8"
_DATABASE_SERIAL = "1358843"
_INTEGER = re.compile(r"-?[0-9]{1,10}")
#: Scenario tasks get ids from here up; :meth:`Simulator.add_task` skips them.
_SCENARIO_FIRST_ID = 212


@dataclass(frozen=True, slots=True)
class _DateForm:
    """How one date field is written: in which zone, and with which offset notation."""

    zone: tzinfo
    #: "Z", "+hh:mm", "+hhmm", or "" for none (tenant time, as SuperOffice sends by default).
    offset: str

    def render(self, value: datetime) -> str:
        local = value.astimezone(self.zone)
        # .NET writes 100 ns ticks, 7 fractional digits; Python stops at microseconds.
        text = f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond:06d}0"
        if self.offset in {"", "Z"}:
            return text + self.offset
        offset = local.utcoffset() or timedelta()
        minutes = int(offset.total_seconds()) // 60
        hours, minutes = divmod(abs(minutes), 60)
        sign = "-" if offset < timedelta() else "+"
        colon = ":" if self.offset == "+hh:mm" else ""
        return f"{text}{sign}{hours:02d}{colon}{minutes:02d}"


#: ``tz_style`` → (form of Created, form of LastStarted).  The database keeps ``registered`` in
#: UTC but ``lastStarted`` in tenant time, so the default writes them differently.
_DATE_STYLES: dict[str, tuple[_DateForm, _DateForm]] = {
    "offset": (_DateForm(UTC, "Z"), _DateForm(TENANT_TZ, "+hh:mm")),
    "utc": (_DateForm(UTC, "Z"), _DateForm(UTC, "Z")),
    # No SO-TimeZone header: tenant base time without an offset.
    "naive": (_DateForm(TENANT_TZ, ""), _DateForm(TENANT_TZ, "")),
    # SO-TimeZone with includeTZOffset: an offset without a colon.
    "compact": (_DateForm(TENANT_TZ, "+hhmm"), _DateForm(TENANT_TZ, "+hhmm")),
}


def _date_forms(tz_style: str) -> tuple[_DateForm, _DateForm]:
    try:
        return _DATE_STYLES[tz_style]
    except KeyError:
        msg = f"unknown tz_style {tz_style!r}; use one of {', '.join(_DATE_STYLES)}"
        raise ValueError(msg) from None


@dataclass(slots=True, kw_only=True)
class SimTask:
    """One simulated task: the state behind ``GET /api/v1/BatchTask/{id}``.

    Mutable on purpose: the scenario and the tests change it in place between requests.
    """

    id: int
    name: str = "Email Campaign Export"
    associate_id: int = 113
    description: str = "Export email campaign recipients to CSV file"
    request: str = "ExportSelection"
    context: str = "Marketing"
    state: BatchTaskState = BatchTaskState.NEW
    progress: int = 0
    progress_description: str = ""
    created: datetime
    last_started: datetime | None = None
    start_count: int = 0
    result: str = ""
    response: str = ""
    file_name: str = ""
    cancellation: CancellationBehaviour = CancellationBehaviour.CAN_CANCEL
    deleted: bool = False
    #: Sent as ``ParameterObject`` (a string dictionary in the spec).
    parameters: dict[str, str] = field(default_factory=dict)

    def to_json(self, tz_style: str = "offset") -> dict[str, object]:
        """The task as a ``BatchTaskInfo`` carrier: all 24 properties, in the spec's order.

        ``tz_style`` picks the date notation: ``offset`` (Created in UTC with ``Z``, LastStarted
        in tenant time with ``+01:00``), ``utc``, ``naive`` (tenant time, no offset) or
        ``compact`` (tenant time, ``+0100``).
        """
        created_form, started_form = _date_forms(tz_style)
        last_started = self.last_started
        return {
            "Id": self.id,
            "Name": self.name,
            "AssociateId": self.associate_id,
            "DetailsTable": 0,
            "DetailsRecord": 0,
            "IsSystemTask": self.associate_id == 0,
            "IsInternalTask": False,
            "ParameterObject": dict(self.parameters),
            "LastStarted": None if last_started is None else started_form.render(last_started),
            "Created": created_form.render(self.created),
            "StartCount": self.start_count,
            "DatabaseSerialNumber": _DATABASE_SERIAL,
            "Context": self.context,
            "Result": self.result,
            "State": self.state.value,
            "Description": self.description,
            "Response": self.response,
            "Request": self.request,
            "ProgressDescription": self.progress_description,
            "ProgressPercent": self.progress,
            "FileName": self.file_name,
            "CancellationBehaviour": self.cancellation.value,
            "TableRight": {"Mask": "FULL", "Reason": ""},
            "FieldProperties": {},
        }


_EDITABLE_FIELDS = frozenset(f.name for f in fields(SimTask)) - {"id"}


def _update(task: SimTask, changes: Mapping[str, object]) -> None:
    unknown = sorted(changes.keys() - _EDITABLE_FIELDS)
    if unknown:
        msg = f"SimTask has no editable field(s) {', '.join(unknown)}"
        raise TypeError(msg)
    for name, value in changes.items():
        setattr(task, name, value)


# --- the scenario: pure timelines --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Frame:
    """What a task shows from ``at`` (scenario seconds after the start) until its next frame."""

    at: float
    state: BatchTaskState
    progress: int = 0
    progress_description: str = ""
    started_at: float | None = None
    start_count: int = 0
    result: str = ""
    response: str = ""
    file_name: str = ""
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class _Script:
    """One scenario task: what never changes, and its frames in time order."""

    task_id: int
    name: str
    associate_id: int
    description: str
    request: str
    context: str
    cancellation: CancellationBehaviour
    parameters: Mapping[str, str]
    frames: tuple[_Frame, ...]

    def frame_at(self, elapsed: float) -> _Frame | None:
        """The frame showing at ``elapsed``; ``None`` before the task exists."""
        index = bisect.bisect_right(self.frames, elapsed, key=lambda frame: frame.at) - 1
        return self.frames[index] if index >= 0 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Job:
    """A kind of batch job a tenant runs; ``{n}``, ``{total}``, ``{month}`` are filled in."""

    name: str
    request: str
    context: str
    description: str
    unit: str
    total: tuple[int, int]
    preparing: str
    finishing: str
    response: str
    errors: tuple[str, ...]
    parameters: tuple[tuple[str, str], ...] = ()
    file_name: str = ""
    system: bool = False
    cancellation: CancellationBehaviour = CancellationBehaviour.CAN_CANCEL


_JOBS = (
    _Job(
        name="Email Campaign Export",
        request="ExportSelection",
        context="Marketing",
        description="Export recipients of selection {n} to a CSV file",
        unit="records",
        total=(800, 6000),
        preparing="Loading selection {n}",
        finishing="Writing campaign_export_{n}.csv",
        response="Export completed with {total} records",
        errors=(
            "Failed: Selection {n} was deleted while the export was running",
            (
                "Failed: SqlException: Timeout expired. The timeout period elapsed prior to "
                "completion of the operation or the server is not responding."
            ),
        ),
        parameters=(("SelectionId", "{n}"), ("Format", "csv")),
        file_name="campaign_export_{n}.csv",
    ),
    _Job(
        name="Mass mailing: {month} newsletter",
        request="SendMassMailing",
        context="Marketing",
        description="Send newsletter mailing {n} to its recipients",
        unit="recipients",
        total=(1500, 12000),
        preparing="Building recipient list",
        finishing="Sending last batch",
        response="Mailing {n} sent to {total} recipients",
        errors=(
            "Failed: SMTP server rejected message: 452 4.3.1 Insufficient system storage",
            "Failed: Mailing {n} has no valid sender address",
        ),
        parameters=(("MailingId", "{n}"),),
        cancellation=CancellationBehaviour.CANCEL_WITH_WARNING,
    ),
    _Job(
        name="Import contacts from CSV",
        request="ImportContacts",
        context="Import",
        description="Import contacts from uploaded file import_{n}.csv",
        unit="rows",
        total=(300, 5000),
        preparing="Reading import_{n}.csv",
        finishing="Updating duplicate index",
        response="Imported {total} contacts",
        errors=(
            "Failed: Invalid value 'N/A' in column 'Email' at row 1832",
            "Failed: The file uses an unsupported encoding (UTF-16 without BOM)",
        ),
        parameters=(("ImportFileId", "{n}"), ("Delimiter", ";")),
    ),
    _Job(
        name="Bulk update: sale stage",
        request="BulkUpdate",
        context="Sales",
        description="Set sale stage to 'Negotiation' on the sales in selection {n}",
        unit="sales",
        total=(50, 900),
        preparing="Loading selection {n}",
        finishing="Committing changes",
        response="Updated sale stage on {total} sales",
        errors=(
            "Failed: Sale 48213 is locked by another user",
            "Failed: Insufficient rights to update sale 9921 (TableRight: Select)",
        ),
        parameters=(("SelectionId", "{n}"), ("Field", "sale.stage")),
    ),
    _Job(
        name="Rebuild freetext index",
        request="RebuildFreetextIndex",
        context="System",
        description="Rebuild the free-text search index",
        unit="records",
        total=(20000, 90000),
        preparing="Scanning tables",
        finishing="Swapping index tables",
        response="Indexed {total} records",
        errors=(
            (
                "Failed: SqlException: Transaction (Process ID 73) was deadlocked on lock "
                "resources with another process and has been chosen as the deadlock victim."
            ),
        ),
        system=True,
        cancellation=CancellationBehaviour.CANNOT_CANCEL,
    ),
    _Job(
        name="Quote PDF generation",
        request="GenerateQuoteDocument",
        context="Sales",
        description="Generate the PDF for quote {n}",
        unit="quote lines",
        total=(5, 120),
        preparing="Loading quote {n}",
        finishing="Rendering PDF",
        response="Quote document generated with {total} lines",
        errors=(
            "Failed: Document template 'Quote (EN)' not found",
            "Failed: Quote {n} has no quote lines",
        ),
        parameters=(("QuoteId", "{n}"),),
        file_name="Quote_{n}.pdf",
    ),
    _Job(
        name="Selection to Excel export",
        request="ExportSelectionToExcel",
        context="Selection",
        description="Export selection {n} to an Excel workbook",
        unit="rows",
        total=(1000, 25000),
        preparing="Loading selection {n}",
        finishing="Writing selection_{n}.xlsx",
        response="Exported {total} rows",
        errors=(
            (
                "Failed: OutOfMemoryException: "
                "Exception of type 'System.OutOfMemoryException' was thrown."
            ),
        ),
        parameters=(("SelectionId", "{n}"), ("Format", "xlsx")),
        file_name="selection_{n}.xlsx",
    ),
    _Job(
        name="Document archive cleanup",
        request="CleanupDocumentArchive",
        context="System",
        description="Delete archived documents older than the retention period",
        unit="documents",
        total=(200, 4000),
        preparing="Scanning document archive",
        finishing="Compacting archive",
        response="Removed {total} expired documents",
        errors=("Failed: Access to the path '\\\\fileserver\\so_arc\\2019' is denied.",),
        system=True,
    ),
)

_USER_ASSOCIATES = (113, 27, 42, 9)
#: The special fates, one task each; the rest simply succeed.
_ROLES = ("fail", "stall", "cleanup", "delete")


def _script(
    rng: random.Random, task_id: int, job: _Job, role: str, appear: float, month: str
) -> _Script:
    """Build one task's timeline: New, Aquired, Started with irregular progress, then its fate."""
    n = rng.randint(1000, 9999)
    total = rng.randint(*job.total)

    def fill(text: str) -> str:
        return text.format(n=n, total=total, month=month)

    frames = [_Frame(appear, BatchTaskState.NEW)]
    t = appear + rng.uniform(2.0, 5.0)
    frames.append(_Frame(t, BatchTaskState.AQUIRED))
    t += rng.uniform(1.2, 3.0)
    running = _Frame(t, BatchTaskState.STARTED, 0, fill(job.preparing), started_at=t, start_count=1)
    frames.append(running)

    steps = rng.randint(6, 14)
    gaps = [rng.uniform(0.4, 1.6) for _ in range(steps)]
    scale = rng.uniform(10.0, 30.0) / sum(gaps)
    weights = [rng.uniform(0.3, 1.7) for _ in range(steps - 1)]
    last = len(weights) - 1
    stall_after = rng.randint(last // 3, 2 * last // 3) if role == "stall" else -1
    fail_after = rng.randint(last // 4, 3 * last // 4) if role == "fail" else -1
    done_weight = 0.0
    for step, weight in enumerate(weights):
        t += gaps[step] * scale
        done_weight += weight
        percent = 1 + int(97 * done_weight / sum(weights))
        done = total * percent // 100
        description = f"Processing {job.unit} {done}/{total}…"
        frames.append(replace(running, at=t, progress=percent, progress_description=description))
        if step == fail_after:
            t += rng.uniform(0.5, 2.0)
            error = fill(rng.choice(job.errors))
            stopped = f"Stopped after {done} of {total} {job.unit}"
            frames.append(
                replace(
                    frames[-1], at=t, state=BatchTaskState.FAILED, result=error, response=stopped
                )
            )
            break
        if step == stall_after:
            # Nothing changes while a task hangs: not the progress, not the description.
            t += rng.uniform(18.0, 24.0)
    else:
        t += gaps[-1] * scale
        frames.append(replace(running, at=t, progress=99, progress_description=fill(job.finishing)))
        t += rng.uniform(0.5, 1.5)
        state = BatchTaskState.SUCCEEDED
        if role == "cleanup":
            state = BatchTaskState.SUCCEEDED_MANUAL_CLEANUP
        frames.append(
            replace(
                running,
                at=t,
                state=state,
                progress=100,
                progress_description="Completed",
                result="Completed successfully",
                response=fill(job.response),
                file_name=fill(job.file_name),
            )
        )
        if role == "delete":
            frames.append(replace(frames[-1], at=t + rng.uniform(5.0, 10.0), deleted=True))

    return _Script(
        task_id=task_id,
        name=fill(job.name),
        associate_id=0 if job.system else rng.choice(_USER_ASSOCIATES),
        description=fill(job.description),
        request=job.request,
        context=job.context,
        cancellation=job.cancellation,
        parameters={key: fill(value) for key, value in job.parameters},
        frames=tuple(frames),
    )


class Scenario:
    """A seeded script of what each of its tasks does over time.

    Pure: :meth:`apply` depends only on the time it is given, so any instant can be replayed and
    the same seed always gives the same timeline.  It drives only its own tasks (ids from 212 up);
    they appear at their Created time, and hand edits to them last until the next :meth:`apply`.
    """

    def __init__(self, scripts: Sequence[_Script], *, start: datetime, speed: float = 1.0) -> None:
        if start.tzinfo is None:
            msg = "start must be timezone-aware"
            raise ValueError(msg)
        if speed <= 0:
            msg = f"speed must be positive, got {speed}"
            raise ValueError(msg)
        self.start = start
        self.speed = speed
        self._scripts = tuple(scripts)

    @classmethod
    def generate(
        cls, *, seed: int = 1, count: int = 8, start: datetime, speed: float = 1.0
    ) -> Scenario:
        """A realistic mix of ``count`` tasks starting around ``start``.

        With 8 tasks at speed 1: all are created in the first 12 s and started by 20 s; every
        task but the stalled one ends within 55 s; one fails, one stalls for ~20 s mid-run, one
        ends SucceededManualCleanup, one is deleted 5-10 s after it succeeds; two are system
        tasks and one cannot be cancelled.  ``speed`` 2 runs the same timeline twice as fast.
        """
        # A simulation, not cryptography: the seed must reproduce the timeline.
        rng = random.Random(seed)  # noqa: S311
        roles = [*_ROLES, *["plain"] * max(0, count - len(_ROLES))][:count]
        rng.shuffle(roles)
        # The first task was queued just before the start, so there is something to see at once.
        appear = [-rng.uniform(0.1, 2.0), *sorted(rng.uniform(0.0, 12.0) for _ in range(count - 1))]
        scripts: list[_Script] = []
        jobs: list[_Job] = []
        for index in range(count):
            if not jobs:
                jobs = rng.sample(_JOBS, len(_JOBS))
            task_id = _SCENARIO_FIRST_ID + index
            scripts.append(
                _script(rng, task_id, jobs.pop(), roles[index], appear[index], f"{start:%B}")
            )
        return cls(scripts, start=start, speed=speed)

    @property
    def task_ids(self) -> tuple[int, ...]:
        """The ids this scenario drives."""
        return tuple(script.task_id for script in self._scripts)

    def apply(self, tasks: dict[int, SimTask], now: datetime) -> None:
        """Advance every scenario task in ``tasks`` to its state at ``now``."""
        elapsed = (now - self.start).total_seconds() * self.speed
        for script in self._scripts:
            frame = script.frame_at(elapsed)
            if frame is None:
                tasks.pop(script.task_id, None)
                continue
            task = tasks.get(script.task_id)
            if task is None:
                task = tasks[script.task_id] = SimTask(
                    id=script.task_id,
                    name=script.name,
                    associate_id=script.associate_id,
                    description=script.description,
                    request=script.request,
                    context=script.context,
                    created=self._moment(script.frames[0].at),
                    cancellation=script.cancellation,
                    parameters=dict(script.parameters),
                )
            task.state = frame.state
            task.progress = frame.progress
            task.progress_description = frame.progress_description
            task.last_started = None if frame.started_at is None else self._moment(frame.started_at)
            task.start_count = frame.start_count
            task.result = frame.result
            task.response = frame.response
            task.file_name = frame.file_name
            task.deleted = frame.deleted

    def _moment(self, offset: float) -> datetime:
        return self.start + timedelta(seconds=offset / self.speed)


# --- SuperOffice Online: opt-in pieces --------------------------------------------------------

#: Tenant states in which the API answers (the status API's ``IsRunning``).
RUNNING_STATES = frozenset({"Running", "OnlineMaintenance"})

_CLAIMS = "http://schemes.superoffice.net/identity/"
_KEY_ID = "batchmon-simulator"
#: A signed system user token may be this far from the simulator's clock.
_SIGNATURE_SKEW = timedelta(minutes=5)
#: How long the JWT from the system user login is valid.
_JWT_LIFETIME = timedelta(minutes=10)
_VERSION = "Release_11.10_2026.02.24-02"


@dataclass(slots=True, kw_only=True)
class OnlineTenant:
    """A SuperOffice Online tenant, found through the tenant-status API.

    Its API lives at ``/{node}/{context_id}/api`` on the simulator, mirroring
    ``https://online3.superoffice.com/Cust12345/api``.  Tests change it in place:
    setting ``node`` moves the tenant (the old path then answers 421), setting
    ``state`` to e.g. ``"OfflineMaintenance"`` takes the API down (503).
    """

    context_id: str = "Cust12345"
    #: The numbered host the tenant lives on.
    node: str = "online1"
    #: As the status API names it; the API answers in :data:`RUNNING_STATES` only.
    state: str = "Running"
    #: The status API's ``ValidUntil`` is this many seconds after each answer.
    valid_for: float = 600.0
    #: The database serial number: a system user JWT's audience is ``spn:{serial}``.
    serial: str = "1801550193"

    @property
    def is_running(self) -> bool:
        """Whether the API answers (the status API's ``IsRunning``)."""
        return self.state in RUNNING_STATES


@dataclass(slots=True, kw_only=True)
class OAuthApp:
    """An app the OAuth token endpoint knows; it issues access tokens for a refresh token."""

    client_id: str = "batchmon-app"
    client_secret: str = "simulated-client-secret"  # noqa: S105 - a loopback simulator's
    refresh_token: str = "simulated-refresh-token"  # noqa: S105 - well-known defaults
    #: Seconds an access token is accepted (``expires_in``).
    token_lifetime: float = 3600.0
    #: While set, the token endpoint refuses the refresh token with this OAuth error.
    refuse: str | None = None


@dataclass(slots=True, kw_only=True)
class SystemUserApp:
    """An app the system user endpoint knows: it checks signatures with ``public_key``."""

    #: The app's public key; the test keeps the private half for the client.
    public_key: rsa.RSAPublicKey
    client_secret: str = "simulated-client-secret"  # noqa: S105 - a loopback simulator's default
    system_user_token: str = "batchmon-4fGh7Kp2"  # noqa: S105 - a loopback simulator's default
    #: Seconds a ticket is accepted after its last use (sliding, as in Online).
    ticket_lifetime: float = 6 * 3600.0
    #: While set, logins fail with this ``ErrorMessage`` (e.g. ``"Revoked"``).
    refuse: str | None = None


@dataclass(slots=True)
class _Issued:
    """A token or ticket the simulator handed out, and since when it counts."""

    kind: str
    since: datetime
    lifetime: float


# --- the server ----------------------------------------------------------------------------------


def _dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False)


def _error(
    status: int,
    error_type: str,
    message: str,
    *,
    source: str = "SuperOffice.WebApi",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A SuperOffice error object: ``{"Error": true, "ErrorType", "ErrorMessage", "ErrorSource"}``."""
    body = {"Error": True, "ErrorType": error_type, "ErrorMessage": message, "ErrorSource": source}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _bad_request(message: str) -> web.Response:
    return _error(400, "ArgumentException", message)


@dataclass(frozen=True, slots=True)
class _Fault:
    """A scripted answer; a fresh Response per use, because aiohttp sends each only once.

    ``mode`` ``"hang"`` answers only once the simulator stops (the client times out first);
    ``"truncate"`` announces the whole body but sends half of it and closes the connection.
    """

    status: int
    body: bytes
    headers: Mapping[str, str]
    mode: str = "answer"

    async def respond(self, request: web.Request, released: anyio.Event) -> web.StreamResponse:
        if self.mode == "hang":
            await released.wait()
        if self.mode != "truncate":
            return web.Response(status=self.status, body=self.body, headers=self.headers)
        response = web.StreamResponse(status=self.status, headers=self.headers)
        response.content_length = len(self.body)
        await response.prepare(request)
        await response.write(self.body[: len(self.body) // 2])
        if request.transport is not None:
            request.transport.close()
        return response


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _owned_by(task: SimTask, associate_ids: Sequence[int]) -> bool:
    """SuperOffice's AssociateIds rule: [] all tasks, 0 system tasks, -1 all user tasks."""
    if not associate_ids:
        return True
    return any(
        wanted == task.associate_id or (wanted == -1 and task.associate_id != 0)
        for wanted in associate_ids
    )


#: Routes that take no API credentials: the login and tenant-status hosts.
_PUBLIC_ROUTES = frozenset({"oauth-tokens", "system-user", "jwks", "tenant-state"})
_API_ROUTES = (
    ("GET", "/v1/BatchTask/{id}", "_get_task"),
    ("POST", "/v1/Agents/Batch/GetBatchTaskInfosByAssociates", "_by_associates"),
    ("POST", "/v1/Agents/Batch/GetBatchTaskInfosByAssociatesAndState", "_by_associates_and_state"),
)


class Simulator:
    """A SuperOffice WebAPI tenant on loopback, scriptable from tests.

    Serves ``GET /api/v1/BatchTask/{id}`` and the ``Agents/Batch`` list calls
    ``GetBatchTaskInfosByAssociates`` and ``GetBatchTaskInfosByAssociatesAndState``.  Each
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
    ) -> None:
        _date_forms(tz_style)  # refuse an unknown style now, not at the first request
        if system_user is not None and tenant is None:
            msg = "a system user logs in to a tenant: give tenant= too"
            raise ValueError(msg)
        self.scenario = scenario
        self.tasks: dict[int, SimTask] = {}
        self.requests: list[str] = []
        self.tenant = tenant
        self.oauth = oauth
        self.system_user = system_user
        self._clock = clock or _utc_now
        self._basic = f"{username}:{password}".encode()
        self._ticket = ticket
        self._token = token
        self._tz_style = tz_style
        self._next_id = first_id
        self._faults: deque[_Fault] = deque()
        self._issued: dict[str, _Issued] = {}
        self._signing_key: rsa.RSAPrivateKey | None = None
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
        if self._signing_key is None:
            msg = "the simulator signs JWTs only with system_user= and once started"
            raise RuntimeError(msg)
        return self._signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port) and return the API base URL."""
        if self._runner is not None:
            msg = "the simulator is already started"
            raise RuntimeError(msg)
        if self.system_user is not None and self._signing_key is None:
            # A fresh key pair per run: nothing secret is ever committed.
            self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._released = anyio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_port: int = runner.addresses[0][1]
        self._runner = runner
        self._origin = str(URL.build(scheme="http", host=host, port=bound_port))
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
        elif task_id in self.tasks or self._scenario_owns(task_id):
            msg = f"task {task_id} already exists"
            raise ValueError(msg)
        task = SimTask(id=task_id, created=self._clock())
        _update(task, fields)
        self.tasks[task_id] = task
        return task

    def set_task(self, task_id: int, **fields: object) -> None:
        """Change fields of a task, e.g. ``set_task(201, state=BatchTaskState.FAILED)``."""
        _update(self.tasks[task_id], fields)

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
            body = _dumps({"Id": 1, "Name": "Cut off in the middle", "State": "Started"})
        fault = replace(self._fault(count, 200, body, None), mode="truncate")
        self._faults.extend([fault] * count)

    def expire_credentials(self) -> None:
        """Refuse every access token and ticket issued so far, as when they run out."""
        self._issued.clear()

    def _fault(
        self, count: int, status: int, body: str | bytes | None, headers: dict[str, str] | None
    ) -> _Fault:
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
            body = _dumps(error)
        merged = CIMultiDict({hdrs.CONTENT_TYPE: _JSON_TYPE})
        merged.update(headers or {})
        payload = body.encode() if isinstance(body, str) else body
        return _Fault(status, payload, merged)

    def _free_id(self) -> int:
        while self._next_id in self.tasks or self._scenario_owns(self._next_id):
            self._next_id += 1
        self._next_id += 1
        return self._next_id - 1

    def _scenario_owns(self, task_id: int) -> bool:
        return self.scenario is not None and task_id in self.scenario.task_ids

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
            refusal = self._tenant_refusal(
                request.match_info["node"], request.match_info["context"]
            )
            if refusal is not None:
                return refusal
        if not self._authorized(request):
            return _error(
                401,
                "SoAuthenticationException",
                "Authentication failed: invalid or missing credentials",
                headers={hdrs.WWW_AUTHENTICATE: 'Basic realm="SuperOffice"'},
            )
        if self.scenario is not None:
            self.scenario.apply(self.tasks, self._clock())
        return await handler(request)

    def _tenant_refusal(self, node: str, context: str) -> web.Response | None:
        """What a numbered host says to a request that is not for its running tenant."""
        tenant = self.tenant
        if tenant is None or context.casefold() != tenant.context_id.casefold():
            return _error(404, "SoTenantNotFoundException", f"Unknown tenant {context}")
        if node != tenant.node:
            return _error(421, "MisdirectedRequest", "Wrong subdomain used to access tenant")
        if not tenant.is_running:
            message = f"Tenant {tenant.context_id} is {tenant.state}"
            return _error(503, "SoTenantUnavailableException", message)
        return None

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")
        credentials = credentials.strip()
        match scheme.casefold():
            case "basic":
                try:
                    decoded = base64.b64decode(credentials, validate=True)
                except binascii.Error:
                    return False
                return hmac.compare_digest(decoded, self._basic)
            case "soticket":
                app_token = request.headers.get("SO-AppToken", "")
                return _matches(credentials, self._ticket) or self._issued_and_valid(
                    credentials, "ticket", app_token
                )
            case "bearer":
                return _matches(credentials, self._token) or self._issued_and_valid(
                    credentials, "token", None
                )
            case _:
                return False

    def _issued_and_valid(self, value: str, kind: str, app_token: str | None) -> bool:
        """Whether ``value`` was issued here as ``kind`` and is still alive (tickets slide)."""
        issued = self._issued.get(value)
        if issued is None or issued.kind != kind:
            return False
        now = self._clock()
        if (now - issued.since).total_seconds() >= issued.lifetime:
            del self._issued[value]
            return False
        if kind == "ticket":
            app = self.system_user
            if app is None or not _matches(app_token or "", app.client_secret):
                return False
            issued.since = now
        return True

    def _issue(self, prefix: str, kind: str, lifetime: float) -> str:
        value = f"{prefix}{secrets.token_urlsafe(24)}"
        self._issued[value] = _Issued(kind, self._clock(), lifetime)
        return value

    async def _oauth_token(self, request: web.Request) -> web.Response:
        """The refresh-token grant: an access token like ``8A:Cust12345.…``, or an OAuth error."""
        app = self.oauth
        if app is None:
            return _error(404, "NotFound", "OAuth is not enabled in this simulator")
        form = await request.post()
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", "Only refresh_token is simulated")
        if not (
            _matches(str(form.get("client_id", "")), app.client_id)
            and _matches(str(form.get("client_secret", "")), app.client_secret)
        ):
            return _oauth_error(401, "invalid_client", "Unknown client or wrong client secret")
        if app.refuse is not None or not _matches(
            str(form.get("refresh_token", "")), app.refresh_token
        ):
            message = "The refresh token is invalid, expired or revoked"
            return _oauth_error(400, app.refuse or "invalid_grant", message)
        context = self.tenant.context_id if self.tenant is not None else "Cust12345"
        token = self._issue(f"8A:{context}.", "token", app.token_lifetime)
        body = {"token_type": "Bearer", "access_token": token, "expires_in": app.token_lifetime}
        return web.json_response(body, dumps=_dumps)

    async def _system_user(self, request: web.Request) -> web.Response:
        """Verify the signed system user token; answer a JWT carrying a ticket, or why not."""
        app, tenant = self.system_user, self.tenant
        if app is None or tenant is None:
            return _error(404, "NotFound", "System users are not enabled in this simulator")
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError):
            return _bad_request("The request body is not valid JSON")
        if not isinstance(body, dict):
            return _bad_request("The request body must be a JSON object")
        problem = (
            app.refuse
            or self._login_problem(app, tenant, body)
            or _signature_problem(app, str(body.get("SignedSystemToken", "")), self._clock())
        )
        if problem is not None:
            answer = {"IsSuccessful": False, "Token": None, "ErrorMessage": problem}
            return web.json_response(answer, dumps=_dumps)
        ticket = self._issue("7T:", "ticket", app.ticket_lifetime)
        jwt_text = self._signed_jwt(tenant, ticket, f"{request.scheme}://{request.host}")
        answer = {"IsSuccessful": True, "Token": jwt_text, "ErrorMessage": ""}
        return web.json_response(answer, dumps=_dumps)

    @staticmethod
    def _login_problem(
        app: SystemUserApp, tenant: OnlineTenant, body: Mapping[str, object]
    ) -> str | None:
        if not _matches(str(body.get("ApplicationToken", "")), app.client_secret):
            return "Unknown application token"
        if str(body.get("ContextIdentifier", "")).casefold() != tenant.context_id.casefold():
            return f"The application is not approved for {body.get('ContextIdentifier')!r}"
        if str(body.get("ReturnTokenType", "")).casefold() != "jwt":
            return "ReturnTokenType must be JWT"
        return None

    def _signed_jwt(self, tenant: OnlineTenant, ticket: str, origin: str) -> str:
        """The login's answer: RS256-signed by the simulator's key, as SuperOffice signs it."""
        assert self._signing_key is not None  # made at start with system_user
        now = self._clock()
        claims = {
            "iss": "SuperOffice AS",
            "aud": f"spn:{tenant.serial}",
            "sub": "system.user",
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + _JWT_LIFETIME).timestamp()),
            _CLAIMS + "ticket": ticket,
            _CLAIMS + "ctx": tenant.context_id,
            _CLAIMS + "serial": tenant.serial,
            _CLAIMS + "webapi_url": f"{origin}/{tenant.node}/{tenant.context_id}/api/",
            _CLAIMS + "is_administrator": "False",
        }
        return jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": _KEY_ID})

    async def _jwks(self, request: web.Request) -> web.Response:
        """The environment's signing keys, as ``/login/.well-known/jwks`` lists them."""
        if self._signing_key is None:
            return web.json_response({"keys": []}, dumps=_dumps)
        key = RSAAlgorithm.to_jwk(self._signing_key.public_key(), as_dict=True)
        key.update({"kid": _KEY_ID, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": [key]}, dumps=_dumps)

    async def _tenant_state(self, request: web.Request) -> web.Response:
        """``GET /api/state/{context}``: where the tenant lives and whether it runs."""
        context = request.match_info["context"]
        tenant = self.tenant
        valid_until = _DateForm(UTC, "Z").render(
            self._clock() + timedelta(seconds=tenant.valid_for if tenant else 600.0)
        )
        if tenant is None or context.casefold() != tenant.context_id.casefold():
            unknown = {
                "ContextIdentifier": context,
                "Endpoint": None,
                "State": "Unknown",
                "IsRunning": False,
                "ValidUntil": valid_until,
                "Api": None,
                "Version": None,
            }
            return web.json_response(unknown, dumps=_dumps)
        endpoint = f"{request.scheme}://{request.host}/{tenant.node}/{tenant.context_id}"
        state = {
            "ContextIdentifier": tenant.context_id,
            "Endpoint": endpoint,
            "State": tenant.state,
            "IsRunning": tenant.is_running,
            "ValidUntil": valid_until,
            "Api": endpoint + "/api",
            "Version": _VERSION,
        }
        return web.json_response(state, dumps=_dumps)

    async def _get_task(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not _INTEGER.fullmatch(raw):
            return _bad_request(f"The value '{raw}' is not a valid BatchTask id")
        task = self.tasks.get(int(raw))
        if task is None or task.deleted:
            return _error(
                404,
                "SoNotFoundException",
                f"BatchTask id {int(raw)} not found",
                source="SuperOffice.Services.Implementation",
            )
        return web.json_response(task.to_json(self._tz_style), dumps=_dumps)

    async def _by_associates(self, request: web.Request) -> web.Response:
        return await self._list(request, with_state=False)

    async def _by_associates_and_state(self, request: web.Request) -> web.Response:
        return await self._list(request, with_state=True)

    async def _list(self, request: web.Request, *, with_state: bool) -> web.Response:
        """Answer an ``Agents/Batch`` list call, honouring ``$select``."""
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError):
            return _bad_request("The request body is not valid JSON")
        if not isinstance(body, dict):
            return _bad_request("The request body must be a JSON object")
        # ASP.NET binds carrier properties case-insensitively.
        carrier = {str(key).casefold(): value for key, value in body.items()}
        associate_ids = carrier.get("associateids")
        if not isinstance(associate_ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in associate_ids
        ):
            return _bad_request("AssociateIds must be an array of integers")
        states: frozenset[BatchTaskState] | None = None
        if with_state:
            states = _state_filter(carrier.get("state"))
            if states is None:
                return _bad_request(f"State {carrier.get('state')!r} is not a BatchTaskState")
        query = request.query.get("$select", "")
        select = _selected_keys(query) if query.strip() else None
        answer = [
            _select(task.to_json(self._tz_style), select)
            for task in sorted(self.tasks.values(), key=lambda task: task.id)
            if not task.deleted
            and _owned_by(task, associate_ids)
            and (states is None or task.state in states)
        ]
        return web.json_response(answer, dumps=_dumps)


def _matches(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def _state_filter(raw: object) -> frozenset[BatchTaskState] | None:
    """The states a ``State`` argument selects; ``All`` is the wildcard.  ``None`` if invalid."""
    if not isinstance(raw, str):
        return None
    folded = raw.strip().casefold()
    if folded == "all":
        return frozenset(BatchTaskState)
    matches = frozenset(state for state in BatchTaskState if state.value.casefold() == folded)
    return matches or None


#: The 24 BatchTaskInfo keys, in the spec's order.
_CARRIER_KEYS = (
    "Id", "Name", "AssociateId", "DetailsTable", "DetailsRecord", "IsSystemTask",
    "IsInternalTask", "ParameterObject", "LastStarted", "Created", "StartCount",
    "DatabaseSerialNumber", "Context", "Result", "State", "Description", "Response",
    "Request", "ProgressDescription", "ProgressPercent", "FileName",
    "CancellationBehaviour", "TableRight", "FieldProperties",
)  # fmt: skip


def _select(data: dict[str, object], select: set[str] | None) -> dict[str, object]:
    """Null every field not in ``select``; keys stay ("other fields are then nulled out").

    ``select`` holds exact key names (see :func:`_selected_keys`); ``None``: no ``$select``.
    """
    if select is None:
        return data
    return dict.fromkeys(data) | {key: data[key] for key in select if key in data}


def _selected_keys(query: str) -> set[str]:
    """The ``$select`` names, matched case-insensitively to the carrier's own key names."""
    wanted = {name.strip().casefold() for name in query.split(",") if name.strip()}
    return {key for key in _CARRIER_KEYS if key.casefold() in wanted}


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    """An RFC 6749 error answer, as the token endpoint gives."""
    body = {"error": error, "error_description": description}
    return web.json_response(body, status=status, dumps=_dumps)


def _signature_problem(app: SystemUserApp, signed: str, now: datetime) -> str | None:
    """Why ``token.yyyyMMddHHmm.signature`` is not the app's fresh signature, if it is not.

    The names are SuperOffice's ``AuthorizeErrorCode`` values.
    """
    data, _, signature = signed.rpartition(".")
    token, _, stamp = data.rpartition(".")
    try:
        app.public_key.verify(
            base64.b64decode(signature, validate=True),
            data.encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (InvalidSignature, binascii.Error, ValueError):
        return "InvalidSignature"
    if not _matches(token, app.system_user_token):
        return "Unknown system user token"
    try:
        when = datetime.strptime(stamp, "%Y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        return "InvalidTimestamp"
    if abs(now - when) > _SIGNATURE_SKEW:
        return "InvalidTimestamp"
    return None
