"""Where a tenant's API is: a fixed URL, or SuperOffice Online's tenant-status API.

Online moves tenants between numbered hosts (``online2`` → ``online3``) to
balance load, so batchmon must not keep a URL: :class:`TenantResolver` asks
``GET {environment}/api/state/{tenant}`` for the current ``Api`` base, keeps it
until ``ValidUntil``, and asks again when the API answers 421 ("Wrong
subdomain used to access tenant").

A tenant that is not running (offline maintenance, suspended, …) is reported,
not hammered: the resolver raises :class:`TenantUnavailable` and does not ask
again until ``ValidUntil`` (within :data:`MIN_RECHECK`..:data:`MAX_RECHECK`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import quote, urlsplit

import anyio
import structlog

from monitor.superoffice.errors import (
    Answer,
    ApiError,
    MalformedResponse,
    TenantUnavailable,
    json_object,
    status_error,
)
from monitor.superoffice.models import parse_datetime
from monitor.types import Transport

__all__ = ["MAX_RECHECK", "MIN_RECHECK", "TENANT_STATES", "FixedRoute", "TenantResolver"]

log = structlog.get_logger("batchmon.tenant")

#: Never ask the status API more often than this, whatever ``ValidUntil`` says.
MIN_RECHECK = timedelta(seconds=30)
#: Never trust an answer longer than this, whatever ``ValidUntil`` says.
MAX_RECHECK = timedelta(minutes=10)
#: After the API failed, the status API is asked again at once, but not more often than this:
#: an offline maintenance shows as the host's 503 before ``ValidUntil`` passes, and its
#: outage must be known as such before the poll cycles that fail make it ``api_down``.
SUSPECT_EVERY = timedelta(seconds=5)
#: A status answer is a few hundred bytes.
MAX_STATUS_BYTES = 64 << 10
_HTTP_CLIENT_ERROR = 400

#: Tenant states by number, for an answer that sends the enum's value.
_STATES = {
    0: "Unknown",
    1: "Provisioning",
    2: "Running",
    3: "Deleted",
    4: "Suspended",
    5: "OnlineMaintenance",
    6: "OfflineMaintenance",
    8: "ProvisioningFailed",
    10: "Deleting",
    11: "DeleteFailed",
    12: "MigrationPending",
}
#: Every tenant state the status API names.
TENANT_STATES = tuple(_STATES.values())


class FixedRoute:
    """A configured ``url``: it never moves, so a 421 is final."""

    def __init__(self, url: str) -> None:
        self._url = url

    async def api_base(self) -> str:
        """The configured URL."""
        return self._url

    def misdirected(self, base: str) -> bool:
        """A fixed URL cannot be looked up again."""
        return False

    def suspect(self) -> None:
        """A fixed URL has no state to ask for."""


class TenantResolver:
    """The tenant's current API base, from the tenant-status API, cached until ``ValidUntil``."""

    def __init__(
        self,
        transport: Transport,
        *,
        environment_url: str,
        tenant: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._transport = transport
        self._environment_url = environment_url
        self._tenant = tenant
        self._clock = clock
        self._lock = anyio.Lock()
        self._base: str | None = None
        #: Until when the base (or the reason there is none) holds.
        self._valid_until: datetime | None = None
        #: Why there is no base: the tenant is not running, or the lookup failed.
        self._unavailable: TenantUnavailable | None = None
        self._failure: ApiError | None = None
        #: The tenant's state as the status API last named it (``None``: not asked yet).
        self.state: str | None = None
        #: Told each state the status API names, as it answers (the maintenance gate).
        self.on_state: Callable[[str], None] | None = None
        #: When a failure of the API last made the status API be asked early.
        self._suspected: datetime | None = None

    async def api_base(self) -> str:
        """The cached base, looked up first when there is none or it expired."""
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await self._look_up()
        if self._unavailable is not None:
            raise self._still_unavailable(self._unavailable)
        if self._failure is not None:
            raise self._failure.with_traceback(None)
        assert self._base is not None  # a lookup without failure gives a base
        return self._base

    async def current_state(self) -> tuple[str | None, datetime | None]:
        """The tenant's state, asked again once ``ValidUntil`` passed, and until when it holds.

        A status API that fails leaves the last state known.
        """
        with contextlib.suppress(ApiError):
            await self.api_base()
        return self.state, self._valid_until

    def suspect(self) -> None:
        """The API failed: ask the status API at the next request (once per
        :data:`SUSPECT_EVERY`), in case the tenant went into maintenance."""
        now = self._clock()
        if self._suspected is None or now - self._suspected >= SUSPECT_EVERY:
            self._suspected = now
            self._valid_until = None

    def misdirected(self, base: str) -> bool:
        """Forget ``base`` so the next request looks the tenant up again."""
        if base == self._base:
            log.info("tenant_misdirected", context=self._tenant, api=base)
            self._valid_until = None
        return True

    def _fresh(self) -> bool:
        return self._valid_until is not None and self._clock() < self._valid_until

    async def _look_up(self) -> None:
        """Ask the status API (the caller holds the lock) and remember what it said.

        What it said holds from when it is known, not from when it was asked: a status API
        that does not answer takes its timeout three times over (the retries), longer than
        :data:`MIN_RECHECK`, and every request queued behind the lock would ask again.
        """
        self._unavailable = self._failure = None
        try:
            base, valid_until = await self._transport.request(
                "GET",
                self._environment_url,
                f"/api/state/{quote(self._tenant, safe='')}",
                parse=lambda answer: self._read(answer, self._clock()),
                limit=MAX_STATUS_BYTES,
            )
        except TenantUnavailable as exc:
            self._unavailable = exc
            self._valid_until = self._clock() + timedelta(seconds=exc.retry_after)
            log.warning("tenant_unavailable", context=self._tenant, state=exc.state)
            return
        except ApiError as exc:
            self._valid_until = self._clock() + MIN_RECHECK
            if self._base is not None:
                # The last known host is better than none while the status API is away.
                log.warning("tenant_status_failed", context=self._tenant, error=str(exc), kept=True)
                return
            self._failure = exc
            return
        if base != self._base:
            log.info("tenant_located", context=self._tenant, api=base, was=self._base)
        self._base, self._valid_until = base, valid_until

    def _read(self, answer: Answer, now: datetime) -> tuple[str, datetime]:
        """The API base and until when it holds, or :class:`TenantUnavailable`."""
        if answer.status >= _HTTP_CLIENT_ERROR:
            raise status_error(answer)
        data = json_object(answer)
        until = _valid_until(data.get("ValidUntil"), now)
        state = self.state = answer.redact(_state_name(data.get("State")))
        if self.on_state is not None:
            self.on_state(state)
        if data.get("IsRunning") is not True:
            seconds = (until - now).total_seconds()
            msg = f"tenant {self._tenant} is {state}, not running; asked again in {seconds:.0f} s"
            raise TenantUnavailable(msg, state=state, retry_after=seconds)
        api = data.get("Api")
        endpoint = data.get("Endpoint")
        if not isinstance(api, str) and isinstance(endpoint, str):
            api = endpoint.rstrip("/") + "/api"
        if not isinstance(api, str) or not _http_url(api):
            msg = f"{answer.what}: the answer has no usable Api or Endpoint URL"
            raise MalformedResponse(msg, status=answer.status)
        return api.rstrip("/"), until

    def _still_unavailable(self, error: TenantUnavailable) -> TenantUnavailable:
        """The remembered refusal, with the time left until the next question."""
        left = 0.0
        if self._valid_until is not None:
            left = max((self._valid_until - self._clock()).total_seconds(), 0.0)
        msg = f"tenant {self._tenant} is {error.state}, not running; asked again in {left:.0f} s"
        return TenantUnavailable(msg, state=error.state, retry_after=left)


def _valid_until(raw: object, now: datetime) -> datetime:
    """``ValidUntil`` clamped to :data:`MIN_RECHECK`..:data:`MAX_RECHECK` from ``now``."""
    until = now + MIN_RECHECK
    if isinstance(raw, str):
        try:
            parsed = parse_datetime(raw)
        except ValueError:
            parsed = None
        if parsed is not None:
            until = parsed
    return min(max(until, now + MIN_RECHECK), now + MAX_RECHECK)


def _state_name(raw: object) -> str:
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _STATES.get(raw, f"state {raw}")
    return "Unknown"


def _http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
