"""How a worker loads its model: the engine settings (preset, file overrides, device, dtype,
runtime options) made into a pipeline. The engine (torch, diffusers) is imported only when the
loader runs, on a worker, so every other role starts without it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..cpu_threads import describe_threads
from ..errors import InvalidInputError
from ..schemas import MAX_IMAGES
from ..settings import Settings

if TYPE_CHECKING:
    from ..engine.pipelines.transparent_sdxl import TransparentSDXLPipeline
    from ..worker import Engine

logger = logging.getLogger(__name__)


def pipeline_from_settings(
    settings: Settings, checkpoint: str | None = None, **options: Any
) -> TransparentSDXLPipeline:
    """The pipeline the engine settings describe (with ``checkpoint``: that one of the operator's
    checkpoints as its base); ``options`` are ``from_sources``' others (``runtime``,
    ``layer_strength``, ``safety_checker``). Imports the engine.

    Raises:
        InvalidInputError: ``checkpoint`` is not one of the settings' checkpoints.
    """
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
        checkpoint=checkpoint_source(settings, checkpoint) if checkpoint is not None else None,
        decoder_passes=settings.decoder_passes,
        lora_cache_bytes=settings.lora_memory_mb << 20,
        **options,
    )


def checkpoint_source(settings: Settings, name: str) -> str:
    """Where the operator's checkpoint ``name`` is (hub id, folder or file).

    Raises:
        InvalidInputError: no checkpoint of that name in this process's settings.
    """
    try:
        return settings.checkpoints[name]
    except KeyError:
        listed = ", ".join(repr(known) for known in sorted(settings.checkpoints)) or "none"
        raise InvalidInputError(
            f"this worker has no checkpoint {name!r} (its checkpoints: {listed}); "
            "give every API node and worker the same LAYERDIFFUSE_CHECKPOINTS",
            field="model_name",
        ) from None


def load_engine(settings: Settings, checkpoint: str | None = None) -> Engine:
    """A worker's engine (the model's, or one of its checkpoints'): the pipeline with the runtime
    settings, warmed up where that pays."""
    from ..engine.pipelines.acceleration import RuntimeOptions, warm_up_sizes

    pipeline = pipeline_from_settings(settings, checkpoint, runtime=RuntimeOptions.from_settings(settings))
    name = settings.model if checkpoint is None else f"checkpoint {checkpoint}"
    logger.info("model %s on %s: %s", name, pipeline.device, describe_threads(pipeline.threads))
    if warms_up(settings, pipeline.device.type):
        warm_up_sizes(pipeline, settings.warmup_dimensions, batch_sizes=warmup_batch_sizes(settings))
    return pipeline


def warmup_batch_sizes(settings: Settings) -> list[int]:
    """The batch sizes the warm-up runs at each size. Compiled graphs have static shapes, and the
    worker batches up to ``max_batch_size`` images, so with ``compile`` each batch size is a graph
    of its own that the warm-up compiles (or reads from the cache) before the worker says ready;
    without it one image per size warms everything up."""
    if not settings.compile:
        return [1]
    batch_sizes = list(range(1, min(settings.max_batch_size, MAX_IMAGES) + 1))
    graphs = len(settings.warmup_sizes) * len(batch_sizes)
    if graphs > settings.compile_recompile_limit:
        logger.warning(
            "the warm-up needs %d compiled graphs of the UNet (%d sizes × batches of 1 to %d), more than "
            "--compile-recompile-limit %d: the rest will run uncompiled; raise the limit or list fewer sizes",
            graphs,
            len(settings.warmup_sizes),
            len(batch_sizes),
            settings.compile_recompile_limit,
        )
    return batch_sizes


def warms_up(settings: Settings, device_type: str) -> bool:
    """Whether a worker warms up before it says ready: as the operator says, else on accelerators
    (whose first call is slow) and, with ``compile``, on a CPU too (the warm-up is what compiles
    the served sizes, or reads them from the compile cache, instead of the first requests)."""
    if settings.warmup is not None:
        return settings.warmup
    return settings.compile or device_type != "cpu"


def engine_loader(settings: Settings) -> Callable[[], Engine]:
    """What a worker calls, off the event loop, to load its engine (looked up when it runs, so a
    test process can put a fake engine in ``load_engine``'s place)."""
    return lambda: load_engine(settings)


def checkpoint_loader(settings: Settings) -> Callable[[str], Engine]:
    """What a worker calls to load one of the operator's checkpoints by name, when a request needs it."""
    return lambda name: load_engine(settings, name)
