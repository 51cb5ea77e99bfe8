"""From ``[[sinks]]`` entries to sink objects.

One :class:`aiohttp.ClientSession` serves every HTTP sink (one session per
destination family, made at start-up by the daemon).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aiohttp

from monitor.config import SinkConfig
from monitor.sinks.alertmanager import AlertmanagerSink
from monitor.sinks.base import Route, Sink
from monitor.sinks.discord import DiscordSink
from monitor.sinks.dispatcher import Subscription
from monitor.sinks.googlechat import GoogleChatSink
from monitor.sinks.log import LogSink
from monitor.sinks.mattermost import MattermostSink
from monitor.sinks.slack import SlackSink
from monitor.sinks.teams import TeamsSink
from monitor.sinks.webhook import WebhookSink

__all__ = ["BUILDERS", "SinkContext", "build_sink", "subscriptions_from"]


class SinkContext:
    """What every sink may need besides its own config."""

    def __init__(self, session: aiohttp.ClientSession, *, status_url: str | None) -> None:
        #: The one HTTP session of all sinks.
        self.session = session
        #: The status page's public URL, for links in messages (``http.public_url``).
        self.status_url = status_url


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


def subscriptions_from(sinks: Sequence[SinkConfig], context: SinkContext) -> list[Subscription]:
    """A sink and its route for each ``[[sinks]]`` entry."""
    subscriptions = []
    for config in sinks:
        sink = build_sink(config, context)
        subscriptions.append(
            Subscription(
                sink=sink,
                route=Route(events=config.events, names=config.names, ids=config.ids),
                rate=config.rate if config.rate is not None else sink.default_rate,
                lanes=config.concurrency or sink.default_concurrency,
                remind_every=config.remind_every,
            )
        )
    return subscriptions
