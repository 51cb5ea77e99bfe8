"""What can go wrong talking to the SuperOffice WebAPI, as a small hierarchy.

Callers decide by class (404 means the task is gone, 401 means renew the
credentials, 429 means wait), and label metrics by :attr:`ApiError.reason`.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "ApiTimeout",
    "MalformedResponse",
    "Misdirected",
    "NetworkError",
    "NotFound",
    "RateLimited",
    "RequestRejected",
    "ServerError",
    "Unauthorized",
]


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
