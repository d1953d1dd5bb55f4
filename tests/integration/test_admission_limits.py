"""What one API node holds while it admits submissions: request bodies within a memory budget counted
before they are read, and image fetches that cannot hold up anyone else's inline images."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

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


def test_a_full_budget_answers_503_to_submissions_and_uploads(settings: Settings, tmp_path: Path) -> None:
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
        upload = {"content": b"\0" * (4 * MiB), "headers": {"Content-Type": "application/octet-stream"}}
        refused = client.post("/cdn/files/upload", **upload)  # uploads count against the same budget
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        held.release.set()
        assert first.result(timeout=30).status_code == 200
        assert client.post("/cdn/files/upload", **upload).status_code == 200  # room again
    assert services.body_budget().held == 0


def wait_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class SlowOrigin:
    """An image server on 127.0.0.1 that answers only once ``release`` is set (or after 20 s)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.waiting = 0
        self.most_waiting = 0
        buffer = io.BytesIO()
        Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(buffer, "PNG")
        image = buffer.getvalue()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with origin.lock:
                    origin.waiting += 1
                    origin.most_waiting = max(origin.most_waiting, origin.waiting)
                origin.release.wait(20)
                with origin.lock:
                    origin.waiting -= 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slow.png"


@pytest.fixture
def slow_origin() -> Iterator[SlowOrigin]:
    origin = SlowOrigin()
    thread = threading.Thread(target=origin.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield origin
    origin.release.set()
    origin.server.shutdown()
    origin.server.server_close()


def test_one_keys_slow_fetches_hold_up_neither_inline_images_nor_other_keys(
    settings: Settings, tmp_path: Path, slow_origin: SlowOrigin
) -> None:
    services = build_services(
        server_settings(settings, tmp_path, webhook_allowed_networks=["127.0.0.1/32"]), None, model_name="tiny"
    )
    image = io.BytesIO()
    Image.new("RGBA", (8, 8)).save(image, "PNG")
    inline = {"prompt": "x", "image_url": "data:image/png;base64," + base64.b64encode(image.getvalue()).decode()}
    keys = [f"Key {issue_key(services.store.keys, name).value}" for name in ("a", "b")]
    with TestClient(create_app(services)) as client, ThreadPoolExecutor(14) as pool:

        def post(key: str, body: dict[str, Any]) -> int:
            return client.post(IMAGE_TO_IMAGE, json=body, headers={"Authorization": key}).status_code

        slow = [pool.submit(post, keys[0], {"prompt": "x", "image_url": slow_origin.url}) for _ in range(12)]
        wait_until(lambda: slow_origin.waiting >= 2)
        # Key A's fetches hang. Key B's data: URI and its fetch, and key A's own data: URI, go in now.
        assert pool.submit(post, keys[1], inline).result(timeout=10) == 200
        assert pool.submit(post, keys[0], inline).result(timeout=10) == 200
        other = pool.submit(post, keys[1], {"prompt": "x", "image_url": slow_origin.url})
        wait_until(lambda: slow_origin.waiting >= 3)
        assert slow_origin.waiting == 3 and not any(answer.done() for answer in slow)
        assert slow_origin.most_waiting == 3  # key A holds its share of 2, whatever it sent
        slow_origin.release.set()
        assert [answer.result(timeout=60) for answer in slow] == [200] * 12
        assert other.result(timeout=30) == 200
