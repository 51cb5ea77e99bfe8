"""The end-to-end suite's fixtures: real batchmon processes and real peers on loopback.

Tests here are synchronous.  batchmon runs as ``python -m monitor run --config <file>``
(the real CLI, a real TOML file, JSON log lines on disk); Prometheus and Alertmanager are
the Debian binaries; the simulator and the receivers (fake Slack, webhook endpoints, a
hostile API) run on an asyncio loop in a background thread (:class:`Peers`), so they keep
answering while a test sleeps, kills a process or reads /proc.  Everything that changes
the state of a server on that loop goes through :meth:`Peers.call`, so it happens on the
loop's thread between two requests.

The soak test (``@pytest.mark.soak``) is deselected unless ``BATCHMON_SOAK=1``; its short
variant runs by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from monitor.config.echo import toml_text
from monitor.simulator import Simulator

ROOT = Path(__file__).parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CORPUS = ROOT / "tests" / "corpus"
BATCHMON = [sys.executable, "-m", "monitor"]
#: Standard Webhooks secrets are ``whsec_`` and base64 of 24 to 64 bytes.
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test value, not a credential

_T = TypeVar("_T")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the soak out of ordinary runs (``BATCHMON_SOAK=1`` brings it back)."""
    if os.environ.get("BATCHMON_SOAK"):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


# --- tools ----------------------------------------------------------------------------------


def require_tool(package: str, *names: str) -> str:
    """The path of the first of ``names`` on the PATH; fail in CI, skip elsewhere."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    message = f"{names[0]} not installed (Debian package '{package}')"
    if os.environ.get("BATCHMON_REQUIRE_TOOLS"):
        pytest.fail(f"{message}, but BATCHMON_REQUIRE_TOOLS is set")
    pytest.skip(message)


def free_port() -> int:
    """A loopback port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until(
    condition: Callable[[], _T | None], timeout: float, what: str, *, every: float = 0.1
) -> _T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds.

    Connection errors count as "not yet": a server that is still starting is not a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (OSError, urllib.error.URLError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(every)


# --- HTTP from the test's side ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer as the test received it."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One request; HTTP error statuses are answers, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Reply(answer.status, dict(answer.headers), answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, dict(error.headers), error.read())


# --- /proc ------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    msg = f"no VmRSS for process {pid}"
    raise ValueError(msg)


def open_fds(pid: int) -> int:
    """How many file descriptors a process holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(samples: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (time, value) samples, in value per time unit."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread


def base_config(api_url: str, state: Path, **sections: object) -> dict[str, Any]:
    """A configuration for ``api_url`` (basic batchmon/batchmon), short timeouts, JSON logs.

    Each keyword replaces keys of that section (``poll={"interval": "1s"}``); a list
    (``sinks=[...]``) replaces the whole entry.
    """
    data: dict[str, Any] = {
        "superoffice": {
            "url": api_url,
            "max_requests_per_second": 500,
            "timeout": "2s",
            "connect_timeout": "1s",
            "retries": 0,
            "auth": {"type": "basic", "username": "batchmon", "password": "batchmon"},
        },
        "poll": {"interval": "0.3s", "idle_interval": "0.3s", "jitter": 0.1},
        "http": {"listen": "127.0.0.1:0"},
        "state": {"path": str(state)},
        "log": {"format": "json", "level": "info"},
    }
    for name, values in sections.items():
        if isinstance(values, Mapping):
            data[name] = {**data.get(name, {}), **values}
        else:
            data[name] = values
    return data


# --- peers on a background loop -----------------------------------------------------------------


class Peers:
    """An asyncio loop in a thread of its own, hosting loopback servers for synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="e2e-peers")
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 60.0) -> _T:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Call a plain function on the loop's thread (between two requests) and return its result."""

        async def call() -> _T:
            return function(*args, **kwargs)

        return self.run(call())

    def simulator(self, simulator: Simulator) -> Simulator:
        """Start a simulator on the loop; it stops with the peers."""
        self.run(simulator.start())
        self._closers.append(simulator.stop)
        return simulator

    def receiver(self, receiver: Receiver) -> Receiver:
        """Start a receiver on the loop; it stops with the peers."""
        self.run(receiver.start())
        self._closers.append(receiver.stop)
        return receiver

    def background(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` on the loop until the peers close (a driver of simulated tasks)."""

        async def start() -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(work())

        task = self.run(start())

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self._closers.append(cancel)

    @staticmethod
    async def _cancel_the_rest() -> None:
        """Cancel what is still running (a handler trickling a slow answer, say)."""
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def close(self) -> None:
        """Stop every server and the loop."""
        try:
            for closer in reversed(self._closers):
                self.run(closer(), timeout=30)
        finally:
            self.run(self._cancel_the_rest())
            self.run(self.loop.shutdown_asyncgens())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            self.loop.close()


@pytest.fixture(name="peers")
def _peers() -> Iterator[Peers]:
    peers = Peers()
    try:
        yield peers
    finally:
        peers.close()


@dataclass(frozen=True, slots=True)
class Hit:
    """One request a :class:`Receiver` got, and the status it answered."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A loopback HTTP endpoint that records every request and answers as told.

    ``fail_ratio`` of the requests (seeded) get ``fail_status``.  ``echo`` puts what the
    request carried into every answer, as proxies, frameworks and careless servers do in
    their error pages: ``"path"`` the path and query, ``"everything"`` also the headers and
    the body, as a JSON error object that SuperOffice, OAuth and the system user login would
    each read as an error message.
    """

    status: int = 200
    fail_ratio: float = 0.0
    fail_status: int = 503
    seed: int = 0
    #: Which requests under a path prefix get ``fail_status`` (1 is the first one there).
    fail_at: dict[str, set[int]] = field(default_factory=dict)
    echo: str = ""
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    base: str = ""
    _runner: web.AppRunner | None = None
    _rng: random.Random = field(default_factory=random.Random)
    _counts: dict[str, int] = field(default_factory=dict)

    async def start(self) -> None:
        self._rng.seed(self.seed)
        app = web.Application(client_max_size=16 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.base = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str = "/") -> str:
        return self.base + path

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.fail_status if self._rng.random() < self.fail_ratio else self.status
        for prefix, numbers in self.fail_at.items():
            if request.path.startswith(prefix):
                self._counts[prefix] = self._counts.get(prefix, 0) + 1
                if self._counts[prefix] in numbers:
                    status = self.fail_status
        if self.delay:
            await asyncio.sleep(self._rng.uniform(0, self.delay))
        self.hits.append(
            Hit(
                request.method,
                request.path_qs,
                {k.lower(): v for k, v in request.headers.items()},
                body,
                status,
                time.monotonic(),
            )
        )
        text = "ok"
        if self.echo == "path":
            text = f"no route for {request.method} {request.path_qs}"
        elif self.echo == "everything":
            said = f"{body!r} {dict(request.headers)} {request.method} {request.path_qs}"
            text = json.dumps(
                {
                    "Error": True,
                    "ErrorType": "Echo",
                    "ErrorMessage": said,
                    "error": "invalid_request",
                    "error_description": said,
                    "IsSuccessful": False,
                }
            )
        return web.Response(status=status, text=text, content_type="application/json")

    def taken(self, prefix: str = "/") -> list[Hit]:
        """The requests under ``prefix`` that were answered 2xx (a snapshot)."""
        return [h for h in list(self.hits) if h.path.startswith(prefix) and h.status < 300]


# --- batchmon as a process --------------------------------------------------------------------


class Batchmon:
    """``python -m monitor run --config <file>``: a real process, its JSON log lines on disk.

    Each :meth:`start` is a new run with its own stdout and stderr files; :meth:`lines`
    reads the log lines of every run so far, or of the current one.
    """

    def __init__(
        self,
        config: Path,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        *,
        open_files: int | None = None,
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        #: RLIMIT_NOFILE of the process (as a unit's LimitNOFILE=); ``None``: this one's.
        self.open_files = open_files
        self.process: subprocess.Popen[bytes] | None = None
        self.runs: list[tuple[Path, Path]] = []

    def start(self, *args: str) -> Batchmon:
        """Start a new run; ``args`` replace ``run --config <file>``."""
        self.close()
        number = len(self.runs)
        out, err = self.workdir / f"run{number}.out", self.workdir / f"run{number}.err"
        self.runs.append((out, err))
        command = [*BATCHMON, *(args or ("run", "--config", str(self.config)))]
        if self.open_files is not None:
            # prlimit (util-linux) sets the limit and execs: the pid is batchmon's.
            prlimit = require_tool("util-linux", "prlimit")
            command = [prlimit, f"--nofile={self.open_files}:{self.open_files}", "--", *command]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.process = subprocess.Popen(
                command,
                stdout=stdout,
                stderr=stderr,
                cwd=self.workdir,
                env=self.env,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stdout(self, run: int = -1) -> str:
        return self.runs[run][0].read_text(errors="replace")

    def stderr(self, run: int = -1) -> str:
        return self.runs[run][1].read_text(errors="replace")

    def lines(self, *, every_run: bool = False) -> list[dict[str, Any]]:
        """The JSON log lines written so far (a line cut off by a kill is skipped)."""
        runs = self.runs if every_run else self.runs[-1:]
        parsed = []
        for out, _ in runs:
            for line in out.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        parsed.append(json.loads(line))
        return parsed

    def events(self, name: str, *, every_run: bool = False) -> list[dict[str, Any]]:
        """The log lines whose ``event`` is ``name``."""
        return [line for line in self.lines(every_run=every_run) if line.get("event") == name]

    def wait_for(
        self, condition: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """The first log line of this run matching ``condition``; fails if the process dies."""

        def found() -> dict[str, Any] | None:
            match = next((line for line in self.lines() if condition(line)), None)
            if match is None and not self.alive:
                pytest.fail(
                    f"batchmon exited ({self.returncode}) before {what}:\n"
                    f"{self.stdout()[-3000:]}\n{self.stderr()[-3000:]}"
                )
            return match

        return wait_until(found, timeout, what)

    def wait_started(self, timeout: float = 30.0) -> str:
        """The base URL once the run logged ``batchmon_started``."""
        line = self.wait_for(
            lambda line: line.get("event") == "batchmon_started", timeout, "batchmon_started"
        )
        return str(line["url"]).rstrip("/")

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """``kill -9``, and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, and the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        """Make sure no process is left behind."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(30)


@pytest.fixture(name="launch")
def _launch(tmp_path: Path) -> Iterator[Callable[..., Batchmon]]:
    """Write a configuration and start batchmon on it; every process is killed afterwards."""
    started: list[Batchmon] = []

    def launch(
        config: Mapping[str, Any] | Path,
        *,
        name: str = "batchmon",
        env: Mapping[str, str] | None = None,
        start: bool = True,
        open_files: int | None = None,
    ) -> Batchmon:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        if isinstance(config, Path):
            path = config
        else:
            path = workdir / "batchmon.toml"
            path.write_text(toml_text(config))
        process = Batchmon(path, workdir, env, open_files=open_files)
        started.append(process)
        return process.start() if start else process

    try:
        yield launch
    finally:
        for process in started:
            process.close()


# --- Prometheus and Alertmanager --------------------------------------------------------------


class Peer:
    """A peer binary as a process, with its output in a file."""

    def __init__(self, command: Sequence[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)

    def ready(self, url: str, timeout: float = 30.0) -> None:
        def up() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"{self.log.stem} exited: {self.log.read_text()[-3000:]}")
            return http(url, timeout=2).status == 200

        wait_until(up, timeout, f"{self.log.stem} ready")


class Prometheus(Peer):
    """A Prometheus server and its HTTP API."""

    def __init__(self, binary: str, workdir: Path, config: Mapping[str, Any] | None = None) -> None:
        """Prometheus on ``workdir/prometheus.yml``, written from ``config`` if given."""
        workdir.mkdir(exist_ok=True)
        if config is not None:
            (workdir / "prometheus.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
        self.url = f"http://127.0.0.1:{free_port()}"
        super().__init__(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            workdir / "prometheus.log",
        )
        self.ready(self.url + "/-/ready")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        reply = http(f"{self.url}/api/v1{path}" + (f"?{query}" if query else ""))
        body = reply.json()
        assert "success" == body["status"], body
        return body["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now."""
        alerts: list[dict[str, Any]] = self.api("/alerts")["alerts"]
        return alerts


#: An Alertmanager configuration that sends every alert, at once and when resolved, to one
#: webhook (``{url}``): what the e2e tests read notifications from.
AM_ONE_HOOK = """\
route:
  receiver: hook
  group_by: ['...']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {url}
        send_resolved: true
"""


class Alertmanager(Peer):
    """An Alertmanager (no cluster) and its API v2."""

    def __init__(self, binary: str, workdir: Path, config: str) -> None:
        workdir.mkdir(exist_ok=True)
        (workdir / "alertmanager.yml").write_text(config)
        self.url = f"http://127.0.0.1:{free_port()}"
        super().__init__(
            [
                binary,
                f"--config.file={workdir / 'alertmanager.yml'}",
                f"--storage.path={workdir / 'data'}",
                "--cluster.listen-address=",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            workdir / "alertmanager.log",
        )
        self.ready(self.url + "/-/ready")

    def alerts(self, *matchers: str) -> list[dict[str, Any]]:
        """Active alerts (not resolved) matching every ``label="value"`` matcher."""
        query = urllib.parse.urlencode([("filter", m) for m in matchers])
        alerts: list[dict[str, Any]] = http(f"{self.url}/api/v2/alerts?{query}").json()
        return alerts


@pytest.fixture(name="prometheus_binary")
def _prometheus_binary() -> str:
    return require_tool("prometheus", "prometheus")


@pytest.fixture(name="alertmanager_binary")
def _alertmanager_binary() -> str:
    return require_tool("prometheus-alertmanager", "prometheus-alertmanager", "alertmanager")


@pytest.fixture(name="peer_processes")
def _peer_processes() -> Iterator[list[Peer]]:
    """Prometheus and Alertmanager processes to stop after the test."""
    processes: list[Peer] = []
    try:
        yield processes
    finally:
        for process in processes:
            process.close()


def corpus(kind: str) -> list[Path]:
    """The files of one corpus directory, sorted (``tests/corpus/<kind>/``)."""
    return sorted(p for p in (CORPUS / kind).iterdir() if p.is_file())
