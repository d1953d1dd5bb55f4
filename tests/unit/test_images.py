from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from layerdiffuse_server.images import TransparentImage, checkerboard, checkerboard_preview, encode_png
from layerdiffuse_server.schemas import GenerationParams


def test_png_is_straight_rgba_and_deterministic() -> None:
    rgba = np.random.default_rng(0).integers(0, 256, size=(64, 128, 4), dtype=np.uint8)
    data = encode_png(rgba)
    assert data == encode_png(rgba.copy())
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGBA" and image.size == (128, 64)
    assert np.array_equal(np.asarray(image), rgba)


def test_checkerboard_matches_the_reference_visualisation() -> None:
    board = checkerboard(128, 192)
    assert board[0, 0] == pytest.approx(0.45) and board[0, 64] == pytest.approx(0.55)
    assert board[64, 64] == pytest.approx(0.45) and board[63, 63] == pytest.approx(0.45)
    transparent = np.zeros((128, 128, 4), np.uint8)
    opaque_red = np.zeros((128, 128, 4), np.uint8)
    opaque_red[..., 0], opaque_red[..., 3] = 255, 255
    assert tuple(checkerboard_preview(transparent)[0, 0]) == (114, 114, 114)  # 0.45 · 255 = 114.75 → 114
    assert tuple(checkerboard_preview(opaque_red)[5, 100]) == (255, 0, 0)


def test_transparent_image_reports_its_size(tmp_path) -> None:
    image = TransparentImage(rgba=np.zeros((64, 128, 4), np.uint8), seed=3)
    path = image.save(tmp_path / "x.png")
    assert Image.open(path).size == (128, 64) and (image.width, image.height) == (128, 64)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 63),
        ("height", 2049),
        ("width", 4096),
        ("num_inference_steps", 0),
        ("guidance_scale", -1),
        ("seed", -1),
        ("seed", 2**53),
        ("num_images", 9),
        ("scheduler", "plms"),
    ],
)
def test_bad_input_is_a_validation_error_naming_the_field(field: str, value: object) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        GenerationParams(**{field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_defaults_are_the_hosted_endpoints() -> None:
    params = GenerationParams()
    assert (params.prompt, params.negative_prompt, params.guidance_scale, params.num_inference_steps) == (
        "",
        "text, watermark",
        8.0,
        20,
    )
    assert params.enable_safety_checker and params.seed is None
    assert (params.width, params.height, params.num_images, params.scheduler) == (None, None, 1, "dpmpp_2m_karras")
    assert params.with_seed().seed is not None
    # No size means the model's native one (1024 for SDXL, the hosted endpoint's size); a given side stays.
    assert params.with_size(1024).size == (1024, 1024)
    assert GenerationParams(width=512).with_size(128).size == (512, 128)
    with pytest.raises(ValueError, match="not fixed"):
        _ = params.size
