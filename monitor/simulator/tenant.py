"""SuperOffice Online's tenant routing: the tenant-status API and the numbered hosts that move.

Apart from the server so everything that makes a tenant "online" sits together: where it lives
(``/{node}/{context_id}/api``), whether it runs, what ``GET /api/state/{context}`` says about
it, and how a host refuses a request that is not for its running tenant (404, 421, 503).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from monitor.simulator.responses import error_response
from monitor.simulator.tasks import DateForm
from monitor.superoffice.tenant import TENANT_STATES

__all__ = ["RUNNING_STATES", "OnlineTenant", "set_tenant_state", "tenant_refusal", "tenant_status"]

#: Tenant states in which the API answers (the status API's ``IsRunning``).
RUNNING_STATES = frozenset({"Running", "OnlineMaintenance"})

_VERSION = "Release_11.10_2026.02.24-02"


@dataclass(slots=True, kw_only=True)
class OnlineTenant:
    """A SuperOffice Online tenant, found through the tenant-status API.

    Its API lives at ``/{node}/{context_id}/api`` on the simulator, mirroring
    ``https://online3.superoffice.com/Cust12345/api``.  Tests change it in place:
    setting ``node`` moves the tenant (the old path then answers 421), setting
    ``state`` to e.g. ``"OfflineMaintenance"`` takes the API down (503).
    """

    context_id: str = "Cust12345"
    #: The numbered host the tenant lives on; "": right under the environment's host
    #: (``/{context_id}/api``), as the many-tenant simulator serves its tenants.
    node: str = "online1"
    #: As the status API names it; the API answers in :data:`RUNNING_STATES` only.
    state: str = "Running"
    #: The status API's ``ValidUntil`` is this many seconds after each answer.
    valid_for: float = 600.0
    #: The database serial number: a system user JWT's audience is ``spn:{serial}``.
    serial: str = "1801550193"

    @property
    def is_running(self) -> bool:
        """Whether the API answers (the status API's ``IsRunning``)."""
        return self.state in RUNNING_STATES


def tenant_refusal(tenant: OnlineTenant | None, node: str, context: str) -> web.Response | None:
    """What a numbered host says to a request that is not for its running tenant."""
    if tenant is None or context.casefold() != tenant.context_id.casefold():
        return error_response(404, "SoTenantNotFoundException", f"Unknown tenant {context}")
    if node != tenant.node:
        return error_response(421, "MisdirectedRequest", "Wrong subdomain used to access tenant")
    if not tenant.is_running:
        message = f"Tenant {tenant.context_id} is {tenant.state}"
        return error_response(503, "SoTenantUnavailableException", message)
    return None


def tenant_status(
    tenant: OnlineTenant | None, context: str, now: datetime, origin: str
) -> dict[str, object]:
    """``GET /api/state/{context}``'s answer at ``now``: where the tenant lives, whether it runs."""
    valid_until = DateForm(UTC, "Z").render(
        now + timedelta(seconds=tenant.valid_for if tenant else 600.0)
    )
    if tenant is None or context.casefold() != tenant.context_id.casefold():
        return {
            "ContextIdentifier": context,
            "Endpoint": None,
            "State": "Unknown",
            "IsRunning": False,
            "ValidUntil": valid_until,
            "Api": None,
            "Version": None,
        }
    endpoint = "/".join(part for part in (origin, tenant.node, tenant.context_id) if part)
    return {
        "ContextIdentifier": tenant.context_id,
        "Endpoint": endpoint,
        "State": tenant.state,
        "IsRunning": tenant.is_running,
        "ValidUntil": valid_until,
        "Api": endpoint + "/api",
        "Version": _VERSION,
    }


async def set_tenant_state(
    request: web.Request, tenant: OnlineTenant | None, now: datetime
) -> web.Response:
    """``PUT /simulator/tenant`` ``{"state": "OfflineMaintenance", "valid_for": 60}``: the
    simulator's control of its tenant, for tests and demos; answers the new status."""
    if tenant is None:
        return error_response(404, "NoTenant", "The simulator serves no online tenant")
    try:
        body = await request.json()
    except ValueError:
        body = None
    state = body.get("state") if isinstance(body, dict) else None
    valid_for = body.get("valid_for", tenant.valid_for) if isinstance(body, dict) else None
    if (
        state not in TENANT_STATES
        or not isinstance(valid_for, int | float)
        or isinstance(valid_for, bool)
        or valid_for <= 0
    ):
        message = (
            'Expected {"state": ..., "valid_for": seconds (optional)} with state one of '
            + ", ".join(TENANT_STATES)
        )
        return error_response(400, "BadRequest", message)
    tenant.state, tenant.valid_for = state, float(valid_for)
    origin = f"{request.scheme}://{request.host}"
    return web.json_response(tenant_status(tenant, tenant.context_id, now, origin))
