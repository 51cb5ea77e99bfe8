"""What every sink may need besides its own config (a leaf: sinks import it, it imports none)."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from monitor.links import DEFAULT_TENANT

__all__ = ["SinkContext"]


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
