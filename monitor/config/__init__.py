"""The TOML configuration of batchmon, validated with pydantic.

The keys are the contract of DESIGN.md ("Configuration"); ``config/batchmon.example.toml``
documents each of them.

Three things shape this package:

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

from monitor.config.errors import ConfigError
from monitor.config.load import Config, load_config, parse_config, redacted
from monitor.config.poll import DISCOVERABLE_STATES, DiscoverRule, PollConfig, WatchConfig
from monitor.config.service import HttpConfig, LogConfig, StateConfig
from monitor.config.sinks import EVENT_TYPES, SINK_TYPES, SinkConfig
from monitor.config.superoffice import AUTH_TYPES, ONLINE_AUTH_TYPES, AuthConfig, SuperOfficeConfig
from monitor.config.values import Duration, Rate, Secret, parse_duration, parse_rate

__all__ = [
    "AUTH_TYPES",
    "DISCOVERABLE_STATES",
    "EVENT_TYPES",
    "ONLINE_AUTH_TYPES",
    "SINK_TYPES",
    "AuthConfig",
    "Config",
    "ConfigError",
    "DiscoverRule",
    "Duration",
    "HttpConfig",
    "LogConfig",
    "PollConfig",
    "Rate",
    "Secret",
    "SinkConfig",
    "StateConfig",
    "SuperOfficeConfig",
    "WatchConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_rate",
    "redacted",
]
