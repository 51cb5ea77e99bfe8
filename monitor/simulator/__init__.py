"""A fake SuperOffice WebAPI: a real aiohttp server whose batch tasks progress by themselves.

``batchmon demo`` and ``batchmon simulate`` run it so the daemon has something to watch without a
tenant; the tests run it on loopback so the client and the poller meet real HTTP, real JSON and
scripted faults instead of mocks.  Its answers follow the vendor's OpenAPI description of
``BatchTaskInfo`` and what SuperOffice documents about errors, dates, ``$select`` and
``AssociateIds``.

Time never comes from a sleep: every request first advances the :class:`Scenario` to the
simulator's clock, so a test with a manual clock replays a timeline exactly.

SuperOffice Online is opt-in (:class:`OnlineTenant`, :class:`OAuthApp`, :class:`SystemUserApp`):
the tenant-status API and numbered hosts that move, the OAuth token endpoint and the system user
login, with tokens and tickets that expire on the same clock.  :class:`Fleet` serves many such
tenants at once, each under ``/{context}/api`` with tasks of its own.  Faults are scripted per request:
error statuses and bodies, 429/503 with ``Retry-After``, hangs and truncated bodies.
"""

from monitor.simulator.auth import OAuthApp, SystemUserApp
from monitor.simulator.fleet import Fleet, FleetTenant
from monitor.simulator.scenario import Scenario
from monitor.simulator.server import Simulator
from monitor.simulator.tasks import TENANT_TZ, SimTask
from monitor.simulator.tenant import RUNNING_STATES, OnlineTenant

__all__ = [
    "RUNNING_STATES",
    "TENANT_TZ",
    "Fleet",
    "FleetTenant",
    "OAuthApp",
    "OnlineTenant",
    "Scenario",
    "SimTask",
    "Simulator",
    "SystemUserApp",
]
