"""The API in-process for integration tests: settings, clients with a key, waiting for results."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from layerdiffuse_server.api import Services, create_app
from layerdiffuse_server.auth import issue_key
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.settings import Settings
from layerdiffuse_server.worker import GenerationWorker

SMALL = {"prompt": "a glass bottle", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 5}
APP = "/fal-ai/layer-diffusion"


def server_settings(settings: Settings, tmp_path: Path, **changes: object) -> Settings:
    values = {
        "data_dir": tmp_path / "data",
        "public_url": "http://testserver",
        "webhook_allowed_networks": [],
        "shutdown_grace_seconds": 2.0,
    }
    return settings.model_copy(update=values | changes)


@pytest.fixture
def services(settings: Settings, tmp_path: Path, tiny_pipeline: object) -> Services:
    return build_services(server_settings(settings, tmp_path), lambda: tiny_pipeline, model_name="tiny")


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as test_client:
        test_client.headers["Authorization"] = f"Key {issue_key(services.store.keys, 'tests').value}"
        yield test_client


@pytest.fixture
def idle_client(settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    """An API without a worker: submitted requests stay queued."""
    idle = build_services(server_settings(settings, tmp_path), None, model_name="tiny")
    with TestClient(create_app(idle)) as test_client:
        test_client.headers["Authorization"] = f"Key {issue_key(idle.store.keys, 'tests').value}"
        yield test_client


def wait_completed(client: TestClient, request_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/queue{APP}/requests/{request_id}/status", params={"logs": "1"})
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 202
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} did not complete")


@pytest.fixture
def queue_only(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Services]]:
    """An API whose requests wait until the test runs a worker by hand (see :func:`hand_worker`)."""
    services = build_services(server_settings(settings, tmp_path), None, model_name="tiny")
    with TestClient(create_app(services)) as client:
        client.headers["Authorization"] = f"Key {issue_key(services.store.keys, 'tests').value}"
        yield client, services


def hand_worker(services: Services, engine: object, max_batch_size: int) -> GenerationWorker:
    """A worker on ``services``' queue with ``engine`` already loaded, run by the test (``run_once``)."""
    worker = GenerationWorker(
        services.manager,
        services.blobs,
        lambda: engine,  # type: ignore[arg-type, return-value]
        base_url=services.base_url,
        model_name="tiny",
        max_batch_size=max_batch_size,
    )
    worker.engine = engine  # type: ignore[assignment]
    return worker
