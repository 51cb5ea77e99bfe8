"""How long a poll loop may go without a completed request before it counts as wedged.

``/healthz`` and the systemd watchdog take every tenant's poll loop; one that counts as wedged
gets the whole process restarted, every tenant with it.  So a tenant whose API does not answer
(each attempt waits out its timeout, each retry its ``Retry-After``) must never count as wedged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitor.config import Config, parse_config
from monitor.daemon import longest_call, stale_after_for

URL = {"url": "http://127.0.0.1:1/api"}
ONLINE = {"environment_url": "http://127.0.0.1:1", "tenant": "Cust12345"}
AUTH = {"type": "basic", "username": "batchmon", "password": "batchmon"}


def _config(poll: dict[str, Any], *tenants: dict[str, Any]) -> Config:
    entries = [
        {"name": f"t{index}", "superoffice": {**so, "auth": AUTH}}
        for index, so in enumerate(tenants)
    ]
    return parse_config({"tenants": entries, "poll": poll}, base_dir=Path("/nonexistent"))


@pytest.mark.parametrize(
    ("poll", "tenants", "expected"),
    [
        # Defaults: 3 attempts of 10 s, 2 waits of up to 60 s; and a minute.
        pytest.param({}, [URL], 210.0, id="defaults"),
        # An Online call may wait for its status lookup first: twice as long.
        pytest.param({}, [ONLINE], 360.0, id="online-defaults"),
        # The case of issue 16: polled every 10 s when idle, 6 attempts; the old bound
        # (3 idle intervals, 3 timeouts, a minute) was 60 s, and a dead API restarted it all.
        pytest.param({"idle_interval": "10s"}, [{**URL, "retries": 5}], 420.0, id="retries"),
        # Short calls: the idle interval decides, as before.
        pytest.param(
            {}, [{**URL, "timeout": "2s", "retries": 0}], 180.0, id="idle-interval-decides"
        ),
        # The slowest tenant decides for the process.
        pytest.param(
            {"idle_interval": "10s"},
            [{**URL, "timeout": "2s", "retries": 0}, ONLINE],
            360.0,
            id="slowest-tenant",
        ),
    ],
)
def test_stale_after(poll: dict[str, Any], tenants: list[dict[str, Any]], expected: float) -> None:
    """Longer than every tenant's longest call, and never shorter than it was."""
    config = _config(poll, *tenants)

    stale_after = stale_after_for(config)

    assert expected == stale_after
    assert all(stale_after > longest_call(t.superoffice) for t in config.tenant_list)
