"""The daemon's write API as the CLI calls it: ``batchmon ack``, ``stop --url`` and ``silence``.

One request, one answer: the standard library suffices (as for ``status``), and
what the daemon says goes to the terminal as its text, made visible (never
obeyed, see :func:`~monitor.text.visible`).  The exit code follows the status,
so that scripts can tell a refusal from a daemon that is down.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from monitor.text import visible

__all__ = ["EX_NOPERM", "EX_NOT_FOUND", "EX_UNAVAILABLE", "RemoteAnswer", "RemoteError", "call"]

#: sysexits' EX_UNAVAILABLE: the daemon (or SuperOffice behind it) gave no usable answer.
EX_UNAVAILABLE = 69
#: sysexits' EX_NOPERM: no token, a wrong one, or changes are disabled (no ``http.api_token``).
EX_NOPERM = 77
#: No such task (SuperOffice's answer), or no such silence.
EX_NOT_FOUND = 3
_TIMEOUT = 30.0
_EXITS = {401: EX_NOPERM, 403: EX_NOPERM, 404: EX_NOT_FOUND}


class RemoteError(Exception):
    """No usable answer; the message is one line for the user, ``exit_code`` the command's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(visible(message))
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class RemoteAnswer:
    """A 2xx answer's JSON."""

    status: int
    data: Any


def call(method: str, url: str, token: str | None, body: object = None) -> RemoteAnswer:
    """Send one request with ``Authorization: Bearer <token>``; any non-2xx is a :class:`RemoteError`.

    A 409 (the daemon refuses, and says why) exits 1; 401/403 77; 404 3; 5xx 69.
    """
    if urllib.parse.urlsplit(url).scheme not in {"http", "https"}:
        raise RemoteError(f"{url}: only http:// and https:// URLs are supported", 2)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:  # noqa: S310 - scheme checked above
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read()
    except OSError as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise RemoteError(f"cannot reach batchmon at {url}: {reason}", EX_UNAVAILABLE) from None
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    if not 200 <= status < 300:
        error = parsed.get("error") if isinstance(parsed, dict) else None
        text = error if isinstance(error, str) else raw.decode(errors="replace").strip()
        if status == 401:
            text += " (give http.api_token with --token-file or BATCHMON_API_TOKEN)"
        # 5xx: the daemon (or SuperOffice behind it) failed; any other refusal says why: 1.
        code = EX_UNAVAILABLE if status >= 500 else _EXITS.get(status, 1)
        raise RemoteError(text or f"HTTP {status}", code)
    return RemoteAnswer(status, parsed)
