"""From ``[[sinks]]`` entries to what the dispatcher serves: a sink, its route, its pace."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from monitor.config import SinkConfig
from monitor.config.sinks import EVENT_TYPES, ChatSinkConfig, MessageSinkConfig
from monitor.delivery.dispatcher import Subscription
from monitor.delivery.grouping import Grouping, quiet_hours
from monitor.sinks.base import Route
from monitor.sinks.context import SinkContext
from monitor.sinks.factory import build_sink

__all__ = ["subscriptions_from"]


def subscriptions_from(
    sinks: Sequence[SinkConfig], context: SinkContext, *, tenant: str | None = None
) -> list[Subscription]:
    """A sink and its route for each ``[[sinks]]`` entry whose ``tenants`` match ``tenant``
    (default: the context's; a shard's sinks are its tenant's); the others are not built."""
    subscriptions = []
    for config in sinks:
        if not config.serves(tenant or context.tenant):
            continue
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
                grouping=_grouping(config),
                after=config.after if isinstance(config, MessageSinkConfig) else None,
                kind=config.type,
            )
        )
    return subscriptions


def _grouping(config: SinkConfig) -> Grouping:
    """A chat sink's digest, quiet-hours and cap rules (none for the other sink types)."""
    if not isinstance(config, ChatSinkConfig):
        return Grouping()
    return Grouping(
        window=config.group_window,
        group_min=config.group_min,
        max_per_hour=config.max_per_hour,
        quiet_until=quiet_hours(config.quiet_windows),
        quiet_except=frozenset(
            kind
            for kind in EVENT_TYPES
            if any(fnmatchcase(kind, pattern) for pattern in config.quiet_except or ())
        ),
    )
