"""The chat sinks against real loopback receivers: formats, limits, escaping, answers."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import TypeAdapter
from slack_sdk.models.blocks import Block

from monitor.config import SinkConfig
from monitor.sinks.base import DeliveryError
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink
from monitor.sinks.render import ESCAPES
from monitor.sinks.teams import TeamsSink, is_legacy_host
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import Event, EventType
from monitor.types import Sink
from tests.conftest import Reply, ScriptedServer, make_task_event
from tests.test_sinks_render import MENTION

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
STATUS = "https://batchmon.example.com/"
#: Where a message about task 212 links: its own page.
TASK_PAGE = STATUS + "tasks/212"
LONG = "Nightly export. " * 640  # about 10 kB
ATTACK = "@everyone <!channel> <https://evil|click> **bold** <@123>"
HTML_PARTS = ("<!channel>", "<https://evil|click>", "<@123>")
ATTACK_PARTS = (*HTML_PARTS, "**bold**")
#: Hosts that are not loopback, to reach by name: a legacy Teams connector.
LEGACY_HOST = "contoso.webhook.office.com"


class _Loopback(AbstractResolver):
    """Resolves every host name to 127.0.0.1, so real host names reach the test server."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


@pytest.fixture(name="session")
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=_Loopback())) as s:
        yield s


def _sink(
    kind: str,
    url: str,
    session: aiohttp.ClientSession,
    *,
    status_url: str | None = STATUS,
    **config: Any,
) -> Sink:
    """A sink built the way the daemon builds it, from a ``[[sinks]]`` entry."""
    entry = TypeAdapter(SinkConfig).validate_python(
        {"name": "ops", "type": kind, "url": url, **config}
    )
    return build_sink(entry, SinkContext(session, status_url=status_url))


async def _posted(server: ScriptedServer, sink: Sink, event: Event) -> Any:
    """Send ``event`` and return the JSON the receiver got."""
    server.replies.append(Reply(200, "ok"))
    await sink.send(event)
    return json.loads(server.seen[-1].body)


def _strings(value: object, key: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a JSON value, with the key it is under."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)


def _utf16(text: str) -> int:
    """Length as Discord's JavaScript counts it."""
    return len(text.encode("utf-16-le")) // 2


def _long_event(kind: EventType = EventType.TASK_FAILED) -> Event:
    return make_task_event(
        kind,
        name="N" * 1000,
        description=LONG,
        result="R" * 3000,
        progress_description="P" * 2000,
        state=BatchTaskState.STARTED,
        eta=T0 + timedelta(minutes=30),
    )


class TestSlack:
    """``slack``: text plus Block Kit."""

    @pytest.mark.parametrize("kind", list(EventType))
    async def test_blocks_pass_slack_sdk_validation(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession, kind: EventType
    ) -> None:
        """Every block parses and validates with slack_sdk, even for a 10 kB description."""
        event = _long_event(kind) if kind.value.startswith("task.") else Event("e", kind, T0)
        payload = await _posted(scripted, _sink("slack", scripted.url, session), event)

        assert 0 < len(payload["text"]) <= 3000
        assert len(payload["blocks"]) <= 50
        for block in payload["blocks"]:
            parsed = Block.parse(block)
            assert parsed is not None
            parsed.validate_json()

    async def test_message(self, scripted: ScriptedServer, session: aiohttp.ClientSession) -> None:
        """Bold title and main text, fields for the facts, the task and the status link."""
        payload = await _posted(scripted, _sink("slack", scripted.url, session), make_task_event())

        assert "❌ Export failed" == payload["text"]
        main, facts, context = payload["blocks"]
        assert main["text"]["text"].startswith("*❌ Export failed*\nResult: Timeout")
        assert ["*State*\nFailed", "*Progress*\n▰▰▰▰▱▱▱▱▱▱ 40 %", "*Elapsed*\n12 min"] == [
            field["text"] for field in facts["fields"]
        ]
        assert (
            "Task #212 · task.failed · <https://batchmon.example.com/tasks/212|Status page>"
            == context["elements"][0]["text"]
        )
        assert "application/json" == scripted.seen[0].headers["Content-Type"]

    async def test_template_text_is_escaped(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A template's output replaces the main text and is escaped like task text."""
        sink = _sink("slack", scripted.url, session, template="{{ task.name }} <!here> done")
        payload = await _posted(scripted, sink, make_task_event())

        assert (
            "*❌ Export failed*\nExport &lt;!here&gt; done" == payload["blocks"][0]["text"]["text"]
        )

    async def test_rate_limited(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Slack's 429 with Retry-After is a retryable error."""
        scripted.replies.append(Reply(429, "rate_limited", {"Retry-After": "1"}))
        with pytest.raises(DeliveryError) as info:
            await _sink("slack", scripted.url, session).send(make_task_event())

        assert (False, 1.0) == (info.value.permanent, info.value.retry_after)


class TestTeams:
    """``teams``: Workflows with an Adaptive Card 1.4, legacy MessageCard by host."""

    async def test_workflows_envelope(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A ``message`` with one Adaptive Card 1.4 attachment; 202 is success."""
        scripted.replies.append(Reply(202, ""))
        await _sink("teams", scripted.url, session).send(make_task_event())
        payload = json.loads(scripted.seen[0].body)

        assert "message" == payload["type"]
        [attachment] = payload["attachments"]
        assert "application/vnd.microsoft.card.adaptive" == attachment["contentType"]
        card = attachment["content"]
        assert ("AdaptiveCard", "1.4", {"width": "full"}) == (
            card["type"],
            card["version"],
            card["msteams"],
        )
        title = card["body"][0]["inlines"][0]
        assert ("❌ Export failed", "Attention") == (title["text"], title["color"])
        assert {"State": "Failed", "Progress": "▰▰▰▰▱▱▱▱▱▱ 40 %", "Elapsed": "12 min"} == {
            fact["title"]: fact["value"] for fact in card["body"][1]["facts"]
        }
        assert [{"type": "Action.OpenUrl", "title": "Status page", "url": TASK_PAGE}] == card[
            "actions"
        ]
        assert [
            "Result: Timeout while writing the file",
            "Nightly export of all contacts",
            "Task #212 · task.failed",
        ] == [block["inlines"][0]["text"] for block in card["body"][2:]]

    async def test_legacy_connector_gets_a_message_card(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A ``*.webhook.office.com`` URL gets the MessageCard format."""
        port = scripted.server.port
        sink = _sink("teams", f"http://{LEGACY_HOST}:{port}/webhookb2/abc", session)
        payload = await _posted(scripted, sink, make_task_event())

        assert isinstance(sink, TeamsSink)
        assert sink.legacy
        assert ("MessageCard", "E01E5A", "❌ Export failed") == (
            payload["@type"],
            payload["themeColor"],
            payload["title"],
        )
        assert LEGACY_HOST == scripted.seen[0].headers["Host"].partition(":")[0]

    async def test_legacy_throttle_in_a_200(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A legacy connector's "200, Microsoft Teams endpoint returned HTTP error 429" is a 429."""
        port = scripted.server.port
        sink = _sink("teams", f"http://{LEGACY_HOST}:{port}/webhookb2/abc", session)
        scripted.replies.append(Reply(200, "Microsoft Teams endpoint returned HTTP error 429"))
        with pytest.raises(DeliveryError) as info:
            await sink.send(make_task_event())

        assert (False, 429) == (info.value.permanent, info.value.status)

    @pytest.mark.parametrize(
        ("host", "legacy"),
        [
            ("contoso.webhook.office.com", True),
            ("CONTOSO.WEBHOOK.OFFICE.COM.", True),
            ("prod-12.westeurope.logic.azure.com", False),
            ("default123.environment.api.powerplatform.com", False),
            ("webhook.office.com.evil.example", False),
            ("notwebhook.office.com", False),
        ],
    )
    def test_legacy_hosts(self, host: str, legacy: bool) -> None:
        """Only hosts under ``webhook.office.com`` are legacy connectors."""
        assert legacy == is_legacy_host(host)


class TestDiscord:
    """``discord``: one embed within every limit."""

    async def test_limits_with_a_10kb_description(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Title, description, fields, footer and the total stay within Discord's limits."""
        payload = await _posted(scripted, _sink("discord", scripted.url, session), _long_event())

        [embed] = payload["embeds"]
        assert _utf16(embed["title"]) <= 256
        assert _utf16(embed["description"]) <= 4096
        assert embed["description"].endswith("…")
        assert len(embed["fields"]) <= 25
        for field in embed["fields"]:
            assert _utf16(field["name"]) <= 256
            assert _utf16(field["value"]) <= 1024
        assert _utf16(embed["footer"]["text"]) <= 2048
        total = sum(
            _utf16(text)
            for text in [
                embed["title"],
                embed["description"],
                embed["footer"]["text"],
                *(f["name"] + f["value"] for f in embed["fields"]),
            ]
        )
        assert total <= 6000
        assert {"parse": []} == payload["allowed_mentions"]

    async def test_embed(self, scripted: ScriptedServer, session: aiohttp.ClientSession) -> None:
        """Colour by tone, title linked to the status page, inline facts, event time."""
        payload = await _posted(
            scripted, _sink("discord", scripted.url, session), make_task_event()
        )

        [embed] = payload["embeds"]
        assert (0xE01E5A, "❌ Export failed", TASK_PAGE, "2026-11-28T12:00:00+00:00") == (
            embed["color"],
            embed["title"],
            embed["url"],
            embed["timestamp"],
        )
        assert [("State", "Failed", True)] == [
            (f["name"], f["value"], f["inline"]) for f in embed["fields"][:1]
        ]

    async def test_json_retry_after(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Discord's 429 body says how long to wait, in fractional seconds."""
        body = '{"message": "You are being rate limited.", "retry_after": 0.75, "global": false}'
        scripted.replies.append(Reply(429, body, {"Retry-After": "1"}))
        with pytest.raises(DeliveryError) as info:
            await _sink("discord", scripted.url, session).send(make_task_event())

        assert (False, 0.75, 429) == (
            info.value.permanent,
            info.value.retry_after,
            info.value.status,
        )

    async def test_unknown_webhook_is_permanent(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A 404 means the webhook is gone: give up, and say what Discord said."""
        scripted.replies.append(Reply(404, '{"message": "Unknown Webhook", "code": 10015}'))
        with pytest.raises(DeliveryError) as info:
            await _sink("discord", scripted.url + "/webhooks/1/tok3n-secret", session).send(
                make_task_event()
            )

        assert info.value.permanent
        assert "Unknown Webhook" in str(info.value)
        assert "tok3n-secret" not in str(info.value)


class TestMattermost:
    """``mattermost``: markdown text and one attachment."""

    async def test_message(self, scripted: ScriptedServer, session: aiohttp.ClientSession) -> None:
        """Bold title and main text; colour, facts and link in the attachment."""
        payload = await _posted(
            scripted, _sink("mattermost", scripted.url, session), make_task_event()
        )

        assert payload["text"].startswith("**❌ Export failed**\nResult: Timeout")
        [attachment] = payload["attachments"]
        assert ("#E01E5A", "Status page", TASK_PAGE) == (
            attachment["color"],
            attachment["title"],
            attachment["title_link"],
        )
        assert ["State", "Progress", "Elapsed"] == [f["title"] for f in attachment["fields"]]


class TestGoogleChat:
    """``googlechat``: a card per event, a thread per task."""

    async def test_card_in_the_task_thread(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """``cardsV2``, ``threadKey`` of the task, reply option added to the URL's own query."""
        url = scripted.url + "/v1/spaces/AAA/messages?key=k3y&token=t%3Dk"
        payload = await _posted(scripted, _sink("googlechat", url, session), make_task_event())

        assert {"threadKey": "batchmon-task-212"} == payload["thread"]
        assert {
            "key": "k3y",
            "token": "t=k",
            "messageReplyOption": "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
        } == scripted.seen[0].query
        assert "❌ Export failed" == payload["fallbackText"]
        [card] = payload["cardsV2"]
        widgets = card["card"]["sections"][0]["widgets"]
        assert {"textParagraph": {"text": "<b>❌ Export failed</b>"}} == widgets[0]
        assert {"decoratedText": {"topLabel": "State", "text": "Failed"}} == widgets[1]
        button = widgets[-1]["buttonList"]["buttons"][0]
        assert {"openLink": {"url": TASK_PAGE}} == button["onClick"]

    async def test_monitor_events_share_a_thread(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """API outages go to a thread of their own."""
        event = Event("e1", EventType.MONITOR_API_DOWN, T0, message="3 cycles failed")
        payload = await _posted(scripted, _sink("googlechat", scripted.url, session), event)

        assert {"threadKey": "batchmon-monitor"} == payload["thread"]

    async def test_size_limit(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """A 10 kB description stays under the 32,000-byte message limit."""
        await _posted(scripted, _sink("googlechat", scripted.url, session), _long_event())

        assert len(scripted.seen[0].body) < 32_000


#: Each format, by sink type and URL host: the attack parts that would act in it, and its
#: keys whose text is shown as plain text (notification fallbacks, a MessageCard's title),
#: where only mentions could act.  Google Chat cards read HTML, not markdown.
FORMATS = [
    ("slack", "127.0.0.1", "slack", ATTACK_PARTS, set()),
    ("teams", "127.0.0.1", "teams", ATTACK_PARTS, set()),
    ("teams", LEGACY_HOST, "teams_legacy", ATTACK_PARTS, {"summary", "title"}),
    ("discord", "127.0.0.1", "discord", ATTACK_PARTS, set()),
    ("mattermost", "127.0.0.1", "mattermost", ATTACK_PARTS, {"fallback"}),
    ("googlechat", "127.0.0.1", "googlechat", HTML_PARTS, {"fallbackText"}),
]


class TestUntrustedText:
    """Task text that tries to ping, link or format does nothing, in every format."""

    @pytest.mark.parametrize(("kind", "host", "escaping", "active", "plain"), FORMATS)
    async def test_attack_is_inert(
        self,
        scripted: ScriptedServer,
        session: aiohttp.ClientSession,
        kind: str,
        host: str,
        escaping: str,
        active: tuple[str, ...],
        plain: set[str],
    ) -> None:
        """No mention survives; markup arrives only in the format's escaped form."""
        url = f"http://{host}:{scripted.server.port}/hook"
        event = make_task_event(
            name=ATTACK, description=ATTACK, result=ATTACK, progress_description=ATTACK
        )
        payload = await _posted(scripted, _sink(kind, url, session), event)
        strings = list(_strings(payload))

        assert [] == [text for _, text in strings if re.search(MENTION, text)]
        assert any(ESCAPES[escaping]("<!channel>") in text for _, text in strings)
        if escaping == "teams":
            # A TextRun reads no markup; the rest of the card holds batchmon's words only.
            card = payload["attachments"][0]["content"]
            strings = [
                item
                for element in card["body"]
                if element["type"] != "RichTextBlock"
                for item in _strings(element)
            ]
        marked = [text for key, text in strings if key not in plain]
        assert [] == [text for text in marked if any(part in text for part in active)]
        shown_plain = [text for key, text in strings if key in plain]
        assert [] == [text for text in shown_plain if re.search(r"<[!@h]", text)]

    async def test_discord_never_parses_mentions(
        self, scripted: ScriptedServer, session: aiohttp.ClientSession
    ) -> None:
        """Even were the escaping wrong, Discord is told to ping nobody."""
        payload = await _posted(
            scripted, _sink("discord", scripted.url, session), make_task_event(name=ATTACK)
        )

        assert {"parse": []} == payload["allowed_mentions"]
