"""What one API node holds while it admits submissions: request bodies within a memory budget counted
before they are read, and image fetches that cannot hold up anyone else's inline images."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from layerdiffuse_server.api import create_app
from layerdiffuse_server.api.services import Services
from layerdiffuse_server.auth import issue_key
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.settings import Settings

from .api_support import APP, server_settings

MiB = 2**20
IMAGE_TO_IMAGE = f"/queue{APP}/image-to-image"


def inline_body(size: int) -> dict[str, Any]:
    """An image-to-image input whose body is about ``size`` bytes (a data: URI that is no image)."""
    junk = base64.b64encode(b"\0" * (size * 3 // 4)).decode()
    return {"prompt": "x", "image_url": f"data:image/png;base64,{junk}"}


class HeldAdmissions:
    """Image admissions that wait for ``release`` (so the test decides how long bodies are held)."""

    def __init__(self, services: Services) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        original = services.store_image_inputs

        def held(*args: Any, **kwargs: Any) -> dict[str, Any]:
            self.entered.release()
            assert self.release.wait(30), "the test never released the admissions"
            return original(*args, **kwargs)

        services.store_image_inputs = held  # type: ignore[method-assign]


@pytest.fixture
def budgeted(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Services]]:
    """An API without a worker whose bodies may hold 10 MiB at once."""
    services = build_services(
        server_settings(settings, tmp_path, max_body_memory_bytes=10 * MiB, body_memory_wait_seconds=30),
        None,
        model_name="tiny",
    )
    with TestClient(create_app(services)) as client:
        client.headers["Authorization"] = f"Key {issue_key(services.store.keys, 'tests').value}"
        yield client, services


def test_concurrent_large_bodies_never_hold_more_than_the_budget(budgeted: tuple[TestClient, Services]) -> None:
    client, services = budgeted
    budget = services.body_budget()
    held = HeldAdmissions(services)
    body = inline_body(4 * MiB)
    with ThreadPoolExecutor(12) as pool:
        answers = [pool.submit(client.post, IMAGE_TO_IMAGE, json=body) for _ in range(12)]
        # Two 4 MiB bodies fit in 10 MiB: two are admitted, the other ten wait before reading theirs.
        assert held.entered.acquire(timeout=20) and held.entered.acquire(timeout=20)
        assert not held.entered.acquire(timeout=0.5)
        assert 8 * MiB <= budget.held <= budget.capacity
        for _ in range(5):  # the probe answers at once while bodies are held and others wait
            assert client.get("/healthz").status_code == 200
        held.release.set()
        statuses = [answer.result(timeout=60).status_code for answer in answers]
    assert statuses == [200] * 12  # all queued (each then completes with its image refused)
    assert budget.peak <= budget.capacity and budget.held == 0


def test_a_full_budget_answers_503_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    services = build_services(
        server_settings(settings, tmp_path, max_body_memory_bytes=6 * MiB, body_memory_wait_seconds=0.2),
        None,
        model_name="tiny",
    )
    held = HeldAdmissions(services)
    with TestClient(create_app(services)) as client, ThreadPoolExecutor(1) as pool:
        client.headers["Authorization"] = f"Key {issue_key(services.store.keys, 'tests').value}"
        first = pool.submit(client.post, IMAGE_TO_IMAGE, json=inline_body(4 * MiB))
        assert held.entered.acquire(timeout=20)
        refused = client.post(IMAGE_TO_IMAGE, json=inline_body(4 * MiB))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error_type"] == "runner_scheduling_failure"
        assert client.post(f"/queue{APP}", json={"prompt": "small"}).status_code == 200  # small ones still fit
        held.release.set()
        assert first.result(timeout=30).status_code == 200
    assert services.body_budget().held == 0
