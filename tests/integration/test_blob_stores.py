"""The blob-store contract on both backends: a local directory and real S3 (Ceph's radosgw)."""

from __future__ import annotations

import os
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
    assert answer.headers["content-disposition"] == 'inline; filename="a.png"'
    assert httpx.get(url.replace("Signature=", "Signature=0")).status_code == 403  # the signature is checked
    # Only raster images are inline, on the object store's origin as on the API's.
    blobs.put(file_id, b"<svg/>", "image/svg+xml")
    url = blobs.presigned_url(file_id, file_name="a.svg", content_type="image/svg+xml", expires_seconds=60)
    assert url is not None
    assert httpx.get(url).headers["content-disposition"] == 'attachment; filename="a.svg"'


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


def test_retention_deletes_expired_files_from_the_store(blobs: BlobStore, tmp_path: Path) -> None:
    import time

    from layerdiffuse_server.files import StoredFiles
    from layerdiffuse_server.lifecycle.retention import sweep
    from layerdiffuse_server.store import open_store
    from layerdiffuse_server.store.contracts import FileRecord

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    kept, expired = new_file_id(), new_file_id()
    for file_id, expires_at in ((kept, time.time() + 3600), (expired, time.time() - 1)):
        blobs.put(file_id, b"bytes", "image/png")
        store.files.add(FileRecord(file_id, "a.png", "image/png", 5, "k", None, time.time(), expires_at, True))
    assert sweep(store, StoredFiles(blobs, store.files), retention_hours=168, now=time.time()) == (0, 1)
    assert read(blobs, expired) is None and read(blobs, kept) == b"bytes"
    assert store.files.get(expired) is None and store.files.get(kept) is not None
    store.close()


def test_file_urls_redirect_to_presigned_urls_when_asked(s3_bucket: str, settings: object, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from layerdiffuse_server.api import create_app
    from layerdiffuse_server.auth import issue_key
    from layerdiffuse_server.server.bootstrap import build_services

    from ..support.images import png_bytes
    from .api_support import server_settings

    configured = server_settings(settings, tmp_path, storage_url=f"s3://{s3_bucket}/x", file_delivery="redirect")  # type: ignore[arg-type]
    services = build_services(configured)
    with TestClient(create_app(services), follow_redirects=False) as client:
        client.headers["Authorization"] = f"Key {issue_key(services.store.keys, 'tests').value}"
        token = client.post("/rest/storage/auth/token").json()["token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png", "X-Fal-File-Name": "r.png"}
        url = client.post("/cdn/files/upload", content=png_bytes(), headers=headers).json()["access_url"]
        answer = client.get(url.removeprefix("http://testserver"))
        assert answer.status_code == 307
        presigned = answer.headers["location"]
        assert presigned.startswith(os.environ["AWS_ENDPOINT_URL"])
        fetched = httpx.get(presigned)
        assert fetched.content == png_bytes() and fetched.headers["content-type"] == "image/png"
        policy = client.get("/").headers["content-security-policy"]
        assert os.environ["AWS_ENDPOINT_URL"] in policy  # the playground may show and download them


def test_retention_deletes_a_row_whose_bytes_never_arrived(blobs: BlobStore, tmp_path: Path) -> None:
    from layerdiffuse_server.files import StoredFiles
    from layerdiffuse_server.lifecycle.retention import sweep
    from layerdiffuse_server.store import open_store
    from layerdiffuse_server.store.contracts import FileRecord

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    file_id = new_file_id()  # a writer that died between its row and its bytes
    store.files.add(FileRecord(file_id, "a.png", "image/png", 5, "k", None, 1.0, 2.0, ready=False))
    assert sweep(store, StoredFiles(blobs, store.files), retention_hours=0, now=3.0) == (0, 1)
    assert store.files.get(file_id) is None
    store.close()
