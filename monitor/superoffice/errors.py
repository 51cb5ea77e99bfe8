"""What can go wrong talking to the SuperOffice WebAPI, as a small hierarchy.

Callers decide by class (404 means the task is gone, 401 means renew the
credentials, 429 means wait), and label metrics by :attr:`ApiError.reason`.
:func:`status_error` is the one place an HTTP status becomes a class, for the
API as for the login and tenant-status hosts.

What a peer said is quoted through its :attr:`Answer.redact`, never as it is:
a peer that echoes the request would otherwise put its credentials into the
message (see :mod:`~monitor.superoffice.redact`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from monitor.superoffice.redact import Redactor

__all__ = [
    "Answer",
    "ApiError",
    "ApiTimeout",
    "AuthenticationFailed",
    "MalformedResponse",
    "Misdirected",
    "NetworkError",
    "NotFound",
    "RateLimited",
    "RequestRejected",
    "ServerError",
    "TenantUnavailable",
    "Unauthorized",
    "json_object",
    "status_error",
]

_HTTP_CLIENT_ERROR = 400
_HTTP_SERVER_ERROR = 500


class ApiError(Exception):
    """A request to the WebAPI that did not give a usable answer.

    ``error_type``/``error_message`` are SuperOffice's own ``ErrorType`` and
    ``ErrorMessage`` when the answer carried them.
    """

    #: A short, bounded label for metrics and logs.
    reason = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.error_message = error_message


class NotFound(ApiError):
    """404: the task does not exist (any more)."""

    reason = "not_found"


class Unauthorized(ApiError):
    """401/403: credentials missing, expired or without the right."""

    reason = "unauthorized"


class AuthenticationFailed(Unauthorized):
    """The credentials were refused and renewing them did not help (or cannot).

    The message says why: the refresh token or system user was refused, the
    JWT did not validate, or the API still said 401 after a renewal.  Polling
    should back off and report it; retrying at once only adds failed logins.
    """

    reason = "auth_failed"


class Misdirected(ApiError):
    """421: wrong numbered host for the tenant; resolve it again."""

    reason = "misdirected"


class RateLimited(ApiError):
    """429: throttled; ``retry_after`` seconds when the server said so."""

    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None, status: int = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx: the server failed (maintenance windows give 502/503)."""

    reason = "server_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retry_after: float | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> None:
        super().__init__(message, status=status, error_type=error_type, error_message=error_message)
        self.retry_after = retry_after


class RequestRejected(ApiError):
    """Any other 4xx: the request itself is wrong; retrying will not help."""

    reason = "rejected"


class NetworkError(ApiError):
    """No HTTP answer: connection refused or reset, DNS, TLS."""

    reason = "network"


class ApiTimeout(NetworkError):
    """No complete answer within the configured timeout."""

    reason = "timeout"


class MalformedResponse(ApiError):
    """An answer that is not the JSON it should be (or too big to read)."""

    reason = "malformed"


class TenantUnavailable(ApiError):
    """The tenant-status API says the tenant is not running (maintenance, suspended, …).

    ``state`` is the tenant's state as SuperOffice names it; ``retry_after`` is
    how many seconds remain before batchmon asks the status API again.
    """

    reason = "tenant_unavailable"

    def __init__(self, message: str, *, state: str, retry_after: float) -> None:
        super().__init__(message)
        self.state = state
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, read within its size cap."""

    #: The request, as ``"GET /v1/BatchTask/5"``, for messages (never a secret).
    what: str
    status: int
    #: Not in the repr: a login answer holds a fresh credential.
    body: bytes = field(repr=False)
    #: The ``Retry-After`` header in seconds, when the answer carried a readable one.
    retry_after: float | None = None
    #: Masks the secrets this request carried (and the configured ones) in the body's text:
    #: every message quoting the body goes through it.
    redact: Redactor = field(default_factory=Redactor, repr=False, compare=False)


def json_object(answer: Answer) -> dict[str, Any]:
    """The answer's body as a JSON object, else :class:`MalformedResponse` saying why."""
    try:
        data = json.loads(answer.body)
    except (ValueError, RecursionError):
        msg = f"{answer.what}: the answer is not JSON"
        raise MalformedResponse(msg, status=answer.status) from None
    if not isinstance(data, dict):
        msg = f"{answer.what}: the answer is a JSON {type(data).__name__}, not an object"
        raise MalformedResponse(msg, status=answer.status)
    return data


def error_fields(answer: Answer) -> tuple[str | None, str | None]:
    """SuperOffice's ``ErrorType``/``ErrorMessage`` from an error answer, secrets masked."""
    try:
        data = json.loads(answer.body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    error_type, error_message = data.get("ErrorType"), data.get("ErrorMessage")
    return (
        answer.redact(str(error_type)) if error_type is not None else None,
        answer.redact(str(error_message)) if error_message is not None else None,
    )


def status_error(answer: Answer) -> ApiError:
    """The error an answer's status (400 or more) means, quoting SuperOffice's reason."""
    status = answer.status
    error_type, error_message = error_fields(answer)
    said = f": {error_type}: {error_message}" if error_type or error_message else ""
    message = f"{answer.what}: HTTP {status}{said}"
    if status < _HTTP_CLIENT_ERROR:
        msg = f"status_error needs an error status, got {status}"
        raise ValueError(msg)
    if status == 429:
        return RateLimited(message, retry_after=answer.retry_after)
    if status >= _HTTP_SERVER_ERROR:
        return ServerError(
            message,
            status=status,
            retry_after=answer.retry_after,
            error_type=error_type,
            error_message=error_message,
        )
    kind = _ERROR_BY_STATUS.get(status, RequestRejected)
    return kind(message, status=status, error_type=error_type, error_message=error_message)


#: 4xx statuses with a class of their own; any other 4xx is :class:`RequestRejected`.
_ERROR_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    421: Misdirected,
}
