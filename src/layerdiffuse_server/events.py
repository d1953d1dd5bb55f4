"""In-process wake-ups for code waiting on a request (sync runs, status streams).

Waiters still re-read the store: an event only says "look again now", so a missed or foreign
change (another process on a shared database) costs at most one poll interval, never correctness.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress


class RequestEvents:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, request_id: str) -> None:
        """Wake everyone watching ``request_id``; safe to call from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, request_id)

    def _wake(self, request_id: str) -> None:
        for event in self._waiters.get(request_id, ()):
            event.set()

    @asynccontextmanager
    async def watch(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set on every change of the request; subscribe before reading state to miss nothing."""
        event = asyncio.Event()
        self._waiters[request_id].add(event)
        try:
            yield event
        finally:
            self._waiters[request_id].discard(event)
            if not self._waiters[request_id]:
                del self._waiters[request_id]


async def wait_for_change(event: asyncio.Event, timeout: float) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    event.clear()
