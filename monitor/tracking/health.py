"""Whether the SuperOffice API is reachable, as an edge-triggered state machine.

A flapping API must give two events, not one log line per failed poll: the
state flips to *down* after ``down_after`` consecutive failed poll cycles and
emits ``monitor.api_down`` once; the first success after that emits
``monitor.api_recovered`` once.  Pure: time is an argument.
"""

from __future__ import annotations

from datetime import datetime

from monitor.tracking.events import Event, EventType, event_id

__all__ = ["ApiHealth"]


class ApiHealth:
    """Counts consecutive failed poll cycles and reports the edges."""

    def __init__(self, down_after: int) -> None:
        self.down_after = down_after
        #: Failed cycles since the last success.
        self.consecutive_failures = 0
        #: Whether ``monitor.api_down`` was emitted and not yet recovered.
        self.down = False
        #: Why the last cycle failed, for /readyz and the event message.
        self.last_error: str | None = None
        #: When the last cycle succeeded.
        self.last_success: datetime | None = None
        #: Whether the credentials were rejected (after a renewal) since the last success.
        self.auth_failed = False
        self._down_since: datetime | None = None

    @property
    def up(self) -> bool:
        """Whether the last poll cycle succeeded (``False`` before the first)."""
        return (
            self.last_success is not None
            and self.consecutive_failures == 0
            and not self.auth_failed
        )

    @property
    def down_since(self) -> datetime | None:
        """When ``monitor.api_down`` was emitted, while the API stays down."""
        return self._down_since

    def success(self, now: datetime) -> Event | None:
        """Record a successful cycle; the recovery event if the API was down."""
        self.consecutive_failures = 0
        self.last_success = now
        self.auth_failed = False
        if not self.down:
            return None
        self.down = False
        since = self._down_since
        self._down_since = None
        return Event(
            id=event_id(EventType.MONITOR_API_RECOVERED.value, since),
            type=EventType.MONITOR_API_RECOVERED,
            time=now,
            message=f"the SuperOffice API answers again (down since {since:%Y-%m-%d %H:%M:%S}Z)"
            if since
            else "the SuperOffice API answers again",
        )

    def failure(self, now: datetime, reason: str) -> Event | None:
        """Record a failed cycle; the down event on the N-th consecutive one."""
        self.consecutive_failures += 1
        self.last_error = reason
        if self.down or self.consecutive_failures < self.down_after:
            return None
        self.down = True
        self._down_since = now
        return Event(
            id=event_id(EventType.MONITOR_API_DOWN.value, now),
            type=EventType.MONITOR_API_DOWN,
            time=now,
            message=f"{self.consecutive_failures} consecutive poll cycles failed: {reason}",
        )

    def auth_failure(self, now: datetime, reason: str) -> Event | None:
        """Record a cycle refused for its credentials; the event the first time.

        Not an outage (the API answers), so it never counts towards ``api_down``.
        """
        self.last_error = reason
        if self.auth_failed:
            return None
        self.auth_failed = True
        return Event(
            id=event_id(EventType.MONITOR_AUTH_FAILED.value, now),
            type=EventType.MONITOR_AUTH_FAILED,
            time=now,
            message=f"SuperOffice rejected the credentials after renewing them: {reason}",
        )
