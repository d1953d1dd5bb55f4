"""Several images per request (``num_images``) and the transparency check on every result, through
the API in-process (real SQLite store, real tiny model, the worker run by hand where batching is
what is tested)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from layerdiffuse_server.api import Services
from layerdiffuse_server.results import GenerationResult
from layerdiffuse_server.schemas import GenerationParams
from layerdiffuse_server.testing import FakeEngine

from ..support.images import png_bytes
from .api_support import APP, SMALL, hand_worker, wait_completed


def pixels(client: TestClient, url: str) -> np.ndarray:
    response = client.get(url.removeprefix("http://testserver"))
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_three_images_are_three_files_with_consecutive_seeds(client: TestClient) -> None:
    response = client.post(f"/run{APP}", json=SMALL | {"num_images": 3})
    assert response.status_code == 200, response.text
    output = response.json()
    images = output["images"]
    assert len(images) == 3 and output["image"] == images[0]
    assert output["seed"] == SMALL["seed"]
    assert output["has_nsfw_concepts"] == [False] * 3 and len(output["has_transparency"]) == 3
    assert len({image["url"] for image in images}) == 3
    assert [image["file_name"] for image in images] == [f"layer-diffusion-{SMALL['seed'] + i}.png" for i in range(3)]
    for index, image in enumerate(images):
        alone = client.post(f"/run{APP}", json=SMALL | {"seed": SMALL["seed"] + index}).json()
        assert alone["seed"] == SMALL["seed"] + index and len(alone["images"]) == 1
        # Batched kernels may differ from a lone run by float rounding: at most 1/255, on few pixels.
        difference = np.abs(
            pixels(client, image["url"]).astype(int) - pixels(client, alone["image"]["url"]).astype(int)
        )
        assert difference.max() <= 1 and (difference > 0).mean() < 0.005


def test_the_logs_name_every_image(client: TestClient) -> None:
    request_id = client.post(f"/queue{APP}", json=SMALL | {"num_images": 2}).json()["request_id"]
    messages = [line["message"] for line in wait_completed(client, request_id)["logs"]]
    assert any("2 images, seeds 5-6" in message for message in messages)
    assert len([message for message in messages if message.startswith("Uploaded")]) == 2


@pytest.mark.parametrize("count", [0, 9, 2.5, "3"])
def test_num_images_out_of_bounds_is_a_422_naming_the_field(idle_client: TestClient, count: object) -> None:
    response = idle_client.post(f"/run{APP}", json=SMALL | {"num_images": count})
    assert response.status_code == 422
    assert [problem["loc"] for problem in response.json()["detail"]] == [["body", "num_images"]]


def test_endpoints_with_image_inputs_make_one_image_per_request(idle_client: TestClient) -> None:
    import base64

    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes((64, 64))).decode()
    for path, body in (
        ("image-to-image", {"image_url": data_uri}),
        ("foreground-to-blended", {"foreground_image_url": data_uri}),
    ):
        response = idle_client.post(f"/run{APP}/{path}", json=body | {"num_images": 2})
        assert response.status_code == 422, response.text
        (problem,) = response.json()["detail"]
        assert problem["loc"] == ["body", "num_images"] and "less than or equal to 1" in problem["msg"]


def test_openapi_documents_the_new_fields(idle_client: TestClient) -> None:
    schemas = idle_client.get("/openapi.json").json()["components"]["schemas"]
    count = schemas["LayerDiffusionInput"]["properties"]["num_images"]
    assert (count["default"], count["minimum"], count["maximum"]) == (1, 1, 8) and count["description"]
    assert schemas["ImageToImageInput"]["properties"]["num_images"]["maximum"] == 1
    output = schemas["LayerDiffusionOutput"]
    assert {"image", "images", "seed"} <= set(output["required"])
    assert output["properties"]["images"]["description"]
    assert "Extension" in output["properties"]["has_transparency"]["description"]


# -- batching counts images ---------------------------------------------------------------------


def batch_sizes(client: TestClient, ids: Sequence[str]) -> list[int | None]:
    return [wait_completed(client, request_id)["metrics"].get("batch_size", 1) for request_id in ids]


def status_of(client: TestClient, request_id: str) -> str:
    return client.get(f"/queue{APP}/requests/{request_id}/status").json()["status"]


def test_a_batch_holds_at_most_max_batch_size_images(queue_only: tuple[TestClient, Services]) -> None:
    client, services = queue_only
    submit: Callable[[int], str] = lambda count: client.post(  # noqa: E731
        f"/queue{APP}", json=SMALL | {"num_images": count}
    ).json()["request_id"]
    three, one, another = submit(3), submit(1), submit(1)
    worker = hand_worker(services, FakeEngine(), max_batch_size=4)
    assert worker.run_once()
    assert batch_sizes(client, [three, one]) == [2, 2]  # 3 + 1 images: full
    assert status_of(client, another) == "IN_QUEUE"
    assert len(client.get(f"/queue{APP}/requests/{three}").json()["images"]) == 3
    assert worker.run_once() and batch_sizes(client, [another]) == [1]


def test_a_request_with_more_images_than_a_batch_runs_alone(queue_only: tuple[TestClient, Services]) -> None:
    client, services = queue_only
    big, small = (
        client.post(f"/queue{APP}", json=SMALL | {"num_images": count}).json()["request_id"] for count in (6, 1)
    )
    worker = hand_worker(services, FakeEngine(), max_batch_size=4)
    assert worker.run_once()
    assert batch_sizes(client, [big]) == [1] and status_of(client, small) == "IN_QUEUE"
    assert len(client.get(f"/queue{APP}/requests/{big}").json()["images"]) == 6
    assert worker.run_once() and batch_sizes(client, [small]) == [1]


def test_a_later_request_does_not_jump_one_that_does_not_fit(queue_only: tuple[TestClient, Services]) -> None:
    client, services = queue_only
    ids = [client.post(f"/queue{APP}", json=SMALL | {"num_images": n}).json()["request_id"] for n in (2, 3, 1)]
    worker = hand_worker(services, FakeEngine(), max_batch_size=4)
    assert worker.run_once()
    assert batch_sizes(client, ids[:1]) == [1]  # 2 + 3 do not fit; the 1 behind waits its turn
    assert [status_of(client, request_id) for request_id in ids[1:]] == ["IN_QUEUE", "IN_QUEUE"]


# -- the transparency check ---------------------------------------------------------------------


class OpaqueEngine(FakeEngine):
    """An engine whose model lost its transparency: every image comes out fully opaque, except those
    the safety checker flagged (blanked: fully transparent, as the real engine makes them)."""

    def __init__(self, flagged_seeds: set[int]) -> None:
        super().__init__()
        self.flagged_seeds = flagged_seeds

    def generate_batch(self, requests: Sequence[GenerationParams], **kwargs: object) -> list[GenerationResult]:
        results = super().generate_batch(requests, **kwargs)  # type: ignore[arg-type]
        for result in results:
            for image in result.images:
                image.nsfw = image.seed in self.flagged_seeds
                image.rgba[..., 3] = 0 if image.nsfw else 255
            result.has_nsfw_concepts = [image.nsfw for image in result.images]
        return results


def test_every_result_says_whether_its_images_are_transparent(queue_only: tuple[TestClient, Services]) -> None:
    client, services = queue_only
    request_id = client.post(f"/queue{APP}", json=SMALL | {"num_images": 2}).json()["request_id"]
    assert hand_worker(services, FakeEngine(), max_batch_size=1).run_once()
    logs = wait_completed(client, request_id)["logs"]
    assert client.get(f"/queue{APP}/requests/{request_id}").json()["has_transparency"] == [True, True]
    assert not any(line["level"] == "WARN" for line in logs)


def test_an_image_without_transparency_is_warned_of(queue_only: tuple[TestClient, Services]) -> None:
    client, services = queue_only
    request_id = client.post(f"/queue{APP}", json=SMALL | {"num_images": 3}).json()["request_id"]
    assert hand_worker(services, OpaqueEngine(flagged_seeds={6}), max_batch_size=1).run_once()
    warnings = [line["message"] for line in wait_completed(client, request_id)["logs"] if line["level"] == "WARN"]
    output = client.get(f"/queue{APP}/requests/{request_id}").json()
    assert output["has_transparency"] == [False, False, False] and output["has_nsfw_concepts"] == [False, True, False]
    # The blanked image (seed 6) is the safety checker's doing, not the model's: no warning for it.
    assert len(warnings) == 2
    assert "Image 1 of 3 (seed 5) has no transparency" in warnings[0]
    assert "Image 3 of 3 (seed 7) has no transparency" in warnings[1]


def test_the_decode_estimate_counts_images(queue_only: tuple[TestClient, Services], tiny_pipeline: object) -> None:
    client, services = queue_only
    request_id = client.post(f"/queue{APP}", json=SMALL).json()["request_id"]
    worker = hand_worker(services, tiny_pipeline, max_batch_size=1)
    assert worker.run_once()
    wait_completed(client, request_id)
    # What decoding the next batch should take, at the pace the last run taught: per image.
    one = worker._decode_estimate([GenerationParams(**SMALL)])
    three = worker._decode_estimate([GenerationParams(**SMALL | {"num_images": 3})])
    assert one is not None and one > 0 and three == pytest.approx(3 * one)
