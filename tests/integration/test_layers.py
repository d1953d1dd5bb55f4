"""Image to image and the conditioned layers on the tiny model: sizes, semantics, and the one UNet
switched between the LayerDiffuse models without changing what any of them draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
from layerdiffuse_server.engine.pipelines.unet_tracing import eager, trace_from_next_call, traced_module
from layerdiffuse_server.errors import InvalidInputError, WeightFormatError
from layerdiffuse_server.schemas import (
    BackgroundBlendedToForegroundInput,
    BackgroundToBlendedInput,
    ConditionedLayerInput,
    ForegroundBlendedToBackgroundInput,
    ForegroundToBlendedInput,
    ImageToImageInput,
)
from layerdiffuse_server.settings import Settings

LAYER_INPUTS: dict[str, type[ConditionedLayerInput]] = {
    "fg2ble": ForegroundToBlendedInput,
    "bg2ble": BackgroundToBlendedInput,
    "fgble2bg": ForegroundBlendedToBackgroundInput,
    "bgble2fg": BackgroundBlendedToForegroundInput,
}


def picture(colour: tuple[int, int, int], alpha: int = 255, size: tuple[int, int] = (100, 70)) -> np.ndarray:
    width, height = size
    image = np.zeros((height, width, 4), np.uint8)
    image[..., :3] = colour
    image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4, 3] = alpha
    image[..., 3] = np.maximum(image[..., 3], 255 - alpha)
    return image


def layer_request(task: str, colour: tuple[int, int, int], **fields: object) -> tuple[ConditionedLayerInput, dict]:
    model = LAYER_INPUTS[task]
    names = [name for name in model.model_fields if name.endswith("image_url")]
    params = model(**{name: "stored" for name in names}, seed=4, num_inference_steps=3, **fields)
    return params, {name: picture(colour) for name in names}


def text_png(pipeline: TransparentSDXLPipeline) -> bytes:
    return pipeline.generate(prompt="a lamp", seed=9, width=64, height=64, num_inference_steps=2).images[0].png()


def test_switching_models_leaves_text_to_image_byte_identical(tiny_pipeline: TransparentSDXLPipeline) -> None:
    before = text_png(tiny_pipeline)
    conv_in = tiny_pipeline.patches.unet.conv_in
    for task in LAYER_INPUTS:
        params, images = layer_request(task, (200, 30, 30))
        tiny_pipeline.generate_from_images(params, images)
        assert tiny_pipeline.patches.active == task
        # The condition latents enter through conv_in, widened by one latent per condition image.
        assert conv_in.in_channels == conv_in.weight.shape[1] == 4 + 4 * len(images)
    assert text_png(tiny_pipeline) == before
    assert tiny_pipeline.patches.active == "text-to-image" and tiny_pipeline.patches.unet.conv_in.in_channels == 4


def test_the_unets_cpu_trace_draws_what_the_module_draws_across_model_switches(
    tiny_pipeline: TransparentSDXLPipeline,
) -> None:
    """Conditioned steps run the module (their condition enters through a hook), the plain SDXL
    steps after ``stop_at`` the trace; then text to image. (That a trace reads a replaced conv_in
    is tested in test_unet_tracing.py: here the base values put back equal the ones it was traced
    with.)"""
    unet = tiny_pipeline.sdxl.unet

    def draw() -> list[np.ndarray]:
        images = [
            tiny_pipeline.generate_from_images(*layer_request(task, (200, 30, 30), stop_at=0.5)).images[0].rgba
            for task in ("fg2ble", "bgble2fg")
        ]
        return [*images, tiny_pipeline.generate(prompt="a lamp", seed=9, width=64, height=64).images[0].rgba]

    with eager(unet):
        expected = draw()
    assert trace_from_next_call(unet)
    drawn = draw()
    assert traced_module(unet) is not None
    assert all(np.array_equal(image, reference) for image, reference in zip(drawn, expected, strict=True))


@pytest.mark.parametrize("task", list(LAYER_INPUTS))
def test_each_layer_model_answers_at_any_size(tiny_pipeline: TransparentSDXLPipeline, task: str) -> None:
    params, images = layer_request(task, (30, 200, 30))
    result = tiny_pipeline.generate_from_images(params, images)
    rgba = result.images[0].rgba
    assert rgba.shape == (70, 100, 4) and result.seed == 4  # run at 128×128, cropped back
    if task == "bgble2fg":  # a transparent foreground, from the transparent decoder
        assert rgba[..., 3].min() < 255
    else:  # a blended image or a background: opaque, from the SDXL VAE
        assert (rgba[..., 3] == 255).all()


def test_the_condition_steers_the_model_until_stop_at(tiny_pipeline: TransparentSDXLPipeline) -> None:
    def draw(colour: tuple[int, int, int], stop_at: float) -> np.ndarray:
        params, images = layer_request("fg2ble", colour, stop_at=stop_at)
        return tiny_pipeline.generate_from_images(params, images).images[0].rgba

    assert not np.array_equal(draw((255, 0, 0), 1.0), draw((0, 0, 255), 1.0))
    # stop_at 0: plain SDXL from the first step, so the condition no longer matters.
    assert np.array_equal(draw((255, 0, 0), 0.0), draw((0, 0, 255), 0.0))
    # Half way: the layer model ran first, then plain SDXL (the UNet is left on the base weights).
    halfway = draw((255, 0, 0), 0.5)
    assert tiny_pipeline.patches.active == "base" and tiny_pipeline.patches.unet.conv_in.in_channels == 4
    assert not np.array_equal(halfway, draw((255, 0, 0), 1.0))


def test_image_to_image_follows_the_official_cli(tiny_pipeline: TransparentSDXLPipeline) -> None:
    image = picture((220, 120, 20), alpha=255)
    image[..., 3] = 0
    image[10:60, 20:80, 3] = 255
    steps: list[tuple[int, int]] = []
    params = ImageToImageInput(image_url="stored", seed=2, num_inference_steps=10, strength=0.5)
    result = tiny_pipeline.generate_from_images(params, {"image_url": image}, on_step=lambda s, t: steps.append((s, t)))
    assert result.images[0].rgba.shape == (70, 100, 4) and result.params.size == (100, 70)
    assert steps[-1] == (5, 5)  # strength 0.5 of 10 steps: the last 5 run
    again = tiny_pipeline.generate_from_images(params, {"image_url": image})
    assert np.array_equal(result.images[0].rgba, again.images[0].rgba)
    # The latent the sampler starts from: the transparent encoder's, in model space.
    fitted = tiny_pipeline.fit_image(image, result.params)
    unscaled = tiny_pipeline.encoder.encode([fitted], tiny_pipeline.sdxl.vae)
    scaling = tiny_pipeline.sdxl.vae.config.scaling_factor
    assert torch.allclose(tiny_pipeline.encode_image(fitted), unscaled * scaling)

    with pytest.raises(InvalidInputError, match="no step") as caught:
        tiny_pipeline.generate_from_images(params.model_copy(update={"strength": 0.05}), {"image_url": image})
    assert caught.value.field == "strength"


def test_conv_injection_weights_are_an_alternative_for_text_to_image(settings: Settings, tiny_folder: Path) -> None:
    conv = TransparentSDXLPipeline.from_preset(
        "tiny",
        settings=settings,
        device="cpu",
        layer_weights=str(tiny_folder / "layer_xl_transparent_conv.safetensors"),
    )
    rgba = conv.generate(prompt="a lamp", seed=9, width=64, height=64, num_inference_steps=2).images[0].rgba
    assert rgba.shape == (64, 64, 4)
    with pytest.raises(WeightFormatError, match="conditioned-layer model"):
        TransparentSDXLPipeline.from_preset(
            "tiny", settings=settings, device="cpu", layer_weights=str(tiny_folder / "layer_xl_fg2ble.safetensors")
        )
