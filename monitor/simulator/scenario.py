"""The scenario: seeded, pure timelines of what the simulated tenant's batch jobs do.

Apart from the server because it has no I/O and no clock of its own: :class:`Scenario` turns a
time into task states, so ``batchmon demo`` and ``batchmon simulate`` get a lively tenant and
a test with a manual clock replays the same story exactly.  The catalogue of job kinds
(:data:`_JOBS`) is what makes the demo look like a real SuperOffice installation.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.simulator.tasks import SimTask
from monitor.superoffice.models import BatchTaskState, CancellationBehaviour

__all__ = ["Scenario"]

#: Scenario tasks get ids from here up; :meth:`Simulator.add_task` skips them.
_SCENARIO_FIRST_ID = 212


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

    @property
    def started_at(self) -> float | None:
        """When the task starts running, in scenario seconds."""
        return next((f.started_at for f in self.frames if f.started_at is not None), None)


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


#: Scenario seconds between the end of a story and the start of the next, with ``loop``.
LOOP_PAUSE = 10.0


class Scenario:
    """A seeded script of what each of its tasks does over time.

    Pure: :meth:`apply` depends only on the time it is given, so any instant can be replayed and
    the same seed always gives the same timeline.  It drives only its own tasks (ids from 212 up);
    they appear at their Created time, and hand edits to them last until the next :meth:`apply`.

    With ``loop`` the story starts again :data:`LOOP_PAUSE` seconds after it ended, on the same
    ids, so a configuration written against it keeps working: each task is queued again (New),
    runs again with its ``StartCount`` one higher and a new ``LastStarted``, as a re-run task
    does in SuperOffice, and a deleted task comes back when it is queued again.
    """

    def __init__(
        self, scripts: Sequence[_Script], *, start: datetime, speed: float = 1.0, loop: bool = False
    ) -> None:
        if start.tzinfo is None:
            msg = "start must be timezone-aware"
            raise ValueError(msg)
        if speed <= 0:
            msg = f"speed must be positive, got {speed}"
            raise ValueError(msg)
        self.start = start
        self.speed = speed
        self.loop = loop
        self._scripts = tuple(scripts)
        self._ids = tuple(script.task_id for script in self._scripts)
        self._first = min((script.frames[0].at for script in self._scripts), default=0.0)
        last = max((script.frames[-1].at for script in self._scripts), default=0.0)
        #: Scenario seconds from one start of the story to the next (with ``loop``).
        self.period = last - self._first + LOOP_PAUSE

    @classmethod
    def generate(
        cls,
        *,
        seed: int = 1,
        count: int = 8,
        start: datetime,
        speed: float = 1.0,
        loop: bool = False,
        cancellation: Mapping[int, CancellationBehaviour] | None = None,
    ) -> Scenario:
        """A realistic mix of ``count`` tasks starting around ``start``.

        With 8 tasks at speed 1: all are created in the first 12 s and started by 20 s; every
        task but the stalled one ends within 55 s; one fails, one stalls for ~20 s mid-run, one
        ends SucceededManualCleanup, one is deleted 5-10 s after it succeeds; two are system
        tasks and one cannot be cancelled.  ``speed`` 2 runs the same timeline twice as fast.
        ``cancellation`` overrides the ``CancellationBehaviour`` of tasks by id.
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
            script = _script(rng, task_id, jobs.pop(), roles[index], appear[index], f"{start:%B}")
            if cancellation and task_id in cancellation:
                script = replace(script, cancellation=cancellation[task_id])
            scripts.append(script)
        return cls(scripts, start=start, speed=speed, loop=loop)

    @classmethod
    def churn(
        cls,
        *,
        start: datetime,
        every: float,
        batch: int,
        until: float,
        queued: tuple[float, float] = (1.0, 2.0),
        running: tuple[float, float] = (3.0, 8.0),
        fail_ratio: float = 0.0,
        delete_after: float | None = None,
        seed: int = 1,
    ) -> Scenario:
        """A steady stream of short tasks, as a busy tenant makes them.

        ``batch`` tasks are created every ``every`` seconds from 0 until ``until``; each is
        New for a time drawn from ``queued``, Started for one drawn from ``running``, then
        Failed (a ``fail_ratio`` of them, seeded) or Succeeded, and deleted ``delete_after``
        seconds after it ended (SuperOffice's clean-up; ``None``: kept).  Its
        :meth:`timeline` says what each task did, so a test knows what it should have seen.
        """
        if every <= 0 or batch < 1 or until < 0:
            msg = f"churn needs every > 0, batch >= 1, until >= 0; got {every}, {batch}, {until}"
            raise ValueError(msg)
        if not 0.0 <= fail_ratio <= 1.0:
            msg = f"fail_ratio must be within 0..1, got {fail_ratio}"
            raise ValueError(msg)
        rng = random.Random(seed)  # noqa: S311 - a simulation: the seed must reproduce it
        scripts = []
        rounds = int(until // every) + 1
        for index in range(rounds * batch):
            job = _JOBS[index % len(_JOBS)]
            n = _SCENARIO_FIRST_ID + index
            appear = (index // batch) * every
            started = appear + rng.uniform(*queued)
            ended = started + rng.uniform(*running)
            failed = rng.random() < fail_ratio
            run = _Frame(
                started,
                BatchTaskState.STARTED,
                0,
                job.preparing.format(n=n),
                started_at=started,
                start_count=1,
            )
            end = replace(
                run,
                at=ended,
                state=BatchTaskState.FAILED if failed else BatchTaskState.SUCCEEDED,
                progress=run.progress if failed else 100,
                result=job.errors[0].format(n=n) if failed else "Completed successfully",
            )
            frames = [_Frame(appear, BatchTaskState.NEW), run, end]
            if delete_after is not None:
                frames.append(replace(end, at=ended + delete_after, deleted=True))
            scripts.append(
                _Script(
                    task_id=n,
                    name=job.name.format(month=f"{start:%B}"),
                    associate_id=0 if job.system else _USER_ASSOCIATES[index % 4],
                    description=job.description.format(n=n),
                    request=job.request,
                    context=job.context,
                    cancellation=job.cancellation,
                    parameters={},
                    frames=tuple(frames),
                )
            )
        return cls(scripts, start=start)

    def starting_at(self, start: datetime) -> Scenario:
        """The same story from ``start``: its scripts are shared, not copied, so many tenants
        can tell a few stories each on a timeline of its own for the memory of a few."""
        return Scenario(self._scripts, start=start, speed=self.speed, loop=self.loop)

    @property
    def task_ids(self) -> tuple[int, ...]:
        """The ids this scenario drives."""
        return self._ids

    def timeline(self, task_id: int) -> tuple[tuple[float, BatchTaskState | None], ...]:
        """When a task entered each state, in seconds after the start; ``None``: deleted."""
        script = next(script for script in self._scripts if script.task_id == task_id)
        changes: list[tuple[float, BatchTaskState | None]] = []
        for frame in script.frames:
            state = None if frame.deleted else frame.state
            if not changes or changes[-1][1] != state:
                changes.append((frame.at / self.speed, state))
        return tuple(changes)

    def stop_point(self) -> tuple[int, float] | None:
        """A task worth stopping to show how, and when: the first CanCancel task that would
        run and succeed, halfway through its run (seconds after the start); ``None``: none."""
        for script in self._scripts:
            if script.cancellation is not CancellationBehaviour.CAN_CANCEL:
                continue
            changes = self.timeline(script.task_id)
            started = next((t for t, state in changes if state is BatchTaskState.STARTED), None)
            if started is not None and changes[-1][1] is BatchTaskState.SUCCEEDED:
                return script.task_id, (started + changes[-1][0]) / 2
        return None

    def apply(self, tasks: dict[int, SimTask], now: datetime) -> None:
        """Advance every scenario task in ``tasks`` to its state at ``now``."""
        elapsed = (now - self.start).total_seconds() * self.speed
        round_ = 0
        if self.loop and elapsed >= self._first + self.period:
            rounds, into = divmod(elapsed - self._first, self.period)
            round_, elapsed = int(rounds), self._first + into
        for script in self._scripts:
            frame, run = script.frame_at(elapsed), round_
            if frame is None and round_ > 0:
                # Not queued again yet: as the last round left it.
                frame, run = script.frames[-1], round_ - 1
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
            offset = run * self.period
            started_at = frame.started_at
            if started_at is None and run > 0:
                # Queued again: the last run is still the last start.
                started_at, offset = script.started_at, offset - self.period
            task.state = frame.state
            task.progress = frame.progress
            task.progress_description = frame.progress_description
            task.last_started = None if started_at is None else self._moment(offset + started_at)
            task.start_count = frame.start_count + run
            task.result = frame.result
            task.response = frame.response
            task.file_name = frame.file_name
            task.deleted = frame.deleted

    def _moment(self, offset: float) -> datetime:
        return self.start + timedelta(seconds=offset / self.speed)
