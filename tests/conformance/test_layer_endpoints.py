"""The image endpoints (image to image, the four conditioned layers) through both unmodified official
clients, on the tiny model: inputs uploaded the clients' own ways, any size in, the same size out."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from layerdiffuse_server.endpoints import ENDPOINTS, Endpoint

from .conftest import ServerProcess, python_client_env, run_js, run_python

pytestmark = pytest.mark.conformance

IMAGE_ENDPOINTS = [endpoint for endpoint in ENDPOINTS if endpoint.path]
SMALL = {"prompt": "a glass of water", "num_inference_steps": 2, "seed": 5}
#: Not a multiple of 64: the model runs at 128×128 and the result is cropped back.
SIZE = (100, 70)


def input_png(index: int) -> bytes:
    """A transparent 100×70 image: a coloured square, soft-edged, on nothing."""
    rows, columns = np.ogrid[: SIZE[1], : SIZE[0]]
    alpha = np.clip(30 - np.maximum(abs(rows - 35), abs(columns - 50)), 0, 10) / 10
    rgba = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    rgba[..., :3] = [(60 * index) % 256, 120, 200]
    rgba[..., 3] = (alpha * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, "PNG")
    return buffer.getvalue()


def check_output(output: dict, endpoint: Endpoint) -> None:
    image = output["image"]
    assert (image["width"], image["height"]) == SIZE and output["seed"] == 5
    png = httpx.get(image["url"])
    assert png.status_code == 200 and len(png.content) == image["file_size"]
    pixels = np.asarray(Image.open(io.BytesIO(png.content)))
    assert pixels.shape == (SIZE[1], SIZE[0], 4)
    if not endpoint.transparent:
        assert (pixels[..., 3] == 255).all()  # a blended image or a background: opaque


@pytest.mark.parametrize("endpoint", IMAGE_ENDPOINTS, ids=lambda endpoint: endpoint.path)
def test_python_client(
    endpoint: Endpoint, server: ServerProcess, api_key: str, connect_proxy: str, tmp_path: Path
) -> None:
    files = {}
    for index, name in enumerate(endpoint.image_fields):
        path = tmp_path / f"{name}.png"
        path.write_bytes(input_png(index))
        files[name] = str(path)
    # upload_file talks to fal's storage hosts: the CONNECT proxy brings those calls here too.
    env = python_client_env(server, api_key, via_proxy=connect_proxy)
    outcome = run_python("layer", {"path": endpoint.path, "input": SMALL, "files": files}, env)
    assert outcome["ok"], outcome
    check_output(outcome["output"], endpoint)


@pytest.mark.parametrize("endpoint", IMAGE_ENDPOINTS, ids=lambda endpoint: endpoint.path)
def test_js_client(endpoint: Endpoint, node: str, server: ServerProcess, api_key: str) -> None:
    files = {name: base64.b64encode(input_png(index)).decode() for index, name in enumerate(endpoint.image_fields)}
    outcome = run_js(node, server, api_key, "layer", {"path": endpoint.path, "input": SMALL, "files": files})
    assert outcome["ok"], outcome
    assert outcome["requestId"]
    check_output(outcome["data"], endpoint)


def test_a_missing_image_is_a_422_naming_the_field(server: ServerProcess, api_key: str) -> None:
    answer = httpx.post(
        f"{server.http_url}/run/fal-ai/layer-diffusion/image-to-image",
        json=SMALL,
        headers={"Authorization": f"Key {api_key}"},
    )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_an_unknown_sub_path_is_a_404(server: ServerProcess, api_key: str) -> None:
    answer = httpx.post(
        f"{server.http_url}/run/fal-ai/layer-diffusion/no-such-thing",
        json=SMALL,
        headers={"Authorization": f"Key {api_key}"},
    )
    assert answer.status_code == 404 and "image-to-image" in answer.json()["detail"]


def test_an_image_on_a_private_address_is_refused(server: ServerProcess, api_key: str) -> None:
    answer = httpx.post(
        f"{server.http_url}/run/fal-ai/layer-diffusion/image-to-image",
        json=SMALL | {"image_url": "http://127.0.0.1:9/secret.png"},
        headers={"Authorization": f"Key {api_key}"},
    )
    assert answer.status_code == 422
    detail = answer.json()["detail"][0]
    assert detail["loc"] == ["body", "image_url"] and "127.0.0.1" in detail["msg"]
