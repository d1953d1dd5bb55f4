"""Transparent inpainting: the masked area of an RGBA image regenerated, the rest kept, alpha included.

The mask is read as OpenAI's image edits read theirs: from its alpha channel, 0 where the image is
regenerated and 255 where it is kept. As diffusers' SDXL inpainting pipeline runs a UNet without
mask channels (ours is the transparent UNet), the input's latent (the transparent encoder's, with
its transparency offset) is noised to ``strength`` of the schedule and, after every step, put back
outside the mask noised to the next timestep; at the last step it is put back clean. The mask is
applied in latent space block by block: a latent pixel is regenerated when any of the 8×8 pixels
it covers is, so nothing of the masked area is left to the input's latent. The transparent decoder
then decodes it, and the input's own pixels are pasted back outside the mask with an edge feathered
into the masked side only (:func:`paste_kept`): kept pixels are the input's exactly.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from ...errors import InvalidInputError
from ...results import GenerationResult
from ...schemas import InpaintingInput
from ..timing import StageTimer
from .callbacks import CancelCheck, StepCallback, step_callback
from .image_sizing import centre_crop, crop_and_resize, pad_to, run_size
from .loaded import LoadedPipeline, checked_result
from .partials import PartialCallback, partial_hook
from .schedulers import make_scheduler

#: The side of the image area one latent pixel covers (the SDXL VAE's downscaling).
LATENT_BLOCK = 8
#: The feather of the pasted edge, as a fraction of the image's shorter side (at least 1 pixel):
#: 8 pixels at 1024².
FEATHER_FRACTION = 1 / 128


def keep_weights(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A mask's alpha as ``float32 [height, width]`` in [0, 1]: 1 keeps the input's pixel, 0 regenerates it.

    The mask is fitted to the output size as the image is (scaled to cover, centre-cropped), so a
    mask of the image's size covers it pixel for pixel; bilinearly, so that a resized mask does not
    ring (Lanczos would make kept pixels near its edges slightly less than kept).

    Raises:
        InvalidInputError: the mask keeps every pixel (no alpha channel, or opaque everywhere).
    """
    alpha = crop_and_resize(np.ascontiguousarray(mask[..., 3]), width, height, Image.Resampling.BILINEAR)
    if alpha.min() == 255:
        raise InvalidInputError(
            "the mask is opaque everywhere (or has no alpha channel), so it marks nothing to regenerate; "
            "make the area to change transparent (alpha 0) and keep the rest opaque (alpha 255)",
            field="mask_url",
        )
    return alpha.astype(np.float32) / 255.0


def latent_mask(keep: np.ndarray, run_width: int, run_height: int) -> torch.Tensor:
    """``[1, 1, H, W]`` of 0/1 at the size the model runs at, 1 where the latent is regenerated:
    each 8×8 block that holds any pixel not fully kept."""
    regenerate = pad_to((keep < 1.0).astype(np.float32)[..., None], run_width, run_height)[..., 0]
    blocks = regenerate.reshape(run_height // LATENT_BLOCK, LATENT_BLOCK, run_width // LATENT_BLOCK, LATENT_BLOCK)
    per_block = blocks.max(axis=(1, 3))
    pixels = np.repeat(np.repeat(per_block, LATENT_BLOCK, axis=0), LATENT_BLOCK, axis=1)
    return torch.from_numpy(np.ascontiguousarray(pixels))[None, None]


def feathered(keep: np.ndarray) -> np.ndarray:
    """The weight of the input's pixels in the paste: the mask, softened into the regenerated side
    only (a blur that never lowers it), so every kept pixel stays 1."""
    height, width = keep.shape
    radius = max(1.0, min(width, height) * FEATHER_FRACTION)
    mask = Image.fromarray(np.round(keep * 255.0).astype(np.uint8))
    blurred = np.asarray(mask.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0
    return np.maximum(keep, blurred)


def paste_kept(original: np.ndarray, generated: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The generated RGBA image with the input's pixels pasted back where ``keep`` says.

    Straight-alpha images are blended premultiplied (the colour of a transparent pixel weighs
    nothing); where the weight is 1 the input's pixel is copied as it is.
    """
    weight = feathered(keep)[..., None]
    first, second = original.astype(np.float32) / 255.0, generated.astype(np.float32) / 255.0
    alpha = weight * first[..., 3:] + (1.0 - weight) * second[..., 3:]
    premultiplied = weight * first[..., :3] * first[..., 3:] + (1.0 - weight) * second[..., :3] * second[..., 3:]
    rgb = np.where(alpha > 0, premultiplied / np.maximum(alpha, 1e-8), second[..., :3])
    blended = np.round(np.concatenate([rgb, alpha], axis=-1).clip(0.0, 1.0) * 255.0).astype(np.uint8)
    return np.where(weight >= 1.0, original, blended)


def generate_inpainting(
    pipeline: LoadedPipeline,
    params: InpaintingInput,
    images: dict[str, Any],
    *,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    on_partial: PartialCallback | None = None,
) -> GenerationResult:
    """One image: ``images["image_url"]`` with the area ``images["mask_url"]`` marks regenerated."""
    params = pipeline.with_image_size(params, images).with_seed()  # type: ignore[assignment]
    try:
        steps = params.denoising_steps
    except ValueError as error:  # params changed past validation (model_copy)
        raise InvalidInputError(str(error), field="strength") from None
    width, height = params.size
    run_width, run_height = run_size(width, height)
    keep = keep_weights(images["mask_url"], width, height)
    original = crop_and_resize(images["image_url"], width, height)
    timings: dict[str, float] = {}
    timer = StageTimer(timings, pipeline.device)
    pipeline.use_text_to_image_weights()
    with timer("style_loras") if params.loras else nullcontext():  # timed when there are some
        pipeline.style_loras.apply(params.loras)
    with timer("image_encoding"):
        latent = pipeline.encode_image(pad_to(original, run_width, run_height))
    with timer("text_encoding"):
        embeddings = pipeline.encode_prompts([params.prompt], [params.negative_prompt], params.guidance_scale)
    pipe = pipeline.inpainting_pipe
    pipe.scheduler = make_scheduler(params.scheduler, pipeline.sdxl.scheduler.config, pipeline.sampling)
    seed = params.fixed_seed
    previews = partial_hook(pipeline, params.partial_images, steps, params.size, on_partial)
    with timer("denoising"):
        latents = pipe(
            **embeddings,
            image=latent,
            mask_image=latent_mask(keep, run_width, run_height).to(pipeline.device),
            strength=params.strength,
            height=run_height,
            width=run_width,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(seed)],
            output_type="latent",
            callback_on_step_end=step_callback(steps, on_step, should_cancel, previews),
        ).images
    with timer("decoding"):
        generated = centre_crop(pipeline.decoder.decode(latents, pipeline.sdxl.vae, timer)[0], width, height)
    return checked_result(pipeline, [paste_kept(original, generated, keep)], params, seed, timer, timings)
