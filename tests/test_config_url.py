"""``superoffice.url`` is shown, so what would make it a secret is refused, in every form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import EX_CONFIG, main
from monitor.config import ConfigError, parse_config, redacted

CREDENTIALS = "https://batchmon:marker-password-3e1a@crm.example.com/api"
QUERY = "https://crm.example.com/api?token=marker-token-7d0c"
FRAGMENT = "https://crm.example.com/api#marker-fragment-51b9"


def _superoffice(**where: str) -> dict[str, object]:
    return {
        "superoffice": {
            **where,
            "auth": {"type": "basic", "username": "batchmon", "password": "pw"},
        }
    }


def _problems(data: dict[str, object], base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=base_dir)
    return info.value.problems


class TestRefused:
    """Userinfo, a query and a fragment are refused by key, the value never repeated."""

    @pytest.mark.parametrize("form", ["url", "url_file", "url_env"])
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            (CREDENTIALS, "superoffice.url: the URL must not contain credentials; use "),
            (QUERY, "superoffice.url: the URL must be a base without '?' or '#'"),
            (FRAGMENT, "superoffice.url: the URL must be a base without '?' or '#'"),
        ],
        ids=["userinfo", "query", "fragment"],
    )
    def test_in_every_form(
        self, form: str, url: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Inline, from a file or from the environment: the same refusal, naming the key."""
        value = url
        if form == "url_file":
            (tmp_path / "so_url").write_text(url + "\n")
            value = "so_url"
        elif form == "url_env":
            monkeypatch.setenv("BATCHMON_TEST_SO_URL", url)
            value = "BATCHMON_TEST_SO_URL"

        (problem,) = _problems(_superoffice(**{form: value}), tmp_path)

        assert problem.startswith(expected)
        assert "marker-" not in problem

    def test_environment_url_too(self, tmp_path: Path) -> None:
        """The login host's URL is held to the same rule."""
        data = _superoffice(tenant="Cust12345", environment_url=CREDENTIALS)

        (problem,) = _problems(data, tmp_path)

        assert problem.startswith("superoffice.environment_url: the URL must not contain cred")
        assert "marker-" not in problem

    def test_check_config_exits_78(self, tmp_path: Path) -> None:
        """check-config refuses it (EX_CONFIG) and does not print the URL."""
        path = tmp_path / "batchmon.toml"
        path.write_text(
            f'[superoffice]\nurl = "{CREDENTIALS}"\n'
            '[superoffice.auth]\ntype = "basic"\nusername = "u"\npassword = "pw"\n'
        )
        result = CliRunner().invoke(main, ["check-config", str(path)])

        assert EX_CONFIG == result.exit_code
        assert "superoffice.url: the URL must not contain credentials" in result.output
        assert "marker-" not in result.output


class TestShown:
    """A URL that passed is no secret: check-config shows it, from whichever form it came."""

    def test_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``url_env`` gives the same, shown, base URL as ``url``."""
        monkeypatch.setenv("BATCHMON_TEST_SO_URL", "https://online3.superoffice.com/Cust1/api/")

        config = parse_config(_superoffice(url_env="BATCHMON_TEST_SO_URL"), base_dir=Path())
        shown = json.dumps(redacted(config))

        assert "https://online3.superoffice.com/Cust1/api" == config.superoffice.url
        assert '"url": "https://online3.superoffice.com/Cust1/api"' in shown
