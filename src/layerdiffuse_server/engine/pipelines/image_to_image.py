"""Image to image: a transparent image re-generated, as LayerDiffuse's official diffusers CLI does.

The input's latent (with the transparency offset of the transparent encoder) is noised to
``strength`` of the schedule and denoised with the transparent UNet by diffusers' SDXL
image-to-image pipeline, then decoded by the transparent decoder.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from ...errors import InvalidInputError
from ...results import GenerationResult
from ...schemas import ImageToImageInput
from ..timing import StageTimer
from .callbacks import CancelCheck, StepCallback, step_callback
from .image_sizing import centre_crop, run_size
from .loaded import LoadedPipeline, checked_result
from .partials import PartialCallback, partial_hook
from .schedulers import make_scheduler


def generate_image_to_image(
    pipeline: LoadedPipeline,
    params: ImageToImageInput,
    images: dict[str, Any],
    *,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    on_partial: PartialCallback | None = None,
) -> GenerationResult:
    """One image re-generated from ``images["image_url"]`` (an RGBA ``uint8`` array)."""
    image = images["image_url"]
    params = pipeline.with_image_size(params, images).with_seed()  # type: ignore[assignment]
    try:
        steps = params.denoising_steps
    except ValueError as error:  # params changed past validation (model_copy)
        raise InvalidInputError(str(error), field="strength") from None
    timings: dict[str, float] = {}
    timer = StageTimer(timings, pipeline.device)
    width, height = run_size(*params.size)
    pipeline.use_text_to_image_weights()
    with timer("style_loras") if params.loras else nullcontext():  # timed when there are some
        pipeline.style_loras.apply(params.loras)
    with timer("image_encoding"):
        latent = pipeline.encode_image(pipeline.fit_image(image, params))
    with timer("text_encoding"):
        embeddings = pipeline.encode_prompts([params.prompt], [params.negative_prompt], params.guidance_scale)
    pipe = pipeline.image_to_image_pipe
    pipe.scheduler = make_scheduler(params.scheduler, pipeline.sdxl.scheduler.config, pipeline.sampling)
    seed = params.fixed_seed
    with timer("denoising"):
        latents = pipe(
            **embeddings,
            image=latent,
            strength=params.strength,
            height=height,
            width=width,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(seed)],
            output_type="latent",
            callback_on_step_end=step_callback(
                steps,
                on_step,
                should_cancel,
                partial_hook(pipeline, params.partial_images, steps, params.size, on_partial),
            ),
        ).images
    with timer("decoding"):
        rgba = [centre_crop(x, *params.size) for x in pipeline.decoder.decode(latents, pipeline.sdxl.vae, timer)]
    return checked_result(pipeline, rgba, params, seed, timer, timings)
