"""Text that can always be encoded: lone surrogates become U+FFFD.

A lone surrogate (``"\\ud83d"``, half of an emoji's UTF-16 pair) is a valid
Python ``str`` character but no text: UTF-8 and UTF-16 refuse to encode it.
.NET writes them when it cuts a string in the middle of an emoji, and the
standard library's ``json`` reads them back from ``"\\ud83d"`` escapes.  Every
place that takes such text in (the API parser's fallback, events read back
from the state database) replaces them with U+FFFD, the replacement
character, so nothing downstream has to care.
"""

from __future__ import annotations

import re

__all__ = ["REPLACEMENT", "replace_surrogates", "without_surrogates"]

#: What a lone surrogate becomes (U+FFFD REPLACEMENT CHARACTER).
REPLACEMENT = "\ufffd"

_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_surrogates(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (ASCII returns at once)."""
    if text.isascii():
        return text
    return _SURROGATE.sub(REPLACEMENT, text)


def without_surrogates(value: object) -> object:
    """:func:`replace_surrogates` on every string of a JSON value, keys included."""
    if isinstance(value, str):
        return replace_surrogates(value)
    if isinstance(value, list):
        return [without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    return value
