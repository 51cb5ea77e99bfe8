"""What the ``tests/test_config_*.py`` modules share: a minimal config, and its problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitor.config import ConfigError, parse_config

EXAMPLE = Path(__file__).parent.parent / "config" / "batchmon.example.toml"
MARKER = "s3cr3t-MARKER-7f1c"
#: http.api_token wants 16 characters at least.
TOKEN_16 = "tok-0123456789abcdef"


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
