"""The only HTTP client for the SuperOffice WebAPI.

It takes one :class:`aiohttp.ClientSession` (made once, at start-up, by
:func:`open_session`), sends the headers SuperOffice documents, reads answers
up to a size cap, and turns every failure into one
:mod:`~monitor.superoffice.errors` class.  It returns parsed models.
"""

from __future__ import annotations

import json as jsonlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp

from monitor import __version__
from monitor.config import SuperOfficeConfig
from monitor.retry import parse_retry_after
from monitor.superoffice.auth import Auth
from monitor.superoffice.errors import (
    ApiError,
    ApiTimeout,
    MalformedResponse,
    Misdirected,
    NetworkError,
    NotFound,
    RateLimited,
    RequestRejected,
    ServerError,
    Unauthorized,
)
from monitor.superoffice.models import BatchTaskInfo, ParseError, parse_task, parse_task_list

__all__ = ["RequestStats", "SuperOfficeClient", "open_session"]

#: Answers larger than this are refused: a task is a few KB, and a hostile or
#: broken server must not make batchmon buffer gigabytes.
MAX_TASK_BYTES = 1 << 20
MAX_LIST_BYTES = 64 << 20
_HTTP_SERVER_ERROR = 500
_T = TypeVar("_T")
_HTTP_CLIENT_ERROR = 400


class RequestStats:
    """Counters of requests made, for metrics (read by the collector)."""

    def __init__(self) -> None:
        self.requests = 0
        self.failures: Counter[str] = Counter()
        self.seconds_total = 0.0


def open_session(config: SuperOfficeConfig) -> aiohttp.ClientSession:
    """The one session for the WebAPI, with its timeouts and fixed headers."""
    headers = {
        "Accept": "application/json",
        "User-Agent": f"batchmon/{__version__}",
    }
    optional = {
        "Accept-Language": config.accept_language,
        "SO-Language": config.so_language,
        "SO-Culture": config.so_culture,
        "SO-TimeZone": config.so_time_zone,
        "SO-AppToken": config.app_token.get_secret_value() if config.app_token else None,
    }
    headers.update({k: v for k, v in optional.items() if v})
    timeout = aiohttp.ClientTimeout(total=config.timeout, connect=config.connect_timeout)
    connector = aiohttp.TCPConnector(limit=config.max_concurrency)
    return aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=connector, raise_for_status=False
    )


class SuperOfficeClient:
    """Calls the batch-task endpoints of one tenant."""

    def __init__(
        self, session: aiohttp.ClientSession, config: SuperOfficeConfig, auth: Auth
    ) -> None:
        self._session = session
        self._base = config.url.rstrip("/")
        self._tz = config.tzinfo
        self._auth = auth
        self.stats = RequestStats()

    async def get_task(self, task_id: int) -> BatchTaskInfo:
        """``GET {url}/v1/BatchTask/{id}``: one task, or :class:`NotFound`."""
        return await self._call(
            "GET",
            f"/v1/BatchTask/{int(task_id)}",
            limit=MAX_TASK_BYTES,
            parse=lambda body: parse_task(body, tz=self._tz),
        )

    async def list_tasks_by_associates(
        self, associate_ids: Sequence[int] = (), select: Sequence[str] | None = None
    ) -> tuple[list[BatchTaskInfo], list[ParseError]]:
        """``Agents/Batch/GetBatchTaskInfosByAssociates``: many tasks in one call.

        ``[]`` means all tasks, ``[0]`` system tasks, ``[-1]`` all user tasks.
        ``select`` trims the payload (SuperOffice nulls the other fields).
        Returns the tasks and the items that could not be used.
        """
        params = {"$select": ",".join(select)} if select else None
        return await self._call(
            "POST",
            "/v1/Agents/Batch/GetBatchTaskInfosByAssociates",
            json={"AssociateIds": list(associate_ids)},
            params=params,
            limit=MAX_LIST_BYTES,
            parse=lambda body: parse_task_list(body, tz=self._tz),
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
        """Send one request and parse a 2xx answer; every failure is an :class:`ApiError`."""
        self.stats.requests += 1
        started = time.perf_counter()
        try:
            body = await self._exchange(method, path, limit=limit, json=json, params=params)
            try:
                result = parse(body)
            except ParseError as exc:
                raise _malformed(exc) from None
        except ApiError as exc:
            self.stats.failures[exc.reason] += 1
            raise
        finally:
            self.stats.seconds_total += time.perf_counter() - started
        return result

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        limit: int,
        json: Any,
        params: dict[str, str] | None,
    ) -> bytes:
        headers = {"Authorization": await self._auth.authorization()}
        data = jsonlib.dumps(json).encode() if json is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = self._base + path
        try:
            async with self._session.request(
                method, url, headers=headers, data=data, params=params
            ) as response:
                body = await response.content.read(limit + 1)
                if len(body) > limit:
                    msg = f"{method} {path}: answer larger than {limit} bytes, not read"
                    raise MalformedResponse(msg, status=response.status)
                if response.status >= _HTTP_CLIENT_ERROR:
                    raise _status_error(method, path, response, body)
                return body
        except TimeoutError:
            msg = f"{method} {path}: no answer within the timeout"
            raise ApiTimeout(msg) from None
        except aiohttp.ClientPayloadError as exc:
            msg = f"{method} {path}: broken answer body ({exc})"
            raise MalformedResponse(msg) from None
        except aiohttp.ClientError as exc:
            msg = f"{method} {path}: {exc.__class__.__name__}: {exc}"
            raise NetworkError(msg) from None


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    """SuperOffice's ``ErrorType``/``ErrorMessage`` from an error body, if any."""
    try:
        data = jsonlib.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    error_type, error_message = data.get("ErrorType"), data.get("ErrorMessage")
    return (
        str(error_type) if error_type is not None else None,
        str(error_message) if error_message is not None else None,
    )


def _status_error(
    method: str, path: str, response: aiohttp.ClientResponse, body: bytes
) -> ApiError:
    status = response.status
    error_type, error_message = _error_fields(body)
    said = f": {error_type}: {error_message}" if error_type or error_message else ""
    msg = f"{method} {path}: HTTP {status}{said}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
    details: dict[str, Any] = {
        "status": status,
        "error_type": error_type,
        "error_message": error_message,
    }
    if status == 404:
        return NotFound(msg, **details)
    if status in (401, 403):
        return Unauthorized(msg, **details)
    if status == 421:
        return Misdirected(msg, **details)
    if status == 429:
        return RateLimited(msg, retry_after=retry_after)
    if status >= _HTTP_SERVER_ERROR:
        return ServerError(msg, retry_after=retry_after, **details)
    return RequestRejected(msg, **details)


def _malformed(exc: ParseError) -> MalformedResponse:
    return MalformedResponse(str(exc), error_type=exc.error_type, error_message=exc.error_message)
