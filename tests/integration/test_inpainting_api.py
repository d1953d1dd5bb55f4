"""The inpainting endpoint through the API: a request completes with the kept pixels intact, and
masks that are no image or mark nothing are 422s that name ``mask_url``."""

from __future__ import annotations

import base64
import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from .api_support import APP, wait_completed

INPAINTING = f"{APP}/inpainting"


def data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_and_mask() -> tuple[np.ndarray, np.ndarray]:
    rows, columns = np.mgrid[:64, :64]
    image = np.stack([np.full((64, 64), 30), columns * 4, rows * 4, np.full((64, 64), 200)], axis=-1).astype(np.uint8)
    mask = np.full((64, 64, 4), 255, np.uint8)
    mask[16:48, 16:48, 3] = 0
    return image, mask


def body(image: str, mask: str) -> dict[str, object]:
    return {"image_url": image, "mask_url": mask, "prompt": "a lamp", "num_inference_steps": 2, "seed": 4}


def test_an_inpainting_request_keeps_the_pixels_outside_the_mask(client: TestClient) -> None:
    image, mask = image_and_mask()
    answer = client.post(f"/run{INPAINTING}", json=body(data_uri(image), data_uri(mask)))
    assert answer.status_code == 200, answer.text
    output = answer.json()
    assert (output["image"]["width"], output["image"]["height"]) == (64, 64)
    download = client.get(output["image"]["url"].removeprefix("http://testserver"))
    result = np.asarray(Image.open(io.BytesIO(download.content)).convert("RGBA"))
    kept = mask[..., 3] == 255
    assert np.array_equal(result[kept], image[kept])
    assert not np.array_equal(result[24:40, 24:40], image[24:40, 24:40])


def test_a_queued_inpainting_request_completes(client: TestClient) -> None:
    image, mask = image_and_mask()
    submitted = client.post(f"/queue{INPAINTING}", json=body(data_uri(image), data_uri(mask)))
    assert submitted.status_code == 200, submitted.text
    assert wait_completed(client, submitted.json()["request_id"])["status"] == "COMPLETED"
    result = client.get(submitted.json()["response_url"].split("testserver")[-1])
    assert result.status_code == 200 and result.json()["has_transparency"] == [True]


def test_a_mask_without_alpha_is_a_422(client: TestClient) -> None:
    image, _ = image_and_mask()
    rgb_mask = np.zeros((64, 64, 3), np.uint8)  # no alpha channel: nothing is marked
    submitted = client.post(f"/queue{INPAINTING}", json=body(data_uri(image), data_uri(rgb_mask)))
    assert submitted.status_code == 200
    wait_completed(client, submitted.json()["request_id"])
    result = client.get(submitted.json()["response_url"].split("testserver")[-1])
    assert result.status_code == 422, result.text
    detail = result.json()["detail"][0]
    assert detail["loc"] == ["body", "mask_url"] and "opaque everywhere" in detail["msg"]


def test_a_mask_that_is_no_image_is_a_422(client: TestClient) -> None:
    image, _ = image_and_mask()
    not_an_image = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    answer = client.post(f"/run{INPAINTING}", json=body(data_uri(image), not_an_image))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "mask_url"]
    missing = client.post(f"/run{INPAINTING}", json={"image_url": data_uri(image)})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "mask_url"]
