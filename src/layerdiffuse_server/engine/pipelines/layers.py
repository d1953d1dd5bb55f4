"""Foreground/background-conditioned layers: LayerDiffuse's four "… to …" SDXL models.

As Forge runs them (``forge_layerdiffusion.py``): each condition image is composited over 50 % grey
(``0.5 + (rgb − 0.5)·α``), fitted to the output size, VAE-encoded (the posterior mean, so a seed
means one image) and scaled into model space; the latents are concatenated to the noisy latent
along channels at every UNet call, for the conditional and the unconditional half alike
(``c_concat``), through the model's widened conv_in. ``stop_at`` hands the rest of the schedule to
plain SDXL once the timestep falls below ``(1 − stop_at)`` of the training schedule. fg2ble,
bg2ble and fgble2bg make opaque images (the SDXL VAE decodes them); bgble2fg makes a transparent
foreground, decoded with the transparent decoder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from ...errors import InvalidInputError
from ...results import GenerationResult
from ...schemas import ConditionedLayerInput, Task
from ..networks.decoder import to_model_space, to_vae_space
from ..timing import StageTimer
from ..weights.diff_weights import DiffWeights, merge_diff_weights
from ..weights.sources import resolve_file
from ..weights.unet_patches import BASE
from .callbacks import CancelCheck, StepCallback, StepHook, step_callback
from .image_sizing import centre_crop, run_size
from .loaded import LoadedPipeline, checked_result
from .partials import PartialCallback, partial_hook
from .schedulers import make_scheduler

#: Input fields in the order their latents are concatenated (Forge: ``cat([fg|bg, blend])``).
CONDITIONS: dict[Task, tuple[str, ...]] = {
    "fg2ble": ("foreground_image_url",),
    "bg2ble": ("background_image_url",),
    "fgble2bg": ("foreground_image_url", "blended_image_url"),
    "bgble2fg": ("background_image_url", "blended_image_url"),
}
#: Tasks whose result is a transparent layer.
TRANSPARENT: set[Task] = {"bgble2fg"}


def grey_composite(rgba: np.ndarray) -> torch.Tensor:
    """``[1, 3, H, W]`` in [-1, 1]: the image over 50 % grey (opaque images are unchanged)."""
    image = torch.from_numpy(rgba.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    composited = 0.5 + (image[:, :3] - 0.5) * image[:, 3:]
    return composited * 2.0 - 1.0


@torch.no_grad()
def condition_latents(pipeline: LoadedPipeline, images: Sequence[np.ndarray]) -> torch.Tensor:
    """The model-space latents of the fitted condition images, concatenated along channels."""
    vae = pipeline.sdxl.vae
    latents = []
    for image in images:
        pixels = grey_composite(image).to(pipeline.device, vae.dtype)  # with offload the VAE waits on the host
        latents.append(to_model_space(vae.encode(pixels).latent_dist.mean.float(), vae))
    return torch.cat(latents, dim=1).to(pipeline.device, pipeline.dtype)


@contextmanager
def concatenated(conv_in: torch.nn.Module, condition: torch.Tensor) -> Iterator[Callable[[], None]]:
    """Concatenate ``condition`` to every conv_in input (repeated over the CFG halves) while active;
    yields a function that stops it early (for ``stop_at``)."""

    def prepend(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        sample = args[0]
        repeats = sample.shape[0] // condition.shape[0]
        return (torch.cat([sample, condition.to(sample.dtype).repeat(repeats, 1, 1, 1)], dim=1), *args[1:])

    handle = conv_in.register_forward_pre_hook(prepend)
    try:
        yield handle.remove
    finally:
        handle.remove()


def ensure_layer_model(pipeline: LoadedPipeline, task: Task) -> None:
    """Load a conditioned model's file on its first use and register it as a UNet patch."""
    if pipeline.patches.has(task):
        return
    reference = pipeline.layer_files.get(task)
    if reference is None:
        raise InvalidInputError(f"this model has no {task} layer weights (layer_xl_{task}.safetensors)")
    path = resolve_file(reference, what=f"LayerDiffuse {task} weights", flag=f"--layer-model {task}")
    weights = DiffWeights.load(path)
    channels = weights.check(pipeline.patches.base_shapes())
    expected = 4 * len(CONDITIONS[task])
    if channels != expected:
        raise InvalidInputError(f"{path.name} widens conv_in by {channels} channels; {task} needs {expected}")
    pipeline.patches.register(task, set(weights.shapes), lambda unet: merge_diff_weights(unet, weights))


def generate_layer(
    pipeline: LoadedPipeline,
    params: ConditionedLayerInput,
    images: dict[str, np.ndarray],
    *,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    on_partial: PartialCallback | None = None,
) -> GenerationResult:
    """One image of the conditioned-layer model of ``params.task`` (``images``: input field → RGBA array)."""
    task = params.task
    params = pipeline.with_image_size(params, images).with_seed()  # type: ignore[assignment]
    seed = params.fixed_seed
    timings: dict[str, float] = {}
    timer = StageTimer(timings, pipeline.device)
    ensure_layer_model(pipeline, task)
    with timer("style_loras") if params.loras else nullcontext():  # timed when there are some
        pipeline.style_loras.apply(params.loras)  # kept on top of the layer model and, after stop_at, plain SDXL
    with timer("image_encoding"):
        condition = condition_latents(
            pipeline, [pipeline.fit_image(images[field], params) for field in CONDITIONS[task]]
        )
    with timer("text_encoding"):
        embeddings = pipeline.encode_prompts([params.prompt], [params.negative_prompt], params.guidance_scale)
    with timer("denoising"):
        decode = None if task in TRANSPARENT else functools.partial(opaque_decode, pipeline)
        previews = partial_hook(
            pipeline, params.partial_images, params.num_inference_steps, params.size, on_partial, decode
        )
        latents = _denoise(pipeline, params, task, seed, condition, embeddings, on_step, should_cancel, previews)
    with timer("decoding"):
        if task in TRANSPARENT:
            rgba = pipeline.decoder.decode(latents, pipeline.sdxl.vae, timer)
        else:
            rgba = opaque_decode(pipeline, latents)
        rgba = [centre_crop(image, *params.size) for image in rgba]
    return checked_result(pipeline, rgba, params, seed, timer, timings)


def _denoise(
    pipeline: LoadedPipeline,
    params: ConditionedLayerInput,
    task: Task,
    seed: int,
    condition: torch.Tensor,
    embeddings: dict[str, torch.Tensor],
    on_step: StepCallback | None,
    should_cancel: CancelCheck | None,
    previews: StepHook | None,
) -> torch.Tensor:
    total = params.num_inference_steps
    width, height = run_size(*params.size)
    sdxl = pipeline.sdxl
    sdxl.scheduler = make_scheduler(params.scheduler, sdxl.scheduler.config, pipeline.sampling)
    stop_timestep = (1.0 - params.stop_at) * sdxl.scheduler.config.num_train_timesteps
    sdxl.scheduler.set_timesteps(total)  # the pipeline sets the same ones again
    layered_from_the_start = float(sdxl.scheduler.timesteps[0]) >= stop_timestep and params.stop_at > 0
    pipeline.patches.use(task if layered_from_the_start else BASE)
    with concatenated(pipeline.patches.unet.conv_in, condition) as stop_conditioning:  # type: ignore[arg-type]
        if not layered_from_the_start:
            stop_conditioning()

        progress = step_callback(total, on_step, should_cancel, previews)

        def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            tensors = progress(pipe, step, timestep, tensors)
            upcoming = pipe.scheduler.timesteps[step + 1 :]
            if pipeline.patches.active == task and len(upcoming) and float(upcoming[0]) < stop_timestep:
                stop_conditioning()
                pipeline.patches.use(BASE)
            return tensors

        return sdxl(
            **embeddings,
            height=height,
            width=width,
            num_inference_steps=total,
            guidance_scale=params.guidance_scale,
            latents=pipeline.initial_noise([seed], height, width),
            generator=[torch.Generator("cpu").manual_seed(seed + 2**32)],
            output_type="latent",
            callback_on_step_end=step_end,
        ).images


@torch.no_grad()
def opaque_decode(pipeline: LoadedPipeline, latents: torch.Tensor) -> list[np.ndarray]:
    """Model-space latents → opaque RGBA ``uint8`` images (alpha 255) with the SDXL VAE alone."""
    vae = pipeline.sdxl.vae
    images = []
    for latent in latents.split(1):
        decoded = vae.decode(to_vae_space(latent, vae).to(vae.dtype)).sample
        rgb = ((decoded[0].float() * 0.5 + 0.5).clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
        images.append(np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1))
    return images
