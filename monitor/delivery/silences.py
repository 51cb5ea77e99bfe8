"""Silences at run time: made over the HTTP API, kept in the store, ended on time.

:class:`Silencer` keeps the silences in memory for the dispatcher's fan-out
(:meth:`Silencer.mutes`, asked for every event, must not touch the store) and in
the store so that they survive a restart.  Every silence ends: at its end time
(:meth:`Silencer.sweep` removes it from the store) or when someone ends it
(:meth:`Silencer.end`); either way the conditions it kept quiet that still fire
are announced then (:func:`~monitor.tracking.silences.end_announcements`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Final, Literal

import anyio
import structlog
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from monitor.config.values import parse_duration
from monitor.tracking.events import Event
from monitor.tracking.silences import Silence, end_announcements, muting, split_ended
from monitor.types import DeliveryStore

__all__ = ["MAX_SILENCE", "MAX_SILENCES", "SilenceRequest", "SilenceRequestError", "Silencer"]

log = structlog.get_logger("batchmon.silences")

#: The longest silence: a week covers a holiday; anything longer is forgotten, not silenced.
MAX_SILENCE: Final = timedelta(days=7)
_INT32_MAX = 2**31 - 1
#: Silences in force at once: enough for any team, few enough to check for every event.
MAX_SILENCES: Final = 1000
#: How often :meth:`Silencer.run` looks for silences whose time is up.
SWEEP_EVERY = 1.0

Commit = Callable[[Sequence[Event]], Awaitable[None]]


class SilenceRequestError(ValueError):
    """A request for a silence that cannot be made; the message says what to change."""


class SilenceRequest(BaseModel):
    """``POST /api/v1/silences``: ``for``, ``reason`` and exactly one of ``ids``, ``names``, ``all``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    duration: Annotated[str | float, Field(alias="for")]
    reason: Annotated[str, Strict(), Field(min_length=1, max_length=500)]
    ids: (
        Annotated[
            list[Annotated[int, Strict(), Field(ge=1, le=_INT32_MAX)]],
            Field(min_length=1, max_length=1000),
        ]
        | None
    ) = None
    names: (
        Annotated[
            list[Annotated[str, Strict(), Field(min_length=1, max_length=200)]],
            Field(min_length=1, max_length=100),
        ]
        | None
    ) = None
    all: Literal[True] | None = None
    by: Annotated[str, Strict(), Field(min_length=1, max_length=200)] | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> SilenceRequest:
        chosen = [name for name in ("ids", "names", "all") if getattr(self, name) is not None]
        if len(chosen) != 1:
            msg = 'give exactly one of "ids", "names" or "all": true'
            raise ValueError(msg + (f", not {' and '.join(chosen)}" if chosen else ""))
        if not self.reason.strip():
            raise ValueError("reason must say why (it is shown wherever the silence is)")
        return self

    @property
    def seconds(self) -> float:
        """``for`` in seconds, within (0, :data:`MAX_SILENCE`]; else :class:`ValueError`."""
        seconds = parse_duration(self.duration)
        if not 0 < seconds <= MAX_SILENCE.total_seconds():
            msg = f"must be more than 0 and at most 7d, got {self.duration!r}"
            raise ValueError(msg)
        return seconds

    @classmethod
    def parse(cls, body: object) -> SilenceRequest:
        """Validate a JSON body; :class:`SilenceRequestError` says every problem."""
        if not isinstance(body, Mapping):
            raise SilenceRequestError("the body must be a JSON object")
        try:
            request = cls.model_validate(body)
            _ = request.seconds
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                message = error["msg"].removeprefix("Value error, ")
                problems.append(f"{where}: {message}" if where else message)
            raise SilenceRequestError("; ".join(problems)) from None
        except ValueError as exc:
            raise SilenceRequestError(f"for: {exc}") from None
        return request


class Silencer:
    """The silences, in memory and in the store; ends them and announces what outlived them."""

    def __init__(
        self,
        store: DeliveryStore,
        *,
        clock: Callable[[], datetime],
        firing: Callable[[], Sequence[Event]],
        limit: int = MAX_SILENCES,
    ) -> None:
        self._store = store
        self._limit = limit
        self._clock = clock
        self._firing = firing
        self._silences: list[Silence] = []
        #: Where the announcements go (the dispatcher's commit), set once it exists.
        self.announce: Commit | None = None
        #: One ending at a time: a sweep and a DELETE must not end a silence twice.
        self._ending = anyio.Lock()

    async def load(self) -> None:
        """Take the stored silences (those that ended while batchmon was down are swept next)."""
        self._silences = await self._store.silences()

    def mutes(self, event: Event) -> bool:
        """Whether a silence keeps ``event`` from every sink but the log, now."""
        return muting(event, self._silences, self._clock()) is not None

    def covering(self, task_id: int, name: str | None) -> Silence | None:
        """The active silence covering a task, if any (for the API and the status page)."""
        now = self._clock()
        return next((s for s in self._silences if s.active(now) and s.covers(task_id, name)), None)

    def active(self) -> list[Silence]:
        """The silences in force now, soonest end first."""
        now = self._clock()
        return sorted((s for s in self._silences if s.active(now)), key=lambda s: s.ends)

    async def add(self, body: object, *, by: str) -> Silence:
        """Silence what ``body`` says (a :class:`SilenceRequest`); :class:`SilenceRequestError`."""
        request = SilenceRequest.parse(body)
        if len(self.active()) >= self._limit:
            msg = f"{self._limit} silences are in force, the most allowed; end some first"
            raise SilenceRequestError(msg)
        now = self._clock()
        silence = Silence(
            id=uuid.uuid4().hex[:12],
            reason=request.reason.strip(),
            by=request.by or by,
            created=now,
            ends=now + timedelta(seconds=request.seconds),
            ids=tuple(dict.fromkeys(request.ids or ())),
            names=tuple(dict.fromkeys(request.names or ())),
            all=bool(request.all),
        )
        await self._store.add_silence(silence)
        self._silences.append(silence)
        log.info(
            "silence_added",
            silence=silence.id,
            covers=silence.scope,
            until=silence.ends.isoformat(timespec="seconds"),
            by=silence.by,
            reason=silence.reason,
        )
        return silence

    async def end(self, silence_id: str) -> Silence | None:
        """End a silence now; ``None`` if there is no such active silence."""
        async with self._ending:
            now = self._clock()
            found = next((s for s in self._silences if s.id == silence_id and s.active(now)), None)
            if found is not None:
                await self._finish([found], now, early=True)
        return found

    async def sweep(self) -> list[Silence]:
        """End the silences whose time is up; which ended."""
        async with self._ending:
            now = self._clock()
            _, ended = split_ended(self._silences, now)
            if ended:
                await self._finish(ended, now, early=False)
        return ended

    async def run(self) -> None:
        """Sweep every :data:`SWEEP_EVERY` seconds, until cancelled."""
        while True:
            await self.sweep()
            await anyio.sleep(SWEEP_EVERY)

    async def _finish(self, ended: list[Silence], now: datetime, *, early: bool) -> None:
        """Announce what the ended silences kept quiet and still fires, then forget them."""
        gone = {s.id for s in ended}
        remaining = [s for s in self._silences if s.id not in gone]
        announcements = end_announcements(ended, remaining, self._firing(), now)
        # Forgotten before the announcement, which a silence ended early would otherwise mute.
        self._silences = [s for s in self._silences if s.id not in gone]  # added meanwhile: kept
        if announcements and self.announce is not None:
            await self.announce(announcements)
        await self._store.remove_silences(sorted(gone))
        for silence in ended:
            log.info(
                "silence_ended",
                silence=silence.id,
                early=early,
                still_firing=sum(1 for a in announcements if silence.covers_event(a)),
                reason=silence.reason,
            )
