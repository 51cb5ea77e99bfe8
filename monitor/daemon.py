"""Wiring and lifecycle: one task group owns everything batchmon runs.

:class:`Daemon` builds the parts from a validated :class:`~monitor.config.Config`
(the API session and client, tracker, poller, sinks, collector, HTTP server),
starts them in order (HTTP bound first, so /healthz answers as soon as
polling starts) and tears them down in reverse when its scope is cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import aiohttp
import anyio
import anyio.abc
import structlog

from monitor import __version__
from monitor.config import Config, PollConfig
from monitor.metrics import BatchmonCollector, make_registry
from monitor.poller import Poller, utc_now
from monitor.sinks.dispatcher import Dispatcher
from monitor.sinks.factory import SinkContext, subscriptions_from
from monitor.store import Store
from monitor.superoffice.auth import auth_from_config
from monitor.superoffice.client import SuperOfficeClient, open_session
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from monitor.web import WebState, make_app, serve

__all__ = ["Daemon", "rules_from"]

log = structlog.get_logger("batchmon.daemon")

#: How long shutdown waits for queued deliveries before leaving them.
DRAIN_TIMEOUT = 5.0


def rules_from(config: PollConfig) -> Rules:
    """Detection rules from the ``[poll]`` section."""
    return Rules(
        progress_step=config.progress_step,
        progress_min_interval=timedelta(seconds=config.progress_min_interval),
        stall_after=timedelta(seconds=config.stall_after),
    )


class Daemon:
    """The running monitor; ``port`` is the bound HTTP port once started."""

    def __init__(self, config: Config, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.config = config
        self.clock = clock
        self.port: int | None = None
        self.tracker = Tracker(rules_from(config.poll))
        self.dispatcher: Dispatcher | None = None
        self.poller: Poller | None = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled; ``task_status.started(port)`` once polling runs."""
        store = await Store.open(self.config.state.resolved_path)
        try:
            await self._serve(store, task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()

    async def _restore(self, store: Store) -> list[int]:
        """The ids to watch, and the tracker's memory of them from the last run."""
        watched = list(dict.fromkeys([*self.config.watch.ids, *await store.watches()]))
        stored = await store.load_tasks()
        unwatched = set(stored) - set(watched)
        if unwatched:
            await store.forget_tasks(unwatched)
        self.tracker.restore(m for task_id, m in stored.items() if task_id not in unwatched)
        if stored:
            log.info("state_restored", tasks=len(stored) - len(unwatched), forgotten=len(unwatched))
        return watched

    async def _serve(self, store: Store, task_status: anyio.abc.TaskStatus[int]) -> None:
        config = self.config
        so = config.superoffice
        watched = await self._restore(store)
        sink_timeout = aiohttp.ClientTimeout(total=max(s.timeout for s in config.sinks))
        async with (
            open_session(so) as session,
            aiohttp.ClientSession(timeout=sink_timeout) as sink_session,
        ):
            context = SinkContext(sink_session, status_url=config.http.public_url)
            dispatcher = Dispatcher(subscriptions_from(config.sinks, context), store)
            self.dispatcher = dispatcher
            await dispatcher.start()
            client = SuperOfficeClient(session, so, auth_from_config(so.auth))
            poller = Poller(
                client,
                self.tracker,
                dispatcher.commit,
                config.poll,
                max_concurrency=so.max_concurrency,
                max_requests_per_second=so.max_requests_per_second,
                clock=self.clock,
            )
            self.poller = poller
            poller.watch(watched)
            collector = BatchmonCollector(
                self.tracker, poller.health, client.stats, dispatcher, clock=self.clock
            )
            state = WebState(
                tracker=self.tracker,
                poller=poller,
                registry=make_registry(collector),
                clock=self.clock,
                stale_after=max(3 * config.poll.idle_interval, 3 * so.timeout, 60.0),
            )
            runner, self.port = await serve(make_app(state), config.http.host, config.http.port)
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(dispatcher.run)
                    await group.start(poller.run)
                    log.info(
                        "batchmon_started",
                        version=__version__,
                        url=f"http://{config.http.host}:{self.port}/",
                        watching=len(watched),
                        api=so.url,
                    )
                    task_status.started(self.port)
            finally:
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(DRAIN_TIMEOUT):
                        await dispatcher.drain()
                    await runner.cleanup()
                log.info("batchmon_stopped")
