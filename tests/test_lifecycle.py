"""The daemon's life under systemd: READY/RELOADING/STOPPING, watchdog, reload, signals."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from monitor.daemon import Daemon
from monitor.simulator import Simulator
from monitor.superoffice.models import BatchTaskState
from monitor.systemd import Notifier
from tests.conftest import make_config

BATCHMON = [sys.executable, "-m", "monitor"]


@pytest.fixture(name="notify_socket")
def _notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        yield sock


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket, decoded."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def until(condition: Any, within: float = 10) -> None:
    """Wait (in real time) until ``condition()`` holds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - another task's state
            await anyio.sleep(0.02)


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    """Run the daemon until the block ends."""
    async with anyio.create_task_group() as group:
        await group.start(daemon.run)
        yield daemon
        group.cancel_scope.cancel()


class TestNotify:
    """What systemd hears."""

    async def test_ready_reloading_stopping(
        self, notify_socket: socket.socket, tmp_path: Path
    ) -> None:
        """READY with a STATUS after start, RELOADING then READY around a reload, STOPPING at the end."""
        notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
        async with Simulator() as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            config = make_config(
                simulator.url, watch={"ids": [task.id]}, state={"path": str(tmp_path / "s.db")}
            )
            daemon = Daemon(config, notifier=notifier)
            messages: list[str] = []

            def readies() -> int:
                messages.extend(received(notify_socket))
                return sum(m.startswith("READY=1") for m in messages)

            async with running(daemon):
                await until(lambda: readies() == 1)
                daemon.reload(config)
                await until(lambda: readies() == 2)

        messages += received(notify_socket)
        kinds = [m.split("\n")[0].split("=")[0] for m in messages if not m.startswith("STATUS=")]
        assert ["READY", "RELOADING", "READY", "STOPPING"] == kinds
        ready = next(m for m in messages if m.startswith("READY=1"))
        assert "STATUS=watching 1 tasks" in ready
        reloading = next(m for m in messages if m.startswith("RELOADING=1"))
        assert "MONOTONIC_USEC=" in reloading

    async def test_watchdog_pings_while_polling(
        self, notify_socket: socket.socket, tmp_path: Path
    ) -> None:
        """WATCHDOG=1 arrives at half of WATCHDOG_USEC while the poll loop works."""
        notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
        async with Simulator() as simulator:
            task = simulator.add_task(state=BatchTaskState.STARTED)
            config = make_config(
                simulator.url,
                watch={"ids": [task.id]},
                poll={"interval": "0.1s"},
                state={"path": str(tmp_path / "s.db")},
            )
            os.environ["WATCHDOG_USEC"] = "200000"
            try:
                daemon = Daemon(config, notifier=notifier)
                async with running(daemon):
                    await anyio.sleep(0.75)
            finally:
                del os.environ["WATCHDOG_USEC"]

        pings = [m for m in received(notify_socket) if m == "WATCHDOG=1"]
        assert 4 <= len(pings) <= 10


class TestReload:
    """A reload keeps what the daemon knows and applies the new configuration."""

    async def test_new_watch_starts_and_nothing_is_reannounced(self, tmp_path: Path) -> None:
        """After a reload adding a task, only the new task is discovered."""
        async with Simulator() as simulator:
            first = simulator.add_task(state=BatchTaskState.STARTED)
            second = simulator.add_task(state=BatchTaskState.STARTED)
            state = {"path": str(tmp_path / "s.db")}
            config = make_config(simulator.url, watch={"ids": [first.id]}, state=state)
            wider = make_config(simulator.url, watch={"ids": [first.id, second.id]}, state=state)
            daemon = Daemon(config)
            with capture_logs() as logs:
                async with running(daemon):
                    await until(lambda: first.id in daemon.tracker.tasks)
                    daemon.reload(wider)
                    await until(lambda: second.id in daemon.tracker.tasks)
                    daemon.reload(config)
                    await until(lambda: daemon.reloads == 2)
                    await until(lambda: daemon.poller is not None and daemon.poller.cycles > 0)
                    watched = daemon.poller.watched if daemon.poller else None
                    tracked = set(daemon.tracker.tasks)

        discovered = [e["task_id"] for e in logs if e["event"] == "task.discovered"]
        assert [first.id, second.id] == discovered
        assert frozenset({first.id}) == watched
        assert {first.id} == tracked, "the task no longer watched is no longer tracked"
        assert 2 == sum(e["event"] == "config_reloaded" for e in logs)


class TestSignals:
    """The real process: SIGHUP reloads (or refuses), SIGTERM stops with exit 0."""

    async def test_sighup_and_sigterm(self, tmp_path: Path) -> None:
        """A valid edit is applied, an invalid one refused and logged, and SIGTERM exits 0."""
        async with Simulator() as simulator:
            first = simulator.add_task(state=BatchTaskState.STARTED)
            second = simulator.add_task(state=BatchTaskState.STARTED)
            config = tmp_path / "batchmon.toml"

            def write(ids: list[int], extra: str = "") -> None:
                config.write_text(
                    f'[superoffice]\nurl = "{simulator.url}"\n'
                    '[superoffice.auth]\ntype = "basic"\nusername = "batchmon"\n'
                    'password = "batchmon"\n'
                    f"[watch]\nids = {ids}\n"
                    '[poll]\ninterval = "0.2s"\n[http]\nlisten = "127.0.0.1:0"\n'
                    f'[state]\npath = "{tmp_path / "state.db"}"\n{extra}'
                )

            write([first.id])
            process = await anyio.open_process(
                [*BATCHMON, "run", "--config", str(config)],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert process.stdout is not None
            output = b""

            async def wait_for(text: bytes) -> None:
                nonlocal output
                assert process.stdout is not None
                async for chunk in process.stdout:
                    output += chunk
                    if text in output:
                        return

            with anyio.fail_after(30):
                await wait_for(b"task.discovered")
                write([first.id, second.id])
                process.send_signal(signal.SIGHUP)
                await wait_for(b"config_reloaded")
                await wait_for(f'"task_id": {second.id}'.encode())
                write([first.id], extra="[log]\nbogus = 1\n")
                process.send_signal(signal.SIGHUP)
                await wait_for(b"config_reload_refused")
                process.send_signal(signal.SIGTERM)
                output += b"".join([chunk async for chunk in process.stdout])
                code = await process.wait()
            await process.aclose()

        lines = output.decode().splitlines()
        assert 0 == code
        refused = next(line for line in lines if "config_reload_refused" in line)
        assert "log.bogus: unknown key" in refused
        assert "batchmon_stopped" in lines[-1]


class TestRestartWithDiscovery:
    """A task found by discovery is not lost when it changes while batchmon is down."""

    async def test_failure_while_down_is_announced(self, tmp_path: Path) -> None:
        """Discovered while Started, failed during the downtime: the next run says so."""
        async with Simulator() as simulator:
            task = simulator.add_task(name="Export", state=BatchTaskState.STARTED)
            config = make_config(
                simulator.url,
                watch={"discover": [{"states": ["Started"], "every": "0.1s"}]},
                poll={"interval": "0.1s"},
                state={"path": str(tmp_path / "s.db")},
            )
            announced = []
            for run in range(2):
                if run == 1:
                    simulator.set_task(task.id, state=BatchTaskState.FAILED)
                daemon = Daemon(config)
                with capture_logs() as logs:
                    async with running(daemon):
                        await until(lambda d=daemon: task.id in d.tracker.tasks)
                        await until(lambda d=daemon: d.poller is not None and d.poller.cycles >= 2)
                announced.append([e["event"] for e in logs if e["event"].startswith("task.")])

        assert [["task.discovered", "task.started"], ["task.failed"]] == announced
