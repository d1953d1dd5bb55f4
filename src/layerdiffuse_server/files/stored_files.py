"""The one owner of stored files (uploads, image-input copies, outputs): their rows in the catalog
and their bytes in the blob store, kept in step.

Every write takes the same order: **the row first, with an expiry, then the bytes**, then the row
is published (ready, with the expiry it keeps). So whatever fails, no bytes exist that no row
names, and every row that is not published yet expires on its own:

- the row cannot be written (the database is away): nothing was stored;
- the bytes cannot be written: the row is removed, or, if even that fails, left to expire, and
  retention deletes it (deleting bytes that never arrived is no error);
- the process dies, or publishing fails, after the bytes: retention deletes row and bytes once the
  pending expiry passes.

Discarding goes the other way round: bytes first, then rows, so a row may outlive its bytes (and
is swept) but bytes never outlive their row. Outputs are written unpublished and published by the
completion of their request (:meth:`..store.contracts.RequestQueue.complete`), which clears their
expiry in the same transaction.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from ..clock import SYSTEM_CLOCK, Clock
from ..store.contracts import FileCatalog, FileRecord
from .blobs import BlobReader, BlobStore, StorageError, new_file_id

logger = logging.getLogger(__name__)

#: How long a row may wait for its bytes (or an output for its request's completion) before
#: retention takes it for the leftover of a writer that died.
PENDING_WRITE_SECONDS = 3600.0


class StoredFiles:
    """Writing, reading, discarding and the retention sweep of stored files, over one catalog and
    one blob store. Blocking (the database, the blob store): call it off the event loop.

    Args:
        blobs: Where the bytes live.
        catalog: Which files exist.
        clock: Where the time comes from (tests pass a fake one).
        pending_seconds: How long an unpublished row lives (:data:`PENDING_WRITE_SECONDS`).
    """

    def __init__(
        self,
        blobs: BlobStore,
        catalog: FileCatalog,
        *,
        clock: Clock = SYSTEM_CLOCK,
        pending_seconds: float = PENDING_WRITE_SECONDS,
    ) -> None:
        self.blobs = blobs
        self.catalog = catalog
        self.clock = clock
        self.pending_seconds = pending_seconds

    # Writing

    def store(
        self,
        data: bytes,
        *,
        file_name: str,
        content_type: str,
        key_id: str | None,
        expires_at: float | None,
        request_id: str | None = None,
        publish: bool = True,
    ) -> FileRecord:
        """Store a file whole: its row (pending), its bytes, then (``publish``) the row made ready.

        Args:
            data: The file's bytes, checked already.
            file_name: The name its URL ends with.
            content_type: Its media type.
            key_id: The API key it belongs to.
            expires_at: When a published file may be deleted (None: never).
            request_id: The request whose output it is.
            publish: False for an output, which its request's completion publishes.

        Returns:
            The file's row as stored (unready when not published).

        Raises:
            StoreError: The catalog failed; no bytes were left behind that no row names.
            StorageError: The blob store failed; the row was removed or expires.
        """
        record = self._new_record(
            file_name=file_name,
            content_type=content_type,
            size=len(data),
            key_id=key_id,
            request_id=request_id,
            expires_at=self._pending_expiry(expires_at if publish else None),
        )
        self.catalog.add(record)
        self._put(record, data)
        if not publish:
            return record
        try:
            if not self.catalog.mark_ready(record.id, len(data), expires_at=expires_at):
                raise StorageError(f"the row of file {record.id} was deleted while its bytes were written")
        except BaseException:
            self._discard_quietly(record.id)
            raise
        return dataclasses.replace(record, ready=True, expires_at=expires_at)

    def initiate_upload(self, *, file_name: str, content_type: str, key_id: str, writable_until: float) -> FileRecord:
        """The row of an upload whose bytes come later (:meth:`write_upload`, through a signed URL).

        It expires a pending period after its URL does, so an upload that never arrives is swept
        whatever the retention period (even none).
        """
        record = self._new_record(
            file_name=file_name,
            content_type=content_type,
            size=None,
            key_id=key_id,
            request_id=None,
            expires_at=writable_until + self.pending_seconds,
        )
        self.catalog.add(record)
        return record

    def write_upload(self, record: FileRecord, data: bytes, *, expires_at: float | None) -> bool:
        """Write the bytes of an initiated upload and publish it, once.

        Returns:
            False when the upload was taken already (by this or a concurrent write); nothing is written then.

        Raises:
            StorageError: The bytes could not be written; the upload can be tried again.
        """
        # Taken before the bytes are written: of two writes at once, one writes and the other is refused.
        if not self.catalog.claim_upload(record.id):
            return False
        try:
            self.blobs.put(record.id, data, record.content_type)
        except BaseException:
            self.catalog.unclaim_upload(record.id)
            raise
        # A failure from here on leaves a claimed, pending row: retention deletes it with the bytes.
        if not self.catalog.mark_ready(record.id, len(data), expires_at=expires_at):
            self._discard_quietly(record.id)  # swept meanwhile: its bytes must not stay without it
            return False
        return True

    # Reading

    def get(self, file_id: str) -> FileRecord | None:
        """The row of a file, published or not."""
        return self.catalog.get(file_id)

    def named(self, file_id: str, file_name: str) -> FileRecord | None:
        """The row of the file a URL names by id and name (published or not), if both match."""
        record = self.catalog.get(file_id)
        return record if record is not None and record.file_name == file_name else None

    def open(self, record: FileRecord) -> BlobReader | None:
        """The file's bytes in chunks, or None when they are gone."""
        return self.blobs.open(record.id)

    def read(self, record: FileRecord) -> bytes | None:
        """The file's bytes whole, or None when they are gone."""
        blob = self.blobs.open(record.id)
        return None if blob is None else b"".join(blob.chunks)

    def presigned_url(self, record: FileRecord, *, expires_seconds: int) -> str | None:
        """A short-lived URL of the object store that serves the file, where the backend has one."""
        return self.blobs.presigned_url(
            record.id, file_name=record.file_name, content_type=record.content_type, expires_seconds=expires_seconds
        )

    # Discarding and retention

    def discard(self, file_ids: Sequence[str]) -> None:
        """Delete files now (copies of a refused request, the output of a lost lease).

        Best effort: bytes that cannot be deleted keep their row (and its expiry), so they are
        never orphaned; a row whose bytes went is deleted.
        """
        self.catalog.delete(self._delete_bytes(file_ids, "discard"))

    def sweep_expired(self, now: float) -> int:
        """Delete every file whose expiry has passed, bytes first; a row whose bytes never arrived
        (or went already) is deleted too. Bytes that cannot be deleted now are tried again by the
        next sweep. Returns how many files were deleted."""
        deleted = self._delete_bytes([record.id for record in self.catalog.expired(now)], "retention")
        self.catalog.delete(deleted)
        return len(deleted)

    def _delete_bytes(self, file_ids: Sequence[str], reason: str) -> list[str]:
        """Delete the bytes of each file; the ids whose bytes are gone now."""
        deleted = []
        for file_id in file_ids:
            try:
                self.blobs.delete(file_id)
            except Exception:
                logger.warning("%s: could not delete file %s; trying again later", reason, file_id, exc_info=True)
                continue
            deleted.append(file_id)
        return deleted

    def _discard_quietly(self, file_id: str) -> None:
        """:meth:`discard` on the way out of a failed write, whose error is the one to raise."""
        try:
            self.discard([file_id])
        except Exception:
            logger.warning("could not discard file %s; retention will", file_id, exc_info=True)

    def _put(self, record: FileRecord, data: bytes) -> None:
        """Write the bytes of a row just added; on failure the row goes too, after whatever bytes
        arrived (an object store can fail a write it has stored), or is left to expire."""
        try:
            self.blobs.put(record.id, data, record.content_type)
        except BaseException:
            self._discard_quietly(record.id)
            raise

    def _pending_expiry(self, expires_at: float | None) -> float:
        """When an unpublished row expires: after the pending period, or sooner if the file would."""
        pending = self.clock.time() + self.pending_seconds
        return pending if expires_at is None else min(expires_at, pending)

    def _new_record(
        self,
        *,
        file_name: str,
        content_type: str,
        size: int | None,
        key_id: str | None,
        request_id: str | None,
        expires_at: float,
    ) -> FileRecord:
        """The row of a new file, unready: the one place a file's row is made."""
        return FileRecord(
            id=new_file_id(),
            file_name=file_name,
            content_type=content_type,
            size=size,
            key_id=key_id,
            request_id=request_id,
            created_at=self.clock.time(),
            expires_at=expires_at,
            ready=False,
        )
