"""The whole configuration, :class:`Config`, and the ways in and out of it.

In: a TOML file (:func:`load_config`) or already parsed data (:func:`parse_config`), every
problem collected into one :class:`~monitor.config.errors.ConfigError`.  Out: a dump with
every secret masked (:func:`redacted`) for ``batchmon check-config``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Self

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from monitor.config.base import _Section
from monitor.config.errors import ConfigError, _describe, _invalid, _problem
from monitor.config.maintenance import MaintenanceConfig
from monitor.config.poll import PollConfig, WatchConfig
from monitor.config.service import HttpConfig, LogConfig, StateConfig
from monitor.config.sinks import SinkConfig, _default_sinks
from monitor.config.superoffice import SuperOfficeConfig
from monitor.config.tenants import DEFAULT_TENANT, TenantConfig, Unit

__all__ = ["Config", "load_config", "parse_config", "read_toml", "redacted"]

#: What :func:`redacted` shows instead of a secret.
_MASK: Final = "********"


class Config(_Section):
    """The whole configuration.

    ``sinks`` is never empty: when none are configured (or ``sinks = []``), a single
    ``log`` sink named ``"log"`` receives every event.
    """

    #: The single tenant's API (``[superoffice]``), when no ``[[tenants]]`` are given.
    given_superoffice: SuperOfficeConfig | None = Field(default=None, alias="superoffice")
    #: The single tenant's tasks (``[watch]``).
    given_watch: WatchConfig | None = Field(default=None, alias="watch")
    #: ``[[tenants]]``: several tenants, each with its own API and tasks.
    tenants: list[TenantConfig] = Field(default_factory=list)
    poll: PollConfig = Field(default_factory=PollConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    sinks: list[SinkConfig] = Field(default_factory=_default_sinks)
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)

    @field_validator("tenants")
    @classmethod
    def _tenants_named_uniquely(cls, tenants: list[TenantConfig]) -> list[TenantConfig]:
        """A tenant's name keys its tasks, leases and labels, so two must not share one."""
        seen: set[str] = set()
        problems = []
        for index, tenant in enumerate(tenants):
            if tenant.name in seen:
                problems.append(_problem((index, "name"), f"duplicate tenant name {tenant.name!r}"))
            seen.add(tenant.name)
        if problems:
            raise _invalid(cls.__name__, problems)
        return tenants

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        """``[superoffice]`` + ``[watch]`` (one tenant) or ``[[tenants]]``, never both."""
        if self.tenants and (self.given_superoffice or self.given_watch):
            key = "superoffice" if self.given_superoffice else "watch"
            message = (
                "give either [superoffice] and [watch] (one tenant) or [[tenants]] entries "
                "with their own [tenants.superoffice] and [tenants.watch], not both"
            )
            raise _invalid(type(self).__name__, [_problem((key,), message)])
        problems = self._shard_problems()
        if problems:
            raise _invalid(type(self).__name__, problems)
        names = [tenant.name for tenant in self.tenant_list]
        problems = [
            _problem(
                ("sinks", index, "tenants"),
                f"matches none of the tenants ({', '.join(names)}): the sink would never be used",
            )
            for index, sink in enumerate(self.sinks)
            if not any(sink.serves(name) for name in names)
        ]
        if problems:
            raise _invalid(type(self).__name__, problems)
        return self

    def _shard_problems(self) -> list[InitErrorDetails]:
        """Shards spread one tenant over replicas: they need PostgreSQL, and their names
        (``acme-2of3``) must be usable and no other tenant's."""
        names = {tenant.name for tenant in self.tenants}
        problems = []
        for index, tenant in enumerate(self.tenants):
            if tenant.shards == 1:
                continue
            where = ("tenants", index, "shards")
            if self.state.url is None:
                message = "shards spread a tenant over replicas: give [state] url (PostgreSQL)"
                problems.append(_problem(where, message))
            for unit in tenant.units:
                if unit.name in names or len(unit.name) > 63:
                    message = f"the shard name {unit.name!r} is another tenant's or too long"
                    problems.append(_problem(where, message))
        return problems

    @property
    def units(self) -> list[Unit]:
        """Every tenant, or each of its shards: the pipelines and leases there are."""
        return [unit for tenant in self.tenant_list for unit in tenant.units]

    @classmethod
    def _missing_keys(
        cls, given: Mapping[str, object], unresolved: set[tuple[str | int, ...]]
    ) -> list[InitErrorDetails]:
        """No tenant at all: said with the other problems of the file, not after them."""
        if "superoffice" in given or given.get("tenants"):
            return []
        return [_problem(("superoffice",), "required, but not given (or give [[tenants]] entries)")]

    @property
    def tenant_list(self) -> list[TenantConfig]:
        """The tenants to watch: ``[[tenants]]``, or the one named ``default``."""
        if self.tenants:
            return self.tenants
        assert self.given_superoffice is not None  # by _one_form
        watch = self.given_watch or WatchConfig()
        return [TenantConfig(name=DEFAULT_TENANT, superoffice=self.given_superoffice, watch=watch)]

    def tenant(self, name: str | None) -> TenantConfig:
        """The tenant called ``name``; ``None`` means the only one (:class:`LookupError` if
        there are several, or none of that name)."""
        tenants = self.tenant_list
        if name is None:
            if len(tenants) == 1:
                return tenants[0]
            names = ", ".join(t.name for t in tenants)
            raise LookupError(f"this configuration watches several tenants; name one of {names}")
        for tenant in tenants:
            if tenant.name == name:
                return tenant
        names = ", ".join(t.name for t in tenants)
        raise LookupError(f"no tenant {name!r} in this configuration (it has {names})")

    @property
    def superoffice(self) -> SuperOfficeConfig:
        """The first (in the single form: the only) tenant's API."""
        return self.tenant_list[0].superoffice

    @property
    def watch(self) -> WatchConfig:
        """The first (in the single form: the only) tenant's tasks."""
        return self.tenant_list[0].watch

    @field_validator("sinks")
    @classmethod
    def _named_uniquely(cls, sinks: list[SinkConfig]) -> list[SinkConfig]:
        """Sink names identify outbox queues, so two sinks must not share one."""
        if not sinks:
            return _default_sinks()
        seen: set[str] = set()
        problems = []
        for index, sink in enumerate(sinks):
            if sink.name in seen:
                message = f"duplicate sink name {sink.name!r}"
                problems.append(_problem((index, "name"), message))
            seen.add(sink.name)
        if problems:
            raise _invalid(cls.__name__, problems)
        return sinks


# --- loading --------------------------------------------------------------------------------


def load_config(path: Path, *, credentials_dir: Path | None = None) -> Config:
    """Read, parse and validate the TOML file at ``path``; any problem is a :class:`ConfigError`.

    Relative paths in the file (``*_file`` secrets, ``state.path``) are resolved against the
    file's directory; ``*_file`` secrets against ``credentials_dir``, else
    ``$CREDENTIALS_DIRECTORY`` when it is set.
    """
    data = read_toml(path)
    return parse_config(data, base_dir=path.absolute().parent, credentials_dir=credentials_dir)


def read_toml(path: Path) -> dict[str, object]:
    """The TOML file at ``path`` as data; unreadable or not TOML is a :class:`ConfigError`."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or type(exc).__name__}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = re.sub(r"\(at (line \d+, column \d+)\)", r"(\1)", str(exc))
        raise ConfigError([f"{path}: TOML syntax error: {message}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to be a batchmon configuration"]) from None
    return data


def parse_config(
    data: Mapping[str, object], *, base_dir: Path, credentials_dir: Path | None = None
) -> Config:
    """Validate an already parsed configuration; relative paths resolve against ``base_dir``
    (``X_file`` secrets against ``credentials_dir`` when given)."""
    context = {"base_dir": base_dir, "credentials_dir": credentials_dir}
    try:
        return Config.model_validate(dict(data), context=context)
    except ValidationError as exc:
        names = {"sinks": _names(data.get("sinks")), "tenants": _names(data.get("tenants"))}
        problems = [_describe(error, names) for error in exc.errors()]
    # Raised out here so that the pydantic error, which holds the inputs (secrets among them),
    # is not even the ConfigError's __context__.
    raise ConfigError(problems)


def _names(entries: object) -> list[object]:
    """The raw ``name`` of each entry of a list of tables, for messages about them."""
    if not isinstance(entries, list):
        return []
    return [entry.get("name") if isinstance(entry, Mapping) else None for entry in entries]


def redacted(config: Config) -> dict[str, object]:
    """``config`` as JSON-able data for ``batchmon check-config``, every secret masked."""
    return {
        field.alias or name: _redact(getattr(config, name))
        for name, field in Config.model_fields.items()
    }


def _redact(value: object) -> object:
    """Dump one value, recursing into sections and lists."""
    if isinstance(value, SecretStr):
        return _MASK
    if isinstance(value, BaseModel):
        return {name: _redact(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
