"""The ``teams`` sink: Microsoft Teams through a Workflows (Power Automate) webhook.

Microsoft retired the Office 365 connectors; their replacement, a Workflows
"When a Teams webhook request is received" flow, takes a ``message`` with an
Adaptive Card attachment.  Cards stay at version 1.4: Teams shows 1.5 and 1.6
as "couldn't be displayed".  Text from the API goes only into ``TextRun``
elements of a ``RichTextBlock``, where Teams reads no markdown; ``FactSet``
values (markdown) hold only batchmon's own words.  Workflows answer
``202 Accepted``.

A URL on ``*.webhook.office.com`` is a legacy connector: it gets the legacy
``MessageCard``.  Legacy connectors may answer ``200`` with "HTTP error 429"
in the body when throttled; that counts as a 429.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from monitor.sinks.base import DeliveryError
from monitor.sinks.http import ChatSink, DestinationReply, Request, json_body
from monitor.sinks.render import (
    TONE_RGB,
    Message,
    Renderer,
    Tone,
    escape_plain,
    escape_teams,
    escape_teams_legacy,
    fit,
)

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["TeamsSink", "adaptive_card_payload", "is_legacy_host", "message_card_payload"]

#: Teams refuses messages over about 28 KB; the main text stays well below.
TEXT_MAX = 8000
TITLE_MAX = 300
#: The main text's lines, each its own block; the rest joins the last one.
LINES_MAX = 20
#: Adaptive Card colours of each tone.
_COLOURS = {Tone.GOOD: "Good", Tone.BAD: "Attention", Tone.WARNING: "Warning", Tone.INFO: "Accent"}


def is_legacy_host(host: str) -> bool:
    """Whether a webhook host is an Office 365 connector (MessageCard) rather than Workflows."""
    host = host.lower().rstrip(".")
    return host == "webhook.office.com" or host.endswith(".webhook.office.com")


def _lines(text: str) -> list[str]:
    """One block per line (a line break inside a run is not reliable), at most :data:`LINES_MAX`."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) > LINES_MAX:
        lines[LINES_MAX - 1 :] = [" ".join(lines[LINES_MAX - 1 :])]
    return lines


def _text_run(text: str, **style: object) -> dict[str, object]:
    return {"type": "TextRun", "text": text, **style}


def adaptive_card_payload(message: Message) -> dict[str, object]:
    """The Workflows envelope: one Adaptive Card 1.4, full width."""
    title = fit(message.title, TITLE_MAX, escape_teams)
    body: list[dict[str, object]] = [
        {
            "type": "RichTextBlock",
            "inlines": [
                _text_run(title, weight="Bolder", size="Medium", color=_COLOURS[message.tone])
            ],
        }
    ]
    if message.facts:
        facts = [{"title": label, "value": value} for label, value in message.facts]
        body.append({"type": "FactSet", "facts": facts, "spacing": "Small"})
    if message.text:
        body.extend(
            {"type": "RichTextBlock", "inlines": [_text_run(line)]}
            for line in _lines(fit(message.text, TEXT_MAX, escape_teams))
        )
    body.append(
        {
            "type": "RichTextBlock",
            "inlines": [_text_run(escape_teams(message.footer), isSubtle=True, size="Small")],
        }
    )
    card: dict[str, object] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "msteams": {"width": "full"},
    }
    if message.link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Status page", "url": message.link}]
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def message_card_payload(message: Message) -> dict[str, object]:
    """The legacy connector's MessageCard (title is plain text, ``text`` is markdown)."""
    section: dict[str, object] = {
        "facts": [{"name": label, "value": value} for label, value in message.facts],
        "text": fit(message.text, TEXT_MAX, escape_teams_legacy) if message.text else "",
    }
    card: dict[str, object] = {
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": f"{TONE_RGB[message.tone]:06X}",
        "summary": fit(message.title, TITLE_MAX, escape_plain),
        "title": fit(message.title, TITLE_MAX, escape_plain),
        "sections": [section, {"text": escape_teams_legacy(message.footer)}],
    }
    if message.link:
        card["potentialAction"] = [
            {
                "@type": "OpenUri",
                "name": "Status page",
                "targets": [{"os": "default", "uri": message.link}],
            }
        ]
    return card


class TeamsSink(ChatSink):
    """Posts to a Teams Workflows webhook (or a legacy connector, by its host)."""

    default_rate = 4.0

    def __init__(
        self,
        name: str,
        url: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
        renderer: Renderer | None = None,
    ) -> None:
        super().__init__(name, url, session, timeout=timeout, renderer=renderer)
        #: Whether this URL is a legacy Office 365 connector (MessageCard).
        self.legacy = is_legacy_host(self.host)

    def message_request(self, message: Message, time: datetime) -> Request:
        """An Adaptive Card, or a MessageCard for a legacy connector."""
        if self.legacy:
            return Request(json_body(message_card_payload(message)))
        return Request(json_body(adaptive_card_payload(message)))

    async def _post(self, request: Request) -> DestinationReply:
        """Post; a legacy connector's "200, but HTTP error 429" is a 429."""
        answer = await super()._post(request)
        if self.legacy and "429" in answer.excerpt:
            raise DeliveryError(f"{self.name}: throttled: {answer}", status=429)
        return answer
