"""The HTTP side of a daemon watching several tenants: a real daemon against the simulator's
fleet on loopback, read and changed as a user (a browser, curl) would.

Task ids repeat across tenants, so every check that one tenant is reached also checks that the
task of the same id in another tenant is left alone.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import anyio

from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.simulator import Fleet, Simulator
from monitor.superoffice.models import BatchTaskState

# The tools' fixtures, where the tests of the single form define them.
from tests.test_status_page import _chromium, browse  # noqa: F401
from tests.test_web import _promtool, running_daemon  # noqa: F401

TOKEN = "0123456789abcdef0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Tenants:
    """A daemon watching three tenants of a fleet; names as batchmon knows them."""

    daemon: Daemon
    base: str
    fleet: Fleet
    #: The fleet's name (context identifier) of each tenant: ``acme`` has task 212 failed and
    #: 213 running; ``globex`` 212 running and 213 done; ``initech``'s credentials are refused.
    contexts: dict[str, str]


def tenant_config(fleet: Fleet, context: str, name: str, password: str = "batchmon") -> Any:
    """One ``[[tenants]]`` entry for a tenant of ``fleet``, watching 212 and 213."""
    return {
        "name": name,
        "superoffice": {
            "environment_url": fleet.environment_url,
            "tenant": context,
            "auth": {"type": "basic", "username": "batchmon", "password": password},
            "max_requests_per_second": 1000.0,
            "timeout": "2s",
            "retries": 0,
        },
        "watch": {"ids": [212, 213]},
    }


@asynccontextmanager
async def running_tenants() -> AsyncIterator[Tenants]:
    """The daemon once every tenant's poller ran a cycle (``initech``'s refused)."""
    async with Fleet(3, seed=3, tasks=0) as fleet:
        acme, globex, initech = fleet.tenants
        fleet.set_task(acme, 212, name="Export", state=BatchTaskState.FAILED, result="Disk full")
        fleet.set_task(acme, 213, name="Import", state=BatchTaskState.STARTED, progress=40)
        fleet.set_task(globex, 212, name="Mailing", state=BatchTaskState.STARTED, progress=10)
        fleet.set_task(globex, 213, name="Cleanup", state=BatchTaskState.SUCCEEDED, progress=100)
        fleet.set_task(initech, 212, name="Archive", state=BatchTaskState.NEW)
        state = Path(tempfile.mkdtemp(prefix="batchmon-test-")) / "state.db"
        config = parse_config(
            {
                "state": {"path": str(state)},
                "http": {"listen": "127.0.0.1:0", "api_token": TOKEN},
                "poll": {"interval": "0.2s"},
                "tenants": [
                    tenant_config(fleet, acme, "acme"),
                    tenant_config(fleet, globex, "globex"),
                    tenant_config(fleet, initech, "initech", password="wrong"),
                ],
            },
            base_dir=Path.cwd(),
        )
        daemon = Daemon(config)
        async with anyio.create_task_group() as group:
            port = await group.start(daemon.run)
            with anyio.fail_after(10):
                while not all(  # noqa: ASYNC110 - waiting on the daemon's own clocks
                    r.poller is not None and r.poller.cycles > 0 for r in daemon.runtimes.values()
                ):
                    await anyio.sleep(0.02)
            yield Tenants(
                daemon,
                f"http://127.0.0.1:{port}",
                fleet,
                {"acme": acme, "globex": globex, "initech": initech},
            )
            group.cancel_scope.cancel()


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, body: object = None
) -> tuple[int, Any]:
    """The status and the JSON (or text) of one request, with the API token."""
    async with http.request(method, url, json=body, headers=AUTH) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


class Links(HTMLParser):
    """The ``href`` of every ``<a>``, and the ``data-tenant`` rows, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.rows: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Collect links and rows."""
        found = dict(attrs)
        if tag == "a" and found.get("href") is not None:
            self.hrefs.append(str(found["href"]))
        if tag == "tr" and "data-tenant" in found:
            self.rows.append(found)


def links(html: str) -> Links:
    """The page's links and tenant rows."""
    parser = Links()
    parser.feed(html)
    return parser


def tenant_of(url: str) -> list[str]:
    """The ``tenant`` parameters of ``url``."""
    return parse_qs(urlsplit(url).query).get("tenant", [])


class TestApi:
    """``/api/v1/…`` with ``?tenant=``."""

    async def test_tenants_line_by_line(self) -> None:
        """``/api/v1/tenants``: each tenant in configuration order with its API and counts."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            status, body = await fetch(http, "GET", tenants.base + "/api/v1/tenants")

            assert 200 == status
            lines = {line["name"]: line for line in body["tenants"]}
            assert ["acme", "globex", "initech"] == [line["name"] for line in body["tenants"]]
            assert ("up", {"Failed": 1, "Started": 1}) == (
                lines["acme"]["api"],
                lines["acme"]["counts"],
            )
            assert {"task.failed": 1} == lines["acme"]["firing"]
            assert ("up", {}) == (lines["globex"]["api"], lines["globex"]["firing"])
            assert ("down", "credentials rejected") == (
                lines["initech"]["api"],
                lines["initech"]["api_headline"],
            )

    async def test_tasks_of_one_tenant(self) -> None:
        """The same ids, each tenant's own tasks; no tenant: 400 naming them; unknown: 404."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            _, acme = await fetch(http, "GET", tenants.base + "/api/v1/tasks?tenant=acme")
            _, globex = await fetch(http, "GET", tenants.base + "/api/v1/tasks?tenant=globex")
            missing = await fetch(http, "GET", tenants.base + "/api/v1/tasks")
            unknown = await fetch(http, "GET", tenants.base + "/api/v1/tasks?tenant=umbrella")

            assert {212: "Failed", 213: "Started"} == {t["id"]: t["state"] for t in acme["tasks"]}
            assert {212: "Started", 213: "Succeeded"} == {
                t["id"]: t["state"] for t in globex["tasks"]
            }
            assert {"acme"} == {acme["tenant"], *(t["tenant"] for t in acme["tasks"])}
            assert 400 == missing[0]
            assert "one of acme, globex, initech" in missing[1]["error"]
            assert (404, {"error": "no tenant 'umbrella' is watched here"}) == unknown

    async def test_next_page_keeps_the_tenant(self) -> None:
        """``next`` of a tenant's listing stays in that tenant."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            _, first = await fetch(
                http, "GET", tenants.base + "/api/v1/tasks?tenant=globex&limit=1"
            )
            _, second = await fetch(http, "GET", tenants.base + first["next"])

            assert ["globex"] == tenant_of(first["next"])
            assert [212, 213] == [first["tasks"][0]["id"], second["tasks"][0]["id"]]
            assert "Succeeded" == second["tasks"][0]["state"]

    async def test_one_task_of_one_tenant(self) -> None:
        """``/api/v1/tasks/212?tenant=`` is that tenant's 212."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            _, acme = await fetch(http, "GET", tenants.base + "/api/v1/tasks/212?tenant=acme")
            _, globex = await fetch(http, "GET", tenants.base + "/api/v1/tasks/212?tenant=globex")
            missing, _ = await fetch(http, "GET", tenants.base + "/api/v1/tasks/212")

            assert ("Failed", "Disk full", "acme") == (
                acme["state"],
                acme["result"],
                acme["tenant"],
            )
            assert ("Started", "globex") == (globex["state"], globex["tenant"])
            assert any(e["type"] == "task.failed" for e in acme["events"])
            assert not any(e["type"] == "task.failed" for e in globex["events"])
            assert 400 == missing


class TestChanges:
    """Acknowledgements, stops, silences and watches reach the tenant named, and only it."""

    async def test_ack_of_one_tenants_task(self) -> None:
        """acme's failed 212 is taken; globex's running 212 cannot be and stays free."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            url = tenants.base + "/api/v1/tasks/212/ack?tenant="
            taken = await fetch(http, "POST", url + "acme", {"by": "ann"})
            refused, _ = await fetch(http, "POST", url + "globex", {"by": "ann"})
            _, acme = await fetch(http, "GET", tenants.base + "/api/v1/tasks/212?tenant=acme")
            _, globex = await fetch(http, "GET", tenants.base + "/api/v1/tasks/212?tenant=globex")
            unnamed, _ = await fetch(
                http, "POST", tenants.base + "/api/v1/tasks/212/ack", {"by": "x"}
            )

            assert 201 == taken[0], taken
            assert 409 == refused
            assert ("ann", None) == (acme["ack"]["by"], globex["ack"])
            assert 400 == unnamed

    async def test_silence_of_one_tenant(self) -> None:
        """A silence made for acme covers acme's 212, not globex's, and is listed by acme only."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            body = {"for": "1h", "reason": "upgrade", "ids": [212]}
            made = await fetch(http, "POST", tenants.base + "/api/v1/silences?tenant=acme", body)
            _, acme = await fetch(http, "GET", tenants.base + "/api/v1/silences?tenant=acme")
            _, globex = await fetch(http, "GET", tenants.base + "/api/v1/silences?tenant=globex")
            _, task = await fetch(http, "GET", tenants.base + "/api/v1/tasks/212?tenant=globex")
            sid = made[1]["id"]
            elsewhere, _ = await fetch(
                http, "DELETE", f"{tenants.base}/api/v1/silences/{sid}?tenant=globex"
            )
            ended, _ = await fetch(
                http, "DELETE", f"{tenants.base}/api/v1/silences/{sid}?tenant=acme"
            )

            assert 201 == made[0], made
            assert [sid] == [s["id"] for s in acme["silences"]]
            assert ([], None) == (globex["silences"], task["silenced"])
            assert (404, 200) == (elsewhere, ended)

    async def test_watch_of_one_tenant(self) -> None:
        """A task watched at run time in globex is polled there; acme has nothing to remove."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            tenants.fleet.set_task(tenants.contexts["globex"], 300, state=BatchTaskState.STARTED)
            tenants.fleet.set_task(tenants.contexts["acme"], 300, state=BatchTaskState.FAILED)
            added, _ = await fetch(http, "PUT", tenants.base + "/api/v1/watches/300?tenant=globex")
            with anyio.fail_after(10):
                while 300 not in tenants.daemon.runtimes["globex"].tracker.tasks:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            not_there, _ = await fetch(
                http, "DELETE", tenants.base + "/api/v1/watches/300?tenant=acme"
            )

            assert 201 == added
            assert 300 not in tenants.daemon.runtimes["acme"].tracker.tasks
            assert 404 == not_there

    async def test_stop_of_one_tenants_task(self) -> None:
        """Stopping acme's 213 asks acme's API and records it there, not in globex."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            status, answer = await fetch(
                http, "POST", tenants.base + "/api/v1/tasks/213/stop?tenant=acme", {"by": "ann"}
            )
            _, acme = await fetch(http, "GET", tenants.base + "/api/v1/tasks/213?tenant=acme")
            _, globex = await fetch(http, "GET", tenants.base + "/api/v1/tasks/213?tenant=globex")

            assert 200 == status, answer
            assert any(e["type"] == "task.stop_requested" for e in acme["events"])
            assert not any(e["type"] == "task.stop_requested" for e in globex["events"])


class TestPages:
    """The overview, a tenant's page and a task's page, and where their links lead."""

    async def test_overview_worst_first(self) -> None:
        """One row per tenant: the refused one first, then the one with a failure; each links
        to its own page, and no task is listed."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            status, html = await fetch(http, "GET", tenants.base + "/")
            page = links(html)

            assert 200 == status
            assert [("initech", "down"), ("acme", "up"), ("globex", "up")] == [
                (row["data-tenant"], row["data-api"]) for row in page.rows
            ]
            assert {"./?tenant=acme", "./?tenant=globex", "./?tenant=initech"} <= set(page.hrefs)
            assert "credentials rejected" in html
            assert "1 failed" in html
            assert "data-task-id" not in html

    async def test_tenant_page_links_keep_the_tenant(self) -> None:
        """Every link of acme's page but the overview and /metrics stays in acme, and leads to
        a page or answer of acme's."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            page_url = tenants.base + "/?tenant=acme&limit=1"
            status, html = await fetch(http, "GET", page_url)
            hrefs = links(html).hrefs

            assert 200 == status
            assert '<h1>batchmon · <span class="tenant">acme</span></h1>' in html
            assert "./" in hrefs  # all tenants
            others = [href for href in hrefs if href not in ("./", "metrics")]
            assert len(others) >= 6, hrefs  # states, the task, next rows, JSON twice, all tasks
            for href in others:
                target = urljoin(page_url, href)
                assert ["acme"] == tenant_of(target), href
                followed, body = await fetch(http, "GET", target)
                assert 200 == followed, (href, body)
                if isinstance(body, dict) and "tasks" in body:
                    assert {"acme"} == {t["tenant"] for t in body["tasks"]}
            (task_link,) = [h for h in hrefs if h.startswith("tasks/")]
            assert "tasks/213?tenant=acme" == task_link

    async def test_task_page_of_one_tenant(self) -> None:
        """acme's 212 page shows acme's failure; its back and JSON links stay in acme."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            url = tenants.base + "/tasks/212?tenant=acme"
            _, html = await fetch(http, "GET", url)
            hrefs = links(html).hrefs
            missing, _ = await fetch(http, "GET", tenants.base + "/tasks/212")

            assert "<title>batchmon · acme · #212 Export · Failed</title>" in html
            assert 'data-state="Failed"' in html
            assert "Disk full" in html
            assert ["../?tenant=acme", "../api/v1/tasks/212?tenant=acme"] == hrefs
            _, task = await fetch(http, "GET", urljoin(url, hrefs[1]))
            assert ("acme", "Failed") == (task["tenant"], task["state"])
            assert 400 == missing

    async def test_unknown_tenant_page(self) -> None:
        """A tenant not watched here: a 404 page saying so."""
        async with running_tenants() as tenants, aiohttp.ClientSession() as http:
            status, html = await fetch(http, "GET", tenants.base + "/?tenant=umbrella")

            assert 404 == status
            assert "no tenant &#39;umbrella&#39; is watched here" in html

    async def test_overview_in_a_browser(self, chromium: str, tmp_path: Path) -> None:
        """Chromium builds the overview's rows, worst first."""
        async with running_tenants() as tenants:
            dom = (await browse(chromium, tmp_path, "--dump-dom", tenants.base + "/")).decode()

            rows = links(dom).rows
            assert ["initech", "acme", "globex"] == [row["data-tenant"] for row in rows]


async def test_single_tenant_pages_name_no_tenant() -> None:
    """Without [[tenants]] the pages and the API read as before: no tenant in any link."""
    async with Simulator() as simulator:
        task = simulator.add_task(name="Export", state=BatchTaskState.FAILED)
        async with (
            running_daemon(simulator, [task.id]) as (_, base),
            aiohttp.ClientSession() as http,
        ):
            _, status = await fetch(http, "GET", base + "/")
            _, task_page = await fetch(http, "GET", f"{base}/tasks/{task.id}")
            _, listing = await fetch(http, "GET", base + "/api/v1/tasks")

    for html in (status, task_page):
        assert not [href for href in links(html).hrefs if "tenant" in href]
        assert "all tenants" not in html
        assert 'class="tenant"' not in html
    assert [task.id] == [t["id"] for t in listing["tasks"]]


async def test_metrics_of_several_tenants(promtool: str, tmp_path: Path) -> None:
    """/metrics with several tenants: promtool finds nothing wrong, and no series shows twice
    (task 212 of acme and of globex are two series)."""
    async with running_tenants() as tenants, aiohttp.ClientSession() as http:
        async with http.get(tenants.base + "/metrics") as response:
            text = await response.text()
        result = await anyio.run_process(
            [promtool, "check", "metrics"], input=text.encode(), check=False
        )

        assert 0 == result.returncode, (result.stdout + result.stderr).decode()
        series = Counter(
            line.rsplit(" ", 1)[0]
            for line in text.splitlines()
            if line and not line.startswith("#")
        )
        assert [] == [name for name, n in series.items() if n > 1]
        for tenant in ("acme", "globex"):
            assert f'batchmon_api_up{{tenant="{tenant}"}} 1.0' in text
        assert 'batchmon_task_state{state="Failed",task_id="212",tenant="acme"} 1.0' in text
        assert 'batchmon_task_state{state="Started",task_id="212",tenant="globex"} 1.0' in text
        assert 'batchmon_api_up{tenant="initech"} 0.0' in text
        assert "batchmon_tenants 3.0" in text
