"""P10: 200 tenants x 50 tasks in one daemon process, against one process per tenant.

Two fleets (:class:`~monitor.simulator.Fleet`) of 200 tenants, 50 looping tasks each, built
alike (same seed, same start), run in the bench's process.  Each daemon is a process of its own
(``python -m bench.scenarios.tenants --child``: :class:`~monitor.daemon.Daemon` as ``batchmon
run`` builds it, from an empty state database), so its ``VmRSS`` is its own.  At the same time,
one daemon watches all 200 tenants of the first fleet (``[[tenants]]``), and a sample of
single-tenant daemons (the single ``[superoffice]`` form) one tenant each of the second, so a
sampled tenant shows the same story to both sides.  Every daemon finds its tasks by one
``[[watch.discover]]`` rule with its defaults, as a user would, and runs every ``[superoffice]``
and ``[poll]`` default.

After start-up and a warm-up, for a window: each tenant's poll cycles (how long a
``Poller.poll`` takes, and how many there are), the requests (and GETs by id) the simulator
counts per tenant, the process's CPU time; then the event loop's lag, and (after
``gc.collect()``) the process's RSS and open file descriptors.  The per-tenant side is
extrapolated: 200 processes = 200 x the sampled median.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web

from bench.scenarios.common import ROOT, Row, median, percentile, quiet_logging
from monitor.config import parse_config
from monitor.daemon import Daemon, freeze_startup_objects
from monitor.polling import Poller
from monitor.simulator import Fleet
from monitor.tracking.events import Event

__all__ = ["many_tenants"]

#: The systemd unit whose ``LimitNOFILE=`` and ``MemoryMax=`` the figures are set against.
_UNIT = ROOT / "deploy" / "batchmon.service"
#: ``[poll] interval``'s default: a cycle longer than that holds up the tenant's next one.
_INTERVAL = 5.0
#: A tenant's requests may be this much above a process of its own: what 8 sampled tenants
#: send in 90 s varies by about 15 % from run to run (story timing, poll jitter).
_REQUEST_SLACK = 1.25
#: The loop-lag probe's sleep, and how long it runs after the window (a share of it).
_TICK = 0.05
_LAG_SHARE = 0.2
_AUTH = {"type": "basic", "username": "batchmon", "password": "batchmon"}


@dataclass(frozen=True, slots=True)
class _Shape:
    tenants: int
    tasks: int
    sampled: int
    warm_up: float
    window: float


_FULL = _Shape(tenants=200, tasks=50, sampled=8, warm_up=30.0, window=90.0)
_QUICK = _Shape(tenants=20, tasks=10, sampled=2, warm_up=3.0, window=6.0)


# --- the daemon's process ---------------------------------------------------------------------


class _CycleTimes:
    """Wraps a poller's ``poll`` to time each cycle (the bench's probe, as P3's ``Cycles``)."""

    def __init__(self, poller: Poller) -> None:
        self.durations: list[float] = []
        self._poll = poller.poll
        poller.poll = self._timed  # type: ignore[method-assign]

    async def _timed(self, task_ids: Sequence[int]) -> list[Event]:
        began = time.perf_counter()
        try:
            return await self._poll(task_ids)
        finally:
            self.durations.append(time.perf_counter() - began)


def _status_kib() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process, in KiB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def _descriptors() -> tuple[int, int]:
    """This process's open file descriptors, and how many of them are sockets."""
    fds = os.listdir("/proc/self/fd")
    sockets = 0
    for fd in fds:
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # the listing's own descriptor, closed since
            continue
    return len(fds), sockets


async def _lag(lags: list[float]) -> None:
    """How late the event loop wakes a task that sleeps 50 ms, again and again."""
    while True:
        began = time.perf_counter()
        await anyio.sleep(_TICK)
        lags.append(time.perf_counter() - began - _TICK)


def _unit_limit(key: str) -> str:
    """A ``[Service]`` setting of the unit (``?`` if it has none)."""
    found = re.search(rf"^{key}=(\S+)$", _UNIT.read_text(), re.MULTILINE)
    return found.group(1) if found else "?"


def _say(**line: Any) -> None:
    print(json.dumps(line), flush=True)


async def _daemon(data: dict[str, Any], warm_up: float, window: float) -> None:
    config = parse_config(data, base_dir=ROOT)
    freeze_startup_objects()
    daemon = Daemon(config)
    began = time.perf_counter()
    async with anyio.create_task_group() as group:
        await group.start(daemon.run)
        started = time.perf_counter() - began
        runtimes = list(daemon.runtimes.values())
        pollers = [r.poller for r in runtimes if r.poller is not None]
        if len(pollers) != len(runtimes):
            msg = f"{len(runtimes) - len(pollers)} tenants have no poller once started"
            raise RuntimeError(msg)
        _say(phase="started", started=started)
        await anyio.sleep(warm_up)
        timers = [_CycleTimes(poller) for poller in pollers]
        _say(phase="window")
        cpu = time.process_time()
        await anyio.sleep(window)
        _say(phase="counted")
        cpu = time.process_time() - cpu
        durations = [list(timer.durations) for timer in timers]
        # The probe's own wake-ups cost CPU (x 200 processes): after the CPU's window.
        lags: list[float] = []
        with anyio.move_on_after(window * _LAG_SHARE):
            await _lag(lags)
        gc.collect()
        status = _status_kib()
        fds, sockets = _descriptors()
        _say(
            phase="done",
            rss_kib=status["VmRSS"],
            hwm_kib=status["VmHWM"],
            fds=fds,
            sockets=sockets,
            cpu=cpu,
            lags=lags,
            cycles=durations,
            tracked=[len(r.tracker.tasks) for r in runtimes],
        )
        group.cancel_scope.cancel()


# --- the bench's side ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """What one daemon process reported, and the requests its tenants were sent meanwhile."""

    started: float = 0.0
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    fds: int = 0
    sockets: int = 0
    #: CPU seconds (user and system) the process used during the window.
    cpu: float = 0.0
    #: How late its event loop woke a sleeping task, each time, just after the window.
    lags: list[float] | None = None
    cycles: list[list[float]] | None = None
    tracked: list[int] | None = None
    #: Requests per tenant during the window.
    requests: list[int] | None = None
    #: Of which GETs of one task by id (the rest: list calls).
    gets: list[int] | None = None


class _Gets:
    """Counts each fleet tenant's GETs by id (``GET /{tenant}/api/v1/BatchTask/{id}``)."""

    def __init__(self, fleet: Fleet) -> None:
        self.counts: Counter[str] = Counter()
        fleet.app.on_response_prepare.append(self._count)

    async def _count(self, request: web.Request, _: web.StreamResponse) -> None:
        if request.method == "GET" and "/api/v1/BatchTask/" in request.path:
            self.counts[request.path.split("/")[1].casefold()] += 1


def _config(fleet: Fleet, names: Sequence[str], state: Path) -> dict[str, Any]:
    """A daemon watching ``names`` of the fleet, each by one default discovery rule."""
    common: dict[str, Any] = {
        "state": {"path": str(state)},
        "http": {"listen": "127.0.0.1:0"},
        "sinks": [{"name": "log", "type": "log", "events": ["task.failed"]}],
    }

    def superoffice(name: str) -> dict[str, Any]:
        return {"environment_url": fleet.environment_url, "tenant": name, "auth": _AUTH}

    watch: dict[str, Any] = {"discover": [{}]}
    if len(names) == 1:
        return {**common, "superoffice": superoffice(names[0]), "watch": watch}
    tenants = [
        {"name": name.lower(), "superoffice": superoffice(name), "watch": watch} for name in names
    ]
    return {**common, "tenants": tenants}


async def _run_daemon(
    fleet: Fleet, gets: _Gets, names: Sequence[str], tmp: Path, label: str, shape: _Shape
) -> _Run:
    """Start a daemon process for ``names``, count its tenants' requests over the window."""
    config = tmp / f"{label}.json"
    config.write_text(json.dumps(_config(fleet, names, tmp / f"{label}.db")))
    command = [
        sys.executable,
        "-m",
        "bench.scenarios.tenants",
        "--child",
        str(config),
        str(shape.warm_up),
        str(shape.window),
    ]
    run = _Run()
    counters = [fleet.tenant(name) for name in names]
    before: list[int] = []
    gets_before: list[int] = []
    folded = [name.casefold() for name in names]
    async with await anyio.open_process(command, cwd=ROOT, stderr=None) as process:
        assert process.stdout is not None  # piped by open_process
        buffer = b""
        done = False
        while not done:
            chunk = await process.stdout.receive()
            buffer += chunk
            while b"\n" in buffer:
                raw, _, buffer = buffer.partition(b"\n")
                line = json.loads(raw)
                phase = line.pop("phase")
                if phase == "started":
                    run.started = line["started"]
                elif phase == "window":
                    before = [tenant.requests for tenant in counters]
                    gets_before = [gets.counts[name] for name in folded]
                elif phase == "counted":
                    run.requests = [t.requests - b for t, b in zip(counters, before, strict=True)]
                    run.gets = [
                        gets.counts[n] - b for n, b in zip(folded, gets_before, strict=True)
                    ]
                else:
                    run.rss_mb, run.hwm_mb = line["rss_kib"] / 1024, line["hwm_kib"] / 1024
                    run.fds, run.sockets, run.cpu = line["fds"], line["sockets"], line["cpu"]
                    run.cycles, run.tracked = line["cycles"], line["tracked"]
                    run.lags = line["lags"]
                    done = True
        await process.wait()
    return run


def _sample(names: Sequence[str], k: int) -> list[str]:
    """``k`` names spread evenly over ``names``."""
    step = len(names) / k
    return [names[int(i * step)] for i in range(k)]


async def _measure(shape: _Shape) -> tuple[_Run, list[_Run], list[str], list[str]]:
    """Both sides at once, each against its own fleet: the same tenants, stories and times."""
    start = datetime.now(UTC)
    shared = Fleet(shape.tenants, seed=10, tasks=shape.tasks, loop=True, start=start)
    apart = Fleet(shape.tenants, seed=10, tasks=shape.tasks, loop=True, start=start)
    shared_gets, apart_gets = _Gets(shared), _Gets(apart)
    async with shared, apart:
        names = list(shared.tenants)
        sampled = _sample(names, shape.sampled)
        with tempfile.TemporaryDirectory() as directory:
            tmp = Path(directory)
            runs: dict[int, _Run] = {}

            async def one(index: int, fleet: Fleet, gets: _Gets, chosen: list[str]) -> None:
                label = f"daemon{index}"
                runs[index] = await _run_daemon(fleet, gets, chosen, tmp, label, shape)

            async with anyio.create_task_group() as group:
                group.start_soon(one, -1, shared, shared_gets, names)
                for index, name in enumerate(sampled):
                    group.start_soon(one, index, apart, apart_gets, [name])
    return runs[-1], [runs[index] for index in range(len(sampled))], names, sampled


def _per_minute(requests: Sequence[int], window: float) -> float:
    """Mean requests per tenant per minute."""
    return sum(requests) / len(requests) / window * 60


def many_tenants(quick: bool) -> Row:
    """P10: one process for every tenant against one process per tenant (sampled)."""
    shape = _QUICK if quick else _FULL
    quiet_logging()
    together, alone, names, sampled = anyio.run(_measure, shape)
    if together.requests is None or together.cycles is None or together.tracked is None:
        msg = "the multi-tenant daemon reported nothing"
        raise RuntimeError(msg)
    n = shape.tenants
    sum_rss = n * median([run.rss_mb for run in alone])
    rss_ratio = together.rss_mb / sum_rss
    # Requests: the sampled tenants in the one process against the same tenants alone.
    paired = [together.requests[names.index(name)] for name in sampled]
    paired_gets = _per_minute(
        [(together.gets or [])[names.index(n)] for n in sampled], shape.window
    )
    alone_gets = _per_minute([g for run in alone for g in run.gets or []], shape.window)
    alone_requests = [r for run in alone for r in run.requests or []]
    req_sampled = _per_minute(paired, shape.window)
    req_alone = _per_minute(alone_requests, shape.window)
    req_all = _per_minute(together.requests, shape.window)
    req_ratio = req_sampled / req_alone
    together_cycles = [d for tenant in together.cycles for d in tenant]
    alone_cycles = [d for run in alone for tenant in run.cycles or [] for d in tenant]
    p95_together = percentile(together_cycles, 0.95)
    p95_alone = percentile(alone_cycles, 0.95)
    cycles_together = len(together_cycles) / n / shape.window * 60
    cycles_alone = len(alone_cycles) / len(alone) / shape.window * 60
    tracked = together.tracked
    nofile, memory_max = _unit_limit("LimitNOFILE"), _unit_limit("MemoryMax")
    share = f"{together.fds / int(nofile):.0%}" if nofile.isdigit() else "?"
    lag_together = together.lags or [0.0]
    lag_alone = [lag for run in alone for lag in run.lags or []] or [0.0]
    cpu_together = together.cpu / shape.window
    cpu_alone = n * median([run.cpu for run in alone]) / shape.window
    return Row(
        "P10",
        f"{n} tenants x {shape.tasks} tasks in one process",
        (
            f"RSS {together.rss_mb:.0f} MB; {req_all:.1f} req/tenant/min; "
            f"cycle p50 {median(together_cycles) * 1000:.0f} ms (p95 {p95_together * 1000:.0f})"
        ),
        (
            f"{n} processes ({len(alone)} sampled): RSS {sum_rss:,.0f} MB; "
            f"{req_alone:.1f} req/tenant/min; cycle p50 {median(alone_cycles) * 1000:.0f} ms "
            f"(p95 {p95_alone * 1000:.0f})"
        ),
        f"RSS {rss_ratio:.3f}x; req {req_ratio:.2f}x; cycle p95 {p95_together / p95_alone:.1f}x",
        f"RSS < 1x; req ≤ {_REQUEST_SLACK:g}x; cycle p95 < {_INTERVAL:g} s",
        rss_ratio < 1 and req_ratio <= _REQUEST_SLACK and p95_together < _INTERVAL,
        (
            (
                f"P10: two Fleets of {n} tenants x {shape.tasks} looping tasks (same seed, same "
                f"start) in the bench's process; each daemon a process of its own from an empty "
                f"state DB, every [superoffice] and [poll] default, tasks found by one default "
                f"[[watch.discover]] rule.  At the same time: one process for all {n} tenants "
                f"of one fleet, and {len(alone)} single-tenant processes for tenants spread over "
                f"the other; the per-tenant side's RSS is {n} x the sampled median "
                f"({min(r.rss_mb for r in alone):.1f}-{max(r.rss_mb for r in alone):.1f} MB "
                f"each).  After {shape.warm_up:g} s of warm-up, a {shape.window:g} s window: "
                f"requests counted by the simulator per tenant (req ratio: the {len(alone)} "
                f"sampled tenants in the one process, {req_sampled:.1f}/min of which "
                f"{paired_gets:.1f} GETs by id, against the same tenants alone, "
                f"{alone_gets:.1f} GETs by id); cycle = one Poller.poll, timed in the daemon's process; "
                f"{cycles_together:.1f} cycles/tenant/min together, {cycles_alone:.1f} alone.  "
                f"CPU {cpu_together:.0%} of a core together, {cpu_alone:.0%} for {n} processes "
                f"({n} x the sampled median); event-loop lag (a 50 ms sleep woken late, for "
                f"{shape.window * _LAG_SHARE:g} s after the window) p50 "
                f"{median(lag_together) * 1000:.1f} ms, p99 {percentile(lag_together, 0.99) * 1000:.0f} "
                f"ms together, p50 {median(lag_alone) * 1000:.1f} ms, p99 "
                f"{percentile(lag_alone, 0.99) * 1000:.0f} ms alone.  "
                f"RSS after gc.collect() at the end (peak {together.hwm_mb:.0f} MB; "
                f"MemoryMax={memory_max} in deploy/batchmon.service)."
            ),
            (
                f"P10: the one process started every tenant's pipeline (batchmon_started) "
                f"{together.started:.2f} s after Daemon.run (one tenant: "
                f"{median([r.started for r in alone]):.2f} s); {together.fds} open files of "
                f"which {together.sockets} sockets ({share} of the unit's "
                f"LimitNOFILE={nofile}; a single-tenant process: "
                f"{median([r.fds for r in alone]):.0f}); tasks tracked per tenant "
                f"{min(tracked)}-{max(tracked)} (median {median(tracked):.0f})."
            ),
        ),
    )


def main() -> None:
    """``--child CONFIG WARM_UP WINDOW``: run one daemon process (what the bench starts)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "WARM_UP", "WINDOW"), required=True)
    config, warm_up, window = parser.parse_args().child
    quiet_logging()
    anyio.run(_daemon, json.loads(Path(config).read_text()), float(warm_up), float(window))


if __name__ == "__main__":
    main()
