"""P1, P2 and P6: what one poll cycle costs, against a bare aiohttp loop, and under scrapes.

The daemon runs in this process with its state restored (as after a restart), its schedule
pushed an hour out so that only the measured cycles poll, and the simulator in a process of
its own.  A measured cycle is ``Poller.poll_once()``: fetch, parse, detect, the request and
event counters the collector reads, and commits when something changed.  Ours and the
baseline alternate (ABAB) after one warm-up each, and the medians are compared.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from bench.scenarios.common import (
    CONCURRENCY,
    Row,
    bare_session,
    daemon_config,
    fmt_ms,
    median,
    poller_of,
    quiet_logging,
    running_daemon,
    seed_state,
    simulator_process,
)
from monitor.superoffice.models import BatchTaskInfo, BatchTaskState

__all__ = ["bulk_cycle", "per_id_polling", "scrape_under_polling"]

#: The schedule of the measured daemons: nothing falls due while figures are taken.
_IDLE_POLL = {"interval": "1h", "idle_interval": "1h"}
#: What Prometheus 2 asks for, compressed as it asks.
_SCRAPE_HEADERS = {
    "Accept": (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ),
    "Accept-Encoding": "gzip",
}


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def _alternate(
    ours: Callable[[], Awaitable[object]], baseline: Callable[[], Awaitable[object]], pairs: int
) -> tuple[list[float], list[float]]:
    """One warm-up each, then ``pairs`` rounds of ours then baseline; the durations."""
    await ours()
    await baseline()
    ours_times: list[float] = []
    baseline_times: list[float] = []
    for _ in range(pairs):
        ours_times.append(await _timed(ours))
        baseline_times.append(await _timed(baseline))
    return ours_times, baseline_times


async def _bare_gets(session: aiohttp.ClientSession, urls: Sequence[str]) -> None:
    """Fetch every URL, ``CONCURRENCY`` at a time, reading each body."""
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one(url: str) -> None:
        async with limiter, session.get(url) as response:
            await response.read()

    async with anyio.create_task_group() as group:
        for url in urls:
            group.start_soon(one, url)


def per_id_polling(quick: bool) -> Row:
    """P1: per-id GETs of every task through the whole pipeline vs a bare aiohttp loop."""
    count, pairs = (300, 3) if quick else (1000, 7)
    quiet_logging()
    with simulator_process(count) as sim, tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"
        # A bulk threshold no cycle reaches: every task is fetched by id.
        config = daemon_config(
            sim.url, state, sim.ids, poll={**_IDLE_POLL, "bulk_threshold": 10**9}
        )
        urls = [f"{sim.url}/v1/BatchTask/{task_id}" for task_id in sim.ids]

        async def measure() -> tuple[list[float], list[float]]:
            await seed_state(sim.url, state)
            async with running_daemon(config) as (daemon, _), bare_session() as session:
                poller = poller_of(daemon)

                async def ours() -> None:
                    await poller.poll_once()
                    if poller.last_cycle_requests != count:
                        msg = f"a cycle sent {poller.last_cycle_requests} requests, not {count}"
                        raise RuntimeError(msg)

                return await _alternate(ours, lambda: _bare_gets(session, urls), pairs)

        ours_times, bare_times = anyio.run(measure)
    ours_rate = count / median(ours_times)
    bare_rate = count / median(bare_times)
    ratio = ours_rate / bare_rate
    return Row(
        "P1",
        f"per-id polling, {count} tasks",
        f"{ours_rate:,.0f} req/s",
        f"{bare_rate:,.0f} req/s",
        f"{ratio:.2f}",
        "≥ 0.90",
        ratio >= 0.90,
        (
            (
                f"P1: Poller.poll_once() of the running daemon, {count} GETs at concurrency "
                f"{CONCURRENCY}, vs aiohttp GETs of the same URLs at the same concurrency; "
                f"medians of {pairs} ABAB pairs."
            ),
        ),
    )


async def _bare_list(session: aiohttp.ClientSession, url: str) -> None:
    """The bulk call the poller sends, and ``json.loads`` of its answer."""
    async with session.post(
        url + "/v1/Agents/Batch/GetBatchTaskInfosByAssociatesAndState",
        params={"$select": ",".join(BatchTaskInfo.POLL_FIELDS)},
        json={"AssociateIds": [], "State": BatchTaskState.STARTED.value},
    ) as response:
        body = await response.read()
    json.loads(body)


def bulk_cycle(quick: bool) -> Row:
    """P2: one bulk list cycle through the whole pipeline vs bare fetch + ``json.loads``."""
    count, pairs = (2000, 3) if quick else (10_000, 7)
    quiet_logging()
    with simulator_process(count) as sim, tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"
        config = daemon_config(sim.url, state, sim.ids, poll=_IDLE_POLL)

        async def measure() -> tuple[list[float], list[float]]:
            await seed_state(sim.url, state)
            async with running_daemon(config) as (daemon, _), bare_session() as session:
                poller = poller_of(daemon)

                async def ours() -> None:
                    await poller.poll_once()
                    if poller.last_cycle_requests != 1:
                        msg = f"a bulk cycle sent {poller.last_cycle_requests} requests, not 1"
                        raise RuntimeError(msg)

                return await _alternate(ours, lambda: _bare_list(session, sim.url), pairs)

        ours_times, bare_times = anyio.run(measure)
    ratio = median(ours_times) / median(bare_times)
    return Row(
        "P2",
        f"bulk list cycle, {count:,} tasks",
        fmt_ms(median(ours_times)),
        fmt_ms(median(bare_times)),
        f"{ratio:.2f}x",
        "≤ 1.5x",
        ratio <= 1.5,
        (
            (
                f"P2: Poller.poll_once() with every task Started and known (one $select-ed "
                f"list call, {count:,} items parsed and observed) vs the same POST and json.loads; "
                f"medians of {pairs} ABAB pairs."
            ),
        ),
    )


def scrape_under_polling(quick: bool) -> Row:
    """P6: /metrics with many tasks while polling runs, and what scrapes cost polling."""
    count, pairs = (2000, 3) if quick else (10_000, 25)
    quiet_logging()
    rng = random.Random(6)
    with simulator_process(count) as sim, tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"
        config = daemon_config(sim.url, state, sim.ids, poll=_IDLE_POLL)

        async def measure() -> tuple[list[float], list[float], list[float]]:
            await seed_state(sim.url, state)
            scraper_command = [
                sys.executable,
                "-m",
                "bench.scenarios.scraper",
                json.dumps(_SCRAPE_HEADERS),
            ]
            async with (
                running_daemon(config) as (daemon, base),
                await anyio.open_process(scraper_command) as scraper,
            ):
                assert scraper.stdin is not None
                assert scraper.stdout is not None
                answers = BufferedByteReceiveStream(scraper.stdout)
                poller = poller_of(daemon)
                scrapes: list[float] = []

                async def scrape(after: float) -> None:
                    await anyio.sleep(after)
                    assert scraper.stdin is not None
                    await scraper.stdin.send(f"{base}/metrics\n".encode())
                    scrapes.append(float(await answers.receive_until(b"\n", 100)))

                plain_cycle = await _timed(poller.poll_once)

                async def scraped() -> None:
                    # One scrape per cycle, at a random point of it, so every phase is hit.
                    async with anyio.create_task_group() as group:
                        group.start_soon(scrape, rng.uniform(0.0, plain_cycle))
                        await poller.poll_once()

                await scrape(0.0)
                scrapes.clear()
                scraped_times, plain_times = await _alternate(scraped, poller.poll_once, pairs)
                await scraper.stdin.aclose()
                return scraped_times, plain_times, scrapes[1:]

        scraped_times, plain_times, scrapes = anyio.run(measure)
    scrape_time = median(scrapes)
    change = median(scraped_times) / median(plain_times) - 1.0
    return Row(
        "P6",
        f"/metrics under polling, {count:,} tasks",
        f"scrape {fmt_ms(scrape_time)} (max {fmt_ms(max(scrapes))}); "
        f"cycle {fmt_ms(median(scraped_times))}",
        f"cycle {fmt_ms(median(plain_times))} unscraped",
        f"cycle {change:+.1%}",
        "scrape ≤ 250 ms; cycle ≤ +10 %",
        scrape_time <= 0.250 and change <= 0.10,
        (
            (
                f"P6: bulk cycles (as P2) with one gzip'd OpenMetrics scrape started at a random "
                f"point of each vs cycles without; the scraper is a process of its own (as "
                f"Prometheus is); scrape = request to last byte decompressed, median of {pairs} "
                f"(judged on the median), ABAB."
            ),
        ),
    )
