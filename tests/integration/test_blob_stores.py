"""The blob-store contract on both backends: a local directory and real S3 (Ceph's radosgw)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from layerdiffuse_server.files import BlobStore, StorageError, new_file_id, open_blob_store


@pytest.fixture(params=["file", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "file":
        yield open_blob_store((tmp_path / "files").as_uri())
    else:
        yield open_blob_store(f"s3://{request.getfixturevalue('s3_bucket')}/outputs/")


def read(blobs: BlobStore, file_id: str) -> bytes | None:
    blob = blobs.open(file_id)
    return None if blob is None else b"".join(blob.chunks)


def test_files_are_stored_whole_read_back_and_deleted(blobs: BlobStore) -> None:
    file_id, data = new_file_id(), bytes(range(256)) * 2000  # several chunks
    assert blobs.open(file_id) is None
    blobs.put(file_id, data, "image/png")
    blob = blobs.open(file_id)
    assert blob is not None and blob.size == len(data) and b"".join(blob.chunks) == data
    blobs.delete(file_id)
    blobs.delete(file_id)  # deleting what is gone is no error
    assert read(blobs, file_id) is None
    blobs.check_writable()
    assert blobs.location.startswith(("file://", "s3://"))


def test_presigned_urls_where_the_backend_has_them(blobs: BlobStore) -> None:
    file_id = new_file_id()
    blobs.put(file_id, b"\x89PNG-bytes", "image/png")
    url = blobs.presigned_url(file_id, file_name="a.png", content_type="image/png", expires_seconds=60)
    if blobs.location.startswith("file://"):
        assert url is None
        return
    assert url is not None
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"\x89PNG-bytes"
    assert answer.headers["content-type"] == "image/png"
    assert httpx.get(url.replace("Signature=", "Signature=0")).status_code == 403  # the signature is checked


def test_an_unreachable_bucket_is_a_clear_storage_error(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = open_blob_store(f"s3://{s3_bucket}-missing/x")
    with pytest.raises(StorageError, match=f"s3://{s3_bucket}-missing/x/"):
        missing.check_writable()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    unreachable = open_blob_store(f"s3://{s3_bucket}")
    with pytest.raises(StorageError, match="cannot store a file"):
        unreachable.put(new_file_id(), b"x", "image/png")


def test_storage_urls_are_checked() -> None:
    for url in ("s3://", "ftp://host/x", "file://host/x"):
        with pytest.raises(StorageError):
            open_blob_store(url)
