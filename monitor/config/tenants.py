"""``[[tenants]]``: the SuperOffice tenants one batchmon watches, each with its own API and tasks.

A configuration gives either ``[[tenants]]`` entries or the single ``[superoffice]`` +
``[watch]`` pair, which is one tenant named ``default``.  A tenant's name is a label value
(metrics, Alertmanager, CloudEvents ``source``, URLs), so it is kept to what those all accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Final

from pydantic import AfterValidator, Field

from monitor.config.base import _Section
from monitor.config.poll import WatchConfig
from monitor.config.superoffice import SuperOfficeConfig
from monitor.links import DEFAULT_TENANT

__all__ = ["DEFAULT_TENANT", "MAX_SHARDS", "TenantConfig", "TenantName", "Unit"]

#: The most shards one tenant is split into.
MAX_SHARDS: Final = 16

_TENANT_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _label_safe(name: str) -> str:
    """Lower-case letters, digits, ``-`` and ``_``, 1 to 63 characters, starting alphanumeric."""
    if not _TENANT_NAME_RE.fullmatch(name):
        message = (
            f"{name!r} is not a usable tenant name: 1-63 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit (it becomes a label and part of URLs)"
        )
        raise ValueError(message)
    return name


#: A tenant's name as configured: safe in labels, URLs and file names.
TenantName = Annotated[str, AfterValidator(_label_safe)]


class TenantConfig(_Section):
    """One tenant: its API (``[tenants.superoffice]``) and its tasks (``[tenants.watch]``)."""

    name: TenantName
    superoffice: SuperOfficeConfig
    watch: WatchConfig = Field(default_factory=WatchConfig)
    #: With replicas: this many parts of the tenant's tasks (split by id hash), each with a
    #: lease of its own, so that one huge tenant is spread over the replicas.
    shards: Annotated[int, Field(ge=1, le=MAX_SHARDS)] = 1

    @property
    def units(self) -> list[Unit]:
        """What replicas lease and run: the tenant, or each of its shards."""
        if self.shards == 1:
            return [Unit(self.name, self, 1, 1)]
        n = self.shards
        return [Unit(f"{self.name}-{k}of{n}", self, k, n) for k in range(1, n + 1)]


@dataclass(frozen=True, slots=True)
class Unit:
    """A tenant, or one shard of it: one pipeline, one lease, one part of the store.

    A shard is named ``<tenant>-<k>of<n>`` (``acme-2of3``) wherever a tenant is named: pages,
    ``?tenant=``, labels, messages; it watches the tenant's tasks whose id hash falls to it.
    """

    name: str
    tenant: TenantConfig
    number: int
    count: int
