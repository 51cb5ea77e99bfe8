"""Silences through the daemon's API and ``batchmon silence``: a real daemon, the simulator and
real processes on loopback."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from tests.test_cli_status import BATCHMON, ENV, batchmon
from tests.test_web import running_daemon

TOKEN = "silence-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def request(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=AUTH if headers is None else headers) as r,
    ):
        return r.status, await r.json(content_type=None)


class TestApi:
    """``/api/v1/silences``."""

    async def test_add_list_mark_end(self) -> None:
        """201 with id and end; listed; the task is marked silenced; DELETE ends it."""
        async with Simulator() as simulator:
            failed = simulator.add_task(name="Export contacts", state=BatchTaskState.FAILED)
            other = simulator.add_task(name="Import", state=BatchTaskState.STARTED)
            ids = [failed.id, other.id]
            async with running_daemon(simulator, ids, http={"api_token": TOKEN}) as (_, base):
                body = {"for": "2h", "reason": "upgrade", "names": ["Export*"], "by": "ann"}
                status, made = await request("POST", base + "/api/v1/silences", body)
                _, listed = await request("GET", base + "/api/v1/silences", headers={})
                _, tasks = await request("GET", base + "/api/v1/tasks", headers={})
                async with aiohttp.ClientSession() as session, session.get(base + "/") as page:
                    html = await page.text()
                ended = await request("DELETE", f"{base}/api/v1/silences/{made['id']}")
                again = await request("DELETE", f"{base}/api/v1/silences/{made['id']}")
                _, after = await request("GET", base + "/api/v1/silences", headers={})

        assert 201 == status
        assert {"reason": "upgrade", "by": "ann", "names": ["Export*"]}.items() <= made.items()
        assert "tasks named Export*" == made["covers"]
        assert made["ends"] > made["created"]
        assert [made] == listed["silences"]
        marks = {t["id"]: t["silenced"] for t in tasks["tasks"]}
        assert {failed.id: made["id"], other.id: None} == marks
        assert f'data-silence-id="{made["id"]}"' in html
        assert "upgrade" in html
        assert (200, made["id"]) == (ended[0], ended[1]["id"])
        assert 404 == again[0]
        assert [] == after["silences"]

    async def test_refusals(self) -> None:
        """No token 401, no api_token at all 403, a bad body 400 saying what is wrong."""
        async with Simulator() as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            async with running_daemon(simulator, [task.id], http={"api_token": TOKEN}) as (_, base):
                anonymous = await request(
                    "POST", base + "/api/v1/silences", {"for": "1h"}, headers={}
                )
                too_long = await request(
                    "POST", base + "/api/v1/silences", {"for": "8d", "reason": "r", "all": True}
                )
                two = await request(
                    "POST",
                    base + "/api/v1/silences",
                    {"for": "1h", "reason": "r", "all": True, "ids": [1]},
                )
                not_json = await request(
                    "POST", base + "/api/v1/silences", headers={**AUTH, "Content-Type": "x"}
                )
            async with running_daemon(simulator, [task.id]) as (_, base):
                disabled = await request(
                    "POST", base + "/api/v1/silences", {"for": "1h"}, headers={}
                )

        assert 401 == anonymous[0]
        assert (400, "for: must be more than 0 and at most 7d, got '8d'") == (
            too_long[0],
            too_long[1]["error"],
        )
        assert 400 == two[0]
        assert "exactly one" in two[1]["error"]
        assert 400 == not_json[0]
        assert 403 == disabled[0]


class TestCli:
    """``batchmon silence`` against a real daemon."""

    async def test_add_list_end(self, tmp_path: Path) -> None:
        """--for/--reason/--id makes one; --list shows it; --end ends it; a wrong id exits 3."""
        token_file = tmp_path / "api_token"
        token_file.write_text(TOKEN)
        auth = ["--token-file", str(token_file)]
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED)
            async with running_daemon(simulator, [task.id], http={"api_token": TOKEN}) as (_, base):
                made = await batchmon(
                    "silence", "--for", "2h", "--reason", "by hand", "--id", str(task.id),
                    "--url", base, *auth,
                )  # fmt: skip
                sid = made.stdout.decode().split()[0]
                listed = await batchmon("silence", "--list", "--url", base)
                ended = await batchmon("silence", "--end", sid, "--url", base, *auth)
                missing = await batchmon("silence", "--end", sid, "--url", base, *auth)
                anonymous = await batchmon(
                    "silence", "--for", "1h", "--reason", "x", "--all", "--url", base
                )
                bad = await batchmon(
                    "silence", "--for", "9d", "--reason", "x", "--all", "--url", base, *auth
                )
                usage = await batchmon("silence", "--list", "--all", "--url", base)

        assert 0 == made.returncode, made.stderr.decode()
        assert f"task {task.id}: by hand, by " in made.stdout.decode()
        assert re.search(r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  ", made.stdout.decode())
        assert sid in listed.stdout.decode()
        assert 0 == ended.returncode
        assert ended.stdout.decode().startswith(f"ended: {sid}")
        assert 3 == missing.returncode
        assert 77 == anonymous.returncode
        assert (1, True) == (bad.returncode, "at most 7d" in bad.stderr.decode())
        assert 2 == usage.returncode

    async def test_the_token_from_the_environment(self) -> None:
        """BATCHMON_API_TOKEN serves ``silence`` and ``stop`` as it serves ``ack``."""
        env = {**ENV, "BATCHMON_API_TOKEN": TOKEN}
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED)
            async with running_daemon(simulator, [task.id], http={"api_token": TOKEN}) as (_, base):
                made = await anyio.run_process(
                    [*BATCHMON, "silence", "--for", "1h", "--reason", "x", "--all", "--url", base],
                    check=False,
                    env=env,
                )
                stopped = await anyio.run_process(
                    [*BATCHMON, "stop", str(task.id), "--url", base], check=False, env=env
                )

        assert 0 == made.returncode, made.stderr.decode()
        assert 0 == stopped.returncode, stopped.stderr.decode()
