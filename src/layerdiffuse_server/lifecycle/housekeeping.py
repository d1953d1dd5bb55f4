"""The periodic chores every process of the service does, API nodes and workers alike: take back
requests of lost workers, time out requests that waited too long to start, and apply retention.

Each chore is safe to run in many processes at once (rows being handled elsewhere are skipped),
so there is no leader to elect and nothing stops when one node goes.
"""

from __future__ import annotations

import logging
import threading

from ..files import BlobStore, StoredFiles
from .manager import RequestManager
from .retention import sweep

logger = logging.getLogger(__name__)

RETENTION_EVERY_SECONDS = 600.0


class Housekeeper:
    def __init__(self, manager: RequestManager, blobs: BlobStore, *, retention_hours: float) -> None:
        self.manager = manager
        self.blobs = blobs
        self.files = StoredFiles(blobs, manager.store.files, clock=manager.clock)
        self.retention_hours = retention_hours
        #: Often enough that a lost worker's request is back in the queue soon after its lease ends.
        self.interval = max(0.2, min(5.0, manager.lease_seconds / 3))
        self._last_retention = float("-inf")

    def tick(self) -> None:
        """One round of every chore that is due; a failing chore is logged, the others still run."""
        chores = (
            self.manager.expire_dead_neighbours,
            self.manager.reclaim_expired,
            self.manager.expire_deadlines,
            self._retention,
        )
        for chore in chores:
            try:
                chore()
            except Exception:
                logger.warning("housekeeping: %s failed; retrying later", chore.__name__, exc_info=True)

    def _retention(self) -> None:
        now = self.manager.clock.time()
        if now - self._last_retention >= RETENTION_EVERY_SECONDS:
            self._last_retention = now
            sweep(self.manager.store, self.files, self.retention_hours, now)

    def run_until(self, stopping: threading.Event) -> None:
        """The loop of a worker process (a thread); the API runs :meth:`tick` from its event loop.
        Its pause is on the manager's clock, so a test that moves that clock runs the next round."""
        while not stopping.is_set():
            self.tick()
            self.manager.clock.wait(stopping, self.interval)
