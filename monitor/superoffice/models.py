"""SuperOffice's BatchTaskInfo carrier, parsed leniently.

The WebAPI is not always what its documentation says: the generated samples
carry ``"State": "All"`` and ``ProgressPercent: 222``, the official .NET
client keeps the raw enum string because values may be unknown, and absent
values arrive as ``null``.  So parsing never fails on a field's *value*: a
value that does not fit is kept raw, replaced by ``None`` (or ``Unknown`` for
the state) and recorded in :attr:`BatchTaskInfo.anomalies`.  Only a body that
is not a JSON object, or a task without a usable ``Id``, is a
:class:`ParseError`: without an id there is nothing to attach the data to.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)

from monitor.text import without_surrogates

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "BatchTaskInfo",
    "BatchTaskState",
    "CancellationBehaviour",
    "FieldProperty",
    "ParseError",
    "TableRight",
    "TaskListing",
    "outcome",
    "parse_datetime",
    "parse_listing",
    "parse_task",
    "parse_task_list",
]


class BatchTaskState(enum.StrEnum):
    """``BatchTaskState`` as the JSON carries it (by name).

    ``All`` (99999) is a query wildcard and never a real state, so it is not
    a member: a task reporting it is treated as ``Unknown`` and flagged.
    """

    #: Unknown state; also what any unrecognised value maps to.
    UNKNOWN = "Unknown"
    #: New, not assigned or run by anyone.
    NEW = "New"
    #: Acquired by an executor, not yet started (SuperOffice's spelling).
    AQUIRED = "Aquired"
    #: Executing.
    STARTED = "Started"
    #: Completed successfully.
    SUCCEEDED = "Succeeded"
    #: Halted, failed.
    FAILED = "Failed"
    #: Succeeded; related data cleaned up by the responsible code.
    SUCCEEDED_MANUAL_CLEANUP = "SucceededManualCleanup"

    @property
    def is_terminal(self) -> bool:
        """Whether the task will not change any more."""
        return self in TERMINAL_STATES

    @property
    def is_active(self) -> bool:
        """Whether the task is queued or running."""
        return self in ACTIVE_STATES


ACTIVE_STATES = frozenset({BatchTaskState.NEW, BatchTaskState.AQUIRED, BatchTaskState.STARTED})
TERMINAL_STATES = frozenset(
    {
        BatchTaskState.SUCCEEDED,
        BatchTaskState.FAILED,
        BatchTaskState.SUCCEEDED_MANUAL_CLEANUP,
    }
)

#: The numeric values of the enum (CRMScript and the database use them).
_STATE_BY_NUMBER: dict[int, BatchTaskState] = {
    0: BatchTaskState.UNKNOWN,
    1: BatchTaskState.NEW,
    2: BatchTaskState.AQUIRED,
    3: BatchTaskState.STARTED,
    4: BatchTaskState.SUCCEEDED,
    5: BatchTaskState.FAILED,
    6: BatchTaskState.SUCCEEDED_MANUAL_CLEANUP,
}
_STATE_BY_FOLDED_NAME = {s.value.casefold(): s for s in BatchTaskState}
_WILDCARD_STATE_NAME = "all"
_WILDCARD_STATE_NUMBER = 99999


class CancellationBehaviour(enum.StrEnum):
    """``BatchTaskCancellationBehaviour``: whether the task can be stopped."""

    #: Can be cancelled.
    CAN_CANCEL = "CanCancel"
    #: Can be cancelled, but the UI shows a warning first.
    CANCEL_WITH_WARNING = "CancelWithWarning"
    #: Cannot be cancelled.
    CANNOT_CANCEL = "CannotCancel"


_CANCELLATION_BY_NUMBER = dict(enumerate(CancellationBehaviour))
_CANCELLATION_BY_FOLDED_NAME = {c.value.casefold(): c for c in CancellationBehaviour}


class ParseError(ValueError):
    """A response body that cannot be a BatchTaskInfo at all.

    When the body is a SuperOffice error object, its ``ErrorType`` and
    ``ErrorMessage`` are kept so the log says what SuperOffice said.
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.error_message = error_message


_LEAP_SECOND = re.compile(r"T\d\d:\d\d:(60)")

# .NET writes DateTime.MinValue for "never"; it is not a real date.
_DOTNET_MIN_YEAR = 1


def parse_datetime(value: str, default_tz: tzinfo = UTC) -> datetime | None:
    """Parse a SuperOffice date-time in any of the forms it sends.

    Handles 7 fractional digits, ``Z``, ``+02:00``, ``-0500`` and no offset at
    all; a value without an offset is in the tenant's zone (``default_tz``).
    ``0001-01-01T00:00:00`` means "never" and becomes ``None``.
    """
    # RFC 3339 allows lower-case separators (section 5.6); .NET never writes them.
    text = value.strip().upper()
    # A leap second (:60) is the last instant of its minute.
    leap = _LEAP_SECOND.search(text)
    if leap:
        text = text[: leap.start(1)] + "59" + text[leap.end(1) :]
    # Python's parser takes at most 6 fractional digits on 3.11 for some
    # inputs; .NET writes 7.  Trim the fraction to microseconds.
    dot = text.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        digits = text[dot + 1 : end]
        if len(digits) > 6:
            text = text[: dot + 7] + text[end:]
    parsed = datetime.fromisoformat(text)
    if leap:
        parsed = parsed.replace(microsecond=999999)
    if parsed.year == _DOTNET_MIN_YEAR:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=default_tz)
    return parsed


def _date(value: object, info: ValidationInfo) -> object:
    """Turn a date string into an aware datetime (pydantic before-validator)."""
    if isinstance(value, str):
        tz = (info.context or {}).get("tz", UTC)
        return parse_datetime(value, tz)
    return value


_Date = Annotated[datetime | None, BeforeValidator(_date)]


class TableRight(BaseModel):
    """A carrier's table right: a comma-joined ``ETableRight`` mask and why."""

    model_config = ConfigDict(frozen=True, extra="allow")

    mask: str | None = Field(default=None, alias="Mask")
    reason: str | None = Field(default=None, alias="Reason")

    @model_validator(mode="after")
    def _slim(self) -> TableRight:
        _share_fields_set(self)
        return self


class FieldProperty(BaseModel):
    """Access and type information for one field of the carrier."""

    model_config = ConfigDict(frozen=True, extra="allow")

    field_right: TableRight | None = Field(default=None, alias="FieldRight")
    field_type: str | None = Field(default=None, alias="FieldType")
    field_length: int | None = Field(default=None, alias="FieldLength")


class BatchTaskInfo(BaseModel):
    """One batch task as ``GET /api/v1/BatchTask/{id}`` returns it.

    ``state_raw``/``cancellation_raw`` hold exactly what the API sent;
    :attr:`state` and :attr:`cancellation_behaviour` are the interpreted
    values.  :attr:`anomalies` lists everything that did not fit.
    """

    # Fields are filled only by their API names: an unknown property spelled like a
    # Python field name ("state_raw") must land in model_extra, not in the field.
    model_config = ConfigDict(frozen=True, extra="allow")

    # int32, as the OpenAPI description says: anything else cannot be a task id.
    id: int = Field(alias="Id", ge=-(2**31), le=2**31 - 1)
    name: str | None = Field(default=None, alias="Name")
    associate_id: int | None = Field(default=None, alias="AssociateId")
    details_table: int | None = Field(default=None, alias="DetailsTable")
    details_record: int | None = Field(default=None, alias="DetailsRecord")
    is_system_task: bool | None = Field(default=None, alias="IsSystemTask")
    is_internal_task: bool | None = Field(default=None, alias="IsInternalTask")
    parameter_object: dict[str, JsonValue] | None = Field(default=None, alias="ParameterObject")
    last_started: _Date = Field(default=None, alias="LastStarted")
    created: _Date = Field(default=None, alias="Created")
    start_count: int | None = Field(default=None, alias="StartCount")
    database_serial_number: str | None = Field(default=None, alias="DatabaseSerialNumber")
    context: str | None = Field(default=None, alias="Context")
    result: str | None = Field(default=None, alias="Result")
    state_raw: str | int | None = Field(default=None, alias="State")
    description: str | None = Field(default=None, alias="Description")
    response: str | None = Field(default=None, alias="Response")
    request: str | None = Field(default=None, alias="Request")
    progress_description: str | None = Field(default=None, alias="ProgressDescription")
    progress_percent: int | None = Field(default=None, alias="ProgressPercent")
    file_name: str | None = Field(default=None, alias="FileName")
    cancellation_raw: str | int | None = Field(default=None, alias="CancellationBehaviour")
    table_right: TableRight | None = Field(default=None, alias="TableRight")
    field_properties: dict[str, FieldProperty | None] | None = Field(
        default=None, alias="FieldProperties"
    )

    _state: BatchTaskState = PrivateAttr(default=BatchTaskState.UNKNOWN)
    _cancellation: CancellationBehaviour | None = PrivateAttr(default=None)
    _anomalies: tuple[str, ...] = PrivateAttr(default=())

    #: Fields a list call asks for (``$select``): everything detection and the events need,
    #: so that a list row is a full observation and no GET is needed for it.  Left out,
    #: because nothing here reads them: DetailsTable, DetailsRecord, IsSystemTask,
    #: IsInternalTask, ParameterObject, DatabaseSerialNumber, TableRight, FieldProperties.
    POLL_FIELDS: ClassVar[tuple[str, ...]] = (
        "Id",
        "Name",
        "State",
        "ProgressPercent",
        "ProgressDescription",
        "LastStarted",
        "StartCount",
        "Created",
        "AssociateId",
        "Description",
        "Context",
        "Request",
        "Response",
        "Result",
        "FileName",
        "CancellationBehaviour",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _lenient(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> BatchTaskInfo:
        """Validate; on a bad field value, null that field and note why."""
        if not isinstance(data, dict):
            msg = f"a BatchTaskInfo must be a JSON object, got {type(data).__name__}"
            raise ValueError(msg)  # noqa: TRY004 - pydantic wants ValueError here
        try:
            task: BatchTaskInfo = handler(data)
        except ValidationError as exc:
            repaired = dict(data)
            notes: list[str] = []
            for error in exc.errors():
                key = error["loc"][0] if error["loc"] else None
                if not isinstance(key, str) or key not in repaired:
                    raise
                if key == "Id":
                    raise
                notes.append(f"{key}: {error['msg']} (raw {_short(data[key])})")
                repaired[key] = None
            task = handler(repaired)
            task._anomalies = tuple(notes)
        task._interpret()
        _share_fields_set(task)
        return task

    def _interpret(self) -> None:
        """Map the raw enum values and collect anomalies about them."""
        notes = list(self._anomalies)
        self._state, state_note = _interpret_state(self.state_raw)
        if state_note:
            notes.append(state_note)
        self._cancellation, cancel_note = _interpret_cancellation(self.cancellation_raw)
        if cancel_note:
            notes.append(cancel_note)
        if self.progress_percent is not None and not 0 <= self.progress_percent <= 100:
            notes.append(f"ProgressPercent {self.progress_percent} is outside 0..100")
        self._anomalies = tuple(notes)

    # These read __pydantic_private__ directly: pydantic's __getattr__ for private
    # attributes is a slow Python path, and the state is read on every observation.

    @property
    def state(self) -> BatchTaskState:
        """The interpreted state; ``Unknown`` for anything unrecognised."""
        state: BatchTaskState = self.__pydantic_private__["_state"]  # type: ignore[index]
        return state

    @property
    def cancellation_behaviour(self) -> CancellationBehaviour | None:
        """The interpreted cancellation behaviour, ``None`` if unknown."""
        value: CancellationBehaviour | None = self.__pydantic_private__["_cancellation"]  # type: ignore[index]
        return value

    @property
    def anomalies(self) -> tuple[str, ...]:
        """What did not fit the documented shape, one sentence each."""
        notes: tuple[str, ...] = self.__pydantic_private__["_anomalies"]  # type: ignore[index]
        return notes

    @property
    def outcome(self) -> str | None:
        """What the task said about how it ended (why it failed): see :func:`outcome`."""
        return outcome(self.result, self.response)

    @property
    def progress_ratio(self) -> float | None:
        """Progress as 0..1, clamped; the raw percent stays in ``progress_percent``."""
        if self.progress_percent is None:
            return None
        return min(max(self.progress_percent, 0), 100) / 100


def outcome(result: str | None, response: str | None) -> str | None:
    """A task's ``Result``, else its ``Response`` (some plug-ins say why they failed only
    there), without surrounding blanks; ``None`` when neither says anything."""
    return (result or "").strip() or (response or "").strip() or None


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _interpret_state(raw: str | int | None) -> tuple[BatchTaskState, str | None]:
    if isinstance(raw, str):
        folded = raw.strip().casefold()
        if folded in _STATE_BY_FOLDED_NAME:
            return _STATE_BY_FOLDED_NAME[folded], None
        if folded == _WILDCARD_STATE_NAME:
            return BatchTaskState.UNKNOWN, "State 'All' is a query wildcard, not a task state"
        if folded.lstrip("-").isdigit():
            return _interpret_state(int(folded))
        return BatchTaskState.UNKNOWN, f"State {_short(raw)} is not a known BatchTaskState"
    if isinstance(raw, int):
        if raw in _STATE_BY_NUMBER:
            return _STATE_BY_NUMBER[raw], f"State sent as number {raw}"
        if raw == _WILDCARD_STATE_NUMBER:
            return BatchTaskState.UNKNOWN, "State 99999 (All) is a query wildcard, not a task state"
        return BatchTaskState.UNKNOWN, f"State number {raw} is not a known BatchTaskState"
    return BatchTaskState.UNKNOWN, "State is missing"


#: The distinct sets of fields the API sent, each kept once (at most this many).
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
_MAX_FIELDS_SETS = 64


def _share_fields_set(task: BaseModel) -> None:
    """Point the task at a shared copy of the set of fields the API sent.

    pydantic gives every instance its own set (2.2 KB for the 24 names), yet
    thousands of tasks share a handful of shapes.  Safe because the model is
    frozen and pydantic copies the set before changing it (``model_copy``).
    """
    fields = task.__pydantic_fields_set__
    key = frozenset(fields)
    shared = _FIELDS_SETS.get(key)
    if shared is None:
        if len(_FIELDS_SETS) >= _MAX_FIELDS_SETS:
            return
        shared = _FIELDS_SETS[key] = set(key)
    object.__setattr__(task, "__pydantic_fields_set__", shared)


def _interpret_cancellation(
    raw: str | int | None,
) -> tuple[CancellationBehaviour | None, str | None]:
    if raw is None:
        return None, None
    if isinstance(raw, int):
        if raw in _CANCELLATION_BY_NUMBER:
            return _CANCELLATION_BY_NUMBER[raw], f"CancellationBehaviour sent as number {raw}"
    elif raw.strip().casefold() in _CANCELLATION_BY_FOLDED_NAME:
        return _CANCELLATION_BY_FOLDED_NAME[raw.strip().casefold()], None
    return None, f"CancellationBehaviour {_short(raw)} is not a known value"


def _load_json(body: bytes | str) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses lone surrogates, which .NET writes when it cuts a name in the
        # middle of an emoji; the standard library reads them (then made U+FFFD).
        pass
    try:
        return without_surrogates(json.loads(body))
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        text = body[:80] if isinstance(body, str) else body[:80].decode("utf-8", "replace")
        msg = f"response is not JSON ({exc.__class__.__name__}): {text!r}"
        raise ParseError(msg) from None


def _raise_if_error_object(data: dict[str, Any]) -> None:
    if data.get("Error") is True:
        error_type = data.get("ErrorType")
        error_message = data.get("ErrorMessage")
        msg = f"SuperOffice error {error_type}: {error_message}"
        raise ParseError(
            msg,
            error_type=str(error_type) if error_type is not None else None,
            error_message=str(error_message) if error_message is not None else None,
        )


def _validate(data: dict[str, Any], tz: tzinfo) -> BatchTaskInfo:
    try:
        return BatchTaskInfo.model_validate(data, context={"tz": tz})
    except ValidationError as exc:
        problem = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        msg = f"not a usable BatchTaskInfo: {problem}"
        raise ParseError(msg) from None


def parse_task(body: bytes | str, *, tz: tzinfo = UTC) -> BatchTaskInfo:
    """Parse one BatchTaskInfo response body.

    Raises :class:`ParseError` when the body is not a JSON object with an
    integer ``Id`` (including SuperOffice's ``{"Error": true, ...}`` objects).
    """
    data = _load_json(body)
    if not isinstance(data, dict):
        msg = f"response is a JSON {type(data).__name__}, not an object"
        raise ParseError(msg)
    _raise_if_error_object(data)
    return _validate(data, tz)


class TaskListing:
    """An ``Agents/Batch`` list answer, parsed lazily.

    A poll cycle lists thousands of tasks of which few changed: the raw items
    are kept by id, and an item is validated only when :meth:`task` asks for it
    (once; then cached).  The poller compares :meth:`poll_values` instead.
    """

    def __init__(
        self,
        items: dict[int, dict[str, Any]],
        rejected: list[ParseError],
        tz: tzinfo,
        parsed: dict[int, BatchTaskInfo] | None = None,
    ) -> None:
        self._items = items
        self._tz = tz
        self._parsed: dict[int, BatchTaskInfo] = parsed or {}
        #: Items that were not objects with an integer Id.
        self.rejected = rejected

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._items

    def __iter__(self) -> Iterator[int]:
        """The ids of the usable items, in the order the API gave them."""
        return iter(self._items)

    def poll_values(self, task_id: int) -> tuple[object, ...]:
        """The raw values of :attr:`BatchTaskInfo.POLL_FIELDS`: equal values, nothing moved."""
        return tuple(map(self._items[task_id].get, BatchTaskInfo.POLL_FIELDS))

    def task(self, task_id: int) -> BatchTaskInfo:
        """The validated task (:class:`ParseError` if its item is unusable)."""
        task = self._parsed.get(task_id)
        if task is None:
            task = self._parsed[task_id] = _validate(self._items[task_id], self._tz)
        return task

    def tasks(self) -> tuple[list[BatchTaskInfo], list[ParseError]]:
        """Every usable task, and the rejected items (those of :attr:`rejected` included)."""
        tasks: list[BatchTaskInfo] = []
        rejected = list(self.rejected)
        for task_id in self._items:
            try:
                tasks.append(self.task(task_id))
            except ParseError as exc:
                rejected.append(ParseError(f"task {task_id}: {exc}"))
        return tasks, rejected


def parse_listing(body: bytes | str, *, tz: tzinfo = UTC) -> TaskListing:
    """Read an ``Agents/Batch`` list answer without validating its items yet."""
    data = _load_json(body)
    if isinstance(data, dict):
        _raise_if_error_object(data)
    if not isinstance(data, list):
        msg = f"response is a JSON {type(data).__name__}, not an array"
        raise ParseError(msg)
    items: dict[int, dict[str, Any]] = {}
    rejected: list[ParseError] = []
    parsed: dict[int, BatchTaskInfo] = {}
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            rejected.append(ParseError(f"item {index} is a JSON {type(item).__name__}"))
        elif type(item.get("Id")) is int and -(2**31) <= item["Id"] < 2**31:
            items[item["Id"]] = item
        else:
            # An Id that is not a plain integer: validate now, as parse_task would.
            try:
                task = _validate(item, tz)
            except ParseError as exc:
                rejected.append(ParseError(f"item {index}: {exc}"))
            else:
                items[task.id] = item
                parsed[task.id] = task
    return TaskListing(items, rejected, tz, parsed)


def parse_task_list(
    body: bytes | str, *, tz: tzinfo = UTC
) -> tuple[list[BatchTaskInfo], list[ParseError]]:
    """Parse an ``Agents/Batch`` list answer: the tasks, and the items that were unusable.

    One bad item does not discard the others.
    """
    return parse_listing(body, tz=tz).tasks()
