"""Speed and memory options of a loaded pipeline, each one measured by ``benchmarks/bench.py``.

Every option here keeps the output identical to the default path except ``vae_tiling`` (tiles are
blended at their seams) and ``compile`` (fused kernels round differently); the benchmark prints
the pixel difference of each against the default.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...engine_choices import MemoryMode
from ...schemas import GenerationParams
from ...settings import Settings
from .compiling import CompileCounts, compile_module, configure_compiling
from .unet_tracing import trace_from_next_call, trace_when_hot

if TYPE_CHECKING:
    from .loaded import LoadedPipeline

logger = logging.getLogger(__name__)

#: Transparent-decoder passes per forward call on a GPU, by memory mode. At 1024² in fp16 each pass
#: in flight holds about 0.8 GB (H200, with the SDXL VAE decode: 8 per call +6.1 GB in 192 ms,
#: 4 +3.1 GB in 138 ms, 2 +2.4 GB in 244 ms, 1 +2.4 GB in 485 ms). ``default`` stays within plain
#: SDXL's own decode peak (its VAE decodes in float32); ``fast`` is for GPUs with room to spare.
DECODER_BATCH = {"fast": 8, "default": 4, "low": 2, "offload": 1}


@dataclass(frozen=True)
class RuntimeOptions:
    """How a loaded pipeline runs.

    Attributes:
        memory_mode: how many decoder passes run per forward call: ``fast`` 8, ``default`` 4,
            ``low`` 2, all with every model resident on the accelerator; ``offload`` runs them one
            at a time and also moves the text encoders, UNet and VAE to the accelerator only while
            each runs (diffusers' model CPU offload). All give the same pixels up to float rounding. On a CPU the passes
            always run one at a time: batching them is slower there.
        vae_tiling: decode the SDXL VAE in tiles (less memory at large sizes; seams are blended,
            so pixels differ slightly).
        channels_last: NHWC memory layout for the convolution-heavy models.
        compile: ``torch.compile`` the UNet and the transparent decoder (minutes of warm-up per
            image size on first use; see the README's performance section and :mod:`.compiling`).
        compile_cache_folder: where compiled kernels are kept across restarts (``None``: Inductor's
            own folder, in ``/tmp``).
        recompile_limit: graphs compiled per function at most (sizes and batch sizes); further
            calls run eagerly.
    """

    memory_mode: MemoryMode = "default"
    vae_tiling: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_cache_folder: Path | None = None
    recompile_limit: int = 8

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeOptions:
        """The one place settings become runtime options (``serve`` and ``worker``)."""
        return cls(
            memory_mode=settings.memory_mode,
            vae_tiling=settings.vae_tiling,
            channels_last=settings.channels_last,
            compile=settings.compile,
            compile_cache_folder=settings.compile_cache_dir,
            recompile_limit=settings.compile_recompile_limit,
        )

    def decoder_max_batch(self, device: torch.device) -> int:
        return 1 if device.type == "cpu" else DECODER_BATCH[self.memory_mode]


def apply_runtime_options(pipeline: LoadedPipeline, options: RuntimeOptions) -> None:
    """Called once after loading; models that stay resident are already on the pipeline's device."""
    sdxl = pipeline.sdxl
    pipeline.decoder.max_batch = min(pipeline.decoder.max_batch, options.decoder_max_batch(pipeline.device))
    if options.memory_mode == "offload":
        if pipeline.device.type != "cuda":
            raise ValueError("memory_mode 'offload' needs a CUDA device")
        sdxl.enable_model_cpu_offload(device=pipeline.device)
    if options.vae_tiling:
        sdxl.vae.enable_tiling()
    if options.channels_last:
        for model in (sdxl.unet, sdxl.vae, pipeline.decoder.network):
            model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]  # ModelMixin.to's stub
    if options.compile:
        configure_compiling(options.compile_cache_folder, options.recompile_limit)
        sdxl.unet = compile_module(sdxl.unet)
        pipeline.decoder.network = compile_module(pipeline.decoder.network)
    elif pipeline.device.type == "cpu":
        trace_when_hot(sdxl.unet)


def warm_up_sizes(
    pipeline: LoadedPipeline,
    sizes: Sequence[tuple[int, int]],
    steps: int = 2,
    batch_sizes: Sequence[int] = (1,),
) -> CompileCounts:
    """One short generation per serving size (width, height) and batch size: CUDA context, cuDNN
    algorithm choice, allocator pools and, with ``compile``, each size's and batch size's graphs
    (compiled, or read from the compile cache) are paid for here rather than by the first request
    of that shape, and on a CPU the UNet's trace (:mod:`.unet_tracing`). Returns what was compiled
    meanwhile (all zero without ``compile``)."""
    trace_from_next_call(pipeline.sdxl.unet)
    before = CompileCounts.now()
    started = time.perf_counter()
    for width, height in sizes:
        for images in batch_sizes:
            began = time.perf_counter()
            params = GenerationParams(
                prompt="warm-up", width=width, height=height, num_inference_steps=steps, seed=0, num_images=images
            )
            pipeline.generate(params)
            shown = f" × {images} images" if images > 1 else ""
            logger.info("warm-up at %dx%d%s took %.1f s", width, height, shown, time.perf_counter() - began)
    counts = CompileCounts.now() - before
    if counts.graphs:
        logger.info("warm-up with compile took %.1f s; %s", time.perf_counter() - started, counts.describe())
    return counts
