"""Where the service reads the time and waits: one object, passed down, so tests can drive it.

Leases, heartbeats, start deadlines, retention, webhook retries and the worker's polls all ask a
:class:`Clock` rather than the :mod:`time` module. The service runs on :data:`SYSTEM_CLOCK`; tests
hand in :class:`~layerdiffuse_server.testing.FakeClock`, whose time moves only when the test says
so, and whose waits end when it does, so a test of a lease that runs out need not sleep through one.

Two readings, as the standard library has them: :meth:`Clock.time` is the wall clock, for what is
stored and compared across processes (a lease's end, a request's deadline, a log line's timestamp);
:meth:`Clock.monotonic` never goes back, for intervals inside one process (how long a step took,
when a cancel was last checked). Waits are on an event with a timeout, the one way the worker's
threads (:meth:`Clock.wait`) and the webhook loop (:meth:`Clock.wait_async`) pause: they return
early when the event is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (wall time)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never go back (intervals within this process)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` of this clock's time."""
        ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Block until ``event`` is set or ``timeout`` seconds of this clock's time have passed;
        True when the event is set (as :meth:`threading.Event.wait`)."""
        ...

    async def wait_async(self, event: asyncio.Event, timeout: float) -> bool:
        """:meth:`wait` for a coroutine: until ``event`` is set or ``timeout`` seconds have passed."""
        ...


class SystemClock:
    """The real clock: the :mod:`time` module and the events' own waits."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)

    async def wait_async(self, event: asyncio.Event, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return event.is_set()


#: The clock every part of the service uses unless it is given another.
SYSTEM_CLOCK: Clock = SystemClock()
