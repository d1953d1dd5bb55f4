"""Transparent inpainting on the tiny model: kept pixels exact, the masked area (alpha included)
regenerated, and masks that mark nothing refused."""

from __future__ import annotations

import numpy as np
import pytest

from layerdiffuse_server.engine.pipelines.inpainting import feathered, latent_mask, paste_kept
from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
from layerdiffuse_server.errors import InvalidInputError
from layerdiffuse_server.schemas import InpaintingInput

WIDTH, HEIGHT = 128, 96


def source_image() -> np.ndarray:
    """An orange square, half transparent around it, with a colour gradient so every pixel differs."""
    rows, columns = np.mgrid[:HEIGHT, :WIDTH]
    image = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    image[..., 0] = 200
    image[..., 1] = (columns * 2) % 256
    image[..., 2] = (rows * 2) % 256
    image[..., 3] = 128
    image[20:70, 30:100, 3] = 255
    return image


def hole_mask(top: int = 16, bottom: int = 64, left: int = 40, right: int = 96) -> np.ndarray:
    """Opaque (keep) everywhere but a transparent rectangle (regenerate); its colour means nothing."""
    mask = np.full((HEIGHT, WIDTH, 4), 255, np.uint8)
    mask[..., :3] = 0
    mask[top:bottom, left:right, 3] = 0
    return mask


def request(**fields: object) -> InpaintingInput:
    return InpaintingInput(
        image_url="stored", mask_url="stored", prompt="a lamp", seed=3, num_inference_steps=4, **fields
    )


def test_inpainting_keeps_the_unmasked_pixels_and_regenerates_the_hole(
    tiny_pipeline: TransparentSDXLPipeline,
) -> None:
    image, mask = source_image(), hole_mask()
    steps: list[tuple[int, int]] = []
    result = tiny_pipeline.generate_from_images(
        request(), {"image_url": image, "mask_url": mask}, on_step=lambda s, t: steps.append((s, t))
    )
    out = result.images[0].rgba
    assert out.shape == image.shape and result.params.size == (WIDTH, HEIGHT)
    assert steps[-1] == (4, 4)  # strength 1.0 by default: the whole schedule
    kept = mask[..., 3] == 255
    assert np.array_equal(out[kept], image[kept])  # exactly, alpha included
    # Inside the hole, away from the feathered edge, everything is new: colour and alpha.
    inner = out[24:56, 48:88].astype(int) - image[24:56, 48:88].astype(int)
    assert np.abs(inner[..., :3]).mean() > 10
    assert np.abs(inner[..., 3]).mean() > 2
    again = tiny_pipeline.generate_from_images(request(), {"image_url": image, "mask_url": mask})
    assert np.array_equal(out, again.images[0].rgba)  # a seed means one image


def test_a_mask_of_another_size_is_fitted_to_the_image(tiny_pipeline: TransparentSDXLPipeline) -> None:
    image = source_image()
    small = hole_mask()[::2, ::2]  # half the size: the same area once scaled
    out = tiny_pipeline.generate_from_images(request(), {"image_url": image, "mask_url": small}).images[0].rgba
    kept = hole_mask(12, 68, 36, 100)[..., 3] == 255  # a margin for the resampled edge
    assert np.array_equal(out[kept], image[kept])


def test_strength_runs_the_last_part_of_the_schedule(tiny_pipeline: TransparentSDXLPipeline) -> None:
    image, mask = source_image(), hole_mask()
    steps: list[tuple[int, int]] = []
    out = tiny_pipeline.generate_from_images(
        request(strength=0.5), {"image_url": image, "mask_url": mask}, on_step=lambda s, t: steps.append((s, t))
    )
    assert steps == [(1, 2), (2, 2)]  # half of 4 steps, as image to image counts them
    kept = mask[..., 3] == 255
    assert np.array_equal(out.images[0].rgba[kept], image[kept])


def test_a_mask_that_marks_nothing_is_refused(tiny_pipeline: TransparentSDXLPipeline) -> None:
    mask = np.full((HEIGHT, WIDTH, 4), 255, np.uint8)  # also what an RGB mask (no alpha) decodes to
    with pytest.raises(InvalidInputError, match="opaque everywhere") as caught:
        tiny_pipeline.generate_from_images(request(), {"image_url": source_image(), "mask_url": mask})
    assert caught.value.field == "mask_url"


def test_the_latent_mask_covers_every_block_that_holds_a_masked_pixel() -> None:
    keep = np.ones((64, 64), np.float32)
    keep[9, 17] = 0.5  # one half-kept pixel in block (1, 2)
    mask = latent_mask(keep, 64, 64)[0, 0].numpy()
    assert mask.shape == (64, 64)
    assert mask[8:16, 16:24].min() == 1 and mask.sum() == 64


def test_the_paste_feathers_into_the_regenerated_side_only() -> None:
    keep = np.ones((64, 64), np.float32)
    keep[:, 32:] = 0.0
    weight = feathered(keep)
    assert (weight[:, :32] == 1).all()
    assert 0 < weight[0, 32] < 1 and weight[0, 40] == 0
    original = np.full((64, 64, 4), 200, np.uint8)
    generated = np.zeros((64, 64, 4), np.uint8)
    generated[..., 3] = 255
    pasted = paste_kept(original, generated, keep)
    assert np.array_equal(pasted[:, :32], original[:, :32]) and np.array_equal(pasted[:, 40:], generated[:, 40:])
