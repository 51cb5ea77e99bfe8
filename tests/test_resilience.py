"""The client's resilience over loopback: retries, backoff, Retry-After, limits and broken bodies."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from monitor.config import parse_config
from monitor.simulator import Simulator
from monitor.superoffice.client import SuperOfficeClient, open_client
from monitor.superoffice.errors import (
    ApiError,
    ApiTimeout,
    MalformedResponse,
    NetworkError,
    RateLimited,
    RequestRejected,
    ServerError,
)
from monitor.superoffice.models import BatchTaskState
from tests.conftest import ManualClock, Reply, ScriptedServer

TASK = '{"Id": 5, "Name": "Export", "State": "Started", "ProgressPercent": 30}'


class Sleeps:
    """An injectable sleep: records each delay, and what the server had seen, then moves time."""

    def __init__(self, clock: ManualClock, sim: Simulator | None = None) -> None:
        self.clock = clock
        self.sim = sim
        self.delays: list[float] = []
        #: ``len(sim.requests)`` when each sleep began.
        self.seen: list[int] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.seen.append(len(self.sim.requests) if self.sim else 0)
        self.clock.advance(seconds)
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def client_for(
    url: str,
    clock: ManualClock,
    sleep: Sleeps,
    *,
    rng: random.Random | None = None,
    **superoffice: Any,
) -> AsyncIterator[SuperOfficeClient]:
    """A basic-auth client for ``url`` on the manual clock and the recording sleep."""
    data = {
        "superoffice": {
            "url": url,
            "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
            "max_requests_per_second": 1000,
            "backoff_base": "0.1s",
            **superoffice,
        }
    }
    config = parse_config(data, base_dir=Path("/nonexistent"))
    async with open_client(config.superoffice, clock=clock, sleep=sleep, rng=rng) as client:
        yield client


@pytest.fixture(name="sim")
async def _sim(clock: ManualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as sim:
        yield sim


@pytest.fixture(name="sleeps")
def _sleeps(clock: ManualClock, sim: Simulator) -> Sleeps:
    return Sleeps(clock, sim)


class TestRetries:
    """5xx, timeouts and connection errors are retried within the budget."""

    async def test_burst_within_the_budget_succeeds(
        self, sim: Simulator, clock: ManualClock, sleeps: Sleeps
    ) -> None:
        """Two 503s then an answer: the call succeeds; every attempt is counted and timed."""
        task = sim.add_task()
        sim.fail_next(2, 503)
        async with client_for(sim.url, clock, sleeps, retries=2) as client:
            found = await client.get_task(task.id)
            stats = client.stats

        assert task.id == found.id
        assert (3, {"server_error": 2}) == (stats.requests, dict(stats.failures))
        assert 3 == stats.durations.count
        assert ("+Inf", 3.0) == stats.durations.cumulative()[-1]
        assert 2 == len(sleeps.delays)

    async def test_burst_beyond_the_budget_is_server_error(
        self, sim: Simulator, clock: ManualClock, sleeps: Sleeps
    ) -> None:
        """Three 502s with two retries: ServerError after three requests."""
        sim.fail_next(3, 502)
        async with client_for(sim.url, clock, sleeps, retries=2) as client:
            with pytest.raises(ServerError):
                await client.get_task(sim.add_task().id)

        assert 3 == len(sim.requests)

    @pytest.mark.parametrize(
        ("base", "cap", "bounds"),
        [(0.5, 30.0, [0.5, 1.0, 2.0]), (1.0, 1.5, [1.0, 1.5, 1.5])],
        ids=["doubling", "capped"],
    )
    async def test_backoff_is_full_jitter(
        self,
        sim: Simulator,
        clock: ManualClock,
        sleeps: Sleeps,
        base: float,
        cap: float,
        bounds: list[float],
    ) -> None:
        """Retry n waits uniform(0, min(cap, base * 2**n)), drawn from the given RNG."""
        sim.fail_next(4, 500)
        async with client_for(
            sim.url,
            clock,
            sleeps,
            rng=random.Random(7),
            retries=3,
            backoff_base=base,
            backoff_cap=cap,
        ) as client:
            with pytest.raises(ServerError):
                await client.get_task(1)

        twin = random.Random(7)
        assert [twin.uniform(0, bound) for bound in bounds] == sleeps.delays
        assert all(0 <= d <= bound for d, bound in zip(sleeps.delays, bounds, strict=True))

    async def test_timeout_is_retried(
        self, sim: Simulator, clock: ManualClock, sleeps: Sleeps
    ) -> None:
        """A request that hangs times out; the retry gets the answer."""
        task = sim.add_task()
        sim.hang_next()
        async with client_for(sim.url, clock, sleeps, retries=1, timeout="0.3s") as client:
            found = await client.get_task(task.id)
            failures = dict(client.stats.failures)

        assert task.id == found.id
        assert {"timeout": 1} == failures

    async def test_connection_errors_are_retried(self, clock: ManualClock) -> None:
        """A closed port is tried retries + 1 times, then NetworkError."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        sleeps = Sleeps(clock)
        async with client_for(f"http://127.0.0.1:{port}/api", clock, sleeps, retries=2) as client:
            with pytest.raises(NetworkError):
                await client.get_task(1)
            stats = client.stats

        assert (3, {"network": 3}) == (stats.requests, dict(stats.failures))
        assert 2 == len(sleeps.delays)

    @pytest.mark.parametrize(
        ("fault", "error"),
        [
            ({"status": 400}, RequestRejected),
            ({"status": 200, "body": "<html>Login</html>"}, MalformedResponse),
        ],
        ids=["400", "html"],
    )
    async def test_what_is_not_retried(
        self,
        sim: Simulator,
        clock: ManualClock,
        sleeps: Sleeps,
        fault: dict[str, Any],
        error: type[ApiError],
    ) -> None:
        """A rejected request or an unusable answer is not sent again."""
        sim.fail_next(1, **fault)
        async with client_for(sim.url, clock, sleeps, retries=2) as client:
            with pytest.raises(error):
                await client.get_task(1)

        assert (1, []) == (len(sim.requests), sleeps.delays)


class TestRetryAfter:
    """A server's Retry-After is honoured, and a 429 holds back every request."""

    @pytest.mark.parametrize(
        ("status", "header", "expected"),
        [(429, "3", 3.0), (503, "2", 2.0), (429, None, 5.0)],
        ids=["429-seconds", "503-seconds", "429-http-date"],
    )
    async def test_waited_out(
        self,
        sim: Simulator,
        clock: ManualClock,
        sleeps: Sleeps,
        status: int,
        header: str | None,
        expected: float,
    ) -> None:
        """The wait is Retry-After (seconds, or an HTTP-date: None means 5 s from now)."""
        if header is None:
            header = format_datetime(clock.now + timedelta(seconds=5), usegmt=True)
        task = sim.add_task()
        sim.fail_next(1, status, headers={"Retry-After": header})
        async with client_for(sim.url, clock, sleeps, retries=2) as client:
            found = await client.get_task(task.id)

        assert task.id == found.id
        assert [expected] == sleeps.delays

    async def test_longer_backoff_wins(
        self, sim: Simulator, clock: ManualClock, sleeps: Sleeps
    ) -> None:
        """The wait is max(Retry-After, backoff)."""
        sim.fail_next(1, 503, headers={"Retry-After": "1"})
        async with client_for(
            sim.url, clock, sleeps, rng=random.Random(3), retries=1, backoff_base=8
        ) as client:
            await client.get_task(sim.add_task().id)

        assert [max(1.0, random.Random(3).uniform(0, 8))] == sleeps.delays

    async def test_429_pauses_the_other_requests(
        self, sim: Simulator, clock: ManualClock, sleeps: Sleeps
    ) -> None:
        """After a 429 another call waits the Retry-After out before it is sent."""
        first, second = sim.add_task(), sim.add_task()
        sim.fail_next(1, 429, headers={"Retry-After": "3"})
        async with client_for(sim.url, clock, sleeps, retries=0) as client:
            with pytest.raises(RateLimited):
                await client.get_task(first.id)
            found = await client.get_task(second.id)

        assert second.id == found.id
        assert ([3.0], [1]) == (sleeps.delays, sleeps.seen), "waited before sending"
        assert [
            f"GET /api/v1/BatchTask/{first.id}",
            f"GET /api/v1/BatchTask/{second.id}",
        ] == sim.requests

    async def test_too_long_a_pause_fails_at_once(
        self, sim: Simulator, clock: ManualClock, sleeps: Sleeps
    ) -> None:
        """A Retry-After past max_retry_after is not sat out: calls fail unsent until it passed."""
        task = sim.add_task()
        sim.fail_next(1, 429, headers={"Retry-After": "120"})
        async with client_for(sim.url, clock, sleeps, max_retry_after="10s") as client:
            with pytest.raises(RateLimited):
                await client.get_task(task.id)
            with pytest.raises(RateLimited, match="not sent") as unsent:
                await client.get_task(task.id)
            sent_while_paused = len(sim.requests)
            clock.advance(121)
            await client.get_task(task.id)

        assert 60 < (unsent.value.retry_after or 0) <= 120
        assert ([], 1) == (sleeps.delays, sent_while_paused)


class TestLimits:
    """The client keeps the tenant's concurrency and rate limits itself."""

    @pytest.mark.parametrize(
        ("limits", "delay", "at_least"),
        [({"max_concurrency": 2}, 0.2, 0.38), ({"max_requests_per_second": 10}, 0.0, 0.28)],
        ids=["concurrency", "rate"],
    )
    async def test_limits_hold(
        self,
        scripted: ScriptedServer,
        clock: ManualClock,
        limits: dict[str, float],
        delay: float,
        at_least: float,
    ) -> None:
        """Four calls at once take two answer-times at concurrency 2, three intervals at 10/s."""
        scripted.replies.extend([Reply(body=TASK, delay=delay)] * 4)
        async with client_for(scripted.url, clock, Sleeps(clock), rng=None, **limits) as client:
            started = anyio.current_time()
            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(client.get_task, 5)
            elapsed = anyio.current_time() - started

        assert at_least <= elapsed


class TestBodies:
    """Answers that never come, stop halfway or are not JSON."""

    async def test_hang_hits_the_timeout(
        self, sim: Simulator, clock: ManualClock, sleeps: Sleeps
    ) -> None:
        """A request the server never answers is ApiTimeout after the configured timeout."""
        sim.hang_next()
        async with client_for(sim.url, clock, sleeps, retries=0, timeout="0.3s") as client:
            with pytest.raises(ApiTimeout):
                await client.get_task(sim.add_task().id)

    @pytest.mark.parametrize("kind", ["truncated", "not-json", "empty"])
    async def test_broken_bodies_are_malformed(
        self, sim: Simulator, clock: ManualClock, sleeps: Sleeps, kind: str
    ) -> None:
        """Half a body, HTML or nothing at all is MalformedResponse."""
        match kind:
            case "truncated":
                sim.truncate_next()
            case "not-json":
                sim.fail_next(1, 200, body="<html><body>Service Unavailable</body></html>")
            case _:
                sim.fail_next(1, 200, body=b"")
        async with client_for(sim.url, clock, sleeps, retries=2) as client:
            with pytest.raises(MalformedResponse):
                await client.get_task(sim.add_task().id)

    async def test_a_long_list_arrives_whole(
        self, sim: Simulator, clock: ManualClock, sleeps: Sleeps
    ) -> None:
        """A list answer many read chunks long is read to its end."""
        for _ in range(500):
            sim.add_task(state=BatchTaskState.STARTED, description="x" * 500)
        async with client_for(sim.url, clock, sleeps) as client:
            tasks, rejected = (await client.list_tasks_by_associates([])).tasks()

        assert (500, []) == (len(tasks), rejected)
