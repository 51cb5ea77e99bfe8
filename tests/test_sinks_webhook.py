"""The ``webhook`` sink: CloudEvents 1.0 over a real loopback receiver, signed per Standard Webhooks."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from monitor.config.sinks import WebhookSinkConfig
from monitor.sinks.base import DeliveryError
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink
from monitor.sinks.webhook import WebhookSink
from monitor.tracking.events import Event, EventType
from monitor.types import Sink
from tests.conftest import Reply, ScriptedServer, make_task_event

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _sink(
    server: ScriptedServer,
    session: aiohttp.ClientSession,
    *,
    status_url: str | None = None,
    **config: Any,
) -> Sink:
    entry = WebhookSinkConfig.model_validate(
        {"name": "hooks", "type": "webhook", "url": server.url + "/in", **config}
    )
    return build_sink(entry, SinkContext(session, status_url=status_url))


async def _deliver(
    server: ScriptedServer, sink: Sink, event: Event
) -> tuple[bytes, dict[str, str]]:
    server.replies.append(Reply(204, ""))
    await sink.send(event)
    seen = server.seen[-1]
    return seen.body, seen.headers


class TestCloudEvent:
    """The body: a structured-mode CloudEvent 1.0."""

    async def test_envelope(self, scripted: ScriptedServer, session: aiohttp.ClientSession) -> None:
        """Required and optional attributes; ``data`` is the event's wire form."""
        event = make_task_event()
        body, headers = await _deliver(scripted, _sink(scripted, session), event)
        cloudevent = json.loads(body)

        assert "application/cloudevents+json" == headers["Content-Type"]
        assert {
            "specversion": "1.0",
            "id": event.id,
            "type": "com.superoffice.batchmon.task.failed",
            "subject": "212",
            "time": "2026-11-28T12:00:00Z",
            "datacontenttype": "application/json",
            "data": event.to_dict(),
        } == {key: value for key, value in cloudevent.items() if key != "source"}
        assert cloudevent["source"].startswith("urn:batchmon:")

    async def test_status_url_is_the_source(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """With a public status page, the source is its URL."""
        sink = _sink(scripted, session, status_url="https://batchmon.example.com/")
        body, _ = await _deliver(scripted, sink, make_task_event())

        assert "https://batchmon.example.com/" == json.loads(body)["source"]

    async def test_monitor_event_has_no_subject(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Events without a task carry no ``subject``."""
        event = Event("e1", EventType.MONITOR_API_DOWN, make_task_event().time, message="down")
        body, _ = await _deliver(scripted, _sink(scripted, session), event)
        cloudevent = json.loads(body)

        assert "subject" not in cloudevent
        assert ("com.superoffice.batchmon.monitor.api_down", None) == (
            cloudevent["type"],
            cloudevent["data"]["task"],
        )

    async def test_template_adds_text(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A template's output travels as ``data.text``, unescaped (it is JSON)."""
        sink = _sink(scripted, session, template="{{ title }} <{{ task.id }}>")
        body, _ = await _deliver(scripted, sink, make_task_event())

        assert "❌ Export failed <212>" == json.loads(body)["data"]["text"]


class TestSigning:
    """Standard Webhooks headers and signature."""

    async def test_signature_verifies_with_standardwebhooks(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """The reference library accepts the request as received."""
        event = make_task_event()
        body, headers = await _deliver(scripted, _sink(scripted, session, secret=SECRET), event)

        payload = Webhook(SECRET).verify(body, headers)

        assert event.id == payload["id"]
        assert event.id == headers["webhook-id"]
        assert abs(time.time() - int(headers["webhook-timestamp"])) < 60
        assert headers["webhook-signature"].startswith("v1,")

    async def test_wrong_secret_fails(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A receiver with another secret rejects the request."""
        body, headers = await _deliver(
            scripted, _sink(scripted, session, secret=SECRET), make_task_event()
        )

        with pytest.raises(WebhookVerificationError):
            Webhook(OTHER_SECRET).verify(body, headers)

    async def test_retries_keep_the_id(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A retried event has the same ``webhook-id``, so receivers deduplicate it."""
        sink = _sink(scripted, session, secret=SECRET)
        event = make_task_event()
        scripted.replies.append(Reply(503, "busy"))
        with pytest.raises(DeliveryError):
            await sink.send(event)
        body, headers = await _deliver(scripted, sink, event)

        assert [event.id, event.id] == [seen.headers["webhook-id"] for seen in scripted.seen]
        assert event.id == Webhook(SECRET).verify(body, headers)["id"]

    async def test_each_attempt_is_signed_at_its_time(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """The timestamp is the attempt's, from the sink's clock, and is in the signature."""
        clock = iter([1_800_000_000.0, 1_800_000_300.0])
        sink = WebhookSink("hooks", scripted.url, session, secret=SECRET, clock=lambda: next(clock))
        event = make_task_event()
        await _deliver(scripted, sink, event)
        await _deliver(scripted, sink, event)

        assert ["1800000000", "1800000300"] == [
            seen.headers["webhook-timestamp"] for seen in scripted.seen
        ]
        assert (
            scripted.seen[0].headers["webhook-signature"]
            != (scripted.seen[1].headers["webhook-signature"])
        )

    async def test_unsigned_without_a_secret(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Without a secret there is no signature; the id and timestamp still go along."""
        event = make_task_event()
        _, headers = await _deliver(scripted, _sink(scripted, session), event)

        assert "webhook-signature" not in headers
        assert event.id == headers["webhook-id"]

    def test_credentials_stay_out_of_repr(self, session: aiohttp.ClientSession) -> None:
        """Neither the URL nor the key shows when a sink is logged."""
        sink = WebhookSink("hooks", "http://127.0.0.1:1/in/t0ken", session, secret=SECRET)

        assert sink.signed
        assert "t0ken" not in repr(sink)
        assert "t0ken" not in str(sink)
