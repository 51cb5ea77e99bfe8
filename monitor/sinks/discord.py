"""The ``discord`` sink: Discord webhooks, one embed per event.

The embed's colour follows the event's tone; its title is the headline
(linked to the status page when there is one), its description the main
text, its inline fields the facts.  Every Discord limit is kept by cutting
with "…": title 256, description 4096, at most 25 fields of name 256 and
value 1024, footer 2048, 6000 in all.  ``allowed_mentions: {"parse": []}``
stops any ping, and :func:`~monitor.sinks.render.escape_discord` keeps
mentions and markdown in task text from rendering.  Discord answers ``204``;
when throttled, ``429`` with a JSON ``retry_after`` in seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.sinks.http import ChatSink, Request, json_body
from monitor.sinks.render import TONE_RGB, Message, escape_discord, escape_plain, fit, measure

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["DiscordSink", "discord_payload", "embed_size"]

#: Embed limits (discord-api-docs, "Embed Limits").
TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELDS_MAX = 25
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
TOTAL_MAX = 6000


def embed_size(embed: dict[str, object]) -> int:
    """The characters Discord counts against the 6000 total of an embed."""
    size = 0
    for key in ("title", "description"):
        value = embed.get(key)
        size += measure(value) if isinstance(value, str) else 0
    fields = embed.get("fields")
    for item in fields if isinstance(fields, list) else []:
        size += measure(str(item["name"])) + measure(str(item["value"]))
    for key in ("footer", "author"):
        part = embed.get(key)
        text = part.get("text" if key == "footer" else "name") if isinstance(part, dict) else None
        size += measure(text) if isinstance(text, str) else 0
    return size


def discord_payload(message: Message, *, timestamp: str) -> dict[str, object]:
    """The webhook body for ``message``: one embed, no mentions parsed."""
    embed: dict[str, object] = {
        "title": fit(message.title, TITLE_MAX, escape_discord),
        "color": TONE_RGB[message.tone],
        "fields": [
            {
                "name": fit(label, FIELD_NAME_MAX, escape_discord),
                "value": fit(value, FIELD_VALUE_MAX, escape_discord),
                "inline": True,
            }
            for label, value in message.facts[:FIELDS_MAX]
        ],
        "footer": {"text": fit(message.footer, FOOTER_MAX, escape_plain)},
        "timestamp": timestamp,
    }
    if message.link:
        embed["url"] = message.link
    room = min(DESCRIPTION_MAX, TOTAL_MAX - embed_size(embed))
    if message.text and room > 0:
        embed["description"] = fit(message.text, room, escape_discord)
    return {"embeds": [embed], "allowed_mentions": {"parse": []}}


class DiscordSink(ChatSink):
    """Posts to a Discord webhook (5 requests per 2 seconds)."""

    default_rate = 2.5

    def message_request(self, message: Message, time: datetime) -> Request:
        """One embed for ``message``."""
        return Request(json_body(discord_payload(message, timestamp=time.isoformat())))
