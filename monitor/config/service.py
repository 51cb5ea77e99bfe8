"""The sections about batchmon itself: ``[state]``, ``[http]`` and ``[log]``."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Final, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from monitor.config.base import _base_dir, _Section
from monitor.config.errors import _invalid, _problem
from monitor.config.values import Duration, Secret, _Int

__all__ = ["HttpConfig", "LogConfig", "StateConfig", "redacted_url"]


def redacted_url(url: str) -> str:
    """A PostgreSQL URL as messages show it: user, hosts, database; no password.

    Of the query only ``host`` and ``port`` are kept (a socket directory is given
    so): libpq takes ``password=`` and key files there too.
    """
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("#")[0].partition("?")
    authority, _, database = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    user = userinfo.partition(":")[0]
    kept = [(k, v) for k, v in parse_qsl(query) if k in ("host", "port")]
    return f"{scheme}://{user}{at}{hosts}/{database}" + (
        f"?{urlencode(kept, safe='/')}" if kept else ""
    )


class StateConfig(_Section):
    """Where the state (task memories, the outbox, history, watches) lives.

    ``path``: a SQLite file (the default); ``url``: a PostgreSQL database.
    """

    _secrets = ("url",)

    #: A relative path is resolved against the config file's directory.
    path: Path | None = None
    #: ``postgresql://user@host:5432/batchmon`` (a secret: it may carry the password).
    url: Secret | None = None
    #: With PostgreSQL: seconds a replica's lease on a tenant holds unless renewed (every
    #: third of it); a dead or cut-off replica's tenants are taken over after this long.
    lease_ttl: Annotated[Duration, Field(ge=5, le=300)] = 15.0

    @field_validator("url")
    @classmethod
    def _postgresql_url(cls, url: Secret | None) -> Secret | None:
        """A URL libpq reads; the value is never shown (it may hold the password)."""
        if url is None:
            return None
        # Only configurations with a url load the driver (libpq's own parser judges it).
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        example = "expected a URL like 'postgresql://batchmon@db.example.com/batchmon'"
        value = url.get_secret_value()
        scheme, separator, _ = value.partition("://")
        if not separator or scheme not in ("postgresql", "postgres"):
            raise ValueError(example)
        try:
            conninfo_to_dict(value)
        except ProgrammingError:
            # libpq's message quotes the URL: not shown.
            raise ValueError(f"libpq cannot read this URL; {example}") from None
        return url

    @model_validator(mode="after")
    def _one_store(self) -> Self:
        """SQLite or PostgreSQL, not both."""
        if self.path is not None and self.url is not None:
            message = "give either state.path (SQLite) or state.url (PostgreSQL), not both"
            raise _invalid(type(self).__name__, [_problem(("url",), message)])
        return self

    @property
    def location(self) -> str:
        """The store as messages name it: the SQLite file, or the URL without secrets."""
        if self.url is not None:
            return redacted_url(self.url.get_secret_value())
        return str(self.resolved_path)

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


#: Shorter tokens can be guessed online: the HTTP API answers as fast as it is asked.
MIN_TOKEN_LENGTH: Final = 16


def _host_name(entry: str) -> str:
    """A host name or address as the Host check compares it: lower case, no brackets or dot.

    Each ``allowed_hosts`` entry is compared with the Host header's name, so it must be one.
    """
    name = entry.strip().lower().removesuffix(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _HOSTNAME_RE.fullmatch(name) or len(name) > 253:
        raise ValueError(
            f"expected a host name or IP address without a port, e.g. 'batchmon.example.com', "
            f"got {entry!r}"
        )
    return name


class HttpConfig(_Section):
    """The HTTP server for /metrics, health, the status page and the API."""

    _secrets = ("api_token", "read_token")

    #: ``host:port``; an IPv6 host in brackets.  Port 0 lets the OS choose.
    listen: str = "127.0.0.1:9808"
    #: Bearer token required for PUT/DELETE on /api/v1/watches; it also grants reads.
    api_token: Secret | None = None
    #: Token required, when set, for everything but /healthz and /readyz (Bearer, or Basic
    #: with it as password, so that a browser can ask for it).
    read_token: Secret | None = None
    #: Where people reach the status page (chat messages link to it), e.g.
    #: ``https://batchmon.example.com/``; without it, messages carry no link.
    public_url: str | None = None
    #: Names the Host header may carry besides localhost, IP addresses, this machine's name,
    #: the listen host and public_url's host (a DNS-rebinding page sends a name of its own,
    #: refused with 421).
    allowed_hosts: list[Annotated[str, AfterValidator(_host_name)]] = Field(default_factory=list)
    #: How many tasks may be watched at run time (PUT /api/v1/watches) at once.
    max_watches: Annotated[_Int, Field(ge=0, le=1_000_000)] = 1000

    @field_validator("api_token", "read_token")
    @classmethod
    def _hard_to_guess(cls, token: Secret | None) -> Secret | None:
        """A token must be long enough not to be guessed, and sendable in a header."""
        if token is None:
            return None
        value = token.get_secret_value()
        if len(value) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} characters long; "
                "make one with 'openssl rand -hex 32'"
            )
        if not (value.isascii() and value.isprintable()) or " " in value:
            raise ValueError("must be printable ASCII without spaces, to fit in a header")
        return token

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

    @property
    def host_names(self) -> frozenset[str]:
        """The names the Host header may carry (IP addresses and localhost are always fine)."""
        names = {*self.allowed_hosts, _host_name(self.host)}
        if self.public_url is not None:
            hostname = urlsplit(self.public_url).hostname
            if hostname:
                names.add(hostname.lower().removesuffix("."))
        return frozenset(names)


class LogConfig(_Section):
    """How batchmon logs; ``auto`` is console on a TTY and JSON otherwise (systemd)."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("format", "level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        """``level = "INFO"`` means what it says."""
        return value.lower() if isinstance(value, str) else value
