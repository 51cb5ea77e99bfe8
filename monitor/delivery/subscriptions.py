"""From ``[[sinks]]`` entries to what the dispatcher serves: a sink, its route, its pace."""

from __future__ import annotations

from collections.abc import Sequence

from monitor.config import SinkConfig
from monitor.config.sinks import MessageSinkConfig
from monitor.delivery.dispatcher import Subscription
from monitor.sinks.base import Route
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink

__all__ = ["subscriptions_from"]


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
                remind_every=(
                    config.remind_every if isinstance(config, MessageSinkConfig) else None
                ),
                kind=config.type,
            )
        )
    return subscriptions
