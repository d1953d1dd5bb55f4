"""How a worker loads its model: the engine settings (preset, file overrides, device, dtype,
runtime options) made into a pipeline. The engine (torch, diffusers) is imported only when the
loader runs, on a worker, so every other role starts without it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..cpu_threads import describe_threads
from ..settings import Settings

if TYPE_CHECKING:
    from ..engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
    from ..worker import Engine

logger = logging.getLogger(__name__)


def pipeline_from_settings(settings: Settings, **options: Any) -> TransparentSDXLPipeline:
    """The pipeline the engine settings describe; ``options`` are ``from_sources``' others (``runtime``,
    ``layer_strength``, ``safety_checker``). Imports the engine."""
    from ..engine.quiet import quiet_libraries

    quiet_libraries()
    from ..engine.pipelines.transparent_sdxl import TransparentSDXLPipeline

    return TransparentSDXLPipeline.from_preset(
        settings.model,
        settings=settings,
        device=settings.device,
        dtype=settings.dtype,
        base=settings.base,
        layer_weights=settings.layer_weights,
        decoder=settings.decoder,
        decoder_passes=settings.decoder_passes,
        lora_cache_bytes=settings.lora_memory_mb << 20,
        **options,
    )


def load_engine(settings: Settings) -> Engine:
    """A worker's engine: the pipeline with the runtime settings, warmed up where that pays."""
    from ..engine.pipelines.acceleration import RuntimeOptions, warm_up

    pipeline = pipeline_from_settings(settings, runtime=RuntimeOptions.from_settings(settings))
    logger.info("model %s on %s: %s", settings.model, pipeline.device, describe_threads(pipeline.threads))
    # Unset, warm-up runs on accelerators, whose first call is slow, and not on a CPU.
    if settings.warmup if settings.warmup is not None else pipeline.device.type != "cpu":
        warm_up(pipeline)
    return pipeline


def engine_loader(settings: Settings) -> Callable[[], Engine]:
    """What a worker calls, off the event loop, to load its engine (looked up when it runs, so a
    test process can put a fake engine in ``load_engine``'s place)."""
    return lambda: load_engine(settings)
