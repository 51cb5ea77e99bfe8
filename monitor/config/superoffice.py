"""The ``[superoffice]`` section: where the WebAPI is, and ``[superoffice.auth]``, how to log in.

The auth types' keys, and the RSA keys ``system_user`` signs and verifies with, are checked
here when the configuration loads, so a bad key is refused by ``check-config``.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Final, Literal, Self, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from monitor.config.base import _base_dir, _Section, _Variant
from monitor.config.errors import _carry, _invalid, _problem
from monitor.config.values import Duration, Secret, _Float, _http_base, _Int

__all__ = [
    "AUTH_TYPES",
    "ONLINE_AUTH_TYPES",
    "AuthConfig",
    "BasicAuthConfig",
    "BearerAuthConfig",
    "OAuthConfig",
    "SuperOfficeConfig",
    "SystemUserAuthConfig",
    "TicketAuthConfig",
]

#: ``<Modulus>…</Modulus>`` and its siblings in an RSA XML key (.NET's ``ToXmlString``).
_RSA_XML_PART: Final = re.compile(r"<(\w+)>\s*([A-Za-z0-9+/=\s]+?)\s*</\1>")


def _rsa_private_key(text: str) -> rsa.RSAPrivateKey:
    """The app's key from PEM or from the RSA XML SuperOffice hands out; ValueError if neither."""
    if "<RSAKeyValue>" in text:
        parts = {
            name: int.from_bytes(base64.b64decode(value), "big")
            for name, value in _RSA_XML_PART.findall(text)
        }
        try:
            public = rsa.RSAPublicNumbers(e=parts["Exponent"], n=parts["Modulus"])
            numbers = rsa.RSAPrivateNumbers(
                p=parts["P"],
                q=parts["Q"],
                d=parts["D"],
                dmp1=parts["DP"],
                dmq1=parts["DQ"],
                iqmp=parts["InverseQ"],
                public_numbers=public,
            )
        except KeyError as exc:
            raise ValueError(f"the RSA XML key has no <{exc.args[0]}>") from None
        return numbers.private_key()
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except TypeError:
        raise ValueError("the PEM key is encrypted; give it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("expected an RSA private key, as PEM or as RSA XML") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("expected an RSA private key, got another kind of key")  # noqa: TRY004
    return key


def _rsa_public_key(data: bytes) -> rsa.RSAPublicKey:
    """SuperOffice's signing key from a certificate (PEM or DER, as .crt) or a PEM public key."""
    key: object = None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        elif b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = x509.load_der_x509_certificate(data).public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("expected an X.509 certificate (PEM or DER) or a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("expected an RSA key, got another kind of key")  # noqa: TRY004
    return key


class _Auth(_Variant):
    """How batchmon authenticates to the WebAPI; each type has its own keys.

    ``basic`` sends ``username`` and ``password`` (onsite), ``ticket`` sends
    ``SOTicket <ticket>``, ``bearer`` sends ``Bearer <token>``.  ``oauth`` renews a
    ``Bearer`` access token with a refresh token; ``system_user`` signs the system
    user token with the app's RSA key and sends the ticket it is given.
    """

    _union = "auth"


class BasicAuthConfig(_Auth):
    """``Basic`` with a user name and password (onsite)."""

    _secrets = ("password",)

    type: Literal["basic"] = "basic"
    username: str = Field(min_length=1)
    password: Secret


class TicketAuthConfig(_Auth):
    """``SOTicket <ticket>``."""

    _secrets = ("ticket",)

    type: Literal["ticket"] = "ticket"
    ticket: Secret


class BearerAuthConfig(_Auth):
    """``Bearer <token>``."""

    _secrets = ("token",)

    type: Literal["bearer"] = "bearer"
    token: Secret


class OAuthConfig(_Auth):
    """A ``Bearer`` access token renewed with a refresh token (SuperOffice Online)."""

    _secrets = ("client_secret", "refresh_token")

    type: Literal["oauth"] = "oauth"
    #: The app's client id.
    client_id: str = Field(min_length=1)
    #: The app's client secret (the application token).
    client_secret: Secret
    #: From the authorization-code flow; long-lived, valid while consent lasts.
    refresh_token: Secret
    #: Sent along when the app was registered with one.
    redirect_uri: str | None = Field(default=None, min_length=1)


class SystemUserAuthConfig(_Auth):
    """The system user token signed with the app's RSA key, for a ticket (SuperOffice Online)."""

    _secrets = ("client_secret", "private_key", "system_user_token")

    type: Literal["system_user"] = "system_user"
    #: The app's client secret (the application token).
    client_secret: Secret
    #: The app's RSA private key (PEM or RSA XML), usually ``private_key_file``.
    private_key: Secret
    #: The token a tenant administrator's consent gave (``AppName-…``).
    system_user_token: Secret
    #: SuperOffice's public certificate or key for the returned JWT; without it the keys
    #: come from the environment's JWKS endpoint.
    federation_key_file: Path | None = None

    @field_validator("private_key")
    @classmethod
    def _usable_key(cls, key: Secret) -> Secret:
        """Refuse a key that cannot sign now, not at the first login."""
        _rsa_private_key(key.get_secret_value())
        return key

    @field_validator("federation_key_file")
    @classmethod
    def _readable_key(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        """Resolve like every other path in the file, and refuse a file that holds no key."""
        if path is None:
            return None
        path = _base_dir(info) / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read '{path}': {exc.strerror or type(exc).__name__}"
            ) from None
        try:
            _rsa_public_key(data)
        except ValueError as exc:
            raise ValueError(f"'{path}': {exc}") from None
        return path

    def signing_key(self) -> rsa.RSAPrivateKey:
        """The app's private key (checked when the configuration loaded)."""
        return _rsa_private_key(self.private_key.get_secret_value())

    def federation_key(self) -> rsa.RSAPublicKey | None:
        """SuperOffice's JWT signing key from the file, if one is configured."""
        if self.federation_key_file is None:
            return None
        return _rsa_public_key(self.federation_key_file.read_bytes())


#: ``[superoffice.auth]``: the model its ``type`` names, holding exactly that type's keys.
AuthConfig = Annotated[
    BasicAuthConfig | TicketAuthConfig | BearerAuthConfig | OAuthConfig | SystemUserAuthConfig,
    Field(discriminator="type"),
]
#: Each auth type's model, by ``type``.
AUTH_TYPES: Final[Mapping[str, type[_Auth]]] = MappingProxyType(
    {model.type_name(): model for model in get_args(get_args(AuthConfig)[0])}
)
#: The auth types that log in at the environment's login host.
ONLINE_AUTH_TYPES: Final = (OAuthConfig.type_name(), SystemUserAuthConfig.type_name())


_TENANT_RE: Final = re.compile(r"Cust[0-9]+", re.IGNORECASE)
_NO_LOCATION: Final = (
    "required, but not given; give url (the API base) or environment + tenant (SuperOffice Online)"
)


class SuperOfficeConfig(_Section):
    """Where the WebAPI is, how to talk to it and how hard to push it.

    The API is either at a fixed ``url`` (onsite, or a pinned Online host) or found
    through the tenant-status API from ``environment`` + ``tenant`` (Online, which
    moves tenants between numbered hosts).  The ``oauth`` and ``system_user`` auth
    types log in at the environment's host, so they need ``environment`` too.
    """

    _secrets = ("url", "app_token")

    #: The API base without a trailing slash; requests go to ``{url}/v1/...``.
    url: str | None = None
    #: SuperOffice Online's environment: ``sod`` (development), ``qaonline``/``stage``
    #: (stage) or ``online`` (production).
    environment: Literal["sod", "qaonline", "stage", "online"] | None = None
    #: The tenant's context identifier, e.g. ``Cust12345``.
    tenant: str | None = None
    #: Overrides ``https://{environment}.superoffice.com``, the login and tenant-status host.
    environment_url: str | None = None
    accept_language: str | None = None
    so_language: str | None = None
    so_culture: str | None = None
    so_time_zone: str | None = None
    #: The IANA zone in which dates without an offset are interpreted.
    tenant_time_zone: str = "UTC"
    app_token: Secret | None = None
    timeout: Annotated[Duration, Field(gt=0)] = 10.0
    connect_timeout: Annotated[Duration, Field(gt=0)] = 5.0
    max_concurrency: Annotated[_Int, Field(ge=1, le=64)] = 4
    max_requests_per_second: Annotated[_Float, Field(gt=0)] = 8.0
    #: Further attempts after a 5xx, 429, timeout or connection error.
    retries: Annotated[_Int, Field(ge=0, le=10)] = 2
    #: Full-jitter backoff: before retry n (from 0) wait a random time in
    #: ``[0, min(backoff_cap, backoff_base * 2**n)]``.
    backoff_base: Annotated[Duration, Field(gt=0)] = 0.5
    backoff_cap: Annotated[Duration, Field(gt=0)] = 30.0
    #: The longest ``Retry-After`` sat out inside one call; a longer one fails the call
    #: (and, after a 429, every call) until it has passed.
    max_retry_after: Duration = 60.0
    auth: AuthConfig

    @field_validator("url")
    @classmethod
    def _api_base(cls, url: str | None) -> str | None:
        """Accept an http(s) base URL with a host, refusing credentials and a query.

        A URL is not a secret: it is shown as it is (the ``batchmon_started`` log
        line, ``check-config``).  What could make it one is refused here, with the
        key named (a :class:`ConfigError`, exit 78): userinfo (``user:password@``;
        credentials belong in ``superoffice.auth``) and a query or fragment (a
        ``?token=…``).  ``url_file``/``url_env`` are accepted so that a deployment
        can keep the address beside its credentials, and pass the same checks.
        A refused value is never echoed.
        """
        if url is None:
            return None
        return _http_base(url, "e.g. 'https://online3.superoffice.com/Cust12345/api'")

    @field_validator("environment_url")
    @classmethod
    def _environment_base(cls, url: str | None) -> str | None:
        """Accept an http(s) base URL; tests and proxies point it at another host."""
        if url is None:
            return None
        return _http_base(url, "e.g. 'https://online.superoffice.com'")

    @field_validator("tenant")
    @classmethod
    def _context_identifier(cls, tenant: str | None) -> str | None:
        """A context identifier is ``Cust`` and digits; anything else will never resolve."""
        if tenant is not None and not _TENANT_RE.fullmatch(tenant):
            raise ValueError(f"expected a context identifier like 'Cust12345', got {tenant!r}")
        return tenant

    @field_validator("tenant_time_zone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        """Accept only a zone that :class:`~zoneinfo.ZoneInfo` knows, so dates parse later."""
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
            raise ValueError(
                f"unknown time zone {name!r}; expected an IANA name like 'Europe/Oslo'"
            ) from None
        return name

    @model_validator(mode="wrap")
    @classmethod
    def _located(cls, data: object, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """Say that the API's location is missing even when other keys are wrong too."""
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            given = isinstance(data, Mapping) and any(
                key in data for key in ("url", "url_file", "url_env", "tenant")
            )
            if given or any(error["loc"][:1] == ("url",) for error in errors):
                raise
            problems = [*map(_carry, errors), _problem(("url",), _NO_LOCATION)]
        raise _invalid(cls.__name__, problems)

    @model_validator(mode="after")
    def _where_the_api_is(self) -> Self:
        """Exactly one of ``url`` and ``tenant``; an environment exactly where one is needed."""
        problems = []
        online_auth = self.auth.type in ONLINE_AUTH_TYPES
        has_environment = self.environment is not None or self.environment_url is not None
        if self.url is not None and self.tenant is not None:
            problems.append(
                _problem(("tenant",), "give either url or environment + tenant, not both")
            )
        elif self.url is None and self.tenant is None:
            problems.append(_problem(("url",), _NO_LOCATION))
        if self.tenant is None and self.auth.type == "system_user":
            problems.append(_problem(("tenant",), "required for auth type 'system_user'"))
        if not has_environment and (self.tenant is not None or online_auth):
            needed_by = "tenant" if self.tenant is not None else f"auth type {self.auth.type!r}"
            problems.append(
                _problem(
                    ("environment",),
                    f"required with {needed_by} (sod, qaonline or online)",
                )
            )
        if has_environment and self.tenant is None and not online_auth:
            key = "environment" if self.environment is not None else "environment_url"
            problems.append(_problem((key,), f"not used with url and auth type {self.auth.type!r}"))
        if self.backoff_base > self.backoff_cap:
            message = (
                f"must not be longer than superoffice.backoff_cap ({self.backoff_cap:g}s), "
                f"got {self.backoff_base:g}s"
            )
            problems.append(_problem(("backoff_base",), message))
        if problems:
            raise _invalid(type(self).__name__, problems)
        return self

    @property
    def environment_base(self) -> str | None:
        """The login and tenant-status host, e.g. ``https://online.superoffice.com``."""
        if self.environment_url is not None:
            return self.environment_url
        if self.environment is not None:
            return f"https://{self.environment}.superoffice.com"
        return None

    @property
    def tzinfo(self) -> dt.tzinfo:
        """The zone of :attr:`tenant_time_zone`."""
        return ZoneInfo(self.tenant_time_zone)
