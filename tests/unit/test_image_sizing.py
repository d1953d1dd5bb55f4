"""Sizes that are not multiples of 64, and how input images are fitted to a size."""

from __future__ import annotations

import numpy as np
import pytest

from layerdiffuse_server.engine.pipelines.image_sizing import (
    centre_crop,
    crop_and_resize,
    pad_to,
    run_size,
    size_from_image,
)


def test_the_model_runs_at_the_next_multiple_of_64() -> None:
    assert run_size(1000, 700) == (1024, 704)
    assert run_size(1024, 64) == (1024, 64)
    assert run_size(65, 129) == (128, 192)


def test_padding_then_cropping_gives_the_image_back() -> None:
    image = np.random.default_rng(0).integers(0, 256, (70, 100, 4), dtype=np.uint8)
    padded = pad_to(image, *run_size(100, 70))
    assert padded.shape == (128, 128, 4)
    assert np.array_equal(centre_crop(padded, 100, 70), image)
    # The band around it repeats the edge pixels.
    assert np.array_equal(padded[0, 14:114], image[0]) and np.array_equal(
        padded[:29, 14], np.repeat(image[:1, 0], 29, 0)
    )


@pytest.mark.parametrize(
    ("asked", "image", "expected"),
    [
        ((None, None), (300, 200), (300, 200)),
        ((600, None), (300, 200), (600, 400)),
        ((None, 100), (300, 200), (150, 100)),
        ((512, 512), (300, 200), (512, 512)),
        ((None, None), (4000, 1000), (2048, 512)),  # scaled down into the limits, aspect kept
        ((None, None), (20, 30), (64, 64)),  # and up to the smallest side
    ],
)
def test_the_output_size_follows_the_image_unless_asked(
    asked: tuple[int | None, int | None], image: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert size_from_image(*asked, *image) == expected


def test_crop_and_resize_covers_then_crops_the_centre() -> None:
    # A 200×100 image with a left half red and a right half blue, fitted to 100×100: the centre
    # square survives, half of each colour.
    image = np.zeros((100, 200, 4), np.uint8)
    image[:, :100] = [255, 0, 0, 255]
    image[:, 100:] = [0, 0, 255, 255]
    fitted = crop_and_resize(image, 100, 100)
    assert fitted.shape == (100, 100, 4)
    assert (fitted[:, :45, 0] == 255).all() and (fitted[:, 55:, 2] == 255).all()
    # Scaled up to cover: 100×50 → 100×100 is a 2× enlargement of the centre half.
    assert crop_and_resize(image, 100, 50).shape == (50, 100, 4)


def test_resizing_does_not_bleed_the_colour_of_transparent_pixels() -> None:
    image = np.zeros((64, 64, 4), np.uint8)
    image[:, :32] = [0, 255, 0, 0]  # invisible green
    image[:, 32:] = [255, 0, 0, 255]  # visible red
    fitted = crop_and_resize(image, 48, 48)
    visible = fitted[..., 3] > 0
    assert (fitted[visible][:, 1] <= 2).all()  # no green in any visible pixel


def test_a_wide_strip_is_cropped_before_it_is_scaled() -> None:
    # 65536×1 fitted to 64×64: scaling first would make a 4 194 304×64 image (a gigabyte, a minute);
    # cropping first resamples one source pixel. The bound is on time: well under a second.
    import time

    image = np.zeros((1, 65536, 4), np.uint8)
    image[:, 32768:] = [0, 0, 255, 255]
    started = time.perf_counter()
    fitted = crop_and_resize(image, 64, 64)
    assert time.perf_counter() - started < 1.0
    assert fitted.shape == (64, 64, 4)
