"""The simulator's tasks as the API shows them: ``BatchTaskInfo`` carriers, dates and list rules.

Kept apart from the server so the scenario can build tasks and the tests can read what a task
looks like on the wire without an HTTP round trip: the 24 properties in the spec's order, the
date notations SuperOffice uses, and which tasks and fields a list call selects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from monitor.superoffice.models import BatchTaskState, CancellationBehaviour

__all__ = [
    "TENANT_TZ",
    "DateForm",
    "SimTask",
    "apply_select",
    "date_forms",
    "owned_by",
    "selected_keys",
    "state_filter",
    "update_task",
]

#: The simulated tenant's base time zone: fixed and not UTC, so clients must honour offsets.
TENANT_TZ = timezone(timedelta(hours=1), "Tenant")

_DATABASE_SERIAL = "1358843"


@dataclass(frozen=True, slots=True)
class DateForm:
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
_DATE_STYLES: dict[str, tuple[DateForm, DateForm]] = {
    "offset": (DateForm(UTC, "Z"), DateForm(TENANT_TZ, "+hh:mm")),
    "utc": (DateForm(UTC, "Z"), DateForm(UTC, "Z")),
    # No SO-TimeZone header: tenant base time without an offset.
    "naive": (DateForm(TENANT_TZ, ""), DateForm(TENANT_TZ, "")),
    # SO-TimeZone with includeTZOffset: an offset without a colon.
    "compact": (DateForm(TENANT_TZ, "+hhmm"), DateForm(TENANT_TZ, "+hhmm")),
}


def date_forms(tz_style: str) -> tuple[DateForm, DateForm]:
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
        created_form, started_form = date_forms(tz_style)
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


def update_task(task: SimTask, changes: Mapping[str, object]) -> None:
    unknown = sorted(changes.keys() - _EDITABLE_FIELDS)
    if unknown:
        msg = f"SimTask has no editable field(s) {', '.join(unknown)}"
        raise TypeError(msg)
    for name, value in changes.items():
        setattr(task, name, value)


def owned_by(task: SimTask, associate_ids: Sequence[int]) -> bool:
    """SuperOffice's AssociateIds rule: [] all tasks, 0 system tasks, -1 all user tasks."""
    if not associate_ids:
        return True
    return any(
        wanted == task.associate_id or (wanted == -1 and task.associate_id != 0)
        for wanted in associate_ids
    )


def state_filter(raw: object) -> frozenset[BatchTaskState] | None:
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


def apply_select(data: dict[str, object], select: set[str] | None) -> dict[str, object]:
    """Null every field not in ``select``; keys stay ("other fields are then nulled out").

    ``select`` holds exact key names (see :func:`selected_keys`); ``None``: no ``$select``.
    """
    if select is None:
        return data
    return dict.fromkeys(data) | {key: data[key] for key in select if key in data}


def selected_keys(query: str) -> set[str]:
    """The ``$select`` names, matched case-insensitively to the carrier's own key names."""
    wanted = {name.strip().casefold() for name in query.split(",") if name.strip()}
    return {key for key in _CARRIER_KEYS if key.casefold() in wanted}
