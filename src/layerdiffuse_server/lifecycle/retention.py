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

    Requests go first, marking their files expired in the same transaction, so a stored result
    never points at a deleted file and a file whose bytes could not be deleted now (an object store
    that is away) is found again by the next pass. Files with their own expiry (uploads, outputs a
    lost worker never published) go when it passes, whatever ``retention_hours`` says.
    """
    store.workers.forget_silent_since(now - FORGET_WORKERS_AFTER_SECONDS)
    request_ids = store.requests.delete_completed_before(now - retention_hours * 3600, now) if retention_hours else []
    deleted = []
    for record in store.files.expired(now):
        try:
            blobs.delete(record.id)
        except Exception:
            logger.warning("retention: could not delete file %s; trying again later", record.id, exc_info=True)
            continue
        deleted.append(record.id)
    store.files.delete(deleted)
    if deleted or request_ids:
        logger.info("retention: deleted %d requests and %d files", len(request_ids), len(deleted))
    return len(request_ids), len(deleted)
