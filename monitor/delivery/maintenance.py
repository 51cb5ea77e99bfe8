"""The maintenance windows and the tenant state, watched: the dispatcher's gate.

:class:`Maintenance` keeps the decision's state (:class:`~monitor.tracking.maintenance.Hold`)
and applies it to every commit (:meth:`Maintenance.admit`).  Its :meth:`~Maintenance.run`
wakes when a window opens or closes and asks the tenant-status API at its ``ValidUntil``
(at most once a minute), and commits what that means: ``monitor.maintenance_started``,
the summary at the end, the conditions still firing, ``monitor.tenant_unavailable``.

Its state is stored (:meth:`~monitor.types.DeliveryStore.put_hold`) before the events that
change it are queued, so a restart picks the maintenance up where it was: no second start,
a summary of the whole maintenance, each held condition announced once at its end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

import anyio
import structlog

from monitor.tracking import maintenance as decide
from monitor.tracking.events import Event
from monitor.types import DeliveryStore
from monitor.windows import Window

__all__ = ["TENANT_EVERY", "Maintenance", "TenantState"]

log = structlog.get_logger("batchmon.maintenance")

#: The tenant-status API is asked at its ``ValidUntil``, but never more often than this.
TENANT_EVERY = timedelta(minutes=1)

#: Queues events for delivery (the dispatcher's ``commit``).
Commit = Callable[[Sequence[Event]], Awaitable[None]]


class TenantState(Protocol):
    """The tenant-status API's view (:class:`~monitor.superoffice.tenant.TenantResolver`)."""

    #: Told each state the status API names, whoever asked (the poller, most often).
    on_state: Callable[[str], None] | None

    async def current_state(self) -> tuple[str | None, datetime | None]:
        """The state (``None``: unknown) and until when it holds."""
        ...


class Maintenance:
    """Which maintenance is under way, what it holds back, and what is said when it ends."""

    def __init__(
        self,
        windows: Sequence[Window],
        *,
        clock: Callable[[], datetime],
        tenant: TenantState | None = None,
        tenant_every: timedelta = TENANT_EVERY,
    ) -> None:
        self.windows = list(windows)
        self._clock = clock
        #: The tenant-status API, when the tenant is found through it.
        self.tenant = tenant
        self._tenant_every = tenant_every
        self._hold = decide.Hold()
        #: Where the state is kept (:meth:`load`), and the state as last stored there.
        self._store: DeliveryStore | None = None
        self._stored = decide.Hold()
        self._storing = anyio.Lock()
        #: A summary is being committed: the maintenance it ends stays stored until then.
        self._ending = False
        #: The tenant's state as last asked (``None``: not asked, or no tenant configured).
        self.tenant_state: str | None = None
        self._changed = anyio.Event()
        #: Set when the status API named a state, whoever asked.
        self._tenant_news = anyio.Event()

    # --- the state, stored ---------------------------------------------------------------

    async def load(self, store: DeliveryStore) -> None:
        """Take up the maintenance stored by the last run, and keep the state in ``store``.

        A reload passes the same store: what this run holds is already there.
        """
        if store is self._store:
            return
        self._store = store
        self._hold = self._stored = await store.hold()
        ledger = self._hold.ledger
        if ledger is not None or self._hold.unannounced:
            log.info(
                "maintenance_restored",
                names=list(ledger.names) if ledger is not None else [],
                since=ledger.started.isoformat() if ledger is not None else None,
                held=len(self._hold.unannounced),
            )

    async def _store_hold(self) -> None:
        """Store the state as it is now, if it changed (one write at a time, the latest)."""
        if self._store is None or self._ending:
            return
        async with self._storing:
            hold = self._hold
            if hold != self._stored:
                await self._store.put_hold(hold)
                self._stored = hold

    async def _committed(self, event: Event) -> bool:
        """Whether ``event`` was committed already (by a run that stopped before it stored so)."""
        if self._store is None:
            return False
        return event.id in await self._store.known_events([event.id])

    # --- the gate -----------------------------------------------------------------------

    async def admit(self, events: Sequence[Event]) -> Mapping[str, frozenset[str]]:
        """Note each event (stored before they are queued); those held back, by id, with
        the sink types they still reach."""
        reach = {}
        for event in events:
            self._hold, restricted = decide.admit(self._hold, event)
            if restricted is not None:
                reach[event.id] = restricted
        await self._store_hold()
        return reach

    def held(self, event: Event) -> bool:
        """Whether people were not told of this condition (its reminders wait)."""
        return decide.held(self._hold, event)

    def in_maintenance(self) -> bool:
        """Whether a maintenance is under way (Alertmanager marks what it holds back)."""
        return self._hold.ledger is not None

    def active(self, at: datetime) -> list[str]:
        """What makes ``at`` a maintenance: the windows open then, and the tenant state."""
        names = [window.name for window in self.windows if window.active(at)]
        if decide.tenant_maintenance(self.tenant_state):
            names.append(f"{decide.TENANT} {self.tenant_state}")
        return names

    def openings(self) -> list[tuple[str, bool]]:
        """Each window's name, and whether it is open now; the tenant state's maintenance
        too when the tenant is found through the status API."""
        now = self._clock()
        openings = [(window.name, window.active(now)) for window in self.windows]
        if self.tenant is not None:
            openings.append((decide.TENANT, decide.tenant_maintenance(self.tenant_state)))
        return openings

    # --- the loop -----------------------------------------------------------------------

    async def run(
        self,
        commit: Commit,
        *,
        settle: Callable[[], Awaitable[None]],
        slow: Callable[[bool], None],
    ) -> None:
        """Follow the windows and the tenant state until cancelled.

        ``settle`` waits for the poller's next cycle: before a held API outage is announced,
        the API gets one cycle to show that it is back.  ``slow`` slows polling down while
        the tenant is known to be down (offline maintenance, suspended).
        """
        async with anyio.create_task_group() as group:
            if self.tenant is not None:
                self.tenant.on_state = self._noticed
                group.start_soon(self._follow_tenant, self.tenant, commit, settle, slow)
            while True:
                self._changed = anyio.Event()
                await self.check(commit, settle)
                changes = [w.next_change(self._clock()) for w in self.windows]
                upcoming = [change for change in changes if change is not None]
                wait = (min(upcoming) - self._clock()).total_seconds() if upcoming else None
                with anyio.move_on_after(max(wait, 0.0) if wait is not None else float("inf")):
                    await self._changed.wait()

    async def check(self, commit: Commit, settle: Callable[[], Awaitable[None]]) -> None:
        """Start, extend or end the maintenance as the windows and the tenant say now."""
        names = self.active(self._clock())
        if names and self._hold.ledger is None:
            now = self._clock()
            tenant = decide.tenant_maintenance(self.tenant_state)
            until = None if tenant else decide.windows_end(self.windows, now)
            self._hold, _ = decide.begin(self._hold, names, now, until)
            log.info("maintenance_started", names=names)
            await self._store_hold()
            await self._announce(commit)
        elif names:
            self._hold = decide.also(self._hold, names)
            await self._store_hold()
            await self._announce(commit)
        elif self._hold.ledger is not None:
            if self._hold.unannounced:
                await settle()
                if self.active(self._clock()):
                    return
            self._hold, events = decide.end(self._hold, self._clock())
            log.info("maintenance_ended", conditions_announced=len(events) - 1)
            # The maintenance stays stored until its summary is committed (another commit
            # meanwhile stores nothing); the summary's id is the maintenance's, so a restart
            # in between finds it committed.
            self._ending = True
            try:
                if events and not await self._committed(events[0]):
                    await commit(events)
            finally:
                self._ending = False
            await self._store_hold()

    async def _announce(self, commit: Commit) -> None:
        """``monitor.maintenance_started``, unless it went out (before a restart, say)."""
        ledger = self._hold.ledger
        if ledger is None or ledger.announced:
            return
        started = decide.started(ledger)
        if not await self._committed(started):
            await commit([started])
        self._hold = decide.announced(self._hold)
        await self._store_hold()

    def _noticed(self, state: str) -> None:
        """The status API named a state (the poller asked, most often): a tenant gone down
        holds the API's outage back at once, before the poll cycles that fail count."""
        if decide.tenant_down(state):
            self._hold = replace(self._hold, tenant_down=True)
        if state != self.tenant_state:
            self._tenant_news.set()

    async def _follow_tenant(
        self,
        tenant: TenantState,
        commit: Commit,
        settle: Callable[[], Awaitable[None]],
        slow: Callable[[bool], None],
    ) -> None:
        """Ask at ``ValidUntil`` (at most once a minute), and take what others' asking found."""
        while True:
            self._tenant_news = anyio.Event()
            state, until = await tenant.current_state()
            await self.take_tenant_state(state, commit, settle, slow)
            now = self._clock()
            wait = max(until - now if until is not None else self._tenant_every, self._tenant_every)
            with anyio.move_on_after(wait.total_seconds()):
                await self._tenant_news.wait()

    async def take_tenant_state(
        self,
        state: str | None,
        commit: Commit,
        settle: Callable[[], Awaitable[None]],
        slow: Callable[[bool], None],
    ) -> None:
        """What a state the status API named means, when it differs from the last one."""
        previous = self.tenant_state
        if state is None or state == previous:
            return
        log.info("tenant_state", state=state, was=previous)
        self.tenant_state = state
        down = decide.tenant_down(state)
        slow(down)
        came_back = decide.tenant_down(previous) and not down
        self._hold = replace(self._hold, tenant_down=down)
        change = decide.tenant_change(previous, state, self._clock())
        if change is not None:
            await commit([change])
        if came_back and self._hold.ledger is None and self._hold.unannounced:
            await settle()
            self._hold, again = decide.reannounced(
                self._hold, self._clock(), "Still so when the tenant came back."
            )
            await commit(again)
        await self._store_hold()
        self._changed.set()
