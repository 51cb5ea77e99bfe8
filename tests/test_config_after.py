"""``after`` (escalation) on a sink: where it is taken, what it must look like."""

from __future__ import annotations

import tomllib
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from monitor.cli import EX_CONFIG, main
from monitor.config import SinkConfig, parse_config
from monitor.delivery.dispatcher import Subscription
from monitor.delivery.subscriptions import subscriptions_from
from monitor.sinks.context import SinkContext
from tests.config_helpers import problems, with_

URL = "https://hooks.example/x"


async def _subscriptions(sinks: list[SinkConfig]) -> list[Subscription]:
    async with aiohttp.ClientSession() as session:  # no request is made
        return subscriptions_from(sinks, SinkContext(session, status_url=None))


@pytest.mark.parametrize(
    "kind", ["slack", "teams", "discord", "mattermost", "googlechat", "webhook"]
)
async def test_taken_by_message_sinks(kind: str) -> None:
    """Chat sinks and the webhook take a duration; the subscription carries it in seconds."""
    sink = {"name": "boss", "type": kind, "url": URL, "after": "30m", "remind_every": "1h"}
    config = parse_config(with_("sinks", [sink]), base_dir=Path("/nonexistent"))
    (subscription,) = await _subscriptions(config.sinks)
    assert (1800.0, 3600.0) == (subscription.after, subscription.remind_every)


async def test_off_by_default() -> None:
    """Without ``after``, a sink hears of conditions at once."""
    config = parse_config(
        with_("sinks", [{"name": "a", "type": "slack", "url": URL}]), base_dir=Path()
    )
    (subscription,) = await _subscriptions(config.sinks)
    assert subscription.after is None


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        ({"type": "log", "after": "30m"}, "sinks[\"a\"].after: not used by sink type 'log'"),
        (
            {"type": "alertmanager", "url": "http://am:9093", "after": "30m"},
            "sinks[\"a\"].after: not used by sink type 'alertmanager'",
        ),
        ({"type": "slack", "url": URL, "after": "0s"}, 'sinks["a"].after: must be greater than 0'),
        ({"type": "slack", "url": URL, "after": "soon"}, 'sinks["a"].after: '),
    ],
    ids=["log", "alertmanager", "zero", "not a duration"],
)
def test_refused(sink: dict[str, object], expected: str) -> None:
    """Where it means nothing, or is no positive duration, it is refused by path."""
    (problem,) = problems(with_("sinks", [{"name": "a", **sink}]))
    assert problem.startswith(expected)


def test_check_config_exits_78(tmp_path: Path) -> None:
    """``check-config`` names the key and exits with EX_CONFIG."""
    config = tmp_path / "after.toml"
    config.write_text(
        '[superoffice]\nurl = "https://crm.example.com/api"\n[superoffice.auth]\n'
        'type = "basic"\nusername = "u"\npassword = "p"\n'
        f'[[sinks]]\nname = "boss"\ntype = "slack"\nurl = "{URL}"\nafter = "-5m"\n'
    )
    result = CliRunner().invoke(main, ["check-config", str(config)])
    assert EX_CONFIG == result.exit_code
    assert 'sinks["boss"].after' in result.output


def test_the_readme_example_loads(tmp_path: Path) -> None:
    """The worked example under "### Escalation" is a valid [http] and [[sinks]]."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Escalation", 1)[1].split("\n## ", 1)[0]
    example = tomllib.loads(section.split("```toml\n", 1)[1].split("```", 1)[0])
    for name in ("api_token", "slack_oncall_url", "slack_lead_url"):
        secret = "tok-0123456789abcdef" if name == "api_token" else "https://hooks.example/x"
        (tmp_path / name).write_text(secret + "\n")
    config = parse_config(
        with_("sinks", example["sinks"]) | {"http": example["http"]}, base_dir=tmp_path
    )
    after = {sink.name: getattr(sink, "after", None) for sink in config.sinks}
    assert {"on-call": None, "team-lead": 1800.0, "alerts": None} == after
