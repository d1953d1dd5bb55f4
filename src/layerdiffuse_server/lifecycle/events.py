"""Wake-ups for code that waits on a request (sync runs, status streams), fed by the store's notices.

Waiters still re-read the store: an event only says "look again now". Where the store's notices
reach every process (PostgreSQL), a missed one costs at most :attr:`RequestEvents.poll_seconds`
(seconds); where they stay in one process (SQLite), another process's changes are seen by polling
twice a second, as a file database offers nothing better.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from ..store.contracts import ChangeFeed, Notice, NoticeKind

SHARED_FEED_POLL_SECONDS = 5.0
LOCAL_FEED_POLL_SECONDS = 0.5


class RequestEvents:
    """Wake-ups by request id. A log line wakes only the waiters that watch logs (status streams),
    so a sync run waiting for its result is not woken at every denoising step, which on a busy
    host takes CPU from the very generation it waits for."""

    def __init__(self, feed: ChangeFeed) -> None:
        self._feed = feed
        self.poll_seconds = SHARED_FEED_POLL_SECONDS if feed.shared else LOCAL_FEED_POLL_SECONDS
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._waiters: dict[str, set[tuple[asyncio.Event, bool]]] = defaultdict(set)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start hearing the store's notices on ``loop`` (the API's event loop)."""
        self._loop = loop
        if self._unsubscribe is None:
            self._unsubscribe = self._feed.subscribe(self._heard)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def wake_all(self) -> None:
        """Every waiter looks again now (the server begins to stop); any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, Notice(NoticeKind.RESYNC))

    def _heard(self, notice: Notice) -> None:
        # Any thread. Only notices someone here waits for cross over to the loop.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if notice.kind is NoticeKind.RESYNC or notice.request_id in self._waiters:
            loop.call_soon_threadsafe(self._wake, notice)

    def _wake(self, notice: Notice) -> None:
        if notice.kind is NoticeKind.RESYNC:
            watchers = [entry for entries in self._waiters.values() for entry in entries]
        else:
            watchers = list(self._waiters.get(notice.request_id, ()))
        for event, wants_logs in watchers:
            if wants_logs or notice.kind is not NoticeKind.LOG:
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
