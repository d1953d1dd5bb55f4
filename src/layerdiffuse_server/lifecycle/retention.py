"""Deleting what outlived the retention period: completed requests with their logs and outputs,
expired uploads, and outputs that a lost worker stored but never published."""

from __future__ import annotations

import logging

from ..files import BlobStore
from ..store.contracts import Store

logger = logging.getLogger(__name__)

# Rows of workers that stopped reporting this long ago are dropped from ``layerdiffuse status``.
FORGET_WORKERS_AFTER_SECONDS = 86400.0


def sweep(store: Store, blobs: BlobStore, retention_hours: float, now: float) -> tuple[int, int]:
    """One pass; returns (requests deleted, files deleted).

    Requests go before their files, so a stored result never points at a deleted file. Files with
    an expiry (uploads, unpublished outputs) go when it passes, whatever ``retention_hours`` says.
    """
    store.workers.forget_silent_since(now - FORGET_WORKERS_AFTER_SECONDS)
    expired_files = store.files.expired(now)
    request_ids = store.requests.delete_completed_before(now - retention_hours * 3600) if retention_hours else []
    outputs = store.files.for_requests(request_ids)
    doomed = expired_files + outputs
    for record in doomed:
        blobs.delete(record.id)
    store.files.delete([record.id for record in doomed])
    if doomed or request_ids:
        logger.info("retention: deleted %d requests and %d files", len(request_ids), len(doomed))
    return len(request_ids), len(doomed)
