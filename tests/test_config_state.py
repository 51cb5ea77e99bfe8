"""``[state]``: a SQLite path or a PostgreSQL URL (a secret), never both, never shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import EX_CONFIG, main
from monitor.config import parse_config, redacted
from monitor.config.service import redacted_url
from tests.config_helpers import MARKER, minimal, problems, with_

URL = f"postgresql://batchmon:{MARKER}@db.example.com:5432/batchmon"


class TestUrlForms:
    """``url`` is a secret: inline, ``url_file`` or ``url_env``."""

    def test_inline_file_and_env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each form gives the same URL; messages name the database without the password."""
        (tmp_path / "state_url").write_text(URL + "\n")
        monkeypatch.setenv("BATCHMON_TEST_STATE_URL", URL)
        forms = [{"url": URL}, {"url_file": "state_url"}, {"url_env": "BATCHMON_TEST_STATE_URL"}]

        states = [parse_config(with_("state", form), base_dir=tmp_path).state for form in forms]

        assert [URL] * 3 == [s.url.get_secret_value() if s.url else None for s in states]
        assert ["postgresql://batchmon@db.example.com:5432/batchmon"] * 3 == [
            s.location for s in states
        ]

    def test_sqlite_stays_the_default(self) -> None:
        """Without [state], the store is the SQLite file it always was."""
        state = parse_config(minimal(), base_dir=Path()).state

        assert (None, Path(".batchmon", "state.db")) == (state.url, state.resolved_path)

    def test_never_shown(self) -> None:
        """The loaded config hides the URL; redacted() masks it."""
        config = parse_config(with_("state", {"url": URL}), base_dir=Path())

        dumped = redacted(config)

        assert MARKER not in repr(config) + json.dumps(dumped)
        assert "********" == dumped["state"]["url"]  # type: ignore[index]


class TestRefused:
    """What is refused, by key, without echoing the URL."""

    @pytest.mark.parametrize(
        ("state", "expected"),
        [
            (
                {"path": "state.db", "url": URL},
                "state.url: give either state.path (SQLite) or state.url (PostgreSQL), not both",
            ),
            (
                {"url": f"mysql://root:{MARKER}@db/x"},
                "state.url: expected a URL like 'postgresql://batchmon@db.example.com/batchmon'",
            ),
            (
                {"url": f"postgresql://u:{MARKER}@db/x?sslmode=%zz"},
                (
                    "state.url: libpq cannot read this URL; expected a URL like "
                    "'postgresql://batchmon@db.example.com/batchmon'"
                ),
            ),
            (
                {"url_env": "BATCHMON_TEST_NO_SUCH_VARIABLE"},
                "state.url_env: environment variable 'BATCHMON_TEST_NO_SUCH_VARIABLE' is not set",
            ),
            (
                {"url": URL, "url_file": "state_url"},
                "state.url: given as both 'url' and 'url_file'; use exactly one",
            ),
        ],
    )
    def test_problems(self, state: dict[str, str], expected: str) -> None:
        """Each problem names its key; the URL is not in it."""
        found = problems(with_("state", state))

        assert [expected] == found
        assert MARKER not in "".join(found)

    def test_check_config_exits_78(self, tmp_path: Path) -> None:
        """``check-config`` names the key and exits with EX_CONFIG."""
        config = tmp_path / "batchmon.toml"
        config.write_text(
            '[superoffice]\nurl = "https://crm.example.com/api"\n'
            '[superoffice.auth]\ntype = "basic"\nusername = "u"\npassword = "p"\n'
            f'[state]\npath = "state.db"\nurl = "{URL}"\n'
        )
        config.chmod(0o600)

        result = CliRunner().invoke(main, ["check-config", str(config)])

        assert EX_CONFIG == result.exit_code
        assert "state.url: give either state.path" in result.stderr
        assert MARKER not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (URL, "postgresql://batchmon@db.example.com:5432/batchmon"),
        (
            "postgresql://u:pw@h1:5432,h2:5433/db?sslmode=require",
            "postgresql://u@h1:5432,h2:5433/db",
        ),
        (
            "postgres://u@/db?host=/run/postgresql&password=pw",
            "postgres://u@/db?host=/run/postgresql",
        ),
        ("postgresql:///batchmon?passfile=/etc/pgpass", "postgresql:///batchmon"),
        ("postgresql://u:pw@db", "postgresql://u@db/"),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    """User, hosts, database and a socket directory are shown; passwords and the rest are not."""
    assert shown == redacted_url(url)
