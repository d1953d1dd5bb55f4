"""Deleting what outlived the retention period: completed requests with their logs and outputs, and uploads."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from .api.services import Services

logger = logging.getLogger(__name__)

SWEEP_SECONDS = 600.0
# Rows of workers that stopped reporting this long ago are dropped from ``layerdiffuse status``.
FORGET_WORKERS_AFTER_SECONDS = 86400.0


def sweep(services: Services, now: float | None = None) -> tuple[int, int]:
    """One pass; returns (requests deleted, files deleted).

    Requests go before their files, so a stored result never points at a deleted file.
    """
    now = time.time() if now is None else now
    store = services.store
    store.workers.forget_silent_since(now - FORGET_WORKERS_AFTER_SECONDS)
    hours = services.settings.retention_hours
    if not hours:
        return 0, 0
    cutoff = now - hours * 3600
    expired_files = store.files.expired(now)
    for record in expired_files:
        services.blobs.delete(record.id)
    store.files.delete([record.id for record in expired_files])
    request_ids = store.requests.delete_completed_before(cutoff)
    outputs = store.files.for_requests(request_ids)
    for record in outputs:
        services.blobs.delete(record.id)
    store.files.delete([record.id for record in outputs])
    if request_ids or expired_files:
        logger.info("retention: deleted %d requests and %d files", len(request_ids), len(expired_files) + len(outputs))
    return len(request_ids), len(expired_files) + len(outputs)


async def run_retention(services: Services) -> None:
    while True:
        try:
            await anyio.to_thread.run_sync(sweep, services)
        except Exception:
            logger.exception("retention sweep failed; retrying later")
        await asyncio.sleep(SWEEP_SECONDS)
