"""Loading a whole configuration: defaults, the example file, unknown keys, all problems at once, files."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
)
from monitor.config.sinks import LogSinkConfig, MessageSinkConfig
from monitor.config.superoffice import BasicAuthConfig
from tests.config_helpers import (
    EXAMPLE,
    minimal,
    problems,
    with_,
)


class TestMinimalConfig:
    """Only superoffice.url and the auth are required; everything else has a default."""

    def test_defaults(self) -> None:
        """The documented defaults apply."""
        config = parse_config(minimal(), base_dir=Path())

        so = config.superoffice
        assert so.url == "https://online3.superoffice.com/Cust12345/api"
        assert isinstance(so.auth, BasicAuthConfig)
        assert (so.auth.username, so.auth.password.get_secret_value()) == ("batchmon", "pw")
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
        assert isinstance(auth, BasicAuthConfig)
        assert auth.password.get_secret_value() == "hunter2"
        assert config.http.api_token is not None
        assert config.http.api_token.get_secret_value() == "tok-0123456789abcdef"
        assert config.watch.ids == [212, 213]
        assert config.poll.stall_after == 900.0
        assert config.state.resolved_path == Path("/var/lib/batchmon/state.db")
        assert [sink.name for sink in config.sinks] == [
            "ops",
            "chat",
            "hook",
            "team-lead",
            "alerts",
        ]
        assert [rule.name for rule in config.watch.discover] == ["Export*"]
        chat = config.sinks[1]
        assert isinstance(chat, MessageSinkConfig)
        assert chat.remind_every == 14400.0
        assert config.sinks[0].events is not None
        assert "monitor.*" in config.sinks[0].events
        lead = config.sinks[3]
        assert isinstance(lead, MessageSinkConfig)
        assert (1800.0, 7200.0) == (lead.after, lead.remind_every)


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
            "superoffice: required, but not given (or give [[tenants]] entries)",
            "poll.interval: expected a duration like '90s', '5m' or '1h30m', got 'soon'",
        ]
