"""Sinks built for a tenant other than ``default`` name it; those of ``default`` read as before.

Each chat format is checked with the same validators as its single-tenant tests
(slack_sdk, Discord's limits, the Adaptive Card elements Teams shows); the webhook
with the Standard Webhooks reference library; links carry ``?tenant=``.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter
from standardwebhooks.webhooks import Webhook

from monitor.config import SinkConfig
from monitor.delivery.reminders import due_reminders
from monitor.delivery.subscriptions import subscriptions_from
from monitor.logs import configure_logging
from monitor.sinks.context import SinkContext
from monitor.sinks.digest import digest_of
from monitor.sinks.factory import build_sink
from monitor.sinks.googlechat import thread_key
from monitor.sinks.http import ChatSink
from monitor.sinks.log import LogSink
from monitor.sinks.render import Renderer, check_template
from monitor.sinks.webhook import tenant_source
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import Event, EventType
from monitor.types import Sink
from tests.chat_formats import discord_problems, slack_problems, teams_problems
from tests.conftest import Reply, ScriptedServer, make_task_event

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
STATUS = "https://batchmon.example.com/"
ACME_PAGE = STATUS + "tasks/212?tenant=acme"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LONG = "Nightly export. " * 640  # about 10 kB


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _sink(
    kind: str,
    url: str,
    session: aiohttp.ClientSession,
    *,
    tenant: str = "acme",
    status_url: str | None = STATUS,
    **config: Any,
) -> Sink:
    """A sink built the way the daemon builds a tenant's sinks."""
    entry = TypeAdapter(SinkConfig).validate_python(
        {"name": "ops", "type": kind, "url": url, **config}
    )
    return build_sink(entry, SinkContext(session, status_url=status_url, tenant=tenant))


async def _posted(server: ScriptedServer, sink: Sink, event: Event) -> Any:
    server.replies.append(Reply(200, "ok"))
    await sink.send(event)
    return json.loads(server.seen[-1].body)


def _long_event() -> Event:
    return make_task_event(
        name="N" * 1000,
        description=LONG,
        result="R" * 3000,
        progress_description="P" * 2000,
        state=BatchTaskState.STARTED,
        eta=T0 + timedelta(minutes=30),
    )


#: Per chat format: its validator, its headline, its small print and its link.
FORMATS: list[tuple[str, Callable[[Any], list[str]], Callable[[Any], tuple[str, str, str]]]] = [
    (
        "slack",
        slack_problems,
        lambda p: (
            p["text"],
            p["blocks"][-1]["elements"][0]["text"],
            p["blocks"][-1]["elements"][0]["text"],
        ),
    ),
    (
        "teams",
        teams_problems,
        lambda p: (
            p["attachments"][0]["content"]["body"][0]["inlines"][0]["text"],
            p["attachments"][0]["content"]["body"][-1]["inlines"][0]["text"],
            p["attachments"][0]["content"]["actions"][0]["url"],
        ),
    ),
    (
        "discord",
        discord_problems,
        lambda p: (
            p["embeds"][0]["title"],
            p["embeds"][0]["footer"]["text"],
            p["embeds"][0]["url"],
        ),
    ),
    (
        "mattermost",
        lambda _: [],
        lambda p: (
            p["attachments"][0]["fallback"],
            p["attachments"][0]["footer"],
            p["attachments"][0]["title_link"],
        ),
    ),
    (
        "googlechat",
        lambda _: [],
        lambda p: (
            p["fallbackText"],
            p["cardsV2"][0]["card"]["sections"][0]["widgets"][-2]["textParagraph"]["text"],
            p["cardsV2"][0]["card"]["sections"][0]["widgets"][-1]["buttonList"]["buttons"][0][
                "onClick"
            ]["openLink"]["url"],
        ),
    ),
]


class TestChat:
    """Every chat format names a tenant other than the default in its title and footer."""

    @pytest.mark.parametrize(("kind", "problems", "parts"), FORMATS, ids=[f[0] for f in FORMATS])
    async def test_tenant_named_and_linked(
        self,
        scripted: ScriptedServer,
        session: aiohttp.ClientSession,
        kind: str,
        problems: Callable[[Any], list[str]],
        parts: Callable[[Any], tuple[str, str, str]],
    ) -> None:
        """``acme · ❌ Export failed``, ``acme · Task #212 …`` and the tenant's task page."""
        payload = await _posted(scripted, _sink(kind, scripted.url, session), make_task_event())

        title, footer, link = parts(payload)
        assert [] == problems(payload)
        assert "acme · ❌ Export failed" == title
        assert "acme · Task #212 · task.failed" in footer
        assert ACME_PAGE in link.replace("&amp;", "&")

    @pytest.mark.parametrize(("kind", "problems", "parts"), FORMATS, ids=[f[0] for f in FORMATS])
    async def test_default_tenant_is_not_named(
        self,
        scripted: ScriptedServer,
        session: aiohttp.ClientSession,
        kind: str,
        problems: Callable[[Any], list[str]],
        parts: Callable[[Any], tuple[str, str, str]],
    ) -> None:
        """The tenant ``default`` reads as a configuration without tenants always did."""
        sink = _sink(kind, scripted.url, session, tenant="default")
        payload = await _posted(scripted, sink, make_task_event())

        title, footer, link = parts(payload)
        assert [] == problems(payload)
        assert "❌ Export failed" == title
        assert "Task #212 · task.failed" in footer
        assert STATUS + "tasks/212" in link
        assert "tenant" not in json.dumps(payload)

    @pytest.mark.parametrize(
        ("kind", "problems"), [(f[0], f[1]) for f in FORMATS], ids=[f[0] for f in FORMATS]
    )
    async def test_limits_kept_with_a_long_tenant_name(
        self,
        scripted: ScriptedServer,
        session: aiohttp.ClientSession,
        kind: str,
        problems: Callable[[Any], list[str]],
    ) -> None:
        """A 63-character tenant before a 1000-character name still fits every limit."""
        tenant = "t" * 63
        payload = await _posted(
            scripted, _sink(kind, scripted.url, session, tenant=tenant), _long_event()
        )

        assert [] == problems(payload)
        assert tenant + " · " in json.dumps(payload, ensure_ascii=False)
        assert len(scripted.seen[-1].body) < 28_000

    async def test_template_sees_the_tenant(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """``tenant`` is a template variable: the tenant's name, ``default`` included."""
        template = "{{ tenant }}/{{ task.id }}"
        acme = _sink("slack", scripted.url, session, template=template)
        default = _sink("slack", scripted.url, session, tenant="default", template=template)

        texts = [
            (await _posted(scripted, sink, make_task_event()))["blocks"][0]["text"]["text"]
            for sink in (acme, default)
        ]

        assert ["*acme · ❌ Export failed*\nacme/212", "*❌ Export failed*\ndefault/212"] == texts
        check_template(template)


class TestGoogleChatThreads:
    """A task's thread is the tenant's: ids repeat across tenants, threads must not."""

    async def test_threads_per_tenant(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Task 212 of ``acme`` and of ``default`` post to two threads; monitor events too."""
        down = Event("e1", EventType.MONITOR_API_DOWN, T0, message="3 cycles failed")
        keys = [
            (await _posted(scripted, sink, event))["thread"]["threadKey"]
            for sink in (
                _sink("googlechat", scripted.url, session, tenant=tenant)
                for tenant in ("acme", "default")
            )
            for event in (make_task_event(), down)
        ]

        assert [
            "batchmon-acme-task-212",
            "batchmon-acme-monitor",
            "batchmon-task-212",
            "batchmon-monitor",
        ] == keys

    @given(
        st.tuples(
            st.none() | st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True),
            st.none() | st.integers(min_value=1, max_value=2**31),
        ),
        st.tuples(
            st.none() | st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True),
            st.none() | st.integers(min_value=1, max_value=2**31),
        ),
    )
    @example((None, 5), ("task", None))
    @example(("task", 5), ("task-task", None))
    @example(("x-task-1", 2), ("x", 12))
    @example((None, None), ("monitor", None))
    def test_keys_never_collide(
        self, one: tuple[str | None, int | None], other: tuple[str | None, int | None]
    ) -> None:
        """Two (tenant, task) pairs share a thread key only if they are the same pair."""
        (tenant_a, task_a), (tenant_b, task_b) = one, other

        assert (thread_key(task_a, tenant_a) == thread_key(task_b, tenant_b)) == (one == other)


class TestMessages:
    """Reminders, escalations, acknowledgements and digests name the tenant too."""

    @pytest.mark.parametrize("kind", list(EventType))
    def test_every_event_type(self, kind: EventType) -> None:
        """Title and footer of every event type start with the tenant; the link carries it."""
        event = make_task_event(kind) if kind.value.startswith("task.") else Event("e", kind, T0)
        acme = Renderer("ops", template=None, status_url=STATUS, tenant="acme").render(event)
        plain = Renderer("ops", template=None, status_url=STATUS).render(event)

        assert ("acme · " + plain.title, "acme · " + plain.footer) == (acme.title, acme.footer)
        assert acme.link is not None
        assert acme.link.endswith("?tenant=acme")
        assert (None, "acme") == (plain.tenant, acme.tenant)

    def test_reminder(self) -> None:
        """A reminder keeps its words after the tenant's name."""
        failed = make_task_event()
        [(_, reminder)] = due_reminders(
            [("ops", 3600.0, lambda _: True)], [failed], T0 + timedelta(hours=1)
        )
        message = Renderer("ops", template=None, status_url=None, tenant="acme").render(reminder)

        assert "acme · ❌ Export failed" == message.title
        assert message.text.startswith("Reminder 1: still failed after 1h00m")

    async def test_digest(self, scripted: ScriptedServer, session: aiohttp.ClientSession) -> None:
        """A digest's title, lines and links name the tenant; Google Chat posts it in the
        tenant's monitor thread."""
        events = [make_task_event(id=task_id, name=f"Export {task_id}") for task_id in (1, 2, 3)]
        sink = _sink("googlechat", scripted.url, session)
        assert isinstance(sink, ChatSink)
        scripted.replies.append(Reply(200, "ok"))

        await sink.send_digest(digest_of(events))

        payload = json.loads(scripted.seen[-1].body)
        assert payload["fallbackText"].startswith("acme · 📋 3 failed")
        assert "batchmon-acme-monitor" == payload["thread"]["threadKey"]
        widgets = payload["cardsV2"][0]["card"]["sections"][0]["widgets"]
        texts = " ".join(w["textParagraph"]["text"] for w in widgets if "textParagraph" in w)
        assert STATUS + "tasks/2?tenant=acme" in texts
        assert "acme · batchmon digest · 3 events · 3 tasks" in texts
        button = widgets[-1]["buttonList"]["buttons"][0]["onClick"]["openLink"]["url"]
        assert STATUS + "?ids=1-3&tenant=acme" == button


class TestWebhook:
    """The CloudEvent of a tenant: its own ``source`` and the ``tenant`` attribute."""

    @pytest.mark.parametrize(
        ("source", "tenant", "expected"),
        [
            ("urn:batchmon:mon-a", "default", "urn:batchmon:mon-a"),
            ("urn:batchmon:mon-a", "acme", "urn:batchmon:mon-a:acme"),
            (STATUS, "default", STATUS),
            (STATUS, "acme", STATUS + "?tenant=acme"),
            (
                "https://ops.example.com/batchmon",
                "eu-1",
                "https://ops.example.com/batchmon?tenant=eu-1",
            ),
        ],
    )
    def test_source(self, source: str, tenant: str, expected: str) -> None:
        """The default tenant keeps the process's source; another gets one of its own."""
        assert expected == tenant_source(source, tenant)

    @pytest.mark.parametrize(
        ("status_url", "source"),
        [(STATUS, STATUS + "?tenant=acme"), (None, ":acme")],
    )
    async def test_signed_cloudevent(
        self,
        scripted: ScriptedServer,
        session: aiohttp.ClientSession,
        status_url: str | None,
        source: str,
    ) -> None:
        """The tenant is in the signed body, which the reference library verifies."""
        sink = _sink("webhook", scripted.url, session, status_url=status_url, secret=SECRET)
        scripted.replies.append(Reply(204, ""))

        await sink.send(make_task_event())

        seen = scripted.seen[-1]
        payload = Webhook(SECRET).verify(seen.body, seen.headers)
        assert "acme" == payload["tenant"]
        assert payload["source"].endswith(source)
        assert payload["source"].startswith("https://" if status_url else "urn:batchmon:")

    async def test_default_tenant_adds_nothing(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """The default tenant's CloudEvent has no ``tenant`` attribute and today's source."""
        sink = _sink("webhook", scripted.url, session, tenant="default")
        scripted.replies.append(Reply(204, ""))

        await sink.send(make_task_event())

        cloudevent = json.loads(scripted.seen[-1].body)
        assert "tenant" not in cloudevent
        assert STATUS == cloudevent["source"]


class TestLog:
    """The log sink's line names a tenant other than the default."""

    @pytest.mark.parametrize(("tenant", "expected"), [("acme", "acme"), ("default", None)])
    async def test_json_line(self, tenant: str, expected: str | None) -> None:
        """``"tenant": "acme"`` in the JSON line; no field for the default tenant."""
        stream = io.StringIO()
        configure_logging("json", "info", stream)

        await LogSink("log", tenant=tenant).send(make_task_event())

        line = json.loads(stream.getvalue())
        assert ("task.failed", expected) == (line["event"], line.get("tenant"))


class TestFilter:
    """``tenants`` globs: a sink is built only for the tenants they match."""

    @pytest.mark.parametrize(
        ("tenant", "built"),
        [
            ("default", ["all", "hook"]),
            ("acme", ["all", "acme-chat"]),
            ("acme-eu", ["all", "acme-chat"]),
            ("beta", ["all"]),
        ],
    )
    async def test_subscriptions_of_a_tenant(
        self, session: aiohttp.ClientSession, tenant: str, built: list[str]
    ) -> None:
        """Each tenant's pipeline gets the sinks whose globs match its name, in config order."""
        sinks = TypeAdapter(list[SinkConfig]).validate_python(
            [
                {"name": "all", "type": "log"},
                {"name": "acme-chat", "type": "slack", "url": STATUS, "tenants": ["acme*"]},
                {"name": "hook", "type": "webhook", "url": STATUS, "tenants": ["default"]},
            ]
        )

        subscriptions = subscriptions_from(
            sinks, SinkContext(session, status_url=None, tenant=tenant)
        )

        assert built == [subscription.sink.name for subscription in subscriptions]
