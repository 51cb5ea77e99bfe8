"""Who may ask the HTTP side what: the Host check, the tokens, and the headers on every answer.

The server listens on loopback by default, and that alone does not keep a browser out: a
page from anywhere can point its own name at 127.0.0.1 (DNS rebinding) and read what is
open, or frame the status page.  So every request must name this server in its Host header
(a rebinding page sends its own name; IP addresses and ``localhost`` cannot be rebound), an
optional read token closes everything but the health checks, and every answer carries a
Content-Security-Policy and the frame and sniffing headers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

__all__ = [
    "OPEN_PATHS",
    "SECURITY_HEADERS",
    "Access",
    "access_middleware",
    "add_security_headers",
    "bearer",
    "credentials",
    "host_allowed",
    "machine_names",
    "token_matches",
]

#: Open whatever the tokens say: the service manager and load balancers ask these.
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})

#: On every answer.  No JavaScript anywhere, inline styles in the pages, no framing.
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """Whether a Host header names this server: an IP address, ``localhost`` or one of ``names``.

    Any port is fine.  A request without Host (HTTP/1.0) comes from no browser, so it passes.
    """
    if header is None:
        return True
    text = header.strip().lower()
    if text.startswith("["):
        name, bracket, port = text[1:].partition("]")
        if not bracket or not (port == "" or (port[:1] == ":" and _is_port(port[1:]))):
            return False
    else:
        name, colon, port = text.rpartition(":")
        if not colon:
            name = text
        elif not _is_port(port):
            return False
    name = name.removesuffix(".")
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name == "localhost" or name in names
    return True


def machine_names() -> frozenset[str]:
    """This machine's host name, as given and its first label: Prometheus scrapes by it.

    A rebinding page cannot send it (its Host is its own name), so it is safe to accept.
    """
    name = socket.gethostname().lower().removesuffix(".")
    return frozenset({name, name.partition(".")[0]}) - {""}


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


def bearer(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``, else ``None``.

    Changes take only this form: a browser never sends it on its own, so a page elsewhere
    cannot make it send a change with credentials it remembered (Basic, below).
    """
    scheme, _, value = (header or "").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def credentials(header: str | None) -> str | None:
    """The token an Authorization header carries: ``Bearer <token>``, or Basic with it as password.

    Basic lets a browser ask for the read token (any user name).  Bytes that are not
    text, bad base64 and other schemes carry no token.
    """
    token = bearer(header)
    scheme, _, value = (header or "").strip().partition(" ")
    if token is not None or scheme.lower() != "basic":
        return token
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, ValueError):  # also UnicodeError: not ASCII, not UTF-8
        return None
    _, colon, password = decoded.partition(":")
    return password if colon else None


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a header that is not encodable text never matches (no 500)."""
    if given is None:
        return False
    try:
        raw = given.encode()
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(raw, expected.encode())


@dataclass(frozen=True, slots=True)
class Access:
    """What the access checks compare with."""

    #: Names the Host header may carry besides IP addresses, ``localhost`` and
    #: :func:`machine_names`.
    host_names: frozenset[str] = frozenset()
    #: Required, when set, for everything but :data:`OPEN_PATHS`.
    read_token: str | None = None
    #: Grants reads too.
    api_token: str | None = None

    def may_read(self, authorization: str | None) -> bool:
        """Whether an Authorization header lets its sender read."""
        if self.read_token is None:
            return True
        given = credentials(authorization)
        tokens = [t for t in (self.read_token, self.api_token) if t is not None]
        # Both compared, always: how long this takes says nothing about which one matched.
        matches = [token_matches(given, token) for token in tokens]
        return any(matches)


def _refusal(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps({"error": message}), content_type="application/json"
    )


def access_middleware(access: Access) -> Middleware:
    """The Host check, then the read token (when set), before any handler runs."""

    @web.middleware
    async def check_access(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if not host_allowed(request.headers.get(hdrs.HOST), access.host_names):
            return _refusal(
                421,
                "this server does not answer to that host name; "
                "if it is reached by that name, add it to http.allowed_hosts",
            )
        resource = request.match_info.route.resource
        open_path = resource is not None and resource.canonical in OPEN_PATHS
        if not open_path and not access.may_read(request.headers.get(hdrs.AUTHORIZATION)):
            response = _refusal(
                401, "a valid token is required (http.read_token or http.api_token)"
            )
            # Basic too, so that a browser asks for the token (as the password).
            for challenge in ("Bearer", 'Basic realm="batchmon"'):
                response.headers.add(hdrs.WWW_AUTHENTICATE, challenge)
            return response
        return await handler(request)

    return check_access


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the security headers, unless a handler set its own."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
