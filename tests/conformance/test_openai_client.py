"""The unmodified ``openai`` Python SDK against a real ``layerdiffuse serve`` process (tiny model),
reached by ``base_url`` and a key only."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from ..support.images import png_bytes
from .conftest import ServerProcess

pytestmark = pytest.mark.conformance

SMALL = {"seed": 21, "num_inference_steps": 3}


def client_for(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_url}/v1", api_key=key, max_retries=0)


def rgba(b64: str | None) -> np.ndarray:
    assert b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.mode == "RGBA"
    return np.asarray(image)


def test_two_transparent_pngs_with_alpha_that_varies(server: ServerProcess, api_key: str) -> None:
    result = client_for(server, api_key).images.generate(
        model="tiny", prompt="a red star with a soft glow", background="transparent", n=2, size="64x64",
        extra_body=SMALL,
    )  # fmt: skip
    assert result.data is not None and len(result.data) == 2
    for image in result.data:
        alpha = rgba(image.b64_json)[..., 3]
        assert alpha.shape == (64, 64) and alpha.min() < alpha.max()


def test_webp_with_alpha(server: ServerProcess, api_key: str) -> None:
    result = client_for(server, api_key).images.generate(
        prompt="a star", output_format="webp", output_compression=80, size="64x64", extra_body=SMALL
    )
    assert result.data is not None and result.output_format == "webp"
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert image.format == "WEBP" and image.mode == "RGBA"


def test_edit_with_a_file(server: ServerProcess, api_key: str) -> None:
    result = client_for(server, api_key).images.edit(
        image=("layer.png", png_bytes((64, 64)), "image/png"), prompt="a red square", extra_body=SMALL
    )
    assert result.data is not None and result.size == "64x64"
    assert rgba(result.data[0].b64_json).shape == (64, 64, 4)


def test_jpeg_with_transparency_and_a_wrong_key_raise_the_sdk_errors(server: ServerProcess, api_key: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client_for(server, api_key).images.generate(prompt="a star", background="transparent", output_format="jpeg")
    with pytest.raises(openai.AuthenticationError):
        client_for(server, "0123456789ab:wrong").images.generate(prompt="a star")


def test_another_key_cannot_reach_the_request_behind_a_url(server: ServerProcess, api_key: str) -> None:
    """File URLs are capabilities (unguessable, served without a key, as fal's CDN URLs): whoever is
    given one can download it. What is per key is the request: another key cannot find it."""
    raw = client_for(server, api_key).images.with_raw_response.generate(
        prompt="a star", response_format="url", size="64x64", extra_body=SMALL
    )
    request_id = raw.headers["x-request-id"]
    url = raw.parse().data[0].url  # type: ignore[index]
    assert url is not None and httpx.get(url).content[:8] == b"\x89PNG\r\n\x1a\n"
    other = server.create_key("someone else")
    result_path = f"{server.http_url}/queue/fal-ai/layer-diffusion/requests/{request_id}"
    assert httpx.get(result_path, headers={"Authorization": f"Key {other}"}).status_code == 404
    own = httpx.get(result_path, headers={"Authorization": f"Key {api_key}"})
    assert own.status_code == 200 and own.json()["image"]["url"] == url


def test_streaming_gives_the_completed_images(server: ServerProcess, api_key: str) -> None:
    events = list(
        client_for(server, api_key).images.generate(prompt="a star", size="64x64", stream=True, extra_body=SMALL)
    )
    assert [event.type for event in events] == ["image_generation.completed"]
    assert rgba(events[0].b64_json).shape == (64, 64, 4)  # type: ignore[union-attr]
