"""The ``googlechat`` sink: Google Chat incoming webhooks, one card per event, a thread per task.

A ``cardsV2`` card holds the bold headline, the facts as decorated text,
the main text and a button to the status page; ``fallbackText`` is what
notifications show.  Card text is a small HTML subset, so task text is
HTML-escaped (:func:`~monitor.sinks.render.escape_googlechat`).  All events
of one task go to one thread: ``thread.threadKey`` is
``batchmon-task-<id>`` (``batchmon-<tenant>-task-<id>`` for a tenant other than the
default: ids repeat across tenants), and ``messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD``
starts the thread when it does not exist yet.  A space takes about one
message per second from all its apps together; over quota, ``429``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from monitor.sinks.http import ChatSink, Request, json_body
from monitor.sinks.render import Message, escape_googlechat, escape_plain, fit

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["GoogleChatSink", "googlechat_payload", "thread_key"]

#: Messages are limited to 32,000 bytes; the main text stays well below in UTF-8.
TEXT_MAX = 6000
TITLE_MAX = 300
#: The query parameter that makes ``thread.threadKey`` reply in (or start) a thread.
REPLY_OPTION = MappingProxyType({"messageReplyOption": "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"})


def thread_key(task_id: int | None, tenant: str | None = None) -> str:
    """One thread per task; monitor events share a thread of their own; each per tenant.

    Keys never collide: a tenant's key ends in ``-task-<digits>`` or ``-monitor`` after
    ``batchmon-<tenant>``, and the default tenant's have no tenant part.
    """
    prefix = f"batchmon-{tenant}" if tenant else "batchmon"
    return f"{prefix}-task-{task_id}" if task_id is not None else f"{prefix}-monitor"


def _html(text: str, limit: int) -> str:
    return fit(text, limit, escape_googlechat).replace("\n", "<br>")


def googlechat_payload(message: Message) -> dict[str, object]:
    """The webhook body for ``message`` (send it with :data:`REPLY_OPTION`)."""
    widgets: list[dict[str, object]] = [
        {"textParagraph": {"text": f"<b>{_html(message.title, TITLE_MAX)}</b>"}}
    ]
    widgets.extend(
        {"decoratedText": {"topLabel": label, "text": escape_googlechat(value)}}
        for label, value in message.facts
    )
    if message.text:
        widgets.append({"textParagraph": {"text": _html(message.text, TEXT_MAX)}})
    widgets.append({"textParagraph": {"text": f"<i>{escape_googlechat(message.footer)}</i>"}})
    if message.link:
        widgets.append(
            {
                "buttonList": {
                    "buttons": [
                        {"text": "Status page", "onClick": {"openLink": {"url": message.link}}}
                    ]
                }
            }
        )
    return {
        "fallbackText": fit(message.title, TITLE_MAX, escape_plain),
        "cardsV2": [
            {"cardId": f"batchmon-{message.event_id}", "card": {"sections": [{"widgets": widgets}]}}
        ],
        "thread": {"threadKey": thread_key(message.task_id, message.tenant)},
    }


class GoogleChatSink(ChatSink):
    """Posts to a Google Chat space's incoming webhook."""

    default_rate = 1.0

    def message_request(self, message: Message, time: datetime) -> Request:
        """A card in the task's thread (a digest: in the monitor's)."""
        return Request(json_body(googlechat_payload(message)), params=REPLY_OPTION)
