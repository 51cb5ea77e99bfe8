"""Secrets: a unique marker in every secret, and none of them anywhere batchmon writes.

Eight batchmon processes run at once (module scope), each with one auth type, against one
simulator that knows every credential, so the credentials are real for the run:

* ``basic``: password from a file, app token from the environment, the HTTP API token
  inline, and a sink of every type whose URL (inline, ``_file`` or ``_env``) carries
  markers, pointed at receivers that answer 200, 400, 404, 503 and 401 (echoing the path
  and query, as many servers do) and at a closed port; the webhook's signing secret;
* ``wrong-password``: a refused basic password (``monitor.auth_failed``, /readyz says why);
* ``ticket``, ``bearer``, ``oauth`` (client secret and refresh token), ``system-user``
  (client secret, system user token, private key);
* ``oauth-echo``: OAuth against a login host that echoes everything it got into its error;
* ``api-echo``: a ticket against an API that echoes everything it got into its 401.

Then every page of each (``/``, ``/metrics``, ``/healthz``, ``/readyz``, the task API,
watch changes with a wrong and the right token), ``batchmon status``, ``check-config`` on
every file and on broken variants, and ``test-sink`` for every sink.  Each marker is
checked against everything collected.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from monitor.cli import main
from monitor.config.echo import toml_text
from monitor.simulator import OAuthApp, OnlineTenant, Simulator, SystemUserApp
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import (
    BATCHMON,
    Batchmon,
    Peers,
    Receiver,
    base_config,
    free_port,
    http,
)


def _marker(name: str) -> str:
    return f"mk{name.replace('-', '')}{secrets.token_hex(6)}"


NAMES = [
    "basic-password",
    "wrong-password",
    "ticket",
    "app-token",
    "ticket-app-token",
    "bearer-token",
    "oauth-client-secret",
    "oauth-refresh-token",
    "su-client-secret",
    "su-token",
    "api-token",
    "read-token",
    "slack-url",
    "teams-url",
    "discord-url",
    "mattermost-url",
    "googlechat-key",
    "googlechat-token",
    "webhook-url",
    "am-password",
    "am-path",
    "echo-oauth-client-secret",
    "echo-oauth-refresh-token",
    "echo-ticket",
    "echo-app-token",
    "so-url-password",
    "so-url-token",
]
#: Every marker: the named ones and those made of the credentials themselves.
SECRETS = [*NAMES, "private-key", "webhook-secret", "basic-credentials"]


@dataclass
class Collected:
    """Everything batchmon said, by where it said it."""

    markers: dict[str, str]
    texts: dict[str, str] = field(default_factory=dict)

    def add(self, source: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.texts[source] = self.texts.get(source, "") + text

    def holding(self, marker: str) -> list[str]:
        return sorted(source for source, text in self.texts.items() if marker in text)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(name="collected", scope="module")
def _collected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collected]:
    tmp = tmp_path_factory.mktemp("secrets")
    m = {name: _marker(name) for name in NAMES}
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem(key)
    # A line from the middle of the private key stands for the whole key.
    m["private-key"] = pem.splitlines()[5]
    m["webhook-secret"] = base64.b64encode(secrets.token_bytes(32)).decode()
    m["basic-credentials"] = base64.b64encode(f"batchmon:{m['basic-password']}".encode()).decode()
    collected = Collected(m)
    env = {
        "E2E_APP_TOKEN": m["app-token"],
        "E2E_TICKET": m["ticket"],
        "E2E_SO_URL": f"https://crm.example.com/api?token={m['so-url-token']}",
        "E2E_DISCORD_URL": "",  # set below, once the receiver has a port
    }
    peers = Peers()
    processes: list[Batchmon] = []
    try:
        simulator = peers.simulator(
            Simulator(
                password=m["basic-password"],
                ticket=m["ticket"],
                token=m["bearer-token"],
                tenant=OnlineTenant(),
                oauth=OAuthApp(
                    client_secret=m["oauth-client-secret"], refresh_token=m["oauth-refresh-token"]
                ),
                system_user=SystemUserApp(
                    public_key=key.public_key(),
                    client_secret=m["su-client-secret"],
                    system_user_token=m["su-token"],
                ),
            )
        )
        task = peers.call(simulator.add_task, name="Export", state=BatchTaskState.STARTED)
        ok = peers.receiver(Receiver(echo="path"))
        bad = peers.receiver(Receiver(status=400, echo="path"))
        missing = peers.receiver(Receiver(status=404, echo="path"))
        busy = peers.receiver(Receiver(status=503, echo="path"))
        refused = peers.receiver(Receiver(status=401, echo="path"))
        echo_all = peers.receiver(Receiver(status=401, echo="everything"))
        closed = f"http://127.0.0.1:{free_port()}"
        env["E2E_DISCORD_URL"] = busy.url(f"/api/webhooks/1234/{m['discord-url']}")
        files = tmp / "credentials"
        files.mkdir()
        for name, value in {
            "so_password": m["basic-password"],
            "teams_url": f"{closed}/webhookb2/{m['teams-url']}",
            "webhook_secret": "whsec_" + m["webhook-secret"],
            "oauth_client_secret": m["oauth-client-secret"],
            "private_key.pem": pem,
        }.items():
            (files / name).write_text(value + "\n")

        def config(name: str, superoffice: dict[str, Any], **sections: Any) -> Path:
            page = {"listen": "127.0.0.1:0", "public_url": "https://batchmon.example.com/"}
            sections["http"] = {**page, **sections.get("http", {})}
            data = base_config(
                simulator.url, tmp / name / "state.db", watch={"ids": [task.id]}, **sections
            )
            for key, value in superoffice.items():
                if value is None:
                    del data["superoffice"][key]
                else:
                    data["superoffice"][key] = value
            (tmp / name).mkdir()
            path = tmp / name / "batchmon.toml"
            path.write_text(toml_text(data))
            return path

        basic_auth = {"type": "basic", "username": "batchmon"}
        online = {"url": simulator.url, "environment_url": simulator.environment_url}
        configs = {
            "basic": config(
                "basic",
                {
                    "auth": {**basic_auth, "password_file": str(files / "so_password")},
                    "app_token_env": "E2E_APP_TOKEN",
                },
                http={"api_token": m["api-token"], "read_token": m["read-token"]},
                sinks=[
                    {
                        "name": "slack",
                        "type": "slack",
                        "url": bad.url(f"/services/T0/B0/{m['slack-url']}"),
                    },
                    {"name": "teams", "type": "teams", "url_file": str(files / "teams_url")},
                    {"name": "discord", "type": "discord", "url_env": "E2E_DISCORD_URL"},
                    {
                        "name": "mattermost",
                        "type": "mattermost",
                        "url": ok.url(f"/hooks/{m['mattermost-url']}"),
                    },
                    {
                        "name": "googlechat",
                        "type": "googlechat",
                        "url": missing.url(
                            f"/v1/spaces/AAAA/messages?key={m['googlechat-key']}"
                            f"&token={m['googlechat-token']}"
                        ),
                    },
                    {
                        "name": "webhook",
                        "type": "webhook",
                        "url": refused.url(f"/in/{m['webhook-url']}"),
                        "secret_file": str(files / "webhook_secret"),
                    },
                    {
                        "name": "am",
                        "type": "alertmanager",
                        "url": missing.url(f"/{m['am-path']}/").replace(
                            "://", f"://am:{m['am-password']}@"
                        ),
                    },
                    {"name": "log", "type": "log"},
                ],
            ),
            "wrong-password": config(
                "wrong-password", {"auth": {**basic_auth, "password": m["wrong-password"]}}
            ),
            "ticket": config(
                "ticket",
                {
                    "auth": {"type": "ticket", "ticket_env": "E2E_TICKET"},
                    "app_token": m["ticket-app-token"],
                },
            ),
            "bearer": config("bearer", {"auth": {"type": "bearer", "token": m["bearer-token"]}}),
            "oauth": config(
                "oauth",
                {
                    **online,
                    "auth": {
                        "type": "oauth",
                        "client_id": "batchmon-app",
                        "client_secret_file": str(files / "oauth_client_secret"),
                        "refresh_token": m["oauth-refresh-token"],
                    },
                },
            ),
            "system-user": config(
                "system-user",
                {
                    "url": None,
                    "tenant": "Cust12345",
                    "environment_url": simulator.environment_url,
                    "auth": {
                        "type": "system_user",
                        "client_secret": m["su-client-secret"],
                        "private_key_file": str(files / "private_key.pem"),
                        "system_user_token": m["su-token"],
                    },
                },
            ),
            "oauth-echo": config(
                "oauth-echo",
                {
                    "url": simulator.url,
                    "environment_url": echo_all.base,
                    "auth": {
                        "type": "oauth",
                        "client_id": "batchmon-app",
                        "client_secret": m["echo-oauth-client-secret"],
                        "refresh_token": m["echo-oauth-refresh-token"],
                    },
                },
            ),
            "api-echo": config(
                "api-echo",
                {
                    "url": echo_all.url("/api"),
                    "auth": {"type": "ticket", "ticket": m["echo-ticket"]},
                    "app_token": m["echo-app-token"],
                },
            ),
        }
        for path in configs.values():
            batchmon = Batchmon(path, path.parent, env)
            processes.append(batchmon)
            batchmon.start()
        urls = {p.config.parent.name: p.wait_started() for p in processes}
        # Activity: the task fails, every sink is tried, refusals happen.
        time.sleep(1.0)
        peers.call(simulator.set_task, task.id, state=BatchTaskState.FAILED, result="Failed")
        basic = processes[0]
        for sink in ("slack", "teams", "discord", "googlechat", "webhook", "am"):

            def failed(line: dict[str, Any], s: str = sink) -> bool:
                return line.get("sink") == s and line.get("event") in {
                    "delivery_failed",
                    "delivery_given_up",
                    "alertmanager_resend_failed",
                }

            basic.wait_for(failed, 30, f"a failed delivery to {sink}")
        for name in ("wrong-password", "api-echo", "oauth-echo"):
            processes[list(configs).index(name)].wait_for(
                lambda line: line.get("event") == "monitor.auth_failed", 30, f"{name} refused"
            )

        # The basic daemon has a read token: its pages are read without it, with a wrong one
        # and with the right one, and none of the answers may hold it.
        readers: dict[str, dict[str, str]] = {
            "": {},
            " wrong": {"Authorization": "Bearer wrong"},
            " read-token": {"Authorization": f"Bearer {m['read-token']}"},
        }
        for name, url in urls.items():
            for who, headers in readers.items() if name == "basic" else [("", {})]:
                for page in ("/", "/metrics", "/healthz", "/readyz", "/api/v1/tasks"):
                    reply = http(url + page, headers=headers)
                    if name == "basic" and page == "/api/v1/tasks":
                        assert reply.status == (200 if who == " read-token" else 401), who
                    collected.add(f"{name}{who} GET {page}", f"{reply.headers}\n{reply.body!r}")
                reply = http(f"{url}/api/v1/tasks/{task.id}", headers=headers)
                collected.add(f"{name}{who} GET /api/v1/tasks/id", reply.body)
        base = urls["basic"]
        for token in ("wrong", m["api-token"]):
            for method in ("PUT", "DELETE", "DELETE"):
                reply = http(
                    f"{base}/api/v1/watches/4242",
                    method=method,
                    headers={"Authorization": f"Bearer {token}"},
                )
                collected.add(f"basic {method} /api/v1/watches", f"{reply.headers}{reply.body!r}")
        read_token = tmp / "read_token"
        read_token.write_text(m["read-token"] + "\n")
        for options in ([], ["--token-file", str(read_token)]):
            status = subprocess.run(
                [*BATCHMON, "status", "--url", base, *options],
                capture_output=True,
                check=False,
                timeout=30,
            )
            assert status.returncode == (0 if options else 77), status.stderr
            collected.add(f"batchmon status {options}", status.stdout + status.stderr)

        runner = CliRunner()
        with _environment(env):
            for name, path in configs.items():
                result = runner.invoke(main, ["check-config", str(path)])
                collected.add(f"check-config {name}", result.output)
            for variant, edit in BROKEN_VARIANTS.items():
                path = tmp / "basic" / f"broken-{variant}.toml"
                path.write_text(edit(configs["basic"].read_text(), m))
                result = runner.invoke(main, ["check-config", str(path)])
                assert 78 == result.exit_code, (variant, result.output)
                collected.add(f"check-config broken {variant}", result.output)
            for sink in ("slack", "teams", "discord", "mattermost", "googlechat", "webhook", "am"):
                result = runner.invoke(main, ["test-sink", sink, "--config", str(configs["basic"])])
                collected.add(f"test-sink {sink}", result.output)
        structlog.reset_defaults()

        for batchmon in processes:
            batchmon.stop()
            for run, _ in enumerate(batchmon.runs):
                name = batchmon.config.parent.name
                collected.add(f"{name} log", batchmon.stdout(run))
                collected.add(f"{name} stderr", batchmon.stderr(run))
        yield collected
    finally:
        for batchmon in processes:
            batchmon.close()
        peers.close()


class _environment:
    """Set environment variables for in-process CLI runs, and put them back."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self._values.items():
            self._saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc: object) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _replace(
    old: str, new: Callable[[dict[str, str]], str]
) -> Callable[[str, dict[str, str]], str]:
    def edit(text: str, m: dict[str, str]) -> str:
        assert old in text, old
        return text.replace(old, new(m), 1)

    return edit


#: check-config on broken copies of the ``basic`` configuration, each with a marker at the
#: place of the problem (or next to it).
BROKEN_VARIANTS: dict[str, Callable[[str, dict[str, str]], str]] = {
    "unterminated string": lambda text, m: text.replace(
        'username = "batchmon"', f'username = "batchmon"\npassword = "{m["basic-password"]}'
    ),
    "two forms of one secret": lambda text, m: text.replace(
        'username = "batchmon"',
        f'username = "batchmon"\npassword = "{m["basic-password"]}"',
    ),
    "secret of another auth type": lambda text, m: text.replace(
        'username = "batchmon"', f'username = "batchmon"\ntoken = "{m["bearer-token"]}"'
    ),
    "misspelt secret key": lambda text, m: text.replace(
        'username = "batchmon"', f'username = "batchmon"\npasword = "{m["wrong-password"]}"'
    ),
    "sink URL without http": lambda text, m: text.replace(
        'type = "slack"\nurl = "http://', 'type = "slack"\nurl = "ftp://'
    ),
    "malformed signing secret": lambda text, m: text.replace(
        '[[sinks]]\nname = "log"',
        f'[[sinks]]\nname = "signed"\ntype = "webhook"\nurl = "https://e.example/x"\n'
        f'secret = "whsec_{m["webhook-secret"]}!!"\n\n[[sinks]]\nname = "log"',
    ),
    "secret with the wrong type": lambda text, m: text.replace(
        'api_token = "', 'api_token = ["'
    ).replace(f'{m["api-token"]}"', f'{m["api-token"]}"]'),
    # The API's URL is shown (start-up log, check-config), so it may not carry credentials.
    "superoffice URL with credentials": _replace(
        '[superoffice]\nurl = "http://',
        lambda m: f'[superoffice]\nurl = "http://batchmon:{m["so-url-password"]}@',
    ),
    "superoffice URL with a query": lambda text, m: re.sub(
        '^url = ".*"$', 'url_env = "E2E_SO_URL"', text, count=1, flags=re.MULTILINE
    ),
}


class TestNoSecretAnywhere:
    """No marker in any log line, metric, API answer, page, CLI output or error message."""

    @pytest.mark.parametrize("secret", SECRETS)
    def test_marker_nowhere(self, collected: Collected, secret: str) -> None:
        """The secret's marker is in nothing batchmon wrote or answered."""
        assert [] == collected.holding(collected.markers[secret])

    def test_what_was_collected(self, collected: Collected) -> None:
        """The run did what it should: deliveries failed loudly, refusals were said."""
        texts = collected.texts
        basic_log = texts["basic log"]

        for event in ("delivery_failed", "delivery_given_up", "task.failed"):
            assert event in basic_log
        assert "monitor.auth_failed" in texts["wrong-password log"]
        assert "SuperOffice rejected the credentials" in texts["wrong-password GET /readyz"]
        for name in ("ticket", "bearer", "oauth", "system-user"):
            assert "task.discovered" in texts[f"{name} log"], texts[f"{name} log"][-2000:]
        assert "********" in texts["check-config basic"]
        assert "configuration refused" in texts["check-config broken two forms of one secret"]
        assert (
            "superoffice.url: the URL must not contain credentials"
            in texts["check-config broken superoffice URL with credentials"]
        )
        assert (
            "superoffice.url: the URL must be a base without '?'"
            in (texts["check-config broken superoffice URL with a query"])
        )
        assert "delivered" in texts["test-sink mattermost"]
        assert "not delivered" in texts["test-sink slack"]
        assert len(BROKEN_VARIANTS) == sum(1 for k in texts if k.startswith("check-config broken"))
