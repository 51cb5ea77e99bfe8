"""``batchmon check-config``: the TOML it read, secrets from a credentials directory, and
warnings about secrets other users can read."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import EX_CONFIG, main
from monitor.config.echo import duration_text
from monitor.config.exposure import SecretFile, exposure_warnings
from monitor.config.values import parse_duration

CONFIG = """\
[superoffice]
url = "https://crm.example.com/SuperOffice/api"
[superoffice.auth]
type = "basic"
username = "batchmon"
password_file = "so_password"
[poll]
stall_after = "1h30m"
[[sinks]]
name = "ops"
type = "slack"
url_file = "slack_url"
rate = "2/s"
[[sinks]]
name = "am"
type = "alertmanager"
url = "http://127.0.0.1:9093"
"""


def _check(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["check-config", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(name="setup")
def _setup(tmp_path: Path) -> tuple[Path, Path]:
    """A private config and a private credentials directory holding its two secrets."""
    config = tmp_path / "etc" / "batchmon.toml"
    config.parent.mkdir()
    config.write_text(CONFIG)
    config.chmod(0o600)
    credentials = tmp_path / "credstore"
    credentials.mkdir()
    for name, value in [("so_password", "marker-pw-81c2"), ("slack_url", "https://h.example/x")]:
        (credentials / name).write_text(value + "\n")
        (credentials / name).chmod(0o600)
    return config, credentials


class TestEcho:
    """What a valid file prints: TOML, secrets masked, no nulls."""

    def test_toml_with_units_and_masks(self, setup: tuple[Path, Path]) -> None:
        """The output is TOML that reads back; durations and rates as one writes them."""
        config, credentials = setup
        code, out, err = _check(str(config), "--credentials-dir", str(credentials))

        assert 0 == code, err
        echoed = tomllib.loads(out)
        assert "********" == echoed["superoffice"]["auth"]["password"]
        assert "1h30m" == echoed["poll"]["stall_after"]
        assert "5s" == echoed["poll"]["interval"]
        assert ["ops", "am"] == [sink["name"] for sink in echoed["sinks"]]
        assert "2/s" == echoed["sinks"][0]["rate"]
        assert "********" == echoed["sinks"][0]["url"]
        assert "null" not in out
        assert "marker-pw" not in out + err
        assert "h.example" not in out + err
        assert out.startswith("[superoffice]\n")
        assert "warning" not in err

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "0s"),
            (0.25, "0.25s"),
            (5, "5s"),
            (90, "1m30s"),
            (900, "15m"),
            (5400, "1h30m"),
            (86400, "1d"),
            (90061, "1d1h1m1s"),
        ],
    )
    def test_durations_read_back(self, seconds: float, text: str) -> None:
        """Every duration is written the way the configuration reads it."""
        assert text == duration_text(seconds)
        assert seconds == parse_duration(text)


class TestCredentialsDir:
    """``--credentials-dir``: secrets where the service finds them, not next to the file."""

    def test_found_there(self, setup: tuple[Path, Path]) -> None:
        """With the directory the config is valid."""
        config, credentials = setup

        assert 0 == _check(str(config), "--credentials-dir", str(credentials))[0]

    def test_without_it_next_to_the_file(
        self, setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without it the files are looked for next to the config, and missed: exit 78."""
        config, _ = setup
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
        code, _, err = _check(str(config))

        assert EX_CONFIG == code
        assert f"superoffice.auth.password_file: cannot read '{config.parent}/so_password'" in err


class TestExposure:
    """Warnings about secrets other users can read; the exit code stays 0."""

    def test_inline_secret_in_a_readable_file(self, setup: tuple[Path, Path]) -> None:
        """An inline password in a 0644 file is named; the Alertmanager URL is no secret."""
        config, credentials = setup
        config.write_text(CONFIG.replace('password_file = "so_password"', 'password = "p"'))
        config.chmod(0o644)
        code, out, err = _check(str(config), "--credentials-dir", str(credentials))

        assert 0 == code
        assert (
            f"batchmon: warning: {config} can be read by its group and all users (mode 0644)"
            " and holds secrets inline: superoffice.auth.password;"
        ) in err
        assert 'sinks["am"]' not in err
        assert '"p"' not in out + err

    def test_readable_credential_file(self, setup: tuple[Path, Path]) -> None:
        """A credential file readable by others is named with its sink, by name."""
        config, credentials = setup
        (credentials / "slack_url").chmod(0o640)
        code, _, err = _check(str(config), "--credentials-dir", str(credentials))

        assert 0 == code
        assert (
            f"""batchmon: warning: sinks["ops"].url_file: '{credentials}/slack_url' can be read"""
            " by its group (mode 0640); chmod 600 it"
        ) in err
        assert "so_password" not in err

    @pytest.mark.parametrize(
        ("mode", "inline", "files", "count"),
        [
            (0o600, ["a.password"], [], 0),
            (0o640, ["a.password"], [], 1),
            (0o604, ["a.password"], [], 1),
            (0o644, [], [], 0),
            (0o600, [], [("a.token_file", 0o400)], 0),
            (0o600, [], [("a.token_file", 0o444), ("b.url_file", 0o600)], 1),
            (0o644, ["a.password"], [("a.token_file", 0o644)], 2),
        ],
    )
    def test_rules(
        self, mode: int, inline: list[str], files: list[tuple[str, int]], count: int
    ) -> None:
        """Group- or other-readable (mode & 0o044) is what counts."""
        secrets = [SecretFile(key, Path("/c") / key, file_mode) for key, file_mode in files]

        assert count == len(exposure_warnings(Path("b.toml"), mode, inline, secrets))
