"""Hostile operators and peers against a real ``batchmon run``: templates, answers, files.

- A sink template with two nested ``range(100000)`` loops for failed tasks: the daemon keeps
  answering /healthz, the messages arrive with the default text, one log line says so, and
  SIGTERM still stops it.
- A chat receiver that puts the request's path (the webhook's secret) in its reason phrase.
- A SuperOffice that echoes the password in the forms an ASP.NET error page may show it.
- A ``state.path`` that is a symbolic link.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.e2e.conftest import (
    Batchmon,
    Peers,
    Receiver,
    base_config,
    http,
    wait_until,
)

SLACK_PATH = "/services/T0000/B0000/Xk3yS3cr3tT0k3n"
#: Generous bounds for a busy 2-core machine; nothing here is a timing assertion.
STEP = 60.0
#: Minutes of CPU for every failed task without a budget; nothing for the sample event,
#: so check-config accepts it (the budget is what protects the daemon).
HEAVY = (
    "{% if event.type == 'task.failed' %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% endif %}{{ title }} (templated)"
)
RESULTS = {"A": "Failed: quote 3592 has no quote lines", "B": "Failed: disk full"}


class TestHeavyTemplate:
    """A template that would run for hours is stopped; the daemon never stops answering."""

    def test_healthz_answers_and_the_default_text_arrives(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """Two failed tasks: two messages with their results, one ``template_stopped`` line."""
        simulator = peers.simulator(Simulator())
        inbox = peers.receiver(Receiver())
        ids = {
            key: peers.call(
                simulator.add_task, name=f"Export {key}", state=BatchTaskState.STARTED, progress=10
            ).id
            for key in RESULTS
        }
        batchmon = launch(
            base_config(
                simulator.url,
                tmp_path / "state.db",
                watch={"ids": sorted(ids.values())},
                sinks=[
                    {
                        "name": "chat",
                        "type": "slack",
                        "url": inbox.url(SLACK_PATH),
                        "rate": "20/s",
                        "events": ["task.failed"],
                        "template": HEAVY,
                    }
                ],
            )
        )
        url = batchmon.wait_started()
        wait_until(
            lambda: len(http(url + "/api/v1/tasks").json()["tasks"]) == 2, STEP, "both tasks seen"
        )
        for key, task_id in ids.items():
            peers.call(
                simulator.set_task, task_id, state=BatchTaskState.FAILED, result=RESULTS[key]
            )

        health: list[int] = []

        def delivered() -> bool:
            health.append(http(url + "/healthz", timeout=5).status)
            return len(inbox.taken(SLACK_PATH)) == 2

        wait_until(delivered, STEP, "both messages delivered")

        assert set(health) == {200}
        bodies = [hit.body.decode() for hit in inbox.taken(SLACK_PATH)]
        assert all("(templated)" not in body for body in bodies)
        assert sorted(RESULTS.values()) == sorted(
            result for result in RESULTS.values() if any(result in body for body in bodies)
        )
        [stopped] = batchmon.events("template_stopped")
        assert ("warning", "chat", "took longer than 50 ms") == (
            stopped["level"],
            stopped["sink"],
            stopped["error"],
        )
        assert 0 == batchmon.stop()


@dataclass
class ReasonEcho(Receiver):
    """A chat receiver that refuses everything, quoting the request's path in its reason."""

    async def _handle(self, request: web.Request) -> web.Response:
        await super()._handle(request)
        said = f"Not Found {request.path_qs} ({quote(request.path_qs, safe='')})"
        return web.Response(status=404, reason=said, text=f"no route for {request.path_qs}")


class TestEchoingReceiver:
    """The webhook URL's secret parts stay out of the log and test-sink's output."""

    def test_reason_phrase(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """test-sink and a run name the refusal (404) without the path's secret."""
        secret = SLACK_PATH.rsplit("/", 1)[1]
        simulator = peers.simulator(Simulator())
        inbox = peers.receiver(ReasonEcho())
        task = peers.call(simulator.add_task, state=BatchTaskState.STARTED, progress=10)
        config = base_config(
            simulator.url,
            tmp_path / "state.db",
            watch={"ids": [task.id]},
            sinks=[
                {"name": "chat", "type": "slack", "url": inbox.url(SLACK_PATH + "?t=" + secret)}
            ],
        )
        tester = launch(config, name="test-sink", start=False)
        tester.start("test-sink", "chat", "--config", str(tester.config))
        assert tester.process is not None
        assert 1 == tester.process.wait(STEP)
        batchmon = launch(config)
        batchmon.wait_started()
        peers.call(simulator.set_task, task.id, state=BatchTaskState.FAILED, result="x")
        given_up = batchmon.wait_for(
            lambda line: line.get("event") == "delivery_given_up", STEP, "delivery_given_up"
        )
        assert 0 == batchmon.stop()

        said = tester.stdout() + tester.stderr() + batchmon.stdout() + batchmon.stderr()
        assert "HTTP 404 Not Found" in tester.stderr()
        assert "HTTP 404 Not Found" in json.dumps(given_up)
        assert secret not in said
        assert all(secret in hit.path for hit in inbox.hits)  # what the receiver echoed


#: The issue's password: HTML, URL, form and base64 encodings all change it.
PASSWORD = "p@ss+w/rd&x<y>"


def echoed_forms(password: str) -> dict[str, str]:
    """The password as a careless ASP.NET error page may repeat it, by name."""
    encoded = base64.b64encode(password.encode()).decode()
    return {
        "html": html.escape(password),
        "percent-lower": quote(password, safe="").lower(),
        "form": quote_plus(password),
        "base64": encoded,
        "base64-urlsafe-unpadded": base64.urlsafe_b64encode(password.encode()).decode().rstrip("="),
        "basic": base64.b64encode(f"admin:{password}".encode()).decode(),
    }


@dataclass
class EchoingApi(Receiver):
    """A SuperOffice that answers every request with an error page echoing the password."""

    async def _handle(self, request: web.Request) -> web.Response:
        await super()._handle(request)
        forms = " ".join(f"{name}={form}" for name, form in echoed_forms(PASSWORD).items())
        message = f"{PASSWORD[4:]} rejected; the form said {forms}; you sent {PASSWORD[:10]}"
        body = {"Error": True, "ErrorType": "LoginFailed", "ErrorMessage": message}
        return web.json_response(body, status=500)


class TestRedactorTable:
    """Each form of the password a peer echoes is masked in the log and in /readyz."""

    def test_echoed_forms(
        self, peers: Peers, launch: Callable[..., Batchmon], tmp_path: Path
    ) -> None:
        """None of the forms, nor the quote cut at either end, comes out."""
        api = peers.receiver(EchoingApi())
        config = base_config(api.url("/api"), tmp_path / "state.db", watch={"ids": [212]})
        config["superoffice"]["auth"]["password"] = PASSWORD
        batchmon = launch(config)
        url = batchmon.wait_started()

        def not_ready() -> Any:
            reply = http(url + "/readyz")
            return reply if reply.status == 503 and b"LoginFailed" in reply.body else None

        readyz = wait_until(not_ready, STEP, "/readyz quoting the error").body.decode()
        assert 0 == batchmon.stop()

        said = readyz + batchmon.stdout() + batchmon.stderr()
        assert "rejected; the form said" in said
        leaks = {
            name: form
            for name, form in {
                "plain": PASSWORD,
                "cut-start": PASSWORD[4:],
                "cut-end": PASSWORD[:10],
                **echoed_forms(PASSWORD),
            }.items()
            if form in said or json.dumps(form)[1:-1] in said
        }
        assert {} == leaks


class TestSymlinkedState:
    """``batchmon run`` refuses a state path that is a symbolic link."""

    @pytest.mark.parametrize("target", ["missing", "empty"])
    def test_exit_73(self, launch: Callable[..., Batchmon], tmp_path: Path, target: str) -> None:
        """Exit 73, one clear line naming the link; nothing is written where it points."""
        elsewhere = tmp_path / "elsewhere.db"
        if target == "empty":
            elsewhere.touch()
        link = tmp_path / "state.db"
        link.symlink_to(elsewhere)
        batchmon = launch(base_config("http://127.0.0.1:9/api", link))

        assert batchmon.process is not None
        assert 73 == batchmon.process.wait(STEP)
        assert f"batchmon: the state database {link} is a symbolic link" in batchmon.stderr()
        assert "Traceback" not in batchmon.stderr()
        assert (target == "empty") == elsewhere.exists()
        assert target == "missing" or elsewhere.stat().st_size == 0
