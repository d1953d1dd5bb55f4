"""The OpenAI Images routes in-process, driven by the unmodified ``openai`` SDK over the test
client (real SQLite store, real tiny model, real worker): fields, shapes and errors."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from layerdiffuse_server.api import Services, create_app
from layerdiffuse_server.auth import issue_key
from layerdiffuse_server.results import GenerationResult
from layerdiffuse_server.schemas import GenerationParams
from layerdiffuse_server.server.bootstrap import build_services
from layerdiffuse_server.settings import Settings
from layerdiffuse_server.store.contracts import RequestState
from layerdiffuse_server.testing import FakeEngine

from ..server_process import free_port
from ..support.images import png_bytes
from .api_support import server_settings

SMALL = {"seed": 5, "num_inference_steps": 2}


@pytest.fixture
def test_client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as client:
        yield client


def sdk(test_client: TestClient, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=test_client, max_retries=0)


@pytest.fixture
def client(services: Services, test_client: TestClient) -> openai.OpenAI:
    return sdk(test_client, issue_key(services.store.keys, "tests").value)


def decoded(b64: str | None) -> Image.Image:
    assert b64 is not None
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_two_transparent_pngs_as_base64(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="tiny", prompt="a red star", background="transparent", n=2, size="64x64", extra_body=SMALL
    )
    assert result.data is not None and len(result.data) == 2
    assert (result.background, result.output_format, result.size) == ("transparent", "png", "64x64")
    for image in result.data:
        picture = decoded(image.b64_json)
        assert picture.format == "PNG" and picture.mode == "RGBA" and picture.size == (64, 64)
    assert result.data[0].b64_json != result.data[1].b64_json


def test_webp_keeps_the_alpha_and_opaque_is_over_white(client: openai.OpenAI) -> None:
    webp = client.images.generate(prompt="a star", size="64x64", output_format="webp", extra_body=SMALL)
    assert webp.data is not None
    picture = decoded(webp.data[0].b64_json)
    assert picture.format == "WEBP" and picture.mode == "RGBA"
    png = client.images.generate(prompt="a star", size="64x64", extra_body=SMALL)
    assert png.data is not None
    straight = np.asarray(decoded(png.data[0].b64_json).convert("RGBA"))
    # Lossless WebP (the default compression): the same pixels as the PNG.
    assert np.array_equal(np.asarray(picture.convert("RGBA")), straight)
    jpeg = client.images.generate(prompt="a star", size="64x64", output_format="jpeg", extra_body=SMALL)
    assert jpeg.data is not None and jpeg.background == "opaque"
    opaque = decoded(jpeg.data[0].b64_json)
    assert opaque.format == "JPEG" and opaque.mode == "RGB"
    alpha = straight[..., 3:4] / 255.0
    over_white = straight[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(np.asarray(opaque, dtype=float) - over_white).mean() < 8


def test_jpeg_with_a_transparent_background_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="a star", background="transparent", output_format="jpeg")
    assert raised.value.param == "background"
    assert raised.value.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 9}, "n"),
        ({"size": "10x10"}, "size"),
        ({"size": "big"}, "size"),
        ({"extra_body": {"colour": 1}}, "colour"),
    ],
)
def test_refusals_name_the_parameter(client: openai.OpenAI, fields: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="a star", **fields)
    assert raised.value.param == param
    assert isinstance(raised.value.body, dict) and raised.value.body["message"]


def test_an_unknown_model_is_not_found_and_models_lists_the_served_ones(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["tiny"]
    with pytest.raises(openai.NotFoundError) as raised:
        client.images.generate(model="gpt-image-1", prompt="a star")
    assert raised.value.code == "model_not_found"


def test_a_wrong_key_is_an_authentication_error(test_client: TestClient) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(test_client, "nobody:nothing").images.generate(prompt="a star")
    with pytest.raises(openai.AuthenticationError):
        sdk(test_client, "nobody:nothing").models.list()


def test_url_answers_name_stored_files(client: openai.OpenAI, test_client: TestClient) -> None:
    for output_format in ("png", "webp"):
        result = client.images.generate(
            prompt="a star", size="64x64", response_format="url", output_format=output_format, extra_body=SMALL
        )
        assert result.data is not None and result.data[0].url is not None
        response = test_client.get(result.data[0].url.removeprefix("http://testserver"))
        assert response.status_code == 200
        assert Image.open(io.BytesIO(response.content)).format == output_format.upper()


def test_edit_of_one_image_keeps_its_size(client: openai.OpenAI) -> None:
    source = png_bytes((64, 64), (30, 200, 40, 160))
    result = client.images.edit(
        image=("layer.png", source, "image/png"), prompt="a green square", extra_body={"num_inference_steps": 2}
    )
    assert result.data is not None and len(result.data) == 1 and result.size == "64x64"
    assert decoded(result.data[0].b64_json).mode == "RGBA"


def test_edit_with_a_mask_regenerates_only_where_its_alpha_is_zero(client: openai.OpenAI) -> None:
    source = np.zeros((64, 64, 4), np.uint8)
    source[..., :] = (30, 200, 40, 160)
    mask = np.full((64, 64, 4), 255, np.uint8)
    mask[16:48, 16:48, 3] = 0  # the middle is regenerated, the rest kept
    result = client.images.edit(
        image=("layer.png", encoded(source), "image/png"),
        mask=("mask.png", encoded(mask), "image/png"),
        prompt="a red star",
        extra_body={"num_inference_steps": 2},
    )
    assert result.data is not None and len(result.data) == 1
    edited = np.asarray(decoded(result.data[0].b64_json).convert("RGBA"))
    kept = mask[..., 3] == 255
    kept[12:52, 12:52] = False  # the feathered edge reaches a few pixels into the kept side at most
    assert np.array_equal(edited[kept], source[kept])
    assert not np.array_equal(edited[24:40, 24:40], source[24:40, 24:40])


def encoded(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def test_streaming_ends_with_one_completed_event_per_image(client: openai.OpenAI) -> None:
    events = list(
        client.images.generate(prompt="a star", size="64x64", n=2, stream=True, partial_images=0, extra_body=SMALL)
    )
    assert [event.type for event in events] == ["image_generation.completed"] * 2
    assert all(decoded(event.b64_json).mode == "RGBA" for event in events)


def test_streaming_shows_the_tiny_models_own_partial_images(client: openai.OpenAI) -> None:
    """The real engine's previews (decoded from the intermediate latents), not a fake's."""
    events = list(
        client.images.generate(
            prompt="a star",
            size="64x64",
            stream=True,
            partial_images=2,
            extra_body={"seed": 3, "num_inference_steps": 6},
        )
    )
    partials = [event for event in events if event.type == "image_generation.partial_image"]
    assert len(partials) == 2 and events[-1].type == "image_generation.completed"
    assert all(decoded(event.b64_json).size == (64, 64) for event in partials)


class PartialShowingEngine(FakeEngine):
    """The fake engine, showing every image of the batch after each of the first steps, as an engine
    with partial images does (half-transparent grey, the size of the result)."""

    def generate_batch(  # type: ignore[override]
        self,
        requests: Sequence[GenerationParams],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_partial: Callable[[int, list[np.ndarray]], None] | None = None,
    ) -> list[GenerationResult]:
        sized = [params.with_size(self.native_size) for params in requests]

        def step(done: int, total: int) -> None:
            if on_partial is not None and done < total:
                shown = [
                    np.full((p.size[1], p.size[0], 4), (90, 90, 90, 128), np.uint8)
                    for p in sized
                    for _ in range(p.num_images)
                ]
                on_partial(done, shown)
            if on_step is not None:
                on_step(done, total)

        return super().generate_batch(requests, on_step=step, should_cancel=should_cancel)


@pytest.fixture
def partial_client(settings: Settings, tmp_path: Path) -> Iterator[openai.OpenAI]:
    engine = PartialShowingEngine()
    services = build_services(server_settings(settings, tmp_path), lambda: engine, model_name="tiny")  # type: ignore[arg-type, return-value]
    with TestClient(create_app(services)) as test_client:
        yield sdk(test_client, issue_key(services.store.keys, "tests").value)


@pytest.mark.parametrize("partial_images", [0, 1, 3])
def test_streaming_shows_the_partial_images_the_engine_hands_out(
    partial_client: openai.OpenAI, partial_images: int
) -> None:
    events = list(
        partial_client.images.generate(
            prompt="a star", size="64x64", stream=True, partial_images=partial_images,
            extra_body={"seed": 3, "num_inference_steps": 5},
        )
    )  # fmt: skip
    partials = [event for event in events if event.type == "image_generation.partial_image"]
    assert [event.partial_image_index for event in partials] == list(range(partial_images))  # type: ignore[union-attr]
    assert [event.type for event in events[len(partials) :]] == ["image_generation.completed"]
    for event in partials:
        alpha = np.asarray(decoded(event.b64_json))[..., 3]
        assert event.size == "64x64" and int(alpha.mean()) == 128


def test_two_images_recover_the_foreground_of_the_blend(client: openai.OpenAI) -> None:
    background, blended = png_bytes((64, 64), (20, 20, 200, 255)), png_bytes((64, 64), (200, 20, 20, 255))
    raw = client.images.with_raw_response.edit(
        image=[("background.png", background, "image/png"), ("blended.png", blended, "image/png")],
        prompt="a red ball",
        extra_body={"num_inference_steps": 2},
    )
    assert raw.headers["x-request-id"]
    result = raw.parse()
    assert result.data is not None and len(result.data) == 1 and result.size == "64x64"
    assert decoded(result.data[0].b64_json).mode == "RGBA"


def test_the_operator_names_the_models(settings: Settings, tmp_path: Path, tiny_pipeline: object) -> None:
    named = server_settings(settings, tmp_path, openai_model_names=["gpt-image-1", "tiny"])
    services = build_services(named, lambda: tiny_pipeline, model_name="tiny")  # type: ignore[arg-type, return-value]
    with TestClient(create_app(services)) as test_client:
        client = sdk(test_client, issue_key(services.store.keys, "tests").value)
        assert [model.id for model in client.models.list()] == ["tiny", "gpt-image-1"]
        result = client.images.generate(model="gpt-image-1", prompt="a star", size="64x64", extra_body=SMALL)
        assert result.data is not None and len(result.data) == 1


def test_a_full_queue_is_a_rate_limit_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    idle = build_services(server_settings(settings, tmp_path, max_queue_length=1), None, model_name="tiny")
    with TestClient(create_app(idle)) as test_client:
        key = issue_key(idle.store.keys, "tests").value
        queued = test_client.post("/queue/fal-ai/layer-diffusion", json={}, headers={"Authorization": f"Key {key}"})
        assert queued.status_code == 200
        with pytest.raises(openai.RateLimitError) as raised:
            sdk(test_client, key).images.generate(prompt="a star")
        assert raised.value.response.headers["retry-after"] == "10"


def test_the_routes_are_in_the_openapi_document(test_client: TestClient) -> None:
    paths = test_client.get("/openapi.json").json()["paths"]
    generation = paths["/v1/images/generations"]["post"]
    assert "application/json" in generation["requestBody"]["content"]
    assert {"200", "400", "401", "429"} <= set(generation["responses"])
    assert "multipart/form-data" in paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert "get" in paths["/v1/models"]


def test_an_edit_of_bytes_that_are_no_image_names_the_image(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.edit(image=("layer.png", b"not a picture", "image/png"), prompt="x")
    assert raised.value.param == "image"


def test_a_request_the_worker_refuses_is_a_bad_request(client: openai.OpenAI) -> None:
    """A LoRA name the operator's folder does not have is found out by the worker, after admission."""
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="a star", size="64x64", extra_body=SMALL | {"loras": [{"path": "house-style"}]})
    assert "house-style" in raised.value.message
    assert raised.value.response.headers["x-request-id"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_cancels_its_request(settings: Settings, tmp_path: Path, stream: bool) -> None:
    port = free_port()
    values = {"port": port, "public_url": f"http://127.0.0.1:{port}"}
    engine = FakeEngine(step_seconds=0.2)
    services = build_services(server_settings(settings, tmp_path, **values), lambda: engine, model_name="tiny")  # type: ignore[arg-type, return-value]
    key = issue_key(services.store.keys, "tests").value
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = {"prompt": "a star", "size": "64x64", "num_inference_steps": 100, "stream": stream}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"http://127.0.0.1:{port}/v1/images/generations", json=body,
                headers={"Authorization": f"Bearer {key}"}, timeout=httpx.Timeout(10, read=1.5),
            ).read()  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            (record,) = services.manager.recent(key.split(":")[0], 1)
            if record.state is RequestState.COMPLETED:
                break
            assert time.monotonic() < deadline, "the request was not cancelled"
            time.sleep(0.1)
        assert record.error_type == "client_disconnected" or record.status_code == 499
    finally:
        server.should_exit = True
        thread.join(30)


def test_an_edit_with_a_mask_takes_one_image(client: openai.OpenAI) -> None:
    source = png_bytes((64, 64))
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.edit(
            image=[("a.png", source, "image/png"), ("b.png", source, "image/png")],
            mask=("m.png", source, "image/png"),
            prompt="x",
        )
    assert raised.value.param == "image"
