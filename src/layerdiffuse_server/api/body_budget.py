"""How many bytes of request bodies an API node holds at once, counted before they are read.

Without a bound, fifty 16 MiB ``data:`` submissions were all read (and parsed, and decoded) before
any admission limit applied: gigabytes, and a server too busy to answer its liveness probe. Each
submission first reserves its ``Content-Length`` here (a body without one reserves as it streams)
and gives it back once its input has been admitted; when the budget is full it waits a bounded time,
then is refused with 503 and ``Retry-After``. A body larger than the whole budget is let in alone.

The reservation counts the body's bytes; while a request is admitted its input exists a few times
over (the body, the parsed string, the decoded image), so the memory it stands for is a small
multiple of the budget (see the README's Security section).
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from ..errors import ServiceUnavailableError


class BodyMemoryFullError(ServiceUnavailableError):
    """This server is reading as many request bodies as it holds in memory at once; try again shortly."""

    headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}


class BodyBudget:
    """A count of body bytes in memory, shared by every submission of this process (one event loop)."""

    def __init__(self, capacity: int, wait_seconds: float) -> None:
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self.held = 0
        #: The most held at once since start.
        self.peak = 0
        self._waiters: list[asyncio.Future[None]] = []

    def reservation(self) -> BodyReservation:
        return BodyReservation(self)

    def _fits(self, size: int, own: int) -> bool:
        return self.held + size <= self.capacity or self.held == own  # alone, it goes in whatever its size

    async def _take(self, size: int, own: int, deadline: float) -> None:
        while not self._fits(size, own):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BodyMemoryFullError()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.held += size
        self.peak = max(self.peak, self.held)

    def _give_back(self, size: int) -> None:
        self.held -= size
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:  # each looks again; those that still do not fit wait on
            if not waiter.done():
                waiter.set_result(None)


class BodyReservation:
    """The bytes one request holds; grown before each read, released once (``release``)."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self._deadline = time.monotonic() + budget.wait_seconds
        self.size = 0

    async def grow_to(self, size: int) -> None:
        """Hold at least ``size`` bytes; waits (until the reservation's deadline) for room."""
        if size > self.size:
            extra = size - self.size
            await self._budget._take(extra, self.size, self._deadline)
            self.size = size

    def release(self) -> None:
        if self.size:
            self._budget._give_back(self.size)
            self.size = 0
