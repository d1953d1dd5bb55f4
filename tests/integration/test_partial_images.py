"""Partial images on the tiny model: previews at evenly spaced steps, of every task, that leave the
final images the same bytes."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from layerdiffuse_server.engine.pipelines.partials import PartialDecoder
from layerdiffuse_server.engine.pipelines.schedulers import SCHEDULERS
from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
from layerdiffuse_server.schemas import (
    BackgroundToBlendedInput,
    GenerationParams,
    ImageToImageInput,
    InpaintingInput,
    LayerDiffusionInput,
    partial_steps,
)
from layerdiffuse_server.testing import FakeEngine

SMALL = {"width": 96, "height": 64, "num_inference_steps": 6}


class Collected:
    def __init__(self) -> None:
        self.calls: list[tuple[int, list[np.ndarray]]] = []

    def __call__(self, step: int, images: list[np.ndarray]) -> None:
        self.calls.append((step, images))


def test_partial_steps_are_evenly_spaced_before_the_end() -> None:
    assert partial_steps(20, 3) == [5, 10, 15]
    assert partial_steps(6, 2) == [2, 4]
    assert partial_steps(6, 1) == [3]
    assert partial_steps(2, 3) == [1]  # a short schedule has fewer steps before its end
    assert partial_steps(1, 3) == [] and partial_steps(20, 0) == []


def test_partial_images_is_bounded() -> None:
    assert LayerDiffusionInput().partial_images == 0
    with pytest.raises(ValidationError):
        LayerDiffusionInput(partial_images=4)


def test_text_to_image_previews_every_image_and_keeps_the_final_bytes(
    tiny_pipeline: TransparentSDXLPipeline,
) -> None:
    plain = tiny_pipeline.generate(prompt="a lamp", seed=5, num_images=2, **SMALL)
    collected = Collected()
    previewed = tiny_pipeline.generate(
        prompt="a lamp", seed=5, num_images=2, partial_images=2, **SMALL, on_partial=collected
    )
    assert [step for step, _ in collected.calls] == [2, 4]
    for _, images in collected.calls:
        assert [image.shape for image in images] == [(64, 96, 4)] * 2
        assert all(image.dtype == np.uint8 for image in images)
    assert collected.calls[0][1][0].std() > 0  # decoded pixels, not a blank
    assert [image.png() for image in previewed.images] == [image.png() for image in plain.images]
    # Asked for, without a callback: nothing changes either.
    unseen = tiny_pipeline.generate(prompt="a lamp", seed=5, num_images=2, partial_images=3, **SMALL)
    assert [image.png() for image in unseen.images] == [image.png() for image in plain.images]


def test_a_batch_previews_as_many_times_as_its_most_eager_request(tiny_pipeline: TransparentSDXLPipeline) -> None:
    requests = [
        GenerationParams(prompt="a", seed=1, partial_images=1, **SMALL),
        GenerationParams(prompt="b", seed=2, num_images=2, partial_images=3, **SMALL),
    ]
    collected = Collected()
    tiny_pipeline.generate_batch(requests, on_partial=collected)
    assert [step for step, _ in collected.calls] == partial_steps(6, 3)
    assert all(len(images) == 3 for _, images in collected.calls)


def picture() -> np.ndarray:
    image = np.zeros((64, 96, 4), np.uint8)
    image[..., 0] = 180
    image[16:48, 24:72, 3] = 255
    return image


def hole() -> np.ndarray:
    mask = np.full((64, 96, 4), 255, np.uint8)
    mask[8:40, 32:80, 3] = 0
    return mask


@pytest.mark.parametrize(
    ("params", "images", "steps"),
    [
        (ImageToImageInput(image_url="x", strength=0.5, **SMALL), {"image_url": picture()}, [1, 2]),
        (
            InpaintingInput(image_url="x", mask_url="x", **SMALL),
            {"image_url": picture(), "mask_url": hole()},
            [2, 4],
        ),
        (BackgroundToBlendedInput(background_image_url="x", **SMALL), {"background_image_url": picture()}, [2, 4]),
    ],
    ids=["image-to-image", "inpainting", "background-to-blended"],
)
def test_image_tasks_preview_their_steps_and_keep_their_bytes(
    tiny_pipeline: TransparentSDXLPipeline, params: LayerDiffusionInput, images: dict, steps: list[int]
) -> None:
    params = params.model_copy(update={"seed": 8})
    plain = tiny_pipeline.generate_from_images(params, images)
    collected = Collected()
    previewed = tiny_pipeline.generate_from_images(
        params.model_copy(update={"partial_images": 2}), images, on_partial=collected
    )
    assert [step for step, _ in collected.calls] == steps
    assert all([image.shape for image in shown] == [(64, 96, 4)] for _, shown in collected.calls)
    assert previewed.images[0].png() == plain.images[0].png()


def test_a_preview_costs_well_under_a_full_decode(tiny_pipeline: TransparentSDXLPipeline) -> None:
    """One decoder pass instead of eight, at half the size: measured on the tiny model, a preview
    takes under a tenth of the final decode."""
    latents = tiny_pipeline.initial_noise([1], 256, 256)
    preview = PartialDecoder(tiny_pipeline, (256, 256))

    def fastest(run: object) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            run()  # type: ignore[operator]
            times.append(time.perf_counter() - started)
        return min(times)

    full = fastest(lambda: tiny_pipeline.decoder.decode(latents, tiny_pipeline.sdxl.vae))
    cheap = fastest(lambda: preview.decode(latents))
    assert cheap < 0.3 * full, (cheap, full)
    assert preview.decode(latents)[0].shape == (256, 256, 4)


def test_the_fake_engine_previews_on_the_same_steps() -> None:
    collected = Collected()
    FakeEngine().generate_batch([GenerationParams(seed=1, partial_images=2, **SMALL)], on_partial=collected)
    assert [step for step, _ in collected.calls] == [2, 4]
    assert collected.calls[0][1][0].shape == (64, 96, 4)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_sampler_previews_and_keeps_its_bytes(tiny_pipeline: TransparentSDXLPipeline, scheduler: str) -> None:
    """Stochastic samplers too: previews draw nothing from their random streams."""
    fields = {"prompt": "a", "seed": 1, "width": 64, "height": 64, "num_inference_steps": 4, "scheduler": scheduler}
    plain = tiny_pipeline.generate(**fields)
    collected = Collected()
    previewed = tiny_pipeline.generate(**fields, partial_images=2, on_partial=collected)
    assert [step for step, _ in collected.calls] == [1, 3]
    assert previewed.images[0].png() == plain.images[0].png()
