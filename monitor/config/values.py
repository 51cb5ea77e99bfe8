"""The values the sections share: durations, rates, secrets, bounded numbers, base URLs.

Each comes with the validation that reads it from TOML, so that ``"5m"``, ``true`` or a URL
mean the same in every section that takes one.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import AllowInfNan, BeforeValidator, Field, SecretStr, Strict

from monitor.config.errors import _show

__all__ = ["Duration", "Rate", "Secret", "parse_duration", "parse_rate"]

# --- durations ------------------------------------------------------------------------------

_DURATION_RE: Final = re.compile(
    r"(?:(?P<d>\d+(?:\.\d+)?)d)?"
    r"(?:(?P<h>\d+(?:\.\d+)?)h)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)m)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)s)?"
    r"(?:(?P<ms>\d+(?:\.\d+)?)ms)?"
)
#: Longer than any sensible interval, short enough for every datetime computation.
_MAX_DURATION: Final = 10 * 365 * 86400.0
_UNIT_SECONDS: Final = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_NUMBER_RE: Final = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds: a number of seconds, or a string like ``"1h30m"``.

    Units are ``d``, ``h``, ``m``, ``s`` and ``ms``, largest first, each at most once; a bare
    number (also as a string) is seconds.  Raises :class:`ValueError` saying what was expected.
    """
    expected = "expected a duration like '90s', '5m' or '1h30m'"
    if isinstance(value, str):
        text = value.strip()
        match = _DURATION_RE.fullmatch(text)
        if _NUMBER_RE.fullmatch(text):
            seconds = float(text)
        elif text and match:
            seconds = sum(
                float(amount) * _UNIT_SECONDS[unit]
                for unit, amount in match.groupdict().items()
                if amount is not None
            )
        elif text.startswith("-"):
            raise ValueError(f"a duration must not be negative, got {value!r}")
        else:
            raise ValueError(f"{expected}, got {value!r}")
    elif isinstance(value, int | float) and not isinstance(value, bool):  # true is not 1s
        seconds = float(value)
    else:
        # ValueError, not TypeError: pydantic reports only the former as a validation error.
        raise ValueError(f"{expected}, got {_show(value)}")  # noqa: TRY004
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite, got {_show(value)}")
    if seconds < 0:
        raise ValueError(f"a duration must not be negative, got {_show(value)}")
    if seconds > _MAX_DURATION:
        raise ValueError(f"a duration must be at most 10 years, got {_show(value)}")
    return seconds


#: Seconds, written in the configuration as ``90``, ``1.5``, ``"90s"``, ``"5m"`` or ``"1h30m"``.
Duration = Annotated[float, BeforeValidator(parse_duration)]

#: A secret string: ``str()`` and ``repr()`` show asterisks, ``get_secret_value()`` the value.
Secret = SecretStr

#: An integer that TOML's ``true`` or the string ``"4"`` do not pass for.
_Int = Annotated[int, Strict()]
#: A finite number; TOML's ``nan`` and ``inf`` make no sense for any of ours.
_Float = Annotated[float, Strict(), AllowInfNan(False)]
#: SuperOffice ids are int32 (the OpenAPI description says so).
_INT32_MAX: Final = 2**31 - 1
_TaskId = Annotated[int, Strict(), Field(gt=0, le=_INT32_MAX)]


# --- rates ----------------------------------------------------------------------------------

_RATE_RE = re.compile(r"(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<per>\S+)")


def parse_rate(value: object) -> float:
    """Return ``value`` in events per second: ``"1/s"``, ``"5/2s"``, ``"30/m"`` or a number."""
    expected = "expected a rate like '1/s', '5/2s' or '30/1m'"
    if isinstance(value, int | float) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str) and (match := _RATE_RE.fullmatch(value.strip())):
        per = match["per"]
        per_seconds = parse_duration(per if per[0].isdigit() else f"1{per}")
        if per_seconds <= 0:
            raise ValueError(f"{expected}, got {value!r}")
        rate = float(match["count"]) / per_seconds
    else:
        raise ValueError(f"{expected}, got {_show(value)}")
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"a rate must be positive, got {_show(value)}")
    return rate


#: Events per second, written as ``"1/s"``, ``"5/2s"``, ``"30/m"`` or a number.
Rate = Annotated[float, BeforeValidator(parse_rate)]


# --- base URLs ------------------------------------------------------------------------------


def _http_base(url: str, example: str) -> str:
    """An http(s) base URL with a host, without credentials, query or fragment.

    Refused rather than stripped: a URL that carries ``user:password@`` or a
    ``?token=`` would have them sent and shown, and quietly dropping them would
    leave a URL that no longer works.  The problem names the key, never the value.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL with a host, {example}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the URL has an invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL must not contain credentials; use superoffice.auth")
    if parts.query or parts.fragment:
        raise ValueError(f"the URL must be a base without '?' or '#', {example}")
    return url.strip().rstrip("/")
