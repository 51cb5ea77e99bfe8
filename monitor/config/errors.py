"""The one error a bad configuration raises, and how its problems are worded.

Validators report a problem as a pydantic error at a location (:func:`_problem`,
:func:`_invalid`); :func:`_describe` turns each into a line like ``sinks[1].name: ...``
for :class:`ConfigError`.  Kept apart so that every other module can use the helpers
without importing the sections.  No helper here ever puts a value into a message
that could be a secret.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from pydantic import ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

__all__ = ["ConfigError"]

#: A name that can stand for its list entry in a message (the sink name rule).
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")


class ConfigError(Exception):
    """The configuration cannot be used; :attr:`problems` says why, one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__(*self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --- problems -------------------------------------------------------------------------------


def _problem(loc: tuple[str | int, ...], message: str) -> InitErrorDetails:
    """One problem at ``loc`` (relative to the model raising it), in pydantic's terms."""
    # ``input`` stays empty on purpose: it could be a secret.
    return {"type": PydanticCustomError("batchmon_config", message), "loc": loc, "input": None}


def _did_you_mean(value: str, known: Iterable[str]) -> str:
    """`` (did you mean 'Aquired'?)`` for the closest of ``known``, or nothing."""
    close = difflib.get_close_matches(value, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _carry(error: ErrorDetails) -> InitErrorDetails:
    """Turn a caught error back into one that can be raised again, message kept."""
    return {
        "type": PydanticCustomError(error["type"], error["msg"]),
        "loc": error["loc"],
        "input": error["input"],
    }


def _invalid(title: str, problems: list[InitErrorDetails]) -> ValidationError:
    """The problems as one error; pydantic adds the caller's location to each."""
    return ValidationError.from_exception_data(title, problems, hide_input=True)


#: Type errors, by pydantic error type: what was expected, in TOML's words.
_EXPECTED: Final = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "path_type": "a path (a string)",
    "list_type": "an array",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dict_type": "a table",
}


class _Named(str):
    """A list entry shown by its name (``sinks["ops"]``) instead of its index."""

    __slots__ = ()


def _named_entries(
    loc: tuple[str | int, ...], names: Mapping[str, Sequence[object]]
) -> tuple[str | int, ...]:
    """``("sinks", 1, "url")`` → ``("sinks", _Named("ops"), "url")`` where entry 1 has a
    usable, unique name (``names`` holds each list's raw ``name`` values)."""
    if len(loc) < 2 or not isinstance(loc[0], str) or not isinstance(loc[1], int):
        return loc
    given = names.get(loc[0], ())
    name = given[loc[1]] if 0 <= loc[1] < len(given) else None
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or given.count(name) > 1:
        return loc
    return (loc[0], _Named(name), *loc[2:])


#: The fields holding a union of tables told apart by their ``type`` (``[[sinks]]`` entries
#: and ``[superoffice.auth]``): pydantic puts the type into the location, the file does not.
_TAGGED: Final = frozenset({"sinks", "auth"})
#: pydantic's words for a ``type`` that names no table of the union.
_TAG_INVALID: Final = re.compile(r"expected tags: (.*)$")


def _untagged(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """``("sinks", 0, "slack", "url")`` → ``("sinks", 0, "url")``: the location as written."""
    for index in range(1, len(loc) - 1):
        before = loc[index - 1]
        holder = loc[index - 2] if isinstance(before, int) and index >= 2 else before
        if isinstance(holder, str) and holder in _TAGGED and isinstance(loc[index], str):
            return (*loc[:index], *loc[index + 1 :])
    return loc


def _describe(error: ErrorDetails, names: Mapping[str, Sequence[object]] | None = None) -> str:
    """``"sinks["ops"].url: expected an http(s) URL"`` from one pydantic error; entries of
    the lists in ``names`` are named by their ``name`` where it is usable and unique."""
    kind, message, value = error["type"], error["msg"], error["input"]
    loc = _untagged(error["loc"])
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "type")
        value = value.get("type") if isinstance(value, Mapping) else None
    if kind == "union_tag_invalid":
        match = _TAG_INVALID.search(message)
        *tags, last = match.group(1).split(", ") if match else ("?",)
        message = f"must be {', '.join(tags)} or {last}, got {_show(value)}"
    elif kind in ("missing", "union_tag_not_found"):
        message = "required, but not given"
    elif kind in _EXPECTED:
        # Never the value itself: a secret given with the wrong type is still a secret.
        message = f"expected {_EXPECTED[kind]}, got {_kind(value)}"
    elif message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
        if kind == "literal_error" or isinstance(value, int | float):
            message += f", got {_show(value)}"
    else:
        message = message.removeprefix("Value error, ")
    path = _path(_named_entries(loc, names or {}))
    return f"{path}: {message}" if path else message


def _path(loc: tuple[str | int, ...]) -> str:
    """``("sinks", 1, "url")`` -> ``"sinks[1].url"``; a :class:`_Named` entry ``sinks["ops"]``."""
    path = ""
    for part in loc:
        if isinstance(part, _Named):
            path += f'["{part}"]'
        elif isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _kind(value: object) -> str:
    """What a value is, in TOML's words, without showing it."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "a boolean"
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (str, "a string"),
        (int, "an integer"),
        (float, "a float"),
        (list, "an array"),
        (Mapping, "a table"),
        ((dt.date, dt.time), "a date or time"),
    )
    return next((word for cls, word in kinds if isinstance(value, cls)), type(value).__name__)


def _show(value: object) -> str:
    """A non-secret value as it would be written in TOML."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None or isinstance(value, str | int | float):
        return repr(value)
    return _kind(value)
