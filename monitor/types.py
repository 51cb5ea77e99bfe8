"""Every protocol of batchmon: the seams between its parts, in one place.

Each is what one side needs of the other, so that tests and a second
implementation (a PostgreSQL store, a new sink) have one page to read.
Only annotations refer to the modules named here, so importing this module
imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from monitor.console import TaskView
    from monitor.delivery.outbox import Claim, Committed, Delivery, Queued, Told
    from monitor.polling.stop import StopOutcome
    from monitor.sinks.digest import Digest
    from monitor.superoffice.errors import Answer
    from monitor.tracking.acks import Ack
    from monitor.tracking.events import Event
    from monitor.tracking.maintenance import Hold
    from monitor.tracking.memory import TaskMemory
    from monitor.tracking.silences import Silence

__all__ = [
    "Acknowledger",
    "ApiRoute",
    "Auth",
    "BackgroundSink",
    "DeliveryStore",
    "DigestSink",
    "RestorableSink",
    "Silences",
    "Sink",
    "Stopper",
    "TaskSource",
    "Transport",
    "Watches",
]

_T = TypeVar("_T")


# --- sinks -----------------------------------------------------------------------------------


class Sink(Protocol):
    """A destination for events.

    A sink delivers exactly what it is given, once per call: retries, rate
    limits, ordering and persistence belong to the dispatcher.
    """

    #: The configured name (metrics label, log field).
    name: str
    #: Deliveries per second the destination tolerates (``inf``: no limit).
    default_rate: float
    #: Deliveries in flight at once unless configured (one task's always go in order).
    default_concurrency: int

    async def send(self, event: Event) -> None:
        """Deliver one event, or raise :class:`~monitor.sinks.base.DeliveryError`."""
        ...


@runtime_checkable
class BackgroundSink(Protocol):
    """A sink with work of its own besides ``send`` (Alertmanager re-sends active alerts)."""

    async def run(self) -> None:
        """Work until cancelled."""
        ...


@runtime_checkable
class DigestSink(Protocol):
    """A sink that can post many events as one message (the chat sinks)."""

    async def send_digest(self, digest: Digest) -> None:
        """Deliver the digest, or raise :class:`~monitor.sinks.base.DeliveryError`."""
        ...


@runtime_checkable
class RestorableSink(Protocol):
    """A sink that keeps state about tasks and rebuilds it at start-up."""

    def restore(self, firing: Iterable[Event]) -> None:
        """Take the latest failed/stalled/gone event of each task still in that condition."""
        ...


# --- the store -------------------------------------------------------------------------------


class DeliveryStore(Protocol):
    """Durable state: task memories, the outbox, event history, run-time watches, silences.

    The guarantees every backend keeps (SQLite, PostgreSQL):

    - **One transaction per commit.**  :meth:`commit` writes task memories,
      deliveries and history together or not at all, before any sink sees an
      event: a crash between detection and commit re-detects the same
      transition with the same event id, and nothing is announced twice.
    - **Claims, one holder each.**  :meth:`claim` hands a delivery to one
      caller at a time and counts the attempt.  A task's deliveries to one sink
      are claimed in the order they were queued, one at a time: while one is
      claimed, or waits for its retry, the task's later ones are not handed out,
      while other tasks' are.  A claim is held until settled by :meth:`finish`,
      :meth:`retry_later` or :meth:`release`.  SQLite keeps claims in the
      process that owns the file (a restart drops them); a shared backend keeps
      them in the database with a lease (``claimed_by``, ``claimed_until``),
      claims with ``FOR UPDATE SKIP LOCKED`` or a conditional ``UPDATE``, and
      lets another replica take a delivery whose lease ran out: the delivery
      keeps its :attr:`~monitor.delivery.outbox.Delivery.seq` and event id, so
      a receiver can drop the repeat.
    - **At least once.**  A delivery leaves the outbox only through
      :meth:`finish` (delivered or given up); everything else keeps it.
    - **Coalescing.**  A queued delivery of a coalesced event type (latest
      wins: ``task.progress``) replaces the older ones of the same task and
      sink that were never tried.
    - **Versioned schema.**  Opening a store creates or checks its schema; a
      backend with migrations applies them there, before the first read.
    - **Tenants.**  Every row belongs to a tenant, and task ids, event ids, sinks,
      silences and the maintenance hold are told apart per tenant.  A store is one
      tenant's view: every method reads and writes that tenant's rows only (the
      claims included).  The store opened from ``[state]`` is the view of
      ``default``; :meth:`for_tenant` gives the others, on the same connection or pool.

    Methods may raise :class:`~monitor.delivery.outbox.StoreError`.
    """

    @property
    def tenant(self) -> str:
        """The tenant whose rows this view reads and writes."""
        ...

    def for_tenant(self, name: str) -> DeliveryStore:
        """The view of tenant ``name``, sharing this store's connection or pool (no round
        trip more per call); :class:`ValueError` for a name that is not label-safe."""
        ...

    async def drop_tenants_except(self, names: Iterable[str]) -> dict[str, int]:
        """Delete every row of the tenants not named (removed from the configuration),
        whichever view is asked; how many rows, per tenant dropped."""
        ...

    async def close(self) -> None:
        """Give back this view's claims; the store that opened the backend (not a view it
        gave) then releases it (after the last write of every view)."""
        ...

    async def load_tasks(self) -> dict[int, TaskMemory]:
        """Every stored task memory; unreadable ones are logged and skipped."""
        ...

    async def forget_tasks(self, task_ids: Iterable[int]) -> None:
        """Drop the memory, history, acknowledgements and escalation records of tasks no
        longer watched."""
        ...

    async def commit(
        self,
        memories: Sequence[TaskMemory],
        deliveries: Sequence[tuple[str, Event]],
        now: float,
        history: Sequence[Event] = (),
        *,
        claim: Mapping[str, int] | None = None,
        told: Sequence[Told] = (),
        untold: Sequence[tuple[str, int]] = (),
        acks: Sequence[Ack] = (),
        unacked: Sequence[int] = (),
    ) -> Committed:
        """Store memories, queue ``(sink, event)`` deliveries, record events: atomically.

        ``history`` are events to record even if no sink wants them (those of
        ``deliveries`` are recorded anyway).  A delivery already queued (same
        sink and event id) is not queued again.  ``claim`` asks for up to that
        many deliveries per sink to be claimed in the same transaction, by the
        rules of :meth:`claim`, so that idle workers get them without another
        round trip.  ``told`` records the escalations among the deliveries (replacing
        the sink's record of the task), ``untold`` drops the records of ``(sink, task
        id)`` whose condition ended (see :meth:`told`).  ``acks`` are stored as
        :meth:`put_ack` stores them and ``unacked`` tasks' dropped, with the event
        that announces them.  Returns how the outbox grew
        per sink (it can shrink when deliveries coalesce) and the deliveries claimed.
        """
        ...

    async def claim(self, sink: str, now: float, *, done: Sequence[int] = ()) -> Claim:
        """Finish ``done``, then claim the sink's oldest due delivery whose task has none claimed.

        One round trip per delivery: a worker passes what it just finished.
        Due means ``next_attempt <= now`` (epoch seconds).
        """
        ...

    async def finish(self, seqs: Sequence[int]) -> None:
        """Deliveries are done (delivered or given up): delete them, claims included."""
        ...

    async def retry_later(self, seq: int, next_attempt: float, error: str) -> None:
        """Settle a claim by keeping its delivery for another try at ``next_attempt``."""
        ...

    async def release(self, seqs: Sequence[int]) -> None:
        """Claims not tried after all: give them up and take back the attempts counted."""
        ...

    async def pending_counts(self) -> dict[str, int]:
        """Deliveries in the outbox, per sink."""
        ...

    async def drop_sinks_except(self, sinks: Iterable[str]) -> dict[str, int]:
        """Delete the tenant's deliveries (and escalation and post records) of sinks no longer
        configured for it; how many deliveries, per sink."""
        ...

    async def known_events(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids were recorded already (queued or delivered)."""
        ...

    async def recent_events(self, task_id: int | None) -> list[Event]:
        """A task's last recorded events, oldest first (``None``: monitor events)."""
        ...

    async def watches(self) -> list[int]:
        """Task ids watched through the HTTP API."""
        ...

    async def add_watch(self, task_id: int) -> None:
        """Persist a watch added at run time."""
        ...

    async def remove_watch(self, task_id: int) -> None:
        """Forget a watch added at run time."""
        ...

    # digests (monitor.delivery.digests): one worker reads a sink's queue and claims rows by seq

    async def queued(self, sink: str) -> list[Queued]:
        """The sink's deliveries that nobody holds a claim on, oldest first, without events."""
        ...

    async def claim_seqs(self, sink: str, seqs: Sequence[int]) -> list[Delivery]:
        """Claim these deliveries of the sink (counting an attempt each), as :meth:`claim` does.

        Those claimed already, or gone, are left out; unreadable ones are logged and deleted.
        """
        ...

    async def told(self) -> list[Told]:
        """What escalation sinks were told of: one per sink and task, kept apart from the
        history (which keeps a task's last events only), dropped with the task."""
        ...

    async def record_post(self, sink: str, at: float, *, keep_after: float) -> None:
        """A capped sink posted a message at ``at``; its posts up to ``keep_after`` go."""
        ...

    async def posts(self, sink: str, since: float) -> list[float]:
        """When a capped sink posted messages after ``since``, oldest first."""
        ...

    async def acks(self) -> list[Ack]:
        """Every stored acknowledgement, lapsed ones too (the caller judges them)."""
        ...

    async def put_ack(self, ack: Ack) -> None:
        """Store a task's acknowledgement, replacing the one it had."""
        ...

    async def drop_acks(self, task_ids: Iterable[int]) -> None:
        """Delete these tasks' acknowledgements; :meth:`forget_tasks` deletes them too."""
        ...

    async def silences(self) -> list[Silence]:
        """Every stored silence (ended ones not yet swept included), by end time."""
        ...

    async def add_silence(self, silence: Silence) -> None:
        """Persist a new silence."""
        ...

    async def remove_silences(self, silence_ids: Sequence[str]) -> set[str]:
        """Delete silences (ended early, or swept after their end); which were stored."""
        ...

    async def hold(self) -> Hold:
        """The maintenance under way and the conditions it held back, as last stored."""
        ...

    async def put_hold(self, hold: Hold) -> None:
        """Store the maintenance's state, replacing the last; an empty one is deleted."""
        ...


# --- the HTTP API and the CLI ----------------------------------------------------------------


class Watches(Protocol):
    """Changes the set of watched tasks at run time (persisted by the daemon)."""

    async def add(self, task_id: int) -> bool:
        """Watch a task; ``False`` if it already was.

        Raises :class:`~monitor.web.WatchLimitReachedError` when ``http.max_watches``
        tasks are watched.
        """
        ...

    async def remove(self, task_id: int) -> bool:
        """Stop watching a task; ``False`` if it was not watched at run time.

        Raises :class:`ValueError` for a task the configuration watches.
        """
        ...


class Acknowledger(Protocol):
    """Takes and gives back acknowledgements of failed, stalled and gone tasks."""

    def current(self, task_id: int) -> Ack | None:
        """The task's acknowledgement, if one holds (its condition still fires)."""
        ...

    async def acknowledge(self, task_id: int, by: str, comment: str | None) -> tuple[Ack, bool]:
        """Take the task's condition; the acknowledgement and whether it is new (or changed
        hands).  Raises :class:`~monitor.tracking.acks.AckRefusedError`."""
        ...

    async def withdraw(self, task_id: int, by: str | None) -> Ack | None:
        """Give the acknowledgement back; the one given back, ``None`` if none held."""
        ...


class Silences(Protocol):
    """The silences, for the HTTP API and the status page (persisted by the daemon)."""

    def active(self) -> list[Silence]:
        """The silences in force now, soonest end first."""
        ...

    def covering(self, task_id: int, name: str | None) -> Silence | None:
        """The active silence covering a task, if any."""
        ...

    async def add(self, body: object, *, by: str) -> Silence:
        """Silence what a ``POST /api/v1/silences`` body says; :class:`ValueError` saying why not."""
        ...

    async def end(self, silence_id: str) -> Silence | None:
        """End an active silence now (announcing what still fires); ``None``: no such silence."""
        ...


class Stopper(Protocol):
    """Asks SuperOffice to stop a task, for the HTTP API."""

    async def stop(self, task_id: int, *, force: bool, by: str) -> StopOutcome:
        """Read the task, stop it if it may be, record ``task.stop_requested``.

        Raises :class:`~monitor.polling.stop.StopFailedError` when SuperOffice cannot be asked.
        """
        ...


class TaskSource(Protocol):
    """Where ``watch`` reads a task from."""

    async def read(self) -> TaskView:
        """The task now; :class:`~monitor.console.SourceError` when there is no answer."""
        ...


# --- SuperOffice -----------------------------------------------------------------------------


class Transport(Protocol):
    """Sends one request within the tenant's limits and retries (the client's)."""

    async def request(
        self,
        method: str,
        base: str,
        path: str,
        *,
        parse: Callable[[Answer], _T],
        headers: Mapping[str, str] | None = None,
        json: object = None,
        form: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        secrets: Collection[str] = (),
        limit: int,
    ) -> _T:
        """``parse`` turns the answer into the result or raises an ``ApiError``.

        ``secrets``: credentials in ``form`` or ``json``, masked wherever the
        answer is quoted (:attr:`Answer.redact`), as are the credential headers.
        """
        ...


class Auth(Protocol):
    """Produces the ``Authorization`` header value, and renews it when it can."""

    async def authorization(self) -> str:
        """The header value for the next request."""
        ...

    async def renew(self, rejected: str) -> bool:
        """Replace ``rejected`` (a value the API answered 401 to) with a fresh credential.

        Returns ``False`` when the scheme cannot renew.  When another request
        already replaced ``rejected``, returns ``True`` without logging in again.
        """
        ...


class ApiRoute(Protocol):
    """Gives the API base for the next request."""

    async def api_base(self) -> str:
        """The API base, e.g. ``https://online3.superoffice.com/Cust12345/api``."""
        ...

    def misdirected(self, base: str) -> bool:
        """``base`` answered 421; whether asking the route again may give another one."""
        ...

    def suspect(self) -> None:
        """The API failed (5xx, unreachable): the tenant's state may have changed."""
        ...
