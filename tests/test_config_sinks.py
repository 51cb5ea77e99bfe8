"""``[[sinks]]``: names, filters, each sink type and its keys."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import TypeAdapter

from monitor.cli import EX_CONFIG, main
from monitor.config import parse_config
from monitor.config.sinks import (
    SINK_TYPES,
    ChatSinkConfig,
    SinkConfig,
    UrlSinkConfig,
    WebhookSinkConfig,
)
from tests.config_helpers import (
    minimal,
    problems,
    with_,
)


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


SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes of base64


class TestSinkTypes:
    """Every sink type, its required URL and the keys only some types take."""

    def test_every_type_but_log_posts_to_a_url(self) -> None:
        """The URL types are the models under UrlSinkConfig: all but ``log``."""
        local = {kind for kind, model in SINK_TYPES.items() if not issubclass(model, UrlSinkConfig)}
        assert {"log"} == local

    @pytest.mark.parametrize("kind", sorted(SINK_TYPES.keys() - {"log"}))
    def test_url_types(self, kind: str) -> None:
        """Each URL sink type loads with a URL and is refused without one."""
        config = parse_config(
            with_("sinks", [{"name": "a", "type": kind, "url": "https://hooks.example.com/x"}]),
            base_dir=Path("/nonexistent"),
        )

        assert isinstance(config.sinks[0], UrlSinkConfig)
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

        [entry] = config.sinks
        assert isinstance(entry, WebhookSinkConfig)
        assert (10.0, 14400.0) == (entry.rate, entry.remind_every)
        assert "whsec_" not in repr(config)

    def test_public_url(self) -> None:
        """http.public_url must be an absolute http(s) URL."""
        assert problems(with_("http.public_url", "batchmon.local")) == [
            "http.public_url: expected an absolute http(s) URL, e.g. 'https://batchmon.example.com/'"
        ]


class TestDigestQuietCap:
    """``group_window``, ``group_min``, ``max_per_hour``, ``quiet``, ``time_zone``, ``quiet_except``."""

    def test_chat_sink_with_every_key(self) -> None:
        """A chat sink takes the keys; defaults leave them off."""
        sink = {
            "name": "ops",
            "type": "slack",
            "url": "https://hooks.example.com/x",
            "group_window": "1m",
            "group_min": 5,
            "max_per_hour": 20,
            "quiet": ["Mon-Fri 22:00-07:00", "Sat-Sun"],
            "time_zone": "Europe/Oslo",
            "quiet_except": ["monitor.*"],
        }
        [entry] = parse_config(with_("sinks", [sink]), base_dir=Path()).sinks
        [default] = parse_config(
            with_("sinks", [{"name": "a", "type": "teams", "url": "https://x.example"}]),
            base_dir=Path(),
        ).sinks

        assert isinstance(entry, ChatSinkConfig)
        assert (60.0, 5, 20) == (entry.group_window, entry.group_min, entry.max_per_hour)
        assert ["Mon-Fri 22:00-07:00 Europe/Oslo", "Sat-Sun Europe/Oslo"] == [
            window.description for window in entry.quiet_windows
        ]
        assert isinstance(default, ChatSinkConfig)
        assert (0.0, 3, None, []) == (
            default.group_window,
            default.group_min,
            default.max_per_hour,
            default.quiet_windows,
        )

    @pytest.mark.parametrize(
        ("keys", "expected"),
        [
            ({"group_window": "soon"}, 'sinks["a"].group_window: expected a duration like'),
            ({"group_window": "-1s"}, 'sinks["a"].group_window: a duration must not be negative'),
            ({"group_min": 0}, 'sinks["a"].group_min: must be greater than or equal to 1'),
            ({"max_per_hour": 0}, 'sinks["a"].max_per_hour: must be greater than or equal to 1'),
            ({"quiet": ["Sat-Sun"]}, 'sinks["a"].time_zone: required with quiet'),
            (
                {"quiet": ["Sat-Sun"], "time_zone": "Mars/Olympus"},
                "sinks[\"a\"].time_zone: unknown time zone 'Mars/Olympus'",
            ),
            (
                {"quiet": ["Sat-Sun", "Mon-Fri 22:00-31:00"], "time_zone": "UTC"},
                "sinks[\"a\"].quiet[1]: time '31:00' is not HH:MM",
            ),
            (
                {"quiet": ["Weekends"], "time_zone": "UTC"},
                "sinks[\"a\"].quiet[0]: unknown day 'Weekends'",
            ),
            ({"quiet": [], "time_zone": "UTC"}, 'sinks["a"].quiet: must not be empty'),
            (
                {"quiet_except": ["monitor.api_down"]},
                'sinks["a"].quiet_except: only applies with quiet',
            ),
            (
                {"quiet": ["Sat"], "time_zone": "UTC", "quiet_except": ["monitor.api_dwn"]},
                "sinks[\"a\"].quiet_except[0]: unknown event type 'monitor.api_dwn'",
            ),
        ],
    )
    def test_refused(self, keys: dict[str, object], expected: str) -> None:
        """Each bad value is refused at its own key."""
        sink = {"name": "a", "type": "discord", "url": "https://x.example", **keys}
        (problem,) = problems(with_("sinks", [sink]))

        assert problem.startswith(expected)

    @pytest.mark.parametrize("kind", ["log", "webhook", "alertmanager"])
    def test_only_chat_sinks(self, kind: str) -> None:
        """The webhook, log and Alertmanager sinks get every event: they take none of the keys."""
        sink = {"name": "a", "type": kind, "group_window": "30s"}
        if kind != "log":
            sink["url"] = "https://x.example"

        assert [f'sinks["a"].group_window: not used by sink type {kind!r}'] == problems(
            with_("sinks", [sink])
        )


def test_check_config_exits_78_naming_the_key(tmp_path: Path) -> None:
    """``batchmon check-config`` refuses a bad quiet window with exit 78, naming the key."""
    config = tmp_path / "batchmon.toml"
    config.write_text(
        '[superoffice]\nurl = "https://crm.example.com/api"\n'
        '[superoffice.auth]\ntype = "basic"\nusername = "u"\npassword = "p"\n'
        '[[sinks]]\nname = "ops"\ntype = "slack"\nurl = "https://hooks.example.com/x"\n'
        'quiet = ["Mon-Fri 22:00"]\ntime_zone = "Europe/Oslo"\n'
    )
    result = CliRunner().invoke(main, ["check-config", str(config)])

    assert EX_CONFIG == result.exit_code == 78
    assert 'sinks["ops"].quiet[0]: hours' in result.stderr


def test_readme_alerts_example_loads(tmp_path: Path) -> None:
    """The worked example of the README's "Digests instead of storms" loads as written."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Digests instead of storms") :]
    example = section[section.index("```toml\n") + 8 : section.index("```\n", 8)]
    for name, value in [
        ("slack_url", "https://hooks.example.com/x"),
        ("webhook_url", "https://receiver.example/x"),
        ("webhook_secret", SECRET),
    ]:
        (tmp_path / name).write_text(value)
    data = {**minimal(), **tomllib.loads(example)}

    config = parse_config(data, base_dir=tmp_path)

    assert ["oncall", "hook"] == [sink.name for sink in config.sinks]
    assert isinstance(config.sinks[0], ChatSinkConfig)
    assert 2 == len(config.sinks[0].quiet_windows)


class TestTenants:
    """``tenants``: globs on tenant names choose the tenants a sink is built for."""

    def test_all_tenants_by_default(self) -> None:
        """Without ``tenants`` a sink serves every tenant."""
        (sink,) = parse_config(
            with_("sinks", [{"name": "a", "type": "log"}]), base_dir=Path()
        ).sinks

        assert ["*"] == sink.tenants
        assert sink.serves("default")
        assert sink.serves("acme")

    @pytest.mark.parametrize(
        ("globs", "tenant", "served"),
        [
            (["acme*"], "acme", True),
            (["acme*"], "acme-eu", True),
            (["acme*"], "default", False),
            (["acme*"], "xacme", False),
            (["default", "b?ta"], "beta", True),
            (["default", "b?ta"], "default", True),
            (["default", "b?ta"], "bta", False),
            (["cust[0-4]*"], "cust3x", True),
            (["cust[0-4]*"], "cust5", False),
            (["*-eu"], "acme-eu", True),
            (["*-eu"], "acme_eu", False),
        ],
    )
    def test_globs(self, globs: list[str], tenant: str, served: bool) -> None:
        """fnmatch globs, case-sensitive, over the whole name; any one glob suffices."""
        sink = {"name": "a", "type": "log", "tenants": globs}
        # The sink alone: a whole configuration refuses a sink that serves none of its tenants.
        config_sink = TypeAdapter(SinkConfig).validate_python(sink)

        assert served == config_sink.serves(tenant)

    @pytest.mark.parametrize(
        ("globs", "expected"),
        [
            ([], 'sinks["a"].tenants: must not be empty'),
            ([""], "sinks[\"a\"].tenants[0]: '' is not a tenant glob"),
            (["acme", "Acme*"], "sinks[\"a\"].tenants[1]: 'Acme*' is not a tenant glob"),
            (["acme eu"], "sinks[\"a\"].tenants[0]: 'acme eu' is not a tenant glob"),
            (["acme.eu"], "sinks[\"a\"].tenants[0]: 'acme.eu' is not a tenant glob"),
            (["cust[0-4"], "sinks[\"a\"].tenants[0]: 'cust[0-4' is not a tenant glob"),
            (["[]"], "sinks[\"a\"].tenants[0]: '[]' is not a tenant glob"),
            ("acme", 'sinks["a"].tenants: expected an array'),
        ],
    )
    def test_refused(self, globs: object, expected: str) -> None:
        """A glob that could never match a tenant name is refused at its index."""
        sink = {"name": "a", "type": "slack", "url": "https://x.example", "tenants": globs}
        (problem,) = problems(with_("sinks", [sink]))

        assert problem.startswith(expected), problem

    def test_upper_case_hint(self) -> None:
        """Upper case is refused with the reason: tenant names are lower case."""
        (problem,) = problems(with_("sinks", [{"name": "a", "type": "log", "tenants": ["ACME"]}]))

        assert problem.endswith("(tenant names are lower case)")

    def test_check_config_exits_78_naming_the_key(self, tmp_path: Path) -> None:
        """``batchmon check-config`` refuses a bad glob with exit 78, naming the key."""
        config = tmp_path / "batchmon.toml"
        config.write_text(
            '[superoffice]\nurl = "https://crm.example.com/api"\n'
            '[superoffice.auth]\ntype = "basic"\nusername = "u"\npassword = "p"\n'
            '[[sinks]]\ntype = "log"\ntenants = ["acme/*"]\n'
        )
        result = CliRunner().invoke(main, ["check-config", str(config)])

        assert EX_CONFIG == result.exit_code
        assert "sinks[0].tenants[0]: 'acme/*' is not a tenant glob" in result.stderr
