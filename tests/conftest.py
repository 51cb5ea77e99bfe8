"""Shared fixtures: real loopback servers, a manual clock, clean structlog."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from monitor.config import Config, parse_config
from monitor.delivery.postgres import PostgresStore
from monitor.delivery.sqlite import SqliteStore
from monitor.superoffice.models import BatchTaskState
from monitor.tracking.events import Event, EventType, TaskSummary, event_id
from monitor.types import DeliveryStore
from tests.pgcluster import Cluster, find_bindir, running_cluster


def _refuse_shared_node_ids(nodeids: list[str]) -> None:
    """Two tests under one node id: pytest-xdist runs each node id once, so all but one of them
    would be left out without a word (schemathesis's items for the operations of one test get
    that test's node id under pytest 9)."""
    seen = Counter(nodeids)
    twice = sorted(nodeid for nodeid, count in seen.items() if count > 1)
    if twice:
        raise pytest.UsageError("tests collected under one node id: " + ", ".join(twice))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse tests that share a node id (under pytest-xdist its controller does)."""
    if not hasattr(config, "workerinput"):
        _refuse_shared_node_ids([item.nodeid for item in items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """pytest-xdist's controller: refuse what a worker collected under one node id."""
    _refuse_shared_node_ids(ids)


@pytest.fixture(autouse=True)
def _no_systemd_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's systemd variables must not leak into any test (config paths, children)."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


class ManualClock:
    """A wall clock that moves only when told to."""

    def __init__(self, start: datetime = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(name="clock")
def _clock() -> ManualClock:
    return ManualClock()


def make_config(url: str, **sections: Any) -> Config:
    """A valid config for ``url`` (basic auth batchmon/batchmon), sections overridable.

    The state database goes to a fresh temporary directory unless ``state`` says otherwise
    (``state={"url": pg_url}``: PostgreSQL).
    """
    data: dict[str, Any] = {
        "state": {"path": str(Path(tempfile.mkdtemp(prefix="batchmon-test-")) / "state.db")},
        "superoffice": {
            "url": url,
            "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
            "max_requests_per_second": 1000.0,
            "timeout": "2s",
            # One scripted fault is one failed call; tests of retrying ask for retries.
            "retries": 0,
        },
        "http": {"listen": "127.0.0.1:0"},
    }
    for name, values in sections.items():
        # A given [state] replaces the temporary file: path and url exclude each other.
        data[name] = {**({} if name == "state" else data.get(name, {})), **values}
    return parse_config(data, base_dir=Path.cwd())


@dataclass
class Reply:
    """One scripted answer of :class:`ScriptedServer`."""

    status: int = 200
    body: bytes | str = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    """One request as :class:`ScriptedServer` received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class ScriptedServer:
    """A real HTTP server on loopback that answers from a script and records requests."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.seen: list[Seen] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("/api"))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
            )
        )
        reply = self.replies.pop(0) if self.replies else Reply(404, b"")
        if reply.delay:
            await anyio.sleep(reply.delay)
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        return web.Response(
            status=reply.status,
            body=body,
            headers={"Content-Type": "application/json; charset=utf-8", **reply.headers},
        )


@pytest.fixture(name="scripted")
async def _scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    await server.server.start_server()
    yield server
    await server.server.close()


@pytest.fixture(name="store")
async def _store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A fresh state database in the test's temporary directory."""
    store = await SqliteStore.open(tmp_path / "state.db")
    yield store
    await store.close()


@pytest.fixture(name="pg_cluster", scope="session")
def _pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for the session; skipped without Debian's binaries."""
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL's initdb and pg_ctl not installed (Debian package 'postgresql')"
        if os.environ.get("BATCHMON_REQUIRE_TOOLS"):
            pytest.fail(f"{message}, but BATCHMON_REQUIRE_TOOLS is set")
        pytest.skip(message)
    with running_cluster(bindir) as cluster:
        yield cluster


_databases = itertools.count(1)


@pytest.fixture(name="pg_url")
def _pg_url(pg_cluster: Cluster) -> str:
    """The URL (with its password) of a fresh, empty database for this test."""
    return pg_cluster.create_database(f"test_{next(_databases)}")


#: Opens a store on the same database each time it is called (a restart).
StoreOpener = Callable[[], Awaitable[DeliveryStore]]


@pytest.fixture(name="open_backend", params=["sqlite", "postgres"])
def _open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreOpener:
    """For tests of the store protocol: each backend in turn, on one database per test."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")

        async def postgres() -> DeliveryStore:
            return await PostgresStore.open(url)

        return postgres

    async def sqlite() -> DeliveryStore:
        return await SqliteStore.open(tmp_path / "state.db")

    return sqlite


@pytest.fixture(name="backend")
async def _backend(open_backend: StoreOpener) -> AsyncIterator[DeliveryStore]:
    """A fresh store of each backend, seen only through the store protocol."""
    store = await open_backend()
    yield store
    await store.close()


def make_task_event(
    kind: EventType = EventType.TASK_FAILED,
    *,
    time: datetime = datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
    eta: datetime | None = None,
    message: str | None = None,
    **task: Any,
) -> Event:
    """An event about task 212 ("Export", Failed at 40 %, started 12 minutes before ``time``).

    ``task`` overrides fields of the :class:`TaskSummary`.
    """
    fields: dict[str, Any] = {
        "id": 212,
        "name": "Export",
        "state": BatchTaskState.FAILED,
        "state_raw": "Failed",
        "progress": 40,
        "progress_description": "Exporting contacts",
        "description": "Nightly export of all contacts",
        "associate_id": 5,
        "context": None,
        "request": None,
        "response": None,
        "result": "Timeout while writing the file",
        "file_name": None,
        "last_started": time - timedelta(minutes=12),
        "created": time - timedelta(minutes=13),
        "start_count": 1,
    }
    fields.update(task)
    return Event(
        id=event_id("test", kind.value, time.isoformat(), *sorted(task)),
        type=kind,
        time=time,
        task=TaskSummary(**fields),
        eta=eta,
        message=message,
    )
