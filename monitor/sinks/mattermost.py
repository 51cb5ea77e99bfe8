"""The ``mattermost`` sink: Mattermost incoming webhooks.

``text`` (markdown) carries the bold headline and the main text; one
Slack-style attachment carries the colour of the event's tone, the facts as
short fields, the task and the link to the status page.  Task text goes
through :func:`~monitor.sinks.render.escape_mattermost`: markdown shown as
typed, and no ``@channel``, ``@all``, ``@here`` or ``@user`` can notify
anyone.  Mattermost answers ``200 ok``; its rate limits are the server's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.sinks.http import ChatSink, Request, json_body
from monitor.sinks.render import TONE_RGB, Message, escape_mattermost, escape_plain, fit

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["MattermostSink", "mattermost_payload"]

#: Mattermost cuts posts at 16383 characters; leave room for the attachment.
TEXT_MAX = 12000
TITLE_MAX = 300


def mattermost_payload(message: Message) -> dict[str, object]:
    """The incoming-webhook body for ``message``."""
    text = f"**{fit(message.title, TITLE_MAX, escape_mattermost)}**"
    if message.text:
        text += "\n" + fit(message.text, TEXT_MAX, escape_mattermost)
    attachment: dict[str, object] = {
        "fallback": fit(message.title, TITLE_MAX, escape_plain),
        "color": f"#{TONE_RGB[message.tone]:06X}",
        "fields": [
            {"short": True, "title": label, "value": escape_mattermost(value)}
            for label, value in message.facts
        ],
        "footer": escape_plain(message.footer),
    }
    if message.link:
        attachment["title"] = "Status page"
        attachment["title_link"] = message.link
    return {"text": text, "attachments": [attachment]}


class MattermostSink(ChatSink):
    """Posts to a Mattermost incoming webhook."""

    default_rate = 1.0

    def message_request(self, message: Message, time: datetime) -> Request:
        """Markdown text and one attachment for ``message``."""
        return Request(json_body(mattermost_payload(message)))
