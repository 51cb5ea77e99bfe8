"""Where a message or an alert sends a person: the task's own page on the status site.

Task ids are unique only within a tenant, so a page of a tenant other than the default one
names it in its query (``?tenant=acme``); the default tenant's pages (and messages) do not,
so a single-tenant configuration links and reads as it always did.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["DEFAULT_TENANT", "named_tenant", "task_url", "with_tenant"]

#: The tenant of a configuration without ``[[tenants]]``.
DEFAULT_TENANT: Final = "default"


def named_tenant(tenant: str) -> str | None:
    """The tenant as messages and links name it: ``None`` for the default tenant."""
    return None if tenant == DEFAULT_TENANT else tenant


def with_tenant(url: str, tenant: str | None) -> str:
    """``url`` with ``tenant=NAME`` added to its query; unchanged for ``None`` (the default
    tenant, whose pages need no query)."""
    if tenant is None:
        return url
    parts = urlsplit(url)
    param = f"tenant={quote(tenant, safe='')}"
    return urlunsplit(parts._replace(query=f"{parts.query}&{param}" if parts.query else param))


def task_url(public_url: str | None, task_id: int | None, tenant: str | None = None) -> str | None:
    """``{public_url}/tasks/{id}``; ``public_url`` itself without a task; ``None`` without one.

    The path is joined, so a status site under a prefix (``https://host/batchmon``)
    keeps it.  Ids that cannot be a task (0 in a test message) get the main page.
    A ``tenant`` other than the default one is named in the query (``?tenant=acme``):
    task ids are unique only within a tenant.
    """
    if public_url is None:
        return None
    if task_id is None or task_id <= 0:
        return with_tenant(public_url, tenant)
    parts = urlsplit(public_url)
    page = urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/tasks/{task_id}"))
    return with_tenant(page, tenant)
