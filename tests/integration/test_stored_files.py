"""Stored files on the real SQLite store and local files: whatever fails during a write, no bytes
are left that no row names, and every row left behind is one that retention deletes."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from layerdiffuse_server.api import Services, create_app
from layerdiffuse_server.api.storage_routes import UPLOAD_URL_LIFETIME
from layerdiffuse_server.auth import issue_key
from layerdiffuse_server.errors import StoreError
from layerdiffuse_server.files import LocalBlobStore, StorageError, StoredFiles
from layerdiffuse_server.files.stored_files import PENDING_WRITE_SECONDS
from layerdiffuse_server.lifecycle.retention import sweep
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.settings import Settings
from layerdiffuse_server.store import Store
from layerdiffuse_server.store.contracts import FileRecord
from layerdiffuse_server.testing import FakeClock, FakeEngine
from layerdiffuse_server.worker import GenerationWorker

from ..support.images import png_bytes
from .api_support import APP, server_settings

#: Later than any expiry a test here sets, for listing every row that has one.
FAR_FUTURE = time.time() + 10 * 365 * 86400


def stored_bytes(blobs: LocalBlobStore) -> list[str]:
    """The ids of the files whose bytes are in the directory (not half-written temporaries)."""
    return sorted(path.name for path in blobs.root.glob("*/*") if not path.name.startswith(".partial-"))


def rows(store: Store) -> list[FileRecord]:
    """Every row retention would ever delete (every row written here has an expiry)."""
    return store.files.expired(FAR_FUTURE)


def fail(error: Exception) -> object:
    def failing(*args: object, **kwargs: object) -> None:
        raise error

    return failing


@pytest.fixture
def services(settings: Settings, tmp_path: Path) -> Services:
    return build_services(server_settings(settings, tmp_path, retention_hours=0), None, model_name="tiny")


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Key {issue_key(services.store.keys, 'tests').value}"
        yield test_client


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "files")


def blobs_of(services: Services) -> LocalBlobStore:
    assert isinstance(services.blobs, LocalBlobStore)
    return services.blobs


def test_an_upload_whose_row_cannot_be_written_leaves_no_bytes(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services.store.files, "add", fail(StoreError("the database is away")))
    answer = client.post("/cdn/files/upload", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert answer.status_code == 503
    assert stored_bytes(blobs_of(services)) == []


def test_an_image_input_copy_whose_row_cannot_be_written_leaves_no_bytes(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services.store.files, "add", fail(StoreError("the database is away")))
    image = f"data:image/png;base64,{base64.b64encode(png_bytes()).decode()}"
    answer = client.post(f"/queue{APP}/image-to-image", json={"image_url": image})
    assert answer.status_code == 503
    assert stored_bytes(blobs_of(services)) == []


def test_an_upload_whose_bytes_cannot_be_written_leaves_no_row(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services.blobs, "put", fail(StorageError("the bucket is away")))
    answer = client.post("/cdn/files/upload", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert answer.status_code == 503
    assert rows(services.store) == [] and stored_bytes(blobs_of(services)) == []


def test_an_upload_that_never_arrives_is_swept_even_with_retention_off(services: Services, client: TestClient) -> None:
    initiated = client.post("/rest/storage/upload/initiate", json={"file_name": "a.png", "content_type": "image/png"})
    assert initiated.status_code == 200
    file_id = initiated.json()["file_url"].split("/")[-2]
    files = StoredFiles(services.blobs, services.store.files)
    assert sweep(services.store, files, 0, now=time.time() + UPLOAD_URL_LIFETIME) == (0, 0)  # still writable
    later = time.time() + UPLOAD_URL_LIFETIME + PENDING_WRITE_SECONDS + 1
    assert sweep(services.store, files, 0, now=later) == (0, 1)
    assert services.store.files.get(file_id) is None


def test_a_written_upload_keeps_the_expiry_of_the_retention_period(services: Services, client: TestClient) -> None:
    initiated = client.post("/rest/storage/upload/initiate", json={"file_name": "a.png", "content_type": "image/png"})
    upload_url = initiated.json()["upload_url"].removeprefix("http://testserver")
    assert client.put(upload_url, content=png_bytes(), headers={"Authorization": ""}).status_code == 200
    [record] = [services.store.files.get(initiated.json()["file_url"].split("/")[-2])]
    assert record is not None and record.ready and record.expires_at is None  # retention is off: kept


def test_an_upload_whose_publishing_fails_is_swept_with_its_bytes(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    initiated = client.post("/rest/storage/upload/initiate", json={"file_name": "a.png", "content_type": "image/png"})
    upload_url = initiated.json()["upload_url"].removeprefix("http://testserver")
    monkeypatch.setattr(services.store.files, "mark_ready", fail(StoreError("the database is away")))
    assert client.put(upload_url, content=png_bytes(), headers={"Authorization": ""}).status_code == 503
    [left] = rows(services.store)
    assert not left.ready and stored_bytes(blobs_of(services)) == [left.id]
    monkeypatch.undo()
    files = StoredFiles(services.blobs, services.store.files)
    assert files.sweep_expired(time.time() + UPLOAD_URL_LIFETIME + PENDING_WRITE_SECONDS + 1) == 1
    assert rows(services.store) == [] and stored_bytes(blobs_of(services)) == []


def test_a_row_whose_bytes_never_arrived_and_that_could_not_be_removed_is_swept(
    store: Store, blobs: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = StoredFiles(blobs, store.files)
    with monkeypatch.context() as patched:
        patched.setattr(blobs, "put", fail(StorageError("the bucket is away")))
        patched.setattr(store.files, "delete", fail(StoreError("the database is away too")))
        with pytest.raises(StorageError):
            files.store(png_bytes(), file_name="a.png", content_type="image/png", key_id="k", expires_at=None)
    [left] = rows(store)
    assert not left.ready and stored_bytes(blobs) == []
    assert left.expires_at is not None and left.expires_at <= time.time() + PENDING_WRITE_SECONDS
    assert files.sweep_expired(time.time() + PENDING_WRITE_SECONDS + 1) == 1
    assert rows(store) == []


def test_retention_removes_a_row_whose_bytes_are_missing(store: Store, blobs: LocalBlobStore) -> None:
    files = StoredFiles(blobs, store.files)
    record = files.store(png_bytes(), file_name="a.png", content_type="image/png", key_id="k", expires_at=5.0)
    blobs.delete(record.id)  # gone already (deleted by hand, a lost object)
    assert sweep(store, files, 0, now=10.0) == (0, 1)
    assert store.files.get(record.id) is None


def test_a_file_whose_publishing_fails_is_discarded_at_once(
    store: Store, blobs: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = StoredFiles(blobs, store.files)
    monkeypatch.setattr(store.files, "mark_ready", fail(StoreError("the database is away")))
    with pytest.raises(StoreError):
        files.store(png_bytes(), file_name="a.png", content_type="image/png", key_id="k", expires_at=None)
    assert rows(store) == [] and stored_bytes(blobs) == []


def test_an_output_is_stored_unpublished_with_an_expiry_and_a_failed_write_leaves_nothing(
    store: Store, blobs: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = StoredFiles(blobs, store.files, clock=FakeClock(1000.0))
    output = files.store(
        b"png", file_name="o.png", content_type="image/png", key_id="k", expires_at=None, request_id="r", publish=False
    )
    stored = store.files.get(output.id)
    assert stored is not None and not stored.ready and stored.expires_at == 1000.0 + PENDING_WRITE_SECONDS
    assert stored.created_at == 1000.0 and stored_bytes(blobs) == [output.id]
    files.discard([output.id])
    monkeypatch.setattr(blobs, "put", fail(StorageError("the bucket is away")))
    with pytest.raises(StorageError):
        files.store(b"png", file_name="o.png", content_type="image/png", key_id="k", expires_at=None, publish=False)
    assert rows(store) == [] and stored_bytes(blobs) == []


def test_a_write_the_object_store_failed_after_storing_leaves_neither_bytes_nor_row(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 can answer an error for a write it has stored (a timeout after the commit)."""
    put = services.blobs.put

    def stored_then_failed(*args: object, **kwargs: object) -> None:
        put(*args, **kwargs)  # type: ignore[arg-type]
        raise StorageError("the connection broke after the write")

    monkeypatch.setattr(services.blobs, "put", stored_then_failed)
    answer = client.post("/cdn/files/upload", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert answer.status_code == 503
    assert rows(services.store) == [] and stored_bytes(blobs_of(services)) == []


def test_copies_made_before_the_database_failed_on_a_later_image_are_discarded(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = services.store.files.add
    added: list[str] = []

    def second_fails(record: FileRecord, *args: object, **kwargs: object) -> object:
        if added:
            raise StoreError("the database went away")
        added.append(record.id)
        return add(record, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(services.store.files, "add", second_fails)
    background, blended = (
        f"data:image/png;base64,{base64.b64encode(png_bytes(colour=colour)).decode()}"
        for colour in ((10, 20, 30, 255), (200, 40, 40, 255))
    )
    answer = client.post(
        f"/queue{APP}/background-blended-to-foreground",
        json={"background_image_url": background, "blended_image_url": blended},
    )
    assert answer.status_code == 503 and len(added) == 1
    assert services.store.files.get(added[0]) is None and stored_bytes(blobs_of(services)) == []


def test_a_request_whose_third_image_cannot_be_stored_keeps_none_of_its_images(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    put = services.blobs.put
    attempts: list[object] = []

    def third_fails(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        if len(attempts) == 3:
            raise StorageError("the disk is full")
        put(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(services.blobs, "put", third_fails)
    body = {"width": 64, "height": 64, "num_inference_steps": 1, "seed": 1, "num_images": 4}
    request_id = client.post(f"/queue{APP}", json=body).json()["request_id"]
    worker = GenerationWorker(
        services.manager, services.blobs, FakeEngine, base_url=services.base_url, model_name="tiny"
    )
    worker.engine = FakeEngine()
    assert worker.run_once()
    assert len(attempts) == 3  # the fourth image was not tried
    assert client.get(f"/queue{APP}/requests/{request_id}").status_code == 500
    assert rows(services.store) == [] and stored_bytes(blobs_of(services)) == []
