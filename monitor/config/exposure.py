"""Secrets that other users of the machine can read: warnings, not refusals.

A password inline in a world-readable ``batchmon.toml``, or a token file left at
mode 0644, is readable by every account on the host.  ``check-config`` and
``run`` say so (and what to do); they still run, as the file may sit on a
single-user machine.  The decision (:func:`exposure_warnings`) is pure; reading
the file modes is :func:`secret_exposure`'s part.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from monitor.config.base import secret_file
from monitor.config.load import Config, read_toml

__all__ = ["SecretFile", "exposure_warnings", "secret_exposure", "section_path"]

#: Permission bits that let the file's group or others read it.
_READABLE_BY_OTHERS = 0o044


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A secret read from a file: the key that names it, the file and its mode."""

    key: str
    path: Path
    mode: int


def exposure_warnings(
    config_file: Path, config_mode: int, inline: Sequence[str], files: Sequence[SecretFile]
) -> list[str]:
    """One line per secret others can read: inline in a readable config, or a readable file."""
    warnings = []
    if inline and config_mode & _READABLE_BY_OTHERS:
        warnings.append(
            f"{config_file} can be read by {_who(config_mode)} (mode {config_mode & 0o777:04o})"
            f" and holds secrets inline: {', '.join(inline)}; give them as X_file"
            f" (or chmod 600 {config_file})"
        )
    warnings.extend(
        f"{secret.key}: '{secret.path}' can be read by {_who(secret.mode)}"
        f" (mode {secret.mode & 0o777:04o}); chmod 600 it"
        for secret in files
        if secret.mode & _READABLE_BY_OTHERS
    )
    return warnings


def _who(mode: int) -> str:
    group, others = bool(mode & 0o040), bool(mode & 0o004)
    return "its group and all users" if group and others else "all users" if others else "its group"


def secret_exposure(
    path: Path, config: Config, *, credentials_dir: Path | None = None
) -> list[str]:
    """:func:`exposure_warnings` for the config file at ``path`` (already validated as ``config``)."""
    data = read_toml(path)
    base_dir = path.absolute().parent
    inline, files = [], []
    for key, form, value in _secret_keys(config, data, ""):
        if form == "inline":
            inline.append(key)
            continue
        file = secret_file(str(value), base_dir, credentials_dir)
        try:
            files.append(SecretFile(key, file, os.stat(file).st_mode))
        except OSError:
            continue  # read a moment ago; gone now is not this check's business
    return exposure_warnings(path, os.stat(path).st_mode, inline, files)


def section_path(path: str, name: str, index: int, item: object) -> str:
    """``sinks["ops"]`` for a named list entry, ``watch.discover[0]`` for the rest."""
    label = getattr(item, "name", None) if name in ("sinks", "tenants") else None
    return f'{path}{name}["{label}"]' if isinstance(label, str) else f"{path}{name}[{index}]"


def _carries_secret(name: str, value: object) -> bool:
    """Whether an inline value holds a secret: a URL only with a path, a query or a login
    (a chat webhook's path is its key; an Alertmanager's ``http://host:9093`` is none)."""
    if name != "url" or not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.username or parts.password or parts.query or parts.path.strip("/"))


def _secret_keys(
    model: BaseModel, data: Mapping[str, object], path: str
) -> Iterator[tuple[str, str, object]]:
    """``(key path, "inline" or "file", value)`` for every secret of ``model`` given inline or
    as a file in ``data``, the raw section it was validated from."""
    for name in getattr(type(model), "_secrets", ()):
        if not isinstance(getattr(model, name, None), SecretStr):
            continue  # a plain value that may come from a file (superoffice.url)
        if name in data and _carries_secret(name, data[name]):
            yield f"{path}{name}", "inline", data[name]
        if f"{name}_file" in data:
            yield f"{path}{name}_file", "file", data[f"{name}_file"]
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        value, raw = getattr(model, name), data.get(key)
        if isinstance(value, BaseModel) and isinstance(raw, Mapping):
            yield from _secret_keys(value, raw, f"{path}{key}.")
        elif isinstance(value, list) and isinstance(raw, list):
            for index, (item, raw_item) in enumerate(zip(value, raw, strict=False)):
                if isinstance(item, BaseModel) and isinstance(raw_item, Mapping):
                    yield from _secret_keys(
                        item, raw_item, section_path(path, key, index, item) + "."
                    )
