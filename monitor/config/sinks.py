"""The ``[[sinks]]`` section: where events go, and which of them.

The keys a sink takes depend on its type; filters name event types, which must exist.
"""

from __future__ import annotations

import base64
import fnmatch
import re
from typing import Annotated, Final, Literal, Self

from pydantic import Field, field_validator, model_validator

from monitor.config.base import _Section
from monitor.config.errors import _did_you_mean, _invalid, _problem
from monitor.config.values import Duration, Rate, Secret, _TaskId
from monitor.sinks.render import check_template
from monitor.tracking.events import EMITTED

__all__ = ["CHAT_SINK_TYPES", "EVENT_TYPES", "URL_SINK_TYPES", "SinkConfig"]

#: The event types a sink's ``events`` filter may name (see DESIGN.md, "Events"); test
#: messages go through ``batchmon test-sink`` only, past every filter.
EVENT_TYPES: Final = tuple(kind.value for kind in EMITTED)

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
                check_template(self.template)
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
                hint = _did_you_mean(event, EVENT_TYPES)
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
