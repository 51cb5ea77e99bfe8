"""The deploy kit checked by the tools that will read it: systemd-analyze, promtool, a real
Prometheus scraping a real daemon, the metric names a running batchmon exports, and the
configuration loader reading the multi-tenant examples."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from monitor.cli import main
from monitor.config.values import parse_duration
from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.test_web import running_daemon

ROOT = Path(__file__).parents[1]
UNIT = ROOT / "deploy" / "batchmon.service"
REPLICA_DROP_IN = ROOT / "deploy" / "batchmon.service.d" / "replica.conf"
REPLICAS_EXAMPLE = ROOT / "deploy" / "replicas.example.toml"
README = ROOT / "README.md"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "batchmon-dashboard.json"
EXAMPLE_CONFIG = ROOT / "config" / "batchmon.example.toml"
#: Histograms DESIGN.md promises that /metrics does not export yet; the dashboard and the
#: recording rules already use them.  Remove a name here once batchmon exports it.
EXPECTED_LATER_HISTOGRAMS = [
    "batchmon_api_request_duration_seconds",
    "batchmon_delivery_latency_seconds",
]
#: The replicas' gauges the replica alert rules use: exported only with PostgreSQL (leases),
#: while the exposition checked here is a SQLite daemon's.
REPLICA_ONLY_GAUGES = ["batchmon_leases_held", "batchmon_replicas"]
#: The replicas' own metrics: about the replica set, not about one tenant.
REPLICA_METRICS = {"batchmon_leases_held", "batchmon_replicas", "batchmon_tenants"}
#: A metric name in PromQL, not part of a recording rule's ``level:metric:ops`` name.
METRIC_NAME = re.compile(r"(?<![\w:])(?:batchmon|process)_\w+(?![\w:])")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("BATCHMON_REQUIRE_TOOLS"):
            pytest.fail(f"{name} is required (Debian package '{package}') but not installed")
        pytest.skip(f"{name} not installed (Debian package '{package}')")
    return path


@pytest.fixture(name="systemd_analyze")
def _systemd_analyze() -> str:
    return _tool("systemd-analyze", "systemd")


@pytest.fixture(name="promtool")
def _promtool() -> str:
    return _tool("promtool", "prometheus")


@pytest.fixture(name="prometheus")
def _prometheus() -> str:
    return _tool("prometheus", "prometheus")


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; its exit code and combined output."""
    return subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )


def unit_settings(*files: Path) -> dict[str, list[str]]:
    """The ``Key=value`` lines of the unit (or of a unit and its drop-ins, in order), every
    value of a repeated key kept; an empty value resets the key, as systemd reads it."""
    settings: dict[str, list[str]] = {}
    for path in files or (UNIT,):
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                values = settings.setdefault(key.strip(), [])
                if value.strip():
                    values.append(value.strip())
                else:
                    values.clear()
    return settings


def installed_unit(directory: Path, drop_ins: dict[str, str] | None = None) -> Path:
    """A copy of the unit for systemd-analyze, with its drop-ins beside it (``name: text``).

    verify insists that ExecStart= exists, so the copy's ExecStart= is this venv's batchmon
    (installed, /usr/local/bin/batchmon is a symlink to such a script, README step 1); nothing
    else differs.  systemd-analyze reads ``batchmon.service.d/*.conf`` next to the unit file.
    """
    venv_batchmon = Path(sys.executable).with_name("batchmon")
    assert venv_batchmon.exists(), "install the project (pip install -e .) first"
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / "batchmon.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/batchmon", str(venv_batchmon)))
    for name, text in (drop_ins or {}).items():
        (directory / "batchmon.service.d").mkdir(exist_ok=True)
        (directory / "batchmon.service.d" / name).write_text(text)
    return copy


def exposure(systemd_analyze: str, unit: Path) -> float:
    """``systemd-analyze security --offline=yes``'s overall exposure level of a unit file."""
    result = run(systemd_analyze, "security", "--offline=yes", "--threshold=20", unit)
    match = re.search(r"Overall exposure level for batchmon\.service: (\d+\.\d+)", result.stdout)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert match is not None, result.stdout
    return float(match.group(1))


def secret_files(data: object) -> Iterator[str]:
    """Every ``X_file`` value of a parsed configuration."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key.endswith("_file") and isinstance(value, str):
                yield value
            else:
                yield from secret_files(value)
    elif isinstance(data, list):
        for item in data:
            yield from secret_files(item)


class TestServiceUnit:
    """deploy/batchmon.service."""

    def test_verify_is_clean(self, systemd_analyze: str, tmp_path: Path) -> None:
        """``systemd-analyze verify`` has nothing to say about the unit."""
        result = run(systemd_analyze, "verify", "--man=no", installed_unit(tmp_path))

        assert 1 == UNIT.read_text().count("/usr/local/bin/batchmon")
        assert 0 == result.returncode, result.stdout + result.stderr
        assert "" == result.stdout + result.stderr

    def test_security_exposure_is_at_most_2(self, systemd_analyze: str) -> None:
        """``systemd-analyze security --offline=yes`` scores the unit 2.0 or better."""
        assert exposure(systemd_analyze, UNIT) <= 2.0

    def test_notify_watchdog_reload_and_secrets(self) -> None:
        """The settings the daemon relies on are there, and every secret file is a credential."""
        settings = unit_settings()
        credentials = set(settings["LoadCredentialEncrypted"])
        example = tomllib.loads(EXAMPLE_CONFIG.read_text())

        assert ["notify"] == settings["Type"]
        assert ["main"] == settings["NotifyAccess"]
        assert ["/usr/local/bin/batchmon run --config /etc/batchmon/batchmon.toml"] == settings[
            "ExecStart"
        ]
        assert ["/bin/kill -HUP $MAINPID"] == settings["ExecReload"]
        assert ["30"] == settings["WatchdogSec"]
        assert ["on-failure"] == settings["Restart"]
        assert ["yes"] == settings["DynamicUser"]
        assert ["batchmon"] == settings["StateDirectory"]
        assert set(secret_files(example)) <= credentials


def readme_section(heading: str) -> str:
    """The README's text under a ``##`` or ``###`` heading, up to the next such heading."""
    section = README.read_text(encoding="utf-8").split(f"\n{heading}\n", 1)[1]
    return re.split(r"^#{2,3} ", section, maxsplit=1, flags=re.MULTILINE)[0]


def readme_block(heading: str, language: str, nth: int = 1) -> str:
    """The ``nth`` ``language`` code block of a README section."""
    return readme_section(heading).split(f"```{language}\n")[nth].split("```", 1)[0]


def credentials_drop_in(config: Path) -> str:
    """The drop-in the README's "High availability" writes for the ``X_file`` names of
    ``config``: its command as written, reading ``config`` instead of /etc/batchmon."""
    block = readme_block("### High availability", "sh").replace("\\\n", " ")
    (line,) = [line for line in block.splitlines() if "credentials.conf" in line]
    command = line.split(" | sudo ", 1)[0].replace("/etc/batchmon/batchmon.toml", str(config))
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    return result.stdout


class TestReplicaDropIn:
    """deploy/batchmon.service.d/replica.conf: batchmon.service for PostgreSQL and replicas."""

    def test_verify_is_clean(self, systemd_analyze: str, tmp_path: Path) -> None:
        """``systemd-analyze verify`` has nothing to say about the unit with the drop-in; it
        reads the drop-in (a misspelt key in it is reported)."""
        drop_in = REPLICA_DROP_IN.read_text()
        clean = run(
            systemd_analyze,
            "verify",
            "--man=no",
            installed_unit(tmp_path / "clean", {"replica.conf": drop_in}),
        )
        misspelt = run(
            systemd_analyze,
            "verify",
            "--man=no",
            installed_unit(tmp_path / "misspelt", {"replica.conf": drop_in + "StateDirectroy=\n"}),
        )

        assert 0 == clean.returncode, clean.stdout + clean.stderr
        assert "" == clean.stdout + clean.stderr
        assert "replica.conf" in misspelt.stderr
        assert "StateDirectroy" in misspelt.stderr

    def test_security_exposure_is_the_units(self, systemd_analyze: str, tmp_path: Path) -> None:
        """The drop-in weakens no hardening: the exposure is the unit's own, at most 2.0."""
        replica = installed_unit(
            tmp_path / "replica", {"replica.conf": REPLICA_DROP_IN.read_text()}
        )
        alone = installed_unit(tmp_path / "alone")

        assert exposure(systemd_analyze, replica) <= exposure(systemd_analyze, alone) <= 2.0

    def test_state_url_credential_and_no_state_directory(self) -> None:
        """The drop-in loads the credential the example's [state] url_file names, drops the
        state directory, and changes nothing else of the unit."""
        settings = unit_settings(UNIT, REPLICA_DROP_IN)
        example = tomllib.loads(REPLICAS_EXAMPLE.read_text())

        assert {"LoadCredentialEncrypted", "StateDirectory"} == set(unit_settings(REPLICA_DROP_IN))
        assert "state_url" == example["state"]["url_file"]
        assert "state_url" in settings["LoadCredentialEncrypted"]
        assert [] == settings["StateDirectory"]
        assert set(unit_settings(UNIT)["LoadCredentialEncrypted"]) < set(
            settings["LoadCredentialEncrypted"]
        )

    def test_readme_credentials_drop_in_loads_every_secret(
        self, systemd_analyze: str, tmp_path: Path
    ) -> None:
        """The README's command writes a drop-in that verify accepts and that loads every
        ``X_file`` of the replicas example (each tenant's secrets too)."""
        credentials = credentials_drop_in(REPLICAS_EXAMPLE)
        drop_ins = {"credentials.conf": credentials, "replica.conf": REPLICA_DROP_IN.read_text()}
        unit = installed_unit(tmp_path / "unit", drop_ins)
        result = run(systemd_analyze, "verify", "--man=no", unit)
        loaded = unit_settings(UNIT, *sorted((unit.parent / "batchmon.service.d").iterdir()))
        secrets = set(secret_files(tomllib.loads(REPLICAS_EXAMPLE.read_text())))

        assert 0 == result.returncode, result.stdout + result.stderr
        assert "" == result.stdout + result.stderr
        assert {"acme_so_password", "globex_private_key", "state_url"} <= secrets
        assert secrets <= set(loaded["LoadCredentialEncrypted"])


def credentials_for(config: Path, directory: Path) -> Path:
    """A credentials directory holding a plausible value for every ``X_file`` of ``config``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    values = {
        "state_url": "postgresql://batchmon:secret@db.example.com:5432/batchmon",
        "webhook_secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }
    directory.mkdir()
    for name in secret_files(tomllib.loads(config.read_text())):
        if name.endswith("_private_key"):
            value = pem
        elif name.endswith("_url"):
            value = values.get(name, "https://hooks.example.com/services/x")
        else:
            value = values.get(name, "secret-0123456789abcdef")
        (directory / name).write_text(value + "\n")
    return directory


def check_config(config: Path, credentials: Path) -> dict[str, Any]:
    """``batchmon check-config`` of a file: exit 0, and the configuration it printed."""
    result = CliRunner().invoke(
        main, ["check-config", str(config), "--credentials-dir", str(credentials)]
    )
    assert 0 == result.exit_code, result.output
    return tomllib.loads(result.stdout)


class TestTenantExamples:
    """The multi-tenant examples load with the real configuration loader."""

    def test_replicas_example(self, tmp_path: Path) -> None:
        """deploy/replicas.example.toml: three tenants, PostgreSQL, a sink for acme's tenants."""
        echoed = check_config(REPLICAS_EXAMPLE, credentials_for(REPLICAS_EXAMPLE, tmp_path / "c"))
        sinks = {sink["name"]: sink for sink in echoed["sinks"]}

        assert ["acme", "acme-test", "globex"] == [tenant["name"] for tenant in echoed["tenants"]]
        assert 15 == parse_duration(echoed["state"]["lease_ttl"])
        assert "********" == echoed["state"]["url"]
        assert ["acme*"] == sinks["acme-chat"]["tenants"]

    def test_readme_examples(self, tmp_path: Path) -> None:
        """The README's "Many tenants" example, with the [state] of "High availability"."""
        config = tmp_path / "batchmon.toml"
        config.write_text(
            readme_block("## Many tenants", "toml") + readme_block("### High availability", "toml")
        )
        echoed = check_config(config, credentials_for(config, tmp_path / "c"))

        assert ["acme", "globex"] == [tenant["name"] for tenant in echoed["tenants"]]
        assert 15 == parse_duration(echoed["state"]["lease_ttl"])

    def test_readme_shards_example(self, tmp_path: Path) -> None:
        """The README's tenant in shards, with the [state] of "High availability"."""
        config = tmp_path / "batchmon.toml"
        config.write_text(
            readme_block("### High availability", "toml", 2)
            + readme_block("### High availability", "toml")
        )
        echoed = check_config(config, credentials_for(config, tmp_path / "c"))

        assert [("initech", 3)] == [(t["name"], t["shards"]) for t in echoed["tenants"]]


class TestPrometheusFiles:
    """deploy/prometheus: configuration, rules and their unit tests, by promtool."""

    def test_config_is_valid(self, promtool: str) -> None:
        """``promtool check config`` accepts the scrape configuration and its rule file."""
        result = run(promtool, "check", "config", PROMETHEUS / "prometheus.yml")

        assert 0 == result.returncode, result.stdout + result.stderr

    def test_rules_are_valid(self, promtool: str) -> None:
        """``promtool check rules`` accepts every rule."""
        result = run(promtool, "check", "rules", PROMETHEUS / "batchmon-rules.yml")

        assert 0 == result.returncode, result.stdout + result.stderr

    def test_rule_unit_tests_pass(self, promtool: str) -> None:
        """``promtool test rules`` passes, and every alert has a test."""
        result = run(promtool, "test", "rules", "batchmon-rules.test.yml", cwd=PROMETHEUS)
        alerts = set(re.findall(r"- alert: (\w+)", (PROMETHEUS / "batchmon-rules.yml").read_text()))
        tested = set(
            re.findall(r"alertname: (\w+)", (PROMETHEUS / "batchmon-rules.test.yml").read_text())
        )

        assert 0 == result.returncode, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout
        assert alerts == tested


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana would import it."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries() -> dict[str, str]:
    """Every PromQL query of the dashboard, by ``panel title/refId``."""
    return {
        f"{panel['title']}/{target['refId']}": target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    }


def as_promql(query: str) -> str:
    """A dashboard query with Grafana's variables replaced, for Prometheus to run."""
    return (
        query.replace("$instance", ".*").replace("$tenant", ".*").replace("$__rate_interval", "1m")
    )


def exported_names(exposition: str) -> set[str]:
    """Every sample name the exposition has or declares (a family without samples counts)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


def histogram_names(families: list[str]) -> set[str]:
    """The sample names of histogram families."""
    return {f + suffix for f in families for suffix in ("_bucket", "_sum", "_count")}


@pytest.fixture(name="metric_names", scope="module")
def _metric_names() -> set[str]:
    """What a running daemon's /metrics exports, plus the metrics expected later."""

    async def scrape() -> str:
        async with Simulator() as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED, progress=10)
            async with (
                running_daemon(simulator, [task.id]) as (_, base),
                aiohttp.ClientSession() as session,
                session.get(base + "/metrics") as response,
            ):
                return await response.text()

    exposition = anyio.run(scrape)
    expected_later = histogram_names(EXPECTED_LATER_HISTOGRAMS) | set(REPLICA_ONLY_GAUGES)
    return exported_names(exposition) | expected_later


class TestMetricNames:
    """The dashboard and the rules ask only for metrics batchmon exports."""

    def test_dashboard_uses_exported_metrics(self, metric_names: set[str]) -> None:
        """Every metric name in a dashboard query or variable is on /metrics."""
        text = json.dumps(dashboard()["templating"]) + json.dumps(dashboard_queries())
        used = set(METRIC_NAME.findall(text))

        assert "batchmon_task_progress_ratio" in used
        assert set() == used - metric_names

    def test_rules_use_exported_metrics(self, metric_names: set[str]) -> None:
        """Every metric name in an alerting or recording rule is on /metrics."""
        used = set(METRIC_NAME.findall((PROMETHEUS / "batchmon-rules.yml").read_text()))

        assert "batchmon_outbox_events" in used
        assert set() == used - metric_names


class TestDashboardFile:
    """deploy/grafana/batchmon-dashboard.json as Grafana imports it."""

    def test_structure(self) -> None:
        """Unique panel ids, a layout inside 24 columns, every query on the chosen data source."""
        data = dashboard()
        panels = data["panels"]
        ids = [p["id"] for p in panels]
        variables = {v["name"]: v for v in data["templating"]["list"]}

        assert ("batchmon", 39) == (data["uid"], data["schemaVersion"])
        assert len(ids) == len(set(ids))
        assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
        assert "datasource" == variables["datasource"]["type"]
        for panel in panels:
            if panel["type"] != "row":
                assert panel["targets"], panel["title"]
            for target in panel.get("targets", []):
                assert {"type": "prometheus", "uid": "${datasource}"} == target["datasource"]

    def test_tenants_kept_apart(self) -> None:
        """Task ids repeat across tenants: every grouping by task id in the dashboard and the
        rules groups by tenant too, and every dashboard query follows the tenant variable."""
        queries = dashboard_queries()
        rules = (PROMETHEUS / "batchmon-rules.yml").read_text()
        groupings = re.findall(r"\b(?:by|on) \(([^)]*)\)", json.dumps(queries) + rules)
        with_task_id = [g for g in groupings if "task_id" in g]
        per_tenant = {
            key: query
            for key, query in queries.items()
            if not set(METRIC_NAME.findall(query)) <= REPLICA_METRICS
        }

        assert with_task_id
        assert [] == [g for g in with_task_id if "tenant" not in g]
        assert [] == [key for key, query in per_tenant.items() if 'tenant=~"$tenant"' not in query]

    def test_queries_are_valid_promql(self, promtool: str, tmp_path: Path) -> None:
        """Each query parses: promtool checks them as recording rules."""
        rules = {
            "groups": [
                {
                    "name": "dashboard",
                    "rules": [
                        {"record": f"dashboard:query_{n}", "expr": as_promql(query)}
                        for n, query in enumerate(dashboard_queries().values())
                    ],
                }
            ]
        }
        path = tmp_path / "dashboard-rules.yml"
        path.write_text(json.dumps(rules))  # JSON is YAML
        result = run(promtool, "check", "rules", path)

        assert 0 == result.returncode, result.stdout + result.stderr


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PrometheusApi:
    """The HTTP API of a Prometheus server."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful answer; ``None`` while the server is not up."""
        try:
            async with self.session.get(self.url + path, params=params) as reply:
                body = await reply.json()
        except aiohttp.ClientError:
            return None
        assert "success" == body["status"], body
        return body["data"]


@asynccontextmanager
async def prometheus_scraping(
    binary: str, workdir: Path, target: str
) -> AsyncIterator[PrometheusApi]:
    """Prometheus with the shipped prometheus.yml and rules; only target and intervals changed."""
    config = (PROMETHEUS / "prometheus.yml").read_text()
    config = config.replace("127.0.0.1:9808", target).replace("interval: 15s", "interval: 1s")
    (workdir / "prometheus.yml").write_text(config)
    shutil.copy(PROMETHEUS / "batchmon-rules.yml", workdir)
    port = free_port()
    command = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (workdir / "prometheus.log").open("wb") as log:
        process = await anyio.open_process(command, stdout=log, stderr=log)
        try:
            async with aiohttp.ClientSession() as session:
                yield PrometheusApi(session, f"http://127.0.0.1:{port}/api/v1")
        finally:
            process.terminate()
            await process.wait()


def evaluated(rules: Any) -> bool:
    """Whether every rule was evaluated at least once."""
    return all(r["health"] != "unknown" for g in rules["groups"] for r in g["rules"])


class TestWithPrometheus:
    """The shipped files in a real Prometheus scraping a real daemon."""

    async def test_alerts_rules_and_dashboard_queries(
        self, prometheus: str, tmp_path: Path
    ) -> None:
        """Only the target changes: a failed task fires, every rule evaluates, panels get data."""
        must_have_data = {
            "Tasks by state/A",
            "Tasks/A",
            "Tasks/B",
            "Tasks/C",
            "Progress per task/A",
            "API reachable/A",
            "Last successful poll/A",
            "API requests/A",
            "Events/A",
        }
        queries = dashboard_queries()
        async with Simulator() as simulator:
            failed = simulator.add_task(name="Import leads", state=BatchTaskState.FAILED)
            running = simulator.add_task(
                name="Export",
                state=BatchTaskState.STARTED,
                progress=40,
                last_started=datetime.now(UTC) - timedelta(minutes=5),
                start_count=1,
            )
            async with (
                running_daemon(simulator, [failed.id, running.id]) as (_, base),
                prometheus_scraping(prometheus, tmp_path, base.removeprefix("http://")) as api,
            ):
                with anyio.fail_after(30):
                    while True:
                        alerts = await api.get("/alerts")
                        rules = await api.get("/rules")
                        results = {
                            key: await api.get("/query", query=as_promql(query))
                            for key, query in queries.items()
                        }
                        if (
                            alerts
                            and alerts["alerts"]
                            and evaluated(rules)
                            and all(results[key]["result"] for key in must_have_data)
                        ):
                            break
                        await anyio.sleep(0.5)
                instances = await api.get(
                    "/label/instance/values", **{"match[]": "batchmon_build_info"}
                )

        (alert,) = alerts["alerts"]
        health = {
            rule["name"]: (rule["health"], rule.get("lastError", ""))
            for group in rules["groups"]
            for rule in group["rules"]
        }
        assert "BatchTaskFailed" == alert["labels"]["alertname"]
        assert (str(failed.id), "Import leads") == (
            alert["labels"]["task_id"],
            alert["labels"]["name"],
        )
        assert "firing" == alert["state"]
        assert {name: ("ok", "") for name in health} == health
        assert [base.removeprefix("http://")] == instances
