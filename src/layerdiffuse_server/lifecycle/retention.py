"""Deleting what outlived the retention period: completed requests with their logs and outputs,
expired uploads and input copies, and files whose writer died before publishing them."""

from __future__ import annotations

import logging

from ..files import StoredFiles
from ..store.contracts import Store

logger = logging.getLogger(__name__)

# Rows of workers that stopped reporting this long ago are dropped from ``layerdiffuse status``.
FORGET_WORKERS_AFTER_SECONDS = 86400.0


def sweep(store: Store, files: StoredFiles, retention_hours: float, now: float) -> tuple[int, int]:
    """One pass; returns (requests deleted, files deleted).

    Requests go first, marking their files expired in the same transaction, so a stored result
    never points at a deleted file; then :meth:`StoredFiles.sweep_expired` deletes every expired
    file, bytes before row, so a file whose bytes could not be deleted now (an object store that is
    away) is found again by the next pass, and a row whose bytes never arrived goes too. Files with
    their own expiry (uploads, input copies, unpublished writes) go when it passes, whatever
    ``retention_hours`` says.
    """
    store.workers.forget_silent_since(now - FORGET_WORKERS_AFTER_SECONDS)
    request_ids = store.requests.delete_completed_before(now - retention_hours * 3600, now) if retention_hours else []
    files_deleted = files.sweep_expired(now)
    if files_deleted or request_ids:
        logger.info("retention: deleted %d requests and %d files", len(request_ids), files_deleted)
    return len(request_ids), files_deleted
