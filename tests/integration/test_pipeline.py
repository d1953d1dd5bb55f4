"""The whole engine on the tiny preset: determinism, batches, progress, cancel, safety checker."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layerdiffuse_server.engine.networks.safety import SafetyChecker
from layerdiffuse_server.engine.pipelines.acceleration import RuntimeOptions, apply_runtime_options, warm_up_sizes
from layerdiffuse_server.engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
from layerdiffuse_server.engine.pipelines.unet_tracing import traced_module
from layerdiffuse_server.errors import GenerationCancelled, InvalidInputError
from layerdiffuse_server.schemas import GenerationParams
from layerdiffuse_server.settings import Settings

SMALL = {"width": 128, "height": 128, "num_inference_steps": 4}


def test_same_seed_same_bytes_and_another_seed_another_image(tiny_pipeline: TransparentSDXLPipeline) -> None:
    first = tiny_pipeline.generate(prompt="a red apple", seed=7, **SMALL)
    again = tiny_pipeline.generate(prompt="a red apple", seed=7, **SMALL)
    other = tiny_pipeline.generate(prompt="a red apple", seed=8, **SMALL)
    assert first.images[0].png() == again.images[0].png()
    assert first.images[0].png() != other.images[0].png()
    image = Image.open(io.BytesIO(first.images[0].png()))
    assert image.mode == "RGBA" and image.size == (128, 128)
    assert first.seed == 7 and first.has_nsfw_concepts == [False]


def test_a_missing_seed_is_drawn_and_reported(tiny_pipeline: TransparentSDXLPipeline) -> None:
    result = tiny_pipeline.generate(prompt="x", **SMALL)
    repeated = tiny_pipeline.generate(prompt="x", seed=result.seed, **SMALL)
    assert isinstance(result.seed, int) and result.images[0].png() == repeated.images[0].png()


def test_image_i_of_a_batch_is_the_single_image_with_seed_plus_i(tiny_pipeline: TransparentSDXLPipeline) -> None:
    batch = tiny_pipeline.generate(prompt="a cat", seed=20, num_images=2, **SMALL)
    single = tiny_pipeline.generate(prompt="a cat", seed=21, **SMALL)
    assert [image.seed for image in batch.images] == [20, 21]
    difference = np.abs(batch.images[1].rgba.astype(int) - single.images[0].rgba.astype(int))
    assert difference.max() <= 2  # a larger batch may round differently in the last float bits, no more


def test_non_square_sizes(tiny_pipeline: TransparentSDXLPipeline) -> None:
    result = tiny_pipeline.generate(prompt="a lamp", seed=1, width=192, height=128, num_inference_steps=2)
    assert result.images[0].rgba.shape == (128, 192, 4)


def test_progress_is_reported_every_step(tiny_pipeline: TransparentSDXLPipeline) -> None:
    steps: list[tuple[int, int]] = []
    result = tiny_pipeline.generate(GenerationParams(seed=1, **SMALL), on_step=lambda s, t: steps.append((s, t)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert set(result.timings) == {
        "text_encoding",
        "denoising",
        "decoding",
        "vae_decode",
        "transparent_decode",
        "safety_check",
    }
    assert result.timings["vae_decode"] + result.timings["transparent_decode"] <= result.timings["decoding"]


def test_cancel_stops_between_steps(tiny_pipeline: TransparentSDXLPipeline) -> None:
    steps: list[int] = []
    with pytest.raises(GenerationCancelled, match="after step 2 of 4"):
        tiny_pipeline.generate(
            GenerationParams(seed=1, **SMALL),
            on_step=lambda s, t: steps.append(s),
            should_cancel=lambda: len(steps) >= 2,
        )
    assert steps == [1, 2]


def test_bad_keyword_input_is_an_input_error(tiny_pipeline: TransparentSDXLPipeline) -> None:
    with pytest.raises(InvalidInputError, match="2048"):
        tiny_pipeline.generate(width=3000)


@pytest.mark.parametrize("scheduler", ["euler_ancestral", "dpmpp_2m_sde_karras", "euler"])
def test_every_scheduler_runs_and_stochastic_ones_stay_deterministic(
    tiny_pipeline: TransparentSDXLPipeline, scheduler: str
) -> None:
    params = GenerationParams(seed=5, scheduler=scheduler, **SMALL)
    assert tiny_pipeline.generate(params).images[0].png() == tiny_pipeline.generate(params).images[0].png()


@pytest.fixture()
def flagging_checker(tiny_pipeline: TransparentSDXLPipeline, tiny_folder: Path):
    """The tiny preset's checker with thresholds below any similarity: it flags every image."""
    checker = SafetyChecker.from_folder(tiny_folder / "safety_checker")
    with torch.no_grad():
        checker.model.concept_embeds_weights.fill_(-2.0)
    original = tiny_pipeline.safety_checker
    tiny_pipeline.safety_checker = checker
    yield checker
    tiny_pipeline.safety_checker = original


def test_flagged_images_become_fully_transparent(tiny_pipeline: TransparentSDXLPipeline, flagging_checker) -> None:
    unchecked = tiny_pipeline.generate(prompt="x", seed=3, enable_safety_checker=False, **SMALL)
    checked = tiny_pipeline.generate(prompt="x", seed=3, num_images=2, **SMALL)
    assert unchecked.has_nsfw_concepts is None and unchecked.images[0].rgba.any()
    assert checked.has_nsfw_concepts == [True, True]
    assert all(image.nsfw and not image.rgba.any() for image in checked.images)
    assert checked.images[0].rgba.shape == (128, 128, 4)


def test_the_checker_sees_the_image_over_grey(flagging_checker: SafetyChecker) -> None:
    seen = []
    processor = flagging_checker.processor
    flagging_checker.processor = lambda images, return_tensors: (
        seen.extend(images),
        processor(images=images, return_tensors=return_tensors),
    )[1]
    try:
        flagging_checker.flags([np.zeros((64, 64, 4), np.uint8)])
    finally:
        flagging_checker.processor = processor
    assert seen and (seen[0] == 128).all()


def test_a_batch_of_requests_gives_each_the_image_it_gets_alone(tiny_pipeline: TransparentSDXLPipeline) -> None:
    requests = [
        GenerationParams(prompt="a red apple", seed=3, **SMALL),
        GenerationParams(prompt="a glass teapot", negative_prompt="", seed=10, num_images=2, **SMALL),
        GenerationParams(prompt="", seed=99, enable_safety_checker=False, **SMALL),
    ]
    batch = tiny_pipeline.generate_batch(requests)
    alone = [tiny_pipeline.generate(params) for params in requests]
    for together, single in zip(batch, alone, strict=True):
        assert together.batch_size == 3 and single.batch_size == 1
        assert together.seed == single.seed
        assert together.has_nsfw_concepts == single.has_nsfw_concepts
        for image, reference in zip(together.images, single.images, strict=True):
            assert image.seed == reference.seed
            difference = np.abs(image.rgba.astype(int) - reference.rgba.astype(int))
            # batched kernels sum in another order: a few values land one step of 255 apart
            assert difference.max() <= 1 and (difference > 0).mean() < 0.005
    assert batch[2].has_nsfw_concepts is None  # its checker was off, the others' ran


def test_a_batch_refuses_requests_that_cannot_share_a_sampler_run(tiny_pipeline: TransparentSDXLPipeline) -> None:
    with pytest.raises(ValueError, match="must share"):
        tiny_pipeline.generate_batch(
            [GenerationParams(**SMALL), GenerationParams(**SMALL | {"num_inference_steps": 5})]
        )


def test_runtime_options_that_promise_the_same_pixels_keep_them(
    settings: Settings, tiny_pipeline: TransparentSDXLPipeline
) -> None:
    reference = tiny_pipeline.generate(prompt="a lamp", seed=4, **SMALL).images[0].rgba
    lean = TransparentSDXLPipeline.from_preset(
        "tiny", settings=settings, device="cpu", runtime=RuntimeOptions(memory_mode="low", channels_last=True)
    )
    assert lean.decoder.max_batch == 1  # on a CPU the passes run one at a time in every mode
    gpu = torch.device("cuda")
    assert [RuntimeOptions(memory_mode=mode).decoder_max_batch(gpu) for mode in ("fast", "default", "low")] == [8, 4, 2]
    assert lean.sdxl.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert warm_up_sizes(lean, [(64, 64)], steps=1).graphs == 0
    assert traced_module(lean.sdxl.unet) is not None  # on a CPU the warm-up takes the UNet's trace
    pixels = lean.generate(prompt="a lamp", seed=4, **SMALL).images[0].rgba
    difference = np.abs(pixels.astype(int) - reference.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.005  # NHWC kernels sum in another order
    with pytest.raises(ValueError, match="needs a CUDA device"):
        apply_runtime_options(lean, RuntimeOptions(memory_mode="offload"))


def test_the_warm_up_runs_every_size_at_every_batch_size_it_is_given(tiny_pipeline: TransparentSDXLPipeline) -> None:
    """Compiled graphs have static shapes: each (size, batch) the worker will run is one the warm-up
    must have run, or the first request of that shape compiles while clients wait."""
    shapes: list[tuple[int, ...]] = []
    hook = tiny_pipeline.sdxl.unet.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    try:
        warm_up_sizes(tiny_pipeline, [(64, 64), (128, 64)], steps=1, batch_sizes=[1, 3])
    finally:
        hook.remove()
    # Under classifier-free guidance each UNet call carries two halves per image.
    assert sorted(set(shapes)) == [(2, 4, 8, 8), (2, 4, 8, 16), (6, 4, 8, 8), (6, 4, 8, 16)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload needs a CUDA device")
def test_offload_mode_gives_the_same_image_on_cuda(settings: Settings) -> None:
    options = {"settings": settings, "device": "cuda", "dtype": "float16"}
    resident = TransparentSDXLPipeline.from_preset("tiny", **options)
    offloaded = TransparentSDXLPipeline.from_preset("tiny", runtime=RuntimeOptions(memory_mode="offload"), **options)
    expected = resident.generate(prompt="a lamp", seed=4, **SMALL).images[0].rgba
    assert np.array_equal(offloaded.generate(prompt="a lamp", seed=4, **SMALL).images[0].rgba, expected)
