"""Files under one local directory. Writes are atomic (temporary file, fsync, rename), so a crash
never leaves half a file where a reader could find it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .blobs import CHUNK_BYTES, BlobReader, StorageError, is_file_id


def _read_chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk


class LocalBlobStore:
    """Sharded by the first two characters of the id, so no directory grows without bound."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = root.as_uri()
        root.mkdir(parents=True, exist_ok=True)

    def _location(self, file_id: str) -> Path:
        if not is_file_id(file_id):
            raise ValueError(f"invalid file id {file_id!r}")
        return self.root / file_id[:2] / file_id

    def put(self, file_id: str, data: bytes, content_type: str) -> None:
        target = self._location(file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def open(self, file_id: str) -> BlobReader | None:
        try:
            stream = self._location(file_id).open("rb")
        except (ValueError, FileNotFoundError):
            return None
        return BlobReader(size=os.fstat(stream.fileno()).st_size, chunks=_read_chunks(stream))

    def presigned_url(self, file_id: str, *, file_name: str, content_type: str, expires_seconds: int) -> str | None:
        return None

    def delete(self, file_id: str) -> None:
        with contextlib.suppress(ValueError):
            self._location(file_id).unlink(missing_ok=True)

    def check_writable(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"the directory {self.root} is not writable")
