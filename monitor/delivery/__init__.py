"""Delivery: the outbox, its store, and the dispatcher that drains it to the sinks.

- :mod:`~monitor.delivery.dispatcher` routes committed events into the outbox and
  sends them, each sink with its own workers (:mod:`~monitor.delivery.lanes`);
  :mod:`~monitor.delivery.reminders` says which reminders are due.
- The store behind it keeps the contract of :class:`monitor.types.DeliveryStore`;
  :mod:`~monitor.delivery.sqlite` is the SQLite one (its file opened by
  :mod:`~monitor.delivery.database`, examined and moved aside when broken by
  :mod:`~monitor.delivery.recovery`, shaped by :mod:`~monitor.delivery.schema`);
  :mod:`~monitor.delivery.postgres` the PostgreSQL one (migrated by
  :mod:`~monitor.delivery.postgres_schema`); :mod:`~monitor.delivery.stores` opens
  the one ``[state]`` names.
- :mod:`~monitor.delivery.outbox` holds the values crossing the contract, and
  :mod:`~monitor.delivery.serial` the JSON they are stored as.

Sinks know nothing of this package: it imports them, never the other way round.
"""
