"""From ``[[sinks]]`` entries to sink objects.

One :class:`aiohttp.ClientSession` serves every HTTP sink (one session per
destination family, made at start-up by the daemon).
"""

from __future__ import annotations

from collections.abc import Callable

from monitor.config import SinkConfig
from monitor.sinks.alertmanager import AlertmanagerSink
from monitor.sinks.context import SinkContext
from monitor.sinks.discord import DiscordSink
from monitor.sinks.googlechat import GoogleChatSink
from monitor.sinks.log import LogSink
from monitor.sinks.mattermost import MattermostSink
from monitor.sinks.slack import SlackSink
from monitor.sinks.teams import TeamsSink
from monitor.sinks.webhook import WebhookSink
from monitor.types import Sink

__all__ = ["BUILDERS", "build_sink"]


#: How to build each sink type.
BUILDERS: dict[str, Callable[[SinkConfig, SinkContext], Sink]] = {
    "log": lambda config, _: LogSink(config.name),
    "alertmanager": lambda config, context: AlertmanagerSink.from_config(
        config, context.session, status_url=context.status_url
    ),
    "webhook": WebhookSink.from_config,
    "slack": SlackSink.from_config,
    "teams": TeamsSink.from_config,
    "discord": DiscordSink.from_config,
    "mattermost": MattermostSink.from_config,
    "googlechat": GoogleChatSink.from_config,
}


def build_sink(config: SinkConfig, context: SinkContext) -> Sink:
    """The sink a validated ``[[sinks]]`` entry describes."""
    return BUILDERS[config.type](config, context)
