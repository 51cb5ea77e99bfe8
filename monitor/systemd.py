"""Talking to systemd: the sd_notify protocol without libsystemd.

Under ``Type=notify`` systemd waits for ``READY=1`` before it calls the
service started, shows ``STATUS=`` in ``systemctl status``, restarts the
service when ``WATCHDOG=1`` pings stop, and knows a reload or a stop is under
way from ``RELOADING=1`` / ``STOPPING=1``.  Each message is one datagram on
the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
the abstract namespace).  Outside systemd the variable is unset and every call
does nothing, so the daemon can notify unconditionally.

The protocol is guaranteed stable (systemd.io/PORTABILITY_AND_STABILITY);
``man sd_notify`` ships a self-contained Python example of the same.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import anyio
import structlog

__all__ = ["Notifier", "watchdog_interval", "watchdog_loop"]

log = structlog.get_logger("batchmon.systemd")

#: How long one send may block when systemd's queue is full; a bounded wait on a
#: datagram that takes microseconds beats losing READY=1.
SEND_TIMEOUT = 1.0


def _address(value: str) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET``; ``None`` for a kind we cannot use."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """Sends sd_notify messages to the socket systemd gave this process.

    A send that fails is logged once and never raised: losing a status line
    must not take the monitor down (a lost READY=1 shows as a start timeout).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _address(raw) if raw else None
        self._warned = False
        if raw and self._address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (``$NOTIFY_SOCKET`` was set and usable)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; whether systemd got it."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("notify_failed", error=str(exc), message=assignments[0])
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up or a reload is complete (with a status line, if given)."""
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status``."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive; systemd restarts it when these stop."""
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``; send :meth:`ready` when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown began; systemd stops expecting watchdog pings."""
        return self.notify("STOPPING=1")


def _status(text: str | None) -> list[str]:
    """A ``STATUS=`` assignment; newlines would start new assignments, so they go."""
    if text is None:
        return []
    return ["STATUS=" + " ".join(text.splitlines())]


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    advises; ``None`` when the watchdog is off or meant for another process
    (``$WATCHDOG_PID`` set to a pid that is not ours).
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


async def watchdog_loop(
    alive: Callable[[], bool],
    *,
    notifier: Notifier | None = None,
    interval: float | None = None,
) -> None:
    """Ping the watchdog every ``interval`` while ``alive()`` says so; return at once without one.

    Tied to liveness rather than a free-running timer: when the poll loop
    wedges, ``alive()`` turns false, pings stop and systemd restarts the service.
    ``notifier`` and ``interval`` default to what the environment says.
    """
    every = watchdog_interval() if interval is None else interval
    target = Notifier() if notifier is None else notifier
    if every is None or not target.enabled:
        return
    missed = False
    while True:
        if alive():
            target.watchdog()
            missed = False
        elif not missed:
            missed = True
            log.warning("watchdog_withheld", reason="the poll loop is not completing cycles")
        await anyio.sleep(every)
