"""The parser takes anything SuperOffice's OpenAPI description allows (issue 8, point 3).

Documents are generated from the spec's own ``BatchTaskInfo`` schema (``tests/spec/``, through
``tests/openapi.py``), with ``null`` allowed wherever a property may be absent and undeclared
properties mixed in.  Each must parse without an exception, keep every value it carries, and
carry its state and progress into the tracker's events and the Prometheus metrics.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from monitor.delivery.dispatcher import Dispatcher
from monitor.superoffice.models import (
    BatchTaskInfo,
    BatchTaskState,
    CancellationBehaviour,
    FieldProperty,
    ParseError,
    TableRight,
    parse_task,
)
from monitor.tracking.events import EventType
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from tests import openapi
from tests.exposition import Scrape, scrape

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PROPERTIES = openapi.batch_task_info_properties()
SCHEMA = openapi.to_json_schema(
    openapi.load(openapi.REST_FILE), openapi.definition(openapi.BATCH_TASK_INFO), nulls=True
)
#: The date-time properties, as the spec marks them.
DATES = frozenset(
    name for name, prop in SCHEMA["properties"].items() if prop.get("format") == "date-time"
)
#: Spec property name -> model field name.
FIELD_OF = {info.alias: name for name, info in BatchTaskInfo.model_fields.items()}
#: The model accepts its Python field names as keys too (``populate_by_name``), so an undeclared
#: property spelled like one is not "unknown" to it (see TestKnownGaps); and a top-level
#: ``"Error"`` marks SuperOffice's error object, which parse_task refuses on purpose.
_NOT_UNKNOWN = frozenset(BatchTaskInfo.model_fields) | {"Error"}
#: Undeclared property names: the spec's names in other cases (JSON is case-sensitive, so
#: ``"state"`` is not ``"State"``), and any text.
EXTRA_NAMES = (
    st.sampled_from(PROPERTIES).map(str.lower)
    | st.sampled_from(PROPERTIES).map(str.upper)
    | st.text(min_size=1, max_size=12)
).filter(lambda name: name not in _NOT_UNKNOWN)
DOCUMENTS = openapi.strategy(SCHEMA, extra_names=EXTRA_NAMES)
STATE_NAMES = [*(state.value for state in BatchTaskState), "Gone"]

_DATE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:Z|([+-])(\d\d):(\d\d))", re.ASCII
)


def instant(text: str | None) -> datetime | None:
    """The moment a spec ``date-time`` names, read independently of the parser.

    Sub-microsecond digits are cut (Python keeps microseconds).  .NET writes ``DateTime.MinValue``
    (year 1) for "never", in whatever zone; the model reads all of year 1 as "never".
    """
    if text is None:
        return None
    found = _DATE.fullmatch(text)
    assert found is not None, text
    year, month, day, hour, minute, second = (int(found[i]) for i in range(1, 7))
    if year == 1:
        return None
    micro = int((found[7] or "").ljust(6, "0")[:6])
    offset = timedelta()
    if found[8]:
        offset = timedelta(hours=int(found[9]), minutes=int(found[10]))
        offset = -offset if found[8] == "-" else offset
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))


def expected_state(raw: str | None) -> BatchTaskState:
    """``All`` is a query wildcard and ``null`` says nothing: both read as Unknown."""
    return BatchTaskState.UNKNOWN if raw in (None, "All") else BatchTaskState(raw)


def plain(value: object) -> object:
    """``value`` with null-valued object members dropped: absent and ``null`` mean the same."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def parse(document: dict[str, Any]) -> BatchTaskInfo:
    return parse_task(json.dumps(document))


class NoSinks:
    """A dispatcher without sinks: all the collector reads of one is ``sink_names``."""

    sink_names: ClassVar[list[str]] = []


def registry_for(tracker: Tracker, now: datetime) -> Scrape:
    """What /metrics serves (task series and collector), delivery left out."""
    return scrape(tracker, now, cast(Dispatcher, NoSinks()))


#: Derandomized: CI runs the same examples every time, so a red run is always reproducible and
#: the known gaps below (pinned by their own tests) cannot turn a run red by chance.
EXAMPLES = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestParsing:
    """Every document the spec allows parses and keeps its values."""

    @pytest.mark.parametrize(
        ("definition", "model"),
        [
            (openapi.BATCH_TASK_INFO, BatchTaskInfo),
            ("SuperOffice.CRM.Security.TableRight", TableRight),
            ("SuperOffice.CRM.Security.FieldRight", TableRight),
            ("SuperOffice.CRM.Security.FieldProperty", FieldProperty),
        ],
        ids=["BatchTaskInfo", "TableRight", "FieldRight", "FieldProperty"],
    )
    def test_each_property_has_a_field(self, definition: str, model: type[BaseModel]) -> None:
        """Each property of a spec definition is a model field by the same (alias) name."""
        properties = openapi.definition(definition)["properties"]

        assert list(properties) == [info.alias for info in model.model_fields.values()]

    @EXAMPLES
    @given(document=DOCUMENTS)
    def test_never_raises_and_keeps_every_field(self, document: dict[str, Any]) -> None:
        """A task with an Id parses with every property and extra kept; one without is refused."""
        if not isinstance(document.get("Id"), int):
            with pytest.raises(ParseError, match="Id"):
                parse(document)
            return

        task = parse(document)

        dumped = task.model_dump(by_alias=True)
        for name in PROPERTIES:
            field = FIELD_OF[name]
            if name in DATES:
                assert instant(document.get(name)) == getattr(task, field), name
            else:
                assert plain(document.get(name)) == plain(dumped[name]), name
        extras = {k: v for k, v in document.items() if k not in PROPERTIES}
        assert extras == task.model_extra
        assert [] == [note for note in task.anomalies if "(raw " in note]

    @EXAMPLES
    @given(document=DOCUMENTS)
    def test_enums_are_interpreted(self, document: dict[str, Any]) -> None:
        """State and CancellationBehaviour map to their members; All is flagged, not a state."""
        document["Id"] = 212
        raw_state, raw_cancel = document.get("State"), document.get("CancellationBehaviour")

        task = parse(document)

        assert expected_state(raw_state) == task.state
        assert (None if raw_cancel is None else CancellationBehaviour(raw_cancel)) == (
            task.cancellation_behaviour
        )
        if raw_state == "All":
            assert any("wildcard" in note for note in task.anomalies)


class TestRoundTrip:
    """State and progress reach events and metrics unchanged."""

    @EXAMPLES
    @given(document=DOCUMENTS, task_id=st.integers(-(2**31), 2**31 - 1))
    def test_first_observation(self, document: dict[str, Any], task_id: int) -> None:
        """The discovery event and every per-task metric carry the document's state and progress."""
        document["Id"] = task_id
        task = parse(document)
        state = expected_state(document.get("State"))
        percent = document.get("ProgressPercent")
        tracker = Tracker(Rules())

        event, *outcome = tracker.observe(task, NOW)

        assert EventType.TASK_DISCOVERED == event.type
        assert all(e.first_seen for e in outcome)
        wire = json.loads(json.dumps(event.to_dict()))["task"]
        assert (task_id, state.value, document.get("State"), percent) == (
            wire["id"],
            wire["state"],
            wire["state_raw"],
            wire["progress"],
        )
        registry = registry_for(tracker, NOW)
        labels = {"task_id": str(task_id)}
        assert {name: float(name == state.value) for name in STATE_NAMES} == {
            name: registry.value("batchmon_task_state", {**labels, "state": name})
            for name in STATE_NAMES
        }
        ratio = None if percent is None else min(max(percent, 0), 100) / 100
        assert ratio == registry.value("batchmon_task_progress_ratio", labels)
        started = instant(document.get("LastStarted"))
        assert (None if started is None else started.timestamp()) == registry.value(
            "batchmon_task_last_started_timestamp_seconds", labels
        )
        assert 1.0 == registry.value("batchmon_tasks", {"state": state.value})

    @EXAMPLES
    @given(first=DOCUMENTS, second=DOCUMENTS)
    def test_second_observation(self, first: dict[str, Any], second: dict[str, Any]) -> None:
        """A change of state is never silent: it emits an event and counts one transition."""
        first["Id"] = second["Id"] = 212
        old, new = expected_state(first.get("State")), expected_state(second.get("State"))
        tracker = Tracker(Rules())
        tracker.observe(parse(first), NOW)

        events = tracker.observe(parse(second), NOW + timedelta(seconds=10))

        summaries = {(e.task.state, e.task.progress) for e in events if e.task is not None}
        assert set() == summaries - {(new, second.get("ProgressPercent"))}
        registry = registry_for(tracker, NOW + timedelta(seconds=10))
        transitions = registry.value(
            "batchmon_task_transitions_total", {"from_state": old.value, "to_state": new.value}
        )
        if old == new:
            assert {} == dict(tracker.transitions)
            assert transitions is None
        else:
            assert events
            assert {(old.value, new.value): 1} == dict(tracker.transitions)
            assert 1.0 == transitions
        assert 1.0 == registry.value("batchmon_task_state", {"task_id": "212", "state": new.value})


class TestOnceKnownGaps:
    """Documents the spec allows that the parser once mishandled (found by these tests)."""

    @pytest.mark.parametrize(
        "document",
        [{"Id": 212, "state_raw": "Failed"}, {"Id": 212, "name": "not the Name"}],
        ids=["state_raw", "name"],
    )
    def test_python_field_names_are_unknown_properties(self, document: dict[str, Any]) -> None:
        """An undeclared property named like a model field is kept as an extra, not used."""
        task = parse(document)

        assert (BatchTaskState.UNKNOWN, None) == (task.state, task.name)
        assert {k: v for k, v in document.items() if k != "Id"} == task.model_extra

    @pytest.mark.parametrize(
        "created",
        ["2026-11-28t12:00:00z", "2016-12-31T23:59:60Z"],
        ids=["lower-case", "leap-second"],
    )
    def test_every_rfc3339_form_is_kept(self, created: str) -> None:
        """Created is kept for every RFC 3339 date-time."""
        assert openapi.is_rfc3339_date_time(created)

        task = parse({"Id": 212, "Created": created})

        assert task.created is not None

    def test_progress_of_an_ancient_run_reaches_the_tracker(self) -> None:
        """A running task whose LastStarted is long past is observed like any other."""
        document = {
            "Id": 212,
            "State": "Started",
            "ProgressPercent": 1,
            "LastStarted": "1900-01-01T00:00:00Z",
        }

        (event,) = Tracker(Rules()).observe(parse(document), NOW)

        assert event.task is not None
        assert (BatchTaskState.STARTED, 1) == (event.task.state, event.task.progress)


class TestSpecCopy:
    """tests/spec holds the vendor's files unmodified."""

    @pytest.mark.parametrize("name", openapi.SPEC_FILES)
    def test_matches_its_provenance_note(self, name: str) -> None:
        """Each file's SHA-256 is the one its README records."""
        readme = (openapi.SPEC_DIR / "README.md").read_text(encoding="utf-8")
        digest = hashlib.sha256((openapi.SPEC_DIR / name).read_bytes()).hexdigest()

        assert f"`{name}` | " in readme
        assert digest in readme.split(f"`{name}` | ", 1)[1].split("\n", 1)[0]

    @pytest.mark.parametrize("name", openapi.SPEC_FILES)
    def test_matches_the_shared_reference(self, name: str) -> None:
        """Each file equals shared/reference/openapi's, when that folder is beside the repo."""
        shared = openapi.SHARED_SPEC_DIR / name
        if not shared.exists():
            pytest.skip(f"{shared} is not available")

        assert shared.read_bytes() == (openapi.SPEC_DIR / name).read_bytes()
