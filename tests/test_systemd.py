"""sd_notify against real AF_UNIX datagram sockets, bound the way systemd binds them."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from monitor.systemd import Notifier, watchdog_interval, watchdog_loop


class Listener:
    """The systemd side: a bound datagram socket that collects what arrives."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env = {"NOTIFY_SOCKET": env_value}

    def receive(self, timeout: float = 2.0) -> str:
        """The next datagram, decoded."""
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every datagram waiting now."""
        self.sock.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages


@pytest.fixture(name="path_socket")
def _path_socket(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Listener(sock, str(path))


@pytest.fixture(name="abstract_socket")
def _abstract_socket() -> Iterator[Listener]:
    name = f"batchmon-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Listener(sock, "@" + name)


class TestNotifier:
    """Each call is one datagram with the protocol's assignments."""

    def test_path_socket_gets_every_message(self, path_socket: Listener) -> None:
        """ready, status, watchdog and stopping arrive as sent, in order."""
        notifier = Notifier(path_socket.env)

        assert notifier.enabled
        assert notifier.ready(status="watching 3 tasks")
        assert notifier.status("watching 3 tasks, 1 active, last poll 12:00:03")
        assert notifier.watchdog()
        assert notifier.stopping()
        assert "READY=1\nSTATUS=watching 3 tasks" == path_socket.receive()
        assert "STATUS=watching 3 tasks, 1 active, last poll 12:00:03" == path_socket.receive()
        assert "WATCHDOG=1" == path_socket.receive()
        assert "STOPPING=1" == path_socket.receive()

    def test_abstract_socket(self, abstract_socket: Listener) -> None:
        """An ``@name`` address reaches the abstract-namespace socket."""
        assert Notifier(abstract_socket.env).ready()
        assert "READY=1" == abstract_socket.receive()

    def test_reloading_carries_the_monotonic_clock(self, path_socket: Listener) -> None:
        """RELOADING=1 comes with MONOTONIC_USEC read from CLOCK_MONOTONIC at the call."""
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        Notifier(path_socket.env).reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

        first, second = path_socket.receive().split("\n")
        key, _, value = second.partition("=")
        assert "RELOADING=1" == first
        assert "MONOTONIC_USEC" == key
        assert before <= int(value) <= after

    def test_status_stays_one_line(self, path_socket: Listener) -> None:
        """A newline in the text cannot smuggle in another assignment."""
        Notifier(path_socket.env).status("bad name\nREADY=1")

        assert "STATUS=bad name READY=1" == path_socket.receive()

    def test_without_socket_nothing_happens(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Outside systemd every call is a quiet no-op."""
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        notifier = Notifier()

        assert not notifier.enabled
        assert not notifier.ready()
        assert not notifier.watchdog()

    def test_environment_is_the_default(
        self, path_socket: Listener, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without an explicit mapping the notifier reads ``$NOTIFY_SOCKET``."""
        monkeypatch.setenv("NOTIFY_SOCKET", path_socket.env["NOTIFY_SOCKET"])

        assert Notifier().stopping()
        assert "STOPPING=1" == path_socket.receive()

    def test_unusable_addresses_do_not_raise(self, tmp_path: Path) -> None:
        """A vanished socket or a relative address fails softly."""
        gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing")})
        relative = Notifier({"NOTIFY_SOCKET": "relative/notify"})

        assert gone.enabled
        assert not gone.ready()
        assert not gone.watchdog()
        assert not relative.enabled
        assert not relative.ready()


class TestWatchdogInterval:
    """Half of WATCHDOG_USEC, for this process only."""

    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            ({"WATCHDOG_USEC": "30000000"}, 15.0),
            ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
            ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
            ({"WATCHDOG_USEC": "0"}, None),
            ({"WATCHDOG_USEC": "soon"}, None),
            ({}, None),
        ],
    )
    def test_interval(self, environ: dict[str, str], expected: float | None) -> None:
        """The interval follows the variables systemd sets for WatchdogSec=."""
        assert expected == watchdog_interval(environ)


class TestWatchdogLoop:
    """Pings go out only while the loop is alive."""

    async def test_pings_follow_liveness(self, path_socket: Listener) -> None:
        """Alive: a ping every interval; not alive: none; alive again: pings resume."""
        alive = True
        notifier = Notifier(path_socket.env)
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: watchdog_loop(lambda: alive, notifier=notifier, interval=0.02))
            await anyio.sleep(0.2)
            alive = False
            await anyio.sleep(0.03)
            while_alive = path_socket.drain()
            await anyio.sleep(0.2)
            while_dead = path_socket.drain()
            alive = True
            await anyio.sleep(0.1)
            group.cancel_scope.cancel()
        again = path_socket.drain()

        assert 4 <= len(while_alive)
        assert {"WATCHDOG=1"} == set(while_alive)
        assert [] == while_dead
        assert 1 <= len(again)

    async def test_returns_without_a_watchdog(
        self, path_socket: Listener, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without WATCHDOG_USEC the loop ends at once and sends nothing."""
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        with anyio.fail_after(1):
            await watchdog_loop(lambda: True, notifier=Notifier(path_socket.env))

        assert [] == path_socket.drain()

    async def test_interval_comes_from_the_environment(
        self, path_socket: Listener, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With systemd's variables set, the defaults find socket and interval."""
        monkeypatch.setenv("NOTIFY_SOCKET", path_socket.env["NOTIFY_SOCKET"])
        monkeypatch.setenv("WATCHDOG_USEC", "40000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        with anyio.move_on_after(0.1):
            await watchdog_loop(lambda: True)

        assert 2 <= len(path_socket.drain())
