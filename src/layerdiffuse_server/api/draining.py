"""The API's part of a graceful stop: answers that wait (sync runs, status streams) get until a
deadline to finish, then end on their own, so a stop takes a bounded time even with clients
connected (uvicorn alone would wait for every open connection)."""

from __future__ import annotations

from ..clock import SYSTEM_CLOCK, Clock


class Draining:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self.deadline: float | None = None

    @property
    def started(self) -> bool:
        return self.deadline is not None

    def begin(self, grace_seconds: float) -> None:
        if self.deadline is None:
            self.deadline = self._clock.monotonic() + grace_seconds

    def expired(self) -> bool:
        return self.deadline is not None and self._clock.monotonic() >= self.deadline

    def timeout(self, poll_seconds: float) -> float:
        """How long a waiter may sleep before it must look again: its poll, or less near the deadline."""
        if self.deadline is None:
            return poll_seconds
        return max(0.0, min(poll_seconds, self.deadline - self._clock.monotonic()))
