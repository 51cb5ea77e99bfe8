"""Retry-After, as both the SuperOffice API and the chat services send it."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after"]

#: Never wait longer than this on a server's word (a broken header must not
#: silence batchmon for days).
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date).

    RFC 9110 §10.2.3 allows both forms.  Returns ``None`` when the header is
    absent or unreadable, ``0`` for a date in the past, and caps the answer at
    :data:`MAX_RETRY_AFTER`.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN  # noqa: PLR0124
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
