"""The ``Authorization`` header for each way SuperOffice accepts a caller.

An :class:`Auth` gives the header value for the next request.  The static
schemes here never change it; schemes that renew tokens (OAuth, system
user) fit the same protocol.
"""

from __future__ import annotations

import base64
from typing import Protocol

from monitor.config import AuthConfig

__all__ = ["Auth", "BasicAuth", "BearerAuth", "TicketAuth", "auth_from_config"]


class Auth(Protocol):
    """Produces the ``Authorization`` header value."""

    async def authorization(self) -> str:
        """The header value for the next request."""
        ...


class BasicAuth:
    """``Basic`` with username and password (onsite installations)."""

    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._value = f"Basic {token}"

    async def authorization(self) -> str:
        """The header value; it never changes."""
        return self._value

    def __repr__(self) -> str:
        return "BasicAuth(********)"


class TicketAuth:
    """``SOTicket 7T:...``: a ticket from a login (send ``SO-AppToken`` along)."""

    def __init__(self, ticket: str) -> None:
        self._value = f"SOTicket {ticket}"

    async def authorization(self) -> str:
        """The header value; it never changes."""
        return self._value

    def __repr__(self) -> str:
        return "TicketAuth(********)"


class BearerAuth:
    """``Bearer 8A:...``: a static access token (Online)."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    async def authorization(self) -> str:
        """The header value; it never changes."""
        return self._value

    def __repr__(self) -> str:
        return "BearerAuth(********)"


def auth_from_config(config: AuthConfig) -> Auth:
    """The scheme a validated ``[superoffice.auth]`` section describes."""
    match config.type:
        case "basic":
            assert config.username is not None  # guaranteed by config validation
            assert config.password is not None
            return BasicAuth(config.username, config.password.get_secret_value())
        case "ticket":
            assert config.ticket is not None
            return TicketAuth(config.ticket.get_secret_value())
        case "bearer":
            assert config.token is not None
            return BearerAuth(config.token.get_secret_value())
