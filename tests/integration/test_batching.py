"""Request batching in the worker: compatible queued requests share one denoising run, each keeps its
own seed and image, a cancel inside a batch answers only that request."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from layerdiffuse_server.api import Services
from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
from layerdiffuse_server.schemas import GenerationParams

from .api_support import APP, SMALL, hand_worker, wait_completed


def png_pixels(client: TestClient, url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(url.removeprefix("http://testserver")).content)))


def test_compatible_requests_run_as_one_batch_with_their_own_seeds(
    queue_only: tuple[TestClient, Services], tiny_pipeline: TransparentSDXLPipeline
) -> None:
    client, services = queue_only
    inputs = [SMALL | {"seed": 21, "prompt": "a cup"}, SMALL | {"seed": 22}, SMALL | {"seed": 23, "prompt": "a hat"}]
    other = SMALL | {"num_inference_steps": 3}  # another step count: cannot join
    ids = [client.post(f"/queue{APP}", json=body).json()["request_id"] for body in [inputs[0], other, *inputs[1:]]]
    worker = hand_worker(services, tiny_pipeline, max_batch_size=3)

    assert worker.run_once()
    batched = [ids[0], ids[2], ids[3]]
    for request_id in batched:
        status = wait_completed(client, request_id)
        assert status["metrics"]["batch_size"] == 3
        assert any("batched with 2 other request(s)" in line["message"] for line in status["logs"])
    assert client.get(f"/queue{APP}/requests/{ids[1]}/status").json()["status"] == "IN_QUEUE"
    assert worker.run_once()
    assert "batch_size" not in wait_completed(client, ids[1])["metrics"]

    for request_id, body in zip(batched, inputs, strict=True):
        output = client.get(f"/queue{APP}/requests/{request_id}").json()
        assert output["seed"] == body["seed"]
        alone = tiny_pipeline.generate(GenerationParams(**body)).images[0].rgba
        difference = np.abs(png_pixels(client, output["image"]["url"]).astype(int) - alone.astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.005


def test_batches_respect_their_size_limit_and_priority(
    queue_only: tuple[TestClient, Services], tiny_pipeline: TransparentSDXLPipeline
) -> None:
    client, services = queue_only
    low = client.post(f"/queue{APP}", json=SMALL, headers={"X-Fal-Queue-Priority": "low"}).json()["request_id"]
    normal = [client.post(f"/queue{APP}", json=SMALL).json()["request_id"] for _ in range(3)]
    worker = hand_worker(services, tiny_pipeline, max_batch_size=2)
    assert worker.run_once()
    assert [wait_completed(client, request_id)["metrics"]["batch_size"] for request_id in normal[:2]] == [2, 2]
    statuses = [
        client.get(f"/queue{APP}/requests/{request_id}/status").json()["status"] for request_id in (normal[2], low)
    ]
    assert statuses == ["IN_QUEUE", "IN_QUEUE"]


def test_cancelling_one_request_of_a_batch_leaves_the_others_running(
    queue_only: tuple[TestClient, Services], tiny_pipeline: TransparentSDXLPipeline
) -> None:
    client, services = queue_only
    long = SMALL | {"num_inference_steps": 40}
    keep, cancel = (client.post(f"/queue{APP}", json=long | {"seed": seed}).json()["request_id"] for seed in (1, 2))
    worker = hand_worker(services, tiny_pipeline, max_batch_size=4)
    running = threading.Thread(target=worker.run_once)
    running.start()
    try:
        while not any("Denoising step" in line["message"] for line in wait_logs(client, cancel)):
            time.sleep(0.02)
        assert client.put(f"/queue{APP}/requests/{cancel}/cancel").status_code == 202
        cancelled = wait_completed(client, cancel)
        assert client.get(f"/queue{APP}/requests/{cancel}").status_code == 499
        assert any("Cancelled between denoising steps" in line["message"] for line in cancelled["logs"])
    finally:
        running.join(120)
    kept = wait_completed(client, keep)
    assert any(line["message"] == "Denoising step 40/40" for line in kept["logs"])
    assert client.get(f"/queue{APP}/requests/{keep}").json()["seed"] == 1


def wait_logs(client: TestClient, request_id: str) -> list[dict]:
    return client.get(f"/queue{APP}/requests/{request_id}/status", params={"logs": "1"}).json()["logs"]
