"""Text that can always be encoded, and text that is safe to show in a terminal.

Encoding.  A lone surrogate (``"\\ud83d"``, half of an emoji's UTF-16 pair) is a
valid Python ``str`` character but no text: UTF-8 and UTF-16 refuse to encode
it.  .NET writes them when it cuts a string in the middle of an emoji, and the
standard library's ``json`` reads them back from ``"\\ud83d"`` escapes.  Every
place that takes such text in (the API parser's fallback, events read back
from the state database) replaces them with U+FFFD, the replacement
character, so nothing downstream has to care.

Terminals.  A task name is the API's text, and a control character in it is a
command to the terminal (``ESC ] 52`` writes the clipboard, ``ESC [ 2 J``
clears the screen).  :func:`visible` writes each one as its escape (``\\x1b``),
so every terminal view shows what the text holds and obeys none of it.
"""

from __future__ import annotations

import re

__all__ = ["REPLACEMENT", "replace_surrogates", "visible", "without_surrogates"]

#: What a lone surrogate becomes (U+FFFD REPLACEMENT CHARACTER).
REPLACEMENT = "\ufffd"

_SURROGATE = re.compile("[\ud800-\udfff]")
#: C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides
#: and isolates that reorder what follows them ("Trojan Source", CVE-2021-42574).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


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


def visible(text: str) -> str:
    """``text`` with every terminal control character but tab and newline written as its escape.

    ``"evil\\x1b[2J"`` becomes ``"evil\\\\x1b[2J"``: the four characters ``\\x1b``, not ESC.
    """
    if text.isprintable():
        return text
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
