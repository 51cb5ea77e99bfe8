"""What every sink may need besides its own config (a leaf: sinks import it, it imports none)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import aiohttp

__all__ = ["DEFAULT_TENANT", "SinkContext", "named_tenant"]

#: The tenant of a configuration without ``[[tenants]]``: messages and links do not name it,
#: so a single-tenant setup reads as it always did.
DEFAULT_TENANT: Final = "default"


def named_tenant(tenant: str) -> str | None:
    """The tenant as messages and links name it: ``None`` for the default tenant."""
    return None if tenant == DEFAULT_TENANT else tenant


class SinkContext:
    """What every sink may need besides its own config."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        status_url: str | None,
        in_maintenance: Callable[[], bool] = lambda: False,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        #: The one HTTP session of all sinks.
        self.session = session
        #: The status page's public URL, for links in messages (``http.public_url``).
        self.status_url = status_url
        #: Whether a maintenance is under way (Alertmanager marks the alerts it holds back).
        self.in_maintenance = in_maintenance
        #: The tenant whose events these sinks deliver (sinks are built per tenant).
        self.tenant = tenant
