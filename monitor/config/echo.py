"""The configuration as ``batchmon check-config`` prints it: TOML, secrets masked.

What batchmon will run with, defaults included, in the file's own language, so
that it can be read next to the file (and read back: it is valid TOML).  Keys
without a value are left out rather than shown as nulls; durations are written
with units (``"15m"``) and rates per second (``"1/s"``), as one would write them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, get_args

from pydantic import BaseModel, BeforeValidator, SecretStr
from pydantic.fields import FieldInfo

from monitor.config.load import Config
from monitor.config.values import parse_duration, parse_rate

__all__ = ["MASK", "config_toml", "duration_text", "toml_text"]

#: What the echo shows instead of a secret.
MASK: Final = "********"
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_UNITS: Final = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def config_toml(config: Config) -> str:
    """``config`` as TOML text, every secret shown as ``********``."""
    plain = _plain(config)
    if not config.tenants:  # the single form: [superoffice] and [watch], as it was written
        del plain["tenants"]
    return toml_text(plain)


def toml_text(table: Mapping[str, object]) -> str:
    """Plain values (tables as mappings, arrays of tables as lists of them) as TOML text."""
    return "\n".join(_table(table, ())).strip() + "\n"


def duration_text(seconds: float) -> str:
    """``5400.0`` → ``"1h30m"``, ``0.25`` → ``"0.25s"``: what ``parse_duration`` reads back."""
    if seconds == 0:
        return "0s"
    if not float(seconds).is_integer():
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    left, text = int(seconds), ""
    for unit, size in _UNITS:
        amount, left = divmod(left, size)
        text += f"{amount}{unit}" if amount else ""
    return text


# --- from the model to plain values ----------------------------------------------------------


def _plain(model: BaseModel) -> dict[str, object]:
    """A section as a dict of TOML values, ``None`` left out."""
    plain: dict[str, object] = {}
    for name, field in type(model).model_fields.items():
        value = _value(getattr(model, name), _validators(field))
        if value is not None:
            plain[field.alias or name] = value
    return plain


def _value(value: object, validators: frozenset[object]) -> object:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, BaseModel):
        return _plain(value)
    if isinstance(value, list):
        return [_value(item, validators) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and parse_duration in validators:
        return duration_text(value)
    if isinstance(value, float) and parse_rate in validators:
        return f"{value:g}/s"
    return value


def _validators(field: FieldInfo) -> frozenset[object]:
    """The functions of the ``BeforeValidator``\\ s on a field, however nested in its type."""
    found: set[object] = set()
    pending: list[Any] = [*field.metadata, field.annotation]
    while pending:
        item = pending.pop()
        if isinstance(item, BeforeValidator):
            found.add(item.func)
        else:
            pending.extend(get_args(item))
    return frozenset(found)


# --- plain values to TOML ------------------------------------------------------------------


def _table(table: Mapping[str, object], path: tuple[str, ...]) -> Iterator[str]:
    """Scalars and arrays first, then sub-tables, then arrays of tables."""
    scalars = {k: v for k, v in table.items() if not _is_table(v) and not _is_tables(v)}
    yield from (f"{_key(k)} = {_toml(v)}" for k, v in scalars.items())
    for key, value in table.items():
        here = (*path, key)
        if _is_table(value):
            assert isinstance(value, Mapping)
            yield ""
            yield f"[{'.'.join(map(_key, here))}]"
            yield from _table(value, here)
    for key, value in table.items():
        here = (*path, key)
        if _is_tables(value):
            assert isinstance(value, Sequence)
            for item in value:
                yield ""
                yield f"[[{'.'.join(map(_key, here))}]]"
                yield from _table(item, here)


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_tables(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Path):
        return _string(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    msg = f"no TOML form for {type(value).__name__}"
    raise TypeError(msg)


def _string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but TOML refuses a raw DEL too."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
