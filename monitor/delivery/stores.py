"""Opening the configured store: SQLite by default, PostgreSQL when ``state.url`` is given."""

from __future__ import annotations

from monitor.config.service import StateConfig
from monitor.delivery.sqlite import SqliteStore
from monitor.types import DeliveryStore

__all__ = ["open_store"]


async def open_store(state: StateConfig) -> DeliveryStore:
    """The store ``[state]`` names, opened (and migrated); :class:`StoreError` when it cannot be."""
    if state.url is None:
        return await SqliteStore.open(state.resolved_path)
    # Only a configuration with a url loads the PostgreSQL driver (a fifth of a second).
    from monitor.delivery.postgres import PostgresStore

    return await PostgresStore.open(state.url.get_secret_value())
