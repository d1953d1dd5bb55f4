"""Bytes of stored files (outputs and uploads): a small blob-store contract and its local-disk backend."""

from .blobs import BlobStore, LocalBlobStore, file_url, new_file_id
from .content import UnsupportedContentError, check_content

__all__ = ["BlobStore", "LocalBlobStore", "UnsupportedContentError", "check_content", "file_url", "new_file_id"]
