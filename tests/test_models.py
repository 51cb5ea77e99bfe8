"""Parsing BatchTaskInfo: every documented form, and everything that does not fit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from monitor.superoffice.models import (
    BatchTaskState,
    CancellationBehaviour,
    ParseError,
    parse_datetime,
    parse_task,
    parse_task_list,
)

FIXTURES = Path(__file__).parent / "fixtures"
OSLO = ZoneInfo("Europe/Oslo")


class TestSeedSample:
    """The sample response of SuperOffice's own documentation."""

    def test_parses_with_all_24_fields(self) -> None:
        """Every field of the seed's table lands in the model."""
        task = parse_task((FIXTURES / "seed_batchtask_212.json").read_bytes())

        assert 212 == task.id
        assert "Email Campaign Export" == task.name
        assert 113 == task.associate_id
        assert (633, 137) == (task.details_table, task.details_record)
        assert (False, True) == (task.is_system_task, task.is_internal_task)
        assert {"ParameterObject1": "selectionId=1234", "ParameterObject2": "format=csv"} == (
            task.parameter_object
        )
        assert datetime(2009, 9, 21, 12, 34, 2, 713222, tzinfo=UTC) == task.last_started
        assert datetime(2019, 10, 2, 12, 34, 2, 713222, tzinfo=UTC) == task.created
        assert 383 == task.start_count
        assert "1358843" == task.database_serial_number
        assert ("Marketing", "Completed successfully") == (task.context, task.result)
        assert "Export email campaign recipients to CSV file" == task.description
        assert "Export completed with 1500 records" == task.response
        assert "ExportSelection" == task.request
        assert "Processing records..." == task.progress_description
        assert 100 == task.progress_percent
        assert "campaign_export_2024.csv" == task.file_name
        assert CancellationBehaviour.CAN_CANCEL == task.cancellation_behaviour
        assert task.table_right is None
        assert task.field_properties is not None
        field = task.field_properties["fieldName"]
        assert field is not None
        assert (None, "System.String", 217) == (
            field.field_right,
            field.field_type,
            field.field_length,
        )

    def test_all_state_is_flagged(self) -> None:
        """The sample's ``"State": "All"`` is a wildcard: Unknown, raw kept, flagged."""
        task = parse_task((FIXTURES / "seed_batchtask_212.json").read_bytes())

        assert BatchTaskState.UNKNOWN == task.state
        assert "All" == task.state_raw
        assert ["State 'All' is a query wildcard, not a task state"] == list(task.anomalies)


class TestDates:
    """Every date form the reference lists."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "2019-08-19T14:28:27.3520534+02:00",
                datetime(2019, 8, 19, 12, 28, 27, 352053, tzinfo=UTC),
            ),
            ("2023-01-05T10:00:00.9342965Z", datetime(2023, 1, 5, 10, 0, 0, 934296, tzinfo=UTC)),
            ("2018-12-24T07:34:45-0500", datetime(2018, 12, 24, 12, 34, 45, tzinfo=UTC)),
            ("2019-09-23T12:34:45Z", datetime(2019, 9, 23, 12, 34, 45, tzinfo=UTC)),
            ("2018-12-24T12:34:45", datetime(2018, 12, 24, 11, 34, 45, tzinfo=UTC)),
            ("2016-01-04T13:27:28.5", datetime(2016, 1, 4, 12, 27, 28, 500000, tzinfo=UTC)),
            ("0001-01-01T00:00:00", None),
        ],
        ids=["7 digits +02:00", "7 digits Z", "-0500", "Z", "no offset", "1 digit", "never"],
    )
    def test_forms(self, text: str, expected: datetime | None) -> None:
        """Each form gives the same instant; no offset means the tenant's zone (Oslo here)."""
        assert expected == parse_datetime(text, OSLO)

    def test_naive_dates_use_the_configured_zone(self) -> None:
        """A date without offset in the body is read in the zone passed to the parser."""
        body = json.dumps({"Id": 1, "State": "New", "Created": "2026-07-01T12:00:00"})

        assert timezone(timedelta(hours=2)).utcoffset(None) == (
            parse_task(body, tz=OSLO).created.utcoffset()  # type: ignore[union-attr]
        )


class TestLenience:
    """Values that do not fit are kept raw and flagged, never an exception."""

    @pytest.mark.parametrize(
        ("fields", "state", "anomaly"),
        [
            ({"State": "Started"}, BatchTaskState.STARTED, None),
            ({"State": "started"}, BatchTaskState.STARTED, None),
            ({"State": "Aquired"}, BatchTaskState.AQUIRED, None),
            ({"State": 5}, BatchTaskState.FAILED, "State sent as number 5"),
            ({"State": "6"}, BatchTaskState.SUCCEEDED_MANUAL_CLEANUP, "State sent as number 6"),
            ({"State": 99999}, BatchTaskState.UNKNOWN, "State 99999 (All) is a query wildcard"),
            ({"State": "Cancelled"}, BatchTaskState.UNKNOWN, "State 'Cancelled' is not a known"),
            ({"State": 42}, BatchTaskState.UNKNOWN, "State number 42 is not a known"),
            ({"State": None}, BatchTaskState.UNKNOWN, "State is missing"),
            ({"State": [1]}, BatchTaskState.UNKNOWN, "State: "),
            (
                {"State": "New", "ProgressPercent": 222},
                BatchTaskState.NEW,
                "ProgressPercent 222 is outside",
            ),
            (
                {"State": "New", "ProgressPercent": -1},
                BatchTaskState.NEW,
                "ProgressPercent -1 is outside",
            ),
            ({"State": "New", "ProgressPercent": "x"}, BatchTaskState.NEW, "ProgressPercent: "),
            ({"State": "New", "Name": None, "Result": None}, BatchTaskState.NEW, None),
            ({"State": "New", "Name": 7}, BatchTaskState.NEW, "Name: "),
            ({"State": "New", "Created": "yesterday"}, BatchTaskState.NEW, "Created: "),
            (
                {"State": "New", "CancellationBehaviour": "Never"},
                BatchTaskState.NEW,
                "CancellationBehaviour 'Never'",
            ),
            (
                {"State": "New", "TableRight": {}, "FieldProperties": {"x": None}},
                BatchTaskState.NEW,
                None,
            ),
            ({"State": "New", "FieldProperties": "oops"}, BatchTaskState.NEW, "FieldProperties: "),
        ],
    )
    def test_fields(
        self, fields: dict[str, object], state: BatchTaskState, anomaly: str | None
    ) -> None:
        """Each odd value parses, maps to a sane state and is flagged when it is odd."""
        task = parse_task(json.dumps({"Id": 9, **fields}))

        assert state == task.state
        if anomaly is None:
            assert () == task.anomalies
        else:
            assert any(a.startswith(anomaly) for a in task.anomalies), task.anomalies

    def test_raw_values_are_kept(self) -> None:
        """The raw state and percent stay available; display values are clamped."""
        task = parse_task('{"Id": 9, "State": 3, "ProgressPercent": 150}')

        assert 3 == task.state_raw
        assert 150 == task.progress_percent
        assert 1.0 == task.progress_ratio

    def test_unknown_fields_are_kept(self) -> None:
        """Fields newer than our model are preserved, not dropped."""
        task = parse_task('{"Id": 9, "State": "New", "Heartbeat": "2026-01-01"}')

        assert {"Heartbeat": "2026-01-01"} == task.model_extra


class TestParseErrors:
    """Bodies that cannot be a task raise one clear ParseError."""

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"<html>Service Unavailable</html>", "response is not JSON"),
            (b"", "response is not JSON"),
            (b"\xff\xfe\x00", "response is not JSON"),
            (b"[1, 2]", "response is a JSON list, not an object"),
            (b'"text"', "response is a JSON str, not an object"),
            (b"null", "response is a JSON NoneType, not an object"),
            (b"{}", "not a usable BatchTaskInfo: Id: Field required"),
            (b'{"Id": "twelve"}', "not a usable BatchTaskInfo: Id:"),
            (b"[" * 100_000, "response is not JSON"),
        ],
        ids=["html", "empty", "bad utf-8", "array", "string", "null", "no id", "bad id", "deep"],
    )
    def test_messages(self, body: bytes, message: str) -> None:
        """The message says what was wrong with the body."""
        with pytest.raises(ParseError, match="^" + message.replace("(", r"\(")):
            parse_task(body)

    def test_superoffice_error_object(self) -> None:
        """An ``{"Error": true}`` body keeps SuperOffice's ErrorType and ErrorMessage."""
        body = b'{"Error": true, "ErrorType": "SoNotFoundException", "ErrorMessage": "no 5"}'

        with pytest.raises(ParseError) as info:
            parse_task(body)

        assert ("SoNotFoundException", "no 5") == (info.value.error_type, info.value.error_message)


class TestList:
    """Agent list answers."""

    def test_bad_items_do_not_spoil_the_rest(self) -> None:
        """Unusable items are reported; the others are parsed."""
        tasks, rejected = parse_task_list(b'[{"Id": 1, "State": "New"}, 5, {"Name": "x"}]')

        assert [1] == [t.id for t in tasks]
        assert [
            "item 1 is a JSON int",
            "item 2: not a usable BatchTaskInfo: Id: Field required",
        ] == [str(e) for e in rejected]

    def test_not_an_array(self) -> None:
        """An object where an array belongs is a ParseError."""
        with pytest.raises(ParseError, match="not an array"):
            parse_task_list(b'{"Id": 1}')
