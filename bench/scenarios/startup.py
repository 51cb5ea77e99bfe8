"""P7: from ``batchmon run`` to READY, with a 50-task state database.

``python -m monitor run --config ...`` starts as a subprocess with ``NOTIFY_SOCKET`` naming a
real ``AF_UNIX`` datagram socket of the bench, against the simulator process, with a state
database holding the 50 watched tasks.  The figure is the time from spawning the process to
receiving ``READY=1``.  A daemon that never sends READY (sd_notify not wired in) is measured
to its first ``/readyz`` answering 200 instead, and the notes say so.  The baseline is a bare
``python -c pass`` start, for scale.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from bench.scenarios.common import ROOT, Row, median, seed_state, simulator_process

__all__ = ["startup_to_ready"]

_TARGET = 1.5
_TASKS = 50
#: How long a start may take to answer /readyz 200 (and to send READY=1, if it does).
_READY_TIMEOUT = 15.0
_TOML = """\
[superoffice]
url = "{url}"
max_requests_per_second = 1000.0

[superoffice.auth]
type = "basic"
username = "batchmon"
password = "batchmon"

[watch]
ids = {ids}

[state]
path = "{state}"

[http]
listen = "127.0.0.1:{port}"

[log]
format = "json"
"""


@dataclass(frozen=True, slots=True)
class _Start:
    """One start: seconds to READY=1 (``None``: none came) and to the first /readyz 200."""

    ready: float | None
    readyz: float


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _readyz(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _drain(notify: socket.socket) -> None:
    """Drop messages a previous start left (STATUS=, STOPPING=1)."""
    while True:
        try:
            notify.recv(4096)
        except BlockingIOError:
            return


def _start_once(config: Path, port: int, notify: socket.socket, expect_ready: bool) -> _Start:
    """Start the daemon, wait for /readyz and (if expected) READY=1, then stop it."""
    _drain(notify)
    env = {**os.environ, "NOTIFY_SOCKET": notify.getsockname()}
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ready = readyz = None
    try:
        while time.perf_counter() - began < _READY_TIMEOUT:
            try:
                message = notify.recv(4096)
            except BlockingIOError:
                message = b""
            if ready is None and b"READY=1" in message.split(b"\n"):
                ready = time.perf_counter() - began
            if readyz is None and _readyz(port):
                readyz = time.perf_counter() - began
            if readyz is not None and (ready is not None or not expect_ready):
                break
            if process.poll() is not None:
                assert process.stderr is not None  # PIPE above
                msg = f"batchmon run exited with {process.returncode}: {process.stderr.read()!r}"
                raise RuntimeError(msg)
            time.sleep(0.002)
    finally:
        process.terminate()
        process.communicate(timeout=15)
    if readyz is None:
        msg = f"/readyz did not answer 200 within {_READY_TIMEOUT} s"
        raise RuntimeError(msg)
    return _Start(ready, readyz)


def _bare_start() -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - began


def startup_to_ready(quick: bool) -> Row:
    """P7: seconds from spawning ``batchmon run`` to READY=1, state DB of 50 tasks."""
    pairs = 1 if quick else 5
    with (
        simulator_process(_TASKS) as sim,
        tempfile.TemporaryDirectory() as tmp,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
    ):
        state = Path(tmp) / "state.db"
        anyio.run(seed_state, sim.url, state)
        port = _free_port()
        config = Path(tmp) / "batchmon.toml"
        config.write_text(_TOML.format(url=sim.url, ids=sim.ids, state=state, port=port))
        notify.bind(str(Path(tmp) / "notify"))
        notify.setblocking(False)
        # The warm-up start also tells whether the daemon sends READY=1 at all.
        sends_ready = _start_once(config, port, notify, expect_ready=True).ready is not None
        starts: list[_Start] = []
        bare: list[float] = []
        for _ in range(pairs):
            starts.append(_start_once(config, port, notify, expect_ready=sends_ready))
            bare.append(_bare_start())
    if sends_ready:
        figure = median([s.ready for s in starts if s.ready is not None])
        how = "READY=1 on NOTIFY_SOCKET"
    else:
        figure = median([s.readyz for s in starts if s.readyz is not None])
        how = "READY=1 never came (sd_notify not wired in): first /readyz answering 200"
    readyz = median([s.readyz for s in starts])
    return Row(
        "P7",
        f"start-up to READY, {_TASKS}-task state DB",
        f"{figure:.2f} s",
        f"{median(bare):.2f} s (python -c pass)",
        f"{figure / median(bare):.1f}x",
        f"≤ {_TARGET} s",
        figure <= _TARGET,
        (
            (
                f"P7: spawn of `python -m monitor run` to {how}; first /readyz 200 after "
                f"{readyz:.2f} s; medians of {pairs} starts, each followed by a bare interpreter "
                f"start (after one warm-up start)."
            ),
        ),
    )
