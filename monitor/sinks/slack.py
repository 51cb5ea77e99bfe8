"""The ``slack`` sink: Slack incoming webhooks, ``text`` plus Block Kit ``blocks``.

``text`` is what notifications and screen readers show; ``blocks`` is the
message: a section with the bold title and the main text, a section of
two-column fields (state, progress, elapsed, ETA), and a context line with
the task and a link to the status page.  Every string goes through
:func:`~monitor.sinks.render.escape_slack` and is cut to Block Kit's limits.
Slack answers ``200 ok``; over its rate limit (1 message per second per
webhook) ``429`` with ``Retry-After``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.sinks.http import ChatSink, Request, json_body
from monitor.sinks.render import Message, escape_slack, fit

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["SlackSink", "slack_payload"]

#: Block Kit limits (docs.slack.dev, "Blocks"; slack_sdk checks the same numbers).
SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
FIELDS_MAX = 10
#: Slack truncates ``text`` far later; a notification needs much less.
FALLBACK_TEXT_MAX = 3000
TITLE_MAX = 300


def _link(url: str, label: str) -> str:
    """``<url|label>`` with the URL made safe for Slack's link syntax."""
    safe = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{label}>"


def _mrkdwn(text: str) -> dict[str, object]:
    """A ``mrkdwn`` text object; ``verbatim`` so Slack links and mentions nothing itself."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def slack_payload(message: Message) -> dict[str, object]:
    """The incoming-webhook body for ``message``."""
    title = f"*{fit(message.title, TITLE_MAX, escape_slack)}*"
    main = title
    if message.text:
        room = SECTION_TEXT_MAX - len(title) - 1
        main += "\n" + fit(message.text, room, escape_slack)
    blocks: list[dict[str, object]] = [{"type": "section", "text": _mrkdwn(main)}]
    if message.facts:
        fields = [
            _mrkdwn(f"*{label}*\n" + fit(value, FIELD_TEXT_MAX - len(label) - 3, escape_slack))
            for label, value in message.facts[:FIELDS_MAX]
        ]
        blocks.append({"type": "section", "fields": fields})
    context = escape_slack(message.footer)
    if message.link:
        context += " · " + _link(message.link, "Status page")
    blocks.append({"type": "context", "elements": [_mrkdwn(context)]})
    return {"text": fit(message.title, FALLBACK_TEXT_MAX, escape_slack), "blocks": blocks}


class SlackSink(ChatSink):
    """Posts to a Slack incoming webhook."""

    default_rate = 1.0

    def message_request(self, message: Message, time: datetime) -> Request:
        """Text and blocks for ``message``."""
        return Request(json_body(slack_payload(message)))
