"""Wiring and lifecycle: one task group owns everything batchmon runs.

:class:`Daemon` builds the parts from a validated :class:`~monitor.config.Config`
(the API session and client, tracker, poller, sinks, collector, HTTP server),
starts them in order (HTTP bound first, so /healthz answers as soon as
polling starts) and tears them down in reverse when its scope is cancelled.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import aiohttp
import anyio
import anyio.abc
import structlog

from monitor import __version__
from monitor.config import Config, PollConfig, SuperOfficeConfig, WatchConfig
from monitor.config.tenants import TenantConfig, Unit
from monitor.delivery.acknowledgements import Acknowledgements
from monitor.delivery.dispatcher import Dispatcher, Limiters
from monitor.delivery.maintenance import Maintenance
from monitor.delivery.silences import Silencer
from monitor.delivery.stores import open_store
from monitor.delivery.subscriptions import subscriptions_from
from monitor.links import named_tenant
from monitor.metrics import BatchmonCollector, Replication, TenantState, make_registry
from monitor.polling import Poller, Shard, rule_matches, utc_now
from monitor.polling.stop import AutoStopper, TaskStopper
from monitor.sinks.context import SinkContext
from monitor.superoffice.client import SuperOfficeClient, open_session
from monitor.superoffice.models import BatchTaskState
from monitor.systemd import Notifier, watchdog_loop
from monitor.task_metrics import TaskSeries
from monitor.tracking.events import Event
from monitor.tracking.memory import Rules
from monitor.tracking.tracker import Tracker
from monitor.types import DeliveryStore, RestorableSink
from monitor.web import (
    Replicas,
    TenantView,
    WatchLimitReachedError,
    WebState,
    make_app,
    serve,
)

if TYPE_CHECKING:  # only replicas load the driver
    from monitor.delivery.leases import LeaseKeeper
    from monitor.delivery.postgres import PostgresStore

__all__ = [
    "Daemon",
    "RuntimeWatches",
    "TenantRuntime",
    "freeze_startup_objects",
    "longest_call",
    "rules_from",
    "stale_after_for",
]

log = structlog.get_logger("batchmon.daemon")

#: How long shutdown waits for queued deliveries before leaving them.
DRAIN_TIMEOUT = 5.0
#: How often systemd's STATUS= line is refreshed.
STATUS_EVERY = 10.0


def freeze_startup_objects() -> None:
    """Leave what start-up made (modules, classes, functions) out of full garbage collections.

    They live as long as the process, yet each full collection walks them all
    again: measured with 1,000 tasks, a full collection takes 50 ms (75,000
    objects), a pause in whichever poll cycle or delivery runs then; 0.5 ms with
    them frozen.  Called by the process entry points once the configuration is
    read, before any task state exists (that must stay collectable: memories are
    replaced as tasks change).
    """
    gc.collect()
    gc.freeze()


def longest_call(so: SuperOfficeConfig) -> float:
    """The longest one API call of a tenant may go on without an answer: every attempt its
    whole timeout, and between two the longest wait a retry takes (``max_retry_after``;
    a longer ``Retry-After`` or backoff gives up); twice that for an Online tenant, whose
    call may first wait for its status lookup."""
    call = (so.retries + 1) * so.timeout + so.retries * so.max_retry_after
    return 2 * call if so.tenant is not None else call


def stale_after_for(config: Config) -> float:
    """Seconds without a request or cycle completing after which a poll loop counts as wedged
    (``/healthz`` 503, the watchdog withheld, so systemd restarts the process).

    Longer than any tenant's longest call (by a minute, for the waits of its limits): a
    tenant whose API does not answer keeps its poll loop waiting that long, and must not get
    the process, every other tenant with it, restarted.
    """
    return max(
        3 * config.poll.idle_interval,
        *(3 * t.superoffice.timeout for t in config.tenant_list),
        *(longest_call(t.superoffice) + 60.0 for t in config.tenant_list),
        60.0,
    )


def rules_from(config: PollConfig, watch: WatchConfig) -> Rules:
    """Detection rules from the ``[poll]`` and ``[watch]`` sections."""
    return Rules(
        progress_step=config.progress_step,
        progress_min_interval=timedelta(seconds=config.progress_min_interval),
        stall_after=timedelta(seconds=config.stall_after),
        forget_after=timedelta(seconds=watch.forget_after),
    )


class RuntimeWatches:
    """Watches added and removed over the HTTP API, persisted in the store."""

    def __init__(
        self, poller: Poller, store: DeliveryStore, configured: Iterable[int], limit: int = 1000
    ) -> None:
        self._poller = poller
        self._store = store
        self._configured = frozenset(configured)
        self._limit = limit
        #: One add at a time, so that concurrent requests cannot pass the limit together.
        self._adding = anyio.Lock()

    async def add(self, task_id: int) -> bool:
        """Watch a task from now on, across restarts, up to ``limit`` tasks."""
        async with self._adding:
            watched = await self._store.watches()
            if task_id in self._configured or task_id in watched:
                return False
            if len(watched) >= self._limit:
                msg = (
                    f"{len(watched)} tasks are watched at run time, the most http.max_watches "
                    "allows; remove some with DELETE /api/v1/watches/{id} first"
                )
                raise WatchLimitReachedError(msg)
            await self._store.add_watch(task_id)
        self._poller.watch([task_id], pinned=True)
        log.info("watch_added", task_id=task_id)
        return True

    async def remove(self, task_id: int) -> bool:
        """Stop watching a task added at run time, and forget it."""
        if task_id in self._configured:
            msg = f"task {task_id} is watched by the configuration; remove it from watch.ids"
            raise ValueError(msg)
        if task_id not in await self._store.watches():
            return False
        await self._store.remove_watch(task_id)
        await self._poller.unwatch([task_id])
        log.info("watch_removed", task_id=task_id)
        return True


class TenantRuntime:
    """One tenant's parts: those that outlive a reload (memory, maintenance) and, while its
    pipeline runs, the running ones the HTTP side and the metrics read."""

    def __init__(self, config: Config, unit: Unit, clock: Callable[[], datetime]) -> None:
        #: The tenant's name, or its shard's (``acme-2of3``).
        self.name = unit.name
        self.unit = unit
        self.tracker = Tracker(rules_from(config.poll, unit.tenant.watch))
        #: Maintenance windows and the tenant state; what a maintenance held back outlives a
        #: reload.
        self.maintenance = Maintenance(config.maintenance.all_windows, clock=clock)
        self.dispatcher: Dispatcher | None = None
        self.poller: Poller | None = None
        self.metrics: TenantState | None = None
        #: Whether its pipeline delivers what it holds when it stops (not once its lease is
        #: lost: its writes would be refused, and the keeper must not wait for them).
        self.drain = True

    @property
    def tenant(self) -> TenantConfig:
        """The tenant's configuration (a shard's is its tenant's)."""
        return self.unit.tenant

    @property
    def shard(self) -> Shard:
        """The tenant's tasks this runtime watches (all of them but for a shard)."""
        return Shard(self.unit.number, self.unit.count)

    def configure(self, config: Config, unit: Unit) -> None:
        """Take a reloaded configuration's rules for this tenant."""
        self.unit = unit
        self.tracker.rules = rules_from(config.poll, unit.tenant.watch)

    def alive(self, stale_after: float) -> bool:
        """Whether its poll loop keeps completing cycles (true until it has one)."""
        return self.poller is None or self.poller.alive(stale_after)


@dataclass(frozen=True, slots=True)
class _Replication:
    """What a replica's lease callbacks start and stop pipelines with."""

    keeper: LeaseKeeper
    store: PostgresStore
    pipelines: Pipelines
    run: Callable[[TenantRuntime, DeliveryStore, anyio.Event], Awaitable[None]]


class Pipelines:
    """The tenants' pipelines running now, each in a cancel scope of its own: started
    together (a tenant whose API hangs delays no other), stopped one by one as leases move."""

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        self._running: dict[str, tuple[anyio.CancelScope, anyio.Event]] = {}

    def start(self, name: str, run: Callable[[anyio.Event], Awaitable[None]]) -> anyio.Event:
        """Run ``run(started)`` for tenant ``name`` until it returns or :meth:`stop`; the
        event ``run`` sets once the tenant polls."""
        scope, done, started = anyio.CancelScope(), anyio.Event(), anyio.Event()
        self._running[name] = (scope, done)

        async def guarded() -> None:
            try:
                with scope:
                    await run(started)
            finally:
                done.set()
                if self._running.get(name) == (scope, done):
                    del self._running[name]

        self._group.start_soon(guarded)
        return started

    async def stop(self, name: str) -> None:
        """Stop tenant ``name``'s pipeline and return once it stopped."""
        entry = self._running.pop(name, None)
        if entry is not None:
            scope, done = entry
            scope.cancel()
            await done.wait()


class Daemon:
    """The running monitor; ``port`` is the bound HTTP port once started.

    One pipeline per tenant (client, tracker, poller, dispatcher and sinks of its
    own), sharing the store, the HTTP server and the metrics.  The trackers' memory
    and the store outlive a reload: :meth:`reload` restarts everything else (API
    sessions, pollers, sinks, HTTP server) with the new configuration, so tracked
    state and queued deliveries are kept.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], datetime] = utc_now,
        notifier: Notifier | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.config = config
        self.shard = shard or Shard()
        self.clock = clock
        self.port: int | None = None
        self.runtimes: dict[str, TenantRuntime] = {}
        self._take_tenants(config)
        #: Configurations swapped in so far (tests and the log read it).
        self.reloads = 0
        self._notifier = notifier if notifier is not None else Notifier()
        self._reload = anyio.Event()
        self._pending: Config | None = None
        #: The tenants whose pipeline runs now, as the HTTP side reads them.
        self._views: dict[str, TenantView] = {}
        #: One rate limiter per sink, whichever tenant posts.
        self._limiters = Limiters()
        #: With PostgreSQL: the lease keeper and what it starts and stops pipelines with.
        self._replication: _Replication | None = None

    def _take_tenants(self, config: Config) -> None:
        """A runtime per configured tenant, keeping those of tenants already known."""
        runtimes = {}
        for unit in config.units:
            runtime = self.runtimes.get(unit.name)
            if runtime is None:
                runtime = TenantRuntime(config, unit, self.clock)
            else:
                runtime.configure(config, unit)
            runtimes[unit.name] = runtime
        self.runtimes = runtimes

    @property
    def first(self) -> TenantRuntime:
        """The first configured tenant's runtime (the only one in the single form)."""
        return next(iter(self.runtimes.values()))

    @property
    def tracker(self) -> Tracker:
        """The first tenant's tracker."""
        return self.first.tracker

    @property
    def poller(self) -> Poller | None:
        """The first tenant's poller, while its pipeline runs."""
        return self.first.poller

    @property
    def dispatcher(self) -> Dispatcher | None:
        """The first tenant's dispatcher, while its pipeline runs."""
        return self.first.dispatcher

    @property
    def maintenance(self) -> Maintenance:
        """The first tenant's maintenance."""
        return self.first.maintenance

    def reload(self, config: Config) -> None:
        """Swap in a new, already validated configuration."""
        if config.state.location != self.config.state.location:
            log.warning(
                "reload_ignores_state_path",
                reason="the state database moves only with a restart",
                kept=self.config.state.location,
            )
        self._pending = config
        self._reload.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled; ``task_status.started(port)`` once polling runs."""
        store = await open_store(self.config.state)
        try:
            dropped = await store.drop_tenants_except(self.runtimes)
            if dropped:
                log.info("tenants_forgotten", rows=dropped)
            started = False
            while True:
                async with anyio.create_task_group() as group:
                    self.port = await group.start(self._serve, store)
                    if not started:
                        started = True
                        task_status.started(self.port)
                    await self._reload.wait()
                    self._notifier.reloading()
                    group.cancel_scope.cancel()
                self._reload = anyio.Event()
                if self._pending is not None:
                    pending = self._pending.model_copy(update={"state": self.config.state})
                    self.config, self._pending = pending, None
                    self._take_tenants(pending)
                    self.reloads += 1
                    log.info("config_reloaded", reloads=self.reloads)
        finally:
            self._notifier.stopping()
            with anyio.CancelScope(shield=True):
                await store.close()
            log.info("batchmon_stopped")

    def _status(self) -> str:
        """One line for ``systemctl status``: what is watched and how fresh it is."""
        running = [r for r in self.runtimes.values() if r.poller is not None]
        active = sum(
            1
            for r in running
            for m in r.tracker.tasks.values()
            if m.info.state.is_active and not m.gone
        )
        watching = sum(len(r.poller.watched) for r in running if r.poller is not None)
        polls = [r.poller.health.last_success for r in running if r.poller is not None]
        last = min((t for t in polls if t is not None), default=None)
        fresh = f"last poll {last:%H:%M:%S}Z" if last else "no successful poll yet"
        if len(self.runtimes) > 1:
            return f"{len(running)} tenants, watching {watching} tasks, {active} active, {fresh}"
        return f"watching {watching} tasks, {active} active, {fresh}"

    async def _report_status(self) -> None:
        while True:
            self._notifier.status(self._status())
            await anyio.sleep(STATUS_EVERY)

    async def _restore(
        self, runtime: TenantRuntime, store: DeliveryStore
    ) -> tuple[list[int], list[int]]:
        """The tracker's memory from the last run; the ids to watch for good, and the
        remembered tasks to poll again.

        The tasks still watched (by id, or by a discovery rule) are remembered, so
        nothing announced is announced again; the others are forgotten.  Those finished
        or gone for ``forget_after`` are forgotten by the poller's first sweep.  A
        discovered task is polled again while it is unfinished, even if no list call
        would show it any more (what it did while batchmon was down, failed say, must
        not be missed), and when it failed (it may run again, or be cleaned up).
        """
        stored = await store.load_tasks()
        watch = runtime.tenant.watch
        rules = watch.discover
        pinned = list(dict.fromkeys([*watch.ids, *await store.watches()]))
        kept = set(pinned)
        again = []
        for task_id, memory in stored.items():
            if task_id in kept or not any(rule_matches(rule, memory.info) for rule in rules):
                continue
            kept.add(task_id)
            state = memory.info.state
            if not memory.gone and (not state.is_terminal or state is BatchTaskState.FAILED):
                again.append(task_id)
        unwatched = set(stored) - kept
        if unwatched:
            await store.forget_tasks(unwatched)
            # After a reload the tracker still holds them: no sink built now raises them.
            runtime.tracker.forget(unwatched)
        runtime.tracker.restore(m for task_id, m in stored.items() if task_id in kept)
        if stored:
            log.info(
                "state_restored",
                tenant=runtime.name,
                tasks=len(stored) - len(unwatched),
                forgotten=len(unwatched),
            )
        return pinned, again

    def _single_api(self) -> dict[str, str]:
        """The API of the single form's tenant, for the start line (each tenant has its own
        ``tenant_started`` line)."""
        if len(self.runtimes) != 1:
            return {}
        so = self.first.tenant.superoffice
        return {"api": so.url or f"{so.tenant} at {so.environment_base}"}

    def _alive(self, stale_after: float) -> bool:
        return all(r.alive(stale_after) for r in self.runtimes.values())

    async def _serve(self, store: DeliveryStore, task_status: anyio.abc.TaskStatus[int]) -> None:
        config = self.config
        sink_timeout = aiohttp.ClientTimeout(total=max(s.timeout for s in config.sinks))
        stale_after = stale_after_for(config)
        keeper = self._keeper(store)
        async with aiohttp.ClientSession(timeout=sink_timeout) as sink_session:
            collector = BatchmonCollector(
                lambda: [r.metrics for r in self.runtimes.values() if r.metrics is not None],
                configured=len(self.runtimes),
                replication=Replication(
                    held=lambda: len(keeper.held), replicas=lambda: keeper.live_replicas
                )
                if keeper is not None
                else None,
            )
            token, reader = config.http.api_token, config.http.read_token
            state = WebState(
                tenants=self._views,
                registry=make_registry(collector),
                clock=self.clock,
                stale_after=stale_after,
                api_token=token.get_secret_value() if token else None,
                read_token=reader.get_secret_value() if reader else None,
                host_names=config.http.host_names,
                configured=list(self.runtimes),
                shards={
                    t.name: [unit.name for unit in t.units]
                    for t in config.tenant_list
                    if t.shards > 1
                },
                replicas=Replicas(
                    replica=keeper.replica,
                    healthy=lambda: keeper.healthy,
                    alive=lambda: keeper.live_replicas,
                    holders=keeper.holders,
                )
                if keeper is not None
                else None,
            )
            runner, port = await serve(make_app(state), config.http.host, config.http.port)
            try:
                async with anyio.create_task_group() as group:
                    pipelines = Pipelines(group)
                    run = partial(self._run_tenant, sink_session=sink_session, stale=stale_after)
                    if keeper is not None:
                        await self._replicate(keeper, store, pipelines, run, group)
                    else:
                        started = [
                            pipelines.start(name, partial(run, runtime, store.for_tenant(name)))
                            for name, runtime in self.runtimes.items()
                        ]
                        for polling in started:
                            await polling.wait()
                    log.info(
                        "batchmon_started",
                        version=__version__,
                        url=f"http://{config.http.host}:{port}/",
                        tenants=len(self.runtimes),
                        **self._single_api(),
                        watching=sum(
                            len(r.poller.watched) for r in self.runtimes.values() if r.poller
                        ),
                        shard=str(self.shard),
                        state=config.state.location,
                        **({"replica": keeper.replica} if keeper is not None else {}),
                    )
                    self._notifier.ready(self._status())
                    group.start_soon(self._report_status)
                    alive = partial(self._alive, stale_after)
                    group.start_soon(partial(watchdog_loop, alive, notifier=self._notifier))
                    task_status.started(port)
            finally:
                with anyio.CancelScope(shield=True):
                    await runner.cleanup()

    def _keeper(self, store: DeliveryStore) -> LeaseKeeper | None:
        """With the state in PostgreSQL, the keeper of this replica's leases (one per tenant)."""
        url = self.config.state.url
        if url is None:
            return None
        # Only replicas load the lease keeper (and, with it, the PostgreSQL driver).
        from monitor.delivery.leases import LeaseKeeper, new_replica_id

        return LeaseKeeper(
            url.get_secret_value(),
            new_replica_id(),
            self.runtimes,
            on_gain=self._lease_taken,
            on_loss=self._lease_given_up,
            ttl=self.config.state.lease_ttl,
        )

    async def _replicate(
        self,
        keeper: LeaseKeeper,
        store: DeliveryStore,
        pipelines: Pipelines,
        run: Callable[[TenantRuntime, DeliveryStore, anyio.Event], Awaitable[None]],
        group: anyio.abc.TaskGroup,
    ) -> None:
        """Run the pipelines of the tenants whose lease this replica holds, as leases come
        and go: a tenant taken starts from what the store holds (its last holder's memory),
        its writes fenced by the lease; a tenant lost or handed back stops at once."""
        from monitor.delivery.postgres import PostgresStore

        if not isinstance(store, PostgresStore):  # pragma: no cover - url means PostgreSQL
            raise TypeError("replicas need the PostgreSQL store")
        self._replication = _Replication(keeper, store, pipelines, run)
        group.start_soon(keeper.run)

    async def _lease_taken(self, name: str, epoch: int) -> None:
        """A tenant's lease taken: its pipeline starts (not awaited: the keeper's rounds go
        on) from what the store holds, its last holder's memory, every write fenced."""
        replication = self._replication
        assert replication is not None  # the keeper runs only once it is set
        unit = self.runtimes[name].unit
        runtime = self.runtimes[name] = TenantRuntime(self.config, unit, self.clock)
        view = replication.store.for_tenant(name).fenced(replication.keeper.fence(name))
        taken = await view.take_over_claims()
        log.info("tenant_taken", tenant=name, epoch=epoch, claims_taken_over=taken)
        replication.pipelines.start(name, partial(replication.run, runtime, view))

    async def _lease_given_up(self, name: str) -> None:
        """A tenant's lease lost or handed back: its pipeline stops at once, without
        delivering what it holds (that needs the lease; its next holder delivers it)."""
        replication = self._replication
        assert replication is not None
        self.runtimes[name].drain = False
        await replication.pipelines.stop(name)
        log.info("tenant_given_up", tenant=name)

    async def _run_tenant(
        self,
        runtime: TenantRuntime,
        store: DeliveryStore,
        started: anyio.Event,
        *,
        sink_session: aiohttp.ClientSession,
        stale: float,
    ) -> None:
        """A tenant's pipeline until cancelled; a lease lost under it ends it quietly (the
        keeper stops what is left of it)."""
        from monitor.delivery.leases import LeaseLostError

        try:
            await self._pipeline(runtime, store, sink_session, stale, started)
        except* LeaseLostError as lost:
            log.warning("tenant_lease_lost", tenant=runtime.name, error=str(lost.exceptions[0]))

    async def _pipeline(
        self,
        runtime: TenantRuntime,
        store: DeliveryStore,
        sink_session: aiohttp.ClientSession,
        stale_after: float,
        started: anyio.Event,
    ) -> None:
        """One tenant's pipeline, from its API client to its sinks; ``started`` once it polls."""
        if named_tenant(runtime.name) is not None:
            # The pipeline runs in a task of its own: its log lines name the tenant, as its
            # events do (the single form's ``default`` reads as before).
            structlog.contextvars.bind_contextvars(tenant=runtime.name)
        config = self.config
        so = runtime.tenant.superoffice
        tracker = runtime.tracker
        pinned, again = await self._restore(runtime, store)
        async with open_session(so) as session:
            client = SuperOfficeClient(session, so)
            maintenance = runtime.maintenance
            maintenance.windows, maintenance.tenant = config.maintenance.all_windows, client.tenant
            context = SinkContext(
                sink_session,
                status_url=config.http.public_url,
                in_maintenance=maintenance.in_maintenance,
                tenant=runtime.name,
            )
            silencer = Silencer(store, clock=self.clock, firing=tracker.firing)
            await silencer.load()
            await maintenance.load(store)
            dispatcher = Dispatcher(
                subscriptions_from(config.sinks, context, tenant=runtime.tenant.name),
                store,
                silenced=silencer.mutes,
                gate=maintenance,
                limiters=self._limiters,
            )
            silencer.announce = dispatcher.commit
            runtime.dispatcher = dispatcher

            async def record(events: Sequence[Event]) -> None:
                """Commit events made outside the tracker (stops), counted as its own are."""
                tracker.event_counts.update(event.type for event in events)
                await dispatcher.commit(events)

            await dispatcher.start()
            acks = Acknowledgements(tracker, store, dispatcher.commit, self.clock)
            await acks.load()
            firing = acks.firing()  # an acknowledged task's alert stays resolved
            for sink in dispatcher.sinks:
                if isinstance(sink, RestorableSink):
                    sink.restore(firing)
            poller = Poller(
                client,
                tracker,
                dispatcher.commit,
                config.poll,
                discover=runtime.tenant.watch.discover,
                forget=store.forget_tasks,
                shard=runtime.shard if runtime.shard.count > 1 else self.shard,
                clock=self.clock,
                workers=so.max_concurrency,
                max_requests_per_second=so.max_requests_per_second,
            )
            runtime.poller = poller
            poller.watch(pinned, pinned=True)
            poller.watch(again)
            runtime.metrics = TenantState(
                runtime.name,
                tracker,
                poller.health,
                client.stats,
                dispatcher,
                cycle_requests=lambda: poller.last_cycle_requests,
                maintenance=maintenance,
            )
            watches = RuntimeWatches(
                poller, store, runtime.tenant.watch.ids, config.http.max_watches
            )
            view = TenantView(
                name=runtime.name,
                tracker=tracker,
                poller=poller,
                series=TaskSeries(tracker, tenant=runtime.name),
                store=store,
                watches=watches,
                acks=acks,
                stopper=TaskStopper(client, record, self.clock),
                silences=silencer,
                maintenance=lambda: (maintenance.active(self.clock()), maintenance.tenant_state),
            )
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(dispatcher.run)
                    group.start_soon(dispatcher.remind, acks.firing)
                    group.start_soon(dispatcher.escalate, acks.open_conditions)
                    group.start_soon(acks.run)
                    group.start_soon(silencer.run)
                    if config.poll.stop_stalled_after is not None:
                        auto = AutoStopper(
                            client,
                            record,
                            store.known_events,
                            stall_after=lambda: tracker.rules.stall_after,
                            stop_after=timedelta(seconds=config.poll.stop_stalled_after),
                            clock=self.clock,
                        )
                        group.start_soon(auto.run, tracker.tasks.values, config.poll.interval)
                    # A window open now holds back what the first cycles find (outside one, the
                    # check never waits for a cycle).
                    if not maintenance.in_maintenance():
                        await maintenance.check(dispatcher.commit, poller.next_cycle)
                    await group.start(poller.run)
                    group.start_soon(
                        partial(
                            maintenance.run,
                            dispatcher.commit,
                            settle=poller.next_cycle,
                            slow=poller.slow,
                        )
                    )
                    self._views[runtime.name] = view
                    log.info(
                        "tenant_started",
                        tenant=runtime.name,
                        watching=len(poller.watched),
                        api=so.url or f"{so.tenant} at {so.environment_base}",
                    )
                    started.set()
            finally:
                self._views.pop(runtime.name, None)
                runtime.poller = runtime.dispatcher = runtime.metrics = None
                with anyio.CancelScope(shield=True):
                    if runtime.drain:
                        with anyio.move_on_after(DRAIN_TIMEOUT):
                            await dispatcher.drain()
                    await store.close()  # this tenant's claims go back: whoever runs it next
