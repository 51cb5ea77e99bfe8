"""Every sink with half an emoji in the event's text: a valid request, never a crash.

Events read from the outbox are cleaned (``Event.from_dict``); these tests hand the
sinks events built in memory, so the sinks' own encoding must hold too.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter
from standardwebhooks.webhooks import Webhook

from monitor.config import SinkConfig
from monitor.logs import configure_logging
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink
from monitor.sinks.http import json_body
from monitor.sinks.log import LogSink
from monitor.sinks.render import ELLIPSIS, fit, measure
from monitor.superoffice.models import BatchTaskState
from monitor.text import REPLACEMENT
from monitor.tracking.events import Event, EventType
from monitor.types import Sink
from tests.conftest import Reply, ScriptedServer, make_task_event
from tests.test_sinks_chat import FORMATS, _Loopback
from tests.test_sinks_webhook import SECRET

HALF = "\ud83d"
STATUS = "https://batchmon.example.com/"


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_Loopback())) as s:
        yield s


def _event(kind: EventType = EventType.TASK_FAILED) -> Event:
    """Half an emoji in every text a message can show."""
    return make_task_event(
        kind,
        name=f"Report {HALF}",
        description=f"Nightly {HALF} export",
        result=f"Cut {HALF}",
        progress_description=f"Step {HALF}",
        state=BatchTaskState.STARTED if kind is EventType.TASK_PROGRESS else BatchTaskState.FAILED,
        message=f"Why {HALF}",
    )


def _sink(kind: str, url: str, session: aiohttp.ClientSession, **config: Any) -> Sink:
    entry = TypeAdapter(SinkConfig).validate_python(
        {"name": "ops", "type": kind, "url": url, **config}
    )
    return build_sink(entry, SinkContext(session, status_url=STATUS))


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _assert_clean(body: bytes) -> str:
    """The body is strict UTF-8 JSON without a surrogate; its text, for more checks."""
    text = body.decode("utf-8")
    for string in _strings(json.loads(text)):
        assert not any("\ud800" <= c <= "\udfff" for c in string), string
    return text


class TestMeasureAndBody:
    """The two encodings every message goes through."""

    def test_measure_counts_a_lone_surrogate_as_one_unit(self) -> None:
        """As JavaScript counts it, and as the U+FFFD sent in its place."""
        assert 8 == measure(f"Report {HALF}")
        assert measure(f"Report {REPLACEMENT}") == measure(f"Report {HALF}")
        assert 2 == measure("😀")

    @pytest.mark.parametrize("limit", [0, 1, 2, 5, 9])
    def test_fit_cuts_text_of_half_emoji(self, limit: int) -> None:
        """Cutting text full of lone surrogates ends within the limit."""
        cut = fit(HALF * 10, limit)

        assert measure(cut) <= limit
        assert cut.endswith(ELLIPSIS) or cut == ""

    def test_json_body_sends_replacement_characters(self) -> None:
        """A lone surrogate, in a key or a value, goes out as U+FFFD in valid UTF-8."""
        body = json_body({f"k{HALF}": [f"v{HALF}", "😀"]})

        assert f'{{"k{REPLACEMENT}":["v{REPLACEMENT}","😀"]}}'.encode() == body

    def test_json_body_of_clean_text_is_unchanged(self) -> None:
        """The common case: compact, UTF-8, nothing escaped that need not be."""
        assert '{"a":"Øre 😀","b":[1,null]}'.encode() == json_body({"a": "Øre 😀", "b": [1, None]})


class TestEverySink:
    """Each sink type posts a valid request to a real receiver."""

    @pytest.mark.parametrize(
        ("kind", "host", "escaping"),
        [(kind, host, escaping) for kind, host, escaping, _, _ in FORMATS],
        ids=[escaping for _, _, escaping, _, _ in FORMATS],
    )
    @pytest.mark.parametrize("kind_of_event", [EventType.TASK_FAILED, EventType.TASK_PROGRESS])
    @pytest.mark.parametrize("template", [None, "{{ task.name }}: {{ event.message }}"])
    async def test_chat_formats(
        self,
        scripted: ScriptedServer,
        session: aiohttp.ClientSession,
        kind: str,
        host: str,
        escaping: str,
        kind_of_event: EventType,
        template: str | None,
    ) -> None:
        """Title, text and template output: U+FFFD where the half emoji was."""
        url = f"http://{host}:{scripted.server.port}/hook"
        config = {"template": template} if template is not None else {}
        scripted.replies.append(Reply(200, "ok"))

        await _sink(kind, url, session, **config).send(_event(kind_of_event))

        [seen] = scripted.seen
        text = _assert_clean(seen.body)
        assert f"Report {REPLACEMENT}" in text, escaping

    async def test_webhook_signs_what_it_sends(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """The CloudEvent carries U+FFFD, and the signature verifies over the bytes received."""
        sink = _sink("webhook", scripted.url, session, secret=SECRET, template="{{ title }}")
        scripted.replies.append(Reply(204, ""))

        await sink.send(_event())

        [seen] = scripted.seen
        _assert_clean(seen.body)
        payload = Webhook(SECRET).verify(seen.body, seen.headers)
        assert f"Report {REPLACEMENT}" == payload["data"]["task"]["name"]
        assert f"Why {REPLACEMENT}" == payload["data"]["message"]
        assert f"❌ Report {REPLACEMENT} failed" == payload["data"]["text"]

    async def test_alertmanager(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Labels and annotations arrive as valid UTF-8."""
        scripted.replies.append(Reply(200, ""))

        await _sink("alertmanager", scripted.url, session).send(_event())

        [seen] = scripted.seen
        alerts = json.loads(_assert_clean(seen.body))
        assert any(a["labels"].get("task_name", "").startswith("Report ") for a in alerts)

    @pytest.mark.parametrize("fmt", ["console", "json"])
    async def test_log(self, fmt: str) -> None:
        """The log sink writes a line to a strict UTF-8 stream, in either format."""
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
        configure_logging(fmt, "info", stream)

        await LogSink().send(_event())

        line = raw.getvalue().decode("utf-8")
        assert "task.failed" in line
        assert "Report" in line
        assert not any("\ud800" <= c <= "\udfff" for c in line)
