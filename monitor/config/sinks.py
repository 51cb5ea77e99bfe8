"""The ``[[sinks]]`` section: where events go, and which of them.

The keys a sink takes depend on its type; filters name event types, which must exist.
``tenants`` globs say for which tenants a sink is built at all.
"""

from __future__ import annotations

import base64
import fnmatch
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, ClassVar, Final, Literal, Self, get_args

from pydantic import AfterValidator, Field, field_validator, model_validator

from monitor.config.base import _Variant
from monitor.config.errors import _did_you_mean, _invalid, _problem
from monitor.config.values import Duration, Rate, Secret, _TaskId
from monitor.sinks.render import check_template
from monitor.tracking.events import EMITTED
from monitor.windows import Window, parse_window, zone

__all__ = [
    "EVENT_TYPES",
    "SINK_TYPES",
    "AlertmanagerSinkConfig",
    "ChatSinkConfig",
    "DiscordSinkConfig",
    "GoogleChatSinkConfig",
    "LogSinkConfig",
    "MattermostSinkConfig",
    "MessageSinkConfig",
    "SinkConfig",
    "SlackSinkConfig",
    "TeamsSinkConfig",
    "UrlSinkConfig",
    "WebhookSinkConfig",
]

#: The event types a sink's ``events`` filter may name (see DESIGN.md, "Events"); test
#: messages go through ``batchmon test-sink`` only, past every filter.
EVENT_TYPES: Final = tuple(kind.value for kind in EMITTED)

_SINK_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
#: A glob over tenant names: their characters, ``*``, ``?`` and ``[...]`` sets of them.
_TENANT_GLOB_RE: Final = re.compile(r"(?:[a-z0-9_*?-]|\[[a-z0-9_-]+\])+")


def _tenant_glob(glob: str) -> str:
    """A glob that can match tenant names (lower case, digits, ``-``, ``_``)."""
    if not _TENANT_GLOB_RE.fullmatch(glob):
        case = " (tenant names are lower case)" if glob.lower() != glob else ""
        message = (
            f"{glob!r} is not a tenant glob: use a-z, 0-9, '-', '_', '*', '?' and "
            f"'[...]' sets of those{case}"
        )
        raise ValueError(message)
    return glob


#: One entry of a sink's ``tenants``.
TenantGlob = Annotated[str, AfterValidator(_tenant_glob)]


class _Sink(_Variant):
    """A destination for events, with optional filters (all must match)."""

    _union = "sink"

    #: Unique across sinks; the outbox and ``batchmon test-sink`` refer to it.
    name: str
    #: Deliveries per second at most; default per type (Slack 1/s, Discord 5/2s, …).
    rate: Rate | None = None
    #: Deliveries in flight at once; each task's events still go out in order.  Default
    #: per type: 4 for ``webhook``, 1 for the rest (a chat channel reads best in order).
    concurrency: Annotated[int, Field(ge=1, le=32)] | None = None
    #: Per delivery request.
    timeout: Annotated[Duration, Field(gt=0)] = 10.0
    #: Event types or globs like ``"task.*"``; ``None`` means all.
    events: list[str] | None = None
    #: Globs on the task name; ``None`` means any.
    names: list[Annotated[str, Field(min_length=1)]] | None = None
    #: Task ids; ``None`` means any.
    ids: list[_TaskId] | None = None
    #: Globs on tenant names: the sink is built only for the tenants they match.
    tenants: list[TenantGlob] = Field(default_factory=lambda: ["*"])

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """Keep names usable as metric labels and on the command line."""
        if not _SINK_NAME_RE.fullmatch(name):
            raise ValueError(f"use only letters, digits, '_', '.' and '-', got {name!r}")
        return name

    @field_validator("events", "names", "ids", "tenants")
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
        return _event_patterns(cls.__name__, events)

    def serves(self, tenant: str) -> bool:
        """Whether this sink is built for ``tenant``: one of its ``tenants`` globs matches."""
        return any(fnmatch.fnmatchcase(tenant, glob) for glob in self.tenants)


def _event_patterns(model: str, events: list[str] | None) -> list[str] | None:
    """Event types or globs, each naming at least one event type (else a problem per entry)."""
    problems = []
    for index, event in enumerate(events or ()):
        if any(char in event for char in "*?["):
            if not fnmatch.filter(EVENT_TYPES, event):
                problems.append(_problem((index,), f"{event!r} matches no event type"))
        elif event not in EVENT_TYPES:
            hint = _did_you_mean(event, EVENT_TYPES)
            problems.append(_problem((index,), f"unknown event type {event!r}{hint}"))
    if problems:
        raise _invalid(model, problems)
    return events


class LogSinkConfig(_Sink):
    """Every event as one log line."""

    type: Literal["log"] = "log"


class UrlSinkConfig(_Sink):
    """A sink that posts to a URL."""

    _secrets: ClassVar[tuple[str, ...]] = ("url",)

    #: Where to post (a secret: chat webhook URLs carry their own credentials).  For
    #: ``alertmanager`` the Alertmanager's base URL, e.g. ``http://127.0.0.1:9093``.
    url: Secret

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: Secret) -> Secret:
        scheme, _, rest = url.get_secret_value().partition("://")
        if scheme not in ("http", "https") or not rest.strip("/"):
            # The value is not shown: webhook URLs are credentials.
            raise ValueError("expected an http(s) URL")
        return url


class AlertmanagerSinkConfig(UrlSinkConfig):
    """Failed, stalled and vanished tasks as Alertmanager alerts."""

    type: Literal["alertmanager"] = "alertmanager"


class MessageSinkConfig(UrlSinkConfig):
    """A sink that posts a message a person reads: the chat sinks and ``webhook``."""

    #: A Jinja2 template (sandboxed) for the message text.
    template: str | None = None
    #: Repeat failed and stalled tasks this often while they stay so.
    remind_every: Annotated[Duration, Field(gt=0)] | None = None
    #: Escalation: failed, stalled and gone tasks reach this sink only once they have fired
    #: this long without anyone acknowledging them (``None``: at once).
    after: Annotated[Duration, Field(gt=0)] | None = None

    @field_validator("template")
    @classmethod
    def _valid_template(cls, template: str | None) -> str | None:
        if template is not None:
            check_template(template)
        return template


class WebhookSinkConfig(MessageSinkConfig):
    """A CloudEvent per event, signed as Standard Webhooks when ``secret`` is given."""

    _secrets = ("url", "secret")

    type: Literal["webhook"] = "webhook"
    #: The Standard Webhooks signing secret (``whsec_`` + base64).
    secret: Secret | None = None

    @field_validator("secret")
    @classmethod
    def _webhook_secret(cls, secret: Secret | None) -> Secret | None:
        if secret is not None and not _valid_webhook_secret(secret.get_secret_value()):
            raise ValueError("expected 'whsec_' followed by base64 (24 to 64 bytes)")
        return secret


class ChatSinkConfig(MessageSinkConfig):
    """A chat sink: people read it, so storms become digests, nights stay quiet, hours capped.

    See :mod:`monitor.delivery.grouping` for what each key does.
    """

    #: Events of more than ``group_min`` tasks within this go out as one digest (``0``: off);
    #: every event waits up to this long.
    group_window: Duration = 0.0
    #: More tasks than this in one window make a digest.
    group_min: Annotated[int, Field(ge=1, le=1000)] = 3
    #: Messages per hour at most; the rest wait and go as one digest (``None``: no cap).
    max_per_hour: Annotated[int, Field(ge=1, le=100_000)] | None = None
    #: Weekly windows (``"Mon-Fri 22:00-07:00"``, ``"Sat-Sun"``) in ``time_zone`` when
    #: deliveries wait, to go as one digest when the window ends.
    quiet: list[str] | None = None
    #: The IANA zone of ``quiet`` (required with it).
    time_zone: str | None = None
    #: Event types (or globs) sent during quiet hours anyway.
    quiet_except: list[str] | None = None

    @field_validator("quiet", "quiet_except")
    @classmethod
    def _not_empty_list(cls, values: list[str] | None) -> list[str] | None:
        """An empty list is a typo for leaving the key out."""
        if values is not None and not values:
            raise ValueError("must not be empty; leave it out for none")
        return values

    @field_validator("quiet_except")
    @classmethod
    def _known_exceptions(cls, events: list[str] | None) -> list[str] | None:
        return _event_patterns(cls.__name__, events)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if name is not None:
            zone(name)
        return name

    @model_validator(mode="after")
    def _quiet_windows(self) -> Self:
        """Each quiet window parses in the zone; a zone is given (no silent UTC)."""
        if self.quiet is None:
            if self.quiet_except is not None:
                message = "only applies with quiet"
                raise _invalid(type(self).__name__, [_problem(("quiet_except",), message)])
            return self
        if self.time_zone is None:
            message = "required with quiet (an IANA name such as 'Europe/Oslo' or 'UTC')"
            raise _invalid(type(self).__name__, [_problem(("time_zone",), message)])
        problems = []
        for index, text in enumerate(self.quiet):
            try:
                parse_window(text, self.time_zone)
            except ValueError as exc:
                problems.append(_problem(("quiet", index), str(exc)))
        if problems:
            raise _invalid(type(self).__name__, problems)
        return self

    @property
    def quiet_windows(self) -> list[Window]:
        """The parsed ``quiet`` windows (none without ``quiet``)."""
        if self.quiet is None or self.time_zone is None:
            return []
        return [parse_window(text, self.time_zone, name=text) for text in self.quiet]


class SlackSinkConfig(ChatSinkConfig):
    """Slack incoming webhook."""

    type: Literal["slack"] = "slack"


class TeamsSinkConfig(ChatSinkConfig):
    """Microsoft Teams workflow or connector webhook."""

    type: Literal["teams"] = "teams"


class DiscordSinkConfig(ChatSinkConfig):
    """Discord webhook."""

    type: Literal["discord"] = "discord"


class MattermostSinkConfig(ChatSinkConfig):
    """Mattermost incoming webhook."""

    type: Literal["mattermost"] = "mattermost"


class GoogleChatSinkConfig(ChatSinkConfig):
    """Google Chat space webhook."""

    type: Literal["googlechat"] = "googlechat"


#: A ``[[sinks]]`` entry: the model its ``type`` names, holding exactly that type's keys.
SinkConfig = Annotated[
    LogSinkConfig
    | WebhookSinkConfig
    | SlackSinkConfig
    | TeamsSinkConfig
    | DiscordSinkConfig
    | MattermostSinkConfig
    | GoogleChatSinkConfig
    | AlertmanagerSinkConfig,
    Field(discriminator="type"),
]
#: Each sink type's model, by ``type``.
SINK_TYPES: Final[Mapping[str, type[_Sink]]] = MappingProxyType(
    {model.type_name(): model for model in get_args(get_args(SinkConfig)[0])}
)


def _valid_webhook_secret(secret: str) -> bool:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 to 64 random bytes."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        return False
    return 24 <= len(key) <= 64


def _default_sinks() -> list[SinkConfig]:
    """Without sinks, events still go somewhere visible: the log."""
    return [LogSinkConfig(name="log")]
