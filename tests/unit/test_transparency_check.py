"""The transparency check on synthetic RGBA arrays: flat alphas (with or without decoder noise) carry
nothing; a shape, however small, or a soft gradient does."""

from __future__ import annotations

import numpy as np
import pytest

from layerdiffuse_server.images import ALPHA_TOLERANCE, has_transparency


def rgba_with_alpha(alpha: np.ndarray) -> np.ndarray:
    rgba = np.full((*alpha.shape, 4), 128, np.uint8)
    rgba[..., 3] = alpha
    return rgba


@pytest.mark.parametrize("level", [0, 128, 255])
def test_one_alpha_everywhere_is_no_transparency(level: int) -> None:
    assert not has_transparency(rgba_with_alpha(np.full((64, 64), level, np.uint8)))


def test_noise_within_the_tolerance_is_no_transparency() -> None:
    noise = np.random.default_rng(0).integers(-ALPHA_TOLERANCE, 1, (128, 128))
    assert not has_transparency(rgba_with_alpha((255 + noise).astype(np.uint8)))


def test_a_few_stray_pixels_are_no_transparency() -> None:
    alpha = np.full((256, 256), 255, np.uint8)
    alpha[0, :30] = 0  # 30 of 65 536 pixels: under 0.1 %
    assert not has_transparency(rgba_with_alpha(alpha))


def test_a_subject_on_a_clear_background_is_transparency() -> None:
    alpha = np.zeros((64, 64), np.uint8)
    alpha[16:48, 16:48] = 255
    assert has_transparency(rgba_with_alpha(alpha))


def test_a_small_subject_on_a_large_canvas_still_counts() -> None:
    alpha = np.zeros((256, 256), np.uint8)
    alpha[100:110, 100:110] = 255  # 100 pixels: 0.15 %
    assert has_transparency(rgba_with_alpha(alpha))


def test_a_subject_filling_most_of_the_canvas_counts() -> None:
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :8] = 0  # the median is opaque; the clear margin stands out
    assert has_transparency(rgba_with_alpha(alpha))


def test_a_soft_gradient_is_transparency() -> None:
    alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    assert has_transparency(rgba_with_alpha(alpha))


def test_just_beyond_the_tolerance_counts_and_at_it_does_not() -> None:
    alpha = np.full((32, 32), 200, np.uint8)
    alpha[:8] = 200 - ALPHA_TOLERANCE  # a quarter of the rows: the median stays 200
    assert not has_transparency(rgba_with_alpha(alpha))
    alpha[:8] = 200 - ALPHA_TOLERANCE - 1
    assert has_transparency(rgba_with_alpha(alpha))
