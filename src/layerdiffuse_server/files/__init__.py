"""Bytes of stored files (outputs and uploads) behind one contract, on a local directory or S3, and
:class:`StoredFiles`, the one owner of files' rows and bytes together.

``open_blob_store`` reads ``LAYERDIFFUSE_STORAGE_URL``: ``file:///path`` or ``s3://bucket/prefix``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from .blobs import BlobReader, BlobStore, StorageError, file_url, is_file_id, new_file_id
from .content import (
    UnsupportedContentError,
    check_content_type,
    check_image,
    check_upload,
    content_disposition,
    decode_data_uri,
    is_inline,
    safe_file_name,
)
from .local import LocalBlobStore
from .stored_files import StoredFiles

__all__ = [
    "BlobReader",
    "BlobStore",
    "LocalBlobStore",
    "StorageError",
    "StoredFiles",
    "UnsupportedContentError",
    "check_content_type",
    "check_image",
    "check_upload",
    "content_disposition",
    "decode_data_uri",
    "file_url",
    "is_file_id",
    "is_inline",
    "new_file_id",
    "open_blob_store",
    "safe_file_name",
]


def open_blob_store(url: str) -> BlobStore:
    """The blob store a storage URL names."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"file:// storage URLs name a local path (file:///path), got {url!r}")
        return LocalBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"s3:// storage URLs name a bucket (s3://bucket/prefix), got {url!r}")
        from .s3 import S3BlobStore

        return S3BlobStore(parts.netloc, unquote(parts.path))
    raise StorageError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")
