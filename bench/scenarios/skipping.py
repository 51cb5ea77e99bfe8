"""An event loop that skips idle waits: simulated hours and days in minutes of real time.

It imports nothing of batchmon's, so a probe can run it beside another tree's ``monitor``
(P8 runs the code before issue 13 on it).  The loop's clock is real monotonic time plus every
wait it skipped: whenever the loop has nothing to do but wait for a timer, and no worker
thread is busy, the clock jumps to the timer.
"""

from __future__ import annotations

import asyncio
import selectors
import sys
import threading

__all__ = ["SkippingLoop"]

#: A wait up to this long (loop seconds) is skipped at once when nothing is ready.
_SHORT_WAIT = 1.0
#: Before skipping a longer wait, listen this long (real seconds) for loopback I/O in flight,
#: so that no request's timeout is ever skipped to.
_GRACE = 0.005


#: While a worker thread runs (the state database's), the loop waits this long at a time
#: in real time instead of skipping: the thread's work takes the time it takes.
_THREAD_POLL = 0.001


def _idle(frame: object) -> bool:
    """Whether a thread's current frame is a worker waiting for work.

    anyio's workers wait on a lock in ``threading``; asyncio's default executor (used for
    name lookups) waits in ``concurrent.futures.thread._worker`` on a C queue, with no
    Python frame of its own.
    """
    code = getattr(frame, "f_code", None)
    if code is None:
        return True
    filename: str = code.co_filename
    return filename.endswith("threading.py") or (
        filename.endswith(("concurrent/futures/thread.py", "concurrent\\futures\\thread.py"))
        and code.co_name == "_worker"
    )


def _worker_busy() -> bool:
    """Whether a thread other than this one is doing something, not waiting for work.

    A busy one is inside the function it was given (SQLite calls release the GIL, so their
    frame is the caller's).
    """
    me = threading.get_ident()
    return any(ident != me and not _idle(frame) for ident, frame in sys._current_frames().items())


class _SkippingSelector(selectors.EpollSelector):
    """Turns a wait for a timer with no I/O ready into a jump of the loop's clock."""

    def __init__(self, grace: float = _GRACE) -> None:
        super().__init__()
        self._grace = grace
        #: Seconds the loop's clock has been moved ahead in total.
        self.skipped = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timer at all: only I/O (or a thread) can wake the loop.
            blocked: list[tuple[selectors.SelectorKey, int]] = super().select(None)
            return blocked
        if _worker_busy():
            busy: list[tuple[selectors.SelectorKey, int]] = super().select(
                min(timeout, _THREAD_POLL)
            )
            return busy
        if timeout > _SHORT_WAIT:
            ready = super().select(self._grace)
            if ready:
                return ready
            timeout -= self._grace
        self.skipped += timeout
        return []


class SkippingLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs in real time but skips every idle wait for a timer.

    ``grace``: real seconds to listen for I/O before a long wait is skipped.
    """

    def __init__(self, grace: float = _GRACE) -> None:
        self._skipping = _SkippingSelector(grace)
        super().__init__(self._skipping)

    def time(self) -> float:
        """Real monotonic time plus everything skipped so far."""
        return super().time() + self._skipping.skipped

    @property
    def skipped(self) -> float:
        """Seconds skipped so far."""
        return self._skipping.skipped
