"""The TOML configuration of batchmon, validated with pydantic.

The keys are the contract of DESIGN.md ("Configuration"); ``config/batchmon.example.toml``
documents each of them.

Three things shape this module:

* A bad configuration is refused with *every* problem listed by path (``sinks[1].name: ...``),
  so one run of ``batchmon check-config`` shows everything to fix.  All problems surface as a
  single :class:`ConfigError`; pydantic's error locations are turned into dotted paths and
  its messages into plain words where they are not plain already.
* A secret ``X`` may be given inline, as ``X_file`` (systemd's ``LoadCredential`` puts it in
  ``$CREDENTIALS_DIRECTORY``) or as ``X_env``.  One shared validator resolves the three
  forms, so every section behaves the same.  Secret values never reach an error message, a
  ``repr`` or :func:`redacted`: errors name keys, files and variables, never values.
* Every section forbids unknown keys, because a typo (``pasword_file``) must not fall back
  to a default without a word.
"""

from __future__ import annotations

import base64
import datetime as dt
import difflib
import fnmatch
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Final, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from monitor.sinks.render import compile_template
from monitor.tracking.events import EventType

__all__ = [
    "EVENT_TYPES",
    "AuthConfig",
    "Config",
    "ConfigError",
    "Duration",
    "HttpConfig",
    "LogConfig",
    "PollConfig",
    "Secret",
    "SinkConfig",
    "StateConfig",
    "SuperOfficeConfig",
    "WatchConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "redacted",
]

#: The event types a sink's ``events`` filter may name (see DESIGN.md, "Events").
EVENT_TYPES: Final = tuple(kind.value for kind in EventType)

#: What :func:`redacted` shows instead of a secret.
_MASK: Final = "********"


class ConfigError(Exception):
    """The configuration cannot be used; :attr:`problems` says why, one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__(*self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


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


# --- the shared section base: unknown keys, later versions' keys, secret forms ---------------


class _Section(BaseModel):
    """Base of every section: strict about keys, and resolves secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Fields holding secrets; each may also be given as ``<name>_file`` or ``<name>_env``.
    _secrets: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _prepare(
        cls, data: object, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        """Sort the given keys before field validation, and report all problems together.

        This is a wrap validator, not a before validator, so that the problems found here
        (an unreadable secret file, an unknown key) are listed together with the field errors
        of the same section instead of hiding them until the next run.
        """
        if not isinstance(data, Mapping):
            return handler(data)
        given = {key: value for key, value in data.items() if key in cls.model_fields}
        problems = list(cls._unknown_keys(data))
        unresolved: set[tuple[str | int, ...]] = set()
        for name in cls._secrets:
            problem = _resolve_secret(name, data, given, _base_dir(info))
            if problem is not None:
                problems.append(problem)
                unresolved.add((name,))

        if not problems:
            return handler(given)
        try:
            handler(given)
        except ValidationError as exc:
            # A secret that could not be read is also "missing"; saying so twice helps no one.
            problems += [_carry(e) for e in exc.errors() if e["loc"][:1] not in unresolved]
        raise _invalid(cls.__name__, problems)

    @classmethod
    def _unknown_keys(cls, data: Mapping[str, object]) -> list[InitErrorDetails]:
        """Report the keys that are neither fields nor a secret's ``_file``/``_env`` form."""
        known = set(cls.model_fields)
        known.update(f"{name}{suffix}" for name in cls._secrets for suffix in ("_file", "_env"))
        problems = []
        for key in data:
            if key in known:
                continue
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(_problem((key,), f"unknown key{hint}"))
        return problems


def _base_dir(info: ValidationInfo) -> Path:
    """The directory relative paths are resolved against (the config file's)."""
    context = info.context
    if isinstance(context, Mapping):
        base_dir = context.get("base_dir")
        if isinstance(base_dir, Path):
            return base_dir
    return Path()


def _resolve_secret(
    name: str, data: Mapping[str, object], given: dict[str, object], base_dir: Path
) -> InitErrorDetails | None:
    """Put secret ``name`` into ``given`` from whichever one form ``data`` has it in.

    Returns the problem, if any.  The problem names the key, the file or the variable; it
    never contains the value.
    """
    forms = [key for key in (name, f"{name}_file", f"{name}_env") if key in data]
    if not forms:
        return None
    if len(forms) > 1:
        given.pop(name, None)
        keys = " and ".join(repr(key) for key in forms)
        return _problem((name,), f"given as both {keys}; use exactly one")
    (key,) = forms
    value = data[key]
    if key == name:
        return _problem((key,), "must not be empty") if value == "" else None
    if not isinstance(value, str) or not value:
        what = "file name" if key.endswith("_file") else "environment variable name"
        return _problem((key,), f"expected a {what}, got {_kind(value)}")
    if key.endswith("_file"):
        path = Path(value)
        if not path.is_absolute():
            path = Path(os.environ.get("CREDENTIALS_DIRECTORY") or base_dir) / path
        try:
            secret = path.read_text(encoding="utf-8").removesuffix("\n")
        except OSError as exc:
            return _problem((key,), f"cannot read '{path}': {exc.strerror or type(exc).__name__}")
        except UnicodeDecodeError:
            return _problem((key,), f"cannot read '{path}': not UTF-8 text")
        where = f"file '{path}'"
    else:
        env_value = os.environ.get(value)
        if env_value is None:
            return _problem((key,), f"environment variable '{value}' is not set")
        secret, where = env_value, f"environment variable '{value}'"
    if not secret:
        return _problem((key,), f"{where} is empty")
    given[name] = secret
    return None


# --- sections -------------------------------------------------------------------------------

_AUTH_NEEDS: Final[Mapping[str, tuple[str, ...]]] = {
    "basic": ("username", "password"),
    "ticket": ("ticket",),
    "bearer": ("token",),
    "oauth": ("client_id", "client_secret", "refresh_token"),
    "system_user": ("client_secret", "private_key", "system_user_token"),
}
#: Fields a type may have but does not need.
_AUTH_OPTIONAL: Final[Mapping[str, tuple[str, ...]]] = {
    "oauth": ("redirect_uri",),
    "system_user": ("federation_key_file",),
}
_AUTH_FIELDS: Final = (
    "username",
    "password",
    "ticket",
    "token",
    "client_id",
    "client_secret",
    "refresh_token",
    "redirect_uri",
    "private_key",
    "system_user_token",
    "federation_key_file",
)
#: The auth types that log in at the environment's login host.
ONLINE_AUTH_TYPES: Final = ("oauth", "system_user")

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


class AuthConfig(_Section):
    """How batchmon authenticates to the WebAPI; which fields are required depends on ``type``.

    ``basic`` sends ``username`` and ``password`` (onsite), ``ticket`` sends
    ``SOTicket <ticket>``, ``bearer`` sends ``Bearer <token>``.  ``oauth`` renews a
    ``Bearer`` access token with a refresh token; ``system_user`` signs the system
    user token with the app's RSA key and sends the ticket it is given.
    """

    _secrets = (
        "password",
        "ticket",
        "token",
        "client_secret",
        "refresh_token",
        "private_key",
        "system_user_token",
    )

    type: Literal["basic", "ticket", "bearer", "oauth", "system_user"]
    username: str | None = Field(default=None, min_length=1)
    password: Secret | None = None
    ticket: Secret | None = None
    token: Secret | None = None
    #: ``oauth``: the app's client id.
    client_id: str | None = Field(default=None, min_length=1)
    #: ``oauth`` and ``system_user``: the app's client secret (the application token).
    client_secret: Secret | None = None
    #: ``oauth``: from the authorization-code flow; long-lived, valid while consent lasts.
    refresh_token: Secret | None = None
    #: ``oauth``: sent along when the app was registered with one.
    redirect_uri: str | None = Field(default=None, min_length=1)
    #: ``system_user``: the app's RSA private key (PEM or RSA XML), usually ``private_key_file``.
    private_key: Secret | None = None
    #: ``system_user``: the token a tenant administrator's consent gave (``AppName-…``).
    system_user_token: Secret | None = None
    #: ``system_user``: SuperOffice's public certificate or key for the returned JWT;
    #: without it the keys come from the environment's JWKS endpoint.
    federation_key_file: Path | None = None

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

    @model_validator(mode="after")
    def _fields_of_type(self) -> Self:
        """Require the fields of the chosen type and refuse the others, all in one go."""
        needed = _AUTH_NEEDS[self.type]
        allowed = needed + _AUTH_OPTIONAL.get(self.type, ())
        problems = []
        for key in _AUTH_FIELDS:
            present = getattr(self, key) is not None
            if key in needed and not present:
                forms = f" (give {key}, {key}_file or {key}_env)" if key in self._secrets else ""
                problems.append(_problem((key,), f"required for auth type {self.type!r}{forms}"))
            elif present and key not in allowed:
                problems.append(_problem((key,), f"not used by auth type {self.type!r}"))
        if self.private_key is not None and "private_key" in needed:
            try:
                _rsa_private_key(self.private_key.get_secret_value())
            except ValueError as exc:
                problems.append(_problem(("private_key",), str(exc)))
        if problems:
            raise _invalid(type(self).__name__, problems)
        return self

    def signing_key(self) -> rsa.RSAPrivateKey:
        """``system_user``: the app's private key (checked when the configuration loaded)."""
        if self.private_key is None:
            raise ValueError(f"auth type {self.type!r} has no private key")
        return _rsa_private_key(self.private_key.get_secret_value())

    def federation_key(self) -> rsa.RSAPublicKey | None:
        """``system_user``: SuperOffice's JWT signing key from the file, if one is configured."""
        if self.federation_key_file is None:
            return None
        return _rsa_public_key(self.federation_key_file.read_bytes())


_TENANT_RE: Final = re.compile(r"Cust[0-9]+", re.IGNORECASE)
_NO_LOCATION: Final = (
    "required, but not given; give url (the API base) or environment + tenant (SuperOffice Online)"
)


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


#: The states a discovery rule can ask for (``All`` is a wildcard, ``Unknown`` no state).
DISCOVERABLE_STATES: Final = (
    "New",
    "Aquired",
    "Started",
    "Succeeded",
    "Failed",
    "SucceededManualCleanup",
)


class DiscoverRule(_Section):
    """Watch tasks found by an ``Agents/Batch`` list call, not only listed ids."""

    #: ``[]`` all tasks, ``[0]`` system tasks, ``[-1]`` all user tasks, else these associates.
    associates: list[Annotated[int, Strict(), Field(ge=-1, le=_INT32_MAX)]] = []
    #: Only tasks in these states are watched.
    states: list[str] = ["New", "Aquired", "Started"]
    #: A glob on the task name (``"Export*"``); ``None`` means any.
    name: Annotated[str, Field(min_length=1)] | None = None
    #: How often the list call runs.
    every: Annotated[Duration, Field(gt=0)] = 30.0

    @field_validator("states")
    @classmethod
    def _known_states(cls, states: list[str]) -> list[str]:
        """Refuse a misspelt state (``Acquired``): the rule would silently find nothing."""
        if not states:
            raise ValueError("must not be empty; leave it out for New, Aquired and Started")
        problems = []
        for index, state in enumerate(states):
            if state not in DISCOVERABLE_STATES:
                close = difflib.get_close_matches(state, DISCOVERABLE_STATES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(_problem((index,), f"unknown state {state!r}{hint}"))
        if problems:
            raise _invalid(cls.__name__, problems)
        return list(dict.fromkeys(states))


class WatchConfig(_Section):
    """The tasks to watch: listed ids, and tasks that discovery rules find."""

    #: Task ids, duplicates dropped, order kept.
    ids: list[_TaskId] = []
    #: ``[[watch.discover]]`` rules.
    discover: list[DiscoverRule] = []

    @field_validator("ids")
    @classmethod
    def _unique(cls, ids: list[int]) -> list[int]:
        """Drop repeated ids: watching a task twice would announce everything twice."""
        return list(dict.fromkeys(ids))


class PollConfig(_Section):
    """When tasks are polled, and when silence or failure becomes an event."""

    #: For active tasks.
    interval: Annotated[Duration, Field(gt=0)] = 5.0
    #: For tasks that are not active (yet).
    idle_interval: Annotated[Duration, Field(gt=0)] = 60.0
    #: An active task without progress for this long is ``task.stalled``.
    stall_after: Annotated[Duration, Field(gt=0)] = 900.0
    #: Percentage points between ``task.progress`` events.
    progress_step: Annotated[_Int, Field(ge=1, le=100)] = 10
    #: At most one ``task.progress`` per task per this long.
    progress_min_interval: Duration = 30.0
    #: Random spread of each interval, as a fraction of it.
    jitter: Annotated[_Float, Field(ge=0, le=0.5)] = 0.1
    #: A finished task is polled once more to confirm it, and for this long after (it may
    #: be restarted, or deleted); then no more.
    terminal_linger: Duration = 0.0
    #: From this many due tasks in the same state up, one list call replaces their GETs.
    bulk_threshold: Annotated[_Int, Field(ge=2)] = 3
    #: Consecutive failed poll cycles before ``monitor.api_down``.
    api_down_after: Annotated[_Int, Field(ge=1)] = 3

    @model_validator(mode="after")
    def _interval_within_idle(self) -> Self:
        """Active tasks are the ones worth watching closely, so they are polled at least as often."""
        if self.interval > self.idle_interval:
            message = (
                f"must not be longer than poll.idle_interval ({self.idle_interval:g}s), "
                f"got {self.interval:g}s"
            )
            raise _invalid(type(self).__name__, [_problem(("interval",), message)])
        return self


class StateConfig(_Section):
    """Where the SQLite state (snapshots, tracker memory, outbox) lives."""

    #: A relative path is resolved against the config file's directory.
    path: Path | None = None

    @field_validator("path")
    @classmethod
    def _against_base_dir(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        """Resolve a relative path like every other path in the file, not against the cwd."""
        if path is None:
            return None
        if path == Path():
            raise ValueError("must not be empty; leave it out for the default")
        if "\x00" in str(path):
            raise ValueError("must not contain a NUL character")
        return _base_dir(info) / path

    @property
    def resolved_path(self) -> Path:
        """``path``, else ``$STATE_DIRECTORY/state.db`` (systemd), else ``./.batchmon/state.db``."""
        if self.path is not None:
            return self.path
        # systemd separates several StateDirectory= entries with ':'; ours is the first.
        state_directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        if state_directory:
            return Path(state_directory) / "state.db"
        return Path(".batchmon", "state.db")


_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _split_listen(listen: str) -> tuple[str, int]:
    """``"[::1]:9808"`` -> ``("::1", 9808)``; raises :class:`ValueError` saying what is wrong."""
    example = "expected 'host:port', e.g. '127.0.0.1:9808', '0.0.0.0:9808' or '[::1]:9808'"
    if listen.startswith("["):
        host, bracket, port = listen[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{example}, got {listen!r}") from None
        if not bracket:
            raise ValueError(f"{example}, got {listen!r}")
    else:
        host, colon, port = listen.rpartition(":")
        if not colon:
            raise ValueError(f"{example}, got {listen!r}")
        if not host:
            raise ValueError(f"a host is required ('0.0.0.0:{port}' for all interfaces)")
        if ":" in host:
            raise ValueError(f"put an IPv6 address in brackets, e.g. '[::1]:9808', got {listen!r}")
        if not _HOSTNAME_RE.fullmatch(host):
            raise ValueError(f"{example}, got {listen!r}")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, got {port!r}")
    return host, int(port)


class HttpConfig(_Section):
    """The HTTP server for /metrics, health, the status page and the API."""

    _secrets = ("api_token",)

    #: ``host:port``; an IPv6 host in brackets.  Port 0 lets the OS choose.
    listen: str = "127.0.0.1:9808"
    #: Bearer token required for PUT/DELETE on /api/v1/watches.
    api_token: Secret | None = None
    #: Where people reach the status page (chat messages link to it), e.g.
    #: ``https://batchmon.example.com/``; without it, messages carry no link.
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        """Links in chat messages must be absolute http(s) URLs."""
        if url is None:
            return None
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "expected an absolute http(s) URL, e.g. 'https://batchmon.example.com/'"
            )
        return url.strip()

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, listen: str) -> str:
        """Refuse what the server could not bind, before anything starts."""
        _split_listen(listen)
        return listen

    @property
    def host(self) -> str:
        """The host to bind, without IPv6 brackets."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port to bind."""
        return _split_listen(self.listen)[1]


class LogConfig(_Section):
    """How batchmon logs; ``auto`` is console on a TTY and JSON otherwise (systemd)."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("format", "level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        """``level = "INFO"`` means what it says."""
        return value.lower() if isinstance(value, str) else value


_SINK_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")


#: Sink types that post to a URL (every type but ``log``).
URL_SINK_TYPES: Final = (
    "webhook",
    "slack",
    "teams",
    "discord",
    "mattermost",
    "googlechat",
    "alertmanager",
)
#: Sink types that send human-readable chat messages.
CHAT_SINK_TYPES: Final = ("slack", "teams", "discord", "mattermost", "googlechat")

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


class SinkConfig(_Section):
    """A destination for events, with optional filters (all must match)."""

    _secrets = ("url", "secret")

    #: Unique across sinks; the outbox and ``batchmon test-sink`` refer to it.
    name: str
    type: Literal[
        "log", "webhook", "slack", "teams", "discord", "mattermost", "googlechat", "alertmanager"
    ]
    #: Where to post (a secret: chat webhook URLs carry their own credentials).  For
    #: ``alertmanager`` the Alertmanager's base URL, e.g. ``http://127.0.0.1:9093``.
    url: Secret | None = None
    #: ``webhook`` only: the Standard Webhooks signing secret (``whsec_`` + base64).
    secret: Secret | None = None
    #: Chat sinks and ``webhook``: a Jinja2 template (sandboxed) for the message text.
    template: str | None = None
    #: Deliveries per second at most; default per type (Slack 1/s, Discord 5/2s, …).
    rate: Rate | None = None
    #: Deliveries in flight at once; each task's events still go out in order.  Default
    #: per type: 4 for ``webhook``, 1 for the rest (a chat channel reads best in order).
    concurrency: Annotated[int, Field(ge=1, le=32)] | None = None
    #: Chat sinks and ``webhook``: repeat failed and stalled tasks this often while they stay so.
    remind_every: Annotated[Duration, Field(gt=0)] | None = None
    #: Per delivery request.
    timeout: Annotated[Duration, Field(gt=0)] = 10.0
    #: Event types or globs like ``"task.*"``; ``None`` means all.
    events: list[str] | None = None
    #: Globs on the task name; ``None`` means any.
    names: list[Annotated[str, Field(min_length=1)]] | None = None
    #: Task ids; ``None`` means any.
    ids: list[_TaskId] | None = None

    @model_validator(mode="after")
    def _keys_of_type(self) -> Self:
        """Require a URL where the type posts somewhere; refuse keys the type ignores."""
        problems = []
        if self.type in URL_SINK_TYPES:
            if self.url is None:
                problems.append(
                    _problem(
                        ("url",),
                        f"required for sink type {self.type!r} (give url, url_file or url_env)",
                    )
                )
            else:
                scheme, _, rest = self.url.get_secret_value().partition("://")
                if scheme not in ("http", "https") or not rest.strip("/"):
                    # The value is not shown: webhook URLs are credentials.
                    problems.append(_problem(("url",), "expected an http(s) URL"))
        elif self.url is not None:
            problems.append(_problem(("url",), f"not used by sink type {self.type!r}"))
        if self.secret is not None:
            if self.type != "webhook":
                problems.append(_problem(("secret",), "only sink type 'webhook' signs messages"))
            elif not _valid_webhook_secret(self.secret.get_secret_value()):
                problems.append(
                    _problem(("secret",), "expected 'whsec_' followed by base64 (24 to 64 bytes)")
                )
        if self.template is not None:
            try:
                compile_template(self.template)
            except ValueError as exc:
                problems.append(_problem(("template",), str(exc)))
        readable = (*CHAT_SINK_TYPES, "webhook")
        problems.extend(
            _problem((key,), f"not used by sink type {self.type!r}")
            for key in ("template", "remind_every")
            if getattr(self, key) is not None and self.type not in readable
        )
        if problems:
            raise _invalid(type(self).__name__, problems)
        return self

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """Keep names usable as metric labels and on the command line."""
        if not _SINK_NAME_RE.fullmatch(name):
            raise ValueError(f"use only letters, digits, '_', '.' and '-', got {name!r}")
        return name

    @field_validator("events", "names", "ids")
    @classmethod
    def _not_empty(cls, values: list[str] | list[int] | None) -> list[str] | list[int] | None:
        """An empty filter would match nothing, which is never what was meant."""
        if values is not None and not values:
            raise ValueError("must not be empty; leave it out to match everything")
        return values

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str] | None) -> list[str] | None:
        """Refuse a misspelt event type: the sink would silently never hear of it."""
        problems = []
        for index, event in enumerate(events or ()):
            if any(char in event for char in "*?["):
                if not fnmatch.filter(EVENT_TYPES, event):
                    problems.append(_problem((index,), f"{event!r} matches no event type"))
            elif event not in EVENT_TYPES:
                close = difflib.get_close_matches(event, EVENT_TYPES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(_problem((index,), f"unknown event type {event!r}{hint}"))
        if problems:
            raise _invalid(cls.__name__, problems)
        return events


def _valid_webhook_secret(secret: str) -> bool:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 to 64 random bytes."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        return False
    return 24 <= len(key) <= 64


def _default_sinks() -> list[SinkConfig]:
    """Without sinks, events still go somewhere visible: the log."""
    return [SinkConfig(name="log", type="log")]


class Config(_Section):
    """The whole configuration.

    ``sinks`` is never empty: when none are configured (or ``sinks = []``), a single
    ``log`` sink named ``"log"`` receives every event.
    """

    superoffice: SuperOfficeConfig
    watch: WatchConfig = Field(default_factory=WatchConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    sinks: list[SinkConfig] = Field(default_factory=_default_sinks)

    @field_validator("sinks")
    @classmethod
    def _named_uniquely(cls, sinks: list[SinkConfig]) -> list[SinkConfig]:
        """Sink names identify outbox queues, so two sinks must not share one."""
        if not sinks:
            return _default_sinks()
        seen: set[str] = set()
        problems = []
        for index, sink in enumerate(sinks):
            if sink.name in seen:
                message = f"duplicate sink name {sink.name!r}"
                problems.append(_problem((index, "name"), message))
            seen.add(sink.name)
        if problems:
            raise _invalid(cls.__name__, problems)
        return sinks


# --- loading --------------------------------------------------------------------------------


def load_config(path: Path) -> Config:
    """Read, parse and validate the TOML file at ``path``; any problem is a :class:`ConfigError`.

    Relative paths in the file (``*_file`` secrets, ``state.path``) are resolved against the
    file's directory; ``*_file`` secrets against ``$CREDENTIALS_DIRECTORY`` when it is set.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or type(exc).__name__}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = re.sub(r"\(at (line \d+, column \d+)\)", r"(\1)", str(exc))
        raise ConfigError([f"{path}: TOML syntax error: {message}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to be a batchmon configuration"]) from None
    return parse_config(data, base_dir=path.absolute().parent)


def parse_config(data: Mapping[str, object], *, base_dir: Path) -> Config:
    """Validate an already parsed configuration; relative paths resolve against ``base_dir``."""
    try:
        return Config.model_validate(dict(data), context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
    # Raised out here so that the pydantic error, which holds the inputs (secrets among them),
    # is not even the ConfigError's __context__.
    raise ConfigError(problems)


def redacted(config: Config) -> dict[str, object]:
    """``config`` as JSON-able data for ``batchmon check-config``, every secret masked."""
    return {name: _redact(getattr(config, name)) for name in Config.model_fields}


def _redact(value: object) -> object:
    """Dump one value, recursing into sections and lists."""
    if isinstance(value, SecretStr):
        return _MASK
    if isinstance(value, BaseModel):
        return {name: _redact(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --- problems -------------------------------------------------------------------------------


def _problem(loc: tuple[str | int, ...], message: str) -> InitErrorDetails:
    """One problem at ``loc`` (relative to the model raising it), in pydantic's terms."""
    # ``input`` stays empty on purpose: it could be a secret.
    return {"type": PydanticCustomError("batchmon_config", message), "loc": loc, "input": None}


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


def _describe(error: ErrorDetails) -> str:
    """``"sinks[1].name: duplicate sink name 'ops'"`` from one pydantic error."""
    kind, message, value = error["type"], error["msg"], error["input"]
    if kind == "missing":
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
    path = _path(error["loc"])
    return f"{path}: {message}" if path else message


def _path(loc: tuple[str | int, ...]) -> str:
    """``("sinks", 1, "url")`` -> ``"sinks[1].url"``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
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
