"""The ``Authorization`` header for each way SuperOffice accepts a caller, and its renewal.

An :class:`Auth` gives the header value for the next request; after a 401 the
client asks it to :meth:`~Auth.renew` once.  The static schemes (``basic``,
``ticket``, ``bearer``) cannot renew, so a 401 for them is final.  ``oauth``
(refresh-token grant) and ``system_user`` (a signed system user token
exchanged for a ticket) log in again at the environment's login host, through
the client's :class:`Transport`: those calls obey the tenant's limits and
retries like any other.

Never more than one login is in flight: an :class:`anyio.Lock` serialises
them, and requests arriving meanwhile wait and use its result.  A login that
failed is not repeated for :data:`RETRY_LOGIN_AFTER`: every request in that
time fails at once with the same error instead of adding a failed login.

A refused login says why in the login host's words, masked: a host that echoes
the posted form or body must not put the client secret, the refresh token or
the signed system user token into the error (each login hands the transport
the secrets it sends; see :mod:`~monitor.superoffice.redact`).
"""

from __future__ import annotations

import base64
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import jwt
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from monitor.config import AuthConfig
from monitor.config.superoffice import (
    BasicAuthConfig,
    BearerAuthConfig,
    OAuthConfig,
    SystemUserAuthConfig,
    TicketAuthConfig,
)
from monitor.superoffice.errors import (
    Answer,
    ApiError,
    AuthenticationFailed,
    MalformedResponse,
    error_fields,
    json_object,
    status_error,
)

__all__ = [
    "JWKS_PATH",
    "SYSTEM_USER_PATH",
    "TICKET_CLAIM",
    "TOKEN_PATH",
    "BasicAuth",
    "BearerAuth",
    "Login",
    "OAuthAuth",
    "SystemUserAuth",
    "TicketAuth",
    "auth_from_config",
    "sign_system_user_token",
]

from monitor.types import Auth, Transport

log = structlog.get_logger("batchmon.auth")


#: On the environment's host (``https://{environment}.superoffice.com``).
TOKEN_PATH = "/login/common/oauth/tokens"  # noqa: S105 - a URL path, not a password
SYSTEM_USER_PATH = "/Login/api/PartnerSystemUser/Authenticate"
JWKS_PATH = "/login/.well-known/jwks"

_CLAIMS = "http://schemes.superoffice.net/identity/"
#: The system user ticket (``7T:…``) in the JWT the system user login returns.
TICKET_CLAIM = _CLAIMS + "ticket"
_SERIAL_CLAIM = _CLAIMS + "serial"
_CONTEXT_CLAIM = _CLAIMS + "ctx"
#: Who signs system user JWTs; their audience is ``spn:`` + the database serial.
_SYSTEM_USER_ISSUER = "SuperOffice AS"

#: Login answers are small; anything bigger is not one.
MAX_LOGIN_BYTES = 256 << 10
#: Renew this long before a credential runs out (at most half its lifetime).
RENEW_MARGIN = timedelta(minutes=5)
#: A system user ticket lives this long after its last use (sliding expiration).
TICKET_LIFETIME = timedelta(hours=6)
#: After a failed login, requests fail at once for this long instead of logging in again.
RETRY_LOGIN_AFTER = timedelta(seconds=30)
#: Clock difference tolerated on a JWT's ``exp`` and ``nbf``.
JWT_LEEWAY = timedelta(seconds=60)
#: ``expires_in`` is documented as one hour; assumed when an answer leaves it out.
_DEFAULT_TOKEN_LIFETIME = 3600.0
_HTTP_CLIENT_ERROR = 400
_REFUSED = (400, 401, 403)
#: The most of a login host's own explanation quoted in an error.
_MAX_SAID = 300


@dataclass(frozen=True, kw_only=True)
class Login:
    """What the renewing schemes need: the way out, the login host, the tenant, the time."""

    transport: Transport
    #: ``https://{environment}.superoffice.com`` or the configured override.
    base_url: str
    #: The context identifier, e.g. ``Cust12345`` (``system_user`` needs it).
    tenant: str | None
    clock: Callable[[], datetime]


class _Static:
    """A credential that never changes, so it cannot be renewed."""

    _value: str

    async def authorization(self) -> str:
        """The header value; it never changes."""
        return self._value

    async def renew(self, rejected: str) -> bool:
        """A fixed credential cannot be renewed: the 401 stands."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(********)"


class BasicAuth(_Static):
    """``Basic`` with username and password (onsite installations)."""

    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._value = f"Basic {token}"


class TicketAuth(_Static):
    """``SOTicket 7T:...``: a ticket from a login (send ``SO-AppToken`` along)."""

    def __init__(self, ticket: str) -> None:
        self._value = f"SOTicket {ticket}"


class BearerAuth(_Static):
    """``Bearer 8A:...``: a static access token (Online)."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"


class _Renewing(ABC):
    """A credential fetched at the login host, cached, and renewed one login at a time."""

    #: For logs: which scheme logged in.
    scheme: str
    #: A credential whose lifetime restarts with each use lives this long after its last.
    sliding: timedelta | None = None

    def __init__(self, login: Login) -> None:
        self._login = login
        self._lock = anyio.Lock()
        self._value: str | None = None
        #: When to renew before using the credential again.
        self._renew_at: datetime | None = None
        #: Until when a failed login is not retried, and its error.
        self._failure: tuple[datetime, ApiError] | None = None

    async def authorization(self) -> str:
        """The cached header value, after a login if there is none or it is about to expire."""
        value = self._value
        if value is None or self._expiring():
            async with self._lock:
                value = self._value
                if value is None or self._expiring():
                    value = await self._log_in()
        self._used()
        return value

    async def renew(self, rejected: str) -> bool:
        """Log in again, unless another request already replaced ``rejected``."""
        async with self._lock:
            if self._value is None or self._value == rejected:
                await self._log_in()
        return True

    def _expiring(self) -> bool:
        return self._renew_at is not None and self._login.clock() >= self._renew_at

    def _used(self) -> None:
        """Note a use of the credential: a sliding lifetime starts again."""
        if self.sliding is not None and self._renew_at is not None:
            self._renew_at = self._login.clock() + self.sliding - RENEW_MARGIN

    async def _log_in(self) -> str:
        """Fetch a new credential (the caller holds the lock)."""
        now = self._login.clock()
        if self._failure is not None and now < self._failure[0]:
            # The same error again, without a fresh traceback piling onto the old one.
            raise self._failure[1].with_traceback(None)
        self._value = None
        try:
            value, renew_at = await self._fetch(now)
        except ApiError as exc:
            self._failure = (now + RETRY_LOGIN_AFTER, exc)
            log.warning(
                "login_failed",
                scheme=self.scheme,
                reason=exc.reason,
                error=str(exc),
                retry_in=RETRY_LOGIN_AFTER.total_seconds(),
            )
            raise
        self._failure = None
        self._value, self._renew_at = value, renew_at
        log.info("logged_in", scheme=self.scheme, renew_at=renew_at.isoformat())
        return value

    @abstractmethod
    async def _fetch(self, now: datetime) -> tuple[str, datetime]:
        """Log in: the header value, and when to renew it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(********)"


class OAuthAuth(_Renewing):
    """``Bearer`` access tokens from the refresh-token grant, renewed before their hour is up."""

    scheme = "oauth"

    def __init__(
        self,
        login: Login,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        redirect_uri: str | None = None,
    ) -> None:
        super().__init__(login)
        self._client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self._redirect_uri = redirect_uri

    async def _fetch(self, now: datetime) -> tuple[str, datetime]:
        form = {
            "grant_type": "refresh_token",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "refresh_token": self._refresh_token,
        }
        if self._redirect_uri is not None:
            form["redirect_uri"] = self._redirect_uri
        token, lifetime, refresh_token = await self._login.transport.request(
            "POST",
            self._login.base_url,
            TOKEN_PATH,
            form=form,
            secrets=(self._client_secret, self._refresh_token),
            parse=_token_answer,
            limit=MAX_LOGIN_BYTES,
        )
        if refresh_token is not None:
            # A rotated refresh token replaces the old one, which may stop working.
            self._refresh_token = refresh_token
        expires = timedelta(seconds=lifetime)
        return f"Bearer {token}", now + expires - min(RENEW_MARGIN, expires / 2)


def sign_system_user_token(token: str, key: rsa.RSAPrivateKey, when: datetime) -> str:
    """``token.yyyyMMddHHmm.signature``: RSA-SHA256 (PKCS#1 v1.5) of the first two, base64."""
    data = f"{token}.{when.astimezone(UTC):%Y%m%d%H%M}"
    signature = key.sign(data.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{data}.{base64.b64encode(signature).decode('ascii')}"


class SystemUserAuth(_Renewing):
    """``SOTicket`` from the system user flow: a signed token exchanged for a validated JWT.

    The ticket slides: it expires :data:`TICKET_LIFETIME` after its last use, so
    a daemon that polls keeps it; after a long pause it is renewed before use.
    """

    scheme = "system_user"
    sliding = TICKET_LIFETIME

    def __init__(
        self,
        login: Login,
        *,
        client_secret: str,
        private_key: rsa.RSAPrivateKey,
        system_user_token: str,
        federation_key: rsa.RSAPublicKey | None = None,
    ) -> None:
        if login.tenant is None:
            msg = "the system user flow needs the tenant's context identifier"
            raise ValueError(msg)
        super().__init__(login)
        self._tenant = login.tenant
        self._client_secret = client_secret
        self._private_key = private_key
        self._system_user_token = system_user_token
        self._federation_key = federation_key
        self._jwks: jwt.PyJWKSet | None = None

    async def _fetch(self, now: datetime) -> tuple[str, datetime]:
        signed = sign_system_user_token(self._system_user_token, self._private_key, now)
        body = {
            "SignedSystemToken": signed,
            "ApplicationToken": self._client_secret,
            "ContextIdentifier": self._tenant,
            "ReturnTokenType": "JWT",
        }
        token = await self._login.transport.request(
            "POST",
            self._login.base_url,
            SYSTEM_USER_PATH,
            json=body,
            secrets=(signed, self._system_user_token, self._client_secret),
            parse=_system_user_answer,
            limit=MAX_LOGIN_BYTES,
        )
        claims = await self._validate(token, now)
        ticket = claims.get(TICKET_CLAIM)
        if not isinstance(ticket, str) or not ticket:
            msg = "the system user JWT has no ticket claim"
            raise AuthenticationFailed(msg)
        return f"SOTicket {ticket}", now + TICKET_LIFETIME - RENEW_MARGIN

    async def _validate(self, token: str, now: datetime) -> dict[str, Any]:
        """The JWT's claims once its signature, issuer, audience, times and tenant check out."""
        what = "the system user JWT did not validate"
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm != "RS256":
                msg = f"{what}: signed with {algorithm!r}, expected 'RS256'"
                raise AuthenticationFailed(msg)
            key: rsa.RSAPublicKey | jwt.PyJWK
            if self._federation_key is not None:
                key = self._federation_key
            else:
                key = await self._jwks_key(header.get("kid"))
            unverified = jwt.decode(token, options={"verify_signature": False})
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=f"spn:{unverified.get(_SERIAL_CLAIM)}",
                issuer=_SYSTEM_USER_ISSUER,
                # Times are checked below against batchmon's clock.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "aud"],
                },
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"{what}: {exc}") from None
        problem = _time_problem(claims, now) or self._tenant_problem(claims)
        if problem is not None:
            raise AuthenticationFailed(f"{what}: {problem}")
        return claims

    def _tenant_problem(self, claims: Mapping[str, Any]) -> str | None:
        context = claims.get(_CONTEXT_CLAIM)
        if context is not None and str(context).casefold() != self._tenant.casefold():
            return f"it is for tenant {context!r}, not {self._tenant!r}"
        return None

    async def _jwks_key(self, kid: object) -> jwt.PyJWK:
        """The environment's signing key ``kid``; the set is fetched again once if it is new."""
        for fresh in (False, True):
            if self._jwks is None or fresh:
                self._jwks = await self._login.transport.request(
                    "GET",
                    self._login.base_url,
                    JWKS_PATH,
                    parse=_jwks_answer,
                    limit=MAX_LOGIN_BYTES,
                )
            keys = self._jwks.keys
            if kid is None and len(keys) == 1:
                return keys[0]
            for key in keys:
                if key.key_id == kid:
                    return key
        msg = f"the system user JWT names signing key {kid!r}, which the environment does not list"
        raise AuthenticationFailed(msg)


def _time_problem(claims: Mapping[str, Any], now: datetime) -> str | None:
    """Why ``exp``/``nbf`` make the JWT unusable at ``now``, if they do."""
    for claim, late in (("exp", True), ("nbf", False)):
        value = claims.get(claim)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{claim} is not a number"
        moment = datetime.fromtimestamp(value, UTC)
        if late and now > moment + JWT_LEEWAY:
            return f"it expired at {moment:%Y-%m-%d %H:%M:%S}Z"
        if not late and now < moment - JWT_LEEWAY:
            return f"it is not valid before {moment:%Y-%m-%d %H:%M:%S}Z"
    return None


def _refused(answer: Answer, said: str | None) -> AuthenticationFailed:
    reason = f": {said}" if said else ""
    msg = f"{answer.what}: the login was refused (HTTP {answer.status}){reason}"
    return AuthenticationFailed(msg, status=answer.status)


def _oauth_error(answer: Answer) -> str | None:
    """``invalid_grant: The grant was revoked`` from an RFC 6749 error answer, if it is one.

    Secrets masked before it is cut to length, so no part of one is left.
    """
    try:
        data = json.loads(answer.body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return None
    description = data.get("error_description")
    said = f"{data['error']}: {description}" if isinstance(description, str) else data["error"]
    return answer.redact(said)[:_MAX_SAID]


def _token_answer(answer: Answer) -> tuple[str, float, str | None]:
    """Access token, lifetime in seconds and any new refresh token from the token endpoint."""
    if answer.status in _REFUSED:
        raise _refused(answer, _oauth_error(answer))
    if answer.status >= _HTTP_CLIENT_ERROR:
        raise status_error(answer)
    data = json_object(answer)
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        msg = f"{answer.what}: the answer has no access_token"
        raise MalformedResponse(msg, status=answer.status)
    raw = data.get("expires_in", _DEFAULT_TOKEN_LIFETIME)
    try:
        # The documentation shows it both as a number and as a string.
        lifetime = float(raw) if not isinstance(raw, bool) else -1.0
    except (TypeError, ValueError):
        lifetime = -1.0
    if not 0 < lifetime < float("inf"):
        msg = f"{answer.what}: expires_in is not a positive number of seconds"
        raise MalformedResponse(msg, status=answer.status)
    refresh_token = data.get("refresh_token")
    return (
        token,
        lifetime,
        refresh_token if isinstance(refresh_token, str) and refresh_token else None,
    )


def _system_user_answer(answer: Answer) -> str:
    """The JWT from ``{"IsSuccessful", "Token", "ErrorMessage"}``."""
    if answer.status in _REFUSED:
        raise _refused(answer, error_fields(answer)[1])
    if answer.status >= _HTTP_CLIENT_ERROR:
        raise status_error(answer)
    data = json_object(answer)
    if data.get("IsSuccessful") is not True:
        said = data.get("ErrorMessage")
        reason = answer.redact(str(said))[:_MAX_SAID] if said else "IsSuccessful is not true"
        raise _refused(answer, reason)
    token = data.get("Token")
    if not isinstance(token, str) or not token:
        msg = f"{answer.what}: the answer has no Token"
        raise MalformedResponse(msg, status=answer.status)
    return token


def _jwks_answer(answer: Answer) -> jwt.PyJWKSet:
    if answer.status >= _HTTP_CLIENT_ERROR:
        raise status_error(answer)
    try:
        return jwt.PyJWKSet.from_dict(json_object(answer))
    except jwt.PyJWTError as exc:
        msg = f"{answer.what}: not a usable key set ({answer.redact(str(exc))})"
        raise MalformedResponse(msg, status=answer.status) from None


def auth_from_config(config: AuthConfig, *, login: Login | None = None) -> Auth:
    """The scheme a validated ``[superoffice.auth]`` section describes.

    ``oauth`` and ``system_user`` need ``login``: the client provides it when it
    is built from the whole ``[superoffice]`` section.
    """
    match config:
        case BasicAuthConfig():
            return BasicAuth(config.username, config.password.get_secret_value())
        case TicketAuthConfig():
            return TicketAuth(config.ticket.get_secret_value())
        case BearerAuthConfig():
            return BearerAuth(config.token.get_secret_value())
        case OAuthConfig():
            return OAuthAuth(
                _login(config, login),
                client_id=config.client_id,
                client_secret=config.client_secret.get_secret_value(),
                refresh_token=config.refresh_token.get_secret_value(),
                redirect_uri=config.redirect_uri,
            )
        case SystemUserAuthConfig():
            return SystemUserAuth(
                _login(config, login),
                client_secret=config.client_secret.get_secret_value(),
                private_key=config.signing_key(),
                system_user_token=config.system_user_token.get_secret_value(),
                federation_key=config.federation_key(),
            )


def _login(config: OAuthConfig | SystemUserAuthConfig, login: Login | None) -> Login:
    """The login an online auth type needs; a programming error without one."""
    if login is None:
        msg = (
            f"auth type {config.type!r} logs in at the environment's host; "
            "let SuperOfficeClient(session, config) build it"
        )
        raise ValueError(msg)
    return login
