"""``pad_rgb`` against the reference implementation's own input and output images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from layerdiffuse_server.engine.networks.padding import pad_rgb

FIXTURES = Path(__file__).parents[1] / "fixtures" / "layerdiffuse"


def test_matches_the_reference_output_bit_for_bit() -> None:
    rgba = np.asarray(Image.open(FIXTURES / "pad_input.png").convert("RGBA"))
    expected = np.asarray(Image.open(FIXTURES / "pad_expected.png").convert("RGB"))
    padded = (pad_rgb(rgba) * 255.0).clip(0, 255).astype(np.uint8)  # as the reference script saves it
    assert padded.shape == expected.shape
    assert np.array_equal(padded, expected)


def test_opaque_pixels_keep_their_colour_and_transparent_ones_take_the_nearest() -> None:
    rgba = np.zeros((64, 96, 4), dtype=np.uint8)
    rgba[:, :20] = (250, 10, 10, 255)  # red band on the left
    rgba[:, 76:] = (10, 10, 250, 255)  # blue band on the right
    padded = pad_rgb(rgba)
    assert padded.dtype == np.float32 and padded.shape == (64, 96, 3)
    np.testing.assert_allclose(padded[:, :20], np.broadcast_to(np.array([250, 10, 10]) / 255, (64, 20, 3)), atol=1e-6)
    assert padded[32, 25, 0] > 0.8 > padded[32, 25, 2]  # just right of red: reddish
    assert padded[32, 70, 2] > 0.8 > padded[32, 70, 0]  # just left of blue: bluish
    assert padded.min() >= 0 and padded.max() <= 1


def test_an_empty_image_pads_to_something_finite() -> None:
    assert np.isfinite(pad_rgb(np.zeros((32, 32, 4), dtype=np.uint8))).all()
