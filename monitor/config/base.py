"""The base every section derives from: strict about keys, and resolving secret forms.

A secret ``X`` may be given as ``X``, ``X_file`` or ``X_env``; :class:`_Section` resolves
the form before field validation and reports unknown keys together with the field errors,
so every section behaves the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Self, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails

from monitor.config.errors import _carry, _did_you_mean, _invalid, _kind, _problem

__all__ = ["secret_file"]


class _Section(BaseModel):
    """Base of every section: strict about keys, and resolves secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Fields holding secrets; each may also be given as ``<name>_file`` or ``<name>_env``.
    _secrets: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _prepare(
        cls, data: object, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        """Sort the given keys before field validation, and report all problems together.

        This is a wrap validator, not a before validator, so that the problems found here
        (an unreadable secret file, an unknown key) are listed together with the field errors
        of the same section instead of hiding them until the next run.
        """
        if not isinstance(data, Mapping):
            return handler(data)
        fields = cls._field_keys()
        given = {key: value for key, value in data.items() if key in fields}
        problems = list(cls._unknown_keys(data))
        unresolved: set[tuple[str | int, ...]] = set()
        for name in cls._secrets:
            problem = _resolve_secret(name, data, given, _base_dir(info), _credentials_dir(info))
            if problem is not None:
                problems.append(problem)
                unresolved.add((name,))
        for problem in cls._missing_keys(given, unresolved):
            problems.append(problem)
            unresolved.add(problem["loc"])

        if not problems:
            return handler(given)
        try:
            handler(given)
        except ValidationError as exc:
            # A secret that could not be read is also "missing"; saying so twice helps no one.
            problems += [_carry(e) for e in exc.errors() if e["loc"][:1] not in unresolved]
        raise _invalid(cls.__name__, problems)

    @classmethod
    def _missing_keys(
        cls, given: Mapping[str, object], unresolved: set[tuple[str | int, ...]]
    ) -> list[InitErrorDetails]:
        """Problems for required keys not given, where a section words them itself."""
        return []

    @classmethod
    def _field_keys(cls) -> set[str]:
        """The keys of the fields as the file writes them (an alias where a field has one)."""
        return {field.alias or name for name, field in cls.model_fields.items()}

    @classmethod
    def _keys(cls) -> set[str]:
        """The keys a table of this section may hold: its fields and their secret forms."""
        known = cls._field_keys()
        known.update(f"{name}{suffix}" for name in cls._secrets for suffix in ("_file", "_env"))
        return known

    @classmethod
    def _unknown_keys(cls, data: Mapping[str, object]) -> list[InitErrorDetails]:
        """Report the keys that are neither fields nor a secret's ``_file``/``_env`` form."""
        known = cls._keys()
        problems = []
        for key in data:
            if key in known:
                continue
            problems.append(_problem((key,), f"unknown key{_did_you_mean(key, sorted(known))}"))
        return problems


class _Variant(_Section):
    """One table of a union told apart by its ``type`` (a sink, an auth scheme).

    Each type's model holds exactly its own keys.  A key another type of the same union
    takes is "not used by" this one, and a key this type needs is "required for" it: the
    words name the type, which pydantic's would not.
    """

    #: What the union is of, for messages: ``sink``, ``auth``.
    _union: ClassVar[str]

    @classmethod
    def type_name(cls) -> str:
        """The ``type`` this model is chosen by (its ``Literal``)."""
        (name,) = get_args(cls.model_fields["type"].annotation)
        return str(name)

    @classmethod
    def _root(cls) -> type[_Variant]:
        """The base of the union: the class right below :class:`_Variant`."""
        return next(
            base for base in cls.__mro__ if isinstance(base, type) and _Variant in base.__bases__
        )

    @classmethod
    def _union_keys(cls) -> set[str]:
        """Every key some type of the union takes."""
        keys: set[str] = set()
        pending: list[type[_Section]] = [cls._root()]
        while pending:
            model = pending.pop()
            pending += model.__subclasses__()
            keys |= model._keys()
        return keys

    @classmethod
    def _unknown_keys(cls, data: Mapping[str, object]) -> list[InitErrorDetails]:
        others = cls._union_keys()
        used_elsewhere = f"not used by {cls._union} type {cls.type_name()!r}"
        return [
            _problem(problem["loc"], used_elsewhere) if problem["loc"][0] in others else problem
            for problem in super()._unknown_keys(data)
        ]

    @classmethod
    def _missing_keys(
        cls, given: Mapping[str, object], unresolved: set[tuple[str | int, ...]]
    ) -> list[InitErrorDetails]:
        common = cls._root().model_fields
        problems = []
        for name, field in cls.model_fields.items():
            if name in common or name in given or (name,) in unresolved or not field.is_required():
                continue
            forms = f" (give {name}, {name}_file or {name}_env)" if name in cls._secrets else ""
            why = f"required for {cls._union} type {cls.type_name()!r}{forms}"
            problems.append(_problem((name,), why))
        return problems


def _base_dir(info: ValidationInfo) -> Path:
    """The directory relative paths are resolved against (the config file's)."""
    context = info.context
    if isinstance(context, Mapping):
        base_dir = context.get("base_dir")
        if isinstance(base_dir, Path):
            return base_dir
    return Path()


def _credentials_dir(info: ValidationInfo) -> Path | None:
    """Where relative ``X_file`` names are looked up instead of ``$CREDENTIALS_DIRECTORY``."""
    context = info.context
    if isinstance(context, Mapping):
        credentials_dir = context.get("credentials_dir")
        if isinstance(credentials_dir, Path):
            return credentials_dir
    return None


def secret_file(value: str, base_dir: Path, credentials_dir: Path | None = None) -> Path:
    """The file an ``X_file`` names: relative names in ``credentials_dir``, else in
    ``$CREDENTIALS_DIRECTORY`` (systemd's ``LoadCredential=``), else next to the config."""
    path = Path(value)
    if path.is_absolute():
        return path
    return (credentials_dir or Path(os.environ.get("CREDENTIALS_DIRECTORY") or base_dir)) / path


def _resolve_secret(
    name: str,
    data: Mapping[str, object],
    given: dict[str, object],
    base_dir: Path,
    credentials_dir: Path | None,
) -> InitErrorDetails | None:
    """Put secret ``name`` into ``given`` from whichever one form ``data`` has it in.

    Returns the problem, if any.  The problem names the key, the file or the variable; it
    never contains the value.
    """
    forms = [key for key in (name, f"{name}_file", f"{name}_env") if key in data]
    if not forms:
        return None
    if len(forms) > 1:
        given.pop(name, None)
        keys = " and ".join(repr(key) for key in forms)
        return _problem((name,), f"given as both {keys}; use exactly one")
    (key,) = forms
    value = data[key]
    if key == name:
        return _problem((key,), "must not be empty") if value == "" else None
    if not isinstance(value, str) or not value:
        what = "file name" if key.endswith("_file") else "environment variable name"
        return _problem((key,), f"expected a {what}, got {_kind(value)}")
    if key.endswith("_file"):
        path = secret_file(value, base_dir, credentials_dir)
        try:
            secret = path.read_text(encoding="utf-8").removesuffix("\n")
        except OSError as exc:
            return _problem((key,), f"cannot read '{path}': {exc.strerror or type(exc).__name__}")
        except UnicodeDecodeError:
            return _problem((key,), f"cannot read '{path}': not UTF-8 text")
        where = f"file '{path}'"
    else:
        env_value = os.environ.get(value)
        if env_value is None:
            return _problem((key,), f"environment variable '{value}' is not set")
        secret, where = env_value, f"environment variable '{value}'"
    if not secret:
        return _problem((key,), f"{where} is empty")
    given[name] = secret
    return None
