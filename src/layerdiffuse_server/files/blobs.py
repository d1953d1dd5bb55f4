"""Where file bytes live. The local backend writes atomically, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Protocol


def new_file_id() -> str:
    """An unguessable id: file URLs are capabilities, served without a key like fal's CDN URLs."""
    return secrets.token_urlsafe(18)


def file_url(base_url: str, file_id: str, file_name: str) -> str:
    return f"{base_url}/files/{file_id}/{file_name}"


_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class BlobStore(Protocol):
    def put(self, file_id: str, data: bytes) -> None: ...
    def path(self, file_id: str) -> Path | None: ...
    def delete(self, file_id: str) -> None: ...
    def writable(self) -> bool: ...


class LocalBlobStore:
    """Files under one directory, sharded by the first two characters of their id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _location(self, file_id: str) -> Path:
        if not _SAFE_ID.match(file_id):
            raise ValueError(f"invalid file id {file_id!r}")
        return self.root / file_id[:2] / file_id

    def put(self, file_id: str, data: bytes) -> None:
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

    def path(self, file_id: str) -> Path | None:
        try:
            location = self._location(file_id)
        except ValueError:
            return None
        return location if location.is_file() else None

    def delete(self, file_id: str) -> None:
        with contextlib.suppress(ValueError):
            self._location(file_id).unlink(missing_ok=True)

    def writable(self) -> bool:
        return os.access(self.root, os.W_OK)
