"""Every PNG compression choice writes a standard straight-alpha PNG that decodes to exactly its input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from layerdiffuse_server.png_encoding import PNG_COMPRESSIONS, encode_png, fast_encoder_available


def _decoded(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGBA"
    return np.asarray(image)


def _scene(height: int, width: int) -> np.ndarray:
    """Colour everywhere, a soft-edged disc of alpha, and fully transparent pixels with bright colour under them."""
    chance = np.random.default_rng(height * 1000 + width)
    rgba = chance.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    distance = np.hypot(x - width / 2, y - height / 2) - min(height, width) / 3
    rgba[..., 3] = np.clip(128 - distance * 64, 0, 255).astype(np.uint8)
    return rgba


@pytest.mark.parametrize("compression", PNG_COMPRESSIONS)
@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 7), (13, 1), (37, 61), (128, 96)])
def test_round_trip_is_pixel_identical(compression, height, width) -> None:
    rgba = _scene(height, width)
    data = encode_png(rgba, compression)
    assert np.array_equal(_decoded(data), rgba)
    assert data == encode_png(rgba.copy(), compression)  # deterministic


@pytest.mark.parametrize("compression", PNG_COMPRESSIONS)
def test_colour_under_zero_alpha_is_kept(compression) -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 250, 17, 99  # alpha stays 0: nothing to see, but not black
    rgba[4:8, 4:8, 3] = 255
    decoded = _decoded(encode_png(rgba, compression))
    assert np.array_equal(decoded, rgba)
    assert tuple(decoded[0, 0]) == (250, 17, 99, 0)


@pytest.mark.parametrize("compression", PNG_COMPRESSIONS)
def test_a_view_that_is_not_contiguous_is_encoded_as_its_pixels(compression) -> None:
    wide = _scene(40, 80)
    view = wide[:, ::2]
    assert not view.flags.c_contiguous
    assert np.array_equal(_decoded(encode_png(view, compression)), view)


def test_smaller_choices_make_smaller_files_on_a_compressible_image() -> None:
    rgba = np.zeros((256, 256, 4), np.uint8)
    y, x = np.mgrid[0:256, 0:256]
    rgba[..., 0], rgba[..., 1] = x, y
    rgba[..., 3] = np.where(np.hypot(x - 128, y - 128) < 90, 255, 0)
    sizes = {compression: len(encode_png(rgba, compression)) for compression in PNG_COMPRESSIONS}
    assert sizes["small"] <= sizes["balanced"]
    if fast_encoder_available():
        assert sizes["balanced"] <= sizes["fast"]


def test_small_is_never_larger_than_balanced_whichever_strategy_suits_the_image() -> None:
    flat = np.zeros((256, 256, 4), np.uint8)
    flat[64:192, 64:192] = (200, 40, 40, 255)  # runs of equal bytes: the run-length strategy's case
    y, x = np.mgrid[0:256, 0:256]
    texture = np.stack([x * y % 251, (x + 3 * y) % 256, x ^ y, np.full_like(x, 255)], axis=-1).astype(np.uint8)
    for rgba in (flat, texture, _scene(64, 64)):
        assert len(encode_png(rgba, "small")) <= len(encode_png(rgba, "balanced"))
        assert np.array_equal(_decoded(encode_png(rgba, "small")), rgba)


def test_the_fast_encoder_is_installed_with_the_engine() -> None:
    assert fast_encoder_available()


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((4, 4, 3), np.uint8),
        np.zeros((4, 4, 4), np.float32),
        np.zeros((0, 4, 4), np.uint8),
        np.zeros((16, 4), np.uint8),
    ],
)
def test_pixels_that_are_not_rgba_bytes_are_refused(pixels) -> None:
    with pytest.raises(ValueError, match="uint8 \\[H, W, 4\\]"):
        encode_png(pixels)


def test_an_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="fast, balanced, small"):
        encode_png(np.zeros((2, 2, 4), np.uint8), "tiny")  # type: ignore[arg-type]
