"""The blob-store contract: bytes of stored files (outputs and uploads) by id.

A backend hands out bytes, streams and URLs, never local paths, so routes and workers work the same
on a local directory and on S3-compatible object storage. File ids are unguessable: file URLs are
capabilities, served without a key like fal's CDN URLs.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import LayerDiffuseError

CHUNK_BYTES = 256 * 1024

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class StorageError(LayerDiffuseError):
    """The file store cannot be used."""

    status_code = 503
    error_type = "internal_error"

    @property
    def public_message(self) -> str:
        # The message names the bucket or directory for the operator's log, not for clients.
        return "The service's file store is unavailable; try again later."


def new_file_id() -> str:
    return secrets.token_urlsafe(18)


def is_file_id(value: str) -> bool:
    return bool(_SAFE_ID.match(value))


def file_url(base_url: str, file_id: str, file_name: str) -> str:
    """The stable URL of a file: the API serves it (or redirects to the object store) forever."""
    return f"{base_url}/files/{file_id}/{file_name}"


@dataclass
class BlobReader:
    """An open stored file: its size, and its bytes in chunks (read lazily, closed after the last)."""

    size: int
    chunks: Iterator[bytes]


class BlobStore(Protocol):
    #: Where the bytes live, for operators (``file:///…``, ``s3://bucket/prefix``); never a secret.
    location: str

    def put(self, file_id: str, data: bytes, content_type: str) -> None:
        """Store the file whole: readers see all of it or nothing."""
        ...

    def open(self, file_id: str) -> BlobReader | None: ...

    def presigned_url(self, file_id: str, *, file_name: str, content_type: str, expires_seconds: int) -> str | None:
        """A short-lived URL that serves the file without us, or None where the backend has none."""
        ...

    def delete(self, file_id: str) -> None: ...

    def check_writable(self) -> None:
        """Raise :class:`StorageError` saying why new files cannot be stored now."""
        ...
