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
    """Wake-ups by request id. A log line wakes only the waiters that watch logs (status streams),
    so a sync run waiting for its result is not woken at every denoising step, which on a busy
    host takes CPU from the very generation it waits for."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[tuple[asyncio.Event, bool]]] = defaultdict(set)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, request_id: str, *, log_only: bool = False) -> None:
        """Wake those watching ``request_id`` (for a new log line: only log watchers); any thread."""
        if self._loop is not None and not self._loop.is_closed() and request_id in self._waiters:
            self._loop.call_soon_threadsafe(self._wake, request_id, log_only)

    def _wake(self, request_id: str, log_only: bool) -> None:
        for event, wants_logs in self._waiters.get(request_id, ()):
            if wants_logs or not log_only:
                event.set()

    @asynccontextmanager
    async def watch(self, request_id: str, *, logs: bool = True) -> AsyncIterator[asyncio.Event]:
        """An event set on every change of the request (and, with ``logs``, every new log line);
        subscribe before reading state to miss nothing."""
        event = asyncio.Event()
        entry = (event, logs)
        self._waiters[request_id].add(entry)
        try:
            yield event
        finally:
            self._waiters[request_id].discard(entry)
            if not self._waiters[request_id]:
                del self._waiters[request_id]


async def wait_for_change(event: asyncio.Event, timeout: float) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    event.clear()
