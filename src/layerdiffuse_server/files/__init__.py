"""Bytes of stored files (outputs and uploads): a small blob-store contract and its local-disk backend."""

from .blobs import BlobStore, LocalBlobStore
from .content import UnsupportedContentError, check_content

__all__ = ["BlobStore", "LocalBlobStore", "UnsupportedContentError", "check_content"]
