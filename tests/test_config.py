"""Tests for monitor.config: durations, sections, secrets, refusals and error paths."""

from __future__ import annotations

import base64
import datetime
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from monitor.config import (
    Config,
    ConfigError,
    HttpConfig,
    StateConfig,
    load_config,
    parse_config,
    parse_duration,
    redacted,
)
from monitor.config.sinks import LogSinkConfig

EXAMPLE = Path(__file__).parent.parent / "config" / "batchmon.example.toml"
MARKER = "s3cr3t-MARKER-7f1c"
#: http.api_token wants 16 characters at least.
TOKEN_16 = "tok-0123456789abcdef"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's systemd variables must not leak into any test."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def minimal() -> dict[str, Any]:
    """A fresh, valid configuration with only the required keys."""
    return {
        "superoffice": {
            "url": "https://online3.superoffice.com/Cust12345/api",
            "auth": {"type": "basic", "username": "batchmon", "password": "pw"},
        }
    }


def problems(data: dict[str, Any], base_dir: Path = Path("/nonexistent")) -> list[str]:
    """The problems ``parse_config`` reports for ``data``."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=base_dir)
    return info.value.problems


def with_(path: str, value: object) -> dict[str, Any]:
    """``minimal()`` with ``value`` set at the dotted ``path``, making tables on the way."""
    data = minimal()
    *parents, key = path.split(".")
    node = data
    for parent in parents:
        node = node.setdefault(parent, {})
    node[key] = value
    return data


class TestParseDuration:
    """parse_duration reads seconds and unit strings and refuses everything else."""

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            (90, 90.0),
            (1.5, 1.5),
            (0, 0.0),
            ("90", 90.0),
            ("1.5", 1.5),
            ("90s", 90.0),
            ("5m", 300.0),
            ("1h30m", 5400.0),
            ("250ms", 0.25),
            ("2h", 7200.0),
            ("1d", 86400.0),
            ("1m30s", 90.0),
            ("1.5h", 5400.0),
            ("1h0m0s500ms", 3600.5),
            (" 5m ", 300.0),
        ],
    )
    def test_valid(self, value: object, seconds: float) -> None:
        """Each accepted form gives its number of seconds."""
        assert parse_duration(value) == seconds

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("", "expected a duration like '90s', '5m' or '1h30m', got ''"),
            ("5x", "got '5x'"),
            ("soon", "expected a duration like '90s', '5m' or '1h30m', got 'soon'"),
            ("30m1h", "got '30m1h'"),
            ("5 m", "got '5 m'"),
            ("1h1h", "got '1h1h'"),
            ("m", "got 'm'"),
            (-1, "must not be negative, got -1"),
            (-0.5, "must not be negative, got -0.5"),
            ("-5m", "must not be negative, got '-5m'"),
            (True, "got true"),
            (False, "got false"),
            (None, "got None"),
            ([5], "got an array"),
            (float("inf"), "must be finite"),
            (float("nan"), "must be finite"),
        ],
    )
    def test_invalid(self, value: object, message: str) -> None:
        """Each refused value gives a ValueError that says what was expected."""
        with pytest.raises(ValueError, match="duration") as info:
            parse_duration(value)
        assert message in str(info.value)

    def test_in_a_section(self) -> None:
        """A Duration field in the configuration accepts the same forms."""
        config = parse_config(with_("poll", {"interval": "1m", "stall_after": 90}), base_dir=Path())
        assert (config.poll.interval, config.poll.stall_after) == (60.0, 90.0)

    def test_error_in_a_section(self) -> None:
        """A bad duration is reported by path, without pydantic's prefix."""
        assert problems(with_("poll", {"stall_after": "soon"})) == [
            "poll.stall_after: expected a duration like '90s', '5m' or '1h30m', got 'soon'"
        ]


class TestMinimalConfig:
    """Only superoffice.url and the auth are required; everything else has a default."""

    def test_defaults(self) -> None:
        """The documented defaults apply."""
        config = parse_config(minimal(), base_dir=Path())

        so = config.superoffice
        assert so.url == "https://online3.superoffice.com/Cust12345/api"
        assert (
            so.auth.type,
            so.auth.username,
            so.auth.password.get_secret_value() if so.auth.password else None,
        ) == ("basic", "batchmon", "pw")
        assert (
            so.timeout,
            so.connect_timeout,
            so.max_concurrency,
            so.max_requests_per_second,
            so.tenant_time_zone,
        ) == (10.0, 5.0, 4, 8.0, "UTC")
        assert config.watch.ids == []
        assert (
            config.poll.interval,
            config.poll.idle_interval,
            config.poll.stall_after,
            config.poll.progress_step,
            config.poll.progress_min_interval,
            config.poll.jitter,
            config.poll.terminal_linger,
            config.poll.api_down_after,
        ) == (5.0, 60.0, 900.0, 10, 30.0, 0.1, 0.0, 3)
        assert None is config.state.path
        assert (
            config.http.host,
            config.http.port,
            config.http.api_token,
        ) == ("127.0.0.1", 9808, None)
        assert (config.log.format, config.log.level) == ("auto", "info")

    @pytest.mark.parametrize("sinks", [None, []])
    def test_default_sink(self, sinks: list[object] | None) -> None:
        """Without sinks (or with an empty list) one log sink receives everything."""
        data = minimal() if sinks is None else with_("sinks", sinks)

        config = parse_config(data, base_dir=Path())

        assert config.sinks == [LogSinkConfig(name="log")]

    def test_constructed_in_python(self) -> None:
        """The models can be built directly, with the same defaults."""
        config = Config.model_validate(minimal())

        assert config.sinks[0].name == "log"

    def test_frozen(self) -> None:
        """A loaded configuration cannot be changed by accident."""
        config = parse_config(minimal(), base_dir=Path())

        with pytest.raises(ValueError, match="frozen"):
            config.poll.interval = 1.0  # type: ignore[misc]

    def test_trailing_slash_dropped(self) -> None:
        """The API base is stored without a trailing slash, so '{url}/v1' is right."""
        data = with_("superoffice.url", "https://crm.example.com/SuperOffice/api/")

        assert (
            parse_config(data, base_dir=Path()).superoffice.url
        ) == "https://crm.example.com/SuperOffice/api"

    def test_time_zone(self) -> None:
        """The tenant's zone is available as a tzinfo."""
        data = with_("superoffice.tenant_time_zone", "Europe/Oslo")

        config = parse_config(data, base_dir=Path())

        assert str(config.superoffice.tzinfo) == "Europe/Oslo"

    def test_watch_ids_deduplicated(self) -> None:
        """Repeated ids are dropped and the order is kept."""
        config = parse_config(with_("watch", {"ids": [213, 212, 213, 5]}), base_dir=Path())

        assert config.watch.ids == [213, 212, 5]

    @pytest.mark.parametrize("level", ["DEBUG", "Warning", "error"])
    def test_log_level_any_case(self, level: str) -> None:
        """log.level is case-insensitive."""
        config = parse_config(with_("log", {"level": level}), base_dir=Path())

        assert config.log.level == level.lower()


class TestExampleFile:
    """config/batchmon.example.toml loads and sets every section."""

    def test_loads(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With its secret files in $CREDENTIALS_DIRECTORY, the example is valid."""
        (tmp_path / "so_password").write_text("hunter2\n")
        (tmp_path / "api_token").write_text("tok-0123456789abcdef\n")
        (tmp_path / "slack_url").write_text("https://hooks.slack.com/services/T/B/x\n")
        (tmp_path / "webhook_secret").write_text("whsec_" + "A" * 32 + "\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        monkeypatch.setenv("BATCHMON_WEBHOOK_URL", "https://receiver.example/batchmon")

        config = load_config(EXAMPLE)

        auth = config.superoffice.auth
        assert auth.password is not None
        assert auth.password.get_secret_value() == "hunter2"
        assert config.http.api_token is not None
        assert config.http.api_token.get_secret_value() == "tok-0123456789abcdef"
        assert config.watch.ids == [212, 213]
        assert config.poll.stall_after == 900.0
        assert config.state.resolved_path == Path("/var/lib/batchmon/state.db")
        assert [sink.name for sink in config.sinks] == ["ops", "chat", "hook", "alerts"]
        assert [rule.name for rule in config.watch.discover] == ["Export*"]
        assert config.sinks[1].remind_every == 14400.0
        assert config.sinks[0].events is not None
        assert "monitor.*" in config.sinks[0].events


class TestUnknownKeys:
    """Unknown keys are errors, named by path, with a suggestion when one is close."""

    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("metrics", "metrics: unknown key"),
            ("superoffice.timout", "superoffice.timout: unknown key (did you mean 'timeout'?)"),
            (
                "superoffice.auth.pasword_file",
                "superoffice.auth.pasword_file: unknown key (did you mean 'password_file'?)",
            ),
            ("poll.intervall", "poll.intervall: unknown key (did you mean 'interval'?)"),
            ("state.dir", "state.dir: unknown key"),
            ("http.port", "http.port: unknown key"),
            ("log.colour", "log.colour: unknown key"),
            ("watch.id", "watch.id: unknown key (did you mean 'ids'?)"),
        ],
    )
    def test_by_path(self, path: str, expected: str) -> None:
        """The problem names the full path of the key."""
        assert problems(with_(path, 1)) == [expected]

    def test_in_a_list(self) -> None:
        """Keys inside an array of sinks carry the sink's name."""
        data = with_("sinks", [{"name": "a", "type": "log"}, {"name": "b", "type": "log", "x": 1}])

        assert problems(data) == ['sinks["b"].x: unknown key']

    def test_not_a_table(self) -> None:
        """A section given as a plain value says that a table was expected."""
        assert problems(with_("poll", "fast")) == ["poll: expected a table, got a string"]


class TestProblemsTogether:
    """Every problem is reported at once."""

    def test_across_sections(self) -> None:
        """Problems of different sections and kinds come in one ConfigError."""
        data = minimal()
        data["superoffice"]["max_concurrency"] = 100
        del data["superoffice"]["auth"]["password"]
        data["superoffice"]["auth"]["password_file"] = "missing"
        data["poll"] = {"jitter": 0.9, "stall_after": "later", "extra": True}
        data["http"] = {"listen": "localhost"}
        data["sinks"] = [{"name": "ops", "type": "log"}, {"name": "ops", "type": "log"}]

        assert problems(data) == [
            "superoffice.max_concurrency: must be less than or equal to 64, got 100",
            (
                "superoffice.auth.password_file: cannot read '/nonexistent/missing': "
                "No such file or directory"
            ),
            "poll.extra: unknown key",
            "poll.stall_after: expected a duration like '90s', '5m' or '1h30m', got 'later'",
            "poll.jitter: must be less than or equal to 0.5, got 0.9",
            (
                "http.listen: expected 'host:port', e.g. '127.0.0.1:9808', '0.0.0.0:9808' or "
                "'[::1]:9808', got 'localhost'"
            ),
            "sinks[1].name: duplicate sink name 'ops'",
        ]

    def test_within_a_section(self) -> None:
        """A section's own problems come together with its field errors."""
        data = with_("superoffice.auth", {"type": "basic", "username": 5, "password_env": "NOPE"})

        assert problems(data) == [
            "superoffice.auth.password_env: environment variable 'NOPE' is not set",
            "superoffice.auth.username: expected a string, got an integer",
        ]

    def test_str_lists_all(self) -> None:
        """str(ConfigError) shows one problem per line."""
        error = ConfigError(["a: one", "b: two"])

        assert str(error) == "a: one\nb: two"


class TestFields:
    """Single fields refuse what would fail later, saying why."""

    @pytest.mark.parametrize(
        ("path", "value", "expected"),
        [
            ("superoffice.url", "ftp://x/api", "expected an http(s) URL with a host"),
            ("superoffice.url", "https:///api", "expected an http(s) URL with a host"),
            ("superoffice.url", "crm.example.com", "expected an http(s) URL with a host"),
            ("superoffice.url", "https://u:p@crm/api", "must not contain credentials"),
            ("superoffice.url", "https://crm/api?x=1", "without '?' or '#'"),
            ("superoffice.url", "https://crm:99999/api", "invalid port"),
            ("superoffice.tenant_time_zone", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
            ("superoffice.timeout", 0, "must be greater than 0, got 0"),
            ("superoffice.max_concurrency", 0, "must be greater than or equal to 1, got 0"),
            ("superoffice.max_concurrency", "4", "expected an integer, got a string"),
            ("superoffice.max_concurrency", True, "expected an integer, got a boolean"),
            ("superoffice.max_requests_per_second", 0, "must be greater than 0, got 0"),
            ("superoffice.max_requests_per_second", float("inf"), "finite"),
            ("watch.ids", [0], "[0]: must be greater than 0, got 0"),
            ("watch.ids", 212, "expected an array, got an integer"),
            ("poll.progress_step", 101, "must be less than or equal to 100, got 101"),
            ("poll.api_down_after", 0, "must be greater than or equal to 1, got 0"),
            ("poll.jitter", -0.1, "must be greater than or equal to 0, got -0.1"),
            ("state.path", "", "must not be empty"),
            ("log.format", "fancy", "must be 'auto', 'json' or 'console', got 'fancy'"),
        ],
    )
    def test_refused(self, path: str, value: object, expected: str) -> None:
        """The problem is reported at the field's path."""
        (problem,) = problems(with_(path, value))

        assert problem.startswith(path)
        assert expected in problem

    @pytest.mark.parametrize(
        ("poll", "expected"),
        [
            ({"interval": "2m"}, "poll.interval: must not be longer than poll.idle_interval"),
            ({"interval": 0}, "poll.interval: must be greater than 0, got 0"),
            ({"idle_interval": "1s"}, "poll.interval: must not be longer than poll.idle_interval"),
        ],
    )
    def test_poll_intervals(self, poll: dict[str, object], expected: str) -> None:
        """Active tasks are polled at a positive interval, at least as often as idle ones."""
        (problem,) = problems(with_("poll", poll))

        assert problem.startswith(expected)

    def test_poll_intervals_equal(self) -> None:
        """interval may equal idle_interval."""
        config = parse_config(
            with_("poll", {"interval": 10, "idle_interval": "10s"}), base_dir=Path()
        )

        assert config.poll.interval == config.poll.idle_interval

    def test_missing_section(self) -> None:
        """[superoffice] is required."""
        assert problems({}) == ["superoffice: required, but not given"]


class TestAuth:
    """Each auth type requires its own fields and refuses the others."""

    @pytest.mark.parametrize(
        ("auth", "header_field"),
        [
            ({"type": "basic", "username": "u", "password": "p"}, "password"),
            ({"type": "ticket", "ticket": "7T:abc"}, "ticket"),
            ({"type": "bearer", "token": "8A:abc"}, "token"),
        ],
    )
    def test_valid(self, auth: dict[str, str], header_field: str) -> None:
        """Each type with exactly its fields is accepted."""
        config = parse_config(with_("superoffice.auth", auth), base_dir=Path())

        secret = getattr(config.superoffice.auth, header_field)
        assert secret.get_secret_value() == auth[header_field]

    @pytest.mark.parametrize(
        ("auth", "expected"),
        [
            (
                {"type": "basic", "username": "u"},
                [
                    (
                        "superoffice.auth.password: required for auth type 'basic' "
                        "(give password, password_file or password_env)"
                    )
                ],
            ),
            (
                {"type": "basic", "password": "p"},
                ["superoffice.auth.username: required for auth type 'basic'"],
            ),
            (
                {"type": "ticket", "ticket": "t", "username": "u", "token": "x"},
                [
                    "superoffice.auth.username: not used by auth type 'ticket'",
                    "superoffice.auth.token: not used by auth type 'ticket'",
                ],
            ),
            (
                {"type": "bearer"},
                [
                    (
                        "superoffice.auth.token: required for auth type 'bearer' "
                        "(give token, token_file or token_env)"
                    )
                ],
            ),
            (
                {"type": "kerberos"},
                [
                    (
                        "superoffice.auth.type: must be 'basic', 'ticket', 'bearer', 'oauth' or "
                        "'system_user', got 'kerberos'"
                    )
                ],
            ),
            ({"username": "u"}, ["superoffice.auth.type: required, but not given"]),
        ],
    )
    def test_refused(self, auth: dict[str, str], expected: list[str]) -> None:
        """Missing and superfluous fields are each named."""
        assert problems(with_("superoffice.auth", auth)) == expected


class TestSinks:
    """Sinks are named uniquely and filter only on things that exist."""

    def test_filters(self) -> None:
        """events, names and ids are kept as given."""
        sink = {
            "name": "ops.chat_1",
            "type": "log",
            "events": ["task.failed", "monitor.*"],
            "names": ["Export*"],
            "ids": [212],
        }

        (config_sink,) = parse_config(with_("sinks", [sink]), base_dir=Path()).sinks

        assert config_sink.events == ["task.failed", "monitor.*"]
        assert (config_sink.names, config_sink.ids) == (["Export*"], [212])

    def test_duplicate_names(self) -> None:
        """Every repeat of a name is reported at its own index."""
        sinks = [{"name": name, "type": "log"} for name in ("ops", "audit", "ops", "ops")]

        assert problems(with_("sinks", sinks)) == [
            "sinks[2].name: duplicate sink name 'ops'",
            "sinks[3].name: duplicate sink name 'ops'",
        ]

    @pytest.mark.parametrize(
        ("sink", "expected"),
        [
            ({"name": "", "type": "log"}, "sinks[0].name: use only letters, digits"),
            ({"name": "my sink", "type": "log"}, "sinks[0].name: use only letters, digits"),
            ({"type": "log"}, "sinks[0].name: required, but not given"),
            ({"name": "a"}, 'sinks["a"].type: required, but not given'),
            (
                {"name": "a", "type": "sms"},
                (
                    "sinks[\"a\"].type: must be 'log', 'webhook', 'slack', 'teams', 'discord', "
                    "'mattermost', 'googlechat' or 'alertmanager', got 'sms'"
                ),
            ),
            (
                {"name": "a", "type": "log", "events": ["task.faild"]},
                "sinks[\"a\"].events[0]: unknown event type 'task.faild' (did you mean 'task.failed'?)",
            ),
            (
                {"name": "a", "type": "log", "events": ["task.*", "jobs.*"]},
                "sinks[\"a\"].events[1]: 'jobs.*' matches no event type",
            ),
            ({"name": "a", "type": "log", "events": []}, 'sinks["a"].events: must not be empty'),
            ({"name": "a", "type": "log", "names": []}, 'sinks["a"].names: must not be empty'),
            ({"name": "a", "type": "log", "ids": []}, 'sinks["a"].ids: must not be empty'),
            (
                {"name": "a", "type": "log", "ids": [-1]},
                'sinks["a"].ids[0]: must be greater than 0',
            ),
        ],
    )
    def test_refused(self, sink: dict[str, object], expected: str) -> None:
        """A sink that could not work as written is refused at its path."""
        (problem,) = problems(with_("sinks", [sink]))

        assert problem.startswith(expected)


@pytest.fixture(name="secret_dir")
def _secret_dir(tmp_path: Path) -> Path:
    """A directory holding the file 'so_password'."""
    (tmp_path / "so_password").write_text("from-file\n")
    return tmp_path


class TestSecretForms:
    """A secret is given inline, as a file or as an environment variable, exactly once."""

    def password(self, auth: dict[str, object], base_dir: Path) -> str:
        """The password that results from ``auth`` (basic, user 'u')."""
        data = with_("superoffice.auth", {"type": "basic", "username": "u", **auth})
        password = parse_config(data, base_dir=base_dir).superoffice.auth.password
        assert password is not None
        return password.get_secret_value()

    def test_inline(self) -> None:
        """The inline value is used as is."""
        assert self.password({"password": "inline\n"}, Path()) == "inline\n"

    def test_file_relative_to_credentials_directory(
        self,
        secret_dir: Path,
        tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With $CREDENTIALS_DIRECTORY set, a relative file name is looked up there."""
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(secret_dir))
        elsewhere = tmp_path_factory.mktemp("config")

        assert self.password({"password_file": "so_password"}, elsewhere) == "from-file"

    def test_file_relative_to_base_dir(self, secret_dir: Path) -> None:
        """Without $CREDENTIALS_DIRECTORY, a relative file name is next to the config."""
        assert self.password({"password_file": "so_password"}, secret_dir) == "from-file"

    def test_file_absolute(self, secret_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An absolute file name is used as is."""
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/nonexistent")
        path = str(secret_dir / "so_password")

        assert self.password({"password_file": path}, Path()) == "from-file"

    @pytest.mark.parametrize(
        ("content", "secret"),
        [("a\n", "a"), ("a\n\n", "a\n"), ("a", "a"), (" a \n", " a ")],
    )
    def test_file_one_newline_stripped(self, tmp_path: Path, content: str, secret: str) -> None:
        """Only one trailing newline is dropped; anything else is part of the secret."""
        (tmp_path / "pw").write_text(content)

        assert self.password({"password_file": "pw"}, tmp_path) == secret

    def test_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An environment variable's value is used as is."""
        monkeypatch.setenv("BATCHMON_TEST_PW", "from-env")

        assert self.password({"password_env": "BATCHMON_TEST_PW"}, Path()) == "from-env"

    @pytest.mark.parametrize(
        ("auth", "expected"),
        [
            (
                {"password": "a", "password_file": "b"},
                (
                    "superoffice.auth.password: given as both 'password' and 'password_file'; "
                    "use exactly one"
                ),
            ),
            (
                {"password_file": "b", "password_env": "C"},
                (
                    "superoffice.auth.password: given as both 'password_file' and 'password_env'; "
                    "use exactly one"
                ),
            ),
            (
                {"password_file": "/x/so_password"},
                (
                    "superoffice.auth.password_file: cannot read '/x/so_password': "
                    "No such file or directory"
                ),
            ),
            (
                {"password_file": "so_password"},
                (
                    "superoffice.auth.password_file: cannot read '/nonexistent/so_password': "
                    "No such file or directory"
                ),
            ),
            (
                {"password_env": "BATCHMON_TEST_UNSET"},
                (
                    "superoffice.auth.password_env: environment variable 'BATCHMON_TEST_UNSET' "
                    "is not set"
                ),
            ),
            ({"password": ""}, "superoffice.auth.password: must not be empty"),
            (
                {"password_file": 3},
                "superoffice.auth.password_file: expected a file name, got an integer",
            ),
            (
                {"password_env": ""},
                "superoffice.auth.password_env: expected a environment variable name, got a string",
            ),
        ],
    )
    def test_refused(self, auth: dict[str, object], expected: str) -> None:
        """Each problem names the key, the file or the variable; only it is reported."""
        data = with_("superoffice.auth", {"type": "basic", "username": "u", **auth})

        assert problems(data) == [expected]

    def test_empty_file(self, tmp_path: Path) -> None:
        """An empty secret file is a mistake, not an empty password."""
        (tmp_path / "pw").write_text("\n")
        data = with_("superoffice.auth", {"type": "basic", "username": "u", "password_file": "pw"})

        assert problems(data, tmp_path) == [
            f"superoffice.auth.password_file: file '{tmp_path / 'pw'}' is empty"
        ]

    def test_directory(self, tmp_path: Path) -> None:
        """A directory given as a secret file cannot be read, and says so."""
        data = with_("superoffice.auth", {"type": "basic", "username": "u", "password_file": "."})

        (problem,) = problems(data, tmp_path)

        assert problem.startswith("superoffice.auth.password_file: cannot read ")

    def test_url_from_file(self, tmp_path: Path) -> None:
        """superoffice.url may come from a file too, and is validated after it is read."""
        (tmp_path / "url").write_text("https://crm.example.com/api/\n")
        data = minimal()
        del data["superoffice"]["url"]
        data["superoffice"]["url_file"] = "url"

        config = parse_config(data, base_dir=tmp_path)

        assert config.superoffice.url == "https://crm.example.com/api"

    def test_url_file_missing(self) -> None:
        """A secret that cannot be read is reported once, not also as missing."""
        data = minimal()
        data["superoffice"]["url_file"] = "so_url"
        del data["superoffice"]["url"]

        assert problems(data) == [
            "superoffice.url_file: cannot read '/nonexistent/so_url': No such file or directory"
        ]

    def test_other_secrets(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """app_token, api_token, ticket and token take the three forms too."""
        monkeypatch.setenv("BATCHMON_TEST_TOKEN", TOKEN_16)
        data = with_("superoffice.auth", {"type": "ticket", "ticket_env": "BATCHMON_TEST_TOKEN"})
        data["superoffice"]["app_token_env"] = "BATCHMON_TEST_TOKEN"
        data["http"] = {"api_token_env": "BATCHMON_TEST_TOKEN"}

        config = parse_config(data, base_dir=Path())

        secrets = [
            config.superoffice.auth.ticket,
            config.superoffice.app_token,
            config.http.api_token,
        ]
        assert [s.get_secret_value() if s else None for s in secrets] == [TOKEN_16] * 3


class TestSecretsNeverShown:
    """A secret's value appears in no error, repr or redacted dump."""

    @pytest.fixture(name="planted")
    def _planted(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
        """A config with MARKER in every secret, one form each, and nothing else wrong."""
        (tmp_path / "app_token").write_text(MARKER + "-app\n")
        monkeypatch.setenv("BATCHMON_TEST_API_TOKEN", MARKER + "-api")
        data = minimal()
        data["superoffice"]["auth"]["password"] = MARKER + "-password"
        data["superoffice"]["app_token_file"] = str(tmp_path / "app_token")
        data["http"] = {"api_token_env": "BATCHMON_TEST_API_TOKEN"}
        data["state"] = {"path": "state.db"}
        return data

    def test_repr_str_and_redacted(self, planted: dict[str, Any]) -> None:
        """The loaded config hides every secret; redacted() masks them as '********'."""
        config = parse_config(planted, base_dir=Path())

        dumped = redacted(config)

        for shown in (repr(config), str(config), json.dumps(dumped)):
            assert MARKER not in shown
        assert dumped["http"]["api_token"] == "********"  # type: ignore[index]
        superoffice = dumped["superoffice"]
        assert superoffice["app_token"] == "********"  # type: ignore[index]
        assert superoffice["auth"]["password"] == "********"  # type: ignore[index]

    @pytest.mark.parametrize(("auth_type", "key"), [("ticket", "ticket"), ("bearer", "token")])
    def test_ticket_and_token(self, auth_type: str, key: str) -> None:
        """ticket and token are hidden like password."""
        data = with_("superoffice.auth", {"type": auth_type, key: MARKER})

        config = parse_config(data, base_dir=Path())

        assert MARKER not in repr(config) + json.dumps(redacted(config))

    @pytest.mark.parametrize(
        "breakage",
        [
            pytest.param(lambda d: d["poll"].update(interval="never"), id="other-error"),
            pytest.param(lambda d: d["superoffice"]["auth"].update(password=[MARKER]), id="type"),
            pytest.param(lambda d: d["superoffice"]["auth"].update(pasword=MARKER), id="typo"),
            pytest.param(
                lambda d: d["superoffice"]["auth"].update(password_env=MARKER), id="two-forms"
            ),
            pytest.param(lambda d: d["superoffice"]["auth"].update(type="ticket"), id="unused"),
            pytest.param(lambda d: d["superoffice"].update(url=MARKER), id="bad-url"),
            pytest.param(
                lambda d: d.update(sinks=[{"name": "s", "type": "log", "url": MARKER}]),
                id="later-key",
            ),
            pytest.param(
                lambda d: d["superoffice"]["auth"].update(type="oauth", client_secret=MARKER),
                id="later-type",
            ),
        ],
    )
    def test_errors(
        self, planted: dict[str, Any], breakage: Callable[[dict[str, Any]], None]
    ) -> None:
        """Whatever else is wrong, the messages and the exception's context hold no secret."""
        planted["poll"] = {}
        breakage(planted)

        with pytest.raises(ConfigError) as info:
            parse_config(planted, base_dir=Path())

        assert MARKER not in str(info.value) + repr(info.value)
        assert info.value.__cause__ is None
        assert info.value.__context__ is None


class TestLoadConfig:
    """load_config turns every failure into a ConfigError naming the file."""

    def test_toml_syntax_error(self, tmp_path: Path) -> None:
        """A syntax error names the file, line and column."""
        path = tmp_path / "batchmon.toml"
        path.write_text('[superoffice]\nurl = "https://x/api"\ntimeout 10\n')

        with pytest.raises(ConfigError) as info:
            load_config(path)

        message = "Expected '=' after a key in a key/value pair (line 3, column 9)"
        assert info.value.problems == [f"{path}: TOML syntax error: {message}"]

    def test_missing_file(self, tmp_path: Path) -> None:
        """A file that does not exist is reported, not raised as OSError."""
        path = tmp_path / "nope.toml"

        with pytest.raises(ConfigError) as info:
            load_config(path)

        assert info.value.problems == [f"{path}: cannot read: No such file or directory"]

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is reported with the offending byte."""
        path = tmp_path / "batchmon.toml"
        path.write_bytes(b"# caf\xe9\n")

        with pytest.raises(ConfigError) as info:
            load_config(path)

        assert info.value.problems == [f"{path}: not UTF-8 text (byte 5)"]

    def test_relative_paths_against_file(self, tmp_path: Path) -> None:
        """Secret files and state.path are found next to the config file."""
        (tmp_path / "pw").write_text("pw\n")
        path = tmp_path / "batchmon.toml"
        path.write_text(
            "[superoffice]\n"
            'url = "https://crm.example.com/api"\n'
            "[superoffice.auth]\n"
            'type = "basic"\nusername = "u"\npassword_file = "pw"\n'
            "[state]\n"
            'path = "data/state.db"\n'
        )

        config = load_config(path)

        assert config.state.resolved_path == tmp_path / "data" / "state.db"

    def test_validation_problems(self, tmp_path: Path) -> None:
        """Validation problems are reported by path, as from parse_config."""
        path = tmp_path / "batchmon.toml"
        path.write_text("[poll]\ninterval = 'soon'\n")

        with pytest.raises(ConfigError) as info:
            load_config(path)

        assert info.value.problems == [
            "superoffice: required, but not given",
            "poll.interval: expected a duration like '90s', '5m' or '1h30m', got 'soon'",
        ]


class TestStatePath:
    """The state database is where it is configured, else where systemd says, else local."""

    @pytest.mark.parametrize(
        ("path", "state_directory", "expected"),
        [
            ("/srv/state.db", "/var/lib/batchmon", "/srv/state.db"),
            (None, "/var/lib/batchmon", "/var/lib/batchmon/state.db"),
            (None, "/var/lib/one:/var/lib/two", "/var/lib/one/state.db"),
            (None, None, ".batchmon/state.db"),
            (None, "", ".batchmon/state.db"),
        ],
    )
    def test_resolved_path(
        self,
        monkeypatch: pytest.MonkeyPatch,
        path: str | None,
        state_directory: str | None,
        expected: str,
    ) -> None:
        """path wins over $STATE_DIRECTORY, which wins over ./.batchmon."""
        if state_directory is not None:
            monkeypatch.setenv("STATE_DIRECTORY", state_directory)

        state = StateConfig(path=None if path is None else Path(path))

        assert state.resolved_path == Path(expected)

    def test_relative_path_against_base_dir(self) -> None:
        """A relative state.path is resolved against the config file's directory."""
        config = parse_config(with_("state", {"path": "state.db"}), base_dir=Path("/etc/b"))

        assert config.state.resolved_path == Path("/etc/b/state.db")


class TestListen:
    """http.listen is host:port, with IPv6 hosts in brackets."""

    @pytest.mark.parametrize(
        ("listen", "host", "port"),
        [
            ("127.0.0.1:9808", "127.0.0.1", 9808),
            ("0.0.0.0:80", "0.0.0.0", 80),
            ("localhost:0", "localhost", 0),
            ("[::1]:9808", "::1", 9808),
            ("[::]:65535", "::", 65535),
            ("batchmon.example.com:9808", "batchmon.example.com", 9808),
        ],
    )
    def test_valid(self, listen: str, host: str, port: int) -> None:
        """host and port are split out, brackets removed."""
        http = HttpConfig(listen=listen)

        assert (http.host, http.port) == (host, port)

    @pytest.mark.parametrize(
        ("listen", "expected"),
        [
            (":9808", "a host is required ('0.0.0.0:9808' for all interfaces)"),
            ("localhost", "expected 'host:port'"),
            ("", "expected 'host:port'"),
            ("::1:9808", "put an IPv6 address in brackets"),
            ("[::1]", "expected 'host:port'"),
            ("[nope]:9808", "expected 'host:port'"),
            ("host name:9808", "expected 'host:port'"),
            ("localhost:65536", "the port must be a number from 0 to 65535, got '65536'"),
            ("localhost:-1", "the port must be a number from 0 to 65535, got '-1'"),
            ("localhost:http", "the port must be a number from 0 to 65535, got 'http'"),
            ("localhost:", "the port must be a number from 0 to 65535, got ''"),
        ],
    )
    def test_invalid(self, listen: str, expected: str) -> None:
        """Each refused form says what is wrong, at http.listen."""
        (problem,) = problems(with_("http", {"listen": listen}))

        assert problem.startswith(f"http.listen: {expected}")


SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes of base64


class TestSinkTypes:
    """Every sink type, its required URL and the keys only some types take."""

    @pytest.mark.parametrize(
        "kind",
        ["webhook", "slack", "teams", "discord", "mattermost", "googlechat", "alertmanager"],
    )
    def test_url_types(self, kind: str) -> None:
        """Each URL sink type loads with a URL and is refused without one."""
        config = parse_config(
            with_("sinks", [{"name": "a", "type": kind, "url": "https://hooks.example.com/x"}]),
            base_dir=Path("/nonexistent"),
        )

        assert config.sinks[0].url is not None
        assert problems(with_("sinks", [{"name": "a", "type": kind}])) == [
            f'sinks["a"].url: required for sink type {kind!r} (give url, url_file or url_env)'
        ]

    def test_bad_url_is_not_echoed(self) -> None:
        """A malformed webhook URL is refused without showing it (it is a credential)."""
        found = problems(with_("sinks", [{"name": "a", "type": "slack", "url": "marker-77"}]))

        assert found == ['sinks["a"].url: expected an http(s) URL']

    @pytest.mark.parametrize(
        ("sink", "expected"),
        [
            (
                {"type": "log", "url": "https://x.example"},
                "sinks[\"a\"].url: not used by sink type 'log'",
            ),
            (
                {"type": "slack", "url": "https://x.example", "secret": SECRET},
                "sinks[\"a\"].secret: not used by sink type 'slack'",
            ),
            (
                {"type": "webhook", "url": "https://x.example", "secret": "hunter2"},
                "sinks[\"a\"].secret: expected 'whsec_' followed by base64 (24 to 64 bytes)",
            ),
            (
                {"type": "log", "template": "x"},
                "sinks[\"a\"].template: not used by sink type 'log'",
            ),
            (
                {"type": "slack", "url": "https://x.example", "template": "{{ event.type "},
                (
                    'sinks["a"].template: template line 1: unexpected end of template, '
                    "expected 'end of print statement'."
                ),
            ),
            (
                {"type": "alertmanager", "url": "http://am:9093", "remind_every": "1h"},
                "sinks[\"a\"].remind_every: not used by sink type 'alertmanager'",
            ),
            (
                {"type": "log", "rate": "fast"},
                "sinks[\"a\"].rate: expected a rate like '1/s', '5/2s' or '30/1m', got 'fast'",
            ),
        ],
    )
    def test_refused(self, sink: dict[str, object], expected: str) -> None:
        """Keys another type uses, and malformed values, are refused by path."""
        assert problems(with_("sinks", [{"name": "a", **sink}])) == [expected]

    @pytest.mark.parametrize(
        ("rate", "per_second"),
        [("1/s", 1.0), ("5/2s", 2.5), ("30/m", 0.5), ("30/1m", 0.5), (4, 4.0), ("120/1h", 1 / 30)],
    )
    def test_rates(self, rate: object, per_second: float) -> None:
        """Rates are read as events per second."""
        config = parse_config(
            with_("sinks", [{"name": "a", "type": "log", "rate": rate}]),
            base_dir=Path("/nonexistent"),
        )

        assert config.sinks[0].rate == pytest.approx(per_second)

    def test_webhook_with_secret_and_options(self) -> None:
        """A signed webhook with a template, rate and reminders loads."""
        sink = {
            "name": "hook",
            "type": "webhook",
            "url": "https://receiver.example/batchmon",
            "secret": SECRET,
            "template": "{{ event.type }}",
            "rate": "10/s",
            "remind_every": "4h",
        }
        config = parse_config(with_("sinks", [sink]), base_dir=Path("/nonexistent"))

        assert (10.0, 14400.0) == (config.sinks[0].rate, config.sinks[0].remind_every)
        assert "whsec_" not in repr(config)

    def test_public_url(self) -> None:
        """http.public_url must be an absolute http(s) URL."""
        assert problems(with_("http.public_url", "batchmon.local")) == [
            "http.public_url: expected an absolute http(s) URL, e.g. 'https://batchmon.example.com/'"
        ]


class TestDiscovery:
    """``[[watch.discover]]`` rules."""

    def test_defaults_and_values(self) -> None:
        """A rule defaults to all associates, the active states and every 30 s."""
        config = parse_config(
            with_(
                "watch",
                {
                    "discover": [
                        {},
                        {
                            "associates": [-1],
                            "states": ["Failed"],
                            "name": "Export*",
                            "every": "5m",
                        },
                    ]
                },
            ),
            base_dir=Path("/nonexistent"),
        )
        default, custom = config.watch.discover

        assert ([], ["New", "Aquired", "Started"], None, 30.0) == (
            default.associates,
            default.states,
            default.name,
            default.every,
        )
        assert ([-1], ["Failed"], "Export*", 300.0) == (
            custom.associates,
            custom.states,
            custom.name,
            custom.every,
        )

    def test_states_are_kept_in_lifecycle_order(self) -> None:
        """Listed in the order tasks go through them, so a task moving on is in one list."""
        config = parse_config(
            with_(
                "watch",
                {"discover": [{"states": ["Failed", "Started", "New", "Started", "Aquired"]}]},
            ),
            base_dir=Path("/nonexistent"),
        )

        assert ["New", "Aquired", "Started", "Failed"] == config.watch.discover[0].states

    @pytest.mark.parametrize(
        ("rule", "expected"),
        [
            (
                {"states": ["Acquired"]},
                "watch.discover[0].states[0]: unknown state 'Acquired' (did you mean 'Aquired'?)",
            ),
            ({"states": ["All"]}, "watch.discover[0].states[0]: unknown state 'All'"),
            (
                {"states": []},
                "watch.discover[0].states: must not be empty; leave it out for New, Aquired and Started",
            ),
            ({"every": "0s"}, "watch.discover[0].every: must be greater than 0"),
            ({"tenant": "x"}, "watch.discover[0].tenant: unknown key"),
        ],
    )
    def test_refused(self, rule: dict[str, object], expected: str) -> None:
        """Misspelt states, empty lists and unknown keys are refused by path."""
        found = problems(with_("watch", {"discover": [rule]}))

        assert [expected] == [p for p in found if p.startswith("watch.")]


class TestOnlineAccess:
    """oauth and system_user, url versus environment + tenant, and the retry keys."""

    @staticmethod
    def _rsa_xml(key: rsa.RSAPrivateKey) -> str:
        """The key as .NET's RSA XML, the form SuperOffice hands out."""
        numbers = key.private_numbers()

        def b64(value: int) -> str:
            return base64.b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).decode()

        parts = {
            "Modulus": numbers.public_numbers.n,
            "Exponent": numbers.public_numbers.e,
            "P": numbers.p,
            "Q": numbers.q,
            "DP": numbers.dmp1,
            "DQ": numbers.dmq1,
            "InverseQ": numbers.iqmp,
            "D": numbers.d,
        }
        inner = "".join(f"<{name}>{b64(value)}</{name}>" for name, value in parts.items())
        return f"<RSAKeyValue>{inner}</RSAKeyValue>"

    @staticmethod
    def _certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
        """A self-signed certificate for ``key``, like SuperOfficeFederatedLogin.crt."""
        name = x509.Name(
            [x509.NameAttribute(x509.NameOID.COMMON_NAME, "SuperOfficeFederatedLogin")]
        )
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )

    @pytest.fixture(name="key", scope="class")
    @classmethod
    def _key(cls) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @pytest.fixture(name="key_files")
    def _key_files(self, key: rsa.RSAPrivateKey, tmp_path: Path) -> Path:
        """app.pem, app.xml, federation.crt (DER), federation.cer (PEM), federation.pem."""
        (tmp_path / "app.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (tmp_path / "app.xml").write_text(self._rsa_xml(key))
        certificate = self._certificate(key)
        (tmp_path / "federation.crt").write_bytes(
            certificate.public_bytes(serialization.Encoding.DER)
        )
        (tmp_path / "federation.cer").write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM)
        )
        (tmp_path / "federation.pem").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return tmp_path

    def test_oauth_snippet(self) -> None:
        """The README's oauth snippet loads; its secrets stay hidden."""
        data = tomllib.loads(
            """
            [superoffice]
            environment = "online"
            tenant = "Cust12345"
            [superoffice.auth]
            type = "oauth"
            client_id = "0123456789abcdef"
            client_secret = "s3cr3t-MARKER-7f1c"
            refresh_token = "s3cr3t-MARKER-7f1c-refresh"
            redirect_uri = "https://batchmon.example.com/callback"
            """
        )

        config = parse_config(data, base_dir=Path("/nonexistent"))

        so = config.superoffice
        assert ("https://online.superoffice.com", None) == (so.environment_base, so.url)
        assert ("oauth", "0123456789abcdef") == (so.auth.type, so.auth.client_id)
        assert MARKER not in repr(config) + json.dumps(redacted(config))

    @pytest.mark.parametrize(
        ("key_file", "federation"),
        [("app.pem", None), ("app.xml", "federation.crt"), ("app.pem", "federation.cer")],
        ids=["pem-jwks", "rsa-xml-der-certificate", "pem-pem-certificate"],
    )
    def test_system_user_snippet(
        self,
        key: rsa.RSAPrivateKey,
        key_files: Path,
        monkeypatch: pytest.MonkeyPatch,
        key_file: str,
        federation: str | None,
    ) -> None:
        """The app key loads from PEM or RSA XML; SuperOffice's key from a certificate."""
        monkeypatch.setenv("BATCHMON_TEST_SYSTEM_USER_TOKEN", "batchmon-4fGh7Kp2")
        text = f"""
            [superoffice]
            environment = "sod"
            tenant = "Cust12345"
            [superoffice.auth]
            type = "system_user"
            client_secret_file = "client_secret"
            private_key_file = "{key_file}"
            system_user_token_env = "BATCHMON_TEST_SYSTEM_USER_TOKEN"
            """
        if federation is not None:
            text += f'federation_key_file = "{federation}"\n'
        (key_files / "client_secret").write_text("app-secret\n")

        auth = parse_config(tomllib.loads(text), base_dir=key_files).superoffice.auth

        assert key.private_numbers() == auth.signing_key().private_numbers()
        federation_key = auth.federation_key()
        if federation is None:
            assert federation_key is None
        else:
            assert federation_key is not None
            assert key.public_key().public_numbers() == federation_key.public_numbers()
        assert "-----BEGIN" not in repr(auth)

    @pytest.mark.parametrize(
        ("auth", "expected"),
        [
            (
                {"type": "oauth", "client_id": "c"},
                [
                    (
                        "superoffice.auth.client_secret: required for auth type 'oauth' "
                        "(give client_secret, client_secret_file or client_secret_env)"
                    ),
                    (
                        "superoffice.auth.refresh_token: required for auth type 'oauth' "
                        "(give refresh_token, refresh_token_file or refresh_token_env)"
                    ),
                ],
            ),
            (
                {
                    "type": "system_user",
                    "client_secret": "s",
                    "system_user_token": "t",
                    "private_key": "not a key",
                    "redirect_uri": "https://x.example",
                },
                [
                    "superoffice.auth.redirect_uri: not used by auth type 'system_user'",
                    (
                        "superoffice.auth.private_key: expected an RSA private key, "
                        "as PEM or as RSA XML"
                    ),
                ],
            ),
            (
                {"type": "basic", "username": "u", "password": "p", "client_id": "c"},
                ["superoffice.auth.client_id: not used by auth type 'basic'"],
            ),
            (
                {
                    "type": "system_user",
                    "client_secret": "s",
                    "system_user_token": "t",
                    "private_key_file": "app.pem",
                    "federation_key_file": "app.xml",
                },
                [
                    (
                        "superoffice.auth.federation_key_file: '{dir}/app.xml': expected an X.509 "
                        "certificate (PEM or DER) or a PEM public key"
                    )
                ],
            ),
        ],
        ids=["oauth-missing", "system-user-wrong", "basic-extra", "federation-not-a-key"],
    )
    def test_auth_refused(self, key_files: Path, auth: dict[str, str], expected: list[str]) -> None:
        """Each type names what it misses, what it does not use and what is no key."""
        data = {
            "superoffice": {"environment": "online", "tenant": "Cust12345", "auth": auth},
        }

        found = problems(data, base_dir=key_files)

        assert [line.format(dir=key_files) for line in expected] == found

    @pytest.mark.parametrize(
        ("where", "auth_type", "expected"),
        [
            ({"url": "https://online3.superoffice.com/Cust12345/api"}, "basic", []),
            ({"environment": "online", "tenant": "Cust12345"}, "basic", []),
            ({"environment_url": "http://127.0.0.1:8765", "tenant": "Cust1"}, "basic", []),
            ({"url": "https://x.example/api", "environment": "sod"}, "oauth", []),
            (
                {"url": "https://x.example/api", "environment": "online", "tenant": "Cust1"},
                "basic",
                ["superoffice.tenant: give either url or environment + tenant, not both"],
            ),
            (
                {},
                "basic",
                [
                    (
                        "superoffice.url: required, but not given; give url (the API base) or "
                        "environment + tenant (SuperOffice Online)"
                    )
                ],
            ),
            (
                {"tenant": "Cust1"},
                "basic",
                ["superoffice.environment: required with tenant (sod, qaonline or online)"],
            ),
            (
                {"url": "https://x.example/api"},
                "oauth",
                [
                    (
                        "superoffice.environment: required with auth type 'oauth' "
                        "(sod, qaonline or online)"
                    )
                ],
            ),
            (
                {"url": "https://x.example/api", "environment": "online"},
                "basic",
                ["superoffice.environment: not used with url and auth type 'basic'"],
            ),
            (
                {"environment": "prod", "tenant": "12345"},
                "basic",
                [
                    (
                        "superoffice.environment: must be 'sod', 'qaonline', 'stage' or 'online', "
                        "got 'prod'"
                    ),
                    (
                        "superoffice.tenant: expected a context identifier like 'Cust12345', "
                        "got '12345'"
                    ),
                ],
            ),
        ],
        ids=[
            "url",
            "environment-tenant",
            "environment-url",
            "url-oauth",
            "both",
            "neither",
            "tenant-alone",
            "oauth-without-environment",
            "unused-environment",
            "bad-values",
        ],
    )
    def test_url_or_environment_and_tenant(
        self, where: dict[str, str], auth_type: str, expected: list[str]
    ) -> None:
        """Exactly one of url and environment + tenant; each problem named by its key."""
        auth: dict[str, str] = {"type": "basic", "username": "u", "password": "p"}
        if auth_type == "oauth":
            auth = {"type": "oauth", "client_id": "c", "client_secret": "s", "refresh_token": "r"}
        data = {"superoffice": {**where, "auth": auth}}

        if expected:
            assert expected == problems(data)
        else:
            parse_config(data, base_dir=Path("/nonexistent"))

    def test_system_user_needs_a_tenant(self, key_files: Path) -> None:
        """The system user logs in to one tenant, so url alone is not enough."""
        auth = {
            "type": "system_user",
            "client_secret": "s",
            "system_user_token": "t",
            "private_key_file": "app.pem",
        }
        data = {"superoffice": {"url": "https://x.example/api", "environment": "sod", "auth": auth}}

        assert ["superoffice.tenant: required for auth type 'system_user'"] == problems(
            data, base_dir=key_files
        )

    def test_retry_keys(self) -> None:
        """The retry keys have defaults, read durations, and the base may not exceed the cap."""
        so = parse_config(minimal(), base_dir=Path("/nonexistent")).superoffice
        tuned = with_("superoffice.retries", 4)
        tuned["superoffice"].update(backoff_base="250ms", backoff_cap="1m", max_retry_after="2m")
        custom = parse_config(tuned, base_dir=Path("/nonexistent")).superoffice

        assert (2, 0.5, 30.0, 60.0) == (
            so.retries,
            so.backoff_base,
            so.backoff_cap,
            so.max_retry_after,
        )
        assert (4, 0.25, 60.0, 120.0) == (
            custom.retries,
            custom.backoff_base,
            custom.backoff_cap,
            custom.max_retry_after,
        )
        slow = with_("superoffice.backoff_base", "1m")
        assert [
            (
                "superoffice.backoff_base: must not be longer than superoffice.backoff_cap (30s), "
                "got 60s"
            )
        ] == problems(slow)
