"""Who may call the simulated API, and the logins that hand out tokens and tickets.

Apart from the server because authentication is its own small world: the fixed Basic, ticket
and bearer credentials a simulator is made with, the OAuth refresh-token grant, the system
user login with its signed tokens and RS256 JWTs, and the tokens and tickets those issue,
which expire on the simulator's clock (tickets slide with use).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from aiohttp import hdrs, web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

from monitor.simulator.responses import dumps, error_response, json_object
from monitor.simulator.tenant import OnlineTenant

__all__ = ["Credentials", "OAuthApp", "SystemUserApp", "oauth_token", "system_user_login"]

_CLAIMS = "http://schemes.superoffice.net/identity/"
_KEY_ID = "batchmon-simulator"
#: A signed system user token may be this far from the simulator's clock.
_SIGNATURE_SKEW = timedelta(minutes=5)
#: How long the JWT from the system user login is valid.
_JWT_LIFETIME = timedelta(minutes=10)


@dataclass(slots=True, kw_only=True)
class OAuthApp:
    """An app the OAuth token endpoint knows; it issues access tokens for a refresh token."""

    client_id: str = "batchmon-app"
    client_secret: str = "simulated-client-secret"  # noqa: S105 - a loopback simulator's
    refresh_token: str = "simulated-refresh-token"  # noqa: S105 - well-known defaults
    #: Seconds an access token is accepted (``expires_in``).
    token_lifetime: float = 3600.0
    #: While set, the token endpoint refuses the refresh token with this OAuth error.
    refuse: str | None = None


@dataclass(slots=True, kw_only=True)
class SystemUserApp:
    """An app the system user endpoint knows: it checks signatures with ``public_key``."""

    #: The app's public key; the test keeps the private half for the client.
    public_key: rsa.RSAPublicKey
    client_secret: str = "simulated-client-secret"  # noqa: S105 - a loopback simulator's default
    system_user_token: str = "batchmon-4fGh7Kp2"  # noqa: S105 - a loopback simulator's default
    #: Seconds a ticket is accepted after its last use (sliding, as in Online).
    ticket_lifetime: float = 6 * 3600.0
    #: While set, logins fail with this ``ErrorMessage`` (e.g. ``"Revoked"``).
    refuse: str | None = None


@dataclass(slots=True)
class _Issued:
    """A token or ticket the simulator handed out, and since when it counts."""

    kind: str
    since: datetime
    lifetime: float


class Credentials:
    """What the API accepts: the fixed credentials, and what the simulator issued on ``clock``.

    Also holds the simulator's signing key for system user JWTs, made on demand by
    :meth:`ensure_signing_key` (a fresh pair per simulator).
    """

    def __init__(
        self,
        clock: Callable[[], datetime],
        *,
        basic: bytes,
        ticket: str | None,
        token: str | None,
    ) -> None:
        self.clock = clock
        self.signing_key: rsa.RSAPrivateKey | None = None
        self._basic = basic
        self._ticket = ticket
        self._token = token
        self._issued: dict[str, _Issued] = {}

    def authorized(self, request: web.Request, system_user: SystemUserApp | None) -> bool:
        """Whether ``request`` carries credentials the API accepts (a ticket needs its app)."""
        scheme, _, credentials = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")
        credentials = credentials.strip()
        match scheme.casefold():
            case "basic":
                try:
                    decoded = base64.b64decode(credentials, validate=True)
                except binascii.Error:
                    return False
                return hmac.compare_digest(decoded, self._basic)
            case "soticket":
                app_token = request.headers.get("SO-AppToken", "")
                return _matches(credentials, self._ticket) or self._issued_and_valid(
                    credentials, "ticket", app_token, system_user
                )
            case "bearer":
                return _matches(credentials, self._token) or self._issued_and_valid(
                    credentials, "token", None, system_user
                )
            case _:
                return False

    def _issued_and_valid(
        self, value: str, kind: str, app_token: str | None, system_user: SystemUserApp | None
    ) -> bool:
        """Whether ``value`` was issued here as ``kind`` and is still alive (tickets slide)."""
        issued = self._issued.get(value)
        if issued is None or issued.kind != kind:
            return False
        now = self.clock()
        if (now - issued.since).total_seconds() >= issued.lifetime:
            del self._issued[value]
            return False
        if kind == "ticket":
            if system_user is None or not _matches(app_token or "", system_user.client_secret):
                return False
            issued.since = now
        return True

    def issue(self, prefix: str, kind: str, lifetime: float) -> str:
        value = f"{prefix}{secrets.token_urlsafe(24)}"
        self._issued[value] = _Issued(kind, self.clock(), lifetime)
        return value

    def expire(self) -> None:
        """Refuse every access token and ticket issued so far."""
        self._issued.clear()

    def ensure_signing_key(self) -> None:
        if self.signing_key is None:
            # A fresh key pair per run: nothing secret is ever committed.
            self.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def signed_jwt(self, tenant: OnlineTenant, ticket: str, origin: str) -> str:
        """The login's answer: RS256-signed by the simulator's key, as SuperOffice signs it."""
        assert self.signing_key is not None  # made at start with system_user
        now = self.clock()
        claims = {
            "iss": "SuperOffice AS",
            "aud": f"spn:{tenant.serial}",
            "sub": "system.user",
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + _JWT_LIFETIME).timestamp()),
            _CLAIMS + "ticket": ticket,
            _CLAIMS + "ctx": tenant.context_id,
            _CLAIMS + "serial": tenant.serial,
            _CLAIMS + "webapi_url": f"{origin}/{tenant.node}/{tenant.context_id}/api/",
            _CLAIMS + "is_administrator": "False",
        }
        return jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": _KEY_ID})

    def jwks(self) -> dict[str, object]:
        """The environment's signing keys, as ``/login/.well-known/jwks`` lists them."""
        if self.signing_key is None:
            return {"keys": []}
        key = RSAAlgorithm.to_jwk(self.signing_key.public_key(), as_dict=True)
        key.update({"kid": _KEY_ID, "use": "sig", "alg": "RS256"})
        return {"keys": [key]}


async def oauth_token(
    request: web.Request,
    app: OAuthApp | None,
    tenant: OnlineTenant | None,
    credentials: Credentials,
) -> web.Response:
    """The refresh-token grant: an access token like ``8A:Cust12345.…``, or an OAuth error."""
    if app is None:
        return error_response(404, "NotFound", "OAuth is not enabled in this simulator")
    form = await request.post()
    if form.get("grant_type") != "refresh_token":
        return _oauth_error(400, "unsupported_grant_type", "Only refresh_token is simulated")
    if not (
        _matches(str(form.get("client_id", "")), app.client_id)
        and _matches(str(form.get("client_secret", "")), app.client_secret)
    ):
        return _oauth_error(401, "invalid_client", "Unknown client or wrong client secret")
    if app.refuse is not None or not _matches(
        str(form.get("refresh_token", "")), app.refresh_token
    ):
        message = "The refresh token is invalid, expired or revoked"
        return _oauth_error(400, app.refuse or "invalid_grant", message)
    context = tenant.context_id if tenant is not None else "Cust12345"
    token = credentials.issue(f"8A:{context}.", "token", app.token_lifetime)
    body = {"token_type": "Bearer", "access_token": token, "expires_in": app.token_lifetime}
    return web.json_response(body, dumps=dumps)


async def system_user_login(
    request: web.Request,
    app: SystemUserApp | None,
    tenant: OnlineTenant | None,
    credentials: Credentials,
) -> web.Response:
    """Verify the signed system user token; answer a JWT carrying a ticket, or why not."""
    if app is None or tenant is None:
        return error_response(404, "NotFound", "System users are not enabled in this simulator")
    body = await json_object(request)
    if isinstance(body, web.Response):
        return body
    problem = (
        app.refuse
        or _login_problem(app, tenant, body)
        or _signature_problem(app, str(body.get("SignedSystemToken", "")), credentials.clock())
    )
    if problem is not None:
        answer = {"IsSuccessful": False, "Token": None, "ErrorMessage": problem}
        return web.json_response(answer, dumps=dumps)
    ticket = credentials.issue("7T:", "ticket", app.ticket_lifetime)
    jwt_text = credentials.signed_jwt(tenant, ticket, f"{request.scheme}://{request.host}")
    answer = {"IsSuccessful": True, "Token": jwt_text, "ErrorMessage": ""}
    return web.json_response(answer, dumps=dumps)


def _login_problem(
    app: SystemUserApp, tenant: OnlineTenant, body: Mapping[str, object]
) -> str | None:
    if not _matches(str(body.get("ApplicationToken", "")), app.client_secret):
        return "Unknown application token"
    if str(body.get("ContextIdentifier", "")).casefold() != tenant.context_id.casefold():
        return f"The application is not approved for {body.get('ContextIdentifier')!r}"
    if str(body.get("ReturnTokenType", "")).casefold() != "jwt":
        return "ReturnTokenType must be JWT"
    return None


def _matches(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    """An RFC 6749 error answer, as the token endpoint gives."""
    body = {"error": error, "error_description": description}
    return web.json_response(body, status=status, dumps=dumps)


def _signature_problem(app: SystemUserApp, signed: str, now: datetime) -> str | None:
    """Why ``token.yyyyMMddHHmm.signature`` is not the app's fresh signature, if it is not.

    The names are SuperOffice's ``AuthorizeErrorCode`` values.
    """
    data, _, signature = signed.rpartition(".")
    token, _, stamp = data.rpartition(".")
    try:
        app.public_key.verify(
            base64.b64decode(signature, validate=True),
            data.encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (InvalidSignature, binascii.Error, ValueError):
        return "InvalidSignature"
    if not _matches(token, app.system_user_token):
        return "Unknown system user token"
    try:
        when = datetime.strptime(stamp, "%Y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        return "InvalidTimestamp"
    if abs(now - when) > _SIGNATURE_SKEW:
        return "InvalidTimestamp"
    return None
