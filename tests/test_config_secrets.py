"""Secrets given inline, as ``_file`` or ``_env``, and never shown."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from monitor.config import (
    ConfigError,
    parse_config,
    redacted,
)
from monitor.config.superoffice import BasicAuthConfig, TicketAuthConfig
from tests.config_helpers import (
    MARKER,
    TOKEN_16,
    minimal,
    problems,
    with_,
)


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
        loaded = parse_config(data, base_dir=base_dir).superoffice.auth
        assert isinstance(loaded, BasicAuthConfig)
        return loaded.password.get_secret_value()

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

        assert isinstance(config.superoffice.auth, TicketAuthConfig)
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
