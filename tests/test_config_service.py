"""``[state]`` and ``[http]``: the state path and the listen address."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import (
    HttpConfig,
    StateConfig,
    parse_config,
)
from tests.config_helpers import (
    problems,
    with_,
)


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
