"""SDXL + LayerDiffuse: prompt (and images) in, straight-alpha RGBA images out.

Stages, in call order: load (base SDXL, LayerDiffuse weights merged into the UNet once,
transparent decoder and encoder, safety checker), then per request: encode prompts, prepare
per-image noise (or encode the input image), denoise with diffusers' SDXL pipelines (progress and
cooperative cancel at every step), decode with the SDXL VAE and the transparent decoder, crop to
the size asked for, safety check. Image to image is in :mod:`.image_to_image`, the
conditioned layers in :mod:`.layers`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ...command_name import command
from ...errors import GenerationCancelled, InvalidInputError, MissingWeightsError
from ...images import TransparentImage
from ...results import GenerationResult
from ...schemas import (
    GenerationParams,
    LayerDiffusionInput,
    Task,
    batch_key,
    image_fields,
)
from ...settings import Settings
from ..devices import resolve_device, resolve_dtype, use_threads, vae_dtype
from ..networks.decoder import TransparentDecoder, to_model_space
from ..networks.encoder import TransparentEncoder
from ..networks.safety import SafetyChecker
from ..presets import (
    ModelSources,
    preset_sources,
    resolve_base,
    resolve_safety_checker,
    resolve_single_file_config,
)
from ..timing import StageTimer
from ..weights.layer_weights import TEXT_TO_IMAGE, transparency_patch
from ..weights.lora_cache import DEFAULT_CACHE_BYTES
from ..weights.prediction import sampling_overrides
from ..weights.sources import resolve_file
from ..weights.style_loras import LoraResolver, StyleLoras, no_lora_files
from ..weights.unet_patches import UNetPatches
from .acceleration import RuntimeOptions, apply_runtime_options
from .callbacks import CancelCheck, StepCallback, StepHook, step_callback
from .image_sizing import centre_crop, crop_and_resize, pad_to, run_size, size_from_image
from .image_to_image import generate_image_to_image
from .inpainting import generate_inpainting
from .layers import CONDITIONS, generate_layer
from .partials import PartialCallback, partial_hook
from .schedulers import make_scheduler, make_scheduler_like

logger = logging.getLogger(__name__)

#: The pipeline of each task with image inputs, all of one shape: (loaded models, input, images, hooks).
IMAGE_PIPELINES: dict[Task, Callable[..., GenerationResult]] = {
    "image-to-image": generate_image_to_image,
    "inpaint": generate_inpainting,
    **{task: generate_layer for task in CONDITIONS},
}


def _detect_variant(folder: Path) -> str | None:
    """The weight variant (``fp16`` in the hub's SDXL) of a diffusers folder whose UNet has only variant files."""
    names = [path.name for path in (folder / "unet").glob("*.safetensors")]
    if names and all(name.count(".") == 2 for name in names):
        return names[0].split(".")[1]
    return None


class TransparentSDXLPipeline:
    """Generates transparent images with SDXL and LayerDiffuse.

    Build one with :meth:`from_preset` or :meth:`from_sources`; it keeps every model resident, so
    load once and call :meth:`generate` many times.
    """

    def __init__(
        self,
        sdxl: Any,
        decoder: TransparentDecoder,
        safety_checker: SafetyChecker | None,
        *,
        device: torch.device,
        dtype: torch.dtype,
        native_size: int = 1024,
        encoder: TransparentEncoder | None = None,
        patches: UNetPatches | None = None,
        layer_files: dict[str, str] | None = None,
        lora_resolver: LoraResolver = no_lora_files,
        lora_cache_bytes: int = DEFAULT_CACHE_BYTES,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        self.sdxl = sdxl
        #: What every sampler of this base is made with (v-prediction …, see weights/prediction.py).
        self.sampling = dict(sampling or {})
        self.decoder = decoder
        self.encoder = encoder
        #: The UNet's LayerDiffuse weights, switched per request (see weights/unet_patches.py).
        self.patches = patches or UNetPatches(sdxl.unet)
        #: Conditioned-layer model files by task (``fg2ble`` …), loaded on first use.
        self.layer_files = layer_files or {}
        #: The style LoRAs of the batch in hand, merged on top of the LayerDiffuse weights.
        self.style_loras = StyleLoras(sdxl, self.patches, resolve=lora_resolver, cache_bytes=lora_cache_bytes)
        self.safety_checker = safety_checker
        self.device = device
        self.dtype = dtype
        self.native_size = native_size  # the side of what it was trained on: requests without a size get it
        self.sdxl.set_progress_bar_config(disable=True)

    def use_lora_files(self, resolve: LoraResolver) -> None:
        """Where requests' LoRA paths are found from now on: the worker's sources (its file store,
        URLs, the hub, the operator's folder), which only the worker that loads this pipeline has."""
        self.style_loras.resolve = resolve

    @property
    def threads(self) -> int:
        """torch's CPU threads in this process (it runs the CPU work, and a GPU's launches)."""
        return torch.get_num_threads()

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_preset(
        cls,
        name: str = "sdxl",
        *,
        settings: Settings | None = None,
        device: str = "auto",
        dtype: str = "auto",
        base: str | None = None,
        layer_weights: str | None = None,
        decoder: str | None = None,
        checkpoint: str | None = None,
        **options: Any,
    ) -> TransparentSDXLPipeline:
        """Load a preset (``sdxl``, ``tiny``, ``sdxl-random``), optionally replacing some of its files.

        ``checkpoint``: another SDXL base (hub id, diffusers folder, ``.safetensors`` file) in place of
        the preset's, under the same LayerDiffuse files (see :meth:`ModelSources.as_checkpoint`).

        ``settings.threads`` sets torch's CPU threads for the process (see :mod:`...cpu_threads`).
        """
        settings = settings or Settings()
        use_threads(settings.threads)
        sources = preset_sources(name, settings.presets_dir).with_overrides(
            base=base, layer_weights=layer_weights, decoder=decoder
        )
        if checkpoint is not None:
            sources = sources.as_checkpoint(checkpoint)
        return cls.from_sources(sources, device=device, dtype=dtype, **options)

    @classmethod
    def from_sources(
        cls,
        sources: ModelSources,
        *,
        device: str = "auto",
        dtype: str = "auto",
        layer_strength: float = 1.0,
        decoder_passes: int = 8,
        decoder_max_batch: int = 8,
        safety_checker: bool = True,
        runtime: RuntimeOptions | None = None,
        lora_resolver: LoraResolver = no_lora_files,
        lora_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> TransparentSDXLPipeline:
        """Load every model from weight references (local paths or hub files).

        Args:
            layer_strength: factor on the LayerDiffuse weights (1.0 as trained).
            decoder_passes: test-time augmentation passes of the transparent decoder (8, 4, 2, 1).
            decoder_max_batch: passes per decoder forward call; lower it to bound memory.
            safety_checker: load the safety checker (requests can still turn it off).
            runtime: memory mode, tiling, memory layout and compilation (:class:`RuntimeOptions`).
            lora_resolver: turns a request's LoRA ``path`` into a local file (default: none can be;
                a worker connects its sources with :meth:`use_lora_files`).
            lora_cache_bytes: host memory for the style LoRAs read, least recently used out first.
        """
        runtime = runtime or RuntimeOptions()
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device, sources.cpu_dtype)
        # Resolve every file first: a missing one is reported before minutes of loading.
        base_path = resolve_base(sources)
        sampling = sampling_overrides(base_path)  # a base no sampler here runs right is refused before loading
        config_path = resolve_single_file_config(sources.single_file_config) if base_path.is_file() else None
        layer_path = resolve_file(sources.layer_weights, what="LayerDiffuse weights", flag="--layer-weights")
        decoder_path = resolve_file(sources.decoder, what="Transparent VAE decoder", flag="--decoder")
        checker_path = (
            resolve_safety_checker(sources.safety_checker) if (safety_checker and sources.safety_checker) else None
        )

        started = time.perf_counter()
        logger.info("Loading SDXL from %s (%s)", base_path, str(torch_dtype).removeprefix("torch."))
        sdxl = cls.load_sdxl(base_path, sources.base_variant, torch_dtype, config=config_path)
        if sampling:
            logger.info("The base predicts %s: every sampler is set to %s", sampling["prediction_type"], sampling)
            sdxl.scheduler = make_scheduler_like(sdxl.scheduler, sampling)
        logger.info("Merging LayerDiffuse weights from %s", layer_path.name)
        patches = UNetPatches(sdxl.unet)
        keys, merge = transparency_patch(layer_path, sdxl.unet, layer_strength)
        patches.register(TEXT_TO_IMAGE, keys, merge)
        patches.use(TEXT_TO_IMAGE)
        decode_dtype = vae_dtype(torch_dtype, torch_device, bool(sdxl.vae.config.force_upcast))
        if decode_dtype != sdxl.vae.dtype:
            sdxl.vae.to(dtype=decode_dtype)
        if runtime.memory_mode != "offload":  # offloaded models move in and out on their own
            sdxl.to(torch_device)
        logger.info("Loading the transparent decoder from %s", decoder_path.name)
        transparent_decoder = TransparentDecoder.from_file(
            decoder_path, device=torch_device, dtype=torch_dtype, passes=decoder_passes, max_batch=decoder_max_batch
        )
        encoder = None
        if sources.encoder:
            try:
                encoder_path = resolve_file(sources.encoder, what="Transparent VAE encoder", flag="--encoder")
            except MissingWeightsError as error:  # an offline cache from before image inputs: text to image still works
                logger.warning("%s Image to image is off until it is there.", error)
            else:
                encoder = TransparentEncoder.from_file(encoder_path, device=torch_device, dtype=torch_dtype)
        checker = None
        if checker_path is not None:
            logger.info("Loading the safety checker from %s", checker_path)
            checker = SafetyChecker.from_folder(checker_path, device=torch_device, dtype=torch_dtype)
        # Debug only: the caller says when the model is ready, with the time that includes the imports.
        logger.debug("Models ready in %.1f s (%d weights patched)", time.perf_counter() - started, len(keys))
        pipeline = cls(
            sdxl,
            transparent_decoder,
            checker,
            device=torch_device,
            dtype=torch_dtype,
            native_size=sources.native_size,
            encoder=encoder,
            patches=patches,
            layer_files=dict(sources.layers),
            lora_resolver=lora_resolver,
            lora_cache_bytes=lora_cache_bytes,
            sampling=sampling,
        )
        apply_runtime_options(pipeline, runtime)
        return pipeline

    @staticmethod
    def load_sdxl(base_path: Path, variant: str | None, dtype: torch.dtype, *, config: Path | None = None) -> Any:
        """diffusers' own SDXL pipeline from a diffusers folder (variant detected) or a single file
        (its configs from ``config``, else the hub's SDXL base); also what the benchmark uses as its
        plain baseline, so both load the base the same way."""
        from diffusers import StableDiffusionXLPipeline

        if base_path.is_file():
            return StableDiffusionXLPipeline.from_single_file(
                str(base_path),
                config=str(config or resolve_single_file_config()),
                dtype=dtype,
                add_watermarker=False,
            )
        variant = variant if variant is not None else _detect_variant(base_path)
        return StableDiffusionXLPipeline.from_pretrained(base_path, dtype=dtype, variant=variant, add_watermarker=False)

    # -- generation ----------------------------------------------------------------------------

    def generate(
        self,
        params: GenerationParams | None = None,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        on_partial: PartialCallback | None = None,
        **fields: Any,
    ) -> GenerationResult:
        """Generate ``params.num_images`` transparent images.

        Args:
            params: the input; keyword ``fields`` build one (``generate(prompt="a cat", seed=1)``).
            on_step: called as ``on_step(step, total)`` after every denoising step.
            should_cancel: polled between steps; returning True raises :class:`GenerationCancelled`.
            on_partial: called ``params.partial_images`` times as ``on_partial(step, images)`` with
                cheap previews (one RGBA array per image, see :mod:`.partials`).
        """
        if params is None:
            try:
                params = GenerationParams(**fields)
            except ValueError as error:
                raise InvalidInputError(str(error)) from None
        elif fields:
            raise TypeError("pass either params or keyword fields, not both")
        return self.generate_batch([params], on_step=on_step, should_cancel=should_cancel, on_partial=on_partial)[0]

    def generate_batch(
        self,
        requests: Sequence[GenerationParams],
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        on_partial: PartialCallback | None = None,
    ) -> list[GenerationResult]:
        """Several requests in one denoising batch, each with its own prompts and seeds.

        The requests must share what the sampler runs with (:func:`batch_key`: size, steps, sampler,
        guidance). Image ``i`` of a request is the image it gets alone with ``seed + i``, up to the
        float differences of batched kernels. The timings are the batch's, shared by its requests.
        ``on_partial`` gets the previews of the whole batch (one image per image of each request,
        in order), as many as the request asking for the most wants.
        """
        if not requests:
            return []
        requests = [params.with_size(self.native_size).with_seed() for params in requests]
        keys = {batch_key(params) for params in requests}
        if len(keys) > 1:
            raise ValueError(f"requests in one batch must share size, steps, sampler, guidance and LoRAs; got {keys}")
        first = requests[0]
        seeds = [params.fixed_seed + i for params in requests for i in range(params.num_images)]
        prompts = [params.prompt for params in requests for _ in range(params.num_images)]
        negatives = [params.negative_prompt for params in requests for _ in range(params.num_images)]
        timings: dict[str, float] = {}
        timer = StageTimer(timings, self.device)

        if should_cancel and should_cancel():
            raise GenerationCancelled("cancelled before start")
        self.use_text_to_image_weights()
        with timer("style_loras") if first.loras else nullcontext():  # timed when there are some
            self.style_loras.apply(first.loras)  # the batch key makes them every request's
        with timer("text_encoding"):
            embeddings = self.encode_prompts(prompts, negatives, first.guidance_scale)
        with timer("denoising"):
            previews = partial_hook(
                self,
                max(params.partial_images for params in requests),
                first.num_inference_steps,
                first.size,
                on_partial,
            )
            latents = self.denoise(
                first, seeds, embeddings, on_step=on_step, should_cancel=should_cancel, after_step=previews
            )
        with timer("decoding"):
            rgba = [centre_crop(image, *first.size) for image in self.decoder.decode(latents, self.sdxl.vae, timer)]
        owners = [index for index, params in enumerate(requests) for _ in range(params.num_images)]
        checked = [params.enable_safety_checker and self.safety_checker is not None for params in requests]
        flags = self.safety_check(rgba, [checked[owner] for owner in owners], timer)
        results = []
        offset = 0
        for params, was_checked in zip(requests, checked, strict=True):
            span = range(offset, offset + params.num_images)
            offset += params.num_images
            images = [TransparentImage(rgba=rgba[i], seed=seeds[i], nsfw=flags[i]) for i in span]
            results.append(
                GenerationResult(
                    images,
                    params.fixed_seed,
                    params,
                    has_nsfw_concepts=[flags[i] for i in span] if was_checked else None,
                    timings=dict(timings),
                    batch_size=len(requests),
                )
            )
        return results

    def safety_check(self, rgba: list[Any], wanted: list[bool], timer: StageTimer) -> list[bool]:
        """Check the images where ``wanted`` (replacing flagged ones in ``rgba``); the flags, per image."""
        flags = [False] * len(rgba)
        subset = [i for i, want in enumerate(wanted) if want and self.safety_checker is not None]
        if subset:
            with timer("safety_check"):
                assert self.safety_checker is not None
                cleaned, subset_flags = self.safety_checker.apply([rgba[i] for i in subset])
            for i, pixels, flag in zip(subset, cleaned, subset_flags, strict=True):
                rgba[i], flags[i] = pixels, flag
        return flags

    def encode_prompts(
        self, prompts: list[str], negative_prompts: list[str], guidance_scale: float
    ) -> dict[str, torch.Tensor]:
        """CLIP-L and CLIP-bigG embeddings of prompts and negative prompts, as diffusers' SDXL does."""
        positive, negative, pooled, negative_pooled = self.sdxl.encode_prompt(
            prompt=prompts,
            negative_prompt=negative_prompts,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guidance_scale > 1.0,
        )
        embeddings = {"prompt_embeds": positive, "pooled_prompt_embeds": pooled}
        if negative is not None:
            embeddings |= {"negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": negative_pooled}
        return embeddings

    def initial_noise(self, seeds: list[int], height: int, width: int) -> torch.Tensor:
        """Per-image noise drawn on the CPU from each image's own seed.

        CPU draws make a seed mean the same image on every device, and per-image seeds make image i
        of a batch equal to a single image with seed + i.
        """
        shape = (
            1,
            self.sdxl.unet.config.in_channels,
            height // self.sdxl.vae_scale_factor,
            width // self.sdxl.vae_scale_factor,
        )
        noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
        return torch.cat(noise).to(self.device, self.dtype)

    def denoise(
        self,
        params: GenerationParams,
        seeds: list[int],
        embeddings: dict[str, torch.Tensor],
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        after_step: StepHook | None = None,
    ) -> torch.Tensor:
        """Run the sampler; returns model-space latents ``[B, 4, H/8, W/8]`` at the size the model runs at.

        ``after_step`` reads each step's tensors (the partial images)."""
        total = params.num_inference_steps
        width, height = run_size(*params.size)

        self.sdxl.scheduler = make_scheduler(params.scheduler, self.sdxl.scheduler.config, self.sampling)
        output = self.sdxl(
            **embeddings,
            height=height,
            width=width,
            num_inference_steps=total,
            guidance_scale=params.guidance_scale,
            latents=self.initial_noise(seeds, height, width),
            # Used only by stochastic samplers (ancestral, SDE): one stream per image, seeded like its noise.
            generator=[torch.Generator("cpu").manual_seed(s + 2**32) for s in seeds],
            output_type="latent",
            callback_on_step_end=step_callback(total, on_step, should_cancel, after_step),
        )
        return output.images

    # -- image inputs ----------------------------------------------------------------------------

    def use_text_to_image_weights(self) -> None:
        """The transparent UNet (after a conditioned-layer request switched it away)."""
        if self.patches.has(TEXT_TO_IMAGE):
            self.patches.use(TEXT_TO_IMAGE)

    def generate_from_images(
        self,
        params: LayerDiffusionInput,
        images: dict[str, Any],
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        on_partial: PartialCallback | None = None,
    ) -> GenerationResult:
        """A request of an endpoint with image inputs (``images``: field name → RGBA ``uint8`` array),
        run by the pipeline of the task its input carries; ``on_partial`` as :meth:`generate` has it."""
        run = IMAGE_PIPELINES.get(params.task)
        if run is None:
            raise TypeError(f"{type(params).__name__} has no image inputs")
        return run(self, params, images, on_step=on_step, should_cancel=should_cancel, on_partial=on_partial)

    def with_image_size(self, params: LayerDiffusionInput, images: dict[str, Any]) -> LayerDiffusionInput:
        """``params`` with its size fixed by its first image input where it names none."""
        first = images[image_fields(params)[0]]
        width, height = size_from_image(params.width, params.height, first.shape[1], first.shape[0])
        return params.model_copy(update={"width": width, "height": height})

    def fit_image(self, image: Any, params: LayerDiffusionInput) -> Any:
        """An input image cropped and resized to the asked size, padded to the size the model runs at."""
        width, height = params.size
        return pad_to(crop_and_resize(image, width, height), *run_size(width, height))

    def encode_image(self, image: Any) -> torch.Tensor:
        """A fitted RGBA image → its model-space latent (transparent encoder, official semantics)."""
        if self.encoder is None:
            raise InvalidInputError(
                "this server's model has no transparent encoder (vae_transparent_encoder.safetensors), so image to "
                f"image is off; `{command('download')}` fetches it",
                field="image_url",
            )
        unscaled = self.encoder.encode([image], self.sdxl.vae, device=self.device)
        return to_model_space(unscaled, self.sdxl.vae).to(self.device, self.dtype)

    @functools.cached_property
    def inpainting_pipe(self) -> Any:
        """diffusers' SDXL inpainting pipeline on the same models: with a 4-channel UNet it blends
        the input's latent, noised to the current timestep, back outside the mask after every step."""
        from diffusers import StableDiffusionXLInpaintPipeline

        pipe = StableDiffusionXLInpaintPipeline.from_pipe(self.sdxl)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @functools.cached_property
    def image_to_image_pipe(self) -> Any:
        """diffusers' SDXL image-to-image pipeline on the same models (nothing is copied)."""
        from diffusers import StableDiffusionXLImg2ImgPipeline

        pipe = StableDiffusionXLImg2ImgPipeline.from_pipe(self.sdxl)
        pipe.set_progress_bar_config(disable=True)
        return pipe
