"""Events read back from stored rows: half an emoji becomes U+FFFD, never a crash later."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest

from monitor.delivery.sqlite import SqliteStore
from monitor.superoffice.models import parse_task
from monitor.text import REPLACEMENT, replace_surrogates, without_surrogates
from monitor.tracking.events import Event, EventType, TaskSummary
from tests.conftest import make_task_event

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
#: Half of 😀 (U+1F600 is \ud83d\ude00 in UTF-16), as .NET leaves it when it cuts a name.
HALF = "\ud83d"
#: The task's text fields; every one of them can come from the API.
TEXT_FIELDS = (
    "name",
    "progress_description",
    "description",
    "context",
    "request",
    "response",
    "result",
    "file_name",
)


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _stored(event: Event) -> str:
    """The outbox text of an earlier version: stdlib json, which writes '\\ud83d' escapes."""
    text = json.dumps(event.to_dict())
    assert "\\ud83d" in text
    return text


def _half_emoji_event() -> Event:
    # Typed as make_task_event's **task: TaskSummary overrides, not its own keywords.
    texts: dict[str, Any] = {name: f"{name} {HALF}" for name in TEXT_FIELDS}
    event = make_task_event(
        EventType.TASK_STATE_CHANGED,
        message=f"Cut at {HALF}",
        state_raw=f"Failed{HALF}",
        **texts,
    )
    previous = MappingProxyType({"name": f"Old {HALF}", "state": "Started", "progress": 30})
    return Event(event.id, event.type, event.time, event.task, previous, event.eta, event.message)


class TestHelper:
    """The one policy, shared with the API parser."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (f"Report {HALF}", f"Report {REPLACEMENT}"),
            ("\udc00 low first", f"{REPLACEMENT} low first"),
            ("\ud83d\ude00", REPLACEMENT * 2),
            ("😀 a whole emoji", "😀 a whole emoji"),
            ("plain ascii", "plain ascii"),
            ("", ""),
        ],
    )
    def test_replace(self, text: str, expected: str) -> None:
        """Each surrogate code point is one U+FFFD; real characters stay."""
        assert expected == replace_surrogates(text)

    def test_clean_text_is_returned_as_is(self) -> None:
        """No copy is made of text that needs nothing (the common case)."""
        for text in ("ascii", "Øre — 😀"):
            assert text is replace_surrogates(text)

    def test_recursive(self) -> None:
        """Keys and values at any depth; other JSON values untouched."""
        value = {f"k{HALF}": [f"v{HALF}", 1, None, True, {"x": HALF}]}

        assert {
            f"k{REPLACEMENT}": [f"v{REPLACEMENT}", 1, None, True, {"x": REPLACEMENT}]
        } == without_surrogates(value)

    def test_the_api_parser_uses_the_same_policy(self) -> None:
        """A body orjson refuses (a lone surrogate escape) parses with U+FFFD in its place."""
        info = parse_task(b'{"Id": 7, "Name": "Report \\ud83d", "State": "Started"}')

        assert f"Report {REPLACEMENT}" == info.name


class TestFromDict:
    """Event.from_dict and TaskSummary.from_dict."""

    def test_every_text_field_is_cleaned(self) -> None:
        """Task text, state_raw, message and old values in previous: U+FFFD, no surrogate."""
        event = Event.from_dict(json.loads(_stored(_half_emoji_event())))

        assert event.task is not None
        for name in TEXT_FIELDS:
            assert f"{name} {REPLACEMENT}" == getattr(event.task, name), name
        assert f"Failed{REPLACEMENT}" == event.task.state_raw
        assert f"Cut at {REPLACEMENT}" == event.message
        assert {"name": f"Old {REPLACEMENT}", "state": "Started", "progress": 30} == dict(
            event.previous
        )
        assert not _has_surrogate(json.dumps(event.to_dict(), ensure_ascii=False))
        json.dumps(event.to_dict(), ensure_ascii=False).encode("utf-8")

    def test_the_rest_round_trips_unchanged(self) -> None:
        """Only the surrogates change: ids, numbers, dates and clean text survive as they were."""
        original = _half_emoji_event()

        event = Event.from_dict(json.loads(_stored(original)))

        assert (original.id, original.type, original.time, original.eta) == (
            event.id,
            event.type,
            event.time,
            event.eta,
        )
        assert original.task is not None
        assert event.task is not None
        assert (original.task.id, original.task.progress, original.task.last_started) == (
            event.task.id,
            event.task.progress,
            event.task.last_started,
        )

    def test_clean_event_is_equal_after_a_round_trip(self) -> None:
        """An event without surrogates reads back equal, emoji and all."""
        original = make_task_event(name="Export 😀 Øre", message="done ✅")

        assert original == Event.from_dict(json.loads(json.dumps(original.to_dict())))

    def test_numeric_state_raw_is_kept(self) -> None:
        """state_raw may be a number (the API sent one): it is not text, nothing to replace."""
        data = make_task_event(state_raw=3).to_dict()
        assert isinstance(data["task"], dict)

        assert 3 == TaskSummary.from_dict(data["task"]).state_raw

    def test_monitor_event_message(self) -> None:
        """An event without a task: its message is cleaned too."""
        data = {
            "id": "x",
            "type": "monitor.api_down",
            "time": T0.isoformat(),
            "task": None,
            "message": f"refused {HALF}",
        }

        assert f"refused {REPLACEMENT}" == Event.from_dict(data).message

    async def test_outbox_row_of_an_earlier_version(self, store: SqliteStore) -> None:
        """A row the store hands out is clean, whatever the JSON it was stored as."""
        await store.commit([], [("ops", _half_emoji_event())], T0.timestamp())

        row = (await store.claim("ops", T0.timestamp())).delivery

        assert row is not None
        assert row.event.task is not None
        assert f"name {REPLACEMENT}" == row.event.task.name
        assert not _has_surrogate(json.dumps(row.event.to_dict(), ensure_ascii=False))

    async def test_history_of_an_earlier_version(self, store: SqliteStore) -> None:
        """The events the HTTP API shows (recent_events) are clean as well."""
        event = _half_emoji_event()
        await store.commit([], [], T0.timestamp(), history=[event])

        [recent] = await store.recent_events(event.task_id)

        assert f"Cut at {REPLACEMENT}" == recent.message
