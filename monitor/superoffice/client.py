"""The only HTTP client for the SuperOffice WebAPI.

It takes one :class:`aiohttp.ClientSession` (made once, at start-up, by
:func:`open_session`), sends the headers SuperOffice documents, reads answers
up to a size cap, and turns every failure into one
:mod:`~monitor.superoffice.errors` class.  It returns parsed models.

Every request for the tenant goes through its :class:`LimitedTransport`: API
calls, logins and tenant-status lookups alike, so the tenant's limits hold for
all of them.  At most ``max_concurrency`` requests run at a time and at most
``max_requests_per_second`` start; 5xx, 429, timeouts and connection errors
are retried ``retries`` times after a full-jitter exponential backoff, or
after ``Retry-After`` when that is longer; a 429 pauses every request to the
tenant until its ``Retry-After`` has passed.  Each attempt is counted in
:class:`RequestStats`, with its duration.  Each answer carries a
:class:`~monitor.superoffice.redact.Redactor` for the configured secrets and
the credentials its request sent, through which errors quote the answer.

On top, :class:`SuperOfficeClient` follows the tenant to its current host
(looking it up again after a 421) and renews the credentials once after a 401.
"""

from __future__ import annotations

import json as jsonlib
import random
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import anyio
import structlog

from monitor import __version__
from monitor.config import SuperOfficeConfig
from monitor.histogram import Histogram
from monitor.ratelimit import RateLimiter
from monitor.retry import parse_retry_after
from monitor.superoffice.auth import Login, auth_from_config
from monitor.superoffice.errors import (
    Answer,
    ApiError,
    ApiTimeout,
    AuthenticationFailed,
    MalformedResponse,
    Misdirected,
    NetworkError,
    RateLimited,
    ServerError,
    Unauthorized,
    status_error,
)
from monitor.superoffice.models import (
    BatchTaskInfo,
    ParseError,
    TaskListing,
    parse_listing,
    parse_task,
)
from monitor.superoffice.redact import Redactor, configured_secrets, sent_credentials
from monitor.superoffice.tenant import FixedRoute, TenantResolver
from monitor.types import ApiRoute, Auth

__all__ = [
    "MAX_LIST_BYTES",
    "MAX_TASK_BYTES",
    "AnswerMemo",
    "LimitedTransport",
    "RequestStats",
    "SuperOfficeClient",
    "open_client",
    "open_session",
]

log = structlog.get_logger("batchmon.client")

#: Redactors kept for the credentials of recent requests.
_REDACTORS_KEPT = 16

#: Answers larger than this are refused: a task is a few KB, and a hostile or
#: broken server must not make batchmon buffer gigabytes.
MAX_TASK_BYTES = 1 << 20
MAX_LIST_BYTES = 64 << 20
_HTTP_CLIENT_ERROR = 400
_CHUNK = 64 << 10
_T = TypeVar("_T")

Sleep = Callable[[float], Awaitable[None]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RequestStats:
    """Counters of HTTP requests, for metrics (read by the collector).

    Every request counts, retries, logins and tenant lookups included:
    ``requests`` all of them, ``failures`` those without a usable answer by
    :attr:`~monitor.superoffice.errors.ApiError.reason`, and ``durations``
    their seconds from sending to the end of the body.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.failures: Counter[str] = Counter()
        self.durations = Histogram()


def open_session(config: SuperOfficeConfig) -> aiohttp.ClientSession:
    """The one session for the WebAPI, with its timeouts and fixed headers."""
    headers = {
        "Accept": "application/json",
        "User-Agent": f"batchmon/{__version__}",
    }
    app_token = config.app_token
    if app_token is None and config.auth.type == "system_user":
        # Online wants the app's secret next to a system user ticket.
        app_token = config.auth.client_secret
    optional = {
        "Accept-Language": config.accept_language,
        "SO-Language": config.so_language,
        "SO-Culture": config.so_culture,
        "SO-TimeZone": config.so_time_zone,
        "SO-AppToken": app_token.get_secret_value() if app_token else None,
    }
    headers.update({k: v for k, v in optional.items() if v})
    timeout = aiohttp.ClientTimeout(total=config.timeout, connect=config.connect_timeout)
    connector = aiohttp.TCPConnector(limit=config.max_concurrency)
    return aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=connector, raise_for_status=False
    )


class LimitedTransport:
    """Sends the tenant's requests within its limits, and retries what may pass."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: SuperOfficeConfig,
        stats: RequestStats,
        *,
        clock: Callable[[], datetime],
        sleep: Sleep,
        rng: random.Random,
    ) -> None:
        self._session = session
        self._stats = stats
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._limiter = anyio.CapacityLimiter(config.max_concurrency)
        self._rate = RateLimiter(config.max_requests_per_second)
        self._retries = config.retries
        self._backoff_base = config.backoff_base
        self._backoff_cap = config.backoff_cap
        self._max_retry_after = config.max_retry_after
        #: Masks the configured secrets and the session's own credential headers.
        self._redactor = Redactor(configured_secrets(config)).adding(
            sent_credentials(session.headers)
        )
        #: Redactors by the credentials a request carried (the same few, request after request).
        self._redactors: dict[tuple[str, ...], Redactor] = {}
        #: After a 429, no request to the tenant starts before this.
        self._paused_until: datetime | None = None

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
        """Send ``method base+path`` and ``parse`` the answer, retrying what may pass.

        ``parse`` raises an :class:`ApiError` for an answer it cannot use; a
        :class:`ServerError` or :class:`RateLimited` from it is retried like a
        timeout or a connection error, within the retry budget.  ``secrets``
        are credentials in ``form`` or ``json``; the answer's
        :attr:`~Answer.redact` masks them, the credential headers and the
        configured secrets.
        """
        what = f"{method} {path}"
        redact = self._redactor_for((*secrets, *sent_credentials(headers or {})))
        # Built once for every attempt.
        sent = dict(headers or {})
        data: bytes | dict[str, str] | None = None
        if json is not None:
            data = jsonlib.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        elif form is not None:
            data = dict(form)
        attempt = 0
        while True:
            await self._wait_for_gate(what)
            try:
                answer = await self._send(
                    method, base + path, what, redact, sent, data, params, limit
                )
                return parse(answer)
            except ApiError as exc:
                self._stats.failures[exc.reason] += 1
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                log.debug(
                    "api_retry", request=what, reason=exc.reason, attempt=attempt + 1, delay=delay
                )
            attempt += 1
            await self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]``."""
        return self._rng.uniform(0.0, min(self._backoff_cap, self._backoff_base * 2**attempt))

    def _retry_delay(self, error: ApiError, attempt: int) -> float | None:
        """Seconds to wait before retrying after ``error``; ``None`` to give up."""
        if not isinstance(error, RateLimited | ServerError | NetworkError):
            return None
        retry_after = error.retry_after if isinstance(error, RateLimited | ServerError) else None
        delay = max(retry_after or 0.0, self._backoff(attempt))
        if isinstance(error, RateLimited):
            self._pause(delay)
        if attempt >= self._retries or delay > self._max_retry_after:
            return None
        return delay

    def _pause(self, seconds: float) -> None:
        """Hold every request to the tenant for ``seconds`` (after a 429)."""
        until = self._clock() + timedelta(seconds=seconds)
        if self._paused_until is None or until > self._paused_until:
            self._paused_until = until
            log.warning("api_throttled", pause_seconds=round(seconds, 3))

    def _redactor_for(self, credentials: tuple[str, ...]) -> Redactor:
        """The configured secrets plus ``credentials``; kept for the next request with them."""
        if not credentials:
            return self._redactor
        redactor = self._redactors.get(credentials)
        if redactor is None:
            if len(self._redactors) >= _REDACTORS_KEPT:  # tokens renewed: the old ones go
                self._redactors.clear()
            redactor = self._redactors[credentials] = self._redactor.adding(credentials)
        return redactor

    async def _wait_for_gate(self, what: str) -> None:
        """Wait out a pause after a 429, or fail at once if it is too long to sit out."""
        while (until := self._paused_until) is not None:
            left = (until - self._clock()).total_seconds()
            if left > self._max_retry_after:
                msg = f"{what}: not sent; the tenant throttles, requests pause {left:.0f} s more"
                raise RateLimited(msg, retry_after=left)
            if left > 0:
                await self._sleep(left)
            if self._paused_until is until:
                self._paused_until = None

    async def _send(
        self,
        method: str,
        url: str,
        what: str,
        redact: Redactor,
        headers: Mapping[str, str],
        data: bytes | dict[str, str] | None,
        params: Mapping[str, str] | None,
        limit: int,
    ) -> Answer:
        """One attempt, within the concurrency and rate limits; counted and timed."""
        try:
            # A free slot is taken at once: ``async with`` would cost two trips round the
            # event loop per request, a tenth of a request's whole cost on loopback.
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._limiter.acquire()
        try:
            await self._rate.acquire()
            self._stats.requests += 1
            started = time.perf_counter()
            try:
                async with self._session.request(
                    method, url, headers=headers, data=data, params=params
                ) as response:
                    body = await _read_capped(response, limit, what)
                    retry_after = parse_retry_after(
                        response.headers.get("Retry-After"), self._clock()
                    )
                    return Answer(what, response.status, body, retry_after, redact)
            except TimeoutError:
                msg = f"{what}: no answer within the timeout"
                raise ApiTimeout(msg) from None
            except aiohttp.ClientPayloadError as exc:
                msg = f"{what}: broken answer body ({exc})"
                raise MalformedResponse(msg) from None
            except aiohttp.ClientError as exc:
                msg = f"{what}: {exc.__class__.__name__}: {exc}"
                raise NetworkError(msg) from None
            finally:
                self._stats.durations.observe(time.perf_counter() - started)
        finally:
            self._limiter.release()


async def _read_capped(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, or :class:`MalformedResponse` as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            msg = f"{what}: answer larger than {limit} bytes, not read"
            raise MalformedResponse(msg, status=response.status)
        chunks.append(chunk)
    return b"".join(chunks)


class AnswerMemo:
    """Each task's last answer (as a hash of its bytes) and what it parsed to.

    Most polls of a task get the very bytes of the previous answer back; those
    are not parsed again, and the object parsed last time is returned, so a
    caller can tell "the same answer" by identity.  The hash is Python's 64-bit
    SipHash of the body: two different answers about one task would have to
    collide, a 2**-64 chance per poll.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, BatchTaskInfo]] = {}

    def parse(
        self, task_id: int, body: bytes, parse: Callable[[bytes], BatchTaskInfo]
    ) -> BatchTaskInfo:
        """``parse(body)``, or what it gave last time for exactly this body."""
        digest = hash(body)
        last = self._last.get(task_id)
        if last is not None and last[0] == digest:
            return last[1]
        info = parse(body)
        self._last[task_id] = (digest, info)
        return info

    def forget(self, task_ids: Iterable[int]) -> None:
        """Drop what is kept for these tasks (no longer polled)."""
        for task_id in task_ids:
            self._last.pop(task_id, None)


class SuperOfficeClient:
    """Calls the batch-task endpoints of one tenant.

    Built from the ``[superoffice]`` section alone: it makes the auth scheme
    and the route to the tenant (fixed ``url``, or ``environment`` + ``tenant``)
    itself.  ``auth`` overrides the scheme; ``clock``, ``sleep`` and ``rng``
    let tests control time and jitter.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: SuperOfficeConfig,
        auth: Auth | None = None,
        *,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Sleep = anyio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._tz = config.tzinfo
        self.stats = RequestStats()
        self._transport = LimitedTransport(
            session,
            config,
            self.stats,
            clock=clock,
            sleep=sleep,
            rng=rng or random.Random(),  # noqa: S311 - jitter, not cryptography
        )
        environment = config.environment_base
        self._route: ApiRoute
        if config.tenant is not None:
            assert environment is not None  # guaranteed by config validation
            self._route = TenantResolver(
                self._transport, environment_url=environment, tenant=config.tenant, clock=clock
            )
        else:
            assert config.url is not None
            self._route = FixedRoute(config.url)
        #: The tenant-status API's view of the tenant (``None``: a fixed ``url``).
        self.tenant = self._route if isinstance(self._route, TenantResolver) else None
        login = None
        if environment is not None:
            login = Login(
                transport=self._transport, base_url=environment, tenant=config.tenant, clock=clock
            )
        self._auth = auth or auth_from_config(config.auth, login=login)

    async def get_task(self, task_id: int, memo: AnswerMemo | None = None) -> BatchTaskInfo:
        """``GET {url}/v1/BatchTask/{id}``: one task, or :class:`NotFound`.

        With a ``memo``, an answer identical to the task's last one is not parsed
        again: the object parsed then comes back.
        """

        def parse(body: bytes) -> BatchTaskInfo:
            return parse_task(body, tz=self._tz)

        return await self._call(
            "GET",
            f"/v1/BatchTask/{int(task_id)}",
            limit=MAX_TASK_BYTES,
            parse=parse if memo is None else lambda body: memo.parse(task_id, body, parse),
        )

    async def list_tasks_by_associates(
        self, associate_ids: Sequence[int] = (), select: Sequence[str] | None = None
    ) -> TaskListing:
        """``Agents/Batch/GetBatchTaskInfosByAssociates``: many tasks in one call.

        ``[]`` means all tasks, ``[0]`` system tasks, ``[-1]`` all user tasks.
        ``select`` trims the payload (SuperOffice nulls the other fields).
        Items are validated when asked for (:class:`TaskListing`).
        """
        params = {"$select": ",".join(select)} if select else None
        return await self._call(
            "POST",
            "/v1/Agents/Batch/GetBatchTaskInfosByAssociates",
            json={"AssociateIds": list(associate_ids)},
            params=params,
            limit=MAX_LIST_BYTES,
            parse=lambda body: parse_listing(body, tz=self._tz),
        )

    async def list_tasks_in_state(
        self,
        associate_ids: Sequence[int],
        state: str,
        select: Sequence[str] | None = None,
    ) -> TaskListing:
        """``Agents/Batch/GetBatchTaskInfosByAssociatesAndState``: the tasks in one state.

        ``associate_ids`` as for :meth:`list_tasks_by_associates`; ``state`` is a
        ``BatchTaskState`` name, or ``"All"``.
        """
        params = {"$select": ",".join(select)} if select else None
        return await self._call(
            "POST",
            "/v1/Agents/Batch/GetBatchTaskInfosByAssociatesAndState",
            json={"AssociateIds": list(associate_ids), "State": state},
            params=params,
            limit=MAX_LIST_BYTES,
            parse=lambda body: parse_listing(body, tz=self._tz),
        )

    async def stop_batch_job(self, task_id: int) -> bool:
        """``Agents/Batch/StopBatchJob``: ask the batch service to stop a task.

        ``True`` if it was stopped; ``False`` happens (the reference's own sample
        answer): the task was not stopped.  An answer that is not a boolean is a
        :class:`MalformedResponse`.
        """
        return await self._call(
            "POST",
            "/v1/Agents/Batch/StopBatchJob",
            json={"Id": int(task_id)},
            limit=MAX_TASK_BYTES,
            parse=_parse_bool,
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        limit: int,
        parse: Callable[[bytes], _T],
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> _T:
        """One API call: to the tenant's current host, renewing once on 401, moving once on 421."""
        renewed = moved = False
        while True:
            base = await self._route.api_base()
            authorization = await self._auth.authorization()
            try:
                return await self._transport.request(
                    method,
                    base,
                    path,
                    headers={"Authorization": authorization},
                    json=json,
                    params=params,
                    limit=limit,
                    parse=lambda answer: _read(answer, parse),
                )
            except Unauthorized as exc:
                if exc.status != 401:
                    raise
                if renewed:
                    msg = f"{exc}; refused again after renewing the credentials"
                    raise AuthenticationFailed(msg, status=401) from None
                if not await self._auth.renew(authorization):
                    msg = f"{exc}; the configured credentials cannot be renewed"
                    raise AuthenticationFailed(msg, status=401) from None
                renewed = True
            except Misdirected:
                if moved or not self._route.misdirected(base):
                    raise
                moved = True
            except (ServerError, NetworkError):
                self._route.suspect()
                raise


def _parse_bool(body: bytes) -> bool:
    """A JSON ``true`` or ``false``; anything else is a :class:`ParseError`."""
    try:
        value = jsonlib.loads(body)
    except ValueError:
        value = None
    if not isinstance(value, bool):
        msg = f"expected true or false, got {body[:60]!r}"
        raise ParseError(msg)
    return value


def _read(answer: Answer, parse: Callable[[bytes], _T]) -> _T:
    """Parse a 2xx answer; every other status or a body that does not parse is an error."""
    if answer.status >= _HTTP_CLIENT_ERROR:
        raise status_error(answer)
    try:
        return parse(answer.body)
    except ParseError as exc:
        # The message quotes the body (an excerpt, or SuperOffice's error object).
        raise MalformedResponse(
            answer.redact(str(exc)),
            status=answer.status,
            error_type=answer.redact(exc.error_type),
            error_message=answer.redact(exc.error_message),
        ) from None


@asynccontextmanager
async def open_client(
    config: SuperOfficeConfig,
    *,
    clock: Callable[[], datetime] = _utc_now,
    sleep: Sleep = anyio.sleep,
    rng: random.Random | None = None,
) -> AsyncIterator[SuperOfficeClient]:
    """A client with its own session, closed on exit."""
    async with open_session(config) as session:
        yield SuperOfficeClient(session, config, clock=clock, sleep=sleep, rng=rng)
