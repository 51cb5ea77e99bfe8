"""From ``[[sinks]]`` entries to sink objects.

One :class:`aiohttp.ClientSession` serves every HTTP sink (one session per
destination family, made at start-up by the daemon).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from monitor.config import SINK_TYPES, SinkConfig
from monitor.config.sinks import (
    AlertmanagerSinkConfig,
    DiscordSinkConfig,
    GoogleChatSinkConfig,
    LogSinkConfig,
    MattermostSinkConfig,
    SlackSinkConfig,
    TeamsSinkConfig,
    WebhookSinkConfig,
)
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

__all__ = ["BUILDERS", "Builder", "build_sink"]


_Config = TypeVar("_Config", bound=SinkConfig)


@dataclass(frozen=True, slots=True)
class Builder(Generic[_Config]):
    """How to build the sink of one sink type, from that type's config model."""

    config: type[_Config]
    build: Callable[[_Config, SinkContext], Sink]

    def __call__(self, config: SinkConfig, context: SinkContext) -> Sink:
        if not isinstance(config, self.config):
            msg = f"sink {config.name!r}: a {config.type!r} entry, not {self.config.type_name()!r}"
            raise TypeError(msg)
        return self.build(config, context)


#: How to build each sink type, keyed by the ``type`` of its config model.
BUILDERS: Mapping[str, Builder[Any]] = MappingProxyType(
    {
        builder.config.type_name(): builder
        for builder in (
            Builder(
                LogSinkConfig, lambda config, context: LogSink(config.name, tenant=context.tenant)
            ),
            Builder(
                AlertmanagerSinkConfig,
                lambda config, context: AlertmanagerSink.from_config(
                    config,
                    context.session,
                    status_url=context.status_url,
                    in_maintenance=context.in_maintenance,
                    tenant=context.tenant,
                ),
            ),
            Builder(WebhookSinkConfig, WebhookSink.from_webhook_config),
            Builder(SlackSinkConfig, SlackSink.from_config),
            Builder(TeamsSinkConfig, TeamsSink.from_config),
            Builder(DiscordSinkConfig, DiscordSink.from_config),
            Builder(MattermostSinkConfig, MattermostSink.from_config),
            Builder(GoogleChatSinkConfig, GoogleChatSink.from_config),
        )
    }
)
if BUILDERS.keys() != SINK_TYPES.keys():  # pragma: no cover - fails at import, in every test
    raise AssertionError(f"sink types without a builder: {SINK_TYPES.keys() - BUILDERS.keys()}")


def build_sink(config: SinkConfig, context: SinkContext) -> Sink:
    """The sink a validated ``[[sinks]]`` entry describes."""
    return BUILDERS[config.type](config, context)
